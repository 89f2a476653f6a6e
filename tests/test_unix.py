"""Unix domain sockets (README): Listener.unix and Client.unix, same services, framing, TLS."""

from __future__ import annotations

import os
import socket
import stat

import pytest
import trustme
from conftest import LONG
from helpers import EchoService

import gtcp


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "gtcp.sock")


def _start(path: str, service, **options) -> gtcp.Listener:
    listener = gtcp.Listener.unix(path, **options)
    listener.attach(service)
    listener.start()
    return listener


def test_unix_echo_with_caller_facts_and_mode(path):
    service = EchoService()
    listener = _start(path, service, mode=0o660)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        with gtcp.Client.unix(path, timeout=LONG) as client:
            client.write_bytes(b"over a unix socket")
            assert client.read_exactly(18) == b"over a unix socket"
            caller = service.callers[0]
            assert (caller.remote_host, caller.remote_port, caller.local_host, caller.local_port) == (
                "", 0, path, 0)
            assert client.remote_host == path and client.remote_port == 0
    finally:
        listener.immediate_stop()
    assert not os.path.exists(path)  # a stop removes the socket file


def test_unix_framing_and_tls(path, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert_path, key_path, ca_path = (str(tmp_path / n) for n in ("cert.pem", "key.pem", "ca.pem"))
    cert.private_key_pem.write_to_path(key_path)
    for i, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(cert_path, append=i > 0)
    ca.cert_pem.write_to_path(ca_path)

    class Upper(gtcp.ConnectionService):
        def on_bytes(self, line):
            return line.upper()

    class One(gtcp.Service):
        def on_connect(self, caller):
            return Upper()

    secure = gtcp.ListenerSecureSocket(key=gtcp.CertKey(cert_path, key_path))
    listener = _start(path, One(), framing=gtcp.Lines(), secure_socket=secure)
    try:
        with gtcp.Client.unix(path, timeout=LONG, framing=gtcp.Lines(),
                              secure_socket=gtcp.ClientSecureSocket(cert=ca_path)) as client:
            client.write_frame(b"hello")
            assert client.read_frame() == b"HELLO"
            assert client.tls is not None
    finally:
        listener.immediate_stop()


def test_unix_stale_socket_file_is_replaced(path):
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nothing answers: a dead process's leftover
    listener = _start(path, EchoService())
    try:
        with gtcp.Client.unix(path, timeout=LONG) as client:
            client.write_bytes(b"x")
            assert client.read_bytes() == b"x"
    finally:
        listener.immediate_stop()


def test_unix_live_socket_file_is_refused(path):
    first = _start(path, EchoService())
    try:
        second = gtcp.Listener.unix(path)
        second.attach(EchoService())
        with pytest.raises(gtcp.ListenerError, match="a live listener answers on it"):
            second.start()
        with gtcp.Client.unix(path, timeout=LONG) as client:  # the first one still serves
            client.write_bytes(b"y")
            assert client.read_bytes() == b"y"
    finally:
        first.immediate_stop()


def test_unix_path_that_is_not_a_socket_is_refused(path):
    with open(path, "w") as f:
        f.write("data")
    listener = gtcp.Listener.unix(path)
    listener.attach(EchoService())
    with pytest.raises(gtcp.ListenerError, match="exists and is not a socket"):
        listener.start()
    assert open(path).read() == "data"  # untouched


def test_unix_errors(path):
    with pytest.raises(gtcp.ConnectError, match="Unable to connect with remote host: No such file"):
        gtcp.Client.unix(path)
    with pytest.raises(gtcp.ConfigError, match="local_host does not apply"):
        gtcp.Listener.unix(path, local_host="127.0.0.1")
    with pytest.raises(gtcp.ConfigError, match="mode must be"):
        gtcp.Listener.unix(path, mode=0o1777)
    with pytest.raises(gtcp.ConfigError, match="local_host does not apply"):
        gtcp.Client.unix(path, local_host="127.0.0.1")


def test_unix_restart_on_the_same_path(path):
    listener = _start(path, EchoService())
    listener.immediate_stop()
    listener.start()  # the file was removed at the stop; bound again
    try:
        with gtcp.Client.unix(path, timeout=LONG) as client:
            client.write_bytes(b"z")
            assert client.read_bytes() == b"z"
    finally:
        listener.immediate_stop()


def test_a_live_but_busy_listener_is_not_replaced(tmp_path):
    """Its backlog full, a live listener does not answer the probe: its file stays, start() refuses."""
    import socket

    path = str(tmp_path / "busy.sock")
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(path)
    busy.listen(0)
    waiting = []
    try:
        for _ in range(3):  # fill the accept queue (nobody accepts)
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            peer.setblocking(False)
            try:
                peer.connect(path)
            except BlockingIOError:
                peer.close()
                break
            waiting.append(peer)
        listener = gtcp.Listener.unix(path)
        listener.attach(EchoService())
        with pytest.raises(gtcp.ListenerError, match="a listener is there but does not answer"):
            listener.start()
        assert os.path.exists(path)
    finally:
        for peer in waiting:
            peer.close()
        busy.close()


def test_from_socket_refuses_a_socket_that_does_not_listen():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(gtcp.ConfigError, match="needs a listening stream socket"):
            gtcp.Listener.from_socket(sock)
    finally:
        sock.close()
