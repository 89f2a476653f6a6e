"""One contract for every gtcp byte stream: plain TCP, TLS 1.2 and 1.3, a Unix socket, the in-memory pair.

Modelled on trio's ``check_half_closeable_stream`` (src/trio/testing/_check_streams.py): one set of
checks, run against every transport through the same small interface. A transport is a fixture
that opens a conversation: a :class:`ServerEnd` (the accepted connection as the service sees it:
its ``Caller``, and every callback recorded in order) and a client end, a :class:`ClientEnd`
around a ``gtcp.Client``, or for the in-memory pair (``gtcp.testing.connect``) a :class:`PeerEnd`
around the pair's scripted peer. Both client ends take the same calls (``write``, ``read_exactly``,
``read_until_eof``, ``send_eof``, ``close``, ``reset``), so every check of the server side runs on
all five transports. The checks of the ``Client`` API itself (its reads after EOF, after close,
after a timeout) need a ``gtcp.Client`` at the client end, which the in-memory pair has not: the
test holds a raw socket there. They are skipped for it, saying so.

The contract:

* bytes arrive in order and intact, both ways at once (large payloads in random pieces, many
  small writes);
* a write after ``close()`` raises ``ClosedError``, on either end; ``close()`` is idempotent;
* every read after the peer's EOF raises ``PeerClosedError`` (never ``b""``); the server sees the
  peer's EOF after every byte, as ``on_eof`` then ``on_close``, once each;
* a half-close (``send_eof``) lets the other direction go on, both ways;
* ``on_close`` comes last and once, after ``on_eof`` (an EOF) or ``on_error`` (a reset), or alone
  (this side closed);
* a reset is a ``PeerClosedError("Connection reset by peer")`` whose cause is the OS's
  ``ConnectionResetError``, on either end;
* concurrent writers (several greenlets) never interleave within a write, on either end;
* a read timeout raises ``ReadTimeoutError``, consumes nothing, and the stream goes on.
"""

from __future__ import annotations

import ctypes
import errno
import random
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent
import pytest
from conftest import LONG, SHORT
from gevent.event import Event
from gevent.queue import Empty, Queue
from helpers import wait_until

import gtcp
from gtcp.testing import _unread as unread  # FIONREAD: bytes in a socket's receive queue

TRANSPORTS = ["plain", "tls1.2", "tls1.3", "unix", "memory"]

#: The large payload of the duplex check, each way.
LARGE = 2 * 1024 * 1024

_libc = ctypes.CDLL(None, use_errno=True)


def _disconnect(fd: int) -> None:
    """Reset the TCP connection of socket *fd* now: ``connect(AF_UNSPEC)`` sends an RST (Linux).

    No FIN goes first, as it would with gtcp's own close (which shuts the write
    side before anything else), and the descriptor stays valid for its owner.
    """
    unspec = (ctypes.c_ubyte * 16)()  # a sockaddr whose sa_family is AF_UNSPEC (0)
    if _libc.connect(fd, unspec, len(unspec)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"connect(AF_UNSPEC): {errno.errorcode.get(code, code)}")


# -- the server end --------------------------------------------------------------------------------


class Recorder(gtcp.ConnectionService):
    """Records every callback, in order; ``at_eof(caller)`` (if set) is what ``on_eof`` does."""

    def __init__(self) -> None:
        self.events: Queue = Queue()
        self.log: list[tuple[Any, ...]] = []
        self.at_eof: Callable[[gtcp.Caller], Any] | None = None
        self.hold_next = False  # the next on_bytes blocks until released (or killed)
        self.holding = Event()
        self.release = Event()

    def _record(self, *event: Any) -> None:
        self.log.append(event)
        self.events.put(event)

    def on_bytes(self, data: bytes) -> None:
        self._record("bytes", data)
        if self.hold_next:
            self.hold_next = False
            self.holding.set()
            self.release.wait(LONG)

    def on_eof(self, caller: gtcp.Caller) -> Any:
        self._record("eof")
        return self.at_eof(caller) if self.at_eof is not None else None

    def on_error(self, err: gtcp.Error) -> None:
        self._record("error", err)

    def on_close(self) -> None:
        self._record("close")


