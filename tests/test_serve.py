"""``python -m gtcp serve``: the real command in subprocesses, on loopback, port 0.

Each server runs in its own session (process group), so a test can send
Ctrl-C to the group as a terminal does, check that nothing of it is left
(``os.killpg(pgid, 0)``), and kill all of it in the fixture whatever happens.
Nothing here sleeps to synchronise: tests read the start line for the port
and poll for conditions under a deadline. The targets are in
``tests/serve_targets.py``.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import socket
import stat
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.select
import gevent.socket
import gevent.subprocess
import pytest
import trustme
from conftest import LONG, PROCESS
from helpers import ROOT, TESTS, child_env, wait_until

import gtcp
from gtcp.__main__ import _parser
from gtcp._serve import COUNTERS, metrics_text

START_LINE = re.compile(
    r"gtcp serve: listening on (?P<where>.+?) \((?P<tls>TLS, )?(?P<workers>\d+) workers?\)"
    r"(?:, metrics on 127\.0\.0\.1:(?P<metrics>\d+))?\n"
)


#: Polls a served child (a process group, its log, an HTTP scrape): PROCESS seconds, every 20 ms.
until = functools.partial(wait_until, timeout=PROCESS, interval=0.02)


def environment(folder: Path, *paths: Path) -> dict[str, str]:
    # No bytecode: a module rewritten within a second is read again.
    return child_env(TESTS, *paths, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
                     SERVE_TARGETS_DIR=str(folder))


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class Served:
    """One ``python -m gtcp serve`` (or a command that execs it) in its own session."""

    def __init__(self, argv: list[str], env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> None:
        self.proc: Any = gevent.subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=gevent.subprocess.PIPE, stderr=gevent.subprocess.PIPE,
            text=True, start_new_session=True, pass_fds=pass_fds,
        )
        self.pgid: int = self.proc.pid
        self.stderr: list[str] = []
        self._reader = gevent.spawn(self._read_stderr)
        self.where = ""
        self.port = 0
        self.metrics_port = 0

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def listening(self) -> Served:
        """Read the start line: where it listens, the metrics port."""
        with gevent.Timeout(PROCESS, AssertionError("no start line")):
            line = self.proc.stdout.readline()
        match = START_LINE.fullmatch(line)
        assert match is not None, (line, self.stderr)
        self.where = match["where"]
        if not self.where.startswith("/"):
            self.port = int(self.where.rsplit(":", 1)[1])
        if match["metrics"]:
            self.metrics_port = int(match["metrics"])
        return self

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = PROCESS) -> int:
        """Wait for the exit (and all of stderr); the exit status."""
        with gevent.Timeout(timeout, AssertionError(f"still running after {timeout} s: {self.stderr}")):
            code: int = self.proc.wait()
            self._reader.join()
        return code

    def finish(self, timeout: float = PROCESS) -> tuple[int, str, list[str]]:
        """Exit status, the rest of stdout, stderr lines; and nothing of the group left running."""
        with gevent.Timeout(timeout, AssertionError(f"still running after {timeout} s: {self.stderr}")):
            out = self.proc.stdout.read()
        code = self.wait(timeout)
        until(lambda: not group_alive(self.pgid), "every process of the server to exit", timeout=LONG)
        return code, out, self.stderr

    def kill(self) -> None:
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._reader.kill()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def run_serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start ``python -m gtcp serve ARGS`` (PYTHONPATH: the repository, tests/); kill what is left after."""
    started: list[Served] = []

    def start(*args: str, command: list[str] | None = None, paths: tuple[Path, ...] = (),
              pass_fds: tuple[int, ...] = ()) -> Served:
        argv = command if command is not None else [sys.executable, "-m", "gtcp", "serve", *args]
        served = Served(argv, environment(tmp_path, *paths), pass_fds)
        started.append(served)
        return served

    yield start
    for served in started:
        served.kill()


# -- clients -------------------------------------------------------------------------------


