"""Listener behaviour: Ballerina's own listener tests, translated, and the
lifecycle rules of the README (Listener, Listener options, Decisions)."""

from __future__ import annotations

import socket

import gevent
import pytest
from conftest import LONG, SHORT
from helpers import Echo, EchoService, raw_connect

import gtcp


def test_Listener_echo(gtcp_listener):
    listener = gtcp_listener(EchoService())
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"Hello Ballerina Echo from client")
        assert client.read_bytes() == b"Hello Ballerina Echo from client"


def test_Listener_large_reply_arrives_over_several_reads_intact(gtcp_listener):
    payload = bytes(i % 251 for i in range(8_000_001))

    class Big(gtcp.ConnectionService):
        def on_bytes(self, data):
            return payload

    class Svc(gtcp.Service):
        def on_connect(self, caller):
            return Big()

    listener = gtcp_listener(Svc())
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"send")
        reads = 0
        got = bytearray()
        while len(got) < len(payload):
            chunk = client.read_bytes()
            assert 0 < len(chunk) <= 65536
            got += chunk
            reads += 1
        assert bytes(got) == payload
        assert reads > 1


def test_Listener_restart_after_graceful_stop_with_other_service_on_same_port(gtcp_listener):
    probe = gtcp_listener(EchoService())
    port = probe.port
    probe.immediate_stop()

    class Upper(gtcp.ConnectionService):
        def on_bytes(self, caller, data):
            assert caller.id
            return data.upper()

    class UpperService(gtcp.Service):
        def __init__(self):
            self.ids = []

        def on_connect(self, caller):
            self.ids.append(caller.id)
            return Upper()

    first = EchoService()
    listener = gtcp_listener(first, local_port=port)
    assert listener.port == port
    with gtcp.Client("127.0.0.1", port, timeout=LONG) as client:
        client.write_bytes(b"abc")
        assert client.read_bytes() == b"abc"
    listener.graceful_stop()
    listener.detach(first)
    upper = UpperService()
    listener.attach(upper)
    listener.start()
    assert listener.port == port
    with gtcp.Client("127.0.0.1", port, timeout=LONG) as client:
        client.write_bytes(b"abc")
        assert client.read_bytes() == b"ABC"
    assert len(upper.ids) == 1 and len(upper.ids[0]) == 36
    assert first.callers[0].id != upper.ids[0]


def test_Listener_port_zero_is_chosen_anew_at_each_start():
    listener = gtcp.Listener(0, local_host="127.0.0.1")
    listener.attach(EchoService())
    assert listener.port == 0
    with listener:
        assert listener.port != 0
        with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
            client.write_bytes(b"x")
            assert client.read_bytes() == b"x"
    assert not listener.running


def test_Listener_start_without_service_raises():
    listener = gtcp.Listener(0, local_host="127.0.0.1")
    with pytest.raises(gtcp.Error, match="No service is attached"):
        listener.start()
    listener.attach(EchoService())
    listener.detach(None)
    with pytest.raises(gtcp.Error, match="No service is attached"):
        listener.start()


def test_Listener_start_twice_raises(gtcp_listener):
    listener = gtcp_listener(EchoService())
    with pytest.raises(gtcp.Error, match="already started"):
        listener.start()


def test_Listener_graceful_stop_before_start_raises():
    listener = gtcp.Listener(0, local_host="127.0.0.1")
    with pytest.raises(gtcp.Error) as info:
        listener.graceful_stop()
    assert str(info.value) == "Unable to initialize the tcp listener."
    listener.immediate_stop()  # not running: does nothing


def test_Listener_bad_arguments_raise_config_error():
    with pytest.raises(gtcp.ConfigError, match="local_port"):
        gtcp.Listener(70000)
    with pytest.raises(gtcp.ConfigError, match="local_port"):
        gtcp.Listener(-1)
    with pytest.raises(gtcp.ConfigError, match=r"Unknown listener option.*bogus"):
        gtcp.Listener(0, bogus=1)
    with pytest.raises(gtcp.ConfigError, match="max_connections"):
        gtcp.Listener(0, max_connections=0)
    with pytest.raises(gtcp.ConfigError, match="idle_timeout"):
        gtcp.Listener(0, idle_timeout="soon")
    assert isinstance(gtcp.ConfigError("x"), ValueError)


