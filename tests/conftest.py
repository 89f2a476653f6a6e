"""Shared test fixtures: loopback listeners on port 0 and a deadline per test.

Timeouts by role (urllib3's convention): SHORT when something must time out,
LONG when it must not. Every test runs under a gevent.Timeout of DEADLINE
seconds (a readable failure) and pytest-timeout (the signal-method backstop,
configured in tox.ini).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest

import gtcp

SHORT = 0.2
LONG = 10.0
DEADLINE = 45.0


class TestDeadlineExceeded(AssertionError):
    """The test ran past its gevent deadline."""


#: The gevent deadline of tests marked ``stress`` (run with ``-m stress``).
STRESS_DEADLINE = 540.0


@pytest.fixture(autouse=True)
def _deadline(request: pytest.FixtureRequest) -> Iterator[None]:
    limit = STRESS_DEADLINE if request.node.get_closest_marker("stress") else DEADLINE
    timer = gevent.Timeout.start_new(limit, TestDeadlineExceeded(f"test ran over {limit} s"))
    try:
        yield
    finally:
        timer.cancel()


@pytest.fixture
def serve() -> Iterator[Callable[..., gtcp.Listener]]:
    """Start listeners on 127.0.0.1, port 0; stop them all after the test."""
    listeners: list[gtcp.Listener] = []

    def start(service: Any, **options: Any) -> gtcp.Listener:
        options.setdefault("local_host", "127.0.0.1")
        listener = gtcp.Listener(options.pop("local_port", 0), **options)
        listener.attach(service)
        listener.start()
        listeners.append(listener)
        return listener

    yield start
    for listener in listeners:
        listener.immediate_stop()


@pytest.fixture
def gtcp_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog capturing the gtcp logger at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="gtcp")
    return caplog
