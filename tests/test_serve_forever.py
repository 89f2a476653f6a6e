"""``Listener.serve_forever()``: Ctrl-C and SIGTERM stop gracefully, with a deadline.

The server runs in a subprocess (signals are process-wide); the test is its
client. After the signal, the listener refuses new connections while the open
one is still served, and its ``on_close`` runs before the process ends.
"""

from __future__ import annotations

import errno
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import PROCESS
from helpers import child_env

SERVER = """
import sys, gtcp

class Echo(gtcp.ConnectionService):
    def __init__(self, port):
        self.port = port
    def on_bytes(self, data):
        return data
    def on_close(self):
        print("on_close", self.port, flush=True)

class Svc(gtcp.Service):
    def on_connect(self, caller):
        return Echo(caller.remote_port)

listener = gtcp.Listener(0, local_host="127.0.0.1")
listener.attach(Svc())
listener.start()
print(listener.port, flush=True)
try:
    listener.serve_forever(graceful_timeout=float(sys.argv[1]))
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
else:
    print("returned", flush=True)
"""


def _start(graceful: float) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SERVER), str(graceful)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return sock.recv(100)


def _wait_refused(port: int) -> None:
    """Poll until the listener no longer accepts (the signal was handled)."""
    deadline = time.monotonic() + PROCESS
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=PROCESS).close()
        except OSError as exc:
            assert exc.errno == errno.ECONNREFUSED, exc
            return
        time.sleep(0.01)  # polling interval, not synchronisation
    raise AssertionError("the listener kept accepting after the signal")


@pytest.mark.parametrize(("signum", "ending"), [(signal.SIGINT, "KeyboardInterrupt"),
                                                (signal.SIGTERM, "returned")])
def test_signal_lets_the_connected_client_finish(signum, ending):
    proc, port = _start(graceful=PROCESS)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROCESS) as sock:
            own = sock.getsockname()[1]
            assert _echo(sock, b"before") == b"before"
            proc.send_signal(signum)
            _wait_refused(port)  # probes accepted before the signal was handled are closed by now
            assert _echo(sock, b"after the signal") == b"after the signal"  # still served
        out, err = proc.communicate(timeout=PROCESS)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert f"on_close {own}" in lines  # our connection ended normally, with its on_close
    assert lines[-1] == ending
    assert err == ""


def test_graceful_timeout_closes_a_client_that_stays():
    proc, port = _start(graceful=0.3)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROCESS) as sock:
            assert _echo(sock, b"x") == b"x"
            proc.send_signal(signal.SIGTERM)
            assert sock.recv(100) == b""  # closed by the server at the deadline
        out, err = proc.communicate(timeout=PROCESS)
    finally:
        proc.kill()
    assert (proc.returncode, out.splitlines()[-1], err) == (0, "returned", "")
    assert out.splitlines()[0].startswith("on_close ")
