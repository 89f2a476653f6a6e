"""A small SMTP-like server that upgrades to TLS on ``STARTTLS``.

Run it with a certificate and key (``python -m trustme`` makes a test set in
the current folder), then talk to it with Python's ``smtplib`` or
``examples/starttls_client.py``::

    python -m trustme
    python examples/starttls_server.py --port 2525 --cert server.pem --key server.key
    python examples/starttls_client.py --port 2525 --ca client.pem

The dialogue: a ``220`` greeting; ``EHLO`` lists ``STARTTLS`` while the
connection is plain; ``STARTTLS`` answers ``220`` and the handshake follows;
then ``NOOP``, ``ECHO <text>`` (answered ``250 <text>``) and ``QUIT``.
Commands are lines (``gtcp.Lines``, ``\\r\\n`` endings), and the framing
carries on over TLS after the upgrade.

A client that sends a command right behind ``STARTTLS``, in the same
segment, before its TLS handshake, has sent it unprotected: gtcp discards
it and logs a WARNING, and it is never executed (the STARTTLS
command-injection class of bugs, CVE-2011-0411 in Postfix).

From Python, ``main(host, port, secure_socket, ready=..., stop=...)`` runs
the server until ``stop`` is set; ``ready`` receives the bound port.
"""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

import gevent
from gevent.event import AsyncResult, Event

import gtcp

log = logging.getLogger(__name__)

GREETING = b"220 gtcp ESMTP ready"


class SmtpConnection(gtcp.ConnectionService):
    """One client: one command per line, one reply line (or several) per command."""

    def __init__(self, secure_socket: gtcp.ListenerSecureSocket) -> None:
        self.secure_socket = secure_socket
        #: Every command run, in order (the tests read it).
        self.commands: list[bytes] = []

    def on_bytes(self, caller: gtcp.Caller, line: bytes) -> bytes | None:
        """Run one command; return its reply line."""
        verb, _, argument = line.partition(b" ")
        verb = verb.upper()
        self.commands.append(verb)
        if verb in (b"EHLO", b"HELO"):
            return self._hello(caller, argument)
        if verb == b"STARTTLS":
            return self._starttls(caller)
        if verb == b"NOOP":
            return b"250 OK"
        if verb == b"ECHO":
            return b"250 " + argument
        if verb == b"QUIT":
            caller.write_frame(b"221 Bye")
            caller.close()
            return None
        return b"500 Command not recognized"

    def _hello(self, caller: gtcp.Caller, name: bytes) -> bytes:
        lines = [b"250-gtcp greets " + (name or b"you")]
        if caller.tls is None:
            lines.append(b"250-STARTTLS")
        lines.append(b"250 8BITMIME")
        for extra in lines[:-1]:
            caller.write_frame(extra)
        return lines[-1]

    def _starttls(self, caller: gtcp.Caller) -> bytes | None:
        if caller.tls is not None:
            return b"503 Already running TLS"
        caller.write_frame(b"220 Ready to start TLS")  # the "go ahead", in plaintext
        try:
            caller.start_tls(self.secure_socket)  # returns once the handshake is done
        except gtcp.TLSError as err:
            log.warning("STARTTLS with %s failed: %s", caller.remote_host, err)  # the connection closes
        return None  # the client speaks first after the handshake (EHLO)

    def on_error(self, err: gtcp.Error) -> None:
        """A read failed or a line was too long; the connection closes next."""
        log.info("connection ended: %s", err)


class Smtp(gtcp.Service):
    """The listener's service: greet, then serve commands."""

    def __init__(self, secure_socket: gtcp.ListenerSecureSocket) -> None:
        self.secure_socket = secure_socket
        #: The connection services handed out (the tests read their commands).
        self.connections: list[SmtpConnection] = []

    def on_connect(self, caller: gtcp.Caller) -> SmtpConnection:
        """Send the greeting and serve the new client."""
        caller.write_frame(GREETING)
        connection = SmtpConnection(self.secure_socket)
        self.connections.append(connection)
        return connection


def start(
    host: str, port: int, secure_socket: gtcp.ListenerSecureSocket, service: Any = None
) -> gtcp.Listener:
    """Start the plain listener (TLS comes with STARTTLS) and return it."""
    listener = gtcp.Listener(port, local_host=host, framing=gtcp.Lines(ending=b"\r\n", max_length=1000))
    listener.attach(service if service is not None else Smtp(secure_socket))
    listener.start()
    return listener


def main(
    host: str,
    port: int,
    secure_socket: gtcp.ListenerSecureSocket,
    *,
    ready: AsyncResult | None = None,
    stop: Event | None = None,
) -> None:
    """Serve on *host*:*port* until *stop* is set (forever if None)."""
    listener = start(host, port, secure_socket)
    print(f"STARTTLS server listening on {host}:{listener.port}", flush=True)
    if ready is not None:
        ready.set(listener.port)
    try:
        if stop is None:
            listener.serve_forever()
        else:
            stop.wait()
    finally:
        listener.immediate_stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="An SMTP-like server with STARTTLS, on gtcp.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=2525, help="port (default: %(default)s; 0: any)")
    parser.add_argument("--cert", required=True, help="server certificate chain (PEM)")
    parser.add_argument("--key", required=True, help="server private key (PEM)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    interrupted = Event()
    gevent.signal_handler(signal.SIGINT, interrupted.set)
    gevent.signal_handler(signal.SIGTERM, interrupted.set)
    record = gtcp.ListenerSecureSocket(key=gtcp.CertKey(args.cert, args.key))
    main(args.host, args.port, record, stop=interrupted)
