"""Socket options (README, Listener options): keepalive and TCP_USER_TIMEOUT on Listener and Client."""

from __future__ import annotations

import socket

import pytest
from conftest import LONG
from gevent.queue import Queue

import gtcp


class Keep(gtcp.Service):
    def __init__(self) -> None:
        self.callers: Queue = Queue()

    def on_connect(self, caller):
        self.callers.put(caller)
        return None


def _opts(sock) -> tuple[int, int, int, int, int]:
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    )


def test_KeepAlive_and_user_timeout_on_accepted_and_client_sockets(gtcp_listener):
    service = Keep()
    listener = gtcp_listener(service, keepalive=gtcp.KeepAlive(idle=30, interval=5, count=3),
                             user_timeout=7.5)
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG,
                     keepalive=gtcp.KeepAlive(idle=40.2, interval=2, count=9), user_timeout=1) as client:
        caller = service.callers.get(timeout=LONG)
        assert _opts(caller._stream.gsock) == (1, 30, 5, 3, 7500)
        assert _opts(client._stream.gsock) == (1, 41, 2, 9, 1000)  # seconds rounded up


def test_keepalive_true_uses_the_system_timings(gtcp_listener):
    service = Keep()
    listener = gtcp_listener(service, keepalive=True)
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG, keepalive=True) as client:
        caller = service.callers.get(timeout=LONG)
        for sock in (caller._stream.gsock, client._stream.gsock):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0


def test_no_options_by_default(gtcp_listener):
    service = Keep()
    listener = gtcp_listener(service)
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        caller = service.callers.get(timeout=LONG)
        for sock in (caller._stream.gsock, client._stream.gsock):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: gtcp.KeepAlive(idle=0), "KeepAlive.idle must be a number of seconds >= 1"),
        (lambda: gtcp.KeepAlive(interval="5"), "KeepAlive.interval must be"),
        (lambda: gtcp.KeepAlive(count=0), "KeepAlive.count must be an int from 1 to 127"),
        (lambda: gtcp.Listener(0, keepalive="yes"), "keepalive must be True, False, None or a gtcp.Ke"),
        (lambda: gtcp.Listener(0, user_timeout="1s"), "user_timeout must be a number of seconds"),
    ],
)
def test_socket_options_are_validated_when_built(build, message):
    with pytest.raises(gtcp.ConfigError, match=message):
        build()


def test_client_socket_options_are_validated_before_connecting():
    with pytest.raises(gtcp.ConfigError, match="keepalive must be"):
        gtcp.Client("127.0.0.1", 9, keepalive=1)  # never connects: port 9 is not needed