class Accept(gtcp.Service):
    """Hands each connection a new :class:`Recorder` and passes (caller, recorder) on."""

    def __init__(self) -> None:
        self.accepted: Queue = Queue()

    def on_connect(self, caller: gtcp.Caller) -> Recorder:
        recorder = Recorder()
        self.accepted.put((caller, recorder))
        return recorder


@dataclass
class ServerEnd:
    """The accepted connection: what the service does (``caller``) and sees (``recorder``)."""

    caller: gtcp.Caller
    recorder: Recorder
    listener: gtcp.Listener
    kind: str

    def write(self, data: bytes) -> None:
        self.caller.write_bytes(data)

    def send_eof(self) -> None:
        self.caller.send_eof()

    def close(self) -> None:
        self.caller.close()

    def next_event(self) -> tuple[Any, ...]:
        try:
            return self.recorder.events.get(timeout=LONG)
        except Empty:
            raise AssertionError(f"no callback within {LONG:g} s after {self.recorder.log}") from None

    def received(self, size: int) -> bytes:
        """The next *size* bytes given to ``on_bytes`` (in however many chunks); nothing else may come."""
        got = bytearray()
        while len(got) < size:
            event = self.next_event()
            assert event[0] == "bytes" and event[1], f"expected bytes, got {event} after {len(got)}"
            got += event[1]
        assert len(got) == size
        return bytes(got)

    def wait_ended(self) -> list[tuple[Any, ...]]:
        """Wait until the connection's greenlet has ended (nothing more can be called); every callback."""
        wait_until(lambda: self.listener.stats().closed >= 1, "the connection's end")
        return self.recorder.log

    def reset(self, client: ClientEnd) -> None:
        """Reset the connection from the server's side, without gtcp's graceful close (which sends a FIN)."""
        if self.kind != "unix":
            _disconnect(self.caller._stream.gsock.fileno())
            return
        # A Unix socket resets its peer when it is closed with unread data: hold the connection in a
        # callback, let bytes wait behind it, and close it at once (immediate_stop: no draining).
        self.recorder.hold_next = True
        client.write(b"h")
        assert self.recorder.holding.wait(LONG)
        client.write(b"unread")
        fd = self.caller._stream.gsock.fileno()
        wait_until(lambda: unread(fd) == len(b"unread"), "bytes waiting behind the held callback")
        stopper = gevent.spawn(self.listener.immediate_stop)
        wait_until(lambda: self.caller.closed, "the stop to close the stream")
        self.recorder.release.set()  # the callback returns; the descriptor is closed, the bytes unread
        stopper.get(timeout=LONG)


# -- the client ends -------------------------------------------------------------------------------


class ClientEnd:
    """A ``gtcp.Client``, the client end of every transport but the in-memory pair."""

    gtcp = True

    def __init__(self, client: gtcp.Client, kind: str) -> None:
        self.client = client
        self.kind = kind

    def write(self, data: bytes) -> None:
        self.client.write_bytes(data)

    def read_exactly(self, size: int) -> bytes:
        return self.client.read_exactly(size)

    def read_until_eof(self) -> bytes:
        got = bytearray()
        while True:
            try:
                chunk = self.client.read_bytes()
            except gtcp.PeerClosedError as exc:
                assert str(exc) == "Connection closed by the server.", exc
                return bytes(got)
            assert chunk, "a read returned b''"
            got += chunk

    def send_eof(self) -> None:
        self.client.send_eof()

    def close(self) -> None:
        self.client.close()

    def reset(self, server: ServerEnd) -> None:
        """Reset the connection from the client's side: an RST (Unix socket: a close with unread data)."""
        gsock = self.client._stream.gsock
        if self.kind == "unix":
            server.write(b"unread")
            wait_until(lambda: unread(gsock.fileno()) > 0, "bytes the client will not read")
            gsock.close()  # under gtcp's feet: no shutdown first
        else:
            _disconnect(gsock.fileno())
        self.client.close()


