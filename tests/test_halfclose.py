"""Half-close (README, Half-close): send_eof() on both sides, on_eof, plain and TLS, real peers."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import gevent
import gevent.socket
import pytest
from conftest import LONG
from gevent import ssl as gssl
from gevent.event import Event
from gevent.queue import Queue
from helpers import TLS_VERSIONS, wait_until

import gtcp


@pytest.fixture(scope="module")
def pki(gtcp_tls) -> dict[str, str]:
    """The files of the plugin's TLS kit, by the names these tests use."""
    return {"ca": gtcp_tls.ca_file, "cert": gtcp_tls.cert_file, "key": gtcp_tls.key_file}


@pytest.fixture(params=["plain", *TLS_VERSIONS])
def layer(request, pki) -> tuple[dict[str, Any], dict[str, Any]]:
    """(listener options, client options): plain TCP, TLS 1.2 or TLS 1.3."""
    if request.param == "plain":
        return {}, {}
    protocol = gtcp.ProtocolConfig("TLS", (request.param,))
    return ({"secure_socket": gtcp.ListenerSecureSocket(key=gtcp.CertKey(pki["cert"], pki["key"]),
                                                        protocol=protocol)},
            {"secure_socket": gtcp.ClientSecureSocket(cert=pki["ca"], protocol=protocol)})


class Counter(gtcp.ConnectionService):
    """Counts bytes until the peer's EOF, then replies with the count."""

    def __init__(self, events: Queue) -> None:
        self.events = events
        self.count = 0

    def on_bytes(self, data):
        self.count += len(data)

    def on_eof(self):
        self.events.put("eof")
        return b"%d bytes\n" % self.count

    def on_error(self, err):
        self.events.put(err)

    def on_close(self):
        self.events.put("close")


class Make(gtcp.Service):
    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.callers: Queue = Queue()

    def on_connect(self, caller):
        self.callers.put(caller)
        return self.factory()


def test_halfclose_count_until_eof_then_reply(gtcp_listener, layer):
    lopts, copts = layer
    events: Queue = Queue()
    listener = gtcp_listener(Make(lambda: Counter(events)), **lopts)
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG, **copts) as client:
        for _ in range(10):
            client.write_bytes(b"x" * 100_000)
        client.send_eof()
        client.send_eof()  # a second one does nothing
        with pytest.raises(gtcp.ClosedError):
            client.write_bytes(b"late")
        assert client.read_line() == b"1000000 bytes\n"  # the reply after our EOF
        with pytest.raises(gtcp.PeerClosedError):
            client.read_bytes()
    assert [events.get(timeout=LONG) for _ in range(2)] == ["eof", "close"]


def test_halfclose_on_eof_with_caller_and_framing(gtcp_listener, layer):
    lopts, copts = layer
    events: Queue = Queue()

    class Collect(gtcp.ConnectionService):
        def __init__(self):
            self.lines = []

        def on_bytes(self, line):
            self.lines.append(line)

        def on_eof(self, caller):
            caller.write_frame(b"summary:")
            return b",".join(self.lines)  # encoded as a frame

        def on_close(self):
            events.put("close")

    listener = gtcp_listener(Make(Collect), framing=gtcp.Lines(), **lopts)
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG, framing=gtcp.Lines(), **copts) as client:
        for word in (b"a", b"b", b"c"):
            client.write_frame(word)
        client.send_eof()
        assert client.read_frame() == b"summary:"
        assert client.read_frame() == b"a,b,c"
        with pytest.raises(gtcp.PeerClosedError) as info:
            client.read_frame()
        assert info.value.partial == b""
    assert events.get(timeout=LONG) == "close"


def test_halfclose_closed_means_this_side_closed_on_both_sides(gtcp_listener):
    # caller.closed and client.closed mean the same: not the peer's EOF, only this side's close.
    seen: Queue = Queue()

    class Watch(gtcp.ConnectionService):
        def __init__(self, caller):
            self.caller = caller

        def on_bytes(self, data):
            return None

        def on_eof(self):
            seen.put(("on_eof", self.caller.closed))
            return b"still open\n"

        def on_close(self):
            seen.put(("on_close", self.caller.closed))

    class Svc(gtcp.Service):
        def on_connect(self, caller):
            return Watch(caller)

    listener = gtcp_listener(Svc())
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.send_eof()
        assert client.read_line() == b"still open\n"
        with pytest.raises(gtcp.PeerClosedError):
            client.read_bytes()
        assert not client.closed  # the server's EOF does not close the client
    assert client.closed
    assert [seen.get(timeout=LONG) for _ in range(2)] == [("on_eof", False), ("on_close", True)]


