"""Run every gtcp benchmark with A/B alternation and print one table of ratios.

usage: python benchmarks/run.py [--quick] [--rounds N] [--duration S] [--warmup S]
                                [--only SCENARIO[,SCENARIO...]] [--stand-in]
                                [--resp-requests N] [--out DIR]

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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import _harness
from _harness import Certs, HarnessError, Load, Server

Results = dict[str, list[dict[str, Any]]]

SCENARIOS = (
    "ceiling", "echo", "big", "latency", "tls", "stream", "client", "idle", "framed", "client_framed", "resp",
)  # fmt: skip
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
    out: Path = _harness.BENCH_DIR / "results"
    resp_requests: int = 200_000
    #: Medians for the chart: {panel: {group: {server: value}}}.
    chart: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    #: Every run's raw result: {scenario label: {server: [result, ...]}}.
    raw: dict[str, Results] = field(default_factory=dict)
    #: Lines printed under the table (skipped peers, failed checks).
    notes: list[str] = field(default_factory=list)


@dataclass
class Row:
    """One line of the final table."""

    measure: str
    gtcp: str
    peer: str
    ratio: str
    target: str
    ok: bool | None = None
    aim_ok: bool | None = None
    note: str = ""

    def cells(self) -> list[str]:
        """The row as table cells."""
        verdict = {True: "pass", False: "FAIL", None: "-"}[self.ok]
        if self.aim_ok is not None:
            aim = "aim met" if self.aim_ok else "aim missed"
            verdict = aim if self.ok is None else f"{verdict}, {aim}"
        if self.note:
            verdict = self.note
        return [self.measure, self.gtcp, self.peer, self.ratio, self.target, verdict]


@dataclass
class Target:
    """A bound a ratio must meet: ``>= value`` or ``<= value`` (None: informative)."""

    op: str | None = None
    value: float = 0.0
    #: An informational bound (an aim, not a target): shown, never fails the run.
    aim: float | None = None

    def text(self) -> str:
        """``>= 1.5``, ``>= 0.9, aim >= 1.2``, ``aim >= 1`` or ``-``."""
        parts = [f"{self.op} {self.value:g}"] if self.op else []
        if self.aim is not None:
            parts.append(f"aim {self.op or '>='} {self.aim:g}")
        return ", ".join(parts) or "-"

    def met(self, ratio: float) -> bool | None:
        """Whether ``ratio`` meets the bound (None when informative)."""
        if self.op is None:
            return None
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def aim_met(self, ratio: float) -> bool | None:
        """Whether ``ratio`` meets the aim (None without one)."""
        if self.aim is None:
            return None
        return ratio <= self.aim if self.op == "<=" else ratio >= self.aim


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
    elif result["mode"] in _harness.FRAMINGS:
        main = (
            f"{result['mps']:10,.0f} msg/s {result['rps']:9,.0f} req/s "
            f"p50 {result['p50_us']:7.1f}us p99 {result['p99_us']:8.1f}us"
        )
    else:
        main = (
            f"{result['rps']:10,.0f} req/s {result['mibps']:8.1f} MiB/s "
            f"p50 {result['p50_us']:7.1f}us p99 {result['p99_us']:8.1f}us"
        )
    return (
        f"  {name:14s} {main}  server cpu {result['server_cpu_pct']:3.0f}%"
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


def make_server(cfg: Config, name: str, load: Load) -> Server:
    """The server process for ``name`` under ``load`` (framed loads run the framed servers)."""
    if load.framed:
        cmd = _harness.framed_command(name, load.mode, cfg.stand_in)
        return Server(name, None, cfg.server_core, cmd=cmd)
    return Server(name, cfg.certs if load.tls else None, cfg.server_core, cfg.stand_in)


def load_rounds(cfg: Config, names: list[str], load: Load, rounds: int | None = None) -> Results:
    """Run ``load`` against each server in alternation; results per server, by round."""
    servers = {n: make_server(cfg, n, load) for n in names}
    results: Results = {n: [] for n in names}
    orders = round_orders(names, rounds or cfg.rounds)
    log(f"[{load.label()}] {' vs '.join(names)}")
    try:
        for server in servers.values():
            server.start()
        for i, order in enumerate(orders):
            for name in order:
                result = measure_steady(cfg, servers[name], load)
                results[name].append(result)
                log(f"  r{i + 1}/{len(orders)}" + describe_load(name, result))
    finally:
        for server in servers.values():
            server.stop()
    cfg.raw[load.label()] = results
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
        target.aim_met(ratio),
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


# --------------------------------------------------------------------------- framed

#: Framed echo servers, the one under test first; "trivial" (C) is the load generator's ceiling.
FRAMED_NAMES = [
    "gtcp-framed",
    "gtcp-hand",
    "twisted",
    "uvloop-proto",
    "raw",
    "asyncio",
    "asyncio-uvloop",
    "trivial",
]
LABELS = {
    "gtcp-framed": "gtcp framed",
    "gtcp-hand": "hand-buffered gtcp",
    "twisted": "Twisted",
    "uvloop-proto": "uvloop Protocol",
    "raw": "raw gevent",
    "asyncio": "asyncio streams",
    "asyncio-uvloop": "asyncio streams on uvloop",
    "uvloop": "asyncio streams on uvloop",
    "trivial": "trivial C",
    "gtcp": "gtcp",
    "redis": "redis-server",
}
MPS = Metric("mps", "msg/s")

#: Per K: (peer, target) rows for the framed gtcp server; the others are informative.
FRAMED_TARGETS: dict[int, list[tuple[str, Target]]] = {
    1: [
        ("gtcp-hand", Target(">=", 1.15)),
        ("twisted", Target()),
        ("uvloop-proto", Target(aim=1.0)),
    ],
    16: [
        ("gtcp-hand", Target(">=", 2.5)),
        ("twisted", Target(">=", 0.9, aim=1.2)),
        ("uvloop-proto", Target()),
    ],
}
FRAMED_INFO = ["raw", "asyncio", "asyncio-uvloop"]


def gtcp_has(expr: str) -> bool:
    """Whether ``expr`` (e.g. ``gtcp.Lines``) evaluates in a child importing this checkout's gtcp."""
    done = subprocess.run(
        [sys.executable, "-c", f"import gtcp; {expr}"],
        capture_output=True,
        text=True,
        env=_harness.python_env(),
        check=False,
    )
    return done.returncode == 0


