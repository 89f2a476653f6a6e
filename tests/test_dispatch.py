"""The per-connection rules (README: Services, Errors, Decisions), one test (or more) per rule."""

from __future__ import annotations

import logging
import socket
import struct

import gevent
import pytest
from conftest import LONG, SHORT
from gevent.event import Event
from gevent.queue import Queue
from helpers import Echo, EchoService, wait_until

import gtcp
from gtcp.testing import _unread as unread  # FIONREAD: bytes in a socket's receive queue


def _service(make):
    class Svc(gtcp.Service):
        def on_connect(self, caller):
            return make(caller)

    return Svc()


def test_dispatch_connection_service_instance_per_connection(gtcp_listener):
    service = EchoService()
    listener = gtcp_listener(service)
    clients = [gtcp.Client("127.0.0.1", listener.port, timeout=LONG) for _ in range(3)]
    for client in clients:
        client.write_bytes(b"x")
        assert client.read_bytes() == b"x"
    assert len({id(s) for s in service.services}) == 3
    assert len({c.id for c in service.callers}) == 3
    for client in clients:
        client.close()


def test_dispatch_on_connect_runs_before_bytes_and_nothing_is_lost(gtcp_listener):
    entered = Queue()
    release = Event()
    got = Queue()
    order = []

    class Collect(gtcp.ConnectionService):
        def on_bytes(self, data):
            order.append("bytes")
            got.put(data)

    def slow_connect(caller):
        entered.put(caller)
        release.wait(LONG)
        order.append("connect")
        return Collect()

    listener = gtcp_listener(_service(slow_connect))
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    caller = entered.get(timeout=LONG)  # on_connect is running, and blocks
    for i in range(50):
        client.write_bytes(b"%03d" % i)
    # The synchronisation point: all 150 bytes reached the server (its socket, or its buffer had it
    # read ahead) while on_connect still blocks.
    stream = caller._stream
    wait_until(lambda: unread(stream.gsock.fileno()) + stream.buffered == 150, "the 150 bytes at the server")
    release.set()
    received = b""
    while len(received) < 150:
        received += got.get(timeout=LONG)
    assert received == b"".join(b"%03d" % i for i in range(50))
    assert order[0] == "connect" and set(order[1:]) == {"bytes"}
    client.close()


def test_dispatch_on_connect_none_discards_bytes_until_peer_closes(gtcp_listener):
    connected = Event()

    def none(caller):
        connected.set()
        return None

    listener = gtcp_listener(_service(none))
    client = gtcp.Client("127.0.0.1", listener.port, timeout=SHORT)
    assert connected.wait(LONG)
    client.write_bytes(b"ignored")
    with pytest.raises(gtcp.ReadTimeoutError):
        client.read_bytes()  # still open: nothing comes back, no close
    client.close()


@pytest.mark.gtcp_expect_callback_errors("on_connect of Svc")
@pytest.mark.parametrize("outcome", ["raise", "return_error"])
def test_dispatch_on_connect_failure_closes_connection_without_callbacks(gtcp_listener, gtcp_log, outcome):
    calls = []

    class Never(gtcp.ConnectionService):
        def on_bytes(self, data):
            calls.append("bytes")

        def on_close(self):
            calls.append("close")

    def fail(caller):
        if outcome == "raise":
            raise RuntimeError("boom in on_connect")
        return gtcp.Error("refused by on_connect")

    listener = gtcp_listener(_service(fail))
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    with pytest.raises(gtcp.PeerClosedError, match=r"^Connection closed by the server.$"):
        client.read_bytes()
    client.close()
    assert calls == []
    records = [r for r in gtcp_log.records if r.name == "gtcp" and "on_connect" in r.getMessage()]
    assert len(records) == 1
    if outcome == "raise":
        assert records[0].exc_info is not None
    else:
        assert "refused by on_connect" in records[0].getMessage()


def test_dispatch_on_bytes_signature_is_chosen_by_parameter_count(gtcp_listener):
    seen = []

    class OneArg:
        def on_bytes(self, data):
            seen.append(("one", data))
            return data

    class TwoArgs:
        def on_bytes(self, caller, data):
            seen.append(("two", type(caller).__name__, data))
            return data

    for cls in (OneArg, TwoArgs):
        listener = gtcp_listener(_service(lambda caller, cls=cls: cls()))
        with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
            client.write_bytes(b"hi")
            assert client.read_bytes() == b"hi"
    assert seen == [("one", b"hi"), ("two", "Caller", b"hi")]


