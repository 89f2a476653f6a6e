"""STARTTLS (README, STARTTLS): upgrading a plain connection, on both sides, with real clients."""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.socket
import pytest
from conftest import LONG
from gevent import ssl as gssl
from gevent.event import Event
from gevent.queue import Queue
from helpers import load_example, wait_until

import gtcp

starttls_server = load_example("starttls_server")
starttls_client = load_example("starttls_client")


@pytest.fixture(scope="module")
def pki(gtcp_tls) -> dict[str, Any]:
    """The plugin's TLS kit, by the names these tests use."""
    paths = {"ca": gtcp_tls.ca_file, "cert": gtcp_tls.cert_file, "key": gtcp_tls.key_file,
             "other_ca": gtcp_tls.other_ca_file}
    return {
        **paths,
        "listener": gtcp_tls.listener,
        "client": gtcp_tls.client,
        "ssl_client": gtcp_tls.client_context(),
        "server_ctx": _server_ctx(paths),  # gevent's SSLContext: wrap_socket must not block the hub
    }


def _server_ctx(paths: dict[str, str]) -> Any:
    ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(paths["cert"], paths["key"])
    return ctx


@pytest.fixture
def smtp(pki) -> Iterator[tuple[gtcp.Listener, Any]]:
    service = starttls_server.Smtp(pki["listener"])
    listener = starttls_server.start("127.0.0.1", 0, pki["listener"], service)
    yield listener, service
    listener.immediate_stop()


def in_thread(function: Any, *args: Any) -> Any:
    """Run blocking stdlib code (smtplib, ssl) in an OS thread; the hub keeps serving."""
    return gevent.get_hub().threadpool.apply(function, args)


def test_starttls_with_smtplib(smtp, pki):
    listener, service = smtp

    def dialogue() -> tuple[Any, ...]:
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=LONG) as client:
            client.ehlo("tester")
            offered = client.has_extn("starttls")
            client.starttls(context=pki["ssl_client"])
            client.ehlo("tester")
            still_offered = client.has_extn("starttls")
            noop = client.noop()
            echo = client.docmd("ECHO", "over tls")
            version = client.sock.version()
            return offered, still_offered, noop, echo, version

    offered, still_offered, noop, echo, version = in_thread(dialogue)
    assert offered and not still_offered
    assert noop == (250, b"OK")
    assert echo == (250, b"over tls")
    assert version in ("TLSv1.2", "TLSv1.3")
    (conn,) = service.connections
    assert conn.commands == [b"EHLO", b"STARTTLS", b"EHLO", b"NOOP", b"ECHO", b"QUIT"]


def test_starttls_example_client(smtp, pki):
    listener, _ = smtp
    echoed, version = starttls_client.main("127.0.0.1", listener.port, pki["ca"])
    assert echoed == "250 hello over TLS"
    assert version in ("TLSv1.2", "TLSv1.3")


