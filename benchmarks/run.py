"""Run every gtcp benchmark with A/B alternation and print one table of ratios.

usage: python benchmarks/run.py [--quick] [--rounds N] [--duration S] [--warmup S]
                                [--only SCENARIO[,SCENARIO...]] [--stand-in]

Servers run pinned to one core, the load generator (C, epoll) and the clients
on another. Within each scenario the servers take turns (gtcp, raw, raw, gtcp,
... the order rotates every round); each ratio is taken pair by pair within a
round, and the table shows medians. ``--stand-in`` runs the raw gevent server
and client in gtcp's place, to check the harness itself (ratios near 1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import _harness
from _harness import Certs, HarnessError, Load, Server

Results = dict[str, list[dict[str, Any]]]

SCENARIOS = ("ceiling", "echo", "big", "latency", "tls", "stream", "client", "idle")
IDLE_CONNS = {False: 10_000, True: 2_000}


@dataclass
class Config:
    """Everything a scenario needs to run."""

    rounds: int
    duration: float
    warmup: float
    stand_in: bool
    quick: bool
    certs: Certs
    certs_dir: str
    server_core: int | None
    client_core: int | None


@dataclass
class Row:
    """One line of the final table."""

    measure: str
    gtcp: str
    peer: str
    ratio: str
    target: str
    ok: bool | None = None

    def cells(self) -> list[str]:
        """The row as table cells."""
        verdict = {True: "pass", False: "FAIL", None: "-"}[self.ok]
        return [self.measure, self.gtcp, self.peer, self.ratio, self.target, verdict]


@dataclass
class Target:
    """A bound a ratio must meet: ``>= value`` or ``<= value`` (None: informative)."""

    op: str | None = None
    value: float = 0.0

    def text(self) -> str:
        """``>= 1.5`` or ``-``."""
        return f"{self.op} {self.value:g}" if self.op else "-"

    def met(self, ratio: float) -> bool | None:
        """Whether ``ratio`` meets the bound (None when informative)."""
        if self.op is None:
            return None
        return ratio >= self.value if self.op == ">=" else ratio <= self.value


@dataclass
class Metric:
    """Which result field a row compares, and how to print it."""

    key: str
    unit: str
    fmt: str = "{:,.0f}"

    def show(self, value: float) -> str:
        """The value with its unit."""
        return f"{self.fmt.format(value)} {self.unit}"


# --------------------------------------------------------------------------- A/B core


def round_orders(names: list[str], rounds: int) -> list[list[str]]:
    """The order servers take in each round: rotated, then reversed, so none is always first."""
    orders = []
    for i in range(rounds):
        k = (i // 2) % len(names)
        order = names[k:] + names[:k]
        orders.append(order if i % 2 == 0 else order[::-1])
    return orders


def log(text: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(text, file=sys.stderr, flush=True)


def describe_load(name: str, result: dict[str, Any]) -> str:
    """One progress line for a load generator run."""
    if result["mode"] == "stream":
        main = f"{result['mibps']:9.1f} MiB/s"
    else:
        main = (
            f"{result['rps']:10,.0f} req/s {result['mibps']:8.1f} MiB/s "
            f"p50 {result['p50_us']:7.1f}us p99 {result['p99_us']:8.1f}us"
        )
    return (
        f"  {name:8s} {main}  server cpu {result['server_cpu_pct']:3.0f}%"
        f"  loadgen cpu {result['cpu_pct']:3.0f}%"
    )


BUSY_PCT = 85.0
RETRIES = 2


def disturbed(load: Load, result: dict[str, Any]) -> bool:
    """A many-connection run where neither side was busy: the VM stalled us."""
    if load.conns < 10:
        return False
    return bool(result["server_cpu_pct"] < BUSY_PCT and result["cpu_pct"] < BUSY_PCT)


def measure_steady(cfg: Config, server: Server, load: Load) -> dict[str, Any]:
    """One measurement, repeated (up to RETRIES times) when it looks disturbed."""
    for attempt in range(RETRIES + 1):
        result = _harness.measure_server(server, load, cfg.duration, cfg.warmup, cfg.client_core)
        if attempt == RETRIES or not disturbed(load, result):
            return result
        log(describe_load(server.name, result) + "  <- disturbed (neither side busy), again")
    return result


def load_rounds(cfg: Config, names: list[str], load: Load, rounds: int | None = None) -> Results:
    """Run ``load`` against each server in alternation; results per server, by round."""
    certs = cfg.certs if load.tls else None
    servers = {n: Server(n, certs, cfg.server_core, cfg.stand_in) for n in names}
    results: Results = {n: [] for n in names}
    log(f"[{load.label()}] {' vs '.join(names)}")
    try:
        for server in servers.values():
            server.start()
        for order in round_orders(names, rounds or cfg.rounds):
            for name in order:
                result = measure_steady(cfg, servers[name], load)
                results[name].append(result)
                log(describe_load(name, result))
    finally:
        for server in servers.values():
            server.stop()
    return results


def compare(measure: str, results: Results, a: str, b: str, metric: Metric, target: Target) -> Row:
    """A table row: medians of ``a`` and ``b`` and the median of per-round ratios a/b."""
    va = [r[metric.key] for r in results[a]]
    vb = [r[metric.key] for r in results[b]]
    ratios = [x / y for x, y in zip(va, vb, strict=True) if y]
    ratio = statistics.median(ratios) if ratios else float("nan")
    return Row(
        measure,
        metric.show(statistics.median(va)),
        metric.show(statistics.median(vb)),
        ratio_text(ratio, ratios),
        target.text(),
        target.met(ratio),
    )


def ratio_text(ratio: float, ratios: list[float]) -> str:
    """The median ratio, with the range of the per-round ratios when there are several."""
    if len(ratios) < 2:
        return f"{ratio:.2f}"
    return f"{ratio:.2f} [{min(ratios):.2f}..{max(ratios):.2f}]"


RPS = Metric("rps", "req/s")
MIBPS = Metric("mibps", "MiB/s", "{:,.1f}")
P50 = Metric("p50_us", "us", "{:,.1f}")


# --------------------------------------------------------------------------- scenarios


def scenario_ceiling(cfg: Config) -> list[Row]:
    """The load generator's ceiling: the trivial C server against raw gevent."""
    rows = []
    rounds = 1 if cfg.quick else 2
    for tls in (False, True):
        res = load_rounds(cfg, ["trivial", "raw"], Load(100, 1024, tls=tls), rounds)
        name = f"ceiling{' TLS' if tls else ''}: trivial C vs raw, 100x1KiB"
        rows.append(compare(name, res, "trivial", "raw", RPS, Target(">=", 1.5)))
        cpu = statistics.median(r["cpu_pct"] for r in res["trivial"])
        rows.append(
            Row(f"  loadgen cpu at that ceiling{' (TLS)' if tls else ''}", f"{cpu:.0f} %", "-", "-", "-")
        )
    return rows


