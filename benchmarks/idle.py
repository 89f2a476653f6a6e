"""Memory per idle connection, and how many connections a server holds at once.

Starts the server (pinned to one core when there are two), warms it up, reads
its RSS from /proc, opens N connections (each finishes its TLS handshake and
one 1-byte echo, so the server has set the connection up completely), waits for
the server to settle, reads the RSS again, then checks every connection still
echoes. Prints one JSON line: ``per_conn_kib = (rss_after - rss_before) / held``.

usage: python benchmarks/idle.py --server gtcp|raw|asyncio [--tls] [--conns N]
                                 [--certs DIR] [--stand-in]
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import _harness
import gevent
import gevent.pool
import gevent.socket
import gevent.ssl
from _common import HOST, raise_nofile_limit

Opener = Callable[[], Any]
FDS_SPARE = 64


def opener(port: int, ca: str | None) -> Opener:
    """A function that opens one connection and does a 1-byte echo on it."""
    ctx = None
    if ca:
        ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(ca)

    def open_one() -> Any:
        sock: Any = gevent.socket.create_connection((HOST, port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ctx:
            sock = ctx.wrap_socket(sock, server_hostname=HOST)
        if not echo_once(sock):
            raise ConnectionError("no echo")
        return sock

    return open_one


def echo_once(sock: Any) -> bool:
    """Send one byte, expect it back."""
    sock.sendall(b"x")
    return bool(sock.recv(1) == b"x")


def open_many(open_one: Opener, count: int, concurrency: int = 200) -> tuple[list[Any], int]:
    """Open ``count`` connections; return (sockets, failures)."""
    socks: list[Any] = []
    failures = 0

    def one(_: int) -> None:
        nonlocal failures
        try:
            sock = open_one()
            socks.append(sock)
        except (OSError, ssl.SSLError) as exc:
            failures += 1
            if failures <= 3:
                print(f"idle: connection failed: {exc!r}", file=sys.stderr)

    gevent.pool.Pool(concurrency).map(one, range(count))
    return socks, failures


def still_echoing(socks: list[Any], concurrency: int = 200) -> int:
    """How many of ``socks`` still echo a byte."""
    ok = 0

    def one(sock: Any) -> None:
        nonlocal ok
        try:
            echoed = echo_once(sock)  # yields: read ``ok`` only afterwards
        except (OSError, ssl.SSLError):
            return
        ok += echoed

    gevent.pool.Pool(concurrency).map(one, socks)
    return ok


def close_all(socks: list[Any]) -> None:
    """Close every socket."""
    for sock in socks:
        try:
            sock.close()
        except OSError:
            pass


def settled_rss(pid: int, pause: float = 0.5) -> int:
    """The server's RSS in KiB after a short pause."""
    gevent.sleep(pause)
    return _harness.proc_rss_kib(pid)


def measure(server: _harness.Server, ca: str | None, conns: int) -> dict[str, Any]:
    """Warm up, measure RSS before and while ``conns`` connections are held."""
    open_one = opener(server.port, ca)
    warm, _ = open_many(open_one, 50)
    close_all(warm)
    before = settled_rss(server.pid)
    t0 = time.monotonic()
    socks, failures = open_many(open_one, conns)
    open_secs = time.monotonic() - t0
    after = settled_rss(server.pid, 1.0)
    held = still_echoing(socks)
    close_all(socks)
    return {
        "requested": conns,
        "opened": len(socks),
        "failures": failures,
        "held": held,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "open_seconds": round(open_secs, 2),
        "per_conn_kib": (after - before) / max(1, len(socks)),
    }


def usable_conns(wanted: int) -> tuple[int, int]:
    """Raise the fd limit; return (connections we can open, the limit)."""
    soft, _hard = raise_nofile_limit()
    usable = min(wanted, soft - FDS_SPARE)
    if usable < wanted:
        print(
            f"idle: RLIMIT_NOFILE is {soft}: only {usable} of {wanted} connections "
            "can be opened (raise the hard limit: ulimit -Hn)",
            file=sys.stderr,
        )
    return usable, soft


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", choices=("gtcp", "raw", "asyncio"), required=True)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--conns", type=int, default=10_000)
    parser.add_argument("--certs", help="directory with ca.pem/server.pem/server.key")
    parser.add_argument(
        "--stand-in",
        action="store_true",
        help="run the raw gevent server in place of gtcp (harness self-test)",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace, certs_dir: str) -> dict[str, Any]:
    """Start the server, measure, stop it."""
    certs = None
    if args.tls:
        certs = _harness.existing_certs(args.certs) if args.certs else _harness.make_certs(certs_dir)
    conns, limit = usable_conns(args.conns)
    server_core, _client_core = _harness.cpu_plan()
    with _harness.Server(args.server, certs, server_core, args.stand_in) as server:
        result = measure(server, certs.ca if certs else None, conns)
    result.update(server=args.server, tls=args.tls, nofile=limit)
    return result


def main() -> None:
    """Print one JSON line with the measurement."""
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="gtcp-bench-") as tmp:
        print(json.dumps(run(args, tmp)), flush=True)


if __name__ == "__main__":
    main()
