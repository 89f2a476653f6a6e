"""gtcp.testing and the pytest plugin: each fixture, the error check, the raw peer, the connection pair.

The pair is checked against a real listener: the same scripts, through
``gtcp.testing.connect`` and through a ``Listener`` on a loopback port with
a ``RawPeer``, must give the same callbacks and the same bytes.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import pytest
import trustme  # noqa: F401  (imported before pytester's in-process runs, which would unload it)
from conftest import LONG
from gevent.event import Event
from gevent.queue import Queue
from helpers import ROOT, child_env

import gtcp
from gtcp import testing


def _installed() -> bool:
    """True if gtcp's pytest11 entry point is registered (gtcp installed since it was added)."""
    return any(ep.value == "_gtcp_pytest_plugin" for ep in entry_points(group="pytest11"))


def _plugin_args() -> list[str]:
    """What an inner pytest run needs to have the plugin exactly once, installed or not."""
    return [] if _installed() else ["-p", "_gtcp_pytest_plugin"]


def _run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # Without hypothesis's plugin: it costs a second per in-process session (and is not used there).
    return pytester.runpytest_inprocess(*_plugin_args(), "-p", "no:cacheprovider",
                                        "-p", "no:hypothesispytest", *args)


def _subprocess_env() -> dict[str, str]:
    """A child pytest's environment: this checkout's gtcp, none of this run's pytest settings."""
    env = child_env()
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    return env


# -- services ------------------------------------------------------------------------------------


class Recorder(gtcp.ConnectionService):
    """Echoes upper-cased (frames too), answers EOF, records every callback."""

    def __init__(self, events: list[Any] | None = None, *, eof_reply: bytes | None = b"bye") -> None:
        self.events: list[Any] = [] if events is None else events
        self.closed = Event()
        self.eof_reply = eof_reply

    def on_bytes(self, data: bytes) -> Any:
        self.events.append(("bytes", data))
        if data.startswith(b"raise"):
            raise RuntimeError("asked to raise")
        if data.startswith(b"error"):
            return gtcp.Error("asked for an error")
        if data.startswith(b"str"):
            return "not bytes"
        return data.upper()

    def on_eof(self) -> bytes | None:
        self.events.append(("eof",))
        return self.eof_reply

    def on_error(self, err: gtcp.Error) -> None:
        self.events.append(("error", type(err).__name__, str(err)))

    def on_close(self) -> None:
        self.events.append(("close",))
        self.closed.set()


class RecorderService(gtcp.Service):
    """One Recorder per connection, all sharing one event list; greets when asked to."""

    def __init__(self, greeting: bytes | None = None) -> None:
        self.events: list[Any] = []
        self.services: list[Recorder] = []
        self.callers: list[gtcp.Caller] = []
        self.greeting = greeting

    def on_connect(self, caller: gtcp.Caller) -> Recorder:
        self.callers.append(caller)
        if self.greeting is not None:
            caller.write_bytes(self.greeting)
        service = Recorder(self.events)
        self.services.append(service)
        return service


# -- gtcp_listener, gtcp_client, gtcp_peer ------------------------------------------------------------


def test_gtcp_listener_starts_on_loopback_port_0(gtcp_listener, gtcp_client):
    listener = gtcp_listener(RecorderService())
    assert listener.running and listener.port > 0
    client = gtcp_client(listener)
    client.write_bytes(b"hi")
    assert client.read_bytes() == b"HI"
    assert gtcp_listener.listeners == [listener]
    assert gtcp_listener.errors == []


def test_gtcp_listener_passes_options_and_local_port(gtcp_listener, gtcp_client):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    listener = gtcp_listener(RecorderService(), local_port=port, framing=gtcp.Lines())
    assert listener.port == port
    client = gtcp_client(listener.port, framing=gtcp.Lines())
    client.write_frame(b"frame")
    assert client.read_frame() == b"FRAME"
    with pytest.raises(gtcp.ConfigError):
        gtcp_listener(RecorderService(), no_such_option=1)


def test_gtcp_client_has_test_sized_timeouts(gtcp_listener, gtcp_client):
    client = gtcp_client(gtcp_listener(RecorderService()), timeout=0.2)
    with pytest.raises(gtcp.ReadTimeoutError):
        client.read_bytes()  # nothing comes: 0.2 s, not the 300 s default