def test_dispatch_on_bytes_data_is_immutable_bytes(gtcp_listener):
    types = []

    class Check:
        def on_bytes(self, data):
            types.append(type(data))
            with pytest.raises(TypeError):
                data[0] = 0
            return b"ok"

    listener = gtcp_listener(_service(lambda caller: Check()))
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"abc")
        assert client.read_bytes() == b"ok"
    assert types == [bytes]


@pytest.mark.gtcp_expect_callback_errors("returned an error")
def test_dispatch_on_bytes_returning_error_is_logged_and_connection_stays(gtcp_listener, gtcp_log):
    class Picky:
        def on_bytes(self, data):
            if data == b"bad":
                return gtcp.Error("bad input")
            return data

    listener = gtcp_listener(_service(lambda caller: Picky()))
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"bad")
        with gevent.Timeout(LONG):  # "bad" handled on its own before "good" is sent
            while not any("bad input" in r.getMessage() for r in gtcp_log.records):
                gevent.sleep(0.01)
        client.write_bytes(b"good")
        assert client.read_bytes() == b"good"
    assert any("bad input" in r.getMessage() for r in gtcp_log.records)
    # the listener is still up
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"again")
        assert client.read_bytes() == b"again"


@pytest.mark.gtcp_expect_callback_errors("on_bytes of connection")
def test_dispatch_on_bytes_raising_closes_only_that_connection(gtcp_listener, gtcp_log):
    closed = Queue()

    class Fragile:
        def on_bytes(self, data):
            if data == b"crash":
                raise ValueError("handler bug")
            return data

        def on_close(self):
            closed.put(True)

    listener = gtcp_listener(_service(lambda caller: Fragile()))
    healthy = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    victim = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    victim.write_bytes(b"crash")
    with pytest.raises(gtcp.PeerClosedError):
        victim.read_bytes()
    assert closed.get(timeout=LONG) is True
    healthy.write_bytes(b"still here")
    assert healthy.read_bytes() == b"still here"
    records = [r for r in gtcp_log.records if "on_bytes" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.ERROR
    assert records[0].exc_info[0] is ValueError
    healthy.close()
    victim.close()


@pytest.mark.gtcp_expect_callback_errors("defines 'onBytes'")
def test_dispatch_ballerina_spelled_connection_service_is_logged_and_closed(gtcp_listener, gtcp_log):
    class Camel:
        def onBytes(self, data):
            return data

    listener = gtcp_listener(_service(lambda caller: Camel()))
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    with pytest.raises(gtcp.PeerClosedError):
        client.read_bytes()
    client.close()
    messages = [r.getMessage() for r in gtcp_log.records]
    assert any("defines 'onBytes'" in m and "'on_bytes'" in m for m in messages)


@pytest.mark.gtcp_expect_callback_errors("on_bytes must take")
def test_dispatch_wrong_on_bytes_arity_is_logged_and_closed(gtcp_listener, gtcp_log):
    class Wrong:
        def on_bytes(self, a, b, c):
            return None

    listener = gtcp_listener(_service(lambda caller: Wrong()))
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    with pytest.raises(gtcp.PeerClosedError):
        client.read_bytes()
    client.close()
    assert any("on_bytes must take 1 or 2" in r.getMessage() for r in gtcp_log.records)


def test_dispatch_on_close_runs_exactly_once_last(gtcp_listener):
    events = []

    class Track:
        def __init__(self, caller):
            self.caller = caller

        def on_bytes(self, data):
            events.append("bytes")
            self.caller.close()
            self.caller.close()
            return None

        def on_error(self, err):
            events.append("error")

        def on_close(self):
            events.append("close")

    listener = gtcp_listener(_service(Track))
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    client.write_bytes(b"x")
    with pytest.raises(gtcp.PeerClosedError):
        client.read_bytes()
    client.close()
    listener.immediate_stop()
    assert events == ["bytes", "close"]


def test_dispatch_write_back_after_close_reports_closed_error(gtcp_listener):
    errors = Queue()

    class CloseThenReply:
        def on_bytes(self, caller, data):
            caller.close()
            return b"too late"

        def on_error(self, err):
            errors.put(err)

    listener = gtcp_listener(_service(lambda caller: CloseThenReply()))
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    client.write_bytes(b"x")
    err = errors.get(timeout=LONG)
    assert type(err) is gtcp.ClosedError and str(err) == "Socket connection already closed."
    client.close()


def test_dispatch_reset_by_peer_calls_on_error_then_on_close(gtcp_listener):
    service = EchoService()
    listener = gtcp_listener(service)
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port))
    sock.sendall(b"x")
    assert sock.recv(1) == b"x"
    # SO_LINGER 0 makes close() send a RST instead of a FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    kind, err = service.events.get(timeout=LONG)
    assert kind == "error"
    assert type(err) is gtcp.PeerClosedError and str(err) == "Connection reset by peer"
    assert service.events.get(timeout=LONG) == ("close", None)