class PeerEnd:
    """The in-memory pair's client end: its scripted peer (the test's own socket, not a gtcp stream)."""

    gtcp = False
    kind = "memory"

    def __init__(self, pair: gtcp.testing.ConnectionPair) -> None:
        self.pair = pair
        self.peer = pair.peer

    def write(self, data: bytes) -> None:
        self.peer.send(data)

    def read_exactly(self, size: int) -> bytes:
        return self.peer.read_exactly(size, timeout=LONG)

    def read_until_eof(self) -> bytes:
        return self.peer.read_until_eof(timeout=LONG)

    def send_eof(self) -> None:
        self.peer.half_close()

    def close(self) -> None:
        self.peer.close()

    def reset(self, server: ServerEnd) -> None:
        self.pair.reset()


Conversation = tuple[Any, ServerEnd]


@pytest.fixture(params=TRANSPORTS)
def converse(request, gtcp_listener, gtcp_client, gtcp_pair,
             gtcp_tls) -> Iterator[Callable[..., Conversation]]:
    """``converse(**client_options)``: a new connection on this transport, ``(client end, server end)``."""
    kind = request.param
    directories: list[str] = []

    def open_conversation(**client_options: Any) -> Conversation:
        client_options.setdefault("timeout", LONG)
        service = Accept()
        if kind == "memory":
            pair = gtcp_pair(service)
            caller, recorder = service.accepted.get(timeout=LONG)
            return PeerEnd(pair), ServerEnd(caller, recorder, pair.listener, kind)
        if kind == "unix":
            directory = tempfile.mkdtemp(prefix="gtcp-")  # short: a socket path has 108 bytes at most
            directories.append(directory)
            path = f"{directory}/s"
            listener = gtcp.Listener.unix(path)
            listener.attach(service)
            listener.start()
            gtcp_listener.listeners.append(listener)  # stopped at teardown with the others
            client = gtcp.Client.unix(path, **client_options)
            gtcp_client.clients.append(client)
        else:
            options: dict[str, Any] = {}
            if kind.startswith("tls"):
                version = "TLSv" + kind[3:]
                options["secure_socket"] = gtcp_tls.listener
                client_options["secure_socket"] = gtcp_tls.client_secure_socket(
                    protocol=gtcp.ProtocolConfig(gtcp.Protocol.TLS, (version,)))
            listener = gtcp_listener(service, **options)
            client = gtcp_client(listener, **client_options)
            if kind.startswith("tls"):
                assert client.tls is not None and client.tls.version == version
        caller, recorder = service.accepted.get(timeout=LONG)
        return ClientEnd(client, kind), ServerEnd(caller, recorder, listener, kind)

    yield open_conversation
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


def _needs_a_gtcp_client(client: Any) -> None:
    if not client.gtcp:
        pytest.skip("the in-memory pair's client end is the test's own scripted socket, not a gtcp.Client")


def _pieces(data: bytes, seed: int, largest: int = 16384) -> Iterator[bytes]:
    """*data* cut into random pieces of 1 to *largest* bytes (trio's duplex check)."""
    rng = random.Random(seed)
    view = memoryview(data)
    while view:
        size = rng.randint(1, largest)
        yield bytes(view[:size])
        view = view[size:]


def _runs(data: bytes, size: int) -> list[bytes]:
    return [data[start:start + size] for start in range(0, len(data), size)]


# -- bytes -----------------------------------------------------------------------------------------


