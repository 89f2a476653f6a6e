"""A ready ``ssl.SSLContext`` as ``secure_socket``: the escape hatch for TLS settings records do not cover.

Every behaviour is tried with both context classes, the standard library's
``ssl.SSLContext`` and gevent's ``gevent.ssl.SSLContext``: gtcp runs TLS over
memory BIOs, so a handshake never blocks the process whichever class made
the context; the stalled-peer tests check exactly that.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import gevent.ssl
import pytest
import trustme
from conftest import LONG
from gevent.event import Event
from helpers import EchoService, run_script

import gtcp
import gtcp._config

#: Each test's own deadline (seconds), far below the 60 s handshake timeout a
#: blocked handshake would wait for.
DEADLINE = 20.0

STDLIB = ssl.SSLContext
GEVENT = gevent.ssl.SSLContext
CLASSES = [pytest.param(STDLIB, id="stdlib"), pytest.param(GEVENT, id="gevent")]


@pytest.fixture(autouse=True)
def _deadline() -> Iterator[None]:
    with gevent.Timeout(DEADLINE, AssertionError(f"the test took more than {DEADLINE:g} s")):
        yield


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1")


def server_context(cls: type[ssl.SSLContext], cert: trustme.LeafCert | None) -> ssl.SSLContext:
    context = cls(ssl.PROTOCOL_TLS_SERVER)
    if cert is not None:
        cert.configure_cert(context)
    return context


def client_context(cls: type[ssl.SSLContext], ca: trustme.CA) -> ssl.SSLContext:
    context = cls(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    return context


@pytest.fixture
def serve() -> Iterator[Callable[..., gtcp.Listener]]:
    """``serve(secure_socket, service=None, **options)``: a started loopback listener, stopped at teardown."""
    started: list[gtcp.Listener] = []

    def start(secure_socket: Any, service: Any = None, **options: Any) -> gtcp.Listener:
        listener = gtcp.Listener(0, local_host="127.0.0.1", secure_socket=secure_socket, **options)
        listener.attach(service if service is not None else EchoService())
        listener.start()
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.immediate_stop()


@pytest.fixture
def stalled_server() -> Iterator[tuple[int, Event]]:
    """A TCP server that accepts and never answers: its port, and an Event set once bytes came in."""
    server = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    heard = Event()
    accepted: list[Any] = []

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            accepted.append(conn)
            if conn.recv(65536):  # the ClientHello: the client is in its handshake now
                heard.set()

    runner = gevent.spawn(serve)
    yield server.getsockname()[1], heard
    runner.kill()
    for conn in accepted:
        conn.close()
    server.close()


def _echo(client: gtcp.Client, data: bytes = b"ping") -> None:
    client.write_bytes(data)
    assert client.read_bytes() == data


def test_the_two_classes_are_the_two_classes() -> None:
    """The premise: this process is not monkey-patched, so ``ssl.SSLContext`` is the standard library's."""
    assert STDLIB.__module__ == "ssl"
    assert issubclass(GEVENT, STDLIB) and GEVENT is not STDLIB


# -- end to end -----------------------------------------------------------------------------------


@pytest.mark.parametrize("server_class", CLASSES)
@pytest.mark.parametrize("client_class", CLASSES)
def test_listener_and_client_with_raw_contexts(
        serve: Any, ca: trustme.CA, server_cert: trustme.LeafCert,
        server_class: type[ssl.SSLContext], client_class: type[ssl.SSLContext]) -> None:
    service = EchoService()
    listener = serve(server_context(server_class, server_cert), service)
    with gtcp.Client("127.0.0.1", listener.port, secure_socket=client_context(client_class, ca),
                     timeout=LONG) as client:
        _echo(client)
        assert client.tls is not None and client.tls.version in ("TLSv1.2", "TLSv1.3")
        assert client.tls.peer_certificate is not None  # verified against the CA
        caller = service.callers[0]
        assert caller.tls is not None and caller.tls.version == client.tls.version
        assert caller.tls.peer_certificate is None  # no client certificate asked for
    assert repr(listener).startswith("<gtcp.Listener TLS ")


@pytest.mark.parametrize("cls", CLASSES)
def test_starttls_with_raw_contexts(
        serve: Any, ca: trustme.CA, server_cert: trustme.LeafCert, cls: type[ssl.SSLContext]) -> None:
    server_side = server_context(cls, server_cert)
    seen: list[Any] = []

    class Upgrade(gtcp.ConnectionService):
        def on_bytes(self, caller: gtcp.Caller, line: bytes) -> bytes | None:
            if line == b"STARTTLS":
                caller.write_frame(b"220 go ahead")
                caller.start_tls(server_side)
                seen.append(caller.tls)
                return None
            return line

    class Svc(gtcp.Service):
        def on_connect(self, caller: gtcp.Caller) -> Upgrade:
            return Upgrade()

    listener = serve(None, Svc(), framing=gtcp.Lines())
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"STARTTLS\r\n")
        assert client.read_line() == b"220 go ahead\n"
        client.start_tls(client_context(cls, ca))
        client.write_bytes(b"over tls\n")
        assert client.read_line() == b"over tls\n"
        assert client.tls is not None
    assert seen[0] is not None and seen[0].version == client.tls.version


