"""gtcp echo listener: ``on_bytes(self, data): return data``.

The server under test, written against the public API (the README's): a
``gtcp.Listener`` on 127.0.0.1, TLS through ``gtcp.ListenerSecureSocket``.

usage: python benchmarks/echo_server.py PORT [--tls CERT KEY]
"""

from __future__ import annotations

import signal
from typing import Any

import gevent
from _common import add_repo_to_path, announce, parse_server_args, raise_nofile_limit


def make_listener(port: int, cert: str | None, key: str | None) -> Any:
    """Build the echo listener (TLS when ``cert`` is given)."""
    add_repo_to_path()
    import gtcp

    class Echo(gtcp.ConnectionService):
        def on_bytes(self, data: bytes) -> bytes:
            return data

    class Svc(gtcp.Service):
        def on_connect(self, caller: Any) -> Echo:
            return Echo()

    secure = None
    if cert and key:
        secure = gtcp.ListenerSecureSocket(key=gtcp.CertKey(cert_file=cert, key_file=key))
    listener = gtcp.Listener(port, local_host="127.0.0.1", secure_socket=secure, backlog=4096)
    listener.attach(Svc())
    return listener


def main() -> None:
    """Serve until SIGTERM/SIGINT."""
    args = parse_server_args(__doc__ or "")
    raise_nofile_limit()
    listener = make_listener(args.port, args.cert, args.key)
    listener.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, lambda: gevent.spawn(listener.immediate_stop))
    announce(listener.port)
    listener.serve_forever()


if __name__ == "__main__":
    main()
