"""Services and helpers shared by the tests."""

from __future__ import annotations

from typing import Any

import gevent
from gevent.event import Event
from gevent.queue import Queue

import gtcp


class Echo(gtcp.ConnectionService):
    """Echoes every chunk; records what happened on its connection."""

    def __init__(self, events: Queue | None = None) -> None:
        self.events = events if events is not None else Queue()
        self.closed = Event()

    def on_bytes(self, caller: gtcp.Caller, data: bytes) -> bytes:
        return data

    def on_error(self, err: gtcp.Error) -> None:
        self.events.put(("error", err))

    def on_close(self) -> None:
        self.events.put(("close", None))
        self.closed.set()


class EchoService(gtcp.Service):
    """Hands out one Echo per connection and keeps them and their callers."""

    def __init__(self) -> None:
        self.events: Queue = Queue()
        self.callers: list[gtcp.Caller] = []
        self.services: list[Echo] = []
        self.connected = Queue()

    def on_connect(self, caller: gtcp.Caller) -> Echo:
        self.callers.append(caller)
        service = Echo(self.events)
        self.services.append(service)
        self.connected.put(caller)
        return service


def read_exactly(client: gtcp.Client, size: int) -> bytes:
    """Read until *size* bytes came (several reads), or fail."""
    parts = []
    got = 0
    while got < size:
        chunk = client.read_bytes()
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def raw_connect(port: int, host: str = "127.0.0.1") -> Any:
    """A plain gevent socket connected to the listener."""
    return gevent.socket.create_connection((host, port))


def recv_all(sock: Any) -> bytes:
    """Everything a raw socket receives until EOF."""
    parts = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
