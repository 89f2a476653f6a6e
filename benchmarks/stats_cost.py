"""What ``listener.stats()`` costs the echo hot path: instructions per request, before and after.

    python benchmarks/stats_cost.py                  # ~12 minutes: 3 repeats + a 7-round wall-clock A/B
    python benchmarks/stats_cost.py --wall-rounds 0  # instruction counts and CPU split only, ~9 minutes
    python benchmarks/stats_cost.py --tiny --revs HEAD --cases echo64   # smoke test, ~5 s

Issue 9 allows the stats counters at most 2% of the echo hot path. Wall-clock
A/B runs on the 2-core reference VM spread by +-15% and more from round to
round, so this script counts instructions instead: from run to run they
repeat to within 0.2% for request/reply and 0.3% for the pipelined cases
(the variation left is in the allocators, pymalloc's and glibc's).

Each revision (default ``227ddeb^`` -- the commit before the counters --,
``227ddeb`` -- the counters -- and ``HEAD``) is exported with ``git archive``
(only ``gtcp/``; the working tree and its uncommitted edits are not used) into
a temporary directory. For each revision and case the echo *server* runs
alone under ``valgrind --tool=callgrind --instr-atstart=no``, with that
export first on ``PYTHONPATH`` (checked: the server reports the ``gtcp``
file it imported). This process is the client, with plain blocking sockets,
not under valgrind, pinned to the other core: the client's own work is not in
the count. The client connects, does a warm-up of W round trips, waits until
the server is blocked in its poll, turns callgrind's instrumentation on
(``vgdb --pid=PID instrumentation on``) and has callgrind dump its counts
(``vgdb ... dump``; this first dump, the switch, is dropped). Then N1 round
trips, a wait, a dump; N2 round trips, a wait, a dump. Both segments start
and end alike, so each count is a fixed cost + N x the cost of a request,
and ``(I(N2) - I(N1)) / (N2 - N1)`` is the cost of a request with the fixed
part (the waits, the dumps, anything that does not scale with N) cancelled.

Cases (on one connection, 64-byte messages ``b"x" * 63 + b"\\n"``):

* ``echo64``: byte echo (``on_bytes(self, data): return data``), one message
  per request, the next request sent when its echo is back;
* ``lines16``: ``framing=gtcp.Lines()``, 16 messages pipelined in one write of
  1 KiB, the next write when all 16 echoes are back (one read, 16 frames
  dispatched, their replies coalesced in one send);
* ``echo64-tls``, ``lines16-tls``: the same over TLS (``ListenerSecureSocket``).

After each case, the base revision's server runs once more natively (no
valgrind) for ``--split-seconds`` (3) of round trips, and its user and
system CPU time per request are read from /proc: the user share turns the
instruction share into an estimated share of CPU time. The whole is
repeated ``--repeats`` times (3) to show it repeats. Then, for comparison,
``compare_checkouts.py``'s paired wall-clock A/B of the first two revisions
(plain and TLS echo, 100 connections x 1 KiB, loadgen), servers and load
generator pinned to different cores, ``--wall-rounds`` rounds (7).

Writes ``benchmarks/results/stats_cost.md`` and ``.json`` (``--out DIR``) and
the chart ``benchmarks/stats_cost.png`` (``--chart PATH``, ``--chart ''`` for
none). Needs valgrind (with vgdb), git, trustme; the wall-clock part also a C
compiler and the OpenSSL headers, like run.py.

What it does not show: instructions are not cycles (cache misses, branch
mispredictions and the memory traffic of a real load are not in them); the
kernel's work (the system calls, about half of a small echo's CPU time) is
not counted, so the share of the server's *time* the counters take is smaller
than their share of its user-space instructions; one connection, not 100.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MESSAGE = b"x" * 63 + b"\n"


@dataclass(frozen=True)
class Case:
    """One workload: framing (None: byte echo), TLS, messages per request."""

    name: str
    framing: str | None
    tls: bool
    batch: int

    @property
    def label(self) -> str:
        """A short description for tables."""
        what = f"{self.batch} x 64 B pipelined, Lines()" if self.framing else "64 B request/reply"
        return f"{'TLS' if self.tls else 'plain'} {what}"


CASES = {
    c.name: c
    for c in (
        Case("echo64", None, False, 1),
        Case("lines16", "lines", False, 16),
        Case("echo64-tls", None, True, 1),
        Case("lines16-tls", "lines", True, 16),
    )
}


# --------------------------------------------------------------------------- the server (under valgrind)


def serve(framing: str | None, cert: str | None, key: str | None) -> None:
    """An echo listener of whatever gtcp is first on sys.path; one connection at a time; SIGTERM stops it."""
    import gevent

    import gtcp

    class Echo(gtcp.ConnectionService):
        def on_bytes(self, data: bytes) -> bytes:
            return data

    class Svc(gtcp.Service):
        def on_connect(self, caller: Any) -> Echo:
            return Echo()

    options: dict[str, Any] = {}
    if framing == "lines":
        options["framing"] = gtcp.Lines()
    if cert and key:
        options["secure_socket"] = gtcp.ListenerSecureSocket(key=gtcp.CertKey(cert_file=cert, key_file=key))
    listener = gtcp.Listener(0, local_host="127.0.0.1", **options)
    listener.attach(Svc())
    listener.start()
    gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(listener.immediate_stop))
    print("READY", listener.port, gtcp.__file__, flush=True)
    listener.serve_forever()


# --------------------------------------------------------------------------- one measured run


class RunError(RuntimeError):
    """A run failed (the server did not start, echoed wrongly, or valgrind failed)."""


def git(*args: str) -> str:
    """Output of a git command in this repository."""
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def export(rev: str, dest: Path) -> Path:
    """``git archive REV gtcp`` unpacked into ``dest``; returns ``dest``."""
    dest.mkdir(parents=True)
    blob = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev, "gtcp"], check=True,
                          capture_output=True).stdout
    tar = dest / "gtcp.tar"
    tar.write_bytes(blob)
    with tarfile.open(tar) as archive:
        try:
            archive.extractall(dest, filter="data")
        except TypeError:  # Python < 3.10.12 / 3.11.4: no filters (and the archive is our own)
            archive.extractall(dest)
    tar.unlink()
    return dest


def python_exe() -> str:
    """The interpreter binary for valgrind: not a pyenv shim (a script), but in a virtualenv its own
    ``bin/python`` (a symlink to the binary that keeps the virtualenv's packages)."""
    if sys.prefix != sys.base_prefix:
        return sys.executable
    return os.path.realpath(sys.executable)


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def _wait_blocked(pid: int, timeout: float = 10.0) -> None:
    """Wait until the process has been sleeping (in its poll) for a while, so a switch lands there."""
    deadline = time.monotonic() + timeout
    since = None
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return  # no /proc: the sleep below is all there is
        now = time.monotonic()
        if state == "S":
            since = since or now
            if now - since >= 0.1:
                return
        else:
            since = None
        time.sleep(0.01)
    raise RunError(f"server {pid} never went to sleep")


def _vgdb(pid: int, command: str) -> None:
    done = subprocess.run(["vgdb", f"--pid={pid}", *command.split()], capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        raise RunError(f"vgdb {command} failed: {done.stdout}{done.stderr}")


def _round_trip(sock: socket.socket, request: bytes) -> None:
    sock.sendall(request)
    got = b""
    while len(got) < len(request):
        chunk = sock.recv(65536)
        if not chunk:
            raise RunError("the server closed the connection")
        got += chunk
    if got != request:
        raise RunError(f"wrong echo: {got[:80]!r}")


@contextlib.contextmanager
def echo_server(root: Path, case: Case, certs: Any, core: int | None,
                wrapper: list[str] = ()) -> Iterator[tuple[subprocess.Popen[str], socket.socket]]:
    """The echo server of ``root`` for ``case`` (under ``wrapper``) and one connection to it.

    The server is stopped (SIGTERM) when the block ends, and must exit cleanly.
    """
    cmd = [*wrapper, python_exe(), str(Path(__file__).resolve()), "--serve",
           "--framing", case.framing or "none"]
    if case.tls:
        cmd += ["--tls", certs.cert, certs.key]
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")

    def pin() -> None:
        if core is not None:
            os.sched_setaffinity(0, {core})

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=pin)
    try:
        line = _readline(proc, 120)
        if not line.startswith("READY "):
            proc.kill()
            raise RunError(f"server did not start: {line!r} {proc.communicate()[1][-3000:]}")
        _, port, imported = line.split(maxsplit=2)
        if not Path(imported.strip()).resolve().is_relative_to(root.resolve()):
            raise RunError(f"the server imported {imported.strip()}, not the gtcp of {root}")
        raw = socket.create_connection(("127.0.0.1", int(port)))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = raw
        if case.tls:
            ctx = ssl.create_default_context(cafile=certs.ca)
            sock = ctx.wrap_socket(raw, server_hostname="localhost")
        with sock:
            yield proc, sock
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RunError(f"server exited {proc.returncode}: {err[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def count_instructions(root: Path, case: Case, ns: tuple[int, ...], warmup: int, certs: Any, workdir: Path,
                       core: int | None, keep: Path | None = None) -> list[int]:
    """Instructions the server executes for each of ``ns`` round trips of ``case``, one after the other.

    One server process: a warm-up, instrumentation on, a first dump (the
    switch; discarded), then for each n of ``ns`` n round trips and a dump.
    Every segment starts and ends the same way (the server asleep in its
    poll, a dump), so each count is the same fixed cost + n x the cost of a
    request. ``keep``: a directory to keep callgrind's dumps in (for
    ``callgrind_annotate``).
    """
    out = workdir / f"callgrind.{os.getpid()}.{time.monotonic_ns()}.out"
    dumps = [out.with_name(f"{out.name}.{i + 1}") for i in range(len(ns) + 1)]
    wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    request = MESSAGE * case.batch
    texts = []
    try:
        with echo_server(root, case, certs, core, wrapper) as (proc, sock):
            for _ in range(warmup):
                _round_trip(sock, request)
            _wait_blocked(proc.pid)
            _vgdb(proc.pid, "instrumentation on")
            for n in (0, *ns):
                for _ in range(n):
                    _round_trip(sock, request)
                _wait_blocked(proc.pid)
                _vgdb(proc.pid, "dump")  # OUT.1, OUT.2, ...: the costs since the switch or the last dump
            _vgdb(proc.pid, "instrumentation off")  # the stop and the exit run fast
        texts = [dump.read_text() for dump in dumps[1:]]
    except OSError as exc:
        raise RunError(f"a callgrind dump is missing: {exc}") from exc
    finally:
        for path in (out, *dumps):
            path.unlink(missing_ok=True)
    totals = []
    for n, text in zip(ns, texts, strict=True):
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"callgrind.{case.name}.{root.name}.n{n}.{time.monotonic_ns()}").write_text(text)
        found = [int(line.split()[1]) for line in text.splitlines() if line.startswith("totals:")]
        if not found:
            raise RunError(f"no totals in the callgrind dump of {case.name}")
        totals.append(found[0])
    return totals


