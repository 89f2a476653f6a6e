"""``gtcp serve`` behind a real HAProxy (Debian's ``haproxy``; ``.ci/run`` installs it).

HAProxy runs in the foreground (``-db``) with a generated config. Its frontend
is a socket this test binds on port 0 and hands over (``bind fd@N``), so no
port is fixed. The backend is ``gtcp serve --workers 2`` with
``--proxy-protocol``, in front of ``tests/haproxy_targets.py``. They show:

* the service sees the client's real address and port, not HAProxy's (v2 with
  ``send-proxy-v2``, v1 with ``send-proxy``);
* HAProxy's health checks (``check`` with ``check-send-proxy``: a v2 ``LOCAL``
  header, then a reset) keep the server UP, and gtcp logs no warning for them;
* under a steady load of clients, a SIGHUP reload fails no request, and a
  SIGTERM of the whole server fails none that a worker accepted;
* TLS passes through HAProxy in TCP mode (``send-proxy-v2``) and handshakes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import pytest
import trustme
from conftest import LONG, PROCESS
from gevent import subprocess
from helpers import TESTS, child_env

import gtcp

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
pytestmark = pytest.mark.skipif(
    HAPROXY is None,
    reason="haproxy is not installed and could not be (as root: apt-get install -y haproxy; .ci/run does it)",
)

class Serve:
    """A ``python -m gtcp serve`` process (its own session, killed at teardown)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gtcp", "serve", "haproxy_targets:Where", "--host", "127.0.0.1",
             "--port", "0", "--framing", "lines", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True, text=True,
        )
        self.stderr_lines: list[str] = []
        self._stderr = gevent.spawn(self._read_stderr)
        with gevent.Timeout(PROCESS, AssertionError("gtcp serve printed no start line")):
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
        match = re.search(r"listening on \S+:(\d+)", line)
        assert match, f"unexpected start line {line!r}; stderr: {self.stderr_lines}"
        self.port = int(match.group(1))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = PROCESS) -> int:
        code = self.proc.wait(timeout=timeout)
        self._stderr.join(timeout=PROCESS)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=PROCESS)
        self._stderr.kill()


class HAProxy:
    """``haproxy -db`` with a frontend on a socket bound here (port 0) and one gtcp backend."""

    def __init__(self, tmp: Path, backend_port: int, server_options: str) -> None:
        self.frontend = socket.socket()
        self.frontend.bind(("127.0.0.1", 0))
        self.frontend.listen(128)
        self.port = self.frontend.getsockname()[1]
        self.stats_path = str(tmp / "haproxy-stats.sock")
        config = tmp / "haproxy.cfg"
        config.write_text(f"""
global
    maxconn 512
    stats socket {self.stats_path} mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    timeout client 20s
    timeout server 20s
    retries 3

frontend fe
    bind fd@{self.frontend.fileno()}
    default_backend be

backend be
    server gtcp 127.0.0.1:{backend_port} {server_options}
""")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], pass_fds=(self.frontend.fileno(),),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def server_state(self) -> dict[str, str]:
        """The backend server's row of ``show stat`` (status, check_status, ...)."""
        with gevent.Timeout(PROCESS):
            while True:
                try:
                    sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.connect(self.stats_path)
                    break
                except OSError:
                    sock.close()
                    gevent.sleep(0.02)
        try:
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        finally:
            sock.close()
        lines = data.decode().splitlines()
        names = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(names, line.split(","), strict=False))
            if row.get("pxname") == "be" and row.get("svname") == "gtcp":
                return row
        raise AssertionError(f"no backend row in {lines}")

    def wait_up(self) -> dict[str, str]:
        with gevent.Timeout(PROCESS, AssertionError("HAProxy never saw the gtcp server UP")):
            while True:
                row = self.server_state()
                if row.get("status") in ("UP", "no check"):  # "no check": no health checks configured
                    return row
                gevent.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=PROCESS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=PROCESS)
        self.frontend.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Any]:
    """A factory: ``stack(serve_args, server_options, **env)`` -> (Serve, HAProxy); all stopped after."""
    started: list[Any] = []

    def start(serve_args: list[str], server_options: str, **env: str) -> tuple[Serve, HAProxy]:
        server = Serve(serve_args, child_env(TESTS, **env))
        started.append(server)
        proxy = HAProxy(tmp_path, server.port, server_options)
        started.append(proxy)
        proxy.wait_up()
        return server, proxy

    yield start
    for item in reversed(started):
        if isinstance(item, HAProxy):
            item.stop()
        else:
            item.kill()


def _request(port: int, request: str) -> list[str]:
    """One request on a new connection through HAProxy: the reply's fields."""
    with gtcp.Client("127.0.0.1", port, timeout=LONG, connect_timeout=LONG, framing=gtcp.Lines()) as client:
        client.write_frame(request.encode("ascii"))
        return client.read_frame().decode("ascii").split()  # type: ignore[no-any-return]


@pytest.mark.parametrize(("protocol", "server_options", "trusted"), [
    ("v2", "send-proxy-v2", []),
    ("v1", "send-proxy", ["--trusted-proxies", "10.0.0.0/8,127.0.0.1"]),
])
def test_service_sees_the_clients_real_address(stack, protocol, server_options, trusted):
    server, proxy = stack(["--workers", "2", "--proxy-protocol", protocol, *trusted], server_options)
    for n in range(6):
        with gtcp.Client("127.0.0.1", proxy.port, timeout=LONG, framing=gtcp.Lines()) as client:
            client.write_frame(f"r{n}".encode())
            request, host, port, pid, command = client.read_frame().decode().split()
            own_port = client.local_address[1]
        assert request == f"r{n}"
        assert command == "PROXY"
        assert host == "127.0.0.1"
        assert int(port) == own_port  # the client's port, not the one HAProxy connected from
        assert int(pid) != server.proc.pid  # served by a worker