def test_halfclose_on_eof_not_run_after_eof_mid_frame(gtcp_listener):
    events: Queue = Queue()
    listener = gtcp_listener(Make(lambda: Counter(events)), framing=gtcp.Lines())
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"no newline")
        client.send_eof()
        with pytest.raises(gtcp.PeerClosedError):
            client.read_bytes()
    err = events.get(timeout=LONG)
    assert type(err) is gtcp.PeerClosedError and err.partial == b"no newline"
    assert events.get(timeout=LONG) == "close"
    assert events.empty()


@pytest.mark.gtcp_expect_callback_errors("on_eof of connection")
def test_halfclose_on_eof_that_raises_is_logged_and_closes(gtcp_listener, gtcp_log):
    events: Queue = Queue()

    class Broken(Counter):
        def on_eof(self):
            raise RuntimeError("boom in on_eof")

    listener = gtcp_listener(Make(lambda: Broken(events)))
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"abc")
        client.send_eof()
        with pytest.raises(gtcp.PeerClosedError):
            client.read_bytes()
    assert events.get(timeout=LONG) == "close"
    wait_until(lambda: listener.stats().closed == 1, "the connection's end")  # nothing can come after
    assert events.empty()  # on_close once, no on_error
    assert "on_eof of connection" in gtcp_log.text and "boom in on_eof" in gtcp_log.text


def test_halfclose_without_on_eof_nothing_changes(gtcp_listener):
    events: Queue = Queue()

    class Plain(gtcp.ConnectionService):
        def on_bytes(self, caller, data):
            return data

        def on_close(self):
            events.put("close")

    listener = gtcp_listener(Make(Plain))
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"abc")
        client.send_eof()
        assert client.read_exactly(3) == b"abc"  # bytes sent before the EOF are answered
        with pytest.raises(gtcp.PeerClosedError):
            client.read_bytes()
    assert events.get(timeout=LONG) == "close"


def test_halfclose_server_first_while_the_client_keeps_sending(gtcp_listener, layer):
    lopts, copts = layer
    received: Queue = Queue()

    class Sink(gtcp.ConnectionService):
        def on_bytes(self, data):
            received.put(data)

        def on_close(self):
            received.put(None)

    class First(gtcp.Service):
        def on_connect(self, caller):
            caller.write_bytes(b"bye from the server\n")
            caller.send_eof()
            with pytest.raises(gtcp.ClosedError):
                caller.write_bytes(b"late")
            return Sink()

    listener = gtcp_listener(First(), **lopts)
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG, **copts) as client:
        assert client.read_line() == b"bye from the server\n"
        with pytest.raises(gtcp.PeerClosedError):
            client.read_bytes()
        for i in range(20):  # after reading EOF, the client may still write
            client.write_bytes(b"%d," % i)
    got = b""
    while (chunk := received.get(timeout=LONG)) is not None:
        got += chunk
    assert got == b"".join(b"%d," % i for i in range(20))


def test_halfclose_send_eof_after_close_raises(gtcp_listener):
    listener = gtcp_listener(Make(lambda: Counter(Queue())))
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    client.close()
    with pytest.raises(gtcp.ClosedError):
        client.send_eof()


def test_halfclose_immediate_stop_closes_half_closed_connections(gtcp_listener, layer):
    lopts, copts = layer
    events: Queue = Queue()
    service = Make(lambda: Counter(events))
    listener = gtcp_listener(service, **lopts)
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG, **copts)
    caller = service.callers.get(timeout=LONG)
    caller.send_eof()  # the server half-closed; the client stays silent
    with pytest.raises(gtcp.PeerClosedError):
        client.read_bytes()
    listener.immediate_stop()
    assert events.get(timeout=LONG) == "close"
    client.close()


