"""Chat server: every line a client sends goes to every other client.

After Ballerina's ``tcp-chat-server`` example. Run it and connect a few
terminals with ``nc``::

    python examples/chat_server.py --port 3000
    nc 127.0.0.1 3000

Each client is greeted with :data:`WELCOME` once it has joined (so a client
that has read the greeting knows it will receive what the others send). A
message is a line: the listener's ``framing=gtcp.Lines(...)`` hands
``on_bytes`` one whole line at a time, however TCP cut it up, and the line
goes to the others whole, ending with ``b"\\n"`` (a ``b"\\r\\n"`` ending,
as telnet sends, arrives as ``b"\\n"``). A half-typed line waits for its end. A
line over :data:`MAX_LINE` bytes ends its sender's connection (gtcp's
``FrameTooLongError``, logged); the others stay.

Writes go out from the sender's connection greenlet through each recipient's
``Caller``. A recipient whose write fails (it went away, or did not read for
``WRITE_TIMEOUT`` seconds) is dropped; the others still get the message.

From Python, ``main(host, port, ready=..., stop=...)`` runs the server until
the ``stop`` event is set; ``ready`` (a ``gevent.event.AsyncResult``) receives
the bound port.
"""

from __future__ import annotations

import argparse
import logging
import signal

import gevent
from gevent.event import AsyncResult, Event

import gtcp

log = logging.getLogger(__name__)

#: Sent to each client once it has joined the room.
WELCOME = b"Welcome! Each line you send goes to everyone else.\n"

#: Longest line a client may send, in bytes, not counting its ending.
MAX_LINE = 64 * 1024

#: Seconds a write to a client that does not read may block the sender
#: before that client is dropped.
WRITE_TIMEOUT = 10.0


class ChatServer(gtcp.Service):
    """The room: the set of connected callers, and the broadcast."""

    def __init__(self) -> None:
        self.callers: set[gtcp.Caller] = set()

    def on_connect(self, caller: gtcp.Caller) -> ChatConnection | gtcp.Error:
        """Join *caller* to the room, then greet it."""
        self.callers.add(caller)
        try:
            caller.write_bytes(WELCOME)
        except gtcp.Error as err:
            # Ballerina's ``check``: the error is logged, the connection closed.
            self.callers.discard(caller)
            return err
        print(f"{_name(caller)} joined ({len(self.callers)} connected)", flush=True)
        return ChatConnection(self, caller)

    def broadcast(self, sender: gtcp.Caller, line: bytes) -> None:
        """Write *line* and ``b"\\n"`` to every caller but *sender*; drop those that fail."""
        data = line + b"\n"
        for caller in list(self.callers):
            if caller is sender:
                continue
            try:
                caller.write_bytes(data)
            except gtcp.Error as err:
                log.warning("Dropping %s: %s", _name(caller), err)
                self.callers.discard(caller)
                caller.close()

    def leave(self, caller: gtcp.Caller) -> None:
        """Remove *caller* from the room (its connection ended)."""
        self.callers.discard(caller)
        print(f"{_name(caller)} left ({len(self.callers)} connected)", flush=True)


class ChatConnection(gtcp.ConnectionService):
    """One member's connection: pass on each line it sends; leave when it ends."""

    def __init__(self, room: ChatServer, caller: gtcp.Caller) -> None:
        self.room = room
        self.caller = caller

    def on_bytes(self, line: bytes) -> None:
        """Pass the line (without its ending) on to everyone else."""
        self.room.broadcast(self.caller, line)

    def on_error(self, err: gtcp.Error) -> None:
        """A read or write on this connection failed, or a line was too long; it closes next."""
        log.info("%s: %s", _name(self.caller), err)

    def on_close(self) -> None:
        """The connection ended: leave the room."""
        self.room.leave(self.caller)


def _name(caller: gtcp.Caller) -> str:
    return f"{caller.remote_host}:{caller.remote_port}"


def start(host: str = "127.0.0.1", port: int = 0, room: ChatServer | None = None) -> gtcp.Listener:
    """Start the chat listener on *host*:*port* (0: a free port) and return it.

    *room* is the :class:`ChatServer` to serve (default: a new one).
    """
    listener = gtcp.Listener(port, local_host=host, write_timeout=WRITE_TIMEOUT,
                             framing=gtcp.Lines(max_length=MAX_LINE))
    listener.attach(room if room is not None else ChatServer())
    listener.start()
    return listener


def main(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ready: AsyncResult | None = None,
    stop: Event | None = None,
) -> None:
    """Serve the chat on *host*:*port* until *stop* is set (forever if None).

    *ready*, if given, is set to the bound port once the server accepts.
    Stopping closes every connection (members get EOF).
    """
    listener = start(host, port)
    print(f"Chat server listening on {host}:{listener.port}", flush=True)
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
    parser = argparse.ArgumentParser(description="A broadcast chat server on gtcp.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=3000, help="port (default: %(default)s; 0: any)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    interrupted = Event()
    # In a gevent signal handler, not as a KeyboardInterrupt the hub would print.
    gevent.signal_handler(signal.SIGINT, interrupted.set)
    main(args.host, args.port, stop=interrupted)
