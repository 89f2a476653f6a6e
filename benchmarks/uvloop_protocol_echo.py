"""uvloop ``Protocol`` framed echo: split by hand in ``data_received``, one ``write`` per message.

The fast end of asyncio: no streams, no coroutines per message. Each chunk is
appended to a ``bytearray``; complete messages are walked with an offset,
each payload goes to the (identity) handler, and each framed reply is a
``transport.write`` call of its own (uvloop tries to send it at once). TCP_NODELAY
is set explicitly on every connection.

usage: python benchmarks/uvloop_protocol_echo.py PORT --framing lines|len4
"""

from __future__ import annotations

import asyncio
import signal
import socket
from typing import Any

from _common import HOST, announce, parse_framed_args, raise_nofile_limit


def handle(payload: bytes) -> bytes:
    """The application: echo."""
    return payload


class _Base(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class LineEcho(_Base):
    """Newline-terminated messages."""

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        start = 0
        find = buf.find
        write = self.transport.write
        while True:
            end = find(b"\n", start)
            if end < 0:
                break
            write(handle(bytes(buf[start:end])) + b"\n")
            start = end + 1
        if start:
            del buf[:start]


class Len4Echo(_Base):
    """4-byte big-endian length-prefixed messages."""

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        start = 0
        have = len(buf)
        write = self.transport.write
        while have - start >= 4:
            size = int.from_bytes(buf[start : start + 4], "big")
            end = start + 4 + size
            if end > have:
                break
            reply = handle(bytes(buf[start + 4 : end]))
            write(len(reply).to_bytes(4, "big") + reply)
            start = end
        if start:
            del buf[:start]


async def serve(port: int, framing: str) -> None:
    """Listen, announce, and wait for SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    protocol = LineEcho if framing == "lines" else Len4Echo
    server = await loop.create_server(protocol, HOST, port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce(server.sockets[0].getsockname()[1])
    await stop.wait()
    server.close()


def main() -> None:
    """Serve until SIGTERM/SIGINT."""
    args = parse_framed_args(__doc__ or "")
    raise_nofile_limit()
    import uvloop

    uvloop.run(serve(args.port, args.framing))


if __name__ == "__main__":
    main()
