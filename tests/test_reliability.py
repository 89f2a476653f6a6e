"""Reliability on plain TCP (README, Decisions): close without reset, no hub tracebacks,
descriptor exhaustion, no leaks, backpressure."""

from __future__ import annotations

import gc
import os

import gevent
import greenlet
import pytest
from conftest import LONG
from helpers import EchoService, raw_connect, run_script

import gtcp

ONE_MIB = 1024 * 1024


def test_close_never_turns_unsent_data_into_reset(gtcp_listener):
    """Server writes 1 MiB then closes while the client still sends."""
    payload = bytes(i % 253 for i in range(ONE_MIB))

    class Reply(gtcp.ConnectionService):
        def on_bytes(self, caller, data):
            caller.write_bytes(payload)
            caller.close()

    class Svc(gtcp.Service):
        def on_connect(self, caller):
            return Reply()

    listener = gtcp_listener(Svc())
    sock = raw_connect(listener.port)
    sock.sendall(b"go")
    # Keep bytes in flight towards the server while it closes.
    sender = gevent.spawn(_keep_sending, sock)
    got = bytearray()
    while True:
        chunk = sock.recv(65536)  # a reset would raise ConnectionResetError
        if not chunk:
            break
        got += chunk
    sender.kill()
    sock.close()
    assert bytes(got) == payload


def _keep_sending(sock):
    try:
        for _ in range(200):
            sock.sendall(b"x" * 1000)
            gevent.sleep(0.001)
    except OSError:
        pass


@pytest.mark.gtcp_expect_callback_errors("handler bug", "on_close bug", "on_connect bug")
def test_no_hub_tracebacks_when_handlers_raise_or_peers_reset(gtcp_listener, capfd):
    import socket
    import struct

    class Raiser(gtcp.ConnectionService):
        def on_bytes(self, data):
            raise RuntimeError("handler bug")

        def on_close(self):
            raise RuntimeError("on_close bug")

    class Svc(gtcp.Service):
        def on_connect(self, caller):
            if caller.remote_port % 3 == 0:
                raise RuntimeError("on_connect bug")
            return Raiser()

    listener = gtcp_listener(Svc())
    for _ in range(10):
        sock = raw_connect(listener.port)
        sock.sendall(b"boom")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    clients = [gtcp.Client("127.0.0.1", listener.port) for _ in range(5)]
    for client in clients:
        client.write_bytes(b"boom")
        with pytest.raises(gtcp.PeerClosedError):
            client.read_bytes()
        client.close()
    listener.immediate_stop()
    gevent.sleep(0.1)
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    assert err == ""


def test_accept_loop_survives_descriptor_exhaustion():
    result = run_script("""
        import logging, resource, gevent, gtcp, socket
        logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

        listener = gtcp.Listener(0, local_host="127.0.0.1")
        listener.attach(Svc()); listener.start()
        raw = []
        with gevent.Timeout(30):
            # 100 clients from this same process: both ends use descriptors,
            # so the server runs out long before all are accepted.
            for _ in range(100):
                try:
                    raw.append(socket.create_connection(("127.0.0.1", listener.port), timeout=5))
                except OSError:
                    break
            gevent.sleep(0.3)
            for s in raw:
                s.close()
            raw.clear()
            # After the flood, a new client is served within seconds.
            with gtcp.Client("127.0.0.1", listener.port, timeout=10) as client:
                client.write_bytes(b"alive")
                assert client.read_bytes() == b"alive"
        listener.immediate_stop()
        print("OK")
    """, echo=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"
    assert "Traceback" not in result.stderr
    backoff = [line for line in result.stderr.splitlines() if "cannot accept" in line]
    assert 1 <= len(backoff) <= 3, result.stderr  # once per burst, not per failure


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _live_greenlets() -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet.greenlet) and not obj.dead)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_connect_close_cycles_leave_fds_and_greenlets_at_baseline(gtcp_listener):
    service = EchoService()
    listener = gtcp_listener(service)
    for _ in range(20):  # warm up lazily created objects (resolver, pools)
        with gtcp.Client("127.0.0.1", listener.port) as client:
            client.write_bytes(b"x")
            client.read_bytes()
    gevent.sleep(0.2)
    gc.collect()
    fds, glets = _open_fds(), _live_greenlets()
    for _ in range(1000):
        client = gtcp.Client("127.0.0.1", listener.port)
        client.write_bytes(b"ping")
        assert client.read_bytes() == b"ping"
        client.close()
    with gevent.Timeout(LONG):  # lingering closes finish in the background
        while _open_fds() > fds:
            gevent.sleep(0.05)
    gc.collect()
    assert _open_fds() == fds
    assert _live_greenlets() <= glets
    service.callers.clear()
    service.services.clear()
