"""Sequential 1 KiB round trips from one client to an echo server.

``--impl gtcp`` uses ``gtcp.Client`` (``write_bytes`` then ``read_bytes`` until
the whole echo is back); ``--impl raw`` does the same with a gevent socket
(TCP_NODELAY; TLS through ``gevent.ssl.SSLContext``, TLS >= 1.2, the CA given,
hostname checked). Every echo is compared with what was sent. Prints one JSON
line: round trips per second, p50 and p99 latency.

usage: python benchmarks/client_rr.py PORT --impl gtcp|raw [--tls CA]
                                       [--duration S] [--size BYTES] [--stand-in]

Run it against a fast server (run.py uses the C ``trivial_echo``) so that the
client is what is measured.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import statistics
import time
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"
RoundTrip = Callable[[bytes], bytes]


def raw_round_trip(port: int, ca: str | None) -> RoundTrip:
    """A round-trip function over a plain gevent socket (TLS when ``ca`` is given)."""
    import gevent.socket
    import gevent.ssl

    sock: Any = gevent.socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ca:
        ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_COMPRESSION
        ctx.load_verify_locations(ca)
        sock = ctx.wrap_socket(sock, server_hostname=HOST)
    sendall, recv = sock.sendall, sock.recv

    def round_trip(msg: bytes) -> bytes:
        sendall(msg)
        data = recv(65536)
        if len(data) == len(msg):
            return data
        parts = [data]
        got = len(data)
        while got < len(msg):
            chunk = recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    return round_trip


def gtcp_round_trip(port: int, ca: str | None) -> RoundTrip:
    """A round-trip function over ``gtcp.Client`` (TLS when ``ca`` is given)."""
    import gtcp

    secure = gtcp.ClientSecureSocket(cert=ca) if ca else None
    client = gtcp.Client(HOST, port, secure_socket=secure)
    write_bytes, read_bytes = client.write_bytes, client.read_bytes

    def round_trip(msg: bytes) -> bytes:
        write_bytes(msg)
        data = read_bytes()
        if len(data) == len(msg):
            return data
        parts = [data]
        got = len(data)
        while got < len(msg):
            chunk = read_bytes()
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    return round_trip


def messages(size: int, count: int = 7) -> list[bytes]:
    """A few distinct messages of ``size`` bytes, so a stale echo is caught."""
    return [bytes((i * 7 + k) & 0xFF for i in range(size)) for k in range(count)]


def run(round_trip: RoundTrip, size: int, duration: float, warmup: float) -> dict[str, Any]:
    """Do round trips for ``warmup`` then ``duration`` seconds; return the statistics."""
    msgs = messages(size)
    clock = time.perf_counter
    end_warmup = clock() + warmup
    i = 0
    while clock() < end_warmup:
        msg = msgs[i % len(msgs)]
        if round_trip(msg) != msg:
            raise AssertionError("echo differs from what was sent")
        i += 1
    latencies: list[float] = []
    start = clock()
    end = start + duration
    t = start
    while t < end:
        msg = msgs[i % len(msgs)]
        if round_trip(msg) != msg:
            raise AssertionError("echo differs from what was sent")
        now = clock()
        latencies.append(now - t)
        t = now
        i += 1
    elapsed = t - start
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "count": len(latencies),
        "seconds": round(elapsed, 3),
        "rps": len(latencies) / elapsed,
        "p50_us": cuts[49] * 1e6,
        "p99_us": cuts[98] * 1e6,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--impl", choices=("gtcp", "raw"), required=True)
    parser.add_argument("--tls", metavar="CA", help="CA file: connect with TLS and verify")
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument(
        "--stand-in",
        action="store_true",
        help="use the raw gevent client for --impl gtcp (harness self-test)",
    )
    return parser.parse_args(argv)


def main() -> None:
    """Connect, measure, print one JSON line."""
    args = parse_args()
    use_gtcp = args.impl == "gtcp" and not args.stand_in
    make = gtcp_round_trip if use_gtcp else raw_round_trip
    result = run(make(args.port, args.tls), args.size, args.duration, args.warmup)
    result.update(impl=args.impl, tls=bool(args.tls), size=args.size)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
