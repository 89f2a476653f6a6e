"""Sequential framed round trips from one client: gtcp.Client against raw gevent and asyncio.

Each round trip writes one 64-byte message and reads its echo as one message:

* ``--framing lines``: 63 bytes + ``b"\\n"``; gtcp ``write_bytes(line)`` +
  ``read_line()``, raw gevent ``sendall`` + ``makefile("rb").readline()``,
  asyncio ``write`` + ``drain`` + ``readline()``.
* ``--framing len4``: a 4-byte big-endian length (64) + 64 bytes; gtcp
  ``write_bytes(header + payload)`` + ``read_exactly(4)`` and
  ``read_exactly(n)``; raw gevent ``read(4)``/``read(n)`` on the file;
  asyncio ``readexactly(4)``/``readexactly(n)``.

``--impl uvloop`` is the asyncio code on uvloop's loop. Every echo is compared
with what was sent. Prints one JSON line: round trips per second, p50 and p99
latency. Run it against a fast echo server (run.py uses the C
``trivial_echo``) so that the client is what is measured.

usage: python benchmarks/client_framed.py PORT --impl gtcp|raw|asyncio|uvloop
                                          --framing lines|len4 [--duration S]
                                          [--warmup S] [--stand-in]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

HOST = "127.0.0.1"
PAYLOAD = 64
TIMEOUT = 10.0
RoundTrip = Callable[[bytes], bytes]
AsyncRoundTrip = Callable[[bytes], Awaitable[bytes]]


def messages(framing: str, count: int = 7) -> list[bytes]:
    """A few distinct 64-byte-payload messages on the wire (no newline inside)."""
    out = []
    for k in range(count):
        if framing == "lines":
            out.append(bytes(33 + (i * 3 + k * 7) % 94 for i in range(PAYLOAD - 1)) + b"\n")
        else:
            out.append(PAYLOAD.to_bytes(4, "big") + bytes(33 + (i * 3 + k * 7) % 94 for i in range(PAYLOAD)))
    return out


# --------------------------------------------------------------------------- implementations


def gtcp_round_trip(port: int, framing: str) -> RoundTrip:
    """``gtcp.Client``: write_bytes, then read_line or read_exactly(4) + read_exactly(n)."""
    import gtcp

    client = gtcp.Client(HOST, port, timeout=TIMEOUT)
    write_bytes = client.write_bytes
    if framing == "lines":
        read_line = client.read_line

        def lines(msg: bytes) -> bytes:
            write_bytes(msg)
            return bytes(read_line())

        return lines
    read_exactly = client.read_exactly

    def len4(msg: bytes) -> bytes:
        write_bytes(msg)
        header = read_exactly(4)
        return bytes(header) + bytes(read_exactly(int.from_bytes(header, "big")))

    return len4


def raw_round_trip(port: int, framing: str) -> RoundTrip:
    """A gevent socket: sendall, then makefile("rb").readline() or read(4) + read(n)."""
    import gevent.socket

    sock: Any = gevent.socket.create_connection((HOST, port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    file = sock.makefile("rb")
    sendall = sock.sendall
    if framing == "lines":
        readline = file.readline

        def lines(msg: bytes) -> bytes:
            sendall(msg)
            return bytes(readline(65536))

        return lines
    read = file.read

    def len4(msg: bytes) -> bytes:
        sendall(msg)
        header = read(4)
        return bytes(header + read(int.from_bytes(header, "big")))

    return len4


async def asyncio_round_trip(port: int, framing: str) -> AsyncRoundTrip:
    """asyncio streams: write + drain, then readline() or readexactly(4) + readexactly(n)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    if framing == "lines":

        async def lines(msg: bytes) -> bytes:
            writer.write(msg)
            await writer.drain()
            return await reader.readline()

        return lines

    async def len4(msg: bytes) -> bytes:
        writer.write(msg)
        await writer.drain()
        header = await reader.readexactly(4)
        return header + await reader.readexactly(int.from_bytes(header, "big"))

    return len4


# --------------------------------------------------------------------------- measuring


def _stats(latencies: list[float], elapsed: float) -> dict[str, Any]:
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "count": len(latencies),
        "seconds": round(elapsed, 3),
        "rps": len(latencies) / elapsed,
        "p50_us": cuts[49] * 1e6,
        "p99_us": cuts[98] * 1e6,
    }


def _check(got: bytes, msg: bytes) -> None:
    if got != msg:
        raise AssertionError(f"echo differs from what was sent: {got[:80]!r} != {msg[:80]!r}")


def run(round_trip: RoundTrip, msgs: list[bytes], duration: float, warmup: float) -> dict[str, Any]:
    """Round trips for ``warmup`` then ``duration`` seconds; the statistics."""
    clock = time.perf_counter
    end_warmup = clock() + warmup
    i = 0
    while clock() < end_warmup:
        msg = msgs[i % len(msgs)]
        _check(round_trip(msg), msg)
        i += 1
    latencies: list[float] = []
    start = t = clock()
    end = start + duration
    while t < end:
        msg = msgs[i % len(msgs)]
        _check(round_trip(msg), msg)
        now = clock()
        latencies.append(now - t)
        t = now
        i += 1
    return _stats(latencies, t - start)


async def run_async(port: int, framing: str, duration: float, warmup: float) -> dict[str, Any]:
    """The same loop with an asyncio round trip."""
    round_trip = await asyncio_round_trip(port, framing)
    msgs = messages(framing)
    clock = time.perf_counter
    end_warmup = clock() + warmup
    i = 0
    while clock() < end_warmup:
        msg = msgs[i % len(msgs)]
        _check(await round_trip(msg), msg)
        i += 1
    latencies: list[float] = []
    start = t = clock()
    end = start + duration
    while t < end:
        msg = msgs[i % len(msgs)]
        _check(await round_trip(msg), msg)
        now = clock()
        latencies.append(now - t)
        t = now
        i += 1
    return _stats(latencies, t - start)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--impl", choices=("gtcp", "raw", "asyncio", "uvloop"), required=True)
    parser.add_argument("--framing", choices=("lines", "len4"), required=True)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument(
        "--stand-in", action="store_true", help="the raw gevent client plays --impl gtcp (harness self-test)"
    )
    return parser.parse_args(argv)


def main() -> None:
    """Connect, measure, print one JSON line."""
    args = parse_args()
    impl = "raw" if args.stand_in and args.impl == "gtcp" else args.impl
    if impl in ("gtcp", "raw"):
        make = gtcp_round_trip if impl == "gtcp" else raw_round_trip
        trip = make(args.port, args.framing)
        result = run(trip, messages(args.framing), args.duration, args.warmup)
    elif impl == "uvloop":
        import uvloop

        result = uvloop.run(run_async(args.port, args.framing, args.duration, args.warmup))
    else:
        result = asyncio.run(run_async(args.port, args.framing, args.duration, args.warmup))
    result.update(impl=args.impl, framing=args.framing, size=PAYLOAD)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