def unavailable(
    cfg: Config, names: list[str], gtcp_needs: str, gtcp_names: tuple[str, ...]
) -> dict[str, str]:
    """Why each server/client of ``names`` cannot run here (missing packages, gtcp without the API)."""
    skipped = {}
    for name in names:
        module = _harness.missing_module(name)
        if module:
            skipped[name] = f"{module} not installed"
    if not cfg.stand_in and not gtcp_has(gtcp_needs):
        for name in gtcp_names:
            skipped[name] = f"gtcp lacks {gtcp_needs.split(';')[0]}"
    for name, why in skipped.items():
        note = f"skipped {LABELS.get(name, name)}: {why}"
        add_note(cfg, note)
    return skipped


def add_note(cfg: Config, note: str) -> None:
    """A line for under the table, once."""
    if note not in cfg.notes:
        cfg.notes.append(note)


def compare_or_skip(
    measure: str, res: Results, a: str, b: str, metric: Metric, target: Target, skipped: dict[str, str]
) -> Row:
    """:func:`compare`, or a row saying which side was skipped."""
    for name in (a, b):
        if name in skipped or not res.get(name):
            why = skipped.get(name, "no result")
            return Row(
                measure, "-", "-", "-", target.text(), None, note=f"skip ({LABELS.get(name, name)}: {why})"
            )
    return compare(measure, res, a, b, metric, target)


def chart_put(cfg: Config, panel: str, group: str, res: Results, key: str) -> None:
    """Record the median of ``key`` per server for the chart."""
    cfg.chart.setdefault(panel, {})[group] = {
        name: statistics.median(r[key] for r in runs) for name, runs in res.items() if runs
    }


