"""asyncio streams echo server: ``start_server``, ``read(65536)``, ``write``, ``drain``.

The default event loop (no uvloop). asyncio sets TCP_NODELAY on its TCP
transports itself. TLS uses ``ssl.SSLContext`` with the same settings as gtcp.

usage: python benchmarks/asyncio_echo.py PORT [--tls CERT KEY]
"""

from __future__ import annotations

import asyncio
import signal
import ssl

from _common import (
    HOST,
    announce,
    configure_server_context,
    parse_server_args,
    raise_nofile_limit,
)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF."""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def serve(port: int, ctx: ssl.SSLContext | None) -> None:
    """Listen, announce, and wait for SIGTERM/SIGINT."""
    server = await asyncio.start_server(handle, HOST, port, ssl=ctx, backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce(server.sockets[0].getsockname()[1])
    await stop.wait()
    server.close()


def main() -> None:
    """Serve until SIGTERM/SIGINT."""
    args = parse_server_args(__doc__ or "")
    raise_nofile_limit()
    ctx = None
    if args.tls:
        ctx = configure_server_context(
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), args.cert or "", args.key or ""
        )
    asyncio.run(serve(args.port, ctx))


if __name__ == "__main__":
    main()