def test_large_payloads_arrive_in_order_and_intact_both_ways_at_once(converse):
    client, server = converse()
    up = random.Random(1).randbytes(LARGE)
    down = random.Random(2).randbytes(LARGE)

    def send(end: Any, data: bytes, seed: int) -> None:
        for piece in _pieces(data, seed):
            end.write(piece)

    senders = [gevent.spawn(send, client, up, 3), gevent.spawn(send, server, down, 4)]
    downstream = gevent.spawn(client.read_exactly, LARGE)
    assert server.received(LARGE) == up
    assert downstream.get(timeout=LONG) == down
    gevent.joinall(senders, raise_error=True, timeout=LONG)
    assert all(sender.successful() for sender in senders)


def test_many_small_writes_arrive_in_order(converse):
    client, server = converse()
    rng = random.Random(5)
    pieces = [rng.randbytes(rng.randint(1, 40)) for _ in range(2000)]
    for piece in pieces:
        client.write(piece)
    assert server.received(sum(map(len, pieces))) == b"".join(pieces)
    reader = gevent.spawn(client.read_exactly, sum(map(len, pieces)))  # a Unix socket holds few small writes
    for piece in pieces:
        server.write(piece)
    assert reader.get(timeout=LONG) == b"".join(pieces)


def test_concurrent_writers_never_interleave_within_a_write(converse):
    client, server = converse()
    size = 1024 * 1024  # more than a socket buffer takes at once: each write waits, and others could cut in
    blocks = [bytes([65 + i]) * size for i in range(4)]
    for writer, read in ((server, client.read_exactly), (client, server.received)):
        if writer is client and not client.gtcp:
            continue  # the scripted peer is the test's socket: its concurrent writes are not gtcp's to order
        reader = gevent.spawn(read, len(blocks) * size)
        writers = [gevent.spawn(writer.write, block) for block in blocks]
        gevent.joinall(writers, raise_error=True, timeout=LONG)
        runs = _runs(reader.get(timeout=LONG), size)
        assert sorted(runs) == sorted(blocks), [run[:1] + b"..." for run in runs]  # each write whole


# -- closing ---------------------------------------------------------------------------------------


def test_server_write_after_close_raises_ClosedError_and_close_is_idempotent(converse):
    client, server = converse()
    server.close()
    server.close()
    for operation in (lambda: server.write(b"late"), server.send_eof):
        with pytest.raises(gtcp.ClosedError, match=r"^Socket connection already closed\.$"):
            operation()
    assert server.caller.closed
    assert client.read_until_eof() == b""  # the client sees the close as an EOF
    client.close()  # (which ends the server's lingering close at once)
    assert server.wait_ended() == [("close",)]  # on_close once, alone: no on_eof, no on_error


def test_client_write_after_close_raises_ClosedError_and_close_is_idempotent(converse):
    client, server = converse()
    _needs_a_gtcp_client(client)
    client.close()
    client.close()
    assert client.client.closed
    operations = (lambda: client.write(b"late"), client.client.read_bytes, client.send_eof,
                  lambda: client.client.read_exactly(1))
    for operation in operations:
        with pytest.raises(gtcp.ClosedError, match=r"^Socket connection already closed\.$"):
            operation()
    assert server.wait_ended() == [("eof",), ("close",)]


def test_client_reads_after_the_servers_EOF_raise_PeerClosedError_every_time(converse):
    client, server = converse()
    _needs_a_gtcp_client(client)
    server.write(b"last words")
    server.close()
    assert client.read_exactly(len(b"last words")) == b"last words"
    reads = (client.client.read_bytes, lambda: client.client.read_exactly(1), client.client.read_line)
    for read in [*reads, *reads]:
        with pytest.raises(gtcp.PeerClosedError, match=r"^Connection closed by the server\.$"):
            read()  # never b"", every time
    client.write(b"more")  # a client that read EOF may still write (the peer may only have half-closed)


def test_server_sees_the_clients_EOF_after_every_byte_once(converse):
    client, server = converse()
    client.write(b"all of it")
    client.send_eof()
    assert server.received(len(b"all of it")) == b"all of it"
    assert server.next_event() == ("eof",)
    assert server.next_event() == ("close",)
    log = server.wait_ended()
    assert [event[0] for event in log].count("eof") == 1 and log[-1] == ("close",)
    assert all(event[1] for event in log if event[0] == "bytes")  # never an empty chunk