def scenario_echo(cfg: Config) -> list[Row]:
    """Listener echo, 100 connections x 1 KiB: gtcp vs raw gevent vs asyncio."""
    res = load_rounds(cfg, ["gtcp", "raw", "asyncio"], Load(100, 1024))
    return [
        compare("echo 100x1KiB req/s vs raw gevent", res, "gtcp", "raw", RPS, Target(">=", 1.5)),
        compare("echo 100x1KiB req/s vs asyncio", res, "gtcp", "asyncio", RPS, Target(">=", 1.25)),
        compare(
            "echo 100x1KiB p99 vs raw gevent", res, "gtcp", "raw", Metric("p99_us", "us", "{:,.0f}"), Target()
        ),
    ]


def scenario_big(cfg: Config) -> list[Row]:
    """Listener echo, 10 connections x 64 KiB, with the trivial C server's ceiling beside it.

    At 64 KiB both Python servers spend most of their time copying in the
    kernel, and the load generator's own copies and checks cap what any
    server can show; the ceiling row says how much room there is.
    """
    res = load_rounds(cfg, ["gtcp", "raw", "trivial"], Load(10, 65536))
    return [
        compare("echo 10x64KiB MiB/s vs raw gevent", res, "gtcp", "raw", MIBPS, Target(">=", 1.3)),
        compare("  ceiling: trivial C vs raw, 10x64KiB", res, "trivial", "raw", MIBPS, Target()),
        compare("  gtcp vs trivial C, 10x64KiB", res, "gtcp", "trivial", MIBPS, Target()),
    ]


def scenario_latency(cfg: Config) -> list[Row]:
    """One connection, 1 KiB round trips: p50 latency."""
    res = load_rounds(cfg, ["gtcp", "raw"], Load(1, 1024))
    return [compare("echo 1x1KiB p50 latency vs raw gevent", res, "gtcp", "raw", P50, Target("<=", 1.0))]


def scenario_tls(cfg: Config) -> list[Row]:
    """TLS listener echo, 100 connections x 1 KiB."""
    res = load_rounds(cfg, ["gtcp", "raw"], Load(100, 1024, tls=True))
    return [compare("TLS echo 100x1KiB req/s vs raw gevent", res, "gtcp", "raw", RPS, Target(">=", 1.1))]


