"""Smoke test of benchmarks/stats_cost.py: one tiny callgrind run of HEAD's echo server.

No cost is asserted (that is the script's job: ``python benchmarks/stats_cost.py``);
this keeps the script working: HEAD exported, the server started under
valgrind, instrumentation switched by vgdb, dumps read, the report written.
Skipped without valgrind/vgdb or without the git history. About 5 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "stats_cost.py"


def _have_history() -> bool:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "-q", "HEAD:gtcp"],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("vgdb") is None,
                    reason="valgrind (with vgdb) is not installed")
@pytest.mark.skipif(shutil.which("git") is None or not _have_history(), reason="no git history of gtcp/")
def test_stats_cost_tiny_run_counts_instructions(tmp_path):
    # Not helpers.child_env(): the script puts each exported revision's gtcp first on PYTHONPATH itself.
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--revs", "HEAD", "--cases", "echo64", "--split-seconds", "0",
         "--out", str(tmp_path), "--chart", ""],
        capture_output=True, text=True, timeout=50, env=env, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "instructions/request" in done.stdout
    data = json.loads((tmp_path / "stats_cost.json").read_text())
    (value,) = data["per_request"]["HEAD"]["echo64"]
    # A gtcp echo round trip is thousands of instructions in the server (about 20k on CPython 3.11);
    # far fewer means the count missed the loop, far more that it counted something else.
    assert 2_000 < value < 500_000, value
    counts = data["counts"]["HEAD"]["echo64"][0]
    assert 0 < counts["2"] < counts["6"]
    assert "Server instructions per request" in (tmp_path / "stats_cost.md").read_text()
