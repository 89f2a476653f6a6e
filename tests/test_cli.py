"""The command line, ``python -m gtcp``: in subprocesses, and ``main()`` in process."""

from __future__ import annotations

import re
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.subprocess
import pytest
import trustme
from conftest import LONG, PROCESS
from helpers import ROOT, child_env

import gtcp
from gtcp.__main__ import main

#: The Ballerina spec's client message (section 6).
MESSAGE = "Hello Ballerina Echo from client"


def gtcp_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gtcp", *args]


def environment() -> dict[str, str]:
    """This environment, with the project importable (it need not be installed)."""
    return child_env(PYTHONUNBUFFERED="1")


def run(*args: str) -> Any:
    """Run ``python -m gtcp ARGS`` to its end; the CompletedProcess."""
    return gevent.subprocess.run(gtcp_command(*args), cwd=ROOT, env=environment(),
                                 capture_output=True, text=True, timeout=PROCESS)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


class _Echo(gtcp.Service):
    """Echoes every chunk."""

    def on_connect(self, caller: gtcp.Caller) -> _EchoConnection:
        return _EchoConnection()


class _EchoConnection(gtcp.ConnectionService):
    def on_bytes(self, data: bytes) -> bytes:
        return data


@pytest.fixture
def echo_port() -> Iterator[int]:
    """An in-process echo listener on loopback; its port."""
    listener = gtcp.Listener(0, local_host="127.0.0.1")
    listener.attach(_Echo())
    listener.start()
    yield listener.port
    listener.immediate_stop()


# -- demo ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_cli_demo_runs_the_spec_samples() -> None:
    done = run("demo")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert len(lines) == 5, lines
    port = re.fullmatch(r"Echo server listening on 127\.0\.0\.1:(\d+)", lines[0])
    assert port is not None and int(port[1]) > 0
    assert re.fullmatch(r"Client connected to echo server: \d+", lines[1])
    assert lines[2:] == [f"Echo: {MESSAGE}", f"Received: {MESSAGE}", "Client left"]


# -- echo and send ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PEM files from a trustme CA: a server cert for 127.0.0.1, a client cert."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example.org")
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem",
             "client_cert": folder / "client_cert.pem", "client_key": folder / "client_key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(files["cert"]), append=True)
    for blob in client.cert_chain_pems:
        blob.write_to_path(str(files["client_cert"]), append=True)
    return {name: str(path) for name, path in files.items()}


def serve_echo_then_interrupt(server_args: list[str], send_args: list[str], text: str) -> str:
    """Run ``echo`` in a subprocess, ``send`` TEXT to it, then SIGINT it; its stdout.

    Asserts that ``send`` printed the text back and that the server stopped
    with status 0 and no traceback.
    """
    server = gevent.subprocess.Popen(
        gtcp_command("echo", "--host", "127.0.0.1", "--port", "0", *server_args), cwd=ROOT,
        env=environment(), stdout=gevent.subprocess.PIPE, stderr=gevent.subprocess.PIPE, text=True,
    )
    try:
        with gevent.Timeout(PROCESS, AssertionError("the echo server printed no first line")):
            first = server.stdout.readline()
        listening = re.fullmatch(r"Echo server listening on 127\.0\.0\.1:(\d+)( \(TLS\))?\n", first)
        assert listening is not None, first + server.stderr.read()
        assert bool(listening[2]) == bool(server_args)

        done = run("send", "127.0.0.1", listening[1], text, *send_args)
        assert (done.returncode, done.stdout, done.stderr) == (0, f"{text}\n", "")

        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=PROCESS)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, err
    assert "Traceback" not in err
    assert out.splitlines()[-1] == "Stopping the echo server"
    return str(out)


@pytest.mark.timeout(60)
def test_cli_send_to_echo_server_then_sigint_stops_it() -> None:
    out = serve_echo_then_interrupt([], [], "héllo wörld")
    assert "Echo: héllo wörld" in out.splitlines()


