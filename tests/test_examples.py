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
from gevent.event import AsyncResult, Event
from gevent.queue import Queue
from helpers import load_example

import gtcp

#: Seconds something that must happen may take (loopback: it takes ms).
LONG = 10.0




echo_server = load_example("echo_server")
echo_client = load_example("echo_client")
http_over_tcp = load_example("http_over_tcp")
chat_server = load_example("chat_server")


@pytest.fixture(autouse=True)
def _gevent_deadline() -> Iterator[None]:
    """A readable failure before pytest-timeout's backstop."""
    with gevent.Timeout(45, AssertionError("test ran over 45 s")):
        yield


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


def read_exactly(reader: gtcp.Client, size: int) -> bytes:
    """Read until *size* bytes came, in as many reads as it takes."""
    data = b""
    while len(data) < size:
        data += reader.read_bytes()
    return data


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
        assert read_exactly(c, 10) == b"hello echo"
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


@pytest.mark.timeout(60)
def test_http_over_tcp_waits_for_the_whole_body() -> None:
    listener = http_over_tcp.start("127.0.0.1", 0)
    try:
        with client(listener.port) as c:
            c.write_bytes(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n01234")
            c.write_bytes(b"56789")
            reply = http_over_tcp.read_response(c)
    finally:
        listener.immediate_stop()
    assert reply.startswith(b"HTTP/1.1 200 Ok\r\n")
    assert reply.endswith(b"\r\n\r\n0123456789")


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
    assert read_exactly(member, len(chat_server.WELCOME)) == chat_server.WELCOME
    return member


@pytest.mark.timeout(60)
def test_chat_server_message_reaches_every_other_member(running: Any) -> None:
    port = running(chat_server)
    a, b, c = join(port), join(port), join(port)
    try:
        a.write_bytes(b"hello from a\n")
        assert read_exactly(b, 13) == b"hello from a\n"
        assert read_exactly(c, 13) == b"hello from a\n"
        # The sender does not get its own message: the next bytes it reads
        # are what someone else sent.
        b.write_bytes(b"hi a\n")
        assert read_exactly(a, 5) == b"hi a\n"
        assert read_exactly(c, 5) == b"hi a\n"
    finally:
        for member in (a, b, c):
            member.close()


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
            assert read_exactly(b, len(message)) == message
            assert read_exactly(c, len(message)) == message
        late = join(port)
        c.write_bytes(b"still here\n")
        assert read_exactly(late, 11) == b"still here\n"
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
    assert all(member.received == [b"hi"] for member in others)
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
    listener = gtcp.Listener(0, local_host="127.0.0.1")
    listener.attach(room)
    listener.start()
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