def test_starttls_plaintext_pipelined_after_starttls_is_never_executed(smtp, pki, gtcp_log):
    listener, service = smtp
    ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki["ca"])
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port))
    reader = sock.makefile("rb")
    assert reader.readline() == b"220 gtcp ESMTP ready\r\n"
    injected = b"ECHO injected\r\nQUIT\r\n"
    sock.sendall(b"STARTTLS\r\n" + injected)  # one segment: the injection attempt
    assert reader.readline() == b"220 Ready to start TLS\r\n"
    tls = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    tls.sendall(b"ECHO safe\r\n")
    assert tls.makefile("rb").readline() == b"250 safe\r\n"
    tls.close()
    (conn,) = service.connections
    assert conn.commands[:2] == [b"STARTTLS", b"ECHO"]
    assert b"QUIT" not in conn.commands and conn.commands.count(b"ECHO") == 1
    warnings = [r for r in gtcp_log.records if "discarded" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert f"{len(injected)} byte(s) of plaintext" in warnings[0].getMessage()


def test_starttls_client_discards_plaintext_after_the_go_ahead(pki, gtcp_log):
    """The server sends extra plaintext behind its go-ahead: never delivered after the upgrade."""
    server = gevent.socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    sent_later = Event()

    def serve() -> bytes:
        conn, _ = server.accept()
        conn.sendall(b"220 go ahead\r\nINJECTED same segment\r\n")
        sent_later.wait(LONG)
        conn.sendall(b"INJECTED later segment\r\n")
        tls = pki["server_ctx"].wrap_socket(conn, server_side=True)
        tls.sendall(b"over tls\r\n")
        got = tls.makefile("rb").readline()
        tls.close()
        return got

    peer = gevent.spawn(serve)
    try:
        with gtcp.Client("127.0.0.1", server.getsockname()[1], timeout=LONG) as client:
            assert client.read_line() == b"220 go ahead\r\n"
            sent_later.set()
            gevent.socket.wait_read(client._stream.gsock.fileno(), LONG)  # the later segment is readable
            client.start_tls(pki["client"])
            assert client.tls is not None
            assert client.read_line() == b"over tls\r\n"
            client.write_bytes(b"reply\r\n")
        assert peer.get(timeout=LONG) == b"reply\r\n"
    finally:
        server.close()
    warnings = [r.getMessage() for r in gtcp_log.records if "discarded" in r.getMessage()]
    injected = len(b"INJECTED same segment\r\n") + len(b"INJECTED later segment\r\n")
    assert len(warnings) == 1 and f"discarded {injected} byte(s)" in warnings[0]


def _raw_peer(behaviour: Any) -> tuple[int, gevent.Greenlet, Any]:
    server = gevent.socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        try:
            behaviour(conn)
        finally:
            conn.close()

    return server.getsockname()[1], gevent.spawn(run), server


@pytest.mark.parametrize("case", ["wrong_ca", "not_tls", "timeout"])
def test_starttls_client_failures_raise_tls_error_and_close(pki, case):
    done = Event()

    def behaviour(conn: Any) -> None:
        conn.sendall(b"220 go\r\n")
        if case == "wrong_ca":
            try:
                pki["server_ctx"].wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                pass
        elif case == "not_tls":
            conn.recv(65536)  # the ClientHello
            conn.sendall(b"500 what is this?\r\n" * 10)
        done.wait(LONG)

    port, peer, server = _raw_peer(behaviour)
    secure = gtcp.ClientSecureSocket(cert=pki["other_ca"] if case == "wrong_ca" else pki["ca"],
                                     handshake_timeout=0.3 if case == "timeout" else 60)
    try:
        client = gtcp.Client("127.0.0.1", port, timeout=LONG)
        assert client.read_line() == b"220 go\r\n"
        with pytest.raises(gtcp.TLSError) as info:
            client.start_tls(secure)
        assert client.closed
        with pytest.raises(gtcp.ClosedError):
            client.write_bytes(b"x")
        if case == "timeout":
            assert str(info.value) == "TLS handshake timed out after 0.3 s"
        if case == "wrong_ca":
            assert "certificate" in str(info.value)
    finally:
        done.set()
        peer.join(LONG)
        server.close()


def test_starttls_server_failure_reaches_the_calling_callback(smtp, caplog):
    listener, service = smtp
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port))
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(b"STARTTLS\r\n")
    assert reader.readline() == b"220 Ready to start TLS\r\n"
    sock.sendall(b"this is not a ClientHello\r\n" * 4)
    received = b""
    while chunk := sock.recv(65536):  # an alert, then the server closes the connection
        received += chunk
    sock.close()
    # Nothing in plaintext: at most a TLS alert record (none for a bad record header).
    assert received == b"" or received.startswith(b"\x15\x03"), received
    wait_until(lambda: any("STARTTLS with" in r.getMessage() for r in caplog.records))  # the example's logger
    (conn,) = service.connections
    assert conn.commands == [b"STARTTLS"]  # nothing after it ran


def test_starttls_twice_and_from_another_greenlet_raise(pki, gtcp_log):
    outcomes: Queue = Queue()

    class Svc(gtcp.ConnectionService):
        def on_bytes(self, caller, line):
            if line == b"up":
                caller.write_frame(b"go")
                caller.start_tls(pki["listener"])
                try:
                    caller.start_tls(pki["listener"])
                except gtcp.Error as exc:
                    outcomes.put(("twice", exc))
                try:
                    gevent.spawn(caller.start_tls, pki["listener"]).get()
                except gtcp.Error as exc:
                    outcomes.put(("other", exc))
                return b"done"
            return line

    class One(gtcp.Service):
        def on_connect(self, caller):
            return Svc()

    listener = gtcp.Listener(0, local_host="127.0.0.1", framing=gtcp.Lines())
    listener.attach(One())
    listener.start()
    try:
        with gtcp.Client("127.0.0.1", listener.port, timeout=LONG, framing=gtcp.Lines()) as client:
            client.write_frame(b"up")
            assert client.read_frame() == b"go"
            client.start_tls(pki["client"])
            assert client.read_frame() == b"done"  # framing carries on over TLS
            client.write_frame(b"echo")
            assert client.read_frame() == b"echo"
            assert client.tls is not None
            with pytest.raises(gtcp.Error, match="already TLS"):
                client.start_tls(pki["client"])
    finally:
        listener.immediate_stop()
    twice = outcomes.get(timeout=LONG)
    other = outcomes.get(timeout=LONG)
    assert twice[0] == "twice" and type(twice[1]) is gtcp.Error and "already TLS" in str(twice[1])
    assert other[0] == "other" and type(other[1]) is gtcp.Error and "its own greenlet" in str(other[1])