class EchoServer:
    """``python -m gtcp echo`` in a subprocess; its stdout read line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = gevent.subprocess.Popen(
            gtcp_command("echo", "--host", "127.0.0.1", "--port", "0", *args), cwd=ROOT, env=environment(),
            stdout=gevent.subprocess.PIPE, stderr=gevent.subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        first = self.next_line()
        listening = re.fullmatch(r"Echo server listening on 127\.0\.0\.1:(\d+)", first)
        assert listening is not None, first
        self.port = int(listening[1])

    def next_line(self) -> str:
        with gevent.Timeout(PROCESS, AssertionError(f"no more output after {self.lines}")):
            line = self.proc.stdout.readline()
        assert line, f"output ended after {self.lines}"
        self.lines.append(line.rstrip("\n"))
        return self.lines[-1]

    def wait_for(self, wanted: str) -> None:
        while self.next_line() != wanted:
            pass

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=PROCESS)
        self.lines.extend(out.splitlines())
        return self.proc.returncode, "\n".join(self.lines), err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def echo_server() -> Iterator[Callable[..., EchoServer]]:
    """Start ``python -m gtcp echo``; kill what is left after the test."""
    servers: list[EchoServer] = []

    def start(*args: str) -> EchoServer:
        servers.append(EchoServer(*args))
        return servers[-1]

    yield start
    for server in servers:
        server.kill()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_echo_stop_lets_a_connected_client_finish(
    echo_server: Callable[..., EchoServer], signum: int
) -> None:
    server = echo_server()
    with gtcp.Client("127.0.0.1", server.port, timeout=LONG) as client:
        client.write_bytes(b"before")
        assert client.read_bytes() == b"before"
        server.proc.send_signal(signum)
        server.wait_for("Stopping the echo server")
        client.write_bytes(b"while stopping")  # still served
        assert client.read_bytes() == b"while stopping"
    server.wait_for("Client left")
    code, out, err = server.finish()
    assert (code, err) == (0, ""), out
    assert out.splitlines()[-3:] == ["Stopping the echo server", "Echo: while stopping", "Client left"]


@pytest.mark.timeout(60)
def test_cli_echo_graceful_timeout_closes_a_client_that_stays(echo_server: Callable[..., EchoServer]) -> None:
    server = echo_server("--graceful-timeout", "0.3")
    with gtcp.Client("127.0.0.1", server.port, timeout=LONG) as client:
        client.write_bytes(b"hi")
        assert client.read_bytes() == b"hi"
        server.proc.send_signal(signal.SIGINT)
        with pytest.raises(gtcp.PeerClosedError):
            client.read_bytes()  # EOF at the deadline
    code, out, err = server.finish()
    assert (code, err) == (0, ""), out
    assert out.splitlines()[-2:] == ["Stopping the echo server", "Client left"]


@pytest.mark.timeout(60)
def test_cli_echo_second_signal_closes_at_once(echo_server: Callable[..., EchoServer]) -> None:
    server = echo_server("--graceful-timeout", "60")
    with gtcp.Client("127.0.0.1", server.port, timeout=LONG) as client:
        client.write_bytes(b"hi")
        assert client.read_bytes() == b"hi"
        server.proc.send_signal(signal.SIGINT)
        server.wait_for("Stopping the echo server")
        server.proc.send_signal(signal.SIGINT)
        with pytest.raises(gtcp.PeerClosedError):
            client.read_bytes()
    code, out, err = server.finish()
    assert (code, err) == (0, ""), out
    assert out.splitlines()[-1] == "Client left"


@pytest.mark.timeout(60)
def test_cli_send_to_echo_server_over_mutual_tls(pki: dict[str, str]) -> None:
    out = serve_echo_then_interrupt(
        ["--cert", pki["cert"], "--key", pki["key"], "--ca", pki["ca"]],
        ["--ca", pki["ca"], "--cert", pki["client_cert"], "--key", pki["client_key"]],
        "over TLS",
    )
    assert "Echo: over TLS" in out.splitlines()


@pytest.mark.timeout(60)
def test_cli_send_tls_to_untrusted_server_fails(
    pki: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    listener = gtcp.Listener(0, local_host="127.0.0.1",
                             secure_socket=gtcp.ListenerSecureSocket(gtcp.CertKey(pki["cert"], pki["key"])))
    listener.attach(_Echo())
    listener.start()
    try:
        assert main(["send", "127.0.0.1", str(listener.port), "x", "--tls"]) == 1
        assert main(["send", "127.0.0.1", str(listener.port), "trusted", "--ca", pki["ca"]]) == 0
    finally:
        listener.immediate_stop()
    out, err = capsys.readouterr()
    assert out == "trusted\n"
    assert err.startswith("gtcp: error: ") and err.count("\n") == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("argv", [
    ["send", "127.0.0.1", "1", "x", "--cert", "c.pem"],
    ["echo", "--port", "0", "--key", "k.pem"],
    ["echo", "--port", "0", "--ca", "ca.pem"],
])
def test_cli_incomplete_tls_options_are_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    assert capsys.readouterr().err.startswith("gtcp: error: --")


@pytest.mark.timeout(60)
def test_cli_send_to_a_closed_port_is_one_error_line(refused_port: int) -> None:
    done = run("send", "127.0.0.1", str(refused_port), "hello")
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("gtcp: error: Unable to connect with remote host")


@pytest.mark.timeout(60)
def test_cli_send_in_process_prints_the_reply(echo_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", "127.0.0.1", str(echo_port), "ping ✓"]) == 0
    assert capsys.readouterr().out == "ping ✓\n"


@pytest.mark.timeout(60)
def test_cli_send_refused_in_process(refused_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", "127.0.0.1", str(refused_port), "x"]) == 1
    err = capsys.readouterr().err
    assert err == "gtcp: error: Unable to connect with remote host: Connection refused\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("argv", [
    ["send", "127.0.0.1", "70000", "x"],
    ["echo", "--host", "127.0.0.1", "--port", "70000"],
])
def test_cli_bad_port_is_a_gtcp_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("gtcp: error: ") and "70000" in err
    assert err.count("\n") == 1


@pytest.mark.timeout(60)
def test_cli_port_that_is_not_a_number_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["send", "127.0.0.1", "http", "x"])
    assert exit_info.value.code == 2
    assert "not a port number: 'http'" in capsys.readouterr().err


# -- help ----------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [[], ["demo"], ["echo"], ["send"], ["serve"]])
def test_cli_help_exits_0(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m gtcp")


@pytest.mark.timeout(60)
def test_cli_help_in_a_subprocess_exits_0() -> None:
    done = run("send", "--help")
    assert done.returncode == 0
    assert "HOST PORT TEXT" in done.stdout


@pytest.mark.timeout(60)
def test_cli_without_a_command_is_a_usage_error() -> None:
    done = run()
    assert done.returncode == 2
    assert "usage: python -m gtcp" in done.stderr