def test_a_proxy_outside_trusted_proxies_is_refused(stack):
    server, proxy = stack(["--proxy-protocol", "v2", "--trusted-proxies", "10.0.0.0/8"], "send-proxy-v2")
    with pytest.raises(gtcp.PeerClosedError):
        _request(proxy.port, "refused")
    with gevent.Timeout(PROCESS, AssertionError(f"no log line; stderr: {server.stderr_lines}")):
        while not any("not a trusted proxy" in line for line in server.stderr_lines):
            gevent.sleep(0.02)


def test_health_checks_are_answered_and_quiet(stack):
    server, proxy = stack(["--workers", "2", "--proxy-protocol", "v2", "--log-level", "debug"],
                          "send-proxy-v2 check check-send-proxy inter 100ms rise 1 fall 2")
    with gevent.Timeout(PROCESS, AssertionError("no health check completed")):
        while True:
            row = proxy.server_state()
            if row["check_status"] == "L4OK" and int(row.get("chkfail") or 0) == 0 and \
                    sum("after its PROXY protocol header" in line for line in server.stderr_lines) >= 3:
                break
            gevent.sleep(0.05)
    assert row["status"] == "UP"
    reply = _request(proxy.port, "after-checks")
    assert reply[0] == "after-checks"
    assert not _problems(server)


def _problems(server: Serve) -> list[str]:
    """Warning and error lines of gtcp serve, less the watchdog's (a loaded machine may stall a hub)."""
    return [line for line in server.stderr_lines
            if ("WARNING" in line or "ERROR" in line) and "gevent hub" not in line]


class Load:
    """Clients in greenlets, each doing request/reply on a new connection through HAProxy, in a loop."""

    def __init__(self, port: int, clients: int = 6) -> None:
        self.port = port
        self.replied: dict[str, int] = {}  # request id -> pid that replied
        self.failures: list[tuple[str, str]] = []
        self.running = True
        self.greenlets = [gevent.spawn(self._loop, n) for n in range(clients)]

    def _loop(self, n: int) -> None:
        count = 0
        while self.running:
            count += 1
            request = f"c{n}-{count}"
            try:
                reply = _request(self.port, request)
                assert reply[0] == request, reply
                self.replied[request] = int(reply[3])
            except (gtcp.Error, AssertionError) as exc:
                self.failures.append((request, f"{type(exc).__name__}: {exc}"))

    def wait_for(self, count: int) -> None:
        target = len(self.replied) + count
        with gevent.Timeout(PROCESS, AssertionError(f"load stalled: {len(self.replied)} replies, "
                                                 f"failures {self.failures[:3]}")):
            while len(self.replied) < target:
                gevent.sleep(0.01)

    def stop(self) -> None:
        self.running = False
        gevent.joinall(self.greenlets, timeout=PROCESS)


def _worker_pids(load: Load, since: int = 0) -> set[int]:
    return set(list(load.replied.values())[since:])


def test_reload_and_stop_under_load(stack, tmp_path):
    record = tmp_path / "ids"
    record.mkdir()
    server, proxy = stack(["--workers", "2", "--proxy-protocol", "v2", "--graceful-timeout", "10"],
                          "send-proxy-v2 check check-send-proxy inter 200ms",
                          GTCP_TEST_RECORD=str(record), GTCP_TEST_DELAY="0.02")
    load = Load(proxy.port)
    try:
        load.wait_for(50)
        old = _worker_pids(load)
        server.signal(signal.SIGHUP)
        # The new generation serves, the old one drained: replies come from new pids only.
        with gevent.Timeout(PROCESS, AssertionError("the reload never completed")):
            while True:
                mark = len(load.replied)
                load.wait_for(30)
                if not (_worker_pids(load, mark) & old):
                    break
        load.wait_for(50)
        assert load.failures == [], load.failures[:5]
        assert proxy.server_state()["status"] == "UP"

        server.signal(signal.SIGTERM)
        assert server.wait() == 0
    finally:
        load.stop()
    # Every request a worker accepted (recorded before its reply) was answered.
    accepted = {line for path in record.iterdir() for line in path.read_text().split()}
    unanswered = accepted - set(load.replied)
    assert not unanswered, sorted(unanswered)[:10]
    assert len(accepted) >= 130


def test_tls_passes_through_haproxy(stack, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    server, proxy = stack(["--workers", "2", "--proxy-protocol", "v2", "--cert", str(tmp_path / "cert.pem"),
                           "--key", str(tmp_path / "key.pem")],
                          "send-proxy-v2 check check-send-proxy inter 200ms")
    secure = gtcp.ClientSecureSocket(cert=str(tmp_path / "ca.pem"))
    with gtcp.Client("127.0.0.1", proxy.port, timeout=LONG, framing=gtcp.Lines(),
                     secure_socket=secure) as client:
        assert client.tls is not None
        client.write_frame(b"secure")
        request, host, port, _pid, command = client.read_frame().decode().split()
        own_port = client.local_address[1]
        assert (request, host, int(port), command) == ("secure", "127.0.0.1", own_port, "PROXY")
    assert not _problems(server)