def test_factories_close_what_they_made():
    with testing.ListenerFactory() as start, testing.ClientFactory() as connect_client, \
            testing.PeerFactory() as connect_peer:
        service = RecorderService()
        listener = start(service)
        client = connect_client(listener)
        peer = connect_peer(listener)
        client.write_bytes(b"x")
        assert client.read_bytes() == b"X"
        peer.send(b"y")
        peer.expect(b"Y")
    assert not listener.running
    assert client.closed and peer.closed
    assert [e for e in service.events if e == ("close",)] == [("close",), ("close",)]


# -- the error check (pytester) -----------------------------------------------------------------


_RAISING = """
import gtcp
import pytest

class Raises(gtcp.ConnectionService):
    def on_bytes(self, data):
        raise ValueError("boom " + data.decode())

class Svc(gtcp.Service):
    def on_connect(self, caller):
        return Raises()

def poke(listener, gtcp_client):
    client = gtcp_client(listener)
    client.write_bytes(b"x")
    with pytest.raises(gtcp.PeerClosedError):
        client.read_bytes()
"""


def test_a_callback_that_raises_fails_the_test(pytester):
    pytester.makepyfile(_RAISING + """
def test_unexpected(gtcp_listener, gtcp_client):
    poke(gtcp_listener(Svc()), gtcp_client)

def test_pair_unexpected(gtcp_pair):
    pair = gtcp_pair(Raises())
    pair.feed(b"y")
    pair.wait_closed()
""")
    result = _run_inner(pytester)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*UnexpectedErrors: gtcp logged 1 error(s) while serving*",
                                 "*on_bytes of connection * raised; closing it*",
                                 "*ValueError: boom x*",
                                 "*ValueError: boom y*",
                                 "*gtcp_expect_callback_errors*"])


def test_expected_callback_errors_pass(pytester):
    pytester.makepyfile(_RAISING + """
@pytest.mark.gtcp_expect_callback_errors
def test_marker(gtcp_listener, gtcp_client):
    poke(gtcp_listener(Svc()), gtcp_client)

@pytest.mark.gtcp_expect_callback_errors("boom x")
def test_marker_with_a_matching_pattern(gtcp_listener, gtcp_client):
    poke(gtcp_listener(Svc()), gtcp_client)

@pytest.mark.gtcp_expect_callback_errors("something else")
def test_marker_with_another_pattern(gtcp_listener, gtcp_client):
    poke(gtcp_listener(Svc()), gtcp_client)

def test_method(gtcp_listener, gtcp_client):
    gtcp_listener.expect_errors()
    poke(gtcp_listener(Svc()), gtcp_client)
    assert "boom x" in gtcp_listener.errors[0].exc_text

def test_method_on_the_pair(gtcp_pair):
    gtcp_pair.expect_errors("boom")
    pair = gtcp_pair(Raises())
    pair.feed(b"z")
    pair.wait_closed()
""")
    result = _run_inner(pytester, "-rA")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["FAILED *test_marker_with_another_pattern*"])