def test_Listener_port_in_use_raises_listener_error(gtcp_listener):
    listener = gtcp_listener(EchoService())
    other = gtcp.Listener(listener.port, local_host="127.0.0.1")
    other.attach(EchoService())
    with pytest.raises(gtcp.ListenerError) as info:
        other.start()
    assert str(info.value).startswith("Error initializing the server: Address already in use")
    assert isinstance(info.value.__cause__, OSError)


def test_Listener_bad_local_host_raises_listener_error():
    listener = gtcp.Listener(0, local_host="invalid.host.invalid")
    listener.attach(EchoService())
    with pytest.raises(gtcp.ListenerError, match=r"^Error initializing the server: "):
        listener.start()


def test_Listener_attach_rejects_ballerina_spelled_service():
    class Bad:
        def onConnect(self, caller):
            return None

    listener = gtcp.Listener(0)
    with pytest.raises(TypeError, match=r"'onConnect'.*'on_connect'"):
        listener.attach(Bad())
    with pytest.raises(TypeError, match="no on_connect"):
        listener.attach(object())


def test_Listener_attach_rejects_wrong_on_connect_arity():
    class Bad:
        def on_connect(self):
            return None

    with pytest.raises(TypeError, match="on_connect must take 1"):
        gtcp.Listener(0).attach(Bad())


def test_Listener_graceful_stop_lets_open_connections_run(gtcp_listener):
    service = EchoService()
    listener = gtcp_listener(service)
    port = listener.port
    with gtcp.Client("127.0.0.1", port, timeout=LONG) as client:
        client.write_bytes(b"before")
        assert client.read_bytes() == b"before"
        listener.graceful_stop()
        with pytest.raises(gtcp.ConnectError):
            gtcp.Client("127.0.0.1", port, connect_timeout=LONG)
        client.write_bytes(b"after")
        assert client.read_bytes() == b"after"
    assert service.events.get(timeout=LONG) == ("close", None)


def test_Listener_graceful_stop_with_timeout_closes_what_is_left(gtcp_listener):
    service = EchoService()
    listener = gtcp_listener(service)
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    client.write_bytes(b"x")
    assert client.read_bytes() == b"x"
    listener.graceful_stop(timeout=SHORT)
    assert service.services[0].closed.is_set()  # on_close ran before return
    with pytest.raises(gtcp.PeerClosedError, match=r"^Connection closed by the server.$"):
        client.read_bytes()
    client.close()


def test_Listener_immediate_stop_closes_every_connection(gtcp_listener):
    service = EchoService()
    listener = gtcp_listener(service)
    clients = [gtcp.Client("127.0.0.1", listener.port, timeout=LONG) for _ in range(5)]
    for client in clients:
        client.write_bytes(b"ping")
        assert client.read_bytes() == b"ping"
    listener.immediate_stop()
    assert all(s.closed.is_set() for s in service.services)
    for client in clients:
        with pytest.raises(gtcp.PeerClosedError):
            client.read_bytes()
        client.close()
    assert [e for e in _drain(service.events) if e[0] == "close"] == [("close", None)] * 5
    listener.immediate_stop()  # stopping a stopped listener does nothing


def test_Listener_max_connections_makes_new_connections_wait(gtcp_listener):
    service = EchoService()
    listener = gtcp_listener(service, max_connections=1)
    first = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    first.write_bytes(b"1")
    assert first.read_bytes() == b"1"
    second = gtcp.Client("127.0.0.1", listener.port, timeout=SHORT)  # waits in the backlog
    second.write_bytes(b"2")
    with pytest.raises(gtcp.ReadTimeoutError):
        second.read_bytes()
    assert len(service.callers) == 1
    first.close()
    assert service.connected.get(timeout=LONG) is service.callers[0]
    assert service.connected.get(timeout=LONG) is service.callers[1]
    second_reply = None
    with gevent.Timeout(LONG):
        while second_reply is None:
            try:
                second_reply = second.read_bytes()
            except gtcp.ReadTimeoutError:
                pass
    assert second_reply == b"2"
    second.close()