class Line:
    """A line-framed client connection (gevent socket, LONG-second timeouts)."""

    def __init__(self, port: int = 0, unix: str | None = None) -> None:
        if unix is not None:
            self.sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(LONG)
            self.sock.connect(unix)
        else:
            self.sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=LONG)
        self.file = self.sock.makefile("rb")

    def ask(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\n")
        return self.read()

    def read(self) -> str:
        line: bytes = self.file.readline()
        if not line.endswith(b"\n"):
            raise EOFError(f"connection ended: {line!r}")
        return line.decode().rstrip("\n")

    def local(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def ask(port: int, text: str) -> list[str]:
    """One request on a new connection: ``[tag, pid, remote, payload]`` of the echo reply."""
    client = Line(port)
    try:
        reply = client.ask(text).split(" ", 3)
        assert reply[2] == client.local(), reply
        return reply
    finally:
        client.close()


def pids_of(port: int, count: int, limit: int = 2000) -> set[str]:
    """Connect until replies came from *count* different pids."""
    return connect_until(port, count, limit)[0]


def connect_until(port: int, count: int, limit: int = 2000) -> tuple[set[str], int]:
    """Connect until replies came from *count* different pids: the pids and how many connections it took."""
    pids: set[str] = set()
    for n in range(1, limit + 1):
        pids.add(ask(port, f"hello {n}")[1])
        if len(pids) == count:
            return pids, n
    raise AssertionError(f"only {pids} answered {limit} connections")


def events(tmp_path: Path) -> list[str]:
    path = tmp_path / "events"
    return path.read_text().splitlines() if path.exists() else []


def scrape(port: int) -> dict[str, int]:
    """GET /metrics: the value of each sample (checking the HELP and TYPE lines)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=LONG) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    values: dict[str, int] = {}
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if not line.startswith("#"):
            name, value = line.split(" ")
            assert lines[n - 2].startswith(f"# HELP {name} "), lines
            kind = "counter" if name.endswith("_total") else "gauge"
            assert lines[n - 1] == f"# TYPE {name} {kind}", lines
            values[name] = int(value)
    return values


# -- serving ------------------------------------------------------------------------------


def test_serve_two_workers_answer_from_two_pids(run_serve: Callable[..., Served]) -> None:
    server = run_serve("serve_targets:echo", "--port", "0", "--workers", "2", "--framing", "lines")
    server.listening()
    assert server.where == f"127.0.0.1:{server.port}"
    assert len(pids_of(server.port, 2)) == 2
    tag, _, _, payload = ask(server.port, "héllo")
    assert (tag, payload) == ("echo", "héllo")
    server.signal(signal.SIGTERM)
    code, out, err = server.finish()
    assert (code, out, err) == (0, "", [])


def test_serve_restarts_a_killed_worker(run_serve: Callable[..., Served]) -> None:
    server = run_serve("serve_targets:echo", "--port", "0", "--workers", "2", "--framing", "lines",
                       "--log-level", "info").listening()
    pids = pids_of(server.port, 2)
    victim = pids.pop()
    os.kill(int(victim), signal.SIGKILL)
    # Every request is served meanwhile (by the other worker, then by both).
    replies = until(lambda: (pid := ask(server.port, "again")[1]) not in (victim, *pids) and pid,
                    "a reply from the restarted worker", interval=0)
    assert replies
    assert any(f"worker {victim} exited unexpectedly (killed by SIGKILL)" in line for line in server.stderr)
    server.signal(signal.SIGTERM)
    code, _, err = server.finish()
    assert code == 0
    assert not any("Traceback" in line for line in err)


# -- errors before serving ---------------------------------------------------------------------


@pytest.mark.parametrize(("target", "message"), [
    ("serve_targets", "the target must be MODULE:NAME"),
    (":echo", "the target must be MODULE:NAME"),
    ("no_such_module_here:echo", "cannot import 'no_such_module_here'"),
    ("broken_target:service", "cannot import 'broken_target' (target broken_target:service): ValueError"),
    ("serve_targets:missing", "module 'serve_targets' has no attribute 'missing'"),
    ("serve_targets:number", "is not a gtcp.Service, a Service class or a factory: it is the int 42"),
    ("serve_targets:NotAService", "the class NotAService, which is not a gtcp.Service subclass"),
    ("serve_targets:returns_a_number", "worker exited at start-up (exit status 1): "
                                       "serve_targets:returns_a_number() returned 42"),
], ids=lambda value: value if ":" in value or value == "serve_targets" else "")
def test_serve_unusable_target_is_one_error_line(
    run_serve: Callable[..., Served], tmp_path: Path, target: str, message: str
) -> None:
    (tmp_path / "broken_target.py").write_text("raise ValueError('broken at import')\n")
    server = run_serve(target, "--port", "0", "--workers", "3", paths=(tmp_path,))
    code, out, err = server.finish()
    assert (code, out) == (1, "")
    assert len(err) == 1, err
    assert err[0].startswith("gtcp: error: ") and message in err[0], err


@pytest.mark.parametrize(("target", "message"), [
    ("serve_targets:crash_at_start", "worker exited at start-up (exit status 1): "
                                     "serve_targets:crash_at_start() raised RuntimeError: boom at start-up "
                                     "(at serve_targets.py:"),
    ("serve_targets:exit_at_start", "worker exited at start-up (exit status 3); stopping"),
    ("serve_targets:crash_in_one_worker", "worker exited at start-up (exit status 1): "
                                          "serve_targets:crash_in_one_worker() raised RuntimeError"),
], ids=["crash_at_start", "exit_at_start", "crash_in_one_worker"])
def test_serve_target_crashing_at_start_up_stops_the_server(
    run_serve: Callable[..., Served], target: str, message: str
) -> None:
    server = run_serve(target, "--port", "0", "--workers", "2")
    code, out, err = server.finish()
    assert (code, out) == (1, "")
    assert len(err) == 1, err
    assert err[0].startswith("gtcp: error: ") and message in err[0] and err[0].endswith("; stopping"), err


def test_serve_a_worker_failing_at_every_restart_stops_the_server(
    run_serve: Callable[..., Served], tmp_path: Path
) -> None:
    server = run_serve("serve_targets:breaks_later", "--port", "0", "--framing", "lines").listening()
    _, pid, _, _ = ask(server.port, "fine")
    (tmp_path / "broken").touch()
    os.kill(int(pid), signal.SIGKILL)
    code, out, err = server.finish()
    assert (code, out) == (1, "")
    assert err[0] == (f"gtcp: WARNING: worker {pid} exited unexpectedly (killed by SIGKILL); "
                      "restarting it in 0.1 s")
    assert len(err) == 1 + 4 + 1, err  # that, four failed restarts, the error
    failed = re.compile(r"gtcp: WARNING: worker \d+ exited at start-up \(exit status 1\): .* raised "
                        r"RuntimeError: broken since .*; restarting it in [\d.]+ s")
    assert all(failed.fullmatch(line) for line in err[1:-1]), err
    assert err[-1].startswith("gtcp: error: worker exited at start-up (exit status 1): ")
    assert err[-1].endswith("; 5 times in a row; stopping")


def test_serve_port_in_use_is_one_error_line(run_serve: Callable[..., Served]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = run_serve("serve_targets:echo", "--port", str(port), "--workers", "2").finish()
    assert (code, out) == (1, "")
    assert err == [f"gtcp: error: Error initializing the server: Address already in use (127.0.0.1:{port})"]


def test_serve_metrics_port_in_use_is_one_error_line_and_releases_the_socket(
    run_serve: Callable[..., Served], tmp_path: Path
) -> None:
    path = tmp_path / "s.sock"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = run_serve("serve_targets:echo", "--unix", str(path), "--metrics-port", str(port))
        code, out, err = server.finish()
    assert (code, out, len(err)) == (1, "", 1), err
    assert err[0].startswith("gtcp: error: Error initializing the metrics server: Address already in use")
    assert not path.exists()


@pytest.mark.parametrize(("tls", "message"), [
    (["--cert", "no.pem", "--key", "no.key"], "gtcp: error: Failed to initialize the SSL context: "),
    (["--cert", "cert.pem"], "gtcp: error: --cert and --key must be given together"),
], ids=["missing-files", "cert-without-key"])
def test_serve_bad_tls_options_are_one_error_line(
    run_serve: Callable[..., Served], tls: list[str], message: str
) -> None:
    code, out, err = run_serve("serve_targets:echo", "--port", "0", "--workers", "2", *tls).finish()
    assert (code, out, len(err)) == (1, "", 1), err
    assert err[0].startswith(message), err


def test_serve_without_an_address_is_one_error_line(run_serve: Callable[..., Served]) -> None:
    code, out, err = run_serve("serve_targets:echo").finish()
    assert (code, out) == (1, "")
    assert err == ["gtcp: error: --port or --unix is required (unless systemd passes the socket: LISTEN_FDS)"]


# -- stopping -----------------------------------------------------------------------------------


def test_serve_sigterm_lets_a_request_in_progress_finish(
    run_serve: Callable[..., Served], tmp_path: Path
) -> None:
    server = run_serve("serve_targets:slow", "--port", "0", "--workers", "2", "--framing", "lines",
                       "--graceful-timeout", "15").listening()
    client = Line(server.port)
    try:
        assert client.ask("sleep 0.5") == "working"
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert client.read() == "done"
        # Still served while the worker drains; then the client leaves.
        assert client.ask("more").endswith(f" {client.local()} more")
        remote = client.local()
    finally:
        client.close()
    code, _, err = server.finish()
    assert (code, err) == (0, [])
    assert time.monotonic() - started < 10, "waited for the graceful timeout"
    assert any(line.startswith("closed ") and line.endswith(f" {remote}") for line in events(tmp_path))


def test_serve_ctrl_c_to_the_group_closes_what_is_left_at_the_graceful_timeout(
    run_serve: Callable[..., Served], tmp_path: Path
) -> None:
    server = run_serve("serve_targets:slow", "--port", "0", "--workers", "2", "--framing", "lines",
                       "--graceful-timeout", "0.5").listening()
    client = Line(server.port)
    try:
        assert client.ask("hold") == "held"
        remote = client.local()
        os.killpg(server.pgid, signal.SIGINT)  # what a terminal does: every process gets it
        with pytest.raises(EOFError):
            client.read()
    finally:
        client.close()
    code, _, err = server.finish()
    assert (code, err) == (0, [])
    assert any(line.startswith("closed ") and line.endswith(f" {remote}") for line in events(tmp_path))


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGQUIT], ids=["SIGTERM", "SIGQUIT"])
def test_serve_second_signal_stops_at_once(
    run_serve: Callable[..., Served], tmp_path: Path, second: int
) -> None:
    server = run_serve("serve_targets:slow", "--port", "0", "--framing", "lines", "--graceful-timeout", "60",
                       "--log-level", "info").listening()
    client = Line(server.port)
    try:
        assert client.ask("hold") == "held"
        server.signal(signal.SIGTERM)
        until(lambda: any("stopping: workers drain" in line for line in server.stderr), "the first stop")
        server.signal(second)
        with pytest.raises(EOFError):
            client.read()
    finally:
        client.close()
    code, _, err = server.finish(timeout=10)
    assert code == 0
    assert any("stopping now" in line for line in err)
    assert any(line.startswith("closed ") for line in events(tmp_path))


def test_serve_workers_stop_by_themselves_when_the_supervisor_is_killed(
    run_serve: Callable[..., Served], tmp_path: Path
) -> None:
    server = run_serve("serve_targets:slow", "--port", "0", "--workers", "2", "--framing", "lines",
                       "--graceful-timeout", "0.5").listening()
    client = Line(server.port)
    try:
        assert client.ask("hold") == "held"
        remote = client.local()
        server.signal(signal.SIGKILL)
        with pytest.raises(EOFError):
            client.read()  # the worker noticed (its next report failed), drained, closed
    finally:
        client.close()
    assert server.wait() == -signal.SIGKILL
    until(lambda: not group_alive(server.pgid), "the workers to exit")
    assert any(line.startswith("closed ") and line.endswith(f" {remote}") for line in events(tmp_path))


def test_serve_passes_idle_timeout_and_max_connections_to_the_workers(
    run_serve: Callable[..., Served]
) -> None:
    server = run_serve("serve_targets:slow", "--port", "0", "--framing", "lines", "--idle-timeout", "1",
                       "--max-connections", "1").listening()
    first = Line(server.port)
    second = None
    try:
        assert first.ask("hold") == "held"
        second = Line(server.port)
        second.sock.sendall(b"waiting\n")  # queued: the one worker serves one connection at a time
        assert gevent.select.select([second.sock], [], [], 0.3) == ([], [], [])  # not served meanwhile
        with pytest.raises(EOFError):
            first.read()  # closed by the idle timeout
        assert second.read().endswith(" waiting")  # served once the first was gone
    finally:
        first.close()
        if second is not None:
            second.close()
    server.signal(signal.SIGTERM)
    assert server.finish()[0] == 0


# -- reloading ----------------------------------------------------------------------------------


class Loop:
    """Clients doing request/response on new connections, continuously, in greenlets."""

    def __init__(self, port: int, clients: int = 2) -> None:
        self.port = port
        self.replies: list[tuple[str, str]] = []  # (tag, pid)
        self.failures: list[str] = []
        self.running = True
        self.jobs = [gevent.spawn(self._run, n) for n in range(clients)]

    def _run(self, n: int) -> None:
        count = 0
        while self.running:
            count += 1
            try:
                tag, pid, _, payload = ask(self.port, f"loop {n} {count}")
                assert payload == f"loop {n} {count}"
                self.replies.append((tag, pid))
            except Exception as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def since(self, mark: int) -> list[tuple[str, str]]:
        return self.replies[mark:]

    def stop(self) -> None:
        self.running = False
        gevent.joinall(self.jobs, timeout=LONG)


def test_serve_sighup_reloads_fresh_code_without_a_failed_connection(
    run_serve: Callable[..., Served], tmp_path: Path
) -> None:
    module = tmp_path / "hup_target.py"
    module.write_text("import serve_targets\nservice = serve_targets.Echo('v1')\n")
    server = run_serve("hup_target:service", "--port", "0", "--workers", "2", "--framing", "lines",
                       "--log-level", "info", paths=(tmp_path,)).listening()
    loop = Loop(server.port)
    try:
        until(lambda: len({pid for _, pid in loop.replies}) == 2, "replies from both workers")
        old = {pid for _, pid in loop.replies}

        # New code that cannot start: the old workers keep serving.
        module.write_text("raise ValueError('not today')\n")
        server.signal(signal.SIGHUP)
        until(lambda: any("reload failed: worker exited at start-up" in line for line in server.stderr),
              "the failed reload")
        mark = len(loop.replies)
        until(lambda: len(loop.replies) > mark + 20, "more replies")
        assert {pid for _, pid in loop.since(mark)} <= old

        # Good new code: new workers take over, the old ones drain and exit.
        module.write_text("import serve_targets\nservice = serve_targets.Echo('v2')\n")
        server.signal(signal.SIGHUP)
        until(lambda: sum(f"worker {pid} exited (exit status 0)" in line
                          for pid in old for line in server.stderr) == 2, "the old workers' exit")
        mark = len(loop.replies)
        until(lambda: len(loop.replies) > mark + 20, "more replies")
    finally:
        loop.stop()
    assert loop.failures == []
    after = loop.since(mark)
    assert {tag for tag, _ in after} == {"v2"}
    assert not {pid for _, pid in after} & old
    assert len(loop.replies) > 100
    server.signal(signal.SIGTERM)
    code, _, err = server.finish()
    assert code == 0
    assert not any("Traceback" in line for line in err)


@pytest.fixture(scope="module")
def two_cas(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    """Two CAs, each with a server certificate for 127.0.0.1: PEM file paths."""
    folder = tmp_path_factory.mktemp("pki")
    result = []
    for n in range(2):
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        files = {"ca": folder / f"ca{n}.pem", "cert": folder / f"cert{n}.pem", "key": folder / f"key{n}.pem"}
        ca.cert_pem.write_to_path(str(files["ca"]))
        cert.private_key_pem.write_to_path(str(files["key"]))
        for blob in cert.cert_chain_pems:
            blob.write_to_path(str(files["cert"]), append=True)
        result.append({name: str(path) for name, path in files.items()})
    return result


def tls_ask(port: int, ca: str) -> bool:
    """True if a TLS client trusting *ca* gets an echo; False if the handshake fails."""
    secure = gtcp.ClientSecureSocket(cert=ca)
    try:
        with gtcp.Client("127.0.0.1", port, secure_socket=secure, timeout=LONG, connect_timeout=LONG,
                         framing=gtcp.Lines()) as client:
            client.write_bytes(b"tls\n")
            return client.read_frame().endswith(b" tls")
    except gtcp.TLSError:
        return False


def test_serve_sighup_reloads_the_tls_files(
    run_serve: Callable[..., Served], tmp_path: Path, two_cas: list[dict[str, str]]
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    first, second = two_cas
    cert.write_bytes(Path(first["cert"]).read_bytes())
    key.write_bytes(Path(first["key"]).read_bytes())
    server = run_serve("serve_targets:echo", "--port", "0", "--workers", "2", "--framing", "lines",
                       "--cert", str(cert), "--key", str(key)).listening()
    assert START_LINE.fullmatch(f"gtcp serve: listening on {server.where} (TLS, 2 workers)\n")
    assert tls_ask(server.port, first["ca"])
    cert.write_bytes(Path(second["cert"]).read_bytes())
    key.write_bytes(Path(second["key"]).read_bytes())
    assert tls_ask(server.port, first["ca"])  # no reload yet
    server.signal(signal.SIGHUP)
    until(lambda: tls_ask(server.port, second["ca"]), "the new certificate")
    until(lambda: not tls_ask(server.port, first["ca"]), "the old workers to stop accepting")
    server.signal(signal.SIGTERM)
    assert server.finish()[0] == 0


# -- sockets from elsewhere, Unix sockets ------------------------------------------------------

#: Does what systemd does for a socket unit: the socket on fd 3, LISTEN_PID and
#: LISTEN_FDS set for this very process, then exec (the pid stays the same).
SOCKET_ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.execv(sys.executable, [sys.executable, "-m", "gtcp", "serve", *sys.argv[2:]])
"""


def test_serve_uses_systemd_socket_activation(run_serve: Callable[..., Served]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = run_serve(command=[sys.executable, "-c", SOCKET_ACTIVATE, str(sock.fileno()),
                                    "serve_targets:echo", "--workers", "2", "--framing", "lines"],
                           pass_fds=(sock.fileno(),))
    server.listening()
    assert server.where == f"127.0.0.1:{port}"
    assert ask(port, "activated")[3] == "activated"
    client = Line(port)
    try:
        # The workers do not see the variables meant for the supervisor.
        assert (client.ask("env LISTEN_FDS"), client.ask("env LISTEN_PID")) == ("-", "-")
    finally:
        client.close()
    server.signal(signal.SIGTERM)
    code, _, err = server.finish()
    assert (code, err) == (0, [])


def test_serve_unix_socket_with_a_class_target_and_len4_framing(
    run_serve: Callable[..., Served], tmp_path: Path
) -> None:
    path = tmp_path / "serve.sock"
    server = run_serve("serve_targets:EchoClass", "--unix", str(path), "--workers", "2",
                       "--framing", "len4").listening()
    assert server.where == str(path)
    info = os.stat(path)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(LONG)
        sock.connect(str(path))
        sock.sendall(struct.pack(">I", 5) + b"unix!")
        reply = b""
        while len(reply) < 4 or len(reply) < 4 + struct.unpack(">I", reply[:4])[0]:
            chunk = sock.recv(4096)
            assert chunk, reply
            reply += chunk
    finally:
        sock.close()
    tag, _, remote, payload = reply[4:].decode().split(" ", 3)
    assert (tag, remote, payload) == ("echo", ":0", "unix!")
    server.signal(signal.SIGTERM)
    code, _, err = server.finish()
    assert (code, err) == (0, [])
    assert not path.exists()


# -- metrics ------------------------------------------------------------------------------------


def test_serve_metrics_sum_the_workers_and_never_go_down(run_serve: Callable[..., Served]) -> None:
    server = run_serve("serve_targets:make_echo", "--port", "0", "--workers", "2", "--framing", "lines",
                       "--metrics-port", "0").listening()
    first = scrape(server.metrics_port)
    assert set(first) == {"gtcp_open_connections", *(f"gtcp_{name}_total" for name in COUNTERS),
                          "gtcp_workers", "gtcp_worker_restarts_total"}
    assert first["gtcp_accepted_total"] == 0 and first["gtcp_workers"] == 2
    with pytest.raises(urllib.error.HTTPError) as not_found:
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/other", timeout=LONG)
    assert not_found.value.code == 404

    sent = received = 0
    for n in range(10):
        client = Line(server.port)
        try:
            request = f"request {n}"
            reply = client.ask(request)
        finally:
            client.close()
        assert reply.startswith("factory ")
        sent += len(request) + 1
        received += len(reply) + 1
    held = Line(server.port)
    try:
        until(lambda: scrape(server.metrics_port)["gtcp_open_connections"] == 1, "the held connection")
    finally:
        held.close()
    expected = {"gtcp_accepted_total": 11, "gtcp_closed_total": 11, "gtcp_open_connections": 0,
                "gtcp_bytes_in_total": sent, "gtcp_bytes_out_total": received}
    until(lambda: all(scrape(server.metrics_port)[name] == value for name, value in expected.items()),
          "the counts")

    # Kill a worker once every connection it served is in its reports.
    pids, made = connect_until(server.port, 2)
    total = 11 + made

    def settled() -> dict[str, int] | None:
        got = scrape(server.metrics_port)
        return got if got["gtcp_accepted_total"] == got["gtcp_closed_total"] == total else None

    values = until(settled, "the counts of those connections")
    os.kill(int(pids.pop()), signal.SIGKILL)
    counters = [name for name in values if name.endswith("_total")]

    def restarted() -> bool:
        nonlocal values
        now = scrape(server.metrics_port)
        assert all(now[name] >= values[name] for name in counters), (values, now)
        values = now
        return now["gtcp_worker_restarts_total"] == 1 and now["gtcp_workers"] == 2

    until(restarted, "the restarted worker")
    assert values["gtcp_accepted_total"] == values["gtcp_closed_total"] == total  # the dead worker's kept
    for n in range(5):
        ask(server.port, f"after {n}")
    until(lambda: scrape(server.metrics_port)["gtcp_accepted_total"] == total + 5, "the new connections")
    server.signal(signal.SIGTERM)
    assert server.finish()[0] == 0


# -- in-process -------------------------------------------------------------------------------


def test_serve_metrics_text_format() -> None:
    text = metrics_text({"open": 2, "accepted": 7, "bytes_in": 10}, workers=3, restarts=1)
    lines = text.splitlines()
    assert text.endswith("\n")
    assert lines[:3] == ["# HELP gtcp_open_connections Connections open now, over all workers.",
                         "# TYPE gtcp_open_connections gauge", "gtcp_open_connections 2"]
    assert "gtcp_accepted_total 7" in lines and "# TYPE gtcp_accepted_total counter" in lines
    assert "gtcp_closed_total 0" in lines and "gtcp_bytes_in_total 10" in lines
    assert lines[-3:] == ["# HELP gtcp_worker_restarts_total Workers restarted after an unexpected exit.",
                          "# TYPE gtcp_worker_restarts_total counter", "gtcp_worker_restarts_total 1"]
    assert "gtcp_workers 3" in lines
    assert len(lines) == 3 * (1 + len(COUNTERS) + 2)


def test_serve_workers_auto_is_the_cpu_count() -> None:
    args = _parser().parse_args(["serve", "serve_targets:echo", "--workers", "auto"])
    assert args.workers == len(os.sched_getaffinity(0))  # the CPUs this process may use
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "serve_targets:echo", "--workers", "0"])


def test_serve_sighup_during_start_up_is_a_reload_after_it(run_serve: Callable[..., Served],
                                                           tmp_path: Path) -> None:
    """SIGHUP's default action would kill a supervisor still importing the target (a cert renewal at the
    wrong moment); it is kept and done once the first workers serve."""
    (tmp_path / "slow_target.py").write_text(
        "import os, time\n"
        "from serve_targets import make_echo  # noqa: F401\n"
        "open(os.path.join(os.environ['SLOW_MARKS'], str(os.getpid())), 'w').close()\n"
        "time.sleep(1.0)\n")
    marks = tmp_path / "marks"
    marks.mkdir()
    os.environ["SLOW_MARKS"] = str(marks)  # the child's environment is made from ours
    try:
        server = run_serve("slow_target:make_echo", "--port", "0", "--log-level", "info", paths=(tmp_path,))
        until(lambda: (marks / str(server.proc.pid)).exists(), "the supervisor importing the target")
        server.proc.send_signal(signal.SIGHUP)
        server.listening()  # it survived, and serves
        until(lambda: any("reload: 1 new worker(s) serving" in line for line in server.stderr),
              "the reload after the start")
    finally:
        del os.environ["SLOW_MARKS"]
    assert ask(server.port, "after")[3] == "after"


def test_serve_raises_the_open_files_limit_to_the_hard_one(run_serve: Callable[..., Served]) -> None:
    """A soft limit of 1024 would cap each worker at about 1,000 connections."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    command = [sys.executable, "-c",
               "import resource, runpy, sys; "
               f"resource.setrlimit(resource.RLIMIT_NOFILE, (256, {hard})); "
               "sys.argv = ['gtcp', 'serve', 'serve_targets:make_echo', '--port', '0']; "
               "runpy.run_module('gtcp', run_name='__main__')"]
    server = run_serve(command=command).listening()
    pid = ask(server.port, "limit")[1]
    with open(f"/proc/{pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max open files"))
    assert line.split()[3] == str(hard), line  # the worker's soft limit