def scenario_stream(cfg: Config) -> list[Row]:
    """Streaming echo, 10 connections writing 16 KiB chunks (informative)."""
    rows = []
    for tls in (False, True):
        res = load_rounds(cfg, ["gtcp", "raw"], Load(10, 16384, "stream", tls))
        name = f"{'TLS ' if tls else ''}stream 10 conns MiB/s vs raw gevent"
        rows.append(compare(name, res, "gtcp", "raw", MIBPS, Target()))
    return rows


def run_json(cmd: list[str], core: int | None, timeout: float) -> dict[str, Any]:
    """Run a Python benchmark script pinned to ``core``; parse its JSON line."""
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=_harness.python_env(),
        preexec_fn=_harness.pinned(core),
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} failed:\n{done.stderr.strip()[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def client_rounds(cfg: Config, tls: bool) -> Results:
    """client_rr.py with each implementation in alternation against the trivial C server."""
    results: Results = {"gtcp": [], "raw": []}
    log(f"[client {'TLS ' if tls else ''}sequential 1KiB] gtcp vs raw")
    with Server("trivial", cfg.certs if tls else None, cfg.server_core) as server:
        for order in round_orders(["gtcp", "raw"], cfg.rounds):
            for impl in order:
                cmd = [
                    sys.executable,
                    str(_harness.BENCH_DIR / "client_rr.py"),
                    str(server.port),
                    "--impl",
                    impl,
                    "--duration",
                    str(cfg.duration),
                ]
                cmd += ["--tls", cfg.certs.ca] if tls else []
                cmd += ["--stand-in"] if cfg.stand_in else []
                result = run_json(cmd, cfg.client_core, cfg.duration + 60)
                results[impl].append(result)
                log(
                    f"  {impl:8s} {result['rps']:10,.0f} round trips/s "
                    f"p50 {result['p50_us']:7.1f}us p99 {result['p99_us']:7.1f}us"
                )
    return results


def scenario_client(cfg: Config) -> list[Row]:
    """gtcp.Client vs a raw gevent socket: sequential 1 KiB round trips."""
    rows = []
    for tls in (False, True):
        res = client_rounds(cfg, tls)
        name = f"Client{' TLS' if tls else ''} sequential 1KiB round trips/s vs raw"
        rows.append(compare(name, res, "gtcp", "raw", Metric("rps", "rt/s"), Target(">=", 1.0)))
    return rows


def idle_rounds(cfg: Config, tls: bool, conns: int) -> Results:
    """idle.py for gtcp and raw gevent in alternation."""
    results: Results = {"gtcp": [], "raw": []}
    log(f"[idle {'TLS ' if tls else ''}{conns} conns] gtcp vs raw")
    rounds = 1 if cfg.quick else min(cfg.rounds, 2)
    for order in round_orders(["gtcp", "raw"], rounds):
        for name in order:
            cmd = [
                sys.executable,
                str(_harness.BENCH_DIR / "idle.py"),
                "--server",
                name,
                "--conns",
                str(conns),
                "--certs",
                cfg.certs_dir,
            ]
            cmd += ["--tls"] if tls else []
            cmd += ["--stand-in"] if cfg.stand_in else []
            result = run_json(cmd, cfg.client_core, 300)
            results[name].append(result)
            log(
                f"  {name:8s} {result['per_conn_kib']:6.2f} KiB/conn  held "
                f"{result['held']}/{result['requested']}  (opened in {result['open_seconds']}s)"
            )
    return results


def held_row(tls: bool, conns: int, res: Results) -> Row:
    """Connections every gtcp round held at once, against the goal."""
    held = min(r["held"] for r in res["gtcp"])
    peer = min(r["held"] for r in res["raw"])
    return Row(
        f"connections held at once{' (TLS)' if tls else ''}",
        f"{held:,}",
        f"{peer:,}",
        "-",
        f">= {conns:,}",
        held >= conns,
    )


def scenario_idle(cfg: Config) -> list[Row]:
    """Memory per idle connection and connections held: plain 10,000, TLS 2,000."""
    rows = []
    for tls in (False, True):
        conns = IDLE_CONNS[tls]
        res = idle_rounds(cfg, tls, conns)
        name = f"memory per idle conn{' TLS' if tls else ''} ({conns:,}) vs raw"
        rows.append(
            compare(name, res, "gtcp", "raw", Metric("per_conn_kib", "KiB", "{:.2f}"), Target("<=", 1.05))
        )
        rows.append(held_row(tls, conns, res))
    return rows


RUNNERS: dict[str, Callable[[Config], list[Row]]] = {
    "ceiling": scenario_ceiling,
    "echo": scenario_echo,
    "big": scenario_big,
    "latency": scenario_latency,
    "tls": scenario_tls,
    "stream": scenario_stream,
    "client": scenario_client,
    "idle": scenario_idle,
}


# --------------------------------------------------------------------------- report


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info(cfg: Config) -> list[str]:
    """Lines describing the machine and the software measured."""
    import ssl

    pinning = (
        f"servers on core {cfg.server_core}, load generator/clients on core {cfg.client_core}"
        if cfg.server_core is not None
        else "NOT pinned (fewer than 2 usable cores): ratios are less reliable"
    )
    return [
        f"CPU: {cpu_model()}; {os.cpu_count()} cores, {len(os.sched_getaffinity(0))} usable",
        f"Kernel: {platform.release()}; Python {platform.python_version()}; "
        f"gevent {metadata.version('gevent')}",
        f"OpenSSL: Python {ssl.OPENSSL_VERSION}; C tools {_harness.loadgen_openssl_version()}",
        f"Pinning: {pinning}",
        f"Rounds {cfg.rounds}, {cfg.duration}s per run after {cfg.warmup}s warm-up",
    ]


def print_table(rows: list[Row]) -> None:
    """The ratio table, columns aligned."""
    header = ["measure", "gtcp", "peer", "ratio", "must reach", "pass/fail"]
    cells = [header] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    for i, line in enumerate(cells):
        print(
            " | ".join(
                c.ljust(w) if j == 0 else c.rjust(w)
                for j, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if i == 0:
            print("-+-".join("-" * w for w in widths))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (~1 min)")
    parser.add_argument("--rounds", type=int, help="A/B rounds per scenario (default 5, quick 2)")
    parser.add_argument("--duration", type=float, help="seconds measured per run (2, quick 0.7)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per run (0.5, quick 0.2)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help=f"run only these scenarios (comma-separated): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--stand-in", action="store_true", help="raw gevent in gtcp's place: checks the harness, ratios ~1.0"
    )
    return parser.parse_args(argv)


def selected(only: list[str]) -> list[str]:
    """The scenarios asked for, in the canonical order."""
    wanted = {s.strip() for item in only for s in item.split(",") if s.strip()}
    unknown = wanted - set(SCENARIOS)
    if unknown:
        raise SystemExit(
            f"unknown scenario(s): {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}"
        )
    return [s for s in SCENARIOS if not wanted or s in wanted]


def check_gtcp(stand_in: bool) -> None:
    """Exit with a clear message when gtcp cannot be imported (unless standing in)."""
    if stand_in:
        return
    done = subprocess.run(
        [sys.executable, "-c", "import gtcp; gtcp.Listener; gtcp.Client"],
        capture_output=True,
        text=True,
        env=_harness.python_env(),
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(
            "gtcp is not importable from this checkout:\n"
            f"{done.stderr.strip()[-1500:]}\n"
            "(use --stand-in to exercise the harness with raw gevent in its place)"
        )


def make_config(args: argparse.Namespace, certs_dir: str) -> Config:
    """Defaults for normal and --quick runs, overridden by the options given."""
    server_core, client_core = _harness.cpu_plan()
    return Config(
        rounds=args.rounds or (2 if args.quick else 5),
        duration=args.duration or (0.7 if args.quick else 2.0),
        warmup=args.warmup if args.warmup is not None else (0.2 if args.quick else 0.5),
        stand_in=args.stand_in,
        quick=args.quick,
        certs=_harness.make_certs(certs_dir),
        certs_dir=certs_dir,
        server_core=server_core,
        client_core=client_core,
    )


def main() -> int:
    """Run the chosen scenarios; print machine info and the table. Exit 1 on a failed target."""
    args = parse_args()
    scenarios = selected(args.only)
    check_gtcp(args.stand_in)
    from _common import raise_nofile_limit

    soft, _ = raise_nofile_limit()
    if soft < IDLE_CONNS[False] + 100:
        log(
            f"warning: RLIMIT_NOFILE is {soft}; the idle benchmark needs "
            f"{IDLE_CONNS[False] + 100}+ (raise the hard limit: ulimit -Hn)"
        )
    try:
        _harness.build_all()
    except HarnessError as exc:
        raise SystemExit(f"error: {exc}") from None
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gtcp-bench-") as tmp:
        cfg = make_config(args, tmp)
        rows = [row for name in scenarios for row in RUNNERS[name](cfg)]
    print()
    for line in machine_info(cfg):
        print(line)
    if cfg.stand_in:
        print("STAND-IN RUN: the gtcp column is raw gevent; this checks the harness only")
    print(f"Total time: {time.monotonic() - t0:.0f}s\n")
    print_table(rows)
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