class Quiet(Counter):
    """Counts, and answers nothing at EOF (its own write side is shut first)."""

    def on_eof(self):
        self.events.put("eof")


def test_halfclose_graceful_stop_waits_for_half_closed_connections(gtcp_listener):
    events: Queue = Queue()
    service = Make(lambda: Quiet(events))
    listener = gtcp_listener(service)
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    service.callers.get(timeout=LONG).send_eof()
    with pytest.raises(gtcp.PeerClosedError):
        client.read_bytes()
    stopper = gevent.spawn(listener.graceful_stop, LONG)
    client.write_bytes(b"12345")
    client.send_eof()  # the connection ends naturally: on_eof, then close
    stopper.get(timeout=LONG)
    assert [events.get(timeout=LONG) for _ in range(2)] == ["eof", "close"]
    client.close()


def test_halfclose_idle_timeout_counts_while_the_peer_is_silent(gtcp_listener, layer):
    lopts, copts = layer
    events: Queue = Queue()
    service = Make(lambda: Counter(events))
    listener = gtcp_listener(service, idle_timeout=0.3, **lopts)
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG, **copts)
    service.callers.get(timeout=LONG).send_eof()
    err = events.get(timeout=LONG)
    assert type(err) is gtcp.ReadTimeoutError
    assert events.get(timeout=LONG) == "close"
    client.close()


# -- against Python's ssl: a peer that keeps its side open after a close_notify ----------


def _ssl_server(pki: dict[str, str], version: str, behaviour: Any) -> tuple[int, gevent.Greenlet, Any]:
    ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["cert"], pki["key"])
    ctx.minimum_version = ctx.maximum_version = getattr(gssl.TLSVersion, version.replace(".", "_"))
    listening = gevent.socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(1)

    def run() -> Any:
        conn, _ = listening.accept()
        tls = ctx.wrap_socket(conn, server_side=True)
        try:
            return behaviour(tls)
        finally:
            tls.close()

    return listening.getsockname()[1], gevent.spawn(run), listening


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_halfclose_client_against_python_ssl_replying_after_close_notify(pki, version):
    def behaviour(tls: Any) -> bytes:
        got = b""
        while chunk := tls.recv(65536):  # b"" at our close_notify
            got += chunk
        tls.sendall(b"after your close_notify: " + got)  # our side of the connection is still open
        tls.unwrap()
        return got

    port, peer, listening = _ssl_server(pki, version, behaviour)
    try:
        secure = gtcp.ClientSecureSocket(cert=pki["ca"])
        with gtcp.Client("127.0.0.1", port, timeout=LONG, secure_socket=secure) as client:
            assert client.tls.version == version
            client.write_bytes(b"question")
            client.send_eof()
            assert client.read_exactly(33) == b"after your close_notify: question"
            with pytest.raises(gtcp.PeerClosedError) as info:
                client.read_bytes()
            assert str(info.value) == "Connection closed by the server."
        assert peer.get(timeout=LONG) == b"question"
    finally:
        listening.close()


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_halfclose_listener_against_python_ssl_client_sending_after_close_notify(gtcp_listener, pki, version):
    received: Queue = Queue()

    class Sink(gtcp.ConnectionService):
        def on_bytes(self, data):
            received.put(data)

        def on_eof(self):
            received.put("eof")

    class First(gtcp.Service):
        def on_connect(self, caller):
            caller.write_bytes(b"go on\n")
            caller.send_eof()
            return Sink()

    protocol = gtcp.ProtocolConfig("TLS", (version,))
    listener = gtcp_listener(First(), secure_socket=gtcp.ListenerSecureSocket(
        key=gtcp.CertKey(pki["cert"], pki["key"]), protocol=protocol))
    ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki["ca"])
    tls = ctx.wrap_socket(gevent.socket.create_connection(("127.0.0.1", listener.port)),
                          server_hostname="127.0.0.1")
    got = b""
    while chunk := tls.recv(65536):
        got += chunk
    assert got == b"go on\n" and tls.version() == version
    tls.sendall(b"still talking")  # after the server's close_notify
    tls.unwrap()
    tls.close()
    data = b""
    while (item := received.get(timeout=LONG)) != "eof":
        data += item
    assert data == b"still talking"


