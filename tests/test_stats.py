"""listener.stats() (README, Stats): the counts, exact, through real connections."""

from __future__ import annotations

import gevent
import gevent.socket
import pytest
from conftest import LONG
from helpers import EchoService, wait_until

import gtcp


def test_stats_counts_connections_and_bytes(gtcp_listener):
    service = EchoService()
    listener = gtcp_listener(service)
    assert listener.stats() == gtcp.ListenerStats(0, 0, 0, 0, 0, 0, 0, 0)
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as first:
        first.write_bytes(b"x" * 1000)
        assert first.read_exactly(1000) == b"x" * 1000
        live = listener.stats()
        assert (live.open, live.accepted, live.closed) == (1, 1, 0)
        assert (live.bytes_in, live.bytes_out) == (1000, 1000)  # an open connection's bytes so far
    wait_until(lambda: listener.stats().closed == 1)
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as second:
        second.write_bytes(b"yy")
        assert second.read_exactly(2) == b"yy"
    wait_until(lambda: listener.stats().closed == 2)
    done = listener.stats()
    assert (done.open, done.accepted, done.closed, done.bytes_in, done.bytes_out) == (0, 2, 2, 1002, 1002)
    with pytest.raises(AttributeError):
        done.open = 5  # type: ignore[misc]  # a frozen snapshot


def test_stats_survive_a_restart(gtcp_listener):
    listener = gtcp_listener(EchoService())
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"a")
        client.read_exactly(1)
    wait_until(lambda: listener.stats().closed == 1)
    listener.immediate_stop()
    listener.start()
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"b")
        client.read_exactly(1)
    wait_until(lambda: listener.stats().closed == 2)
    assert listener.stats().accepted == 2  # counters never go down


def test_stats_idle_timeouts_and_frames_too_long(gtcp_listener):
    listener = gtcp_listener(EchoService(), idle_timeout=0.2, framing=gtcp.Lines(max_length=10))
    silent = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    with pytest.raises(gtcp.PeerClosedError):
        silent.read_bytes()  # closed by the idle timeout
    silent.close()
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"z" * 100)
        with pytest.raises(gtcp.PeerClosedError):
            client.read_bytes()
    wait_until(lambda: listener.stats().closed == 2)
    stats = listener.stats()
    assert (stats.idle_timeouts, stats.frames_too_long) == (1, 1)


def test_stats_handshake_failures(gtcp_listener, tmp_path):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    cert.private_key_pem.write_to_path(key_path)
    for i, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(cert_path, append=i > 0)
    secure = gtcp.ListenerSecureSocket(key=gtcp.CertKey(cert_path, key_path))
    listener = gtcp_listener(EchoService(), secure_socket=secure)
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port))
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")  # plaintext to a TLS listener
    while sock.recv(65536):
        pass
    sock.close()
    wait_until(lambda: listener.stats().closed == 1)
    stats = listener.stats()
    assert (stats.accepted, stats.handshake_failures, stats.closed) == (1, 1, 1)


def test_stats_bytes_never_go_down_after_a_reset(gtcp_listener):
    """A reset exchanges no FIN: nothing may be taken off, and totals never step back."""
    import socket
    import struct

    listener = gtcp_listener(EchoService())
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"abc")
        assert client.read_exactly(3) == b"abc"
    wait_until(lambda: listener.stats().closed == 1)
    before = listener.stats()
    assert (before.bytes_in, before.bytes_out) == (3, 3)
    for payload in (b"", b"12345"):
        sock = gevent.socket.create_connection(("127.0.0.1", listener.port), timeout=LONG)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if payload:
            sock.sendall(payload)
            assert sock.recv(5) == payload
        sock.close()  # a reset
    wait_until(lambda: listener.stats().closed == 3)
    after = listener.stats()
    assert (after.bytes_in, after.bytes_out) == (3 + 5, 3 + 5)