def test_dispatch_caller_close_does_not_affect_other_connections(gtcp_listener):
    service = EchoService()
    listener = gtcp_listener(service)
    a = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    b = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    for client in (a, b):
        client.write_bytes(b"x")
        assert client.read_bytes() == b"x"
    service.callers[0].close()
    with pytest.raises(gtcp.PeerClosedError):
        a.read_bytes()
    b.write_bytes(b"fine")
    assert b.read_bytes() == b"fine"
    assert not service.services[1].closed.is_set()
    a.close()
    b.close()


def test_dispatch_caller_writes_from_other_greenlets(gtcp_listener):
    class Push(gtcp.Service):
        def on_connect(self, caller):
            def tick():
                for i in range(5):
                    caller.write_bytes(b"tick%d;" % i)
                    gevent.sleep(0.01)

            gevent.spawn(tick)
            return Echo()

    listener = gtcp_listener(Push())
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        got = b""
        while got.count(b";") < 5:
            got += client.read_bytes()
        assert got == b"tick0;tick1;tick2;tick3;tick4;"


def test_dispatch_callbacks_of_one_connection_never_overlap(gtcp_listener):
    state = {"active": 0, "max": 0, "chunks": 0}

    class Slow:
        def on_bytes(self, data):
            state["active"] += 1
            state["max"] = max(state["max"], state["active"])
            gevent.sleep(0.005)
            state["chunks"] += 1
            state["active"] -= 1
            return data

    listener = gtcp_listener(_service(lambda caller: Slow()))
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        for _ in range(20):
            client.write_bytes(b"x" * 100)
        got = 0
        while got < 2000:
            got += len(client.read_bytes())
    assert state["max"] == 1 and state["chunks"] >= 1


def test_dispatch_caller_facts(gtcp_listener):
    service = EchoService()
    listener = gtcp_listener(service)
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"x")
        client.read_bytes()
        caller = service.callers[0]
        assert caller.remote_host == "127.0.0.1"
        assert caller.remote_port == client.local_address[1]
        assert (caller.local_host, caller.local_port) == ("127.0.0.1", listener.port)
        assert caller.tls is None
        assert "gtcp.Caller" in repr(caller)


def test_dispatch_write_back_timeout_calls_on_error_then_closes(gtcp_listener):
    errors = Queue()
    closed = Event()

    class Flood:
        def on_bytes(self, data):
            return b"f" * (32 * 1024 * 1024)  # far more than the socket buffers hold

        def on_error(self, err):
            errors.put(err)

        def on_close(self):
            closed.set()

    listener = gtcp_listener(_service(lambda caller: Flood()), write_timeout=0.3)
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port))
    sock.sendall(b"go")  # ... and never read
    err = errors.get(timeout=LONG)
    assert type(err) is gtcp.WriteTimeoutError and str(err) == "Write timed out"
    assert closed.wait(LONG)
    sock.close()


@pytest.mark.gtcp_expect_callback_errors("returned str")
def test_dispatch_on_bytes_returning_wrong_type_is_logged_and_closed(gtcp_listener, gtcp_log):
    class Text:
        def on_bytes(self, data):
            return data.decode()

    listener = gtcp_listener(_service(lambda caller: Text()))
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    client.write_bytes(b"abc")
    with pytest.raises(gtcp.PeerClosedError):
        client.read_bytes()
    client.close()
    assert any("returned str" in r.getMessage() for r in gtcp_log.records)


def test_dispatch_time_in_callbacks_is_not_idle(gtcp_listener):
    done = Queue()

    class Busy:
        def on_bytes(self, data):
            if data == b"work":
                gevent.sleep(1.0)  # longer than the idle timeout, but busy, not idle
            return data

        def on_error(self, err):
            done.put(err)

    listener = gtcp_listener(_service(lambda caller: Busy()), idle_timeout=0.6)
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    client.write_bytes(b"work")
    assert client.read_bytes() == b"work"
    # Idle time counts from the end of the callback: 0.3 s later the
    # connection is still open (counted from the chunk's arrival, or with
    # the busy time counted as idle, it would have been closed).
    gevent.sleep(0.3)
    client.write_bytes(b"more")
    assert client.read_bytes() == b"more"
    assert done.empty()
    err = done.get(timeout=LONG)  # then, silent: the idle timeout ends it
    assert isinstance(err, gtcp.ReadTimeoutError)
    client.close()


