"""Smoke tests of the benchmark scripts: each server starts, echoes, stops.

No timing is asserted here (speed is the benchmarks' job, ``python
benchmarks/run.py``); these only keep the scripts from rotting.
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys

import gevent
import gevent.socket
import gevent.ssl
import pytest
import trustme
from conftest import LONG
from helpers import BENCHMARKS, child_env

BENCH = BENCHMARKS
SERVERS = ["echo_server.py", "raw_gevent_echo.py", "asyncio_echo.py"]


def _start(script: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, str(BENCH / script), "0", *args], cwd=BENCH, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "READY <port>"
    assert line.startswith("READY "), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, int(line.split()[1])


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=LONG)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("script", SERVERS)
def test_benchmarks_echo_servers_echo_and_stop(script):
    proc, port = _start(script)
    try:
        sock = gevent.socket.create_connection(("127.0.0.1", port))
        payload = bytes(range(256)) * 300
        sock.sendall(payload)
        got = b""
        with gevent.Timeout(LONG):
            while len(got) < len(payload):
                got += sock.recv(65536)
        assert got == payload
        sock.close()
    finally:
        _stop(proc)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("script", SERVERS)
def test_benchmarks_echo_servers_speak_tls(script, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    proc, port = _start(script, "--tls", str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    try:
        ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca.configure_trust(ctx)
        with gevent.Timeout(LONG):
            sock = ctx.wrap_socket(gevent.socket.create_connection(("127.0.0.1", port)),
                                   server_hostname="127.0.0.1")
            sock.sendall(b"secure")
            assert sock.recv(100) == b"secure"
            sock.close()
    finally:
        _stop(proc)
