"""A RESP (Redis protocol) server on asyncio streams, written the way a typical asyncio user would.

Commands: PING [msg], ECHO msg, SET key value, GET key, INCR key, DEL key
[key ...]; anything else gets ``-ERR unknown command``. Requests are RESP
multi-bulk arrays (``*N`` then ``$len`` + bytes for each argument, read with
``readline()``/``readexactly()``) or inline commands (one line, split on
spaces). Pipelining works because requests are read and answered one at a
time; every reply is written and drained on its own. The store is a dict
shared by all connections.

The peer of ``examples/resp_server.py`` (gtcp) in the ``resp`` benchmark.

usage: python benchmarks/asyncio_resp.py [--port 0] [--host 127.0.0.1] [--loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable

from _common import announce, raise_nofile_limit

STORE: dict[bytes, bytes] = {}
NULL = b"$-1\r\n"
OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
WRONG_ARGS = b"-ERR wrong number of arguments for '%s' command\r\n"
NOT_INT = b"-ERR value is not an integer or out of range\r\n"


class ProtocolError(Exception):
    """The client sent something that is not RESP."""


def bulk(value: bytes) -> bytes:
    """A RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def cmd_ping(args: list[bytes]) -> bytes:
    if len(args) == 1:
        return PONG
    return bulk(args[1]) if len(args) == 2 else WRONG_ARGS % b"ping"


def cmd_echo(args: list[bytes]) -> bytes:
    return bulk(args[1]) if len(args) == 2 else WRONG_ARGS % b"echo"


def cmd_set(args: list[bytes]) -> bytes:
    if len(args) != 3:
        return WRONG_ARGS % b"set"
    STORE[args[1]] = args[2]
    return OK


def cmd_get(args: list[bytes]) -> bytes:
    if len(args) != 2:
        return WRONG_ARGS % b"get"
    value = STORE.get(args[1])
    return NULL if value is None else bulk(value)


def cmd_incr(args: list[bytes]) -> bytes:
    if len(args) != 2:
        return WRONG_ARGS % b"incr"
    try:
        value = int(STORE.get(args[1], b"0")) + 1
    except ValueError:
        return NOT_INT
    if not -(2**63) <= value < 2**63:
        return NOT_INT
    STORE[args[1]] = b"%d" % value
    return b":%d\r\n" % value


def cmd_del(args: list[bytes]) -> bytes:
    if len(args) < 2:
        return WRONG_ARGS % b"del"
    return b":%d\r\n" % sum(STORE.pop(key, None) is not None for key in args[1:])


COMMANDS: dict[bytes, Callable[[list[bytes]], bytes]] = {
    b"PING": cmd_ping,
    b"ECHO": cmd_echo,
    b"SET": cmd_set,
    b"GET": cmd_get,
    b"INCR": cmd_incr,
    b"DEL": cmd_del,
}


def execute(args: list[bytes]) -> bytes:
    """Run one command; its reply."""
    command = COMMANDS.get(args[0].upper())
    if command is None:
        name = args[0][:64].replace(b"\r", b" ").replace(b"\n", b" ")
        return b"-ERR unknown command '%s'\r\n" % name
    return command(args)


async def read_command(reader: asyncio.StreamReader) -> list[bytes] | None:
    """One request as its arguments; None at EOF; [] for an empty inline line."""
    line = await reader.readline()
    if not line:
        return None
    if not line.endswith(b"\r\n"):
        if not line.endswith(b"\n"):
            return None  # EOF inside a line
        line = line[:-1] + b"\r\n"
    if line[:1] != b"*":
        return line[:-2].split()
    try:
        count = int(line[1:-2])
    except ValueError:
        raise ProtocolError("invalid multibulk length") from None
    args = []
    for _ in range(count):
        header = await reader.readline()
        if header[:1] != b"$":
            raise ProtocolError(f"expected '$', got {header[:1]!r}")
        try:
            size = int(header[1:-2])
        except ValueError:
            raise ProtocolError("invalid bulk length") from None
        if not 0 <= size <= 512 * 1024 * 1024:
            raise ProtocolError("invalid bulk length")
        data = await reader.readexactly(size + 2)
        args.append(data[:-2])
    return args


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve one connection: read a command, write its reply, drain, again."""
    try:
        while True:
            args = await read_command(reader)
            if args is None:
                break
            if not args:
                continue
            writer.write(execute(args))
            await writer.drain()
    except ProtocolError as exc:
        writer.write(b"-ERR Protocol error: %s\r\n" % str(exc).encode())
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int) -> None:
    """Listen, announce, and wait for SIGTERM/SIGINT."""
    server = await asyncio.start_server(handle, host, port, backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce(server.sockets[0].getsockname()[1])
    await stop.wait()
    server.close()


def main() -> None:
    """Serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    raise_nofile_limit()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.host, args.port))
    else:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