def test_errors_logged_at_teardown_are_reported_there(pytester):
    pytester.makepyfile("""
import gtcp

class Raises(gtcp.ConnectionService):
    def on_bytes(self, data):
        return data
    def on_close(self):
        raise RuntimeError("boom in on_close")

class Svc(gtcp.Service):
    def on_connect(self, caller):
        return Raises()

def test_stop_runs_on_close(gtcp_listener, gtcp_client):
    listener = gtcp_listener(Svc())
    client = gtcp_client(listener)
    client.write_bytes(b"x")
    assert client.read_bytes() == b"x"  # served; on_close raises when the fixture stops the listener
""")
    result = _run_inner(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_stop_runs_on_close*", "*boom in on_close*"])


def test_a_failing_test_keeps_its_own_failure(pytester):
    pytester.makepyfile(_RAISING + """
def test_fails_first(gtcp_listener, gtcp_client):
    poke(gtcp_listener(Svc()), gtcp_client)
    assert 1 == 2
""")
    result = _run_inner(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*assert 1 == 2*"])


def test_warnings_do_not_fail_the_test(pytester):
    # A peer's fault (a failed TLS handshake here) is a WARNING, not an error of the service.
    pytester.makepyfile("""
import gtcp

class Svc(gtcp.Service):
    def on_connect(self, caller):
        return None

def test_plaintext_on_tls(gtcp_listener, gtcp_peer, gtcp_tls, gtcp_log):
    listener = gtcp_listener(Svc(), secure_socket=gtcp_tls.listener)
    peer = gtcp_peer(listener)
    peer.send(b"GET / HTTP/1.0\\r\\n\\r\\n")
    peer.read_until_eof()
    gtcp_log.wait_for("TLS handshake", level="WARNING")
""")
    _run_inner(pytester).assert_outcomes(passed=1)


def test_error_watch_without_pytest():
    with pytest.raises(testing.UnexpectedErrors, match="bad thing"):
        with testing.ErrorWatch():
            logging.getLogger("gtcp").error("bad thing")
    with testing.ErrorWatch() as watch:
        watch.expect("bad")
        logging.getLogger("gtcp.child").error("bad thing")
        logging.getLogger("gtcp").warning("a warning is not an error")
    assert len(watch.records) == 1 and watch.unexpected() == []


def test_error_watch_lowers_a_silenced_logger(monkeypatch):
    logger = logging.getLogger("gtcp")
    monkeypatch.setattr(logger, "level", logging.CRITICAL)
    watch = testing.ErrorWatch()
    watch.start()
    try:
        logger.error("still seen")
    finally:
        watch.stop()
    assert logger.level == logging.CRITICAL
    assert [r.getMessage() for r in watch.records] == ["still seen"]


# -- gtcp_tls -----------------------------------------------------------------------------------------


_first_kit: list[testing.TLSKit] = []


@pytest.mark.parametrize("round", [1, 2])
def test_gtcp_tls_is_built_once_per_session(gtcp_tls, round):
    _first_kit.append(gtcp_tls)
    assert _first_kit[0] is gtcp_tls
    for path in (gtcp_tls.ca_file, gtcp_tls.cert_file, gtcp_tls.key_file, gtcp_tls.client_cert_file,
                 gtcp_tls.client_key_file, gtcp_tls.other_ca_file):
        assert os.path.getsize(path) > 0


def test_gtcp_tls_records_serve_tls(gtcp_listener, gtcp_client, gtcp_tls):
    service = RecorderService()
    listener = gtcp_listener(service, secure_socket=gtcp_tls.listener)
    client = gtcp_client(listener, secure_socket=gtcp_tls.client)
    client.write_bytes(b"tls")
    assert client.read_bytes() == b"TLS"
    assert client.tls is not None and service.callers[0].tls.peer_certificate is None
    named = gtcp_client(listener, "localhost", secure_socket=gtcp_tls.client)  # the name is in the cert too
    named.write_bytes(b"by name")
    assert named.read_bytes() == b"BY NAME"


def test_gtcp_tls_mutual_records(gtcp_listener, gtcp_client, gtcp_tls):
    service = RecorderService()
    listener = gtcp_listener(service, secure_socket=gtcp_tls.mutual_listener)
    client = gtcp_client(listener, secure_socket=gtcp_tls.mutual_client)
    client.write_bytes(b"m")
    assert client.read_bytes() == b"M"
    assert service.callers[0].tls.peer_certificate is not None
    with pytest.raises(gtcp.Error):
        anonymous = gtcp_client(listener, secure_socket=gtcp_tls.client)
        anonymous.write_bytes(b"no cert")
        anonymous.read_bytes()  # TLS 1.3 reports the refusal at the first read


def test_gtcp_tls_other_ca_fails_verification(gtcp_listener, gtcp_client, gtcp_tls):
    listener = gtcp_listener(RecorderService(), secure_socket=gtcp_tls.listener)
    with pytest.raises(gtcp.TLSError):
        gtcp_client(listener, secure_socket=gtcp.ClientSecureSocket(cert=gtcp_tls.other_ca_file))


def test_gtcp_tls_variants_and_contexts(gtcp_listener, gtcp_peer, gtcp_tls):
    tls12 = gtcp.ProtocolConfig("TLS", ("TLSv1.2",))
    listener = gtcp_listener(RecorderService(), secure_socket=gtcp_tls.listener_secure_socket(protocol=tls12))
    peer = gtcp_peer(listener, tls=gtcp_tls.client_context())
    assert peer.tls is not None and peer.tls.version() == "TLSv1.2"
    peer.send(b"v12")
    peer.expect(b"V12")
    assert gtcp_tls.client_secure_socket(verify_hostname=False).verify_hostname is False
    cert_file, key_file = gtcp_tls.issue("other.example", name="other")
    assert Path(cert_file).name == "other.pem" and os.path.exists(key_file)
    mutual = gtcp_listener(RecorderService(), secure_socket=gtcp_tls.mutual_listener)
    peer = gtcp_peer(mutual, tls=gtcp_tls.client_context(mutual=True))
    peer.send(b"mutual")
    peer.expect(b"MUTUAL")
    assert gtcp_tls.server_context(mutual=True).verify_mode.name == "CERT_REQUIRED"


# -- gtcp_log -------------------------------------------------------------------------------------


def test_gtcp_log_captures_the_gtcp_logger_at_debug(gtcp_log):
    logging.getLogger("gtcp").debug("quiet detail %d", 1)
    logging.getLogger("gtcp.sub").warning("loud")
    logging.getLogger("elsewhere").error("not gtcp")
    assert gtcp_log.messages() == ["quiet detail 1", "loud"]
    assert gtcp_log.messages("WARNING") == ["loud"]
    assert gtcp_log.messages(logging.DEBUG, and_above=True) == ["quiet detail 1", "loud"]
    assert "DEBUG gtcp: quiet detail 1" in gtcp_log.text and "not gtcp" not in gtcp_log.text
    gtcp_log.clear()
    assert gtcp_log.records == []


def test_gtcp_log_text_has_tracebacks_and_restores_the_level():
    logger = logging.getLogger("gtcp")
    before = logger.level
    with testing.LogCapture() as capture:
        assert logger.level == logging.DEBUG
        try:
            raise KeyError("inside")
        except KeyError:
            logger.exception("it failed")
    assert logger.level == before
    assert "it failed" in capture.text and "KeyError: 'inside'" in capture.text


def test_gtcp_log_wait_for_what_a_connection_logs_later(gtcp_listener, gtcp_peer, gtcp_log):
    class Forgetful(gtcp.Service):
        def on_connect(self, caller):
            return None  # gtcp warns about it (once per class)

    gtcp_peer(gtcp_listener(Forgetful()))
    (record,) = gtcp_log.wait_for("on_connect returned None", level="WARNING")
    assert record.levelno == logging.WARNING
    with pytest.raises(testing.ScriptError, match="0 of 1 log record"):
        gtcp_log.wait_for("never logged", timeout=0.05)


# -- the deadline ---------------------------------------------------------------------------------


def test_deadline_is_opt_in_by_marker_and_ini(pytester):
    pytester.makepyfile("""
import gevent
import pytest

@pytest.mark.gtcp_deadline(0.1)
def test_marked():
    gevent.sleep(30)

def test_unmarked():
    gevent.sleep(0.3)

@pytest.mark.gtcp_deadline(0)
def test_marked_off():
    gevent.sleep(0.3)
""")
    result = _run_inner(pytester)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*DeadlineExceeded: test ran over 0.1 s*"])
    pytester.makeini("[pytest]\ngtcp_deadline = 0.2\n")
    result = _run_inner(pytester)
    result.assert_outcomes(passed=1, failed=2)


def test_deadline_covers_fixture_teardown(pytester):
    pytester.makepyfile("""
import gevent
import pytest

@pytest.fixture
def slow_teardown():
    yield
    gevent.sleep(30)

@pytest.mark.gtcp_deadline(0.2)
def test_it(slow_teardown):
    pass
""")
    result = _run_inner(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*DeadlineExceeded*"])


# -- the scripted raw peer ------------------------------------------------------------------------


def test_raw_peer_send_expect_and_its_failures(gtcp_listener, gtcp_peer):
    peer = gtcp_peer(gtcp_listener(RecorderService()))
    peer.send(b"abc")
    peer.expect(b"ABC")
    peer.send(b"abc")
    with pytest.raises(testing.ScriptError, match=r"expected b'ABD', got b'ABC'"):
        peer.expect(b"ABD")
    assert peer.recv() == b"ABC"  # a failed expect consumes nothing
    with pytest.raises(testing.ScriptError, match=r"within 0\.05 s"):
        peer.expect(b"more", timeout=0.05)
    with pytest.raises(testing.ScriptError, match="nothing arrived"):
        peer.recv(timeout=0.05)
    assert peer.read_available() == b""


def test_raw_peer_keeps_what_came_beyond_an_expect(gtcp_listener, gtcp_peer):
    peer = gtcp_peer(gtcp_listener(RecorderService(greeting=b"hello\n")))
    peer.expect(b"hel")
    assert peer.read_exactly(3) == b"lo\n"
    peer.send(b"x")
    assert peer.recv() == b"X"


def test_raw_peer_half_close_then_expect_eof(gtcp_listener, gtcp_peer):
    service = RecorderService()
    peer = gtcp_peer(gtcp_listener(service))
    peer.send(b"last")
    peer.expect(b"LAST")
    peer.half_close()
    peer.expect(b"bye")
    peer.expect_eof()
    assert peer.eof
    assert service.services[0].closed.wait(LONG)
    assert service.events == [("bytes", b"last"), ("eof",), ("close",)]


def test_raw_peer_expect_eof_fails_on_data(gtcp_listener, gtcp_peer):
    peer = gtcp_peer(gtcp_listener(RecorderService()))
    peer.send(b"x")
    peer.half_close()
    with pytest.raises(testing.ScriptError, match="expected EOF, got b'Xbye' first"):
        peer.expect_eof()


def test_raw_peer_reset_reaches_on_error(gtcp_listener, gtcp_peer):
    service = RecorderService()
    peer = gtcp_peer(gtcp_listener(service))
    peer.send(b"x")
    peer.expect(b"X")
    peer.reset()
    assert service.services[0].closed.wait(LONG)
    assert service.events[1:] == [("error", "PeerClosedError", "Connection reset by peer"), ("close",)]
    assert peer.closed


def test_raw_peer_expect_reset():
    server = gevent.socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    peer = testing.RawPeer(server.getsockname()[1])
    try:
        conn, _ = server.accept()
        conn.sendall(b"last words")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        assert peer.expect_reset() in (b"", b"last words")  # the reset may discard what was queued
    finally:
        peer.close()
        server.close()


def test_raw_peer_expect_reset_fails_on_a_clean_close(gtcp_listener, gtcp_peer):
    peer = gtcp_peer(gtcp_listener(RecorderService(), idle_timeout=0.05))
    with pytest.raises(testing.ScriptError, match="expected a reset, got a clean EOF"):
        peer.expect_reset()


def test_raw_peer_stall_makes_the_server_write_time_out(gtcp_listener, gtcp_peer):
    failures: Queue = Queue()

    class Push(gtcp.Service):
        def on_connect(self, caller):
            def push():
                try:
                    while True:
                        caller.write_bytes(b"z" * 65536)
                except gtcp.Error as exc:
                    failures.put(exc)

            gevent.spawn(push)
            return Recorder()

    peer = gtcp_peer(gtcp_listener(Push(), write_timeout=0.2), rcvbuf=4096)
    peer.stall()
    assert type(failures.get(timeout=LONG)) is gtcp.WriteTimeoutError


def test_raw_peer_read_slowly_gets_everything(gtcp_listener, gtcp_peer):
    payload = bytes(range(256)) * 64  # 16 KiB

    class Big(gtcp.Service):
        def on_connect(self, caller):
            caller.write_bytes(payload)
            return Recorder()

    peer = gtcp_peer(gtcp_listener(Big()), rcvbuf=4096)
    assert peer.read_slowly(len(payload), chunk=4096, interval=0.001) == payload


def test_raw_peer_send_slowly_and_frames(gtcp_listener, gtcp_peer):
    service = RecorderService()
    peer = gtcp_peer(gtcp_listener(service, framing=gtcp.Lines()), framing=gtcp.Lines())
    peer.send_slowly(b"trickle\n", interval=0.001)
    assert peer.read_frame() == b"TRICKLE"
    assert service.events == [("bytes", b"trickle")]  # one frame, whatever the segments
    peer.send_frame(b"a")
    peer.send_frame(b"b")
    assert [peer.read_frame(), peer.read_frame()] == [b"A", b"B"]
    with pytest.raises(testing.ScriptError, match="no whole frame"):
        peer.read_frame(timeout=0.05)


def test_raw_peer_over_tls(gtcp_listener, gtcp_peer, gtcp_tls):
    service = RecorderService()
    listener = gtcp_listener(service, secure_socket=gtcp_tls.listener)
    peer = gtcp_peer(listener, tls=gtcp_tls.client_context())
    assert peer.tls is not None and peer.tls.version() in ("TLSv1.2", "TLSv1.3")
    big = b"q" * 200_000  # several records
    peer.send(big)
    assert peer.read_exactly(len(big)) == big.upper()
    peer.half_close()  # close_notify, then FIN: on_eof answers over TLS
    peer.expect(b"bye")
    peer.expect_eof()
    assert service.services[0].closed.wait(LONG)
    assert service.events[-2:] == [("eof",), ("close",)]


def test_raw_peer_tls_handshake_failure_is_the_ssl_error(gtcp_listener, gtcp_tls):
    import ssl

    listener = gtcp_listener(RecorderService(), secure_socket=gtcp_tls.listener)
    untrusting = ssl.create_default_context(cafile=gtcp_tls.other_ca_file)
    with pytest.raises(ssl.SSLCertVerificationError):
        testing.RawPeer(listener, tls=untrusting)


def test_raw_peer_wraps_a_standard_socket(gtcp_listener):
    listener = gtcp_listener(RecorderService())
    plain = socket.create_connection(("127.0.0.1", listener.port))
    with testing.ScriptedPeer(plain) as peer:
        assert isinstance(peer.sock, gevent.socket.socket)
        peer.send(b"std")
        peer.expect(b"STD")
    assert peer.closed


# -- the connection pair ----------------------------------------------------------------------------


def test_pair_feed_and_written(gtcp_pair):
    service = Recorder()
    pair = gtcp_pair(service)
    assert pair.written() == b""  # settled and nothing written: no sleep needed
    pair.feed(b"hello")
    assert pair.written() == b"HELLO"
    assert pair.written() == b""
    pair.send_eof()
    assert pair.written() == b"bye"
    pair.expect_eof()
    pair.wait_closed()
    assert service.events == [("bytes", b"hello"), ("eof",), ("close",)]


def test_pair_of_a_service_runs_on_connect_and_shows_the_caller(gtcp_pair):
    service = RecorderService(greeting=b"welcome")
    pair = gtcp_pair(service)
    assert pair.written() == b"welcome"
    assert pair.caller is service.callers[0]
    assert pair.caller.remote_host == "" and pair.caller.remote_port == 0
    pair.caller.write_bytes(b"pushed")  # the test may write as the service would
    assert pair.written() == b"pushed"


def test_pair_frames(gtcp_pair):
    service = Recorder()
    pair = gtcp_pair(service, framing=gtcp.LengthPrefixed())
    pair.feed_frame(b"one")
    pair.feed_frame(b"two")
    assert pair.written_frames() == [b"ONE", b"TWO"]
    wire = gtcp.LengthPrefixed().encode(b"three")
    pair.feed(wire[:3])
    assert pair.written() == b""  # half a frame: nothing delivered yet
    pair.feed(wire[3:])
    assert pair.read_frame() == b"THREE"


def test_pair_settles_for_a_callback_that_waits_briefly(gtcp_pair):
    class Slow(gtcp.ConnectionService):
        def on_bytes(self, data):
            gevent.sleep(0.05)  # busy with something other than the peer
            return data

    pair = gtcp_pair(Slow())
    pair.feed(b"late")
    assert pair.written() == b"late"


def test_pair_settle_times_out_for_a_callback_that_keeps_waiting(gtcp_pair):
    release = Event()

    class Stuck(gtcp.ConnectionService):
        def on_bytes(self, data):
            release.wait()
            return data

    pair = gtcp_pair(Stuck())
    pair.feed(b"x")
    with pytest.raises(testing.ScriptError, match=r"still busy after 0\.05 s"):
        pair.settle(timeout=0.05)
    release.set()
    assert pair.written() == b"x"


def test_pair_written_drains_a_big_reply(gtcp_pair):
    big = b"y" * (4 * 1024 * 1024)  # far more than the socket buffers hold

    class Big(gtcp.ConnectionService):
        def on_bytes(self, data):
            return big

    pair = gtcp_pair(Big())
    pair.feed(b"go")
    assert pair.written() == big


def test_pair_reset_reaches_on_error_and_later_writes_fail(gtcp_pair):
    service = Recorder()
    pair = gtcp_pair(service)
    pair.feed(b"x")
    assert pair.written() == b"X"
    pair.reset()
    pair.wait_closed()
    assert service.events == [("bytes", b"x"), ("error", "PeerClosedError", "Connection reset by peer"),
                              ("close",)]


def test_pair_reset_with_unread_data_queued(gtcp_pair):
    service = Recorder()
    pair = gtcp_pair(service)
    pair.caller.write_bytes(b"never read")  # waits in the peer's socket: the kernel resets by itself
    pair.reset()
    pair.wait_closed()
    assert service.events[-2:] == [("error", "PeerClosedError", "Connection reset by peer"), ("close",)]


def test_pair_close_is_a_clean_eof(gtcp_pair):
    service = Recorder(eof_reply=None)
    pair = gtcp_pair(service)
    pair.close()
    pair.wait_closed()
    assert service.events == [("eof",), ("close",)]


def test_pair_stop_is_an_immediate_stop(gtcp_pair):
    service = Recorder()
    pair = gtcp_pair(service)
    pair.stop()
    assert service.events == [("close",)]  # on_close has run when stop() returns
    assert pair.closed
    pair.expect_eof()


def test_pair_idle_timeout(gtcp_pair):
    service = Recorder()
    pair = gtcp_pair(service, idle_timeout=0.05)
    pair.wait_closed()
    assert service.events == [("error", "ReadTimeoutError", "Read timed out"), ("close",)]
    assert pair.listener.stats().idle_timeouts == 1


def test_pair_frame_too_long(gtcp_pair):
    service = Recorder()
    pair = gtcp_pair(service, framing=gtcp.Lines(max_length=8))
    pair.feed(b"0123456789")
    pair.wait_closed()
    assert service.events[0][:2] == ("error", "FrameTooLongError")
    assert pair.listener.stats().frames_too_long == 1


def test_pair_over_tls(gtcp_pair, gtcp_tls):
    service = Recorder()
    pair = gtcp_pair(service, secure_socket=gtcp_tls.listener, peer_tls=gtcp_tls.client_context())
    assert pair.caller.tls is not None
    pair.feed(b"secret")
    assert pair.written() == b"SECRET"
    pair.send_eof()
    assert pair.written() == b"bye"
    pair.wait_closed()
    unchecked = gtcp_pair(Recorder(), secure_socket=gtcp_tls.listener)  # the peer trusts anything
    unchecked.feed(b"x")
    assert unchecked.written() == b"X"


def test_pair_refuses_what_the_listener_refuses(gtcp_pair):
    with pytest.raises(TypeError, match="not the class Recorder"):
        gtcp_pair(Recorder)
    with pytest.raises(gtcp.ConfigError):
        gtcp_pair(Recorder(), no_such_option=True)
    with pytest.raises(gtcp.ConfigError):
        gtcp_pair(Recorder(), framing=gtcp.Lines)  # the class, not a codec


@pytest.mark.gtcp_expect_callback_errors("asked to raise")
def test_pair_on_connect_failure(gtcp_pair):
    class Refuses(gtcp.Service):
        def on_connect(self, caller):
            raise RuntimeError("asked to raise")

    pair = gtcp_pair(Refuses())
    pair.wait_closed()
    pair.expect_eof()
    assert gtcp_pair.errors and "on_connect of Refuses raised" in gtcp_pair.errors[0].getMessage()


def test_pair_without_pytest():
    service = Recorder()
    with testing.connect(service) as pair:
        pair.feed(b"plain python")
        assert pair.written() == b"PLAIN PYTHON"
    assert service.events[-1] == ("close",)


# -- the pair behaves as the listener does -----------------------------------------------------------

#: (name, options, steps): a step is bytes to send, "eof", "reset", or "wait" (for what was sent to be
#: answered). Each script ends when the connection has closed, or after its last step.
SCRIPTS = [
    ("echo then eof", {}, [b"abc", "wait", b"def", "wait", "eof"]),
    ("raise closes", {}, [b"x", "wait", b"raise!", "wait"]),
    ("returned error stays open", {}, [b"error", "wait", b"after", "wait", "eof"]),
    ("wrong type closes", {}, [b"str", "wait"]),
    ("reset", {}, [b"x", "wait", "reset"]),
    ("lines", {"framing": gtcp.Lines()}, [b"one\ntw", "wait", b"o\nthree\n", "wait", "eof"]),
    ("eof mid-frame", {"framing": gtcp.Lines()}, [b"whole\npart", "wait", "eof"]),
    ("too long", {"framing": gtcp.Lines(max_length=4)}, [b"ok\n", "wait", b"much too long\n"]),
    ("length prefixed", {"framing": gtcp.LengthPrefixed()},
     [gtcp.LengthPrefixed().encode(b"frame"), "wait", "eof"]),
]


def _through_pair(options: dict[str, Any], steps: list[Any]) -> tuple[list[Any], bytes]:
    service = Recorder()
    pair = testing.connect(service, **options)
    received = b""
    try:
        for step in steps:
            if step == "wait":
                received += pair.written()
            elif step == "eof":
                pair.send_eof()
            elif step == "reset":
                pair.reset()
            else:
                pair.feed(step)
        pair.wait_closed()
        if not pair.peer.closed:
            received += pair.peer.read_until_eof()
    finally:
        pair.stop()
        pair.peer.close()
    return service.events, received


def _through_listener(options: dict[str, Any], steps: list[Any]) -> tuple[list[Any], bytes]:
    service = RecorderService()
    with testing.ListenerFactory() as start:
        listener = start(service, **options)
        peer = testing.RawPeer(listener)
        received = b""
        try:
            sent = 0
            for step in steps:
                if step == "wait":
                    _answered(listener, service, sent)
                    received += peer.read_available()
                elif step == "eof":
                    peer.half_close()
                elif step == "reset":
                    peer.reset()
                else:
                    codec = options.get("framing")
                    sent += len(step) if codec is None else _payload_size(codec, step)
                    peer.send(step)
            assert service.services[0].closed.wait(LONG)
            if not peer.closed:
                received += peer.read_until_eof()
        finally:
            peer.close()
    return service.events, received


def _answered(listener: gtcp.Listener, service: RecorderService, sent: int) -> None:
    """Wait until the service had the *sent* bytes of payload (or closed) and its replies reached the peer.

    Without a pair, this is how a test knows: the service recorded the bytes, and
    nothing the server sent is unacknowledged (TIOCOUTQ), so it is in the peer's socket.
    """
    with gevent.Timeout(LONG):
        while sum(len(e[1]) for e in service.events if e[0] == "bytes") < sent \
                and not (service.services and service.services[0].closed.is_set()):
            gevent.sleep(0.001)
        while True:
            gevent.idle()
            socks = [conn.gsock for run in listener._runs for conn in run.connections]
            if not socks or socks[0].fileno() < 0 or _unacknowledged(socks[0].fileno()) == 0:
                return
            gevent.sleep(0.001)


def _unacknowledged(fd: int) -> int:
    import fcntl
    import termios

    return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0])


def _payload_size(codec: Any, data: bytes) -> int:
    """Bytes of frame payload in *data* (what on_bytes will have seen once it is delivered)."""
    size, start = 0, 0
    while True:
        try:
            found = codec.decode(data, start)
        except gtcp.Error:
            return size
        if found is None:
            return size
        frame, start = found
        size += len(frame)


@pytest.mark.gtcp_expect_callback_errors
@pytest.mark.parametrize(("name", "options", "steps"), SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_pair_behaves_as_the_listener(name, options, steps, gtcp_log):
    def errors() -> list[str]:  # the connection ids differ
        return [re.sub(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", "ID", r.getMessage())
                for r in gtcp_log.records if r.levelno >= logging.ERROR]

    pair_events, pair_bytes = _through_pair(options, steps)
    pair_log = errors()
    gtcp_log.clear()
    listener_events, listener_bytes = _through_listener(options, steps)
    listener_log = errors()
    assert pair_events == listener_events
    assert pair_bytes == listener_bytes
    assert pair_log == listener_log
    assert pair_events[-1] == ("close",)


# -- the plugin's registration --------------------------------------------------------------------


def test_importing_the_plugin_imports_neither_gtcp_nor_gevent():
    code = ("import sys, _gtcp_pytest_plugin\n"
            "print(sorted(m for m in ('gtcp', 'gevent', 'ssl') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env=_subprocess_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(not _installed(), reason="gtcp is not installed with its entry point (pip install -e .)")
def test_installed_plugin_is_loaded_once_by_its_entry_point(tmp_path):
    (tmp_path / "test_user.py").write_text(textwrap.dedent("""
        import _gtcp_pytest_plugin

        class Echo:
            def on_bytes(self, data):
                return data

        def test_echo(gtcp_pair, pytestconfig):
            manager = pytestconfig.pluginmanager
            assert manager.get_name(_gtcp_pytest_plugin) == "gtcp"  # the entry point's name
            assert [p for p in manager.get_plugins() if p is _gtcp_pytest_plugin] == [_gtcp_pytest_plugin]
            pair = gtcp_pair(Echo())
            pair.feed(b"x")
            assert pair.written() == b"x"
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--trace-config",
                             "test_user.py"], capture_output=True, text=True, timeout=120,
                            env=_subprocess_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    registered = [line for line in result.stdout.splitlines()
                  if "registered: <module '_gtcp_pytest_plugin'" in line]
    assert len(registered) == 1, result.stdout


def test_plugin_by_name_without_autoload(tmp_path):
    (tmp_path / "test_user.py").write_text("def test_fixture(gtcp_listener, gtcp_log):\n    pass\n")
    env = _subprocess_env()
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-p", "_gtcp_pytest_plugin", "test_user.py"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("how", ["as installed", "-p no:gtcp", "no autoload"])
def test_gtcps_own_conftest_has_the_plugin_exactly_once(how):
    # As CI runs it (installed by requirements.txt), and as a checkout that is not installed: the
    # conftest loads the plugin only when the entry point did not.
    env = _subprocess_env()
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "tests/test_testing.py::test_pair_without_pytest",
            "tests/test_testing.py::test_gtcp_listener_starts_on_loopback_port_0"]
    if how == "-p no:gtcp":
        args += ["-p", "no:gtcp"]
    elif how == "no autoload":
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        args += ["-p", "pytest_timeout"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_readme_example_file_passes():
    example = ROOT / "examples" / "test_echo_service.py"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_plugin_args(),
                             str(example)], capture_output=True, text=True, timeout=120,
                            env=_subprocess_env(), cwd=example.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout
    readme = (ROOT / "README.md").read_text()
    assert f"```python\n{example.read_text()}```" in readme  # the README shows the file as it is
