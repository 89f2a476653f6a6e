"""Raw gevent echo server: ``StreamServer``, a ``recv(65536)``/``sendall`` loop.

The baseline gtcp is measured against. TLS uses ``gevent.ssl.SSLContext`` with
the same settings as gtcp (TLS >= 1.2, no compression) and, like gtcp, sets
TCP_NODELAY on each accepted socket before the handshake, which runs in the
connection's own greenlet.

usage: python benchmarks/raw_gevent_echo.py PORT [--tls CERT KEY]
"""

from __future__ import annotations

import signal
import socket
import ssl
from typing import Any

import gevent
import gevent.ssl
from _common import (
    HOST,
    announce,
    configure_server_context,
    parse_server_args,
    raise_nofile_limit,
)
from gevent.server import StreamServer


def make_handler(ctx: ssl.SSLContext | None) -> Any:
    """Return the per-connection echo handler (wrapping with ``ctx`` when given)."""

    def handle(sock: Any, _address: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            conn = ctx.wrap_socket(sock, server_side=True) if ctx else sock
            recv, sendall = conn.recv, conn.sendall
            while True:
                data = recv(65536)
                if not data:
                    break
                sendall(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()

    return handle


def main() -> None:
    """Serve until SIGTERM/SIGINT."""
    args = parse_server_args(__doc__ or "")
    raise_nofile_limit()
    ctx = None
    if args.tls:
        ctx = configure_server_context(
            gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), args.cert or "", args.key or ""
        )
    server = StreamServer((HOST, args.port), make_handler(ctx), backlog=4096)
    server.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, lambda: gevent.spawn(server.stop, 1))
    announce(int(server.address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
