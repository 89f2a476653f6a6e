"""Process plumbing for the benchmarks: build the C tools, make certs, run and pin servers.

Used by ``run.py``, ``idle.py`` and ``client_rr.py``; nothing here imports gevent
or gtcp, so the orchestrating process stays light.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BUILD_DIR = BENCH_DIR / "build"
C_TOOLS = ("loadgen", "trivial_echo")

PY_SERVERS = {
    "gtcp": "echo_server.py",
    "raw": "raw_gevent_echo.py",
    "asyncio": "asyncio_echo.py",
}
SERVER_NAMES = (*PY_SERVERS, "trivial")

#: Framed echo servers (``SCRIPT PORT --framing lines|len4 [extra]``); "trivial"
#: (the C byte echo) also echoes framed traffic unchanged.
FRAMED_SERVERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gtcp-framed": ("gtcp_framed_echo.py", ()),
    "gtcp-hand": ("gtcp_handbuffer_echo.py", ()),
    "raw": ("raw_gevent_framed_echo.py", ()),
    "asyncio": ("asyncio_framed_echo.py", ()),
    "asyncio-uvloop": ("asyncio_framed_echo.py", ("--loop", "uvloop")),
    "uvloop-proto": ("uvloop_protocol_echo.py", ()),
    "twisted": ("twisted_framed_echo.py", ()),
}
#: The optional package each peer needs (benchmarks/requirements.txt).
NEEDS = {"asyncio-uvloop": "uvloop", "uvloop-proto": "uvloop", "twisted": "twisted", "uvloop": "uvloop"}
FRAMINGS = ("lines", "len4")

#: RESP servers: gtcp's own example (``--port 0 --host H``; from ``$GTCP_ROOT`` when
#: set, like gtcp itself) and the asyncio peer.
RESP_SERVERS = {
    "gtcp": Path("examples") / "resp_server.py",
    "asyncio": BENCH_DIR / "asyncio_resp.py",
}


class HarnessError(RuntimeError):
    """A benchmark could not be set up or run."""


# --------------------------------------------------------------------------- build


def find_cc() -> str:
    """Return the C compiler to use (``$CC``, ``cc``, ``gcc`` or ``clang``)."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise HarnessError(
        "no C compiler found: install one (e.g. `apt-get install gcc libssl-dev`) "
        "or set $CC; the load generator and the trivial echo server are C programs"
    )


def check_openssl_headers() -> None:
    """Fail clearly when OpenSSL's development headers are missing."""
    if not Path("/usr/include/openssl/ssl.h").exists() and not os.environ.get("CFLAGS"):
        raise HarnessError(
            "OpenSSL headers not found (/usr/include/openssl/ssl.h): "
            "`apt-get install libssl-dev`, or set CFLAGS with -I pointing at them"
        )


def build(name: str) -> Path:
    """Compile ``benchmarks/<name>.c`` into ``benchmarks/build/`` unless up to date."""
    src = BENCH_DIR / f"{name}.c"
    out = BUILD_DIR / name
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    cc = find_cc()
    check_openssl_headers()
    BUILD_DIR.mkdir(exist_ok=True)
    cflags = os.environ.get("CFLAGS", "").split()
    cmd = [cc, "-O2", "-Wall", *cflags, "-o", str(out), str(src), "-lssl", "-lcrypto"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise HarnessError(f"compiling {src.name} failed:\n{' '.join(cmd)}\n{done.stderr}")
    return out


def build_all() -> dict[str, Path]:
    """Build every C tool; return their paths by name."""
    return {name: build(name) for name in C_TOOLS}


# --------------------------------------------------------------------------- certs


@dataclass(frozen=True)
class Certs:
    """Paths of a throw-away CA and a server cert for 127.0.0.1 / localhost."""

    ca: str
    cert: str
    key: str


def make_certs(directory: str | Path) -> Certs:
    """Write a trustme CA, a server cert chain and its key into ``directory``."""
    import trustme

    directory = Path(directory)
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    certs = Certs(str(directory / "ca.pem"), str(directory / "server.pem"), str(directory / "server.key"))
    ca.cert_pem.write_to_path(certs.ca)
    with open(certs.cert, "wb") as chain:
        for blob in server.cert_chain_pems:
            chain.write(blob.bytes())
    server.private_key_pem.write_to_path(certs.key)
    return certs


def existing_certs(directory: str | Path) -> Certs:
    """Certs previously written by :func:`make_certs` into ``directory``."""
    directory = Path(directory)
    return Certs(str(directory / "ca.pem"), str(directory / "server.pem"), str(directory / "server.key"))


# --------------------------------------------------------------------------- processes


def cpu_plan() -> tuple[int | None, int | None]:
    """(server core, client core): two different allowed cores, or (None, None)."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return allowed[0], allowed[1]


def pinned(core: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child to ``core`` (None: no pinning)."""
    if core is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {core})

    return pin


