"""Before/after: the same gtcp echo server from two checkouts, paired per round.

    git worktree add /tmp/base <commit>
    python benchmarks/compare_checkouts.py /tmp/base [--this DIR] [--rounds 7] [--duration 2]

Each round runs the plain and TLS echo loads (100 connections x 1 KiB, the
``echo`` and ``tls`` scenarios of run.py) against ``echo_server.py`` of the
base checkout, of this one (or of ``--this DIR``), and raw gevent, in an
order that alternates every round. It prints each round as it goes, then
the median and range of the per-round ratios this/base and this/raw. The servers run pinned to one
core, the load generator to the other. What it does not show: anything but
the echo hot path (framing, big messages, memory).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import (  # noqa: E402
    REPO_ROOT,
    Load,
    Server,
    cpu_plan,
    make_certs,
    measure_server,
    server_command,
)

Results = dict[str, dict[str, list[float]]]


def measure(base: Path, rounds: int, duration: float, warmup: float, this: Path = REPO_ROOT) -> Results:
    """Req/s of every run: ``{"plain"|"tls": {"base"|"this"|"raw": [per round]}}``, printed as it goes."""
    server_core, load_core = cpu_plan()
    saved = os.environ.get("GTCP_ROOT")
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certs(tmp)
        loads = {"plain": (Load(100, 1024), None), "tls": (Load(100, 1024, tls=True), certs)}
        results: Results = {name: {"base": [], "this": [], "raw": []} for name in loads}
        try:
            for rnd in range(rounds):
                for name, (load, tls) in loads.items():
                    order = ["base", "this", "raw"]
                    if rnd % 2:
                        order.reverse()
                    for who in order:
                        root = base if who == "base" else this
                        os.environ["GTCP_ROOT"] = str(root)
                        cmd = server_command("raw" if who == "raw" else "gtcp", tls)
                        with Server(who, cmd=cmd, core=server_core) as server:
                            got = measure_server(server, load, duration, warmup, load_core)
                        results[name][who].append(got["rps"])
                        print(f"round {rnd + 1}/{rounds} {name:5} {who:4} {got['rps']:>10,.0f} req/s",
                              flush=True)
        finally:
            if saved is None:
                os.environ.pop("GTCP_ROOT", None)
            else:
                os.environ["GTCP_ROOT"] = saved
    return results


def run(base: Path, rounds: int, duration: float, warmup: float, this: Path = REPO_ROOT) -> int:
    results = measure(base, rounds, duration, warmup, this)
    print()
    print("load  | this/base median [range] | this/raw | base/raw")
    for name, res in results.items():
        mine = [t / b for t, b in zip(res["this"], res["base"], strict=True)]
        this_raw = [t / r for t, r in zip(res["this"], res["raw"], strict=True)]
        base_raw = [b / r for b, r in zip(res["base"], res["raw"], strict=True)]
        print(f"{name:5} | {statistics.median(mine):.3f} [{min(mine):.2f}..{max(mine):.2f}]"
              f" | {statistics.median(this_raw):.2f} | {statistics.median(base_raw):.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="the other checkout (e.g. a git worktree)")
    parser.add_argument("--this", type=Path, default=REPO_ROOT,
                        help="the checkout compared with BASE (default: this one)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args()
    return run(args.base.resolve(), args.rounds, args.duration, args.warmup, args.this.resolve())


if __name__ == "__main__":
    raise SystemExit(main())