def test_Listener_idle_timeout_closes_silent_connection(gtcp_listener):
    service = EchoService()
    listener = gtcp_listener(service, idle_timeout=0.3)
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    for _ in range(4):  # activity keeps it open past the idle timeout
        client.write_bytes(b"tick")
        assert client.read_bytes() == b"tick"
        gevent.sleep(0.1)
    kind, err = service.events.get(timeout=LONG)
    assert kind == "error"
    assert type(err) is gtcp.ReadTimeoutError and str(err) == "Read timed out"
    assert service.events.get(timeout=LONG) == ("close", None)
    with pytest.raises(gtcp.PeerClosedError):
        client.read_bytes()
    client.close()


def test_Listener_default_host_reports_ipv4_peer_as_ipv4():
    service = EchoService()
    listener = gtcp.Listener(0)
    listener.attach(service)
    with listener, gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"x")
        assert client.read_bytes() == b"x"
        caller = service.callers[0]
        assert caller.remote_host == "127.0.0.1"
        assert caller.remote_port == client.local_address[1]
        assert caller.local_port == listener.port


def test_Listener_sets_tcp_nodelay_on_accepted_sockets(gtcp_listener):
    seen = []

    class Svc(gtcp.Service):
        def on_connect(self, caller):
            sock = caller._stream.gsock
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            return Echo()

    listener = gtcp_listener(Svc())
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"x")
        assert client.read_bytes() == b"x"
        assert client._stream.gsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert seen and seen[0] != 0


def test_Listener_reuse_port_option_sets_so_reuseport(gtcp_listener):
    listener = gtcp_listener(EchoService(), reuse_port=True)
    assert listener._server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    stranger = gtcp.Listener(listener.port, local_host="127.0.0.1")  # without the option: refused
    stranger.attach(EchoService())
    with pytest.raises(gtcp.ListenerError, match="Error initializing the server: "):
        stranger.start()
    twin = gtcp.Listener(listener.port, local_host="127.0.0.1", reuse_port=True)
    twin.attach(EchoService())
    twin.start()  # a second socket on the same port: only possible with SO_REUSEPORT on both
    try:
        assert twin.port == listener.port
        with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:  # the kernel picks one
            client.write_bytes(b"either")
            assert client.read_bytes() == b"either"
    finally:
        twin.immediate_stop()


def test_Listener_without_reuse_port_leaves_so_reuseport_off(gtcp_listener):
    listener = gtcp_listener(EchoService())
    assert listener._server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0


def test_Listener_accepts_raw_peers(gtcp_listener):
    listener = gtcp_listener(EchoService())
    sock = raw_connect(listener.port)
    sock.sendall(b"raw")
    assert sock.recv(10) == b"raw"
    sock.close()


def test_Listener_write_timeout_ends_peer_that_never_reads(gtcp_listener):
    failures = []
    done = gevent.event.Event()

    class Push(gtcp.ConnectionService):
        def on_bytes(self, caller, data):
            return None

    class Svc(gtcp.Service):
        def on_connect(self, caller):
            def push():
                chunk = b"z" * 65536
                sent = 0
                try:
                    while True:
                        caller.write_bytes(chunk)
                        sent += len(chunk)
                except gtcp.Error as exc:
                    failures.append((exc, sent))
                done.set()

            gevent.spawn(push)
            return Push()

    listener = gtcp_listener(Svc(), write_timeout=0.3)
    sock = raw_connect(listener.port)  # never reads
    assert done.wait(LONG)
    exc, sent = failures[0]
    assert type(exc) is gtcp.WriteTimeoutError and str(exc) == "Write timed out"
    # Backpressure held: no more than the kernel buffers took was accepted.
    assert sent < 64 * 1024 * 1024
    sock.close()


def _drain(queue):
    items = []
    while not queue.empty():
        items.append(queue.get())
    return items


def test_Listener_immediate_stop_after_graceful_stop_closes_leftovers(gtcp_listener):
    service = EchoService()
    listener = gtcp_listener(service)
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    client.write_bytes(b"a")
    assert client.read_bytes() == b"a"
    listener.graceful_stop()  # the connection runs on
    client.write_bytes(b"b")
    assert client.read_bytes() == b"b"
    listener.immediate_stop()  # ... until this
    assert service.services[0].closed.is_set()
    with pytest.raises(gtcp.PeerClosedError):
        client.read_bytes()
    client.close()