def scenario_framed(cfg: Config) -> list[Row]:
    """Framed echo (lines, len4), 100 connections, K = 1 and 16 pipelined 64-byte messages a request."""
    skipped = unavailable(cfg, FRAMED_NAMES, "gtcp.Lines; gtcp.LengthPrefixed", ("gtcp-framed",))
    names = [n for n in FRAMED_NAMES if n not in skipped]
    if "gtcp-framed" in skipped:
        log("warning: gtcp has no framing yet; the framed rows are skipped, the peers still run")
    rows = []
    for framing in _harness.FRAMINGS:
        for k in (1, 16):
            res = load_rounds(cfg, names, Load(100, 64, framing, k=k))
            chart_put(cfg, "framed", f"{framing} K={k}", res, "mps")
            head = f"framed {framing} K={k} msg/s"
            for peer, target in FRAMED_TARGETS[k]:
                name = f"{head} vs {LABELS[peer]}"
                rows.append(compare_or_skip(name, res, "gtcp-framed", peer, MPS, target, skipped))
            for peer in FRAMED_INFO:
                name = f"  {head} vs {LABELS[peer]}"
                rows.append(compare_or_skip(name, res, "gtcp-framed", peer, MPS, Target(), skipped))
            ceiling = f"  ceiling: trivial C vs gtcp framed, {framing} K={k}"
            rows.append(compare_or_skip(ceiling, res, "trivial", "gtcp-framed", MPS, Target(), skipped))
    return rows


CLIENT_IMPLS = ["gtcp", "raw", "asyncio", "uvloop"]


def scenario_client_framed(cfg: Config) -> list[Row]:
    """gtcp.Client read_line / read_exactly against raw gevent and asyncio streams: sequential round trips."""
    skipped = unavailable(cfg, CLIENT_IMPLS, "gtcp.Client.read_line; gtcp.Client.read_exactly", ("gtcp",))
    impls = [i for i in CLIENT_IMPLS if i not in skipped]
    rows = []
    rt = Metric("rps", "rt/s")
    with Server("trivial", None, cfg.server_core) as server:
        for framing in _harness.FRAMINGS:
            results: Results = {i: [] for i in impls}
            orders = round_orders(impls, cfg.rounds)
            log(f"[client {framing} sequential 64-byte round trips] {' vs '.join(impls)}")
            for r, order in enumerate(orders):
                for impl in order:
                    cmd = [sys.executable, str(_harness.BENCH_DIR / "client_framed.py"), str(server.port),
                           "--impl", impl, "--framing", framing, "--duration", str(cfg.duration)]  # fmt: skip
                    cmd += ["--stand-in"] if cfg.stand_in else []
                    result = run_json(cmd, cfg.client_core, cfg.duration + 60)
                    results[impl].append(result)
                    log(
                        f"  r{r + 1}/{len(orders)}  {impl:8s} {result['rps']:10,.0f} round trips/s "
                        f"p50 {result['p50_us']:7.1f}us p99 {result['p99_us']:7.1f}us"
                    )
            cfg.raw[f"client {framing}"] = results
            chart_put(cfg, "client", f"client {framing}", results, "rps")
            head = f"Client {framing} sequential round trips/s"
            for peer, target in (
                ("raw", Target(">=", 1.0)),
                ("asyncio", Target(">=", 1.0)),
                ("uvloop", Target()),
            ):
                name = f"{'' if target.op else '  '}{head} vs {LABELS[peer]}"
                rows.append(compare_or_skip(name, results, "gtcp", peer, rt, target, skipped))
    return rows


# --------------------------------------------------------------------------- RESP

RESP_NAMES = ["gtcp", "asyncio", "redis"]
RESP_TESTS = "ping,set,get"
#: Per pipeline depth: (test, peer, target) rows; the others are informative.
RESP_TARGETS: dict[int, dict[tuple[str, str], Target]] = {
    16: {
        ("SET", "redis"): Target(">=", 0.4),
        ("GET", "redis"): Target(">=", 0.4),
        ("SET", "asyncio"): Target(">=", 3.0),
        ("GET", "asyncio"): Target(">=", 3.0),
    },
}


