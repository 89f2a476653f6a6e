"""Echo server: the listener sample of the Ballerina tcp spec, section 6.

Run it, then talk to it with ``examples/echo_client.py`` (or ``nc``)::

    python examples/echo_server.py --port 3000
    python examples/echo_client.py --port 3000

Every connection is greeted on the console, every chunk received is printed
and written back; Ctrl-C stops the server gracefully.

From Python, ``main(host, port, ready=..., stop=...)`` runs the server until
the ``stop`` event is set; ``ready`` (a ``gevent.event.AsyncResult``) receives
the bound port, which is how a test finds a server started on port 0.
"""

from __future__ import annotations

import argparse
import logging
import signal

import gevent
from gevent.event import AsyncResult, Event

import gtcp

log = logging.getLogger(__name__)


class EchoService(gtcp.ConnectionService):
    """One connection: print what arrives and send it back."""

    def on_bytes(self, caller: gtcp.Caller, data: bytes) -> gtcp.Error | None:
        """Print the chunk and echo it (Ballerina: ``return caller->writeBytes(data)``).

        A failed write is returned rather than raised: gtcp logs a returned
        error in one line, where a raised one is logged as a bug, traceback
        and all. The failed write has already closed the connection.
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


class Echo(gtcp.Service):
    """The listener's service: one :class:`EchoService` per connection."""

    def on_connect(self, caller: gtcp.Caller) -> EchoService:
        """Greet the connection on the console and serve it."""
        print("Client connected to echo server:", caller.remote_port, flush=True)
        return EchoService()


def start(host: str = "127.0.0.1", port: int = 0) -> gtcp.Listener:
    """Start the echo listener on *host*:*port* (0: a free port) and return it."""
    listener = gtcp.Listener(port, local_host=host)
    listener.attach(Echo())
    listener.start()
    return listener


def main(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ready: AsyncResult | None = None,
    stop: Event | None = None,
) -> None:
    """Serve echo on *host*:*port* until *stop* is set (forever if None).

    *ready*, if given, is set to the bound port once the server accepts.
    Open connections are left to end on their own (a graceful stop).
    """
    listener = start(host, port)
    print(f"Echo server listening on {host}:{listener.port}", flush=True)
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
    parser = argparse.ArgumentParser(description="The Ballerina tcp spec's echo server.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=3000, help="port (default: %(default)s; 0: any)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    interrupted = Event()
    # In a gevent signal handler, not as a KeyboardInterrupt the hub would print.
    gevent.signal_handler(signal.SIGINT, interrupted.set)
    main(args.host, args.port, stop=interrupted)