def test_under_monkey_patching_contexts_are_gevents_and_work(tmp_path: Path, ca: trustme.CA,
                                                            server_cert: trustme.LeafCert) -> None:
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    server_cert.cert_chain_pems[0].write_to_path(str(cert_file))
    server_cert.private_key_pem.write_to_path(str(key_file))
    result = run_script(f"""
        import ssl, gevent.ssl
        assert ssl.SSLContext is gevent.ssl.SSLContext
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain({str(cert_file)!r}, {str(key_file)!r})
        listener = gtcp.Listener(0, local_host="127.0.0.1", secure_socket=server)
        listener.attach(Svc())
        listener.start()
        context = ssl.create_default_context(cafile={str(ca_file)!r})
        with gtcp.Client("127.0.0.1", listener.port, secure_socket=context, timeout=10) as client:
            client.write_bytes(b"patched")
            assert client.read_bytes() == b"patched"
            print(type(context).__module__, client.tls.version)
        listener.immediate_stop()
    """, echo=True, patch=True, timeout=15)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "gevent.ssl"


# -- handshakes stay cooperative ------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_a_client_that_sends_nothing_does_not_block_the_listener(
        serve: Any, ca: trustme.CA, server_cert: trustme.LeafCert, cls: type[ssl.SSLContext]) -> None:
    listener = serve(server_context(cls, server_cert))
    staller = gevent.socket.create_connection(("127.0.0.1", listener.port))
    try:
        for _ in range(2):
            with gtcp.Client("127.0.0.1", listener.port, secure_socket=client_context(GEVENT, ca),
                             timeout=LONG) as client:
                _echo(client)
        stats = listener.stats()
        assert stats.open >= 1 and stats.handshake_failures == 0  # the staller is still in its handshake
        assert stats.accepted == 3
    finally:
        staller.close()


@pytest.mark.parametrize("cls", CLASSES)
def test_a_server_that_never_answers_does_not_block_other_greenlets(
        serve: Any, ca: trustme.CA, server_cert: trustme.LeafCert, stalled_server: tuple[int, Event],
        cls: type[ssl.SSLContext]) -> None:
    stalled_port, heard = stalled_server
    stuck = gevent.spawn(gtcp.Client, "127.0.0.1", stalled_port, secure_socket=client_context(cls, ca))
    heard.wait()  # its ClientHello arrived: it now waits for a ServerHello that never comes
    listener = serve(server_context(cls, server_cert))
    with gtcp.Client("127.0.0.1", listener.port, secure_socket=client_context(cls, ca),
                     timeout=LONG) as client:
        _echo(client)
    assert not stuck.ready()
    stuck.kill()
    assert stuck.successful()  # killed in its handshake (GreenletExit), its socket closed


@pytest.mark.parametrize("cls", CLASSES)
def test_a_raw_context_gets_gtcps_default_handshake_timeout(
        serve: Any, ca: trustme.CA, server_cert: trustme.LeafCert, stalled_server: tuple[int, Event],
        monkeypatch: pytest.MonkeyPatch, cls: type[ssl.SSLContext]) -> None:
    assert gtcp._config.DEFAULT_HANDSHAKE_TIMEOUT == 60.0  # what the README promises
    monkeypatch.setattr(gtcp._config, "DEFAULT_HANDSHAKE_TIMEOUT", 0.3)
    with pytest.raises(gtcp.TLSError, match=r"^TLS handshake timed out after 0.3 s$"):
        gtcp.Client("127.0.0.1", stalled_server[0], secure_socket=client_context(cls, ca))
    listener = serve(server_context(cls, server_cert))
    staller = gevent.socket.create_connection(("127.0.0.1", listener.port))
    try:
        assert staller.recv(1) == b""  # dropped when its handshake timed out
    finally:
        staller.close()
    assert listener.stats().handshake_failures == 1


# -- what gtcp leaves to the context -------------------------------------------------------------------


def test_the_client_checks_the_host_name_as_the_context_says(serve: Any, ca: trustme.CA) -> None:
    listener = serve(server_context(GEVENT, ca.issue_cert("localhost")))  # not valid for 127.0.0.1
    strict = client_context(STDLIB, ca)
    with pytest.raises(gtcp.TLSError, match="IP address mismatch"):
        gtcp.Client("127.0.0.1", listener.port, secure_socket=strict)
    with gtcp.Client("localhost", listener.port, secure_socket=strict, timeout=LONG) as client:
        _echo(client)
    lax = client_context(STDLIB, ca)
    lax.check_hostname = False
    with gtcp.Client("127.0.0.1", listener.port, secure_socket=lax, timeout=LONG) as client:
        _echo(client)
        assert client.tls is not None and client.tls.peer_certificate is not None  # still verified
    # gtcp changed neither context.
    assert (strict.check_hostname, strict.verify_mode) == (True, ssl.CERT_REQUIRED)
    assert (lax.check_hostname, lax.verify_mode) == (False, ssl.CERT_REQUIRED)