def gtcp_root() -> Path:
    """The checkout whose gtcp is measured: this one, or ``$GTCP_ROOT``."""
    return Path(os.environ.get("GTCP_ROOT") or REPO_ROOT).resolve()


def python_env() -> dict[str, str]:
    """Environment for Python children: this checkout importable, no bytecode written."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(gtcp_root()), str(BENCH_DIR), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def missing_module(name: str) -> str | None:
    """The optional package server/client ``name`` needs and that is not installed, or None."""
    import importlib.util

    module = NEEDS.get(name)
    if module and importlib.util.find_spec(module) is None:
        return module
    return None


def framed_command(name: str, framing: str, stand_in: bool = False) -> list[str]:
    """Command line for framed echo server ``name`` (both gtcp ones run raw gevent when ``stand_in``)."""
    if name == "trivial":
        return [str(build("trivial_echo")), "0"]
    if stand_in and name.startswith("gtcp"):
        name = "raw"
    script, extra = FRAMED_SERVERS[name]
    return [sys.executable, str(BENCH_DIR / script), "0", "--framing", framing, *extra]


def resp_script(name: str) -> Path:
    """The script of RESP server ``name`` (``gtcp`` or ``asyncio``)."""
    return gtcp_root() / RESP_SERVERS[name]


def resp_command(name: str) -> list[str]:
    """Command line for RESP server ``name`` (``gtcp`` or ``asyncio``; redis: :class:`RedisServer`)."""
    return [sys.executable, str(resp_script(name)), "--port", "0", "--host", "127.0.0.1"]


def server_command(name: str, certs: Certs | None, stand_in: bool = False) -> list[str]:
    """Command line for server ``name`` (``gtcp`` runs the raw server when ``stand_in``)."""
    if name == "trivial":
        cmd = [str(build("trivial_echo")), "0"]
    else:
        script = PY_SERVERS["raw" if stand_in and name == "gtcp" else name]
        cmd = [sys.executable, str(BENCH_DIR / script), "0"]
    if certs:
        cmd += ["--tls", certs.cert, certs.key]
    return cmd


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise HarnessError(f"no VmRSS for pid {pid}")


class Server:
    """An echo server subprocess: started, waited for (``READY <port>``), stopped."""

    def __init__(
        self,
        name: str,
        certs: Certs | None = None,
        core: int | None = None,
        stand_in: bool = False,
        cmd: list[str] | None = None,
    ) -> None:
        self.name = name
        self.cmd = cmd or server_command(name, certs, stand_in)
        self.core = core
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> Server:
        """Start the process and wait for its READY line."""
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=python_env(),
            preexec_fn=pinned(self.core),
        )
        self.port = self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("READY "):
                    return int(line.split()[1])
            if self.proc.poll() is not None:
                break
        err = self._stop_and_collect()
        raise HarnessError(f"server {self.name} ({' '.join(self.cmd)}) did not start:\n{err}")

    def _stop_and_collect(self) -> str:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stderr.read() if self.proc.stderr else ""

    def stop(self) -> None:
        """SIGTERM, wait (then kill); complain on stderr if it did not exit cleanly."""
        if self.proc is None:
            return
        err = self._stop_and_collect()
        if self.proc.returncode not in (0, -signal.SIGTERM):
            print(
                f"warning: server {self.name} exited {self.proc.returncode}: {err[-2000:]}", file=sys.stderr
            )
        self.proc = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- load


class RedisServer(Server):
    """A real ``redis-server`` on a free loopback port, no persistence: the RESP ceiling.

    redis-server cannot pick port 0 and report it, so a free port is chosen
    by binding port 0 and closing it; a lost race (the port taken meanwhile)
    is retried with another one. Ready once it answers PING.
    """

    def __init__(self, core: int | None = None, workdir: str | None = None) -> None:
        super().__init__("redis", core=core, cmd=["redis-server"])
        self.workdir = workdir or str(BUILD_DIR)

    def start(self, timeout: float = 20.0) -> Server:
        """Start redis-server and wait until it answers PING."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise HarnessError("redis-server not found: `apt-get install redis-server`")
        for _attempt in range(3):
            self.port = free_port()
            self.cmd = [
                exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--protected-mode", "no", "--dir", self.workdir,
                "--loglevel", "warning", "--logfile", "",
            ]  # fmt: skip
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=pinned(self.core),
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if resp_ping(self.port):
                    return self
                time.sleep(0.05)
            self._stop_and_collect()
        raise HarnessError(f"redis-server did not start: {' '.join(self.cmd)}")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def resp_ping(port: int, timeout: float = 0.5) -> bool:
    """True when a RESP server on ``port`` answers ``PING`` with ``+PONG``."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass(frozen=True)
class Load:
    """One load generator run's shape (``mode`` lines/len4: ``k`` messages per request)."""

    conns: int
    size: int
    mode: str = "rr"
    tls: bool = False
    k: int = 1

    def label(self) -> str:
        """Short text such as ``rr 100x1024`` or ``lines 100 conns K=16``."""
        if self.framed:
            return f"{self.mode} {self.conns} conns K={self.k}"
        return f"{'tls ' if self.tls else ''}{self.mode} {self.conns}x{self.size}"

    @property
    def framed(self) -> bool:
        """True for the framed request/response modes."""
        return self.mode in FRAMINGS


