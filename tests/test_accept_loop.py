"""The accept loop's error handling (README: Decisions, "Accept errors"): skip, back off, resume.

Modelled on trio's ``test_serve_listeners_accept_*`` tests, which give a
fake listener an ``accept_hook`` that raises. Here the listener is a real
one; its listening socket is wrapped so that ``accept()`` raises a scripted
sequence of ``OSError``\\ s while a real connection waits in the backlog, and
accepts that connection for real once the script is done. Each scripted
error is raised only when a connection is pending (as the kernel would: a
non-blocking accept with nothing to take raises ``BlockingIOError``, not
``EMFILE``), so a script is consumed by connection attempts, never by a
spinning loop. The back-off delays are read from the timers the listener
arms, not timed; the log lines from the ``gtcp`` logger.
"""

from __future__ import annotations

import collections
import errno
import os
import select
from typing import Any

import pytest
from helpers import wait_until

import gtcp
from gtcp._listener import _ONE_CONNECTION, _OUT_OF_RESOURCES, _Server

#: In a script: accept the pending connection for real.
ACCEPT = "accept"

#: Small back-offs so that a burst takes milliseconds: 2, 4, then 8 ms at most.
MIN, MAX = 0.002, 0.008


class ScriptedAccept:
    """A listening socket (the listener's real one, wrapped) whose accept() follows a script."""

    def __init__(self, real: Any, script: list[int | str]) -> None:
        self._real = real
        self.script = collections.deque(script)
        self.raised: list[int] = []

    def _accept(self) -> Any:
        if self.script and self._pending():
            step = self.script.popleft()
            if step != ACCEPT:
                assert isinstance(step, int)
                self.raised.append(step)
                raise OSError(step, os.strerror(step))
        return self._real._accept()  # BlockingIOError when nothing is pending, as always

    def _pending(self) -> bool:
        poll = select.poll()
        poll.register(self._real.fileno(), select.POLLIN)
        return bool(poll.poll(0))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class RecordingLoop:
    """The server's event loop, recording the seconds of every timer the server arms on it."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.timers: list[float] = []

    def timer(self, after: float, *args: Any, **kwargs: Any) -> Any:
        self.timers.append(after)
        return self._real.timer(after, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.fixture
def scripted(gtcp_listener, monkeypatch):
    """``scripted(*steps)``: a started echo listener whose accept() follows *steps*.

    Returns ``(listener, fake_socket, delays)``; *delays* gets the seconds of
    every timer the listener's server arms (its back-offs), in order.
    """
    monkeypatch.setattr(_Server, "MIN_BACKOFF", MIN)
    monkeypatch.setattr(_Server, "MAX_BACKOFF", MAX)
    monkeypatch.setattr(_Server, "_backoff", MIN)  # the class default is MIN_BACKOFF as it was defined

    def make(*steps: int | str) -> tuple[gtcp.Listener, ScriptedAccept, list[float]]:
        listener = gtcp_listener(Echoes())
        server = listener._server
        fake = ScriptedAccept(server.socket, list(steps))
        server.socket = fake
        loop = RecordingLoop(server.loop)
        server.loop = loop
        return listener, fake, loop.timers

    return make


class Echo(gtcp.ConnectionService):
    def on_bytes(self, data: bytes) -> bytes:
        return data


class Echoes(gtcp.Service):
    def on_connect(self, caller: gtcp.Caller) -> Echo:
        return Echo()


def _echo(gtcp_client, listener: gtcp.Listener, message: bytes = b"served") -> None:
    client = gtcp_client(listener)
    client.write_bytes(message)  # waits in the socket until the connection is accepted
    assert client.read_bytes() == message


def _accept_lines(gtcp_log) -> list[tuple[str, str]]:
    return [(record.levelname, record.getMessage()) for record in gtcp_log.records
            if "accept" in record.getMessage()]


def test_the_lists_are_trios():
    assert {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS} == _OUT_OF_RESOURCES
    one_connection = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET, errno.ENETDOWN}
    assert one_connection <= _ONE_CONNECTION
    assert not _OUT_OF_RESOURCES & _ONE_CONNECTION


def test_errors_of_one_connection_are_skipped_silently_without_back_off(scripted, gtcp_client, gtcp_log):
    steps = [errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO, errno.EPERM, errno.ETIMEDOUT]
    listener, fake, delays = scripted(*steps)
    _echo(gtcp_client, listener)
    assert fake.raised == steps and not fake.script  # each one was met, then the connection accepted
    assert delays == []  # no back-off: the next accept came at once
    assert listener._server._backoff_timer is None
    assert _accept_lines(gtcp_log) == []  # and nothing logged
    assert listener.stats().accepted == 1


def test_out_of_descriptors_logs_once_backs_off_doubling_and_accepts_again(scripted, gtcp_listener,
                                                                          gtcp_client, gtcp_log):
    gtcp_listener.expect_errors("cannot accept")
    steps = [errno.EMFILE, errno.ENFILE, errno.ECONNABORTED, errno.ENOBUFS, errno.ENOMEM, errno.EMFILE]
    listener, fake, delays = scripted(*steps)
    _echo(gtcp_client, listener)
    assert fake.raised == steps and not fake.script
    # One back-off per error but the skipped ECONNABORTED: doubling from MIN, capped at MAX.
    assert delays == pytest.approx([MIN, 2 * MIN, MAX, MAX, MAX])
    port = listener.port
    assert _accept_lines(gtcp_log) == [
        ("ERROR", f"Listener on port {port} cannot accept: Too many open files; backing off"),  # once
        ("WARNING", f"Listener on port {port} accepts again"),
    ]
    server = listener._server
    assert server._backoff == MIN and not server._burst  # reset for the next burst
    assert listener.stats().accepted == 1


def test_each_burst_is_logged_and_backs_off_from_the_start(scripted, gtcp_listener, gtcp_client, gtcp_log):
    gtcp_listener.expect_errors("cannot accept")
    listener, fake, delays = scripted(errno.EMFILE, errno.EMFILE, ACCEPT, errno.ENFILE, ACCEPT)
    _echo(gtcp_client, listener, b"first")
    assert delays == pytest.approx([MIN, 2 * MIN])
    _echo(gtcp_client, listener, b"second")
    assert not fake.script
    assert delays == pytest.approx([MIN, 2 * MIN, MIN])  # the second burst starts from MIN again
    port = listener.port
    assert _accept_lines(gtcp_log) == [
        ("ERROR", f"Listener on port {port} cannot accept: Too many open files; backing off"),
        ("WARNING", f"Listener on port {port} accepts again"),
        ("ERROR", f"Listener on port {port} cannot accept: Too many open files in system; backing off"),
        ("WARNING", f"Listener on port {port} accepts again"),
    ]


def test_an_unexpected_error_is_logged_as_such_and_backed_off(scripted, gtcp_listener, gtcp_client, gtcp_log):
    gtcp_listener.expect_errors("cannot accept")
    listener, fake, delays = scripted(errno.EINVAL, errno.EINVAL, errno.EIO)
    _echo(gtcp_client, listener)
    assert fake.raised == [errno.EINVAL, errno.EINVAL, errno.EIO]
    assert delays == pytest.approx([MIN, 2 * MIN, MAX])  # trio raises it; gtcp has nobody to raise it to
    port = listener.port
    assert _accept_lines(gtcp_log) == [
        ("ERROR", f"Listener on port {port} cannot accept (unexpected error EINVAL): Invalid argument; "
                  "backing off"),
        ("WARNING", f"Listener on port {port} accepts again"),
    ]
    assert listener.stats().accepted == 1


def test_a_stop_while_backing_off_closes_the_timer(scripted, gtcp_listener, gtcp_client):
    gtcp_listener.expect_errors("cannot accept")
    listener, _, delays = scripted(*[errno.EMFILE] * 1000)  # out of descriptors for good
    gtcp_client(listener).write_bytes(b"never served")
    wait_until(lambda: len(delays) >= 3, "three back-offs")
    server = listener._server
    timer = server._backoff_timer
    assert timer is not None and timer.active
    listener.immediate_stop()
    assert server._backoff_timer is None and not timer.active  # nothing left to restart accepting
    assert listener.stats().accepted == 0