def resp_servers(cfg: Config, workdir: str) -> tuple[dict[str, Server], dict[str, str]]:
    """The RESP servers that can run here, and why the others cannot."""
    skipped: dict[str, str] = {}
    servers: dict[str, Server] = {}
    for name in RESP_NAMES:
        if name == "redis":
            if shutil.which("redis-server") is None:
                skipped[name] = "redis-server not installed (apt-get install redis-server)"
            else:
                servers[name] = _harness.RedisServer(cfg.server_core, workdir)
            continue
        stand_in = cfg.stand_in and name == "gtcp"  # the asyncio server plays gtcp's example
        script = _harness.resp_script("asyncio" if stand_in else name)
        if not script.exists():
            skipped[name] = f"{script} does not exist"
            continue
        cmd = _harness.resp_command("asyncio" if stand_in else name)
        servers[name] = Server(name, None, cfg.server_core, cmd=cmd)
    for name, why in skipped.items():
        add_note(cfg, f"skipped RESP {LABELS[name]}: {why}")
    return servers, skipped


def start_checked(cfg: Config, servers: dict[str, Server], skipped: dict[str, str]) -> None:
    """Start each RESP server and check its replies; a wrong one is dropped (and fails its rows)."""
    for name in list(servers):
        server = servers[name]
        server.start()
        problem = _harness.resp_check(server.port)
        if problem:
            server.stop()
            del servers[name]
            skipped[name] = "wrong replies"
            add_note(cfg, f"RESP {LABELS[name]} answered the check wrongly: {problem[:500]}")


def resp_run(cfg: Config, server: Server, pipeline: int) -> dict[str, Any]:
    """One redis-benchmark run; per-test req/s plus server and redis-benchmark CPU%."""
    before = _harness.proc_cpu_seconds(server.pid)
    kids = os.times()
    t0 = time.monotonic()
    tests = _harness.run_redis_benchmark(
        server.port, RESP_TESTS, cfg.resp_requests, 50, pipeline, cfg.client_core, 600
    )
    elapsed = time.monotonic() - t0
    after = os.times()
    result: dict[str, Any] = {t: v["rps"] for t, v in tests.items()}
    result["server_cpu_pct"] = 100.0 * (_harness.proc_cpu_seconds(server.pid) - before) / elapsed
    used = (after.children_user - kids.children_user) + (after.children_system - kids.children_system)
    result["client_cpu_pct"] = 100.0 * used / elapsed
    result["seconds"] = round(elapsed, 2)
    return result


def scenario_resp(cfg: Config) -> list[Row]:
    """redis-benchmark -t ping,set,get -c 50, -P 1 and -P 16: gtcp's RESP example, asyncio, redis-server."""
    if shutil.which("redis-benchmark") is None:
        add_note(cfg, "skipped resp: redis-benchmark not installed (apt-get install redis-tools)")
        return [Row("RESP (redis-benchmark)", "-", "-", "-", "-", None, note="skip (no redis-benchmark)")]
    rows = []
    rounds = 1 if cfg.quick else cfg.rounds
    with tempfile.TemporaryDirectory(prefix="gtcp-redis-") as workdir:
        for pipeline in (1, 16):
            servers, skipped = resp_servers(cfg, workdir)
            names = [n for n in RESP_NAMES if n in servers]
            label = f"resp -c 50 -P {pipeline} -n {cfg.resp_requests}"
            log(f"[{label}] {' vs '.join(names)}")
            results: Results = {n: [] for n in names}
            try:
                start_checked(cfg, servers, skipped)
                names = [n for n in names if n in servers]
                orders = round_orders(names, rounds)
                for r, order in enumerate(orders):
                    for name in order:
                        result = resp_run(cfg, servers[name], pipeline)
                        results[name].append(result)
                        tests = "  ".join(
                            f"{t} {result[t]:9,.0f}" for t in ("PING_MBULK", "SET", "GET") if t in result
                        )
                        log(
                            f"  r{r + 1}/{len(orders)}  {name:8s} {tests} req/s"
                            f"  server cpu {result['server_cpu_pct']:3.0f}%"
                            f"  redis-benchmark cpu {result['client_cpu_pct']:3.0f}%"
                        )
            finally:
                for server in servers.values():
                    server.stop()
            cfg.raw[label] = results
            for test in ("SET", "GET", "PING_MBULK"):
                chart_put(cfg, "resp", f"{test} -P {pipeline}", {n: v for n, v in results.items() if v}, test)
                for peer in ("redis", "asyncio"):
                    target = RESP_TARGETS.get(pipeline, {}).get((test, peer), Target())
                    indent = "" if target.op else "  "
                    name = f"{indent}RESP -P {pipeline} {test} req/s vs {LABELS[peer]}"
                    row = compare_or_skip(name, results, "gtcp", peer, Metric(test, "req/s"), target, skipped)
                    if target.op and skipped.get("gtcp") == "wrong replies":
                        row.ok, row.note = False, "FAIL (wrong replies)"
                    rows.append(row)
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
    "framed": scenario_framed,
    "client_framed": scenario_client_framed,
    "resp": scenario_resp,
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
        f"gtcp: {gtcp_description()}",
        f"Peers: {peer_versions()}",
    ]