@pytest.mark.parametrize("cls", CLASSES)
def test_sessions_are_resumed_per_context(
        serve: Any, ca: trustme.CA, server_cert: trustme.LeafCert, cls: type[ssl.SSLContext]) -> None:
    listener = serve(server_context(cls, server_cert))
    context = client_context(cls, ca)

    def connect(with_context: ssl.SSLContext) -> bool:
        with gtcp.Client("127.0.0.1", listener.port, secure_socket=with_context, timeout=LONG) as client:
            _echo(client)  # a read: the TLS 1.3 ticket is saved
            assert client.tls is not None
            return client.tls.session_reused

    assert connect(context) is False
    assert connect(context) is True
    assert connect(client_context(cls, ca)) is False  # another context object: another cache key


def test_a_server_context_without_a_certificate_fails_each_handshake(serve: Any, ca: trustme.CA) -> None:
    listener = serve(server_context(STDLIB, None))  # accepted: gtcp cannot tell it has no certificate
    for _ in range(2):
        with pytest.raises(gtcp.TLSError):
            gtcp.Client("127.0.0.1", listener.port, secure_socket=client_context(STDLIB, ca))
    assert listener.running
    assert listener.stats().handshake_failures == 2


# -- the wrong side ------------------------------------------------------------------------------------


def test_a_client_side_context_on_a_listener_is_refused(ca: trustme.CA) -> None:
    with pytest.raises(gtcp.ConfigError, match=r"^secure_socket: a listener needs a server-side "
                       r"ssl\.SSLContext, got a client-side one \(PROTOCOL_TLS_CLIENT\)"):
        gtcp.Listener(0, secure_socket=client_context(STDLIB, ca))
    with pytest.raises(gtcp.ConfigError, match="a listener needs a server-side"):
        gtcp.Listener(0, secure_socket=ssl.create_default_context())


def test_a_server_side_context_on_a_client_is_refused(server_cert: trustme.LeafCert) -> None:
    # Refused before connecting: nothing listens on port 1.
    with pytest.raises(gtcp.ConfigError, match=r"^secure_socket: a client needs a client-side "
                       r"ssl\.SSLContext, got a server-side one \(PROTOCOL_TLS_SERVER\)"):
        gtcp.Client("127.0.0.1", 1, secure_socket=server_context(GEVENT, server_cert))


def test_start_tls_refuses_the_wrong_side(serve: Any, ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
    refused: list[Exception] = []

    class Upgrade(gtcp.ConnectionService):
        def on_bytes(self, caller: gtcp.Caller, line: bytes) -> bytes:
            try:
                caller.start_tls(client_context(STDLIB, ca))
            except gtcp.ConfigError as exc:
                refused.append(exc)
                return b"refused"
            return b"upgraded"

    class Svc(gtcp.Service):
        def on_connect(self, caller: gtcp.Caller) -> Upgrade:
            return Upgrade()

    listener = serve(None, Svc(), framing=gtcp.Lines())
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        with pytest.raises(gtcp.ConfigError, match="a client needs a client-side"):
            client.start_tls(server_context(STDLIB, server_cert))
        client.write_bytes(b"STARTTLS\n")  # the client is still open and plain
        assert client.read_line() == b"refused\n"
        assert client.tls is None
    assert "a listener needs a server-side" in str(refused[0])


def test_reload_tls_takes_a_raw_context(serve: Any, ca: trustme.CA, tmp_path: Path) -> None:
    first = ca.issue_cert("127.0.0.1", common_name="first")
    second = ca.issue_cert("127.0.0.1", common_name="second")
    listener = serve(server_context(GEVENT, first))
    context = client_context(GEVENT, ca)

    def served_by() -> str:
        with gtcp.Client("127.0.0.1", listener.port, secure_socket=context, timeout=LONG) as client:
            assert client.tls is not None and client.tls.peer_certificate is not None
            subject = dict(pair[0] for pair in client.tls.peer_certificate["subject"])
            return str(subject["commonName"])

    assert served_by() == "first"
    with pytest.raises(gtcp.ConfigError, match="a listener needs a server-side"):
        listener.reload_tls(client_context(STDLIB, ca))
    assert served_by() == "first"  # the refused context changed nothing
    listener.reload_tls(server_context(STDLIB, second))
    assert served_by() == "second"
    listener.reload_tls()  # no files to re-read: the context stays
    assert served_by() == "second"
    cert_file, key_file = tmp_path / "first.pem", tmp_path / "first.key"
    first.cert_chain_pems[0].write_to_path(str(cert_file))
    first.private_key_pem.write_to_path(str(key_file))
    listener.reload_tls(gtcp.ListenerSecureSocket(key=gtcp.CertKey(str(cert_file), str(key_file))))
    assert served_by() == "first"  # and back to a record
