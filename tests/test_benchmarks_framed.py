"""Smoke tests of the framed and RESP benchmark scripts: each starts, answers correctly, stops.

No timing is asserted (speed is ``python benchmarks/run.py --only framed,client_framed,resp``).
All the servers start at once, in one module fixture, so the whole file takes a
few seconds. Peers whose package (twisted, uvloop) is not installed, and the
gtcp framed server while gtcp has no framing, are skipped. Loopback, port 0.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LONG
from helpers import BENCHMARKS, child_env

import gtcp

BENCH = BENCHMARKS
sys.path.insert(0, str(BENCH))

import _harness  # noqa: E402  (benchmarks/ is not a package)
import client_framed  # noqa: E402

FRAMINGS = ("lines", "len4")
NEEDS = {"twisted": "twisted", "uvloop-proto": "uvloop", "asyncio-uvloop": "uvloop"}
HAS_FRAMING = hasattr(gtcp, "Lines") and hasattr(gtcp, "LengthPrefixed")


def _missing(name: str) -> str | None:
    if name == "gtcp-framed" and not HAS_FRAMING:
        return "gtcp has no framing (gtcp.Lines / gtcp.LengthPrefixed)"
    module = NEEDS.get(name)
    if module and importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install -r benchmarks/requirements.txt)"
    return None


def _env() -> dict[str, str]:
    return child_env(BENCH, PYTHONDONTWRITEBYTECODE="1")


class Proc:
    """A benchmark server started by the fixture; ``port`` once READY."""

    def __init__(self, cmd: list[str]) -> None:
        self.popen = subprocess.Popen(cmd, cwd=BENCH, env=_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
        self.port = 0

    def wait_ready(self, deadline: float) -> None:
        out = self.popen.stdout
        assert out is not None
        while time.monotonic() < deadline and self.popen.poll() is None:
            if select.select([out], [], [], 0.05)[0]:
                line = out.readline()
                assert line.startswith("READY "), line
                self.port = int(line.split()[1])
                return
        raise AssertionError(f"{self.popen.args} did not start: {self._stop()}")

    def _stop(self) -> str:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            _, err = self.popen.communicate(timeout=LONG)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            _, err = self.popen.communicate()
        return err

    def stop(self) -> tuple[int, str]:
        err = self._stop()
        return self.popen.returncode, err


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[tuple[str, str], Proc]]:
    """Every runnable framed server in both framings, and the asyncio RESP server, all at once."""
    procs: dict[tuple[str, str], Proc] = {}
    for name in _harness.FRAMED_SERVERS:
        if _missing(name):
            continue
        for framing in FRAMINGS:
            procs[name, framing] = Proc(_harness.framed_command(name, framing))
    procs["resp", "asyncio"] = Proc(_harness.resp_command("asyncio"))
    try:
        deadline = time.monotonic() + 30
        for proc in procs.values():
            proc.wait_ready(deadline)
        yield procs
    finally:
        problems = []
        for key, proc in procs.items():
            code, err = proc.stop()
            if code != 0 or "Traceback" in err:
                problems.append(f"{key}: exit {code}\n{err[-1500:]}")
        assert not problems, "\n".join(problems)


def _message(framing: str, i: int) -> bytes:
    payload = bytes(33 + (i * 5 + j) % 94 for j in range(10 + i))
    return payload + b"\n" if framing == "lines" else len(payload).to_bytes(4, "big") + payload


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.timeout(60)
@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("name", list(_harness.FRAMED_SERVERS))
def test_framed_servers_echo_messages(servers, name, framing):
    """Pipelined messages in one write, then one message split across two writes, echoed unchanged."""
    why = _missing(name)
    if why:
        pytest.skip(why)
    msgs = [_message(framing, i) for i in range(5)]
    with socket.create_connection(("127.0.0.1", servers[name, framing].port), timeout=LONG) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"".join(msgs[:4]))
        assert _recv_exactly(sock, sum(map(len, msgs[:4]))) == b"".join(msgs[:4])
        sock.sendall(msgs[4][:3])
        time.sleep(0.02)
        sock.sendall(msgs[4][3:])
        assert _recv_exactly(sock, len(msgs[4])) == msgs[4]


def test_asyncio_resp_answers_the_harness_check(servers):
    assert _harness.resp_check(servers["resp", "asyncio"].port) is None


def _loadgen() -> Path:
    if not _harness.shutil.which("cc") and not os.environ.get("CC"):
        pytest.skip("no C compiler")
    try:
        return _harness.build("loadgen")
    except _harness.HarnessError as exc:
        pytest.skip(str(exc))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("name", ["raw", "gtcp-framed"])
def test_loadgen_framed_modes_check_every_message(servers, name, framing):
    why = _missing(name)
    if why:
        pytest.skip(why)
    cmd = [str(_loadgen()), "-p", str(servers[name, framing].port), "-c", "4", "-m", framing,
           "-k", "16", "-d", "0.2", "-w", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=LONG, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["mode"] == framing and result["k"] == 16
    assert result["errors"] == 0 and result["mismatches"] == 0
    assert result["messages"] == 16 * result["requests"] > 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("impl", ["gtcp", "raw", "asyncio"])
def test_client_framed_round_trips(servers, impl, framing):
    """client_framed.py's round trips against the raw gevent framed echo (a short run in-process)."""
    if impl == "gtcp" and not (hasattr(gtcp.Client, "read_line") and hasattr(gtcp.Client, "read_exactly")):
        pytest.skip("gtcp.Client has no read_line / read_exactly")
    port = servers["raw", framing].port
    if impl == "asyncio":
        result = asyncio.run(client_framed.run_async(port, framing, 0.05, 0.0))
    else:
        make = client_framed.gtcp_round_trip if impl == "gtcp" else client_framed.raw_round_trip
        result = client_framed.run(make(port, framing), client_framed.messages(framing), 0.05, 0.0)
    assert result["count"] > 10


def test_redis_server_ceiling_starts_and_passes_the_check(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    server = _harness.RedisServer(workdir=str(tmp_path))
    server.start()
    try:
        assert _harness.resp_check(server.port) is None
    finally:
        server.stop()


def test_run_targets_aims_and_skips_read_as_the_readme_says():
    import run

    target = run.Target(">=", 0.9, aim=1.2)
    assert target.text() == ">= 0.9, aim >= 1.2"
    assert (target.met(1.0), target.aim_met(1.0)) == (True, False)
    assert run.Target(aim=1.0).text() == "aim >= 1" and run.Target(aim=1.0).met(0.5) is None
    results = {"a": [{"mps": 120.0}, {"mps": 90.0}], "b": [{"mps": 100.0}, {"mps": 100.0}]}
    row = run.compare("m", results, "a", "b", run.MPS, target)
    assert row.cells()[3:] == ["1.05 [0.90..1.20]", ">= 0.9, aim >= 1.2", "pass, aim missed"]
    skipped = run.compare_or_skip("m", results, "a", "c", run.MPS, target, {"c": "twisted not installed"})
    assert skipped.ok is None and skipped.cells()[-1] == "skip (c: twisted not installed)"
    assert run.selected(["framed,resp", "client_framed"]) == ["framed", "client_framed", "resp"]