# -- against OpenSSL's command-line tools ---------------------------------------------------

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@needs_openssl
@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
def test_halfclose_openssl_s_client_ends_the_connection_at_our_close_notify(gtcp_listener, pki, version):
    """Measured, and pinned: s_client stops at our close_notify (TLS 1.2 and 1.3 alike).

    It prints what came before it, sends nothing more (its stdin is still
    open), and exits: a peer that keeps writing after a close_notify is the
    application's choice (Python's ssl can, above), not something TLS gives.
    """
    closed = Event()

    class Sink(gtcp.ConnectionService):
        def on_bytes(self, data):
            raise AssertionError(f"s_client sent {data!r} after our close_notify")

        def on_close(self):
            closed.set()

    class First(gtcp.Service):
        def on_connect(self, caller):
            caller.write_bytes(b"the last words\n")
            caller.send_eof()
            return Sink()

    secure = gtcp.ListenerSecureSocket(key=gtcp.CertKey(pki["cert"], pki["key"]))
    listener = gtcp_listener(First(), secure_socket=secure)
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{listener.port}", "-CAfile", pki["ca"], f"-{version}",
         "-quiet"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        out = gevent.get_hub().threadpool.apply(proc.communicate, (), {"timeout": LONG})[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out == b"the last words\n"
    assert closed.wait(LONG)


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_halfclose_send_eof_while_the_peer_is_still_sending_loses_nothing(pki, version):
    """Our close_notify goes out while the peer's data is in flight (in the socket and
    in our TLS buffers): every byte still arrives, in order (20 rounds)."""
    payload = b"".join(b"%06d" % i for i in range(20_000))  # 120 kB

    def behaviour(tls: Any) -> bytes:
        tls.sendall(payload)
        got = b""
        while chunk := tls.recv(65536):
            got += chunk
        tls.sendall(b"END")
        tls.unwrap()
        return got

    for _ in range(20):
        port, peer, listening = _ssl_server(pki, version, behaviour)
        try:
            secure = gtcp.ClientSecureSocket(cert=pki["ca"])
            with gtcp.Client("127.0.0.1", port, timeout=LONG, secure_socket=secure) as client:
                first = client.read_bytes()  # the peer is sending now
                client.write_bytes(b"q")
                client.send_eof()
                rest = b""
                with pytest.raises(gtcp.PeerClosedError):
                    while True:
                        rest += client.read_bytes()
            assert first + rest == payload + b"END"
            assert peer.get(timeout=LONG) == b"q"
        finally:
            listening.close()


def test_halfclose_send_eof_waits_for_a_write_in_progress(gtcp_listener, layer):
    """send_eof() from one greenlet while another writes: the EOF follows every byte."""
    lopts, copts = layer
    events: Queue = Queue()
    listener = gtcp_listener(Make(lambda: Counter(events)), **lopts)
    size = 8 * 1024 * 1024
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG, write_timeout=LONG, **copts) as client:
        writer = gevent.spawn(client.write_bytes, b"w" * size)
        stream = client._stream
        wait_until(lambda: stream.wlock is not None and stream.wlock.locked())  # blocked, buffer full
        client.send_eof()
        writer.get(timeout=LONG)
        assert client.read_line() == b"%d bytes\n" % size
    assert events.get(timeout=LONG) == "eof"


def test_halfclose_tls13_client_that_only_wrote_saves_its_session_at_close(gtcp_listener, pki):
    protocol = gtcp.ProtocolConfig("TLS", ("TLSv1.3",))
    listener = gtcp_listener(Make(lambda: Counter(Queue())), secure_socket=gtcp.ListenerSecureSocket(
        key=gtcp.CertKey(pki["cert"], pki["key"]), protocol=protocol))
    secure = gtcp.ClientSecureSocket(cert=pki["ca"], protocol=protocol)
    first = gtcp.Client("127.0.0.1", listener.port, timeout=LONG, secure_socket=secure)
    first.write_bytes(b"only writes")
    gevent.socket.wait_read(first._stream.gsock.fileno(), LONG)  # the ticket has arrived, unread
    first.close()
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG, secure_socket=secure) as second:
        assert second.tls.session_reused