def _cpu_ticks(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime


def cpu_split(root: Path, case: Case, seconds: float, warmup: int, certs: Any,
              core: int | None) -> dict[str, float]:
    """The server's user and system CPU per request, natively (no valgrind), over ``seconds`` of round trips.

    From /proc/PID/stat, which the kernel fills by sampling at each tick: a
    split with a few percent of sampling noise at a few seconds.
    """
    request = MESSAGE * case.batch
    tick = os.sysconf("SC_CLK_TCK")
    with echo_server(root, case, certs, core) as (proc, sock):
        for _ in range(warmup):
            _round_trip(sock, request)
        user0, sys0 = _cpu_ticks(proc.pid)
        n, start = 0, time.monotonic()
        while time.monotonic() - start < seconds:
            for _ in range(100):
                _round_trip(sock, request)
            n += 100
        elapsed = time.monotonic() - start
        user1, sys1 = _cpu_ticks(proc.pid)
    user, system = (user1 - user0) / tick, (sys1 - sys0) / tick
    return {"requests": n, "seconds": elapsed, "user_us": user / n * 1e6, "sys_us": system / n * 1e6,
            "user_share": user / (user + system) if user + system else float("nan")}


# --------------------------------------------------------------------------- the whole measurement


def per_request(counts: dict[int, int], n1: int, n2: int) -> float:
    """(I(N2) - I(N1)) / (N2 - N1)."""
    return (counts[n2] - counts[n1]) / (n2 - n1)


@dataclass
class Plan:
    """What to measure and how much."""

    revs: dict[str, Path]
    cases: list[Case]
    n1: int
    n2: int
    warmup: int
    repeats: int
    split_seconds: float
    certs: Any
    workdir: Path
    keep: Path | None = None


def measure(plan: Plan) -> dict[str, Any]:
    """Per-request instructions ``{rev: {case: [per repeat]}}``, the raw counts and the CPU splits."""
    sys.path.insert(0, str(HERE))
    from _harness import cpu_plan

    server_core, client_core = cpu_plan()
    saved = os.sched_getaffinity(0)
    if client_core is not None:
        os.sched_setaffinity(0, {client_core})
    names = [c.name for c in plan.cases]
    per: dict[str, dict[str, list[float]]] = {rev: {c: [] for c in names} for rev in plan.revs}
    counts: dict[str, dict[str, list[dict[str, int]]]] = {rev: {c: [] for c in names} for rev in plan.revs}
    split: dict[str, list[dict[str, float]]] = {c: [] for c in names}
    started = time.monotonic()
    n1, n2 = plan.n1, plan.n2
    try:
        for rep in range(plan.repeats):
            for case in plan.cases:
                for rev, root in plan.revs.items():
                    i1, i2 = count_instructions(root, case, (n1, n2), plan.warmup, plan.certs, plan.workdir,
                                                server_core, plan.keep)
                    got = {n1: i1, n2: i2}
                    counts[rev][case.name].append({str(n): v for n, v in got.items()})
                    per[rev][case.name].append(per_request(got, n1, n2))
                    print(f"[{time.monotonic() - started:5.0f} s] {rep + 1}/{plan.repeats} {case.name:11} "
                          f"{rev:9} I(N={n1})={got[n1]:>12,} I(N={n2})={got[n2]:>12,} "
                          f"-> {per[rev][case.name][-1]:>9,.1f} instructions/request", flush=True)
                if plan.split_seconds > 0:
                    rev, root = next(iter(plan.revs.items()))
                    cpu = cpu_split(root, case, plan.split_seconds, plan.warmup, plan.certs, server_core)
                    split[case.name].append(cpu)
                    print(f"[{time.monotonic() - started:5.0f} s] {rep + 1}/{plan.repeats} {case.name:11} "
                          f"{rev:9} natively: {cpu['user_us']:.1f} us user + {cpu['sys_us']:.1f} us "
                          f"system per request ({cpu['requests']:,} requests)", flush=True)
    finally:
        os.sched_setaffinity(0, saved)
    return {"per_request": per, "counts": counts, "cpu_split": split}


def wall_clock(base: Path, this: Path, rounds: int, duration: float, warmup: float) -> dict[str, Any]:
    """compare_checkouts.py's paired A/B: ``{load: {"ratios": this/base per round, ...}}``."""
    sys.path.insert(0, str(HERE))
    import compare_checkouts

    got = compare_checkouts.measure(base, rounds, duration, warmup, this)
    out: dict[str, Any] = {}
    for load, res in got.items():
        ratios = [t / b for t, b in zip(res["this"], res["base"], strict=True)]
        out[load] = {"rps": res, "ratios": ratios, "median": statistics.median(ratios),
                     "min": min(ratios), "max": max(ratios)}
    return out


def _pair(revs: list[str]) -> tuple[str, str]:
    """(base, measured): the first two revisions (one alone is compared with itself)."""
    return revs[0], revs[1] if len(revs) > 1 else revs[0]


def summarize(revs: list[str], cases: list[Case], data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per case: medians per rev, the after/before ratio and its range over repeats."""
    base, after = _pair(revs)
    per = data["per_request"]
    rows = []
    for case in cases:
        values = {rev: per[rev][case.name] for rev in revs}
        ratios = [a / b for a, b in zip(values[after], values[base], strict=True)]
        splits = data["cpu_split"].get(case.name) or []
        shares = [s["user_share"] for s in splits]
        user_share = statistics.median(shares) if shares else None
        ratio = statistics.median(ratios)
        rows.append({
            "case": case.name, "label": case.label, "batch": case.batch,
            "median": {rev: statistics.median(v) for rev, v in values.items()},
            "ratio": ratio, "ratio_min": min(ratios), "ratio_max": max(ratios),
            "added": statistics.median(values[after]) - statistics.median(values[base]),
            "spread": {rev: (max(v) - min(v)) / statistics.median(v) for rev, v in values.items()},
            "user_share": user_share, "user_share_min": min(shares) if shares else None,
            "user_share_max": max(shares) if shares else None,
            "user_us": statistics.median(s["user_us"] for s in splits) if splits else None,
            "sys_us": statistics.median(s["sys_us"] for s in splits) if splits else None,
            "cpu_share": (ratio - 1) * user_share if user_share is not None else None,
        })
    return rows


def fmt_rows(revs: list[str], rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The instructions table (header, cells)."""
    base, after = _pair(revs)
    header = ["case", *(f"{rev} instr/req" for rev in revs), f"added by {after}",
              f"{after} / {base} [range over repeats]", "spread over repeats"]
    cells = []
    for row in rows:
        per_msg = f" ({row['added'] / row['batch']:+,.0f}/msg)" if row["batch"] > 1 else ""
        cells.append([row["label"], *(f"{row['median'][rev]:,.0f}" for rev in revs),
                      f"{row['added']:+,.0f}{per_msg}",
                      f"{row['ratio']:.4f} [{row['ratio_min']:.4f}..{row['ratio_max']:.4f}]",
                      f"{max(row['spread'].values()) * 100:.3f} %"])
    return header, cells


def fmt_split(revs: list[str], rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The native CPU split table and the estimated share of CPU time (header, cells)."""
    base, after = _pair(revs)
    header = ["case", f"{base} server CPU/request natively", "user share [range]",
              f"{after} instructions added", "estimated share of server CPU time"]
    cells = []
    for row in rows:
        if row["user_share"] is None:
            continue
        cells.append([row["label"], f"{row['user_us']:.1f} us user + {row['sys_us']:.1f} us system",
                      f"{row['user_share'] * 100:.0f} % [{row['user_share_min'] * 100:.0f}.."
                      f"{row['user_share_max'] * 100:.0f}]",
                      f"{(row['ratio'] - 1) * 100:+.2f} %", f"{row['cpu_share'] * 100:+.2f} %"])
    return header, cells


def write_chart(path: Path, revs: list[str], rows: list[dict[str, Any]], data: dict[str, Any],
                wall: dict[str, Any] | None, title: str) -> str | None:
    """The change in % per case (instructions, per repeat) and per wall-clock round; None when written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install -r benchmarks/requirements.txt)"
    base, after = _pair(revs)
    panels = 2 if wall else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.5 + 3.5 * panels, 4.2), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1][:panels]})
    ax = axes[0][0]
    colors = plt.get_cmap("tab10").colors
    per = data["per_request"]
    for g, row in enumerate(rows):
        pairs = zip(per[after][row["case"]], per[base][row["case"]], strict=True)
        points = [(a / b - 1) * 100 for a, b in pairs]
        ax.bar(g, (row["ratio"] - 1) * 100, 0.6, color=colors[0], alpha=0.8)
        ax.scatter([g] * len(points), points, color="black", s=12, zorder=3)
        ax.annotate(f"{(row['ratio'] - 1) * 100:+.2f} %", (g, max(points)), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 6), textcoords="offset points")
    labels = [f"{r['case']}\n{r['median'][base] / 1000:,.1f}k -> {r['median'][after] / 1000:,.1f}k"
              for r in rows]
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.axhline(2.0, color="red", ls="--", lw=1, label="issue 9 bound: +2 %")
    ax.set_ylim(top=max(ax.get_ylim()[1], 2.0) * 1.12)
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_ylabel(f"{after} against {base}, %")
    ax.set_title("server instructions per request (callgrind; bar: median, dots: repeats)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    if wall:
        ax2 = axes[0][1]
        for i, res in enumerate(wall.values()):
            points = [(r - 1) * 100 for r in res["ratios"]]
            ax2.scatter([i] * len(points), points, alpha=0.6, color=colors[i + 1])
            ax2.hlines((res["median"] - 1) * 100, i - 0.25, i + 0.25, color="black")
        ax2.axhline(0.0, color="gray", lw=0.8)
        ax2.axhspan(-2, 2, color="green", alpha=0.1, label="+-2 %")
        ax2.set_xticks(range(len(wall)), list(wall))
        ax2.set_xlim(-0.6, len(wall) - 0.4)
        ax2.set_title("wall clock req/s, paired rounds (its own scale)\n"
                      "loadgen 100 x 1 KiB; line: median", fontsize=9)
        ax2.legend(fontsize=8)
        ax2.grid(axis="y", alpha=0.3)
        ax2.set_ylabel("%")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return None


CAVEATS = (
    "Instructions are not cycles: cache misses, branch mispredictions and stalls are not in the count; "
    "under a real load (100 connections, both cores busy) they weigh more, for the counters and the rest "
    "alike.",
    "Only the server's user-space instructions are counted. The kernel's work for each request (recvfrom, "
    "sendto, epoll_wait, loopback TCP) is not, and it is a large part of a small echo's CPU time: the "
    "counters' share of the server's CPU time is smaller than their share of its instructions. The "
    "estimate in the second table scales the instruction share by the measured user share of CPU time; "
    "it assumes the added instructions take the average time per user-space instruction, and the user/system "
    "split comes from tick sampling (a few percent of noise).",
    "The client is this process, not under valgrind: its cost is not in the count, so the ratio is the "
    "server's own (not diluted by the client's work). The wall-clock A/B, by contrast, includes everything.",
    "One connection, one request in flight, no idle timeout. With many connections the hub's wake-up is "
    "shared by several requests, so a request costs somewhat fewer instructions and the counters' share "
    "is somewhat higher. Large messages and streaming pay the counters once per read and per send.",
    "The wall-clock rows are a different load (loadgen, 100 connections x 1 KiB, servers and load generator "
    "on different cores): they show the end-to-end effect and the noise of this machine, not the "
    "per-request cost; a 1 to 4 % effect cannot be seen in a spread that wide.",
)


def write_report(out: Path, info: list[str], revs: list[str], rows: list[dict[str, Any]],
                 wall: dict[str, Any] | None, data: dict[str, Any]) -> str:
    """stats_cost.md and stats_cost.json in ``out``; returns the Markdown."""
    sys.path.insert(0, str(HERE))
    from _report import markdown_table

    base, after = _pair(revs)
    text = "# What listener.stats() costs the echo hot path\n\n" + "".join(f"* {line}\n" for line in info)
    text += "\n## Server instructions per request (callgrind; the client is not counted)\n\n"
    text += markdown_table(*fmt_rows(revs, rows))
    text += "\nPer repeat (instructions/request):\n\n"
    for row in rows:
        for rev in revs:
            values = data["per_request"][rev][row["case"]]
            text += f"* {row['case']} {rev}: " + ", ".join(f"{v:,.1f}" for v in values) + "\n"
    header, cells = fmt_split(revs, rows)
    if cells:
        text += "\n## From instructions to CPU time (an estimate)\n\n"
        text += markdown_table(header, cells)
    if wall:
        text += "\n## Wall clock, paired A/B (compare_checkouts.py, 100 connections x 1 KiB, pinned)\n\n"
        wrows = [[load, f"{res['median']:.3f} [{res['min']:.2f}..{res['max']:.2f}]",
                  ", ".join(f"{r:.3f}" for r in res["ratios"]),
                  f"{statistics.median(res['rps']['base']):,.0f}",
                  f"{statistics.median(res['rps']['this']):,.0f}",
                  f"{statistics.median(res['rps']['raw']):,.0f}"]
                 for load, res in wall.items()]
        text += markdown_table(["load", f"{after}/{base} median [range]", "per round", f"{base} req/s",
                                f"{after} req/s", "raw gevent req/s"], wrows)
    text += "\n## What these numbers do not show\n\n" + "".join(f"* {n}\n" for n in CAVEATS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stats_cost.md").write_text(text)
    blob = {**data, "rows": rows, "wall": wall, "info": info, "revs": revs}
    (out / "stats_cost.json").write_text(json.dumps(blob, indent=1))
    return text


def machine_info(revs: dict[str, str], plan: Plan) -> list[str]:
    """Lines describing the machine, the versions and the parameters."""
    import gevent

    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [f"{os.cpu_count()} cores, {cpu}; Linux {platform.release()}; "
             f"Python {platform.python_version()}; gevent {gevent.__version__}; {ssl.OPENSSL_VERSION}; "
             f"{valgrind}",
             f"N1 = {plan.n1}, N2 = {plan.n2} round trips after a warm-up of {plan.warmup}; {plan.repeats} "
             "repeats; instructions/request = (I(N2) - I(N1)) / (N2 - N1)",
             f"load average at the start: {os.getloadavg()[0]:.2f} (other work on the machine slows the "
             "wall-clock runs and the native CPU split, not the instruction counts)"]
    lines += [f"`{rev}` = {desc}" for rev, desc in revs.items()]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--framing", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    parser.add_argument("--revs", default="227ddeb^,227ddeb,HEAD",
                        help="comma-separated revisions; the first is the base, the second is compared with "
                             "it (default: 227ddeb^,227ddeb,HEAD)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--requests", type=int, default=2500, help="N2 (default 2500)")
    parser.add_argument("--base-requests", type=int, default=500, help="N1 (default 500)")
    parser.add_argument("--warmup", type=int, default=200, help="round trips before counting (default 200)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--split-seconds", type=float, default=3.0,
                        help="seconds of the native run for the user/system split (0: none)")
    parser.add_argument("--wall-rounds", type=int, default=7, help="paired wall-clock rounds (0: none)")
    parser.add_argument("--wall-duration", type=float, default=2.0)
    parser.add_argument("--tiny", action="store_true",
                        help="smoke test: N1=2, N2=6, warm-up 2, 1 repeat, 0.2 s split, no wall clock")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--chart", default=str(HERE / "stats_cost.png"), help="PNG path ('' for none)")
    parser.add_argument("--keep-dumps", type=Path, metavar="DIR",
                        help="keep callgrind's dumps (callgrind.CASE.revI.nN.TIME) for callgrind_annotate")
    args = parser.parse_args()
    if args.serve:
        cert, key = args.tls if args.tls else (None, None)
        serve(None if args.framing == "none" else args.framing, cert, key)
        return 0
    if args.tiny:
        args.base_requests, args.requests, args.warmup, args.repeats = 2, 6, 2, 1
        args.split_seconds, args.wall_rounds = min(args.split_seconds, 0.2), 0
    for tool in ("valgrind", "vgdb", "git"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (apt-get install valgrind git)", file=sys.stderr)
            return 2
    if not 0 <= args.base_requests < args.requests:
        parser.error("need 0 <= --base-requests < --requests")
    cases = [CASES[name] for name in args.cases.split(",")]
    revs = args.revs.split(",")
    sys.path.insert(0, str(HERE))
    from _harness import make_certs

    described = {rev: git("log", "-1", "--format=%h %s", rev)[:100] for rev in revs}
    with tempfile.TemporaryDirectory(prefix="stats_cost.") as tmp:
        workdir = Path(tmp)
        roots = {rev: export(rev, workdir / f"rev{i}") for i, rev in enumerate(revs)}
        plan = Plan(roots, cases, args.base_requests, args.requests, args.warmup, args.repeats,
                    args.split_seconds, make_certs(workdir), workdir, args.keep_dumps)
        info = machine_info(described, plan)
        for line in info:
            print(line, flush=True)
        data = measure(plan)
        wall = None
        if args.wall_rounds > 0 and len(revs) > 1:
            print(f"wall clock: {revs[1]} against {revs[0]}, {args.wall_rounds} paired rounds", flush=True)
            wall = wall_clock(roots[revs[0]], roots[revs[1]], args.wall_rounds, args.wall_duration, 0.5)
            info.append(f"wall clock: {args.wall_rounds} rounds, {args.wall_duration} s per server and load; "
                        f"load average after it: {os.getloadavg()[0]:.2f}")
    rows = summarize(revs, cases, data)
    text = write_report(args.out, info, revs, rows, wall, data)
    print()
    print(text)
    if args.chart:
        base, after = _pair(revs)
        title = (f"listener.stats() ({after}) against {base}: the echo server's instructions per request, "
                 f"median of {args.repeats} (callgrind, client not counted)")
        why = write_chart(Path(args.chart), revs, rows, data, wall, title)
        print(f"chart: {why or args.chart}")
    print(f"wrote {args.out / 'stats_cost.md'} and {args.out / 'stats_cost.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