def test_dispatch_caller_close_ends_connection_while_peer_stays_silent(gtcp_listener):
    closed = Event()

    class CloseOnFirst:
        def on_bytes(self, caller, data):
            caller.close()

        def on_close(self):
            closed.set()

    listener = gtcp_listener(_service(lambda caller: CloseOnFirst()))
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port))
    sock.sendall(b"x")  # then stays open and silent
    assert closed.wait(LONG)
    assert sock.recv(10) == b""  # the server's FIN
    with gevent.Timeout(1):  # nothing left to wait for
        listener.immediate_stop()
    sock.close()


@pytest.mark.gtcp_expect_callback_errors("on_bytes of connection")
def test_dispatch_gevent_timeout_escaping_a_callback_is_logged_and_closes(gtcp_listener, gtcp_log, capfd):
    closed = Event()

    class Careless:
        def on_bytes(self, data):
            with gevent.Timeout(0.01):  # the handler's own timeout, not caught
                gevent.sleep(1)

        def on_close(self):
            closed.set()

    listener = gtcp_listener(_service(lambda caller: Careless()))
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    client.write_bytes(b"x")
    with pytest.raises(gtcp.PeerClosedError):
        client.read_bytes()
    assert closed.wait(LONG)
    client.close()
    assert any("on_bytes" in r.getMessage() and r.exc_info for r in gtcp_log.records)
    assert "Traceback" not in capfd.readouterr().err


def test_dispatch_reset_before_the_greenlet_runs_is_not_an_error(gtcp_listener, gtcp_log):
    service = EchoService()
    listener = gtcp_listener(service)
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # reset before the listener's greenlet got to run
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"next")
        assert client.read_bytes() == b"next"
    assert not [r for r in gtcp_log.records if r.levelno >= logging.ERROR]


def test_dispatch_other_bytes_like_results_are_written(gtcp_listener):
    import array

    class Arr:
        def on_bytes(self, data):
            return array.array("B", data.upper())

    listener = gtcp_listener(_service(lambda caller: Arr()))
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"abc")
        assert client.read_bytes() == b"ABC"


def test_dispatch_write_back_failure_reports_failed_to_send_data(gtcp_listener):
    errors = Queue()
    reset = Event()

    class Late:
        def on_bytes(self, data):
            reset.wait(LONG)  # the peer resets meanwhile
            return b"reply" * 100000

        def on_error(self, err):
            errors.put(err)

    listener = gtcp_listener(_service(lambda caller: Late()))
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port))
    sock.sendall(b"x")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # on loopback the RST has reached the listener's socket when this returns
    reset.set()
    err = errors.get(timeout=LONG)
    assert type(err) is gtcp.WriteError and str(err) == "Failed to send data."
    assert str(err.__cause__).startswith("Failed to write data: ")


def test_dispatch_close_ends_loop_while_peer_streams_big_chunks(gtcp_listener):
    calls = {"after_close": 0}
    closed = Event()

    class CloseSoon:
        def __init__(self):
            self.closing = False

        def on_bytes(self, caller, data):
            if self.closing:
                calls["after_close"] += 1
            else:
                self.closing = True
                caller.close()

        def on_close(self):
            closed.set()

    listener = gtcp_listener(_service(lambda caller: CloseSoon()))
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port))

    def stream():
        try:
            while True:
                sock.sendall(b"s" * 65536)
        except OSError:
            pass

    sender = gevent.spawn(stream)
    assert closed.wait(LONG)
    sender.kill()
    sock.close()
    assert calls["after_close"] == 0


def test_dispatch_stop_reaches_connections_not_yet_running(gtcp_listener):
    served_after = []
    stopped = Event()
    listener_box = []

    class StopFirst(gtcp.Service):
        def on_connect(self, caller):
            if not stopped.is_set():
                stopped.set()
                listener_box[0].immediate_stop()
                return None
            served_after.append(caller.id)
            return Echo()

    listener = gtcp_listener(StopFirst())
    listener_box.append(listener)
    # Several connections land in one accept batch before any greenlet runs.
    socks = [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(10)]
    assert stopped.wait(LONG)
    for sock in socks:
        sock.settimeout(LONG)
        assert sock.recv(10) == b""  # every one was closed by the stop
        sock.close()
    assert served_after == []
