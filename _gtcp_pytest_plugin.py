"""The gtcp pytest plugin: the fixtures of ``gtcp.testing``, active wherever gtcp is installed.

Registered by the ``pytest11`` entry point named ``gtcp`` (disable it with
``-p no:gtcp``; with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, enable it with
``-p _gtcp_pytest_plugin``). Fixtures:

* ``gtcp_listener``: ``gtcp_listener(service, **options)`` starts a
  ``Listener`` on 127.0.0.1, port 0, and returns it; every listener is
  stopped (``immediate_stop``) at teardown. The test fails if gtcp logged
  an error while serving (a callback raised, returned something that
  cannot be sent...), unless it is marked
  ``@pytest.mark.gtcp_expect_callback_errors`` (optionally with substrings
  the allowed errors contain) or calls ``gtcp_listener.expect_errors()``.
* ``gtcp_client``: ``gtcp_client(listener_or_port, **options)``, a
  connected ``Client`` with 10 s timeouts, closed at teardown.
* ``gtcp_peer``: ``gtcp_peer(listener_or_port, tls=..., rcvbuf=...)``, a
  scripted raw peer (``gtcp.testing.RawPeer``), closed at teardown.
* ``gtcp_pair``: ``gtcp_pair(service, **options)``, one connection of a real
  listener driven by the test (``gtcp.testing.ConnectionPair``: ``feed``,
  ``written``, ``send_eof``, ``reset``...), stopped at teardown; same error
  check as ``gtcp_listener``.
* ``gtcp_tls``: a ``gtcp.testing.TLSKit`` (CA, server and client
  certificates, ready records), made once per session.
* ``gtcp_log``: a ``gtcp.testing.LogCapture`` of the ``gtcp`` logger at DEBUG.

Opt-in: a gevent deadline per test, ``gtcp_deadline = 45`` in the pytest
configuration or ``@pytest.mark.gtcp_deadline(45)`` on a test: past it,
``gtcp.testing.DeadlineExceeded`` is raised in the test, wherever it waits
on gevent (a readable failure where a signal-based timeout can only dump
stacks). Off unless asked for.

This is a top-level module rather than ``gtcp.pytest_plugin`` because pytest
imports entry-point plugins at start-up in every project of the environment,
and importing a module of the gtcp package imports gtcp (gevent, ssl: about
0.1 s, before any conftest could monkey-patch). Here nothing of gtcp or
gevent is imported until a fixture or the deadline needs it (hypothesis
ships ``_hypothesis_pytestplugin`` for the same reason).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from gtcp.testing import (
        ClientFactory,
        ErrorWatch,
        ListenerFactory,
        LogCapture,
        PairFactory,
        PeerFactory,
        TLSKit,
    )

_WATCH = pytest.StashKey["ErrorWatch"]()
_TIMER = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``gtcp_deadline`` ini option."""
    parser.addini("gtcp_deadline", "gevent deadline of each test in seconds (gtcp plugin); 0 or empty: none",
                  default="")


def pytest_configure(config: pytest.Config) -> None:
    """Register the plugin's markers."""
    config.addinivalue_line(
        "markers", "gtcp_expect_callback_errors(*patterns): gtcp errors logged while serving do not fail "
        "this test (all of them, or those containing one of the patterns)")
    config.addinivalue_line(
        "markers", "gtcp_deadline(seconds): a gevent deadline for this test (gtcp plugin); 0: none")


def _deadline(item: pytest.Item) -> float:
    marker = item.get_closest_marker("gtcp_deadline")
    if marker is not None:
        return float(marker.args[0]) if marker.args else 0.0
    value = str(item.config.getini("gtcp_deadline") or "").strip()
    return float(value) if value else 0.0


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Start the test's gevent deadline, if one is configured (before any fixture is set up)."""
    seconds = _deadline(item)
    if seconds > 0:
        import gevent

        from gtcp.testing import DeadlineExceeded

        expired = DeadlineExceeded(f"test ran over {seconds:g} s")
        item.stash[_TIMER] = gevent.Timeout.start_new(seconds, expired)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Cancel the deadline once the test's fixtures are torn down."""
    try:
        return (yield)
    finally:
        timer = item.stash.get(_TIMER, None)
        if timer is not None:
            timer.cancel()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Fail a test that passed if gtcp logged unexpected errors while it ran.

    A test that failed on its own keeps its own failure (the errors are in
    its captured log); they are not reported again at teardown.
    """
    watch = item.stash.get(_WATCH, None)
    try:
        result = yield
    except BaseException:
        if watch is not None:
            watch.skip()
        raise
    if watch is not None:
        watch.check()
    return result


@pytest.fixture
def _gtcp_error_watch(request: pytest.FixtureRequest) -> Iterator[ErrorWatch]:
    """The ErrorWatch shared by gtcp_listener and gtcp_pair; checked after the call and at teardown."""
    from gtcp.testing import ErrorWatch

    watch = ErrorWatch()
    marker = request.node.get_closest_marker("gtcp_expect_callback_errors")
    if marker is not None:
        watch.expect(*marker.args)
    watch.start()
    request.node.stash[_WATCH] = watch
    try:
        yield watch
    finally:
        watch.stop()
    watch.check()  # what was logged after the test body: at the stops, by on_close...


@pytest.fixture
def gtcp_listener(_gtcp_error_watch: ErrorWatch) -> Iterator[ListenerFactory]:
    """``gtcp_listener(service, **options)``: a started Listener on 127.0.0.1:0, stopped at teardown.

    Fails the test if gtcp logged an error while serving, unless expected
    (``gtcp_listener.expect_errors(*patterns)`` or the
    ``gtcp_expect_callback_errors`` marker); ``gtcp_listener.errors`` lists them.
    """
    from gtcp.testing import ListenerFactory

    factory = ListenerFactory(_gtcp_error_watch)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def gtcp_client() -> Iterator[ClientFactory]:
    """``gtcp_client(listener_or_port, **options)``: a connected Client (10 s timeouts), closed after."""
    from gtcp.testing import ClientFactory

    factory = ClientFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def gtcp_peer() -> Iterator[PeerFactory]:
    """``gtcp_peer(listener_or_port, **options)``: a scripted ``gtcp.testing.RawPeer``, closed at teardown."""
    from gtcp.testing import PeerFactory

    factory = PeerFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def gtcp_pair(_gtcp_error_watch: ErrorWatch) -> Iterator[PairFactory]:
    """``gtcp_pair(service, **options)``: a ``gtcp.testing.ConnectionPair``, stopped at teardown.

    Same error check as ``gtcp_listener`` (``gtcp_pair.expect_errors()``).
    """
    from gtcp.testing import PairFactory

    factory = PairFactory(_gtcp_error_watch)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def gtcp_tls(tmp_path_factory: pytest.TempPathFactory) -> TLSKit:
    """A ``gtcp.testing.TLSKit``: CA, server and client certificates in files, ready records (per session)."""
    from gtcp.testing import TLSKit

    return TLSKit(tmp_path_factory.mktemp("gtcp-tls"))


@pytest.fixture
def gtcp_log() -> Iterator[LogCapture]:
    """A ``gtcp.testing.LogCapture`` of the ``gtcp`` logger at DEBUG (``records``, ``text``,
    ``messages(level)``, ``wait_for(text)``, ``clear()``)."""
    from gtcp.testing import LogCapture

    capture = LogCapture()
    capture.start()
    try:
        yield capture
    finally:
        capture.stop()
