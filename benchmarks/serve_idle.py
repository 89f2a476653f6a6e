"""Idle connections to ``gtcp serve --workers N``: the RSS of every worker, before and after.

Starts ``python -m gtcp serve serve_echo:service --workers N`` (or, with
``--listener``, ``echo_server.py``: one Listener in one process), nothing
pinned (the kernel places the workers, as in a deployment; the client may be
pinned by whoever starts it). Warms every worker up (200 connections held,
then closed, repeated until each worker got some), reads each worker's VmRSS
from /proc, opens N connections (each connects and echoes one byte, as
``idle.py`` does), waits for the server to settle, reads every VmRSS again and
counts the connections each worker holds (/proc/net/tcp and /proc/PID/fd),
then checks that every connection still echoes. Prints one JSON line.

Per worker, ``per_conn_kib`` is its RSS growth over the connections *it*
holds; the total is the summed growth over all the connections.

usage: python benchmarks/serve_idle.py (--workers N | --listener) [--conns N] [--settle S]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import _harness
import _serving
import gevent
import idle

WARM_CONNS = 200
WARM_MIN = 20
WARM_TRIES = 5


def warm_up(server: Any, open_one: idle.Opener) -> list[list[int]]:
    """Hold WARM_CONNS connections and close them, until every serving process had WARM_MIN of them."""
    spreads = []
    seen = dict.fromkeys(server.pids, 0)
    for _ in range(WARM_TRIES):
        socks, _failures = idle.open_many(open_one, WARM_CONNS)
        counts = _serving.connections_per_pid(server.pids, server.port)
        spreads.append([counts[pid] for pid in server.pids])
        for pid, count in counts.items():
            seen[pid] += count
        idle.close_all(socks)
        if min(seen.values()) >= WARM_MIN:
            break
    return spreads


def rss(pids: list[int]) -> dict[int, int]:
    """VmRSS in KiB of each of ``pids``."""
    return {pid: _harness.proc_rss_kib(pid) for pid in pids}


def measure(server: Any, conns: int, settle: float = 1.0) -> dict[str, Any]:
    """Warm up, measure every worker's RSS before and while ``conns`` connections are held.

    ``settle``: seconds the server gets before the second RSS reading (half
    of it, at most 0.5 s, before the first).
    """
    open_one = idle.opener(server.port, None)
    warm = warm_up(server, open_one)
    gevent.sleep(min(0.5, settle / 2))
    pids = list(server.pids)
    supervisor = server.pid if server.pid not in pids else None
    before = rss(pids)
    sup_before = _harness.proc_rss_kib(supervisor) if supervisor else None
    t0 = time.monotonic()
    socks, failures = idle.open_many(open_one, conns)
    open_secs = time.monotonic() - t0
    gevent.sleep(settle)
    after = rss(pids)
    sup_after = _harness.proc_rss_kib(supervisor) if supervisor else None
    counts = _serving.connections_per_pid(pids, server.port)
    held = idle.still_echoing(socks)
    idle.close_all(socks)
    procs = [{
        "pid": pid,
        "conns": counts[pid],
        "rss_before_kib": before[pid],
        "rss_after_kib": after[pid],
        "per_conn_kib": (after[pid] - before[pid]) / max(1, counts[pid]),
    } for pid in pids]
    return {
        "requested": conns,
        "opened": len(socks),
        "failures": failures,
        "held": held,
        "open_seconds": round(open_secs, 2),
        "per_conn_kib": sum(after[pid] - before[pid] for pid in pids) / max(1, len(socks)),
        "procs": procs,
        "warm_up_spreads": warm,
        "supervisor_rss_kib": None if supervisor is None else [sup_before, sup_after],
        "nofile": {str(pid): _serving.nofile_limit(pid) for pid in pids},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--workers", type=int, help="gtcp serve --workers N")
    which.add_argument("--listener", action="store_true", help="echo_server.py: one Listener, one process")
    parser.add_argument("--conns", type=int, default=10_000)
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds the server gets to settle before its RSS is read again (1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Print one JSON line with the measurement."""
    args = parse_args(argv)
    conns, limit = idle.usable_conns(args.conns)
    if args.listener:
        server: Any = _serving.Plain("listener", "echo_server.py")
        target = "listener"
    else:
        server = _serving.Serve(f"w{args.workers}", args.workers)
        target = f"serve --workers {args.workers}"
    with server:
        result = measure(server, conns, args.settle)
    result.update(target=target, client_nofile=limit)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