def gtcp_description() -> str:
    """Which gtcp was measured: its checkout, commit and whether gtcp/ had local changes."""
    root = _harness.gtcp_root()
    git = ["git", "-C", str(root)]
    commit = subprocess.run(
        [*git, "log", "-1", "--format=%h %s"], capture_output=True, text=True, check=False
    )
    if commit.returncode != 0:
        return f"{root} (not a git checkout)"
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "gtcp"], capture_output=True, text=True)
    state = ", gtcp/ has uncommitted changes" if dirty.stdout.strip() else ""
    return f"{root} at {commit.stdout.strip()[:70]}{state}"


def peer_versions() -> str:
    """Versions of the optional peers and of redis."""
    parts = []
    for dist in ("twisted", "uvloop", "matplotlib"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    redis = shutil.which("redis-server")
    if redis:
        done = subprocess.run([redis, "--version"], capture_output=True, text=True, check=False)
        parts.append(done.stdout.split(" sha=")[0].replace("Redis server v=", "redis "))
    return ", ".join(parts)


HEADER = ["measure", "gtcp", "peer", "ratio", "must reach", "pass/fail"]


def print_table(rows: list[Row]) -> None:
    """The ratio table, columns aligned."""
    header = HEADER
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
    parser.add_argument(
        "--resp-requests", type=int, help="redis-benchmark -n for the resp scenario (200000, quick 50000)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=_harness.BENCH_DIR / "results",
        help="directory for results.md, results.json and chart.png (default benchmarks/results)",
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
        out=args.out,
        resp_requests=args.resp_requests or (50_000 if args.quick else 200_000),
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
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gtcp-bench-") as tmp:
        cfg = make_config(args, tmp)
        for name in scenarios:
            log(f"== scenario {name} ==")
            rows += RUNNERS[name](cfg)
    info = machine_info(cfg)
    if cfg.stand_in:
        info.append("STAND-IN RUN: the gtcp column is raw gevent; this checks the harness only")
    info.append(f"Total time: {time.monotonic() - t0:.0f}s")
    print()
    for line in info:
        print(line)
    print()
    print_table(rows)
    for note in cfg.notes:
        print(f"note: {note}")
    write_outputs(cfg, info, rows, scenarios)
    return 1 if any(r.ok is False for r in rows) else 0


def write_outputs(cfg: Config, info: list[str], rows: list[Row], scenarios: list[str]) -> None:
    """results.md, results.json and (when there is something to draw) chart.png under ``cfg.out``."""
    import _report

    cfg.out.mkdir(parents=True, exist_ok=True)
    _report.write_markdown(cfg.out / "results.md", info, HEADER, [r.cells() for r in rows], cfg.notes)
    _report.write_json(cfg.out / "results.json", cfg.raw, cfg.chart)
    written = [cfg.out / "results.md", cfg.out / "results.json"]
    title = f"gtcp benchmarks: {', '.join(scenarios)}; {cfg.rounds} rounds of {cfg.duration}s; medians\n"
    title += f"{info[0]}\ngtcp: {gtcp_description()[:110]}"
    if cfg.stand_in:
        title = "STAND-IN RUN (raw gevent / asyncio play gtcp): " + title
    why_not = _report.write_chart(cfg.out / "chart.png", cfg.chart, title)
    if why_not is None:
        written.append(cfg.out / "chart.png")
    elif cfg.chart:
        print(f"note: no chart: {why_not}")
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    sys.exit(main())
