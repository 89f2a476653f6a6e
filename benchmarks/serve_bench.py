"""Benchmarks of ``python -m gtcp serve``: worker processes, HAProxy in front, idle connections.

usage: python benchmarks/serve_bench.py [--quick] [--only workers,haproxy,idle] [--rounds N]
                                        [--duration S] [--warmup S] [--conns N]
                                        [--idle-conns N] [--out DIR]

Three scenarios, each paired per round (the targets take turns in an order
that changes every round; every ratio is taken within one round, and the
table shows the median and the range of those ratios):

``workers``
    The C load generator (``loadgen -m rr``, 100 connections x 1 KiB) against
    ``gtcp serve serve_echo:service --workers 1`` and ``--workers 2``, in two
    layouts of this 2-core machine. *server on 1 core*: the supervisor and its
    workers pinned to the first core, the load generator to the second, as in
    run.py; both worker counts get the same single core, so the ratio is the
    cost of two processes sharing a core and one socket (``echo_server.py``,
    a Listener in one process, runs beside them for reference). *2 cores
    shared*: nothing pinned; a second worker can use what the load generator
    leaves of the second core. Reported: req/s, req/s per worker process, req/s
    per busy core (req/s divided by the CPU time the supervisor and workers
    used, from /proc/PID/stat), and how the 100 connections were spread over
    the workers (from /proc/net/tcp and /proc/PID/fd, mid-run).
``haproxy``
    The same load through HAProxy (``nbthread 1``, TCP mode): ``gtcp serve
    --workers 1 --proxy-protocol v2`` behind ``server ... send-proxy-v2`` against
    raw gevent (``raw_gevent_echo.py``) behind the same HAProxy process and an
    identical backend without ``send-proxy-v2``; and both servers direct.
    Servers on the first core; HAProxy and the load generator on the second.
``idle``
    ``serve_idle.py``: 10,000 idle connections (a finished connect and a 1-byte
    echo each) to ``gtcp serve --workers 2``, ``--workers 1`` and
    ``echo_server.py``; the RSS of every worker before and after, KiB per
    connection, how the connections were spread over the workers.

Progress goes to stderr as it runs; the table to stdout. Writes
``serve.md``, ``serve.json`` and ``serve.png`` into ``benchmarks/results/`` (or
``--out``). About 2.5 minutes on a quiet machine, ``--quick`` 45 s.

Every run checks the CPU time of processes that are not part of the
benchmark (from /proc/stat, minus ours): a run during which they used more
than 15% of a core, or (pinned layouts) in which neither core was 85% busy,
is repeated, up to ``--repeats`` times, after waiting for the machine to calm
down (up to ``--quiet-wait`` seconds, as before each round; all waits of a run
together at most 3 minutes). Rounds in which a run stayed disturbed are left
out of the ratios, and the row says how many counted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _harness
import _serving
from _harness import HarnessError
from run import Metric, cpu_model, gtcp_description, log, ratio_text, round_orders

Results = dict[str, list[dict[str, Any]]]
SCENARIOS = ("workers", "haproxy", "idle")
HEADER = ["measure", "A", "B", "A/B [range]", "medians: CPU, spread"]
#: CPU of other processes (% of one core) above which a run is repeated.
FOREIGN_MAX = 15.0
#: A run with the server on one core where neither side passed this CPU% is repeated (a VM stall).
BUSY_PCT = 85.0
#: A round "spreads" the load when each worker holds at least this share of the connections.
SPREAD_MIN = 0.2
RETRIES = 2
#: Seconds a whole run may spend waiting for other processes to calm down.
WAIT_BUDGET = 180.0
#: The single-process figures the README's Performance section quotes (KiB per idle connection).
README_IDLE_KIB = "8.81 KiB (the run.py table) and 9.19 KiB (the framing runs)"

LABELS = {
    "w1": "serve --workers 1",
    "w2": "serve --workers 2",
    "listener": "echo_server.py (Listener, one process)",
    "gtcp-hap": "gtcp serve -w1 via HAProxy (PROXY v2)",
    "raw-hap": "raw gevent via HAProxy",
    "gtcp": "gtcp serve -w1 direct",
    "raw": "raw gevent direct",
}


@dataclass
class Config:
    """What every scenario needs."""

    rounds: int
    duration: float
    warmup: float
    quick: bool
    conns: int
    idle_conns: int
    out: Path
    first: int | None
    second: int | None
    quiet_wait: float = 30.0
    #: Seconds spent waiting for a quiet machine so far (see :func:`wait_quiet`).
    waited: float = 0.0
    repeats: int = RETRIES
    idle_settle: float = 1.0
    rows: list[list[str]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    chart: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def core(self, which: int | None) -> set[int] | None:
        """``{which}``, or None (free) when the machine has fewer than two usable cores."""
        return None if which is None else {which}


# --------------------------------------------------------------------------- measuring


def machine_busy_seconds() -> tuple[float, float]:
    """(user + nice + system + irq + softirq, steal) seconds of every CPU so far, from /proc/stat.

    The interrupt columns count: the loopback's softirq work, run in a
    process's context, is in that process's system time in /proc/PID/stat
    but in ``softirq`` here.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields] + [0] * 8
    hz = os.sysconf("SC_CLK_TCK")
    return (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]) / hz, ticks[7] / hz


