"""Twisted framed echo on the epoll reactor: ``LineOnlyReceiver`` / ``Int32StringReceiver``.

Lines: ``LineOnlyReceiver`` with ``delimiter = b"\\n"``, ``lineReceived`` ->
``sendLine``. Length-prefixed: ``Int32StringReceiver`` (4-byte big-endian
length), ``stringReceived`` -> ``sendString``. Twisted buffers the writes of
one reactor turn and sends them together. TCP_NODELAY on every connection.

usage: python benchmarks/twisted_framed_echo.py PORT --framing lines|len4
"""

from __future__ import annotations

from typing import Any

from _common import HOST, announce, parse_framed_args, raise_nofile_limit


def handle(payload: bytes) -> bytes:
    """The application: echo."""
    return payload


def main() -> None:
    """Serve until SIGTERM/SIGINT (the reactor's own signal handlers stop it)."""
    args = parse_framed_args(__doc__ or "")
    raise_nofile_limit()
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import protocol, reactor
    from twisted.protocols import basic

    class LineEcho(basic.LineOnlyReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 65536

        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)

        def lineReceived(self, line: bytes) -> None:
            self.sendLine(handle(line))

    class Len4Echo(basic.Int32StringReceiver):
        MAX_LENGTH = 65536

        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)

        def stringReceived(self, string: bytes) -> None:
            self.sendString(handle(string))

    factory = protocol.ServerFactory()
    factory.protocol = LineEcho if args.framing == "lines" else Len4Echo
    port: Any = reactor.listenTCP(args.port, factory, backlog=4096, interface=HOST)  # type: ignore[attr-defined]
    reactor.callWhenRunning(announce, port.getHost().port)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
