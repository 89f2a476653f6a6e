"""The examples in ``examples/`` each run once, driven by gtcp clients or raw sockets.

Each example file is loaded under a private module name (``examples/`` is not
a package, and ``benchmarks/`` has an ``echo_server.py`` of its own). Servers
run in a greenlet through their ``main(..., ready=, stop=)`` and are stopped by
setting ``stop``; nothing waits on a sleep.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import gevent
import gevent.socket
import pytest
from conftest import LONG
from gevent.event import AsyncResult, Event
from gevent.queue import Queue
from helpers import load_example

import gtcp

echo_server = load_example("echo_server")
echo_client = load_example("echo_client")
http_over_tcp = load_example("http_over_tcp")
chat_server = load_example("chat_server")


@pytest.fixture
def running() -> Iterator[Any]:
    """Run a server example's ``main`` in a greenlet; returns its port. Stopped after the test."""
    started: list[tuple[gevent.Greenlet, Event]] = []

    def run(module: ModuleType) -> int:
        ready: AsyncResult = AsyncResult()
        stop = Event()
        greenlet = gevent.spawn(module.main, "127.0.0.1", 0, ready=ready, stop=stop)
        started.append((greenlet, stop))
        port: int = ready.get(timeout=LONG)
        return port

    yield run
    for greenlet, stop in started:
        stop.set()
        greenlet.join(timeout=LONG)
        assert greenlet.dead and greenlet.successful(), greenlet.exception


def client(port: int) -> gtcp.Client:
    return gtcp.Client("127.0.0.1", port, timeout=LONG, connect_timeout=LONG)


def recv_until_eof(sock: Any) -> bytes:
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


# -- echo_server / echo_client (Ballerina spec section 6) -----------------------


@pytest.mark.timeout(60)
def test_echo_server_greets_prints_and_echoes(running: Any, capsys: pytest.CaptureFixture[str]) -> None:
    port = running(echo_server)
    with client(port) as c:
        c.write_bytes(b"hello echo")
        assert c.read_exactly(10) == b"hello echo"
        local_port = c.local_address[1]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"Echo server listening on 127.0.0.1:{port}"
    assert out[1] == f"Client connected to echo server: {local_port}"
    assert out[2] == "Echo: hello echo"


@pytest.mark.timeout(60)
def test_echo_server_stop_event_ends_main_and_frees_port() -> None:
    ready: AsyncResult = AsyncResult()
    stop = Event()
    greenlet = gevent.spawn(echo_server.main, "127.0.0.1", 0, ready=ready, stop=stop)
    port = ready.get(timeout=LONG)
    stop.set()
    greenlet.join(timeout=LONG)
    assert greenlet.successful()
    with pytest.raises(gtcp.ConnectError, match=r"^Unable to connect with remote host: "):
        client(port)


@pytest.mark.timeout(60)
def test_echo_client_sends_the_sample_message(capsys: pytest.CaptureFixture[str]) -> None:
    listener = echo_server.start("127.0.0.1", 0)
    try:
        received = echo_client.main("127.0.0.1", listener.port)
    finally:
        listener.immediate_stop()
    assert received == "Hello Ballerina Echo from client"
    out = capsys.readouterr().out.splitlines()
    echoed = out.index("Echo: Hello Ballerina Echo from client")
    assert out.index("Received: Hello Ballerina Echo from client") > echoed


@pytest.mark.timeout(60)
def test_echo_client_waits_for_the_whole_echo_of_a_long_message() -> None:
    message = "é" * 200_000  # 400 000 bytes: several reads on the client's side
    listener = echo_server.start("127.0.0.1", 0)
    try:
        assert echo_client.main("127.0.0.1", listener.port, message) == message
    finally:
        listener.immediate_stop()


