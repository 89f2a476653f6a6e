"""Smoke tests of ``benchmarks/serve_bench.py`` (``gtcp serve``: workers, HAProxy, idle connections).

Each runs the benchmark in a tiny mode (one round of 0.1 s, 20 load
connections, 200 idle ones, no waiting for a quiet machine, no repeats) and
checks that it produced sane output: every target answered with no error,
the two workers both exist and hold every idle connection between them, the
Markdown and JSON results (and the chart, with matplotlib) are written. No
timing is asserted: speed is the benchmark's job. The HAProxy one is skipped
when haproxy is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
TINY = ["--rounds", "1", "--duration", "0.1", "--warmup", "0", "--conns", "20", "--idle-conns", "200",
        "--idle-settle", "0.1", "--quiet-wait", "0", "--repeats", "0"]


def _loadgen() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import _harness
    finally:
        sys.path.remove(str(BENCH))
    try:
        _harness.build("loadgen")
    except _harness.HarnessError as exc:
        pytest.skip(f"the C load generator cannot be built: {exc}")


def _run(tmp_path: Path, only: str) -> tuple[str, str, dict[str, Any]]:
    """serve_bench.py --only ONLY in the tiny mode: (stderr, serve.md, serve.json)."""
    _loadgen()
    env = dict(os.environ)
    env.pop("GTCP_ROOT", None)  # this checkout's gtcp
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    done = subprocess.run([sys.executable, str(BENCH / "serve_bench.py"), "--only", only, *TINY,
                           "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=50, env=env, cwd=BENCH, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "warning:" not in done.stderr, done.stderr[-3000:]
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "serve.png").stat().st_size > 1000
    return done.stderr, (tmp_path / "serve.md").read_text(), json.loads((tmp_path / "serve.json").read_text())


def _answered(results: list[dict[str, Any]]) -> bool:
    return bool(results) and all(r["rps"] > 0 and r["errors"] == 0 and r["mismatches"] == 0 for r in results)


@pytest.mark.timeout(60)
def test_serve_bench_workers_and_idle(tmp_path):
    progress, table, data = _run(tmp_path, "workers,idle")
    runs = data["runs"]
    assert set(runs["workers, server on 1 core"]) == {"w1", "w2", "listener"}
    assert set(runs["workers, 2 cores shared"]) == {"w1", "w2"}
    for label in ("workers, server on 1 core", "workers, 2 cores shared"):
        for name, results in runs[label].items():
            assert _answered(results), (label, name, results)
            assert len(results[0]["worker_cpu_pct"]) == (2 if name == "w2" else 1)
    for name in ("w2", "w1", "listener"):
        result = runs["idle"][name][0]
        assert result["held"] == result["requested"] == 200, result
        assert sum(proc["conns"] for proc in result["procs"]) == 200, result
    assert len(runs["idle"]["w2"][0]["procs"]) == 2
    assert set(data["medians"]) == {"workers", "per_core", "idle"}
    assert "--workers 2 vs 1" in table and "req/s per busy core" in table
    assert "idle: KiB per connection, 200 over 2 workers" in table
    assert "== scenario workers ==" in progress and "== scenario idle ==" in progress and "r1/1" in progress


@pytest.mark.timeout(60)
@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (as root: apt-get install -y haproxy)")
def test_serve_bench_haproxy(tmp_path):
    progress, table, data = _run(tmp_path, "haproxy")
    runs = data["runs"]["haproxy"]
    assert set(runs) == {"gtcp-hap", "raw-hap", "gtcp", "raw"}
    for name, results in runs.items():
        assert _answered(results), (name, results)
        assert results[0]["extra_cpu_pct"]["haproxy"] >= 0
    assert "via HAProxy: gtcp serve -w1 (PROXY v2) vs raw gevent" in table
    assert set(data["medians"]["haproxy"]) == {"via HAProxy", "direct"}
    assert "== scenario haproxy ==" in progress