# -- half-close ------------------------------------------------------------------------------------


def test_after_the_clients_send_eof_the_server_still_answers(converse):
    client, server = converse()
    answer = random.Random(6).randbytes(512 * 1024)

    def at_eof(caller: gtcp.Caller) -> bytes:
        caller.write_bytes(answer)  # written after the client's EOF...
        return b"done"  # ...and on_eof's reply after it

    server.recorder.at_eof = at_eof
    client.write(b"question")
    client.send_eof()
    if client.gtcp:
        client.send_eof()  # a second one does nothing
        with pytest.raises(gtcp.ClosedError):
            client.write(b"more")
    assert client.read_until_eof() == answer + b"done"
    assert server.wait_ended() == [("bytes", b"question"), ("eof",), ("close",)]


def test_after_the_servers_send_eof_the_client_still_writes(converse):
    client, server = converse()
    server.write(b"that was all")
    server.send_eof()
    server.send_eof()  # a second one does nothing
    with pytest.raises(gtcp.ClosedError):
        server.write(b"more")
    assert client.read_until_eof() == b"that was all"
    assert not server.caller.closed  # only half-closed: still reading
    payload = random.Random(7).randbytes(512 * 1024)
    client.write(payload)
    assert server.received(len(payload)) == payload
    client.close()
    assert server.next_event() == ("eof",)
    assert server.next_event() == ("close",)


# -- resets ----------------------------------------------------------------------------------------


def _is_reset(error: BaseException) -> None:
    assert type(error) is gtcp.PeerClosedError, repr(error)
    assert str(error) == "Connection reset by peer"  # the OS's own words (strerror(ECONNRESET))
    assert isinstance(error.__cause__, ConnectionResetError) and error.__cause__.errno == errno.ECONNRESET


def test_a_reset_by_the_client_reaches_on_error_then_on_close(converse):
    client, server = converse()
    client.write(b"before")
    assert server.received(len(b"before")) == b"before"
    client.reset(server)
    event = server.next_event()
    assert event[0] == "error", event
    _is_reset(event[1])
    assert server.next_event() == ("close",)
    assert server.wait_ended() == [("bytes", b"before"), event, ("close",)]  # no on_eof after a reset


def test_a_reset_by_the_server_is_PeerClosedError_on_every_client_read(converse):
    client, server = converse()
    _needs_a_gtcp_client(client)
    server.reset(client)
    for _ in range(3):
        with pytest.raises(gtcp.PeerClosedError) as info:
            client.client.read_bytes()
        _is_reset(info.value)


# -- timeouts --------------------------------------------------------------------------------------


def test_a_read_timeout_raises_consumes_nothing_and_the_stream_goes_on(converse):
    client, server = converse(timeout=SHORT)
    _needs_a_gtcp_client(client)
    with pytest.raises(gtcp.ReadTimeoutError, match=r"^Read timed out$"):
        client.client.read_bytes()
    server.write(b"ab")
    with pytest.raises(gtcp.ReadTimeoutError):
        client.client.read_exactly(3)  # two of three came: nothing is consumed
    server.write(b"c")
    assert client.client.read_exactly(3) == b"abc"
    client.write(b"still here")
    assert server.received(len(b"still here")) == b"still here"
    assert not client.client.closed and not server.caller.closed


def test_the_transports_are_what_they_say(converse, request):
    _, server = converse()
    kind = request.node.callspec.params["converse"]
    sock = server.caller._stream.gsock
    assert sock.family == (socket.AF_UNIX if kind in ("unix", "memory") else socket.AF_INET)
    tls = server.caller.tls
    if kind.startswith("tls"):
        assert tls is not None and tls.version == "TLSv" + kind[3:]
    else:
        assert tls is None
