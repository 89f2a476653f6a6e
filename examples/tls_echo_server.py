"""Secure echo server: the TLS listener of the Ballerina tcp spec, section 5.1.1.

The section 6 echo server behind TLS: the listener is given a
``ListenerSecureSocket`` whose ``key`` is the server's certificate chain and
private key (``CertKey(cert_file=..., key_file=...)``).

Test certificates come from trustme (``pip install trustme``): run in an empty
directory ::

    python -m trustme

It writes ``server.pem`` (the server's certificate, valid for ``localhost``,
``127.0.0.1`` and ``::1``), ``server.key`` (its private key) and
``client.pem`` (the throwaway CA that signed it: what a client must trust).
Then, from that directory::

    python examples/tls_echo_server.py --cert server.pem --key server.key
    python examples/tls_echo_client.py --ca client.pem

(``python -m gtcp echo --port 9002 --cert server.pem --key server.key`` and
``python -m gtcp send 127.0.0.1 9002 hello --ca client.pem`` do the same.)
Every connection is greeted on the console with the TLS version it
negotiated, every chunk received is printed and written back; Ctrl-C stops
the server gracefully.

From Python, ``main(host, port, cert_file=..., key_file=..., ready=..., stop=...)``
runs the server until the ``stop`` event is set; ``ready`` (a
``gevent.event.AsyncResult``) receives the bound port, which is how a test
finds a server started on port 0.
"""

from __future__ import annotations

import argparse
import logging
import signal

import gevent
from gevent.event import AsyncResult, Event

import gtcp

log = logging.getLogger(__name__)

#: The port of the spec's secure sample.
DEFAULT_PORT = 9002


class EchoService(gtcp.ConnectionService):
    """One connection: print what arrives and send it back."""

    def on_bytes(self, caller: gtcp.Caller, data: bytes) -> gtcp.Error | None:
        """Print the chunk and echo it (Ballerina: ``return caller->writeBytes(data)``).

        A failed write is returned rather than raised: gtcp logs a returned
        error in one line, where a raised one is logged as a bug.
        """
        print("Echo:", data.decode("utf-8", errors="replace"), flush=True)
        try:
            caller.write_bytes(data)
        except gtcp.Error as err:
            return err
        return None

    def on_error(self, err: gtcp.Error) -> None:
        """A read or write failed; the connection closes next."""
        log.error("An error occurred: %s", err)

    def on_close(self) -> None:
        """The connection ended, whoever closed it."""
        print("Client left", flush=True)


class SecureEcho(gtcp.Service):
    """The listener's service: one :class:`EchoService` per connection.

    ``on_connect`` runs after the TLS handshake, so ``caller.tls`` is set.
    """

    def on_connect(self, caller: gtcp.Caller) -> EchoService:
        """Greet the connection on the console, with its TLS version, and serve it."""
        version = caller.tls.version if caller.tls is not None else "plain TCP"
        print(f"Client connected to secure echo server: {caller.remote_port} ({version})", flush=True)
        return EchoService()


def start(host: str = "127.0.0.1", port: int = 0, *, cert_file: str, key_file: str) -> gtcp.Listener:
    """Start the TLS echo listener on *host*:*port* (0: a free port) and return it.

    *cert_file* is the PEM certificate chain, *key_file* its PEM private key.
    Both are loaded here, before the port is bound: a bad file raises
    ``gtcp.TLSError`` and holds no port.
    """
    secure_socket = gtcp.ListenerSecureSocket(key=gtcp.CertKey(cert_file=cert_file, key_file=key_file))
    listener = gtcp.Listener(port, local_host=host, secure_socket=secure_socket)
    listener.attach(SecureEcho())
    listener.start()
    return listener


def main(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    cert_file: str,
    key_file: str,
    ready: AsyncResult[int] | None = None,
    stop: Event | None = None,
) -> None:
    """Serve TLS echo on *host*:*port* until *stop* is set (forever if None).

    *ready*, if given, is set to the bound port once the server accepts.
    Open connections are left to end on their own (a graceful stop).
    """
    listener = start(host, port, cert_file=cert_file, key_file=key_file)
    print(f"Secure echo server listening on {host}:{listener.port}", flush=True)
    if ready is not None:
        ready.set(listener.port)
    try:
        if stop is None:
            listener.serve_forever()
        else:
            stop.wait()
    finally:
        listener.graceful_stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The Ballerina tcp spec's secure echo server.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="port (default: %(default)s; 0: any)")
    parser.add_argument("--cert", required=True, metavar="FILE",
                        help="the server's PEM certificate chain (trustme: server.pem)")
    parser.add_argument("--key", required=True, metavar="FILE",
                        help="the server's PEM private key (trustme: server.key)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    interrupted = Event()
    # In a gevent signal handler, not as a KeyboardInterrupt the hub would print.
    gevent.signal_handler(signal.SIGINT, interrupted.set)
    try:
        main(args.host, args.port, cert_file=args.cert, key_file=args.key, stop=interrupted)
    except gtcp.Error as err:
        raise SystemExit(f"tls_echo_server: {err}") from None
