"""asyncio streams framed echo: ``readline``/``readexactly``, ``write`` + ``drain`` per message.

The way a typical asyncio user writes it: ``asyncio.start_server``; lines with
``reader.readline()``, length-prefixed frames with ``readexactly(4)`` then
``readexactly(n)``; every reply framed, written and drained on its own.
``--loop uvloop`` runs the same code on uvloop's event loop. Both loops set
TCP_NODELAY on their TCP transports.

usage: python benchmarks/asyncio_framed_echo.py PORT --framing lines|len4 [--loop asyncio|uvloop]
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from _common import HOST, announce, parse_framed_args, raise_nofile_limit

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def handle(payload: bytes) -> bytes:
    """The application: echo."""
    return payload


async def serve_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One connection, newline-terminated messages."""
    try:
        while True:
            line = await reader.readline()
            if not line.endswith(b"\n"):
                break
            writer.write(handle(line[:-1]) + b"\n")
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


async def serve_len4(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One connection, 4-byte big-endian length-prefixed messages."""
    try:
        while True:
            header = await reader.readexactly(4)
            payload = await reader.readexactly(int.from_bytes(header, "big"))
            reply = handle(payload)
            writer.write(len(reply).to_bytes(4, "big") + reply)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve(port: int, handler: Handler) -> None:
    """Listen, announce, and wait for SIGTERM/SIGINT."""
    server = await asyncio.start_server(handler, HOST, port, backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce(server.sockets[0].getsockname()[1])
    await stop.wait()
    server.close()


def main() -> None:
    """Serve until SIGTERM/SIGINT."""
    args = parse_framed_args(__doc__ or "", loops=("asyncio", "uvloop"))
    raise_nofile_limit()
    handler = serve_lines if args.framing == "lines" else serve_len4
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.port, handler))
    else:
        asyncio.run(serve(args.port, handler))


if __name__ == "__main__":
    main()