class _HalfEcho(gtcp.Service, gtcp.ConnectionService):
    """Echoes half of what it gets, then hangs up."""

    def on_connect(self, caller: gtcp.Caller) -> _HalfEcho:
        return self

    def on_bytes(self, caller: gtcp.Caller, data: bytes) -> None:
        caller.write_bytes(data[: len(data) // 2])
        caller.close()


@pytest.mark.timeout(60)
def test_echo_client_reports_an_echo_cut_short() -> None:
    listener = gtcp.Listener(0, local_host="127.0.0.1")
    listener.attach(_HalfEcho())
    listener.start()
    try:
        with pytest.raises(gtcp.PeerClosedError) as info:
            echo_client.main("127.0.0.1", listener.port, "0123456789")
    finally:
        listener.immediate_stop()
    assert info.value.partial == b"01234"


@pytest.mark.timeout(60)
def test_echo_client_reports_a_refused_connection() -> None:
    with socket.socket() as closed:  # bound, not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        with pytest.raises(gtcp.ConnectError, match=r"^Unable to connect with remote host: "):
            echo_client.main("127.0.0.1", closed.getsockname()[1])


# -- http_over_tcp -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_http_over_tcp_echoes_the_post_body(capsys: pytest.CaptureFixture[str]) -> None:
    text = http_over_tcp.main("127.0.0.1", 0, "hello over tcp")
    assert text.startswith("HTTP/1.1 200 Ok\r\n")
    head, body = text.split("\r\n\r\n", 1)
    assert body == "hello over tcp"
    assert "Content-Length: 14" in head.split("\r\n")
    assert "HTTP/1.1 200 Ok" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_http_over_tcp_default_body_is_ballerinas() -> None:
    text = http_over_tcp.main()
    assert text.startswith("HTTP/1.1 200 Ok")
    assert text.endswith("\r\n\r\nrequest body")


@pytest.mark.timeout(60)
def test_http_over_tcp_answers_pipelined_requests_in_order() -> None:
    listener = http_over_tcp.start("127.0.0.1", 0)
    try:
        with gevent.socket.create_connection(("127.0.0.1", listener.port)) as sock:
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                b"POST /b HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\nxy"
            )
            replies = recv_until_eof(sock).decode()
    finally:
        listener.immediate_stop()
    first, second, third = replies.split("HTTP/1.1 ")[1:]
    assert first.startswith("400 Bad Request\r\n")
    assert second.startswith("200 Ok\r\n") and second.endswith("\r\n\r\nabc")
    assert third.startswith("200 Ok\r\n") and third.endswith("\r\n\r\nxy")
    assert "Connection: close" in third


def ok(body: bytes) -> bytes:
    """The server's exact answer to a ``text/plain`` POST of *body*."""
    return b"HTTP/1.1 200 Ok\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.mark.timeout(60)
def test_http_over_tcp_waits_for_the_whole_body() -> None:
    listener = http_over_tcp.start("127.0.0.1", 0)
    try:
        with client(listener.port) as c:
            c.write_bytes(b"POST / HTTP/1.1\r\nContent-Len")
            c.write_bytes(b"gth: 10\r\n\r")
            c.write_bytes(b"\n01234")
            c.write_bytes(b"56789")
            reply = http_over_tcp.read_response(c)
    finally:
        listener.immediate_stop()
    assert reply == ok(b"0123456789")


@pytest.mark.timeout(60)
def test_http_over_tcp_body_is_cut_by_length_not_by_blank_lines() -> None:
    # The body holds the head delimiter; the framing switches to FixedSize
    # for it, then back to heads for the request after it.
    listener = http_over_tcp.start("127.0.0.1", 0)
    try:
        with client(listener.port) as c:
            c.write_bytes(b"POST / HTTP/1.1\r\nContent-Length: 7\r\n\r\na\r\n\r\nbc"
                          b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nxy")
            assert http_over_tcp.read_response(c) == ok(b"a\r\n\r\nbc")
            assert http_over_tcp.read_response(c) == ok(b"xy")
    finally:
        listener.immediate_stop()


@pytest.mark.timeout(60)
def test_http_over_tcp_answers_an_empty_body_at_once() -> None:
    # No body to wait for: the answer comes with nothing sent after the head.
    listener = http_over_tcp.start("127.0.0.1", 0)
    try:
        with client(listener.port) as c:
            c.write_bytes(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            assert http_over_tcp.read_response(c) == ok(b"")
            c.write_bytes(b"POST / HTTP/1.1\r\n\r\n")  # no Content-Length: no body either
            assert http_over_tcp.read_response(c) == ok(b"")
    finally:
        listener.immediate_stop()


def head_of(size: int) -> bytes:
    """A POST head of exactly *size* bytes (blank line not counted), announcing a 2-byte body."""
    head = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nX-Pad: "
    return head + b"p" * (size - len(head))


@pytest.mark.timeout(60)
def test_http_over_tcp_accepts_a_head_of_max_head_bytes() -> None:
    listener = http_over_tcp.start("127.0.0.1", 0)
    try:
        with client(listener.port) as c:
            c.write_bytes(head_of(http_over_tcp.MAX_HEAD) + b"\r\n\r\nok")
            assert http_over_tcp.read_response(c) == ok(b"ok")
    finally:
        listener.immediate_stop()


@pytest.mark.timeout(60)
def test_http_over_tcp_closes_unanswered_on_a_head_over_max_head(caplog: pytest.LogCaptureFixture) -> None:
    listener = http_over_tcp.start("127.0.0.1", 0)
    try:
        with gevent.socket.create_connection(("127.0.0.1", listener.port)) as sock:
            sock.sendall(head_of(http_over_tcp.MAX_HEAD + 1) + b"\r\n\r\nok")
            assert recv_until_eof(sock) == b""
    finally:
        listener.graceful_stop(timeout=LONG)  # the connection, and its on_error, are done
    assert [r.getMessage() for r in caplog.records if r.name == http_over_tcp.__name__] == [
        f"HTTP connection failed: Frame too long: more than max_length ({http_over_tcp.MAX_HEAD} bytes)"
    ]


@pytest.mark.timeout(60)
def test_http_over_tcp_rejects_a_bad_content_length() -> None:
    listener = http_over_tcp.start("127.0.0.1", 0)
    try:
        with gevent.socket.create_connection(("127.0.0.1", listener.port)) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nContent-Length: many\r\n\r\n")
            reply = recv_until_eof(sock)
    finally:
        listener.immediate_stop()
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close" in reply


# -- chat_server -------------------------------------------------------------


def join(port: int) -> gtcp.Client:
    """A chat member that has read the greeting, so it is in the room."""
    member = client(port)
    assert member.read_line() == chat_server.WELCOME
    return member


@pytest.mark.timeout(60)
def test_chat_server_message_reaches_every_other_member(running: Any) -> None:
    port = running(chat_server)
    a, b, c = join(port), join(port), join(port)
    try:
        a.write_bytes(b"hello from a\n")
        assert b.read_line() == b"hello from a\n"
        assert c.read_line() == b"hello from a\n"
        # The sender does not get its own message: the next line it reads
        # is what someone else sent.
        b.write_bytes(b"hi a\n")
        assert a.read_line() == b"hi a\n"
        assert c.read_line() == b"hi a\n"
    finally:
        for member in (a, b, c):
            member.close()


@pytest.mark.timeout(60)
def test_chat_server_passes_on_whole_lines_only(running: Any) -> None:
    port = running(chat_server)
    a, b, c = join(port), join(port), join(port)
    first, rest = b"x" * 40_000, b"y" * 20_000
    try:
        # a's half line is held back: what c sends meanwhile comes first.
        a.write_bytes(first)
        c.write_bytes(b"from c\n")
        assert b.read_line() == b"from c\n"
        assert a.read_line() == b"from c\n"
        a.write_bytes(rest + b"\n")
        assert b.read_line() == first + rest + b"\n"
        assert c.read_line() == first + rest + b"\n"
        # A telnet line ending (CRLF) goes out as b"\n"; each line of a write
        # that holds several (an empty one too) goes out.
        b.write_bytes(b"typed in telnet\r\n\nlast\n")
        assert a.read_exactly(22) == b"typed in telnet\n\nlast\n"
        # The longest line allowed goes through whole.
        longest = b"z" * chat_server.MAX_LINE
        c.write_bytes(longest + b"\r\n")
        assert a.read_line() == longest + b"\n"
        assert b.read_line() == longest + b"\n"
    finally:
        for member in (a, b, c):
            member.close()


@pytest.mark.timeout(60)
def test_chat_server_line_over_max_line_closes_only_its_sender() -> None:
    room = _Room()
    listener = chat_server.start("127.0.0.1", 0, room)
    try:
        a, b, flood = join(listener.port), join(listener.port), join(listener.port)
        flood_port = flood.local_address[1]
        flood.write_bytes(b"f" * (chat_server.MAX_LINE + 1) + b"\n")
        with pytest.raises(gtcp.PeerClosedError):
            flood.read_bytes()
        gone = room.left.get(timeout=LONG)
        assert gone.remote_port == flood_port and len(room.callers) == 2
        # Nothing of the long line went out; the others still talk.
        a.write_bytes(b"still here\n")
        assert b.read_line() == b"still here\n"
        for member in (a, b, flood):
            member.close()
    finally:
        listener.immediate_stop()


@pytest.mark.timeout(60)
def test_chat_server_abrupt_disconnect_does_not_break_broadcast(running: Any) -> None:
    port = running(chat_server)
    a, b, c = join(port), join(port), join(port)
    gone = gevent.socket.create_connection(("127.0.0.1", port))
    try:
        assert gone.recv(len(chat_server.WELCOME), socket.MSG_WAITALL) == chat_server.WELCOME
        # SO_LINGER 0: close() sends a reset, as a crashed client does.
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()
        for n in range(3):
            message = f"message {n}\n".encode()
            a.write_bytes(message)
            assert b.read_line() == message
            assert c.read_line() == message
        late = join(port)
        c.write_bytes(b"still here\n")
        assert late.read_line() == b"still here\n"
        late.close()
    finally:
        for member in (a, b, c):
            member.close()


class _Member:
    """A stand-in caller for the room: records writes, or fails them."""

    def __init__(self, name: str, fail: bool = False) -> None:
        self.remote_host, self.remote_port = name, 0
        self.fail = fail
        self.received: list[bytes] = []
        self.closed = False

    def write_bytes(self, data: bytes) -> None:
        if self.fail:
            raise gtcp.WriteError("Failed to write data: Broken pipe")
        self.received.append(data)

    def close(self) -> None:
        self.closed = True


@pytest.mark.timeout(60)
def test_chat_server_failing_write_drops_only_that_member() -> None:
    room = chat_server.ChatServer()
    sender, broken = _Member("sender"), _Member("broken", fail=True)
    others = [_Member(f"m{n}") for n in range(5)]
    room.callers.update([sender, broken, *others])
    room.broadcast(sender, b"hi")
    assert all(member.received == [b"hi\n"] for member in others)
    assert sender.received == []
    assert broken.closed and broken not in room.callers
    assert room.callers == {sender, *others}


class _Room(chat_server.ChatServer):
    """The chat room, telling the test who left."""

    def __init__(self) -> None:
        super().__init__()
        self.left: Queue[gtcp.Caller] = Queue()

    def leave(self, caller: gtcp.Caller) -> None:
        super().leave(caller)
        self.left.put(caller)


@pytest.mark.timeout(60)
def test_chat_server_member_leaves_the_room_on_close() -> None:
    room = _Room()
    listener = chat_server.start("127.0.0.1", 0, room)
    try:
        a, b = join(listener.port), join(listener.port)
        assert len(room.callers) == 2
        b.close()
        gone = room.left.get(timeout=LONG)
        assert gone not in room.callers and len(room.callers) == 1
        a.close()
        assert room.left.get(timeout=LONG) is not gone
        assert room.callers == set()
    finally:
        listener.immediate_stop()
