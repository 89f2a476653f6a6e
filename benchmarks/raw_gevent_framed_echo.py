"""Raw gevent framed echo: ``StreamServer``, ``makefile("rb")``, ``sendall`` per message.

Lines: ``readline()``; length-prefixed: ``read(4)`` then ``read(n)``. Each
payload goes to the (identity) handler and each reply is framed and sent with
its own ``sendall``. TCP_NODELAY on every accepted socket.

usage: python benchmarks/raw_gevent_framed_echo.py PORT --framing lines|len4
"""

from __future__ import annotations

import signal
import socket
from typing import Any

import gevent
from _common import HOST, announce, parse_framed_args, raise_nofile_limit
from gevent.server import StreamServer


def handle(payload: bytes) -> bytes:
    """The application: echo."""
    return payload


def serve_lines(sock: Any) -> None:
    """One connection, newline-terminated messages."""
    readline = sock.makefile("rb").readline
    sendall = sock.sendall
    while True:
        line = readline(65536)
        if not line.endswith(b"\n"):
            break  # EOF (or a partial last line)
        sendall(handle(line[:-1]) + b"\n")


def serve_len4(sock: Any) -> None:
    """One connection, 4-byte big-endian length-prefixed messages."""
    read = sock.makefile("rb").read
    sendall = sock.sendall
    while True:
        header = read(4)
        if len(header) < 4:
            break
        size = int.from_bytes(header, "big")
        payload = read(size)
        if len(payload) < size:
            break
        reply = handle(payload)
        sendall(len(reply).to_bytes(4, "big") + reply)


def make_handler(framing: str) -> Any:
    """The per-connection handler for ``framing``."""
    serve = serve_lines if framing == "lines" else serve_len4

    def on_connection(sock: Any, _address: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            serve(sock)
        except OSError:
            pass
        finally:
            sock.close()

    return on_connection


def main() -> None:
    """Serve until SIGTERM/SIGINT."""
    args = parse_framed_args(__doc__ or "")
    raise_nofile_limit()
    server = StreamServer((HOST, args.port), make_handler(args.framing), backlog=4096)
    server.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, lambda: gevent.spawn(server.stop, 1))
    announce(int(server.address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