def own_seconds() -> tuple[float, float]:
    """(this process's CPU seconds, its reaped children's CPU seconds)."""
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


def measure(cfg: Config, target: Any, port: int, lg_cpus: set[int] | None,
            extra: dict[str, int] | None = None) -> dict[str, Any]:
    """One load generator run against ``port``; CPU% of the target's processes, spread of connections.

    ``target`` has ``pid`` (the supervisor or the one process) and ``pids``
    (the processes that hold connections); ``extra`` names more processes
    whose CPU% to report (HAProxy).
    """
    serving = list(target.pids)
    others = dict(extra or {})
    watched = sorted({target.pid, *serving, *others.values()})
    cpu0 = _serving.cpu_seconds(watched)
    busy0, steal0 = machine_busy_seconds()
    me0, kids0 = own_seconds()
    t0 = time.monotonic()
    proc = _serving.loadgen(port, cfg.conns, 1024, cfg.duration, cfg.warmup, lg_cpus)
    time.sleep(cfg.warmup + cfg.duration / 2)
    spread = _serving.connections_per_pid(serving, target.port)
    for _ in range(5):  # on a loaded machine the load generator may still be connecting
        if sum(spread.values()) >= cfg.conns or proc.poll() is not None:
            break
        time.sleep(0.05)
        spread = _serving.connections_per_pid(serving, target.port)
    try:
        out, err = proc.communicate(timeout=cfg.duration + cfg.warmup + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise HarnessError("loadgen did not finish") from None
    elapsed = time.monotonic() - t0
    cpu1 = _serving.cpu_seconds(watched)
    busy1, steal1 = machine_busy_seconds()
    me1, kids1 = own_seconds()
    if proc.returncode != 0:
        raise HarnessError(f"loadgen failed ({proc.returncode}): {err.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    pct = {pid: 100.0 * (cpu1[pid] - cpu0[pid]) / elapsed for pid in watched}
    loadgen_pct = 100.0 * (kids1 - kids0) / elapsed
    ours = sum(pct.values()) + loadgen_pct + 100.0 * (me1 - me0) / elapsed
    server_pct = sum(pct[pid] for pid in {target.pid, *serving})
    result.update(
        worker_cpu_pct=[round(pct[pid], 1) for pid in serving],
        server_cpu_pct=round(server_pct, 1),
        loadgen_total_cpu_pct=round(loadgen_pct, 1),
        extra_cpu_pct={name: round(pct[pid], 1) for name, pid in others.items()},
        foreign_cpu_pct=round(100.0 * (busy1 - busy0) / elapsed - ours, 1),
        steal_pct=round(100.0 * (steal1 - steal0) / elapsed, 1),
        spread=[spread[pid] for pid in serving],
        workers=len(serving),
    )
    result["rps_per_worker"] = result["rps"] / len(serving)
    result["rps_per_core"] = result["rps"] / max(server_pct / 100.0, 1e-9)
    return result


def disturbed(result: dict[str, Any], pinned: bool) -> str | None:
    """Why a run does not count (other processes busy, or a stall), or None.

    ``pinned``: the server has one core and the load side (load generator,
    HAProxy) the other; then a run in which neither core was 85% busy was
    stalled (run.py's rule). Unpinned runs have no such rule.
    """
    if result["foreign_cpu_pct"] > FOREIGN_MAX:
        return f"other processes used {result['foreign_cpu_pct']:.0f}% of a core"
    load_side = result["cpu_pct"] + sum(result["extra_cpu_pct"].values())
    if pinned and result["server_cpu_pct"] < BUSY_PCT and load_side < BUSY_PCT:
        return "neither side busy (a stall)"
    return None


def steady(cfg: Config, name: str, run_once: Callable[[], dict[str, Any]], pinned: bool,
           line: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """``run_once()``, repeated (up to ``cfg.repeats`` times) while the run looks disturbed."""
    for attempt in range(cfg.repeats + 1):
        result = run_once()
        why = disturbed(result, pinned)
        result["disturbed"] = why
        if why is None or attempt == cfg.repeats:
            if why is not None:
                note(cfg, f"{name}: a run kept despite {why} (after {cfg.repeats} repeats)")
            return result
        log(line(result) + f"  <- disturbed ({why}), again")
        if cfg.quiet_wait > 0:
            wait_quiet(cfg)
    return result


def describe(name: str, result: dict[str, Any]) -> str:
    """One progress line."""
    workers = "+".join(f"{c:.0f}" for c in result["worker_cpu_pct"])
    extra = "".join(f"  {k} {v:3.0f}%" for k, v in result["extra_cpu_pct"].items())
    spread = "/".join(str(n) for n in result["spread"])
    return (f"  {name:10s} {result['rps']:9,.0f} req/s  p99 {result['p99_us']:7.0f}us  "
            f"server cpu {result['server_cpu_pct']:3.0f}% (workers {workers})  "
            f"loadgen {result['cpu_pct']:3.0f}%{extra}  conns {spread}  "
            f"other {result['foreign_cpu_pct']:3.0f}%")


def wait_quiet(cfg: Config) -> None:
    """Wait (up to ``cfg.quiet_wait`` s) until processes outside this benchmark use < FOREIGN_MAX% of a core.

    Measured over 0.5 s from /proc/stat, minus this process (the targets
    waiting between runs use next to nothing). All the waits of a run share
    a budget of WAIT_BUDGET seconds, so that a machine that never calms down
    costs at most that much; then runs go on (and are repeated) without waiting.
    """
    if cfg.waited >= WAIT_BUDGET:
        return
    start = time.monotonic()
    deadline = start + min(cfg.quiet_wait, WAIT_BUDGET - cfg.waited)
    try:
        wait_until_quiet(cfg, deadline)
    finally:
        cfg.waited += time.monotonic() - start
        if cfg.waited >= WAIT_BUDGET:
            log(f"  (the {WAIT_BUDGET:g}s budget for waiting is spent: no more waiting in this run)")


def wait_until_quiet(cfg: Config, deadline: float) -> None:
    """:func:`wait_quiet`'s loop."""
    waited = False
    while True:
        busy0, _ = machine_busy_seconds()
        me0, _ = own_seconds()
        t0 = time.monotonic()
        time.sleep(0.5)
        busy1, _ = machine_busy_seconds()
        me1, _ = own_seconds()
        other = 100.0 * ((busy1 - busy0) - (me1 - me0)) / (time.monotonic() - t0)
        if other < FOREIGN_MAX or time.monotonic() >= deadline:
            if waited:
                log(f"  ... {'quiet' if other < FOREIGN_MAX else 'still busy'} ({other:.0f}%); going on")
            return
        if not waited:
            log(f"  waiting up to {cfg.quiet_wait:g}s for other processes to calm down "
                f"({other:.0f}% of a core)")
            waited = True


def note(cfg: Config, text: str) -> None:
    """A line for under the table, once."""
    if text not in cfg.notes:
        cfg.notes.append(text)


def rounds_of(cfg: Config, names: list[str], label: str,
              run_one: Callable[[str], dict[str, Any]], pinned: bool) -> Results:
    """Every target once per round, in :func:`run.round_orders`; progress lines as it goes."""
    results: Results = {n: [] for n in names}
    orders = round_orders(names, cfg.rounds)
    for i, order in enumerate(orders):
        if cfg.quiet_wait > 0:
            wait_quiet(cfg)
        for name in order:
            def line(result: dict[str, Any], name: str = name, i: int = i) -> str:
                return f"  r{i + 1}/{len(orders)}" + describe(name, result)

            result = steady(cfg, f"{label} {name}", lambda name=name: run_one(name), pinned, line)
            results[name].append(result)
            log(line(result))
    cfg.raw[label] = results
    return results


# --------------------------------------------------------------------------- table rows


def median(values: list[float]) -> float:
    """statistics.median, NaN for no values."""
    return statistics.median(values) if values else float("nan")


def clean(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs that were not disturbed (all of them if none was clean)."""
    good = [r for r in runs if r.get("disturbed") is None]
    return good or runs


def clean_rounds(res: Results, names: tuple[str, ...]) -> list[int]:
    """The rounds in which no run of ``names`` was disturbed (every round if there is none)."""
    count = min(len(res[name]) for name in names)
    good = [i for i in range(count) if all(res[name][i].get("disturbed") is None for name in names)]
    return good or list(range(count))


def ratio_row(measure: str, res: Results, a: str, b: str, metric: Metric, detail: str = "",
              keep: Callable[[int], bool] | None = None) -> list[str]:
    """Medians of ``a`` and ``b`` and the median (range) of the per-round ratios a/b.

    Only rounds in which neither run was disturbed (after its repeats) count,
    unless there is none; the detail says how many counted when some did not.
    ``keep(round)`` narrows the rounds further (none kept: a row of dashes).
    """
    rounds = clean_rounds(res, (a, b))
    total = min(len(res[a]), len(res[b]))
    said = []
    if len(rounds) < total:
        said.append(f"{len(rounds)} of {total} rounds undisturbed")
    elif any(res[n][i].get("disturbed") for n in (a, b) for i in rounds):
        said.append("no round undisturbed: all counted")
    if keep is not None:
        rounds = [i for i in rounds if keep(i)]
        said.append(f"{len(rounds)} of {total} rounds" if rounds else "no such round")
    detail = "; ".join([*said, *([detail] if detail else [])])
    if not rounds:
        return [measure, "-", "-", "-", detail]
    va = [res[a][i][metric.key] for i in rounds]
    vb = [res[b][i][metric.key] for i in rounds]
    ratios = [x / y for x, y in zip(va, vb, strict=True) if y]
    return [measure, metric.show(median(va)), metric.show(median(vb)), ratio_text(median(ratios), ratios),
            detail]


def cpu_detail(res: Results, name: str, extra: str | None = None) -> str:
    """``workers 98%, loadgen 71%`` (medians of the undisturbed runs; each worker of several)."""
    runs = clean(res[name])
    workers = len(runs[0]["worker_cpu_pct"])
    parts = []
    if workers > 1:  # busier worker first, in every run
        busy = [sorted(r["worker_cpu_pct"], reverse=True) for r in runs]
        each = "+".join(f"{median([b[w] for b in busy]):.0f}" for w in range(workers))
        parts.append(f"workers {each}%")
    else:
        parts.append(f"server {median([r['server_cpu_pct'] for r in runs]):.0f}%")
    if extra:
        parts.append(f"{extra} {median([r['extra_cpu_pct'][extra] for r in runs]):.0f}%")
    parts.append(f"loadgen {median([r['cpu_pct'] for r in runs]):.0f}%")
    return ", ".join(parts)


def spread_text(runs: list[dict[str, Any]]) -> str:
    """How the connections were spread over the workers: per round, busiest first."""
    shares = ["/".join(str(n) for n in sorted(r["spread"], reverse=True)) for r in runs]
    return "conns per worker by round: " + ", ".join(shares)


RPS = Metric("rps", "req/s")
PER_WORKER = Metric("rps_per_worker", "req/s")
PER_CORE = Metric("rps_per_core", "req/s")
P99 = Metric("p99_us", "us", "{:,.0f}")


# --------------------------------------------------------------------------- scenarios


def start_checked(targets: dict[str, Any], check: tuple[str, ...] | None = None) -> None:
    """Start every target (all at once), wait for each; check that those of ``check`` (default: all) echo."""
    for target in targets.values():
        target.launch()
    for target in targets.values():
        target.wait_ready()
    for name in targets if check is None else check:
        problem = _serving.echo_check(targets[name].port)
        if problem:
            raise HarnessError(f"{name} does not echo: {problem}")


def stop_all(*groups: Any) -> None:
    """Stop every started target: SIGTERM to all, then wait for each."""
    started = [target for group in groups for target in group.values() if target.proc is not None]
    for target in started:
        target.terminate()
    for target in started:
        target.stop()


def scenario_workers(cfg: Config) -> None:
    """``--workers 1`` vs ``--workers 2``: on one core, then with both cores shared.

    Every server of both layouts starts at once (an idle one costs nothing)
    and stops at the end.
    """
    layouts = [
        ("server on 1 core", cfg.core(cfg.first), cfg.core(cfg.second), True),
        ("2 cores shared", None, None, False),
    ]
    servers: dict[str, dict[str, Any]] = {}
    for layout, server_cpus, _lg_cpus, one_core in layouts:
        servers[layout] = {"w1": _serving.Serve("w1", 1, server_cpus),
                           "w2": _serving.Serve("w2", 2, server_cpus)}
        if one_core:
            servers[layout]["listener"] = _serving.Plain("listener", "echo_server.py", server_cpus)
    try:
        start_checked({f"{layout} {name}": server for layout, group in servers.items()
                       for name, server in group.items()})
        for layout, server_cpus, lg_cpus, one_core in layouts:
            workers_layout(cfg, layout, servers[layout], server_cpus, lg_cpus, one_core)
    finally:
        stop_all(*servers.values())


def workers_layout(cfg: Config, layout: str, targets: dict[str, Any], server_cpus: set[int] | None,
                   lg_cpus: set[int] | None, one_core: bool) -> None:
    """The rounds and rows of one layout of :func:`scenario_workers`."""
    label = f"workers, {layout}"
    where = (f"server on cores {sorted(server_cpus)}, load generator on {sorted(lg_cpus)}"
             if server_cpus is not None and lg_cpus is not None else "nothing pinned")
    log(f"[{label}: {cfg.conns}x1KiB rr; {where}] {' vs '.join(targets)}")

    def run_one(name: str) -> Any:
        return measure(cfg, targets[name], targets[name].port, lg_cpus)

    res = rounds_of(cfg, list(targets), label, run_one, one_core and server_cpus is not None)
    head = f"{layout}:"

    def both_serve(i: int) -> bool:
        return min(res["w2"][i]["spread"]) >= cfg.conns * SPREAD_MIN

    cfg.rows += [
        ratio_row(f"{head} req/s, --workers 2 vs 1", res, "w2", "w1", RPS,
                  f"w2 {cpu_detail(res, 'w2')}; w1 {cpu_detail(res, 'w1')}"),
        ratio_row(f"  the same, rounds where each worker had >= {SPREAD_MIN:.0%} of the connections",
                  res, "w2", "w1", RPS, keep=both_serve),
        ratio_row("  req/s per worker process, w2 vs w1", res, "w2", "w1", PER_WORKER),
        ratio_row("  req/s per busy core (server CPU), w2 vs w1", res, "w2", "w1", PER_CORE),
        ratio_row("  p99 latency, w2 vs w1", res, "w2", "w1", P99),
        [f"  connections over the 2 workers ({cfg.conns} in all)", "-", "-", "-", spread_text(res["w2"])],
    ]
    if one_core:
        cfg.rows.append(ratio_row(f"{head} serve --workers 1 vs echo_server.py", res, "w1", "listener",
                                  RPS, f"listener {cpu_detail(res, 'listener')}"))
    cfg.chart.setdefault("workers", {})[layout] = {n: median([r["rps"] for r in clean(runs)])
                                                   for n, runs in res.items()}
    cfg.chart.setdefault("per_core", {})[layout] = {n: median([r["rps_per_core"] for r in clean(runs)])
                                                    for n, runs in res.items()}


def scenario_haproxy(cfg: Config) -> None:
    """gtcp serve -w1 with PROXY v2 vs raw gevent, both behind one HAProxy; and both direct."""
    if _serving.HAPROXY is None:
        note(cfg, "skipped haproxy: haproxy is not installed (apt-get install haproxy)")
        cfg.rows.append(["HAProxy", "-", "-", "-", "skip (haproxy not installed)"])
        return
    server_cpus, side_cpus = cfg.core(cfg.first), cfg.core(cfg.second)
    servers: dict[str, Any] = {
        "gtcp-hap": _serving.Serve("gtcp-hap", 1, server_cpus, ["--proxy-protocol", "v2"]),
        "gtcp": _serving.Serve("gtcp", 1, server_cpus),
        "raw": _serving.Plain("raw", "raw_gevent_echo.py", server_cpus),
    }
    names = ["gtcp-hap", "raw-hap", "gtcp", "raw"]
    where = (f"servers on core {cfg.first}, HAProxy and load generator on core {cfg.second}"
             if server_cpus is not None else "nothing pinned")
    log(f"[haproxy: {cfg.conns}x1KiB rr; {where}] {' vs '.join(names)}")
    with tempfile.TemporaryDirectory(prefix="gtcp-haproxy-") as tmp:
        proxy = None
        try:
            start_checked(servers, ("gtcp", "raw"))  # gtcp-hap wants a PROXY header: checked through HAProxy
            proxy = _serving.HAProxy({"gtcp": (servers["gtcp-hap"].port, "send-proxy-v2"),
                                      "raw": (servers["raw"].port, "")}, side_cpus, tmp)
            proxy.check()
            ports = {"gtcp-hap": proxy.port("gtcp"), "raw-hap": proxy.port("raw"),
                     "gtcp": servers["gtcp"].port, "raw": servers["raw"].port}
            behind = {"gtcp-hap": servers["gtcp-hap"], "raw-hap": servers["raw"],
                      "gtcp": servers["gtcp"], "raw": servers["raw"]}
            haproxy_pid = {"haproxy": proxy.pid}

            def run_one(name: str) -> dict[str, Any]:
                return measure(cfg, behind[name], ports[name], side_cpus, haproxy_pid)

            res = rounds_of(cfg, names, "haproxy", run_one, server_cpus is not None)
            said = proxy.output()
            if "ALERT" in said or "WARNING" in said:
                note(cfg, "haproxy said: " + " | ".join(said.strip().splitlines())[-500:])
        finally:
            if proxy is not None:
                proxy.stop()
            stop_all(servers)
    cfg.rows += [
        ratio_row("via HAProxy: gtcp serve -w1 (PROXY v2) vs raw gevent, req/s", res, "gtcp-hap", "raw-hap",
                  RPS, f"gtcp {cpu_detail(res, 'gtcp-hap', 'haproxy')}; "
                       f"raw {cpu_detail(res, 'raw-hap', 'haproxy')}"),
        ratio_row("  req/s per busy server core via HAProxy, gtcp vs raw", res, "gtcp-hap", "raw-hap",
                  PER_CORE, "req/s / the server's CPU: what each costs when HAProxy sets the pace"),
        ratio_row("  p99 latency via HAProxy, gtcp vs raw", res, "gtcp-hap", "raw-hap", P99),
        ratio_row("direct: gtcp serve -w1 vs raw gevent, req/s", res, "gtcp", "raw", RPS,
                  f"gtcp {cpu_detail(res, 'gtcp')}; raw {cpu_detail(res, 'raw')}"),
        ratio_row("  req/s per busy server core direct, gtcp vs raw", res, "gtcp", "raw", PER_CORE),
        ratio_row("  gtcp serve -w1: via HAProxy vs direct", res, "gtcp-hap", "gtcp", RPS),
        ratio_row("  raw gevent: via HAProxy vs direct", res, "raw-hap", "raw", RPS),
    ]
    rps = {name: median([r["rps"] for r in clean(runs)]) for name, runs in res.items()}
    cfg.chart["haproxy"] = {
        "via HAProxy": {"gtcp": rps["gtcp-hap"], "raw": rps["raw-hap"]},
        "direct": {"gtcp": rps["gtcp"], "raw": rps["raw"]},
    }
    per_core = {name: median([r["rps_per_core"] for r in clean(runs)]) for name, runs in res.items()}
    cfg.chart.setdefault("per_core", {}).update({
        "via HAProxy": {"gtcp": per_core["gtcp-hap"], "raw": per_core["raw-hap"]},
        "direct": {"gtcp": per_core["gtcp"], "raw": per_core["raw"]},
    })


def idle_run(cfg: Config, name: str) -> dict[str, Any]:
    """serve_idle.py once for target ``name`` (w1, w2, listener), the client on the second core."""
    cmd = [sys.executable, str(_harness.BENCH_DIR / "serve_idle.py"), "--conns", str(cfg.idle_conns),
           "--settle", str(cfg.idle_settle)]
    cmd += ["--listener"] if name == "listener" else ["--workers", name[1:]]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_harness.python_env(),
                          preexec_fn=_serving.pin_and_raise(cfg.core(cfg.second)), timeout=300, check=False)
    if done.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} failed:\n{done.stderr.strip()[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def scenario_idle(cfg: Config) -> None:
    """10,000 idle connections over 2 workers: RSS of each worker, KiB per connection, spread."""
    names = ["w2", "w1", "listener"]
    rounds = 1 if cfg.quick else min(cfg.rounds, 2)
    log(f"[idle: {cfg.idle_conns:,} connections; servers free on both cores, client on core {cfg.second}] "
        f"{' vs '.join(names)}")
    results: Results = {n: [] for n in names}
    for i, order in enumerate(round_orders(names, rounds)):
        for name in order:
            result = idle_run(cfg, name)
            results[name].append(result)
            procs = result["procs"]
            per = "  ".join(f"pid {p['pid']}: {p['conns']:,} conns "
                            f"{p['rss_before_kib']:,}->{p['rss_after_kib']:,} KiB "
                            f"({p['per_conn_kib']:.2f}/conn)"
                            for p in procs)
            log(f"  r{i + 1}/{rounds}  {name:8s} {result['per_conn_kib']:6.2f} KiB/conn  held "
                f"{result['held']:,}/{result['requested']:,} in {result['open_seconds']}s  {per}  "
                f"fd limit {'/'.join(sorted(set(result['nofile'].values())))}")
    cfg.raw["idle"] = results
    kib = Metric("per_conn_kib", "KiB", "{:.2f}")
    w2 = results["w2"]
    # Each round's workers, busier first (the pids change from round to round).
    busier = [sorted(r["procs"], key=lambda p: -p["conns"]) for r in w2]
    per_worker = [median([procs[w]["per_conn_kib"] for procs in busier]) for w in range(2)]
    spreads = ["/".join(f"{p['conns']:,}" for p in sorted(r["procs"], key=lambda p: -p["conns"])) for r in w2]
    evenness = [min(p["conns"] for p in r["procs"]) / max(1, max(p["conns"] for p in r["procs"])) for r in w2]
    rss = "; ".join(
        "w2 RSS " + ", ".join(f"{p['rss_before_kib'] / 1024:.1f}->{p['rss_after_kib'] / 1024:.1f} MiB"
                              for p in r["procs"]) for r in w2[:1])
    for runs in results.values():
        for r in runs:
            supervisor = (r["supervisor_rss_kib"] or [0, 0])[1]
            r["total_rss_mib"] = (supervisor + sum(p["rss_after_kib"] for p in r["procs"])) / 1024
    supervisor_mib = median([r["supervisor_rss_kib"][0] for r in w2]) / 1024
    worker_mib = median([p["rss_before_kib"] for r in w2 for p in r["procs"]]) / 1024
    fixed = f"before any connection: supervisor {supervisor_mib:.1f} MiB, each worker {worker_mib:.1f} MiB"
    mib = Metric("total_rss_mib", "MiB", "{:,.1f}")
    cfg.rows += [
        ratio_row(f"idle: KiB per connection, {cfg.idle_conns:,} over 2 workers vs one Listener process",
                  results, "w2", "listener", kib, rss),
        ratio_row("  serve --workers 1 vs one Listener process", results, "w1", "listener", kib),
        ["  KiB per connection of each -w2 worker (busier first)",
         " / ".join(f"{v:.2f}" for v in per_worker), "-", "-",
         "each worker: its RSS growth / the connections it holds"],
        [f"  connections held, -w2 (of {cfg.idle_conns:,})", f"{min(r['held'] for r in w2):,}", "-", "-",
         f"failures {max(r['failures'] for r in w2)}; fd limit per worker "
         f"{'/'.join(sorted({v for r in w2 for v in r['nofile'].values()}))}"],
        ["  spread over the 2 workers", spreads[0], "-", f"{median(evenness):.2f}",
         "A/B: smaller / larger share; rounds: " + ", ".join(spreads)],
        ratio_row(f"  total RSS with {cfg.idle_conns:,} connections (supervisor + workers), -w2 vs Listener",
                  results, "w2", "listener", mib, fixed),
        ratio_row("  the same, -w1 vs Listener", results, "w1", "listener", mib),
    ]
    cfg.chart["idle"] = {
        "KiB per idle connection": {
            "listener": median([r["per_conn_kib"] for r in results["listener"]]),
            "w1": median([r["per_conn_kib"] for r in results["w1"]]),
            "w2": median([r["per_conn_kib"] for r in w2]),
            "w2-a": per_worker[0],
            "w2-b": per_worker[1],
        }
    }
    note(cfg, f"idle: the README's single-process figure for gtcp is {README_IDLE_KIB}")


RUNNERS: dict[str, Callable[[Config], None]] = {
    "workers": scenario_workers,
    "haproxy": scenario_haproxy,
    "idle": scenario_idle,
}

PANELS = (
    ("workers", "gtcp serve, echo 100 x 1 KiB: --workers 1 vs 2 (medians)", "requests/s", "{:,.0f}"),
    ("haproxy", "Behind HAProxy (send-proxy-v2 for gtcp) and direct, 100 x 1 KiB", "requests/s", "{:,.0f}"),
    ("per_core", "req/s per busy server core (req/s / CPU time of the supervisor and workers)",
     "requests/s per core", "{:,.0f}"),
    ("idle", "Idle connections: RSS growth per connection", "KiB", "{:.2f}"),
)
SERIES = {
    "listener": "echo_server.py (one process)",
    "w1": "serve --workers 1",
    "w2": "serve --workers 2",
    "gtcp": "gtcp serve -w1",
    "raw": "raw gevent",
    "w2-a": "-w2, busier worker",
    "w2-b": "-w2, other worker",
}


# --------------------------------------------------------------------------- main


def haproxy_version() -> str:
    """``HAProxy 2.6.12...`` or ``not installed``."""
    if _serving.HAPROXY is None:
        return "not installed"
    done = subprocess.run([_serving.HAPROXY, "-v"], capture_output=True, text=True, check=False)
    return done.stdout.splitlines()[0].split(" - ")[0] if done.stdout else "?"


def machine_info(cfg: Config) -> list[str]:
    """The machine, the software and the settings of this run."""
    import platform
    from importlib import metadata

    return [
        f"CPU: {cpu_model()}; {os.cpu_count()} cores, {len(os.sched_getaffinity(0))} usable",
        f"Kernel: {platform.release()}; Python {platform.python_version()}; "
        f"gevent {metadata.version('gevent')}; {haproxy_version()}",
        f"Rounds {cfg.rounds}, {cfg.duration}s per run after {cfg.warmup}s warm-up; "
        f"load {cfg.conns}x1KiB rr; idle {cfg.idle_conns:,} connections",
        f"gtcp: {gtcp_description()}",
    ]


def print_table(rows: list[list[str]]) -> None:
    """The table, columns aligned (the last column left as it is)."""
    cells = [HEADER, *rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER) - 1)]
    for i, line in enumerate(cells):
        text = " | ".join(c.ljust(w) if j == 0 else c.rjust(w)
                          for j, (c, w) in enumerate(zip(line, widths, strict=False)))
        print(f"{text} | {line[-1]}")
        if i == 0:
            print("-+-".join("-" * w for w in widths) + "-+-" + "-" * len(HEADER[-1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (~45 s)")
    parser.add_argument("--only", action="append", default=[],
                        help=f"run only these scenarios (comma-separated): {', '.join(SCENARIOS)}")
    parser.add_argument("--rounds", type=int,
                        help="rounds per scenario (default 5, quick 2; idle at most 2, quick 1)")
    parser.add_argument("--duration", type=float, help="seconds measured per run (2, quick 0.7)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per run (0.5, quick 0.2)")
    parser.add_argument("--conns", type=int, default=100, help="load generator connections (100)")
    parser.add_argument("--idle-conns", type=int, default=10_000, help="idle connections (10000)")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="before each round and repeat, wait up to S seconds for other processes "
                             f"to go idle (30; 0: do not wait; at most {WAIT_BUDGET:g} s in all)")
    parser.add_argument("--idle-settle", type=float, default=1.0,
                        help="seconds the idle servers get to settle before RSS is read (1)")
    parser.add_argument("--repeats", type=int, default=RETRIES,
                        help=f"times a disturbed run is repeated ({RETRIES}; 0: never)")
    parser.add_argument("--out", type=Path, default=_harness.BENCH_DIR / "results",
                        help="directory for serve.md, serve.json and serve.png (default benchmarks/results)")
    return parser.parse_args(argv)


def selected(only: list[str]) -> list[str]:
    """The scenarios asked for, in the canonical order."""
    wanted = {s.strip() for item in only for s in item.split(",") if s.strip()}
    unknown = wanted - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(SCENARIOS)}")
    return [s for s in SCENARIOS if not wanted or s in wanted]


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios; print the table; write serve.md, serve.json, serve.png."""
    args = parse_args(argv)
    scenarios = selected(args.only)
    # SIGTERM unwinds like Ctrl-C, so every server, HAProxy and load generator started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    from _common import raise_nofile_limit

    soft, _ = raise_nofile_limit()
    if "idle" in scenarios and soft < args.idle_conns + 100:
        log(f"warning: RLIMIT_NOFILE is {soft}; {args.idle_conns} idle connections need "
            f"{args.idle_conns + 100}+ in the client (raise the hard limit: ulimit -Hn)")
    try:
        _harness.build("loadgen")
    except HarnessError as exc:
        raise SystemExit(f"error: {exc}") from None
    first, second = _harness.cpu_plan()
    cfg = Config(
        rounds=args.rounds or (2 if args.quick else 5),
        duration=args.duration or (0.7 if args.quick else 2.0),
        warmup=args.warmup if args.warmup is not None else (0.2 if args.quick else 0.5),
        quick=args.quick, conns=args.conns, idle_conns=args.idle_conns, out=args.out,
        first=first, second=second, quiet_wait=args.quiet_wait,
        repeats=args.repeats, idle_settle=args.idle_settle,
    )
    if first is None:
        note(cfg, "fewer than 2 usable cores: nothing is pinned, and the 1-core layout is not one")
    t0 = time.monotonic()
    for name in scenarios:
        log(f"== scenario {name} ==")
        RUNNERS[name](cfg)
    info = machine_info(cfg)
    info.append(f"Total time: {time.monotonic() - t0:.0f}s")
    print()
    for line in info:
        print(line)
    print()
    print_table(cfg.rows)
    for text in cfg.notes:
        print(f"note: {text}")
    write_outputs(cfg, info, scenarios)
    return 0


def write_outputs(cfg: Config, info: list[str], scenarios: list[str]) -> None:
    """serve.md, serve.json and (when there is something to draw) serve.png under ``cfg.out``."""
    import _report

    cfg.out.mkdir(parents=True, exist_ok=True)
    md, js, png = cfg.out / "serve.md", cfg.out / "serve.json", cfg.out / "serve.png"
    notes = [*cfg.notes, "chart: serve.png"]
    _report.write_markdown(md, info, HEADER, cfg.rows, notes, title="gtcp serve benchmark results")
    _report.write_json(js, cfg.raw, cfg.chart)
    written = [md, js]
    title = (f"gtcp serve benchmarks: {', '.join(scenarios)}; rounds {cfg.rounds}, {cfg.duration}s per run; "
             f"medians\n{info[0]}\ngtcp: {gtcp_description()[:110]}")
    why_not = _report.write_chart(png, cfg.chart, title, PANELS, SERIES)
    if why_not is None:
        written.append(png)
    else:
        print(f"note: no chart: {why_not}")
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    sys.exit(main())