def run_loadgen(port: int, load: Load, duration: float, warmup: float, core: int | None) -> dict[str, Any]:
    """Run the C load generator once; return its JSON result."""
    cmd = [
        str(build("loadgen")),
        "-p",
        str(port),
        "-c",
        str(load.conns),
        "-s",
        str(load.size),
        "-m",
        load.mode,
        "-d",
        str(duration),
        "-w",
        str(warmup),
    ]
    if load.tls:
        cmd.append("-t")
    if load.framed:
        cmd += ["-k", str(load.k)]
    timeout = duration + warmup + 60
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        preexec_fn=pinned(core),
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise HarnessError(f"loadgen failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measure_server(
    server: Server, load: Load, duration: float, warmup: float, core: int | None
) -> dict[str, Any]:
    """Run a load against ``server``; add the server's CPU use over the run."""
    before = proc_cpu_seconds(server.pid)
    t0 = time.monotonic()
    result = run_loadgen(server.port, load, duration, warmup, core)
    elapsed = time.monotonic() - t0
    result["server_cpu_pct"] = 100.0 * (proc_cpu_seconds(server.pid) - before) / elapsed
    return result


def loadgen_openssl_version() -> str:
    """The OpenSSL version the C tools link against."""
    done = subprocess.run([str(build("loadgen")), "-V"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


# --------------------------------------------------------------------------- RESP

#: A pipelined request and the exact replies every RESP server must give (checked before measuring).
RESP_CHECK = (
    b"*1\r\n$4\r\nPING\r\n"
    b"PING\r\n"  # inline
    b"*3\r\n$3\r\nSET\r\n$9\r\nbench:key\r\n$5\r\nvalue\r\n"
    b"*2\r\n$3\r\nGET\r\n$9\r\nbench:key\r\n"
    b"*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\n"
    b"*2\r\n$3\r\nDEL\r\n$9\r\nbench:key\r\n"
    b"*2\r\n$3\r\nGET\r\n$9\r\nbench:key\r\n"
    b"*2\r\n$3\r\nDEL\r\n$9\r\nbench:cnt\r\n"
    b"*2\r\n$4\r\nINCR\r\n$9\r\nbench:cnt\r\n"
    b"INCR bench:cnt\r\n"
    b"*2\r\n$3\r\nDEL\r\n$9\r\nbench:cnt\r\n"
)
RESP_EXPECT = b"+PONG\r\n+PONG\r\n+OK\r\n$5\r\nvalue\r\n$5\r\nhello\r\n:1\r\n$-1\r\n:0\r\n:1\r\n:2\r\n:1\r\n"


def resp_check(port: int, timeout: float = 5.0) -> str | None:
    """None when the server on ``port`` answers :data:`RESP_CHECK` exactly; else what went wrong."""
    import socket

    got = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(RESP_CHECK)
            while len(got) < len(RESP_EXPECT):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
    except OSError as exc:
        return f"{exc} after {got!r}"
    return None if got == RESP_EXPECT else f"replied {got!r}, expected {RESP_EXPECT!r}"


def run_redis_benchmark(
    port: int, tests: str, requests: int, clients: int, pipeline: int, core: int | None, timeout: float
) -> dict[str, dict[str, float]]:
    """``redis-benchmark --csv`` once; {test name: {"rps": .., "p50_ms": ..}}."""
    import csv

    exe = shutil.which("redis-benchmark")
    if exe is None:
        raise HarnessError("redis-benchmark not found: `apt-get install redis-tools`")
    cmd = [exe, "-h", "127.0.0.1", "-p", str(port), "-t", tests, "-n", str(requests),
           "-c", str(clients), "-P", str(pipeline), "--csv"]  # fmt: skip
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, preexec_fn=pinned(core), timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{' '.join(cmd)} did not finish within {timeout:.0f}s") from None
    if done.returncode != 0:
        raise HarnessError(f"redis-benchmark failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    results: dict[str, dict[str, float]] = {}
    for row in csv.reader(done.stdout.splitlines()):
        if len(row) < 2 or row[0] == "test":
            continue
        entry = {"rps": float(row[1])}
        if len(row) >= 5:
            entry["p50_ms"] = float(row[4])
        results[row[0]] = entry
    if not results:
        raise HarnessError(f"no results from {' '.join(cmd)}:\n{done.stdout[-1000:]}{done.stderr[-1000:]}")
    return results
