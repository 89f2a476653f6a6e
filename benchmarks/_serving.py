"""Plumbing for the ``gtcp serve`` benchmarks: the supervisor and its workers, HAProxy, /proc.

Used by ``serve_bench.py`` (the orchestrator) and ``serve_idle.py`` (the
idle-connections client). Like ``_harness.py`` it imports neither gevent nor
gtcp.

* :class:`Serve` starts ``python -m gtcp serve serve_echo:service ...``,
  waits for its start line (``gtcp serve: listening on HOST:PORT (N
  workers)``) and finds its worker processes (the supervisor's children).
* :class:`HAProxy` runs ``haproxy -db`` with one frontend per backend, each
  frontend a socket bound here on port 0 and handed over with ``bind fd@N``.
* :func:`connections_per_pid` counts the established connections on a port
  that each process holds, from ``/proc/net/tcp`` and ``/proc/PID/fd``.
"""

from __future__ import annotations

import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import _harness
from _harness import HarnessError

HOST = "127.0.0.1"
START_LINE = re.compile(r"gtcp serve: listening on (\S+):(\d+) \((\d+) workers?\)")
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)


def pin_and_raise(cpus: Iterable[int] | None) -> Callable[[], None]:
    """A ``preexec_fn``: pin the child to ``cpus`` (None: leave it free) and raise its fd limit.

    RLIMIT_NOFILE's soft limit goes up to the hard limit, as ``ulimit -n
    $(ulimit -Hn)`` in a shell wrapper would; ``gtcp serve`` does not raise
    it itself, and its workers inherit the supervisor's.
    """
    chosen = None if cpus is None else set(cpus)

    def setup() -> None:
        if chosen is not None:
            os.sched_setaffinity(0, chosen)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            except (ValueError, OSError):
                pass

    return setup


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc/*/stat), sorted."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def nofile_limit(pid: int) -> str:
    """``soft/hard`` of ``Max open files`` in /proc/PID/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return f"{soft}/{hard}"
    return "?"


def established_inodes(port: int) -> set[str]:
    """Socket inodes of the established TCP connections whose local port is ``port``."""
    inodes = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def connections_per_pid(pids: Iterable[int], port: int) -> dict[int, int]:
    """How many of the established connections to ``port`` each of ``pids`` holds a descriptor of."""
    inodes = established_inodes(port)
    counts = {}
    for pid in pids:
        held = 0
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            fds = []
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
        counts[pid] = held
    return counts


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """User + system CPU seconds of each of ``pids``."""
    return {pid: _harness.proc_cpu_seconds(pid) for pid in pids}


class Serve:
    """``python -m gtcp serve serve_echo:service --workers N [extra]``, pinned to ``cpus`` (None: free)."""

    def __init__(self, name: str, workers: int, cpus: Iterable[int] | None = None,
                 extra: Iterable[str] = ()) -> None:
        self.name = name
        self.workers = workers
        self.cpus = None if cpus is None else sorted(cpus)
        self.cmd = [sys.executable, "-m", "gtcp", "serve", "serve_echo:service", "--host", HOST,
                    "--port", "0", "--workers", str(workers), "--graceful-timeout", "1", *extra]
        self.proc: subprocess.Popen[str] | None = None
        self.stderr: IO[str] | None = None
        self.port = 0
        self.worker_pids: list[int] = []
        self.terminated = False

    @property
    def pid(self) -> int:
        """The supervisor's process id."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def pids(self) -> list[int]:
        """The processes that serve connections: the workers."""
        return self.worker_pids

    def start(self, timeout: float = 30.0) -> Serve:
        """Start the supervisor, wait for its start line, find its workers."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the supervisor (:meth:`wait_ready` waits for it): several can start at once."""
        self.terminated = False
        self.stderr = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty worker never blocks
        # cwd: ``python -m`` puts the current directory first on sys.path, so a
        # checkout's root there would shadow $GTCP_ROOT's gtcp; benchmarks/ has none.
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     env=_harness.python_env(), cwd=_harness.BENCH_DIR,
                                     preexec_fn=pin_and_raise(self.cpus))

    def wait_ready(self, timeout: float = 30.0) -> Serve:
        """Wait for the start line; find the workers."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 0.2)[0]:
                line = self.proc.stdout.readline()
                match = START_LINE.search(line)
                if match:
                    self.port = int(match.group(2))
                    break
        if not self.port:
            err = self._stop()
            raise HarnessError(f"{self.name} ({' '.join(self.cmd)}) printed no start line:\n{err}")
        self.worker_pids = children(self.pid)
        if len(self.worker_pids) != self.workers:
            err = self._stop()
            raise HarnessError(f"{self.name}: {len(self.worker_pids)} worker processes, expected "
                               f"{self.workers}:\n{err}")
        return self

    def errors(self) -> str:
        """What the supervisor and workers wrote on stderr so far."""
        if self.stderr is None:
            return ""
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read()

    def terminate(self) -> None:
        """Send SIGTERM (a graceful stop) without waiting: :meth:`stop` then waits."""
        if self.proc is not None and self.proc.poll() is None and not self.terminated:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def _stop(self) -> str:
        assert self.proc is not None
        self.terminate()
        if self.proc.poll() is None:
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        err = self.errors()
        if self.stderr is not None:
            self.stderr.close()
            self.stderr = None
        return err

    def stop(self) -> None:
        """SIGTERM (a graceful stop of every worker); complain on stderr if it was not clean."""
        if self.proc is None:
            return
        err = self._stop()
        if self.proc.returncode != 0 or "Traceback" in err:
            print(f"warning: {self.name} exited {self.proc.returncode}: {err[-2000:]}", file=sys.stderr)
        self.proc = None
        self.terminated = False

    def __enter__(self) -> Serve:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Plain(_harness.Server):
    """A one-process echo server of the harness (``echo_server.py``, ``raw_gevent_echo.py``).

    :class:`_harness.Server` pinned to a set of cores (None: free), with the
    interface of :class:`Serve` (``pids``: the process that serves).
    """

    def __init__(self, name: str, script: str, cpus: Iterable[int] | None = None) -> None:
        super().__init__(name, cmd=[sys.executable, str(_harness.BENCH_DIR / script), "0"])
        self.cpus = None if cpus is None else sorted(cpus)
        self.worker_pids: list[int] = []
        self.terminated = False

    @property
    def pids(self) -> list[int]:
        """The processes that serve connections: this one."""
        return [self.pid]

    def start(self, timeout: float = 20.0) -> Plain:
        """Start the process, pinned; wait for its READY line."""
        self.launch()
        return self.wait_ready(timeout)

    def terminate(self) -> None:
        """Send SIGTERM without waiting: :meth:`stop` then waits."""
        if self.proc is not None and self.proc.poll() is None and not self.terminated:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def _stop_and_collect(self) -> str:
        assert self.proc is not None
        if self.terminated:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.terminated = False
            return self.proc.stderr.read() if self.proc.stderr else ""
        return super()._stop_and_collect()

    def launch(self) -> None:
        """Start the process (:meth:`wait_ready` waits for it)."""
        self.terminated = False
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=_harness.python_env(), preexec_fn=pin_and_raise(self.cpus))

    def wait_ready(self, timeout: float = 20.0) -> Plain:
        """Wait for its READY line."""
        self.port = self._wait_ready(timeout)
        return self


def echo_check(port: int, timeout: float = 10.0, payload: bytes = b"gtcp serve bench\n") -> str | None:
    """None when a new connection to ``port`` echoes ``payload``; else what went wrong."""
    got = b""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(payload)
            while len(got) < len(payload):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
    except OSError as exc:
        return f"{exc!r} after {got!r}"
    return None if got == payload else f"echoed {got!r}, sent {payload!r}"


class HAProxy:
    """``haproxy -db``: one TCP-mode frontend per backend ``name -> (port, server options)``.

    ``nbthread 1``, so that one process on one core is the whole proxy; no
    health checks (they would be extra traffic in the measurement); no
    splicing (HAProxy's default). Each frontend is a socket bound here on
    127.0.0.1 port 0, handed over with ``bind fd@N``.
    """

    def __init__(self, backends: dict[str, tuple[int, str]], cpus: Iterable[int] | None,
                 workdir: str | Path) -> None:
        if HAPROXY is None:
            raise HarnessError("haproxy not installed (apt-get install haproxy)")
        self.cpus = None if cpus is None else sorted(cpus)
        self.frontends: dict[str, socket.socket] = {}
        sections = []
        for name, (port, options) in backends.items():
            sock = socket.socket()
            sock.bind((HOST, 0))
            sock.listen(4096)
            self.frontends[name] = sock
            sections.append(f"""
frontend fe_{name}
    bind fd@{sock.fileno()}
    default_backend be_{name}

backend be_{name}
    server s_{name} {HOST}:{port} {options}
""")
        self.config = Path(workdir) / "haproxy.cfg"
        self.config.write_text("""
global
    nbthread 1
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
""" + "".join(sections))
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(self.config)], pass_fds=[s.fileno() for s in self.frontends.values()],
            stdout=self.log, stderr=self.log, preexec_fn=pin_and_raise(self.cpus), text=True,
        )

    @property
    def pid(self) -> int:
        """HAProxy's process id."""
        return self.proc.pid

    def port(self, name: str) -> int:
        """The frontend port of backend ``name``."""
        return int(self.frontends[name].getsockname()[1])

    def check(self) -> None:
        """Every frontend echoes through its backend; HarnessError (with HAProxy's output) if not."""
        for name in self.frontends:
            problem = echo_check(self.port(name))
            if problem:
                raise HarnessError(f"HAProxy frontend {name} did not echo: {problem}\n{self.output()}")

    def output(self) -> str:
        """What HAProxy printed."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s); close the frontend sockets."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for sock in self.frontends.values():
            sock.close()
        self.log.close()

    def __enter__(self) -> HAProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def loadgen(port: int, conns: int, size: int, duration: float, warmup: float,
            cpus: Iterable[int] | None) -> subprocess.Popen[str]:
    """Start the C load generator (rr mode) against ``port``; the caller waits for it."""
    cmd = [str(_harness.build("loadgen")), "-H", HOST, "-p", str(port), "-c", str(conns), "-s", str(size),
           "-m", "rr", "-d", str(duration), "-w", str(warmup)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=pin_and_raise(cpus))


def describe_pids(values: dict[int, Any], fmt: str = "{}") -> str:
    """``a/b/c`` of the values, in pid order."""
    return "/".join(fmt.format(values[pid]) for pid in sorted(values))