def test_starttls_stop_during_the_handshake_ends_it_at_once(smtp):
    listener, _ = smtp
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port))
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(b"STARTTLS\r\n")
    assert reader.readline() == b"220 Ready to start TLS\r\n"
    # No ClientHello: the server waits in its handshake (60 s timeout) until the stop.
    with gevent.Timeout(LONG / 2, AssertionError("immediate_stop waited for the handshake")):
        listener.immediate_stop()
    assert not listener._runs or not any(run.connections for run in listener._runs)
    assert sock.recv(65536) == b""
    sock.close()


def test_starttls_caller_tls_is_set_after_the_upgrade(pki):
    seen: Queue = Queue()

    class Svc(gtcp.ConnectionService):
        def on_bytes(self, caller, line):
            seen.put(caller.tls)
            if line == b"up":
                caller.write_frame(b"go")
                caller.start_tls({"key": {"cert_file": pki["cert"], "key_file": pki["key"]}})  # a dict
                seen.put(caller.tls)
            return None

    class One(gtcp.Service):
        def on_connect(self, caller):
            return Svc()

    listener = gtcp.Listener(0, local_host="127.0.0.1", framing=gtcp.Lines())
    listener.attach(One())
    listener.start()
    try:
        with gtcp.Client("127.0.0.1", listener.port, timeout=LONG, framing=gtcp.Lines()) as client:
            client.write_frame(b"up")
            assert client.read_frame() == b"go"
            client.start_tls({"cert": pki["ca"]})  # a dict too
            client.write_frame(b"after")
            assert seen.get(timeout=LONG) is None
            info = seen.get(timeout=LONG)
            assert info is not None and info.version == client.tls.version
            assert seen.get(timeout=LONG).version == info.version
    finally:
        listener.immediate_stop()


def _upgrading_listener(pki: dict[str, Any], seen: Queue, **options: Any) -> gtcp.Listener:
    class Svc(gtcp.ConnectionService):
        def on_bytes(self, caller, line):
            if line == b"up":
                caller.write_frame(b"go")
                seen.put(caller)
                try:
                    caller.start_tls(pki["listener"])
                except gtcp.Error as exc:
                    seen.put(exc)
                    raise
                seen.put("tls")
                return None
            return line

        def on_error(self, err):
            seen.put(err)

    class One(gtcp.Service):
        def on_connect(self, caller):
            return Svc()

    listener = gtcp.Listener(0, local_host="127.0.0.1", framing=gtcp.Lines(), **options)
    listener.attach(One())
    listener.start()
    return listener


def test_starttls_handshake_time_is_not_idle_time(pki):
    """A client slower to send its ClientHello than idle_timeout still upgrades."""
    seen: Queue = Queue()
    listener = _upgrading_listener(pki, seen, idle_timeout=0.2)
    try:
        with gtcp.Client("127.0.0.1", listener.port, timeout=LONG, framing=gtcp.Lines()) as client:
            client.write_frame(b"up")
            assert client.read_frame() == b"go"
            seen.get(timeout=LONG)  # the server is in its handshake now
            timer = gevent.get_hub().loop.timer(0.5)  # longer than idle_timeout, then the ClientHello
            gevent.get_hub().wait(timer)
            client.start_tls(pki["client"])
            assert seen.get(timeout=LONG) == "tls"
            client.write_frame(b"over tls")
            assert client.read_frame() == b"over tls"
            # Once the handshake is done, silence is idle time again.
            assert type(seen.get(timeout=LONG)) is gtcp.ReadTimeoutError
    finally:
        listener.immediate_stop()


def test_starttls_writes_of_other_greenlets_wait_for_the_handshake(pki):
    seen: Queue = Queue()
    listener = _upgrading_listener(pki, seen)
    try:
        with gtcp.Client("127.0.0.1", listener.port, timeout=LONG, framing=gtcp.Lines()) as client:
            client.write_frame(b"up")
            assert client.read_frame() == b"go"
            caller = seen.get(timeout=LONG)
            pusher = gevent.spawn(caller.write_bytes, b"news\n")  # a broadcast during the handshake
            wait_until(lambda: caller._stream.wlock.locked() and not pusher.dead and pusher.started)
            client.start_tls(pki["client"])
            pusher.get(timeout=LONG)
            assert seen.get(timeout=LONG) == "tls"
            assert client.read_frame() == b"news"  # it went out encrypted, after the handshake
    finally:
        listener.immediate_stop()
