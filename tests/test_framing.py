"""Framing (README, Messages: framing): codecs, the listener's per-frame delivery, the client's reads."""

from __future__ import annotations

import logging
import struct
from typing import Any

import gevent
import pytest
from conftest import LONG
from gevent.event import Event
from gevent.queue import Queue
from helpers import ROOT, child_env, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

import gtcp
from gtcp._io import Stream

# -- codecs, without sockets ------------------------------------------------------


def decode_all(codec: Any, pieces: list[bytes]) -> tuple[list[Any], bytes]:
    """Feed *pieces* one by one into a buffer as the stream does; the frames and what is left."""
    buf = bytearray()
    start = 0
    frames = []
    for piece in pieces:
        buf += piece
        while True:
            found = codec.decode(bytes(buf) if len(frames) % 2 else buf, start)
            if found is None:
                break
            frame, start = found
            frames.append(frame)
    return frames, bytes(buf[start:])


CODECS = [
    gtcp.Lines(),
    gtcp.Lines(ending=b"\r\n"),
    gtcp.Delimited(b"\r\n\r\n"),
    gtcp.Delimited(b"\x00"),
    gtcp.LengthPrefixed(),
    gtcp.LengthPrefixed(header_size=1),
    gtcp.LengthPrefixed(header_size=2, byteorder="little"),
    gtcp.LengthPrefixed(header_size=8),
]

FRAMES = [b"hello", b"", b"x" * 200, b"a\rb", b"\r", b"last one"]


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_codec_frames_split_at_every_byte_boundary(codec):
    sent = [f for f in FRAMES if not (isinstance(codec, gtcp.Lines) and f.endswith(b"\r"))]
    wire = b"".join(codec.encode(frame) for frame in sent)
    for cut in range(len(wire) + 1):
        frames, rest = decode_all(codec, [wire[:cut], wire[cut:]])
        assert frames == sent and rest == b"", cut
    frames, rest = decode_all(codec, [bytes([b]) for b in wire])  # one byte at a time
    assert frames == sent and rest == b""


@settings(max_examples=60, deadline=None)
@given(frames=st.lists(st.binary(max_size=300), max_size=20), data=st.data())
def test_codec_any_frames_any_split(frames, data):
    codec = data.draw(st.sampled_from([gtcp.LengthPrefixed(), gtcp.LengthPrefixed(header_size=2),
                                       gtcp.Delimited(b"\r\n"), gtcp.Lines()]))
    if isinstance(codec, gtcp.Delimited):
        frames = [f.replace(b"\r\n", b"") for f in frames]
        frames = [f[:-1] if f.endswith(b"\r") else f for f in frames]
    if isinstance(codec, gtcp.Lines):
        frames = [f.replace(b"\n", b"").rstrip(b"\r") for f in frames]
    wire = b"".join(codec.encode(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    got, rest = decode_all(codec, pieces)
    assert got == frames and rest == b""


def test_Lines_strips_one_cr_and_counts_max_length_without_ending():
    codec = gtcp.Lines(max_length=3)
    assert codec.decode(b"abc\r\n", 0) == (b"abc", 5)
    assert codec.decode(b"abc\n", 0) == (b"abc", 4)
    assert codec.decode(b"ab\r\r\n", 0) == (b"ab\r", 5)
    assert codec.decode(b"abc\r", 0) is None  # the \n may still come
    with pytest.raises(gtcp.FrameTooLongError, match=r"max_length \(3 bytes\)"):
        codec.decode(b"abcd\n", 0)
    with pytest.raises(gtcp.FrameTooLongError):
        codec.decode(b"abcde", 0)  # no newline within reach: raised before it comes
    assert codec.encode(b"ab") == b"ab\n"
    assert gtcp.Lines(ending=b"\r\n").encode(b"ab") == b"ab\r\n"


def test_Delimited_max_length_counts_the_frame_only():
    codec = gtcp.Delimited(b"--", max_length=2)
    assert codec.decode(b"ab--", 0) == (b"ab", 4)
    assert codec.decode(b"ab-", 0) is None
    with pytest.raises(gtcp.FrameTooLongError) as info:
        codec.decode(b"abc-", 0)
    assert info.value.limit == 2


def test_LengthPrefixed_raises_as_soon_as_a_header_announces_too_much():
    codec = gtcp.LengthPrefixed(max_length=10)
    announced = r"11 bytes announced, more than max_length \(10 bytes\)"
    with pytest.raises(gtcp.FrameTooLongError, match=announced):
        codec.decode(struct.pack(">I", 11), 0)  # the header alone: no payload buffered
    assert codec.decode(struct.pack(">I", 10) + b"x" * 9, 0) is None
    with pytest.raises(gtcp.FrameTooLongError, match="1-byte length header"):
        gtcp.LengthPrefixed(header_size=1).encode(b"x" * 256)
    assert gtcp.LengthPrefixed(header_size=1).encode(b"x" * 255)[:1] == b"\xff"


def test_FixedSize_decodes_and_checks_encoded_size():
    codec = gtcp.FixedSize(3)
    assert decode_all(codec, [b"abcdefg"]) == ([b"abc", b"def"], b"g")
    with pytest.raises(ValueError, match="must be 3 bytes, got 2"):
        codec.encode(b"ab")


def test_codecs_refuse_frames_that_would_split():
    with pytest.raises(ValueError, match="must not contain"):
        gtcp.Lines().encode(b"a\nb")
    with pytest.raises(ValueError, match="must not contain the delimiter"):
        gtcp.Delimited(b";").encode(b"a;b")
    with pytest.raises(ValueError, match="nor end with"):
        gtcp.Lines().encode(b"a\r")
    with pytest.raises(TypeError, match="not str"):
        gtcp.Lines().encode("text")


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: gtcp.Lines(max_length=0), "max_length"),
        (lambda: gtcp.Lines(ending=b"\r"), "ending"),
        (lambda: gtcp.Delimited(b""), "delimiter"),
        (lambda: gtcp.Delimited("x"), "delimiter"),
        (lambda: gtcp.LengthPrefixed(header_size=3), "header_size"),
        (lambda: gtcp.LengthPrefixed(byteorder="middle"), "byteorder"),
        (lambda: gtcp.LengthPrefixed(max_length=-1), "max_length"),
        (lambda: gtcp.FixedSize(0), "size"),
        (lambda: gtcp.FixedSize(True), "size"),
    ],
)
def test_codecs_are_validated_when_built(build, field):
    with pytest.raises(gtcp.ConfigError, match=field):
        build()


def test_codecs_are_frozen_and_compare_by_value():
    codec = gtcp.Lines()
    with pytest.raises(AttributeError):
        codec.max_length = 5  # type: ignore[misc]
    assert gtcp.LengthPrefixed() == gtcp.LengthPrefixed(header_size=4)
    assert isinstance(codec, gtcp.Codec)


def test_framing_option_rejects_what_is_not_a_codec():
    with pytest.raises(gtcp.ConfigError, match="framing must be a codec"):
        gtcp.Listener(0, framing=b"\n")
    with pytest.raises(gtcp.ConfigError, match="not the class Lines"):
        gtcp.Listener(0, framing=gtcp.Lines)


# -- a user codec, as the README shows it ------------------------------------------


class NetstringError(gtcp.Error):
    """Not a netstring."""


class Netstring(gtcp.Codec):             # b"5:hello,"  (the README's example, verbatim)
    max_length = 65536                   # gtcp's buffer backstop reads it too

    def decode(self, buffer, start):     # buffer: bytes or bytearray; read it, never keep or change it
        colon = buffer.find(b":", start, start + 7)
        if colon < 0:
            if len(buffer) - start > 6:
                raise NetstringError("netstring length is not 1 to 6 digits")
            return None                  # need more bytes
        digits = buffer[start:colon]
        if not digits.isdigit():         # a gtcp.Error subclass: goes to on_error
            raise NetstringError(f"netstring length {bytes(digits)!r} is not a number")
        if int(digits) > self.max_length:
            raise gtcp.FrameTooLongError(f"Frame too long: more than max_length ({self.max_length} bytes)")
        end = colon + 1 + int(digits)
        if len(buffer) < end + 1:
            return None
        if buffer[end] != ord(","):
            raise NetstringError("netstring must end with ','")
        return bytes(buffer[colon + 1:end]), end + 1             # (frame, offset just past it)

    def encode(self, frame):
        return b"%d:%s," % (len(frame), frame)


def test_readme_codec_example_is_the_tested_one():
    readme = (ROOT / "README.md").read_text()
    source = _source_of(Netstring).split("  (the README")[0]
    assert source in readme
    body = _source_of(Netstring).split("\n", 1)[1]
    assert body in readme


def _source_of(obj: Any) -> str:
    import inspect

    return inspect.getsource(obj)


# -- TLS or not ------------------------------------------------------------------


@pytest.fixture(params=["plain", "tls"])
def tls(request, gtcp_tls):
    """(listener options, client options) for plain TCP or TLS (the plugin's TLS kit)."""
    if request.param == "plain":
        return {}, {}
    return {"secure_socket": gtcp_tls.listener}, {"secure_socket": gtcp_tls.client}


class Recorder(gtcp.ConnectionService):
    """Calls *reply(caller, frame)* per frame; records frames, errors and the close."""

    def __init__(self, reply=None) -> None:
        self.frames: Queue = Queue()
        self.errors: list[gtcp.Error] = []
        self.closed = Event()
        self.reply = reply or (lambda caller, frame: frame)

    def on_bytes(self, caller, data):
        self.frames.put(data)
        return self.reply(caller, data)

    def on_error(self, err):
        self.errors.append(err)

    def on_close(self):
        self.closed.set()


class One(gtcp.Service):
    """The same Recorder for every connection (the tests open one)."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.callers: Queue = Queue()

    def on_connect(self, caller):
        self.callers.put(caller)
        return self.service


def _client(listener: gtcp.Listener, copts: dict[str, Any], **options: Any) -> gtcp.Client:
    options.setdefault("timeout", LONG)
    return gtcp.Client("127.0.0.1", listener.port, **copts, **options)


# -- the listener --------------------------------------------------------------------


def test_Listener_framing_delivers_whole_frames_and_encodes_replies(gtcp_listener, tls):
    lopts, copts = tls
    rec = Recorder(lambda caller, frame: frame.upper())
    listener = gtcp_listener(One(rec), framing=gtcp.Lines(), **lopts)
    with _client(listener, copts) as client:
        client.write_bytes(b"one\r\ntw")
        assert client.read_line() == b"ONE\n"
        client.write_bytes(b"o\n\nthree\n")
        assert [client.read_line() for _ in range(3)] == [b"TWO\n", b"\n", b"THREE\n"]
    frames = [rec.frames.get(timeout=LONG) for _ in range(4)]
    assert frames == [b"one", b"two", b"", b"three"]
    assert all(type(f) is bytes for f in frames)
    assert rec.closed.wait(LONG) and rec.errors == []


class CountingSocket:
    """The raw socket under a server stream, with its sends recorded."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.sends: list[bytes] = []

    def send(self, data: Any) -> int:
        sent = self._raw.send(data)
        self.sends.append(bytes(memoryview(data).cast("B")[:sent]))
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def test_Listener_pipelined_replies_are_coalesced_in_order_with_caller_writes(gtcp_listener, tls):
    lopts, copts = tls

    def reply(caller, frame):
        if frame == b"w":
            caller.write_bytes(b"direct\n")
        return b"r" + frame

    listener = gtcp_listener(One(Recorder(reply)), framing=gtcp.Lines(), **lopts)
    with _client(listener, copts) as client:
        client.write_bytes(b"ready\n")
        assert client.read_line() == b"rready\n"
        (conn,) = listener._run.connections
        spy = conn.stream._raw = CountingSocket(conn.stream._raw)
        payload = b"".join(b"%d\n" % i for i in range(50)) + b"w\n" + b"x\n"
        client.write_bytes(payload)
        expected = b"".join(b"r%d\n" % i for i in range(50)) + b"direct\nrw\nrx\n"
        assert client.read_exactly(len(expected)) == expected
    # Everything up to the direct write went out with it, the rest in one more send
    # (the client's payload could arrive in two reads: allow one more).
    assert len(spy.sends) <= 3, [len(s) for s in spy.sends]
    if not lopts:
        assert b"".join(spy.sends) == expected


def test_Listener_reply_is_not_delayed_by_an_incomplete_frame(gtcp_listener, tls):
    lopts, copts = tls
    listener = gtcp_listener(One(Recorder()), framing=gtcp.Lines(), **lopts)
    with _client(listener, copts) as client:
        client.write_bytes(b"a\nb\nhalf-a-li")
        assert client.read_exactly(4) == b"a\nb\n"  # before the rest of the line exists
        client.write_bytes(b"ne\n")
        assert client.read_line() == b"half-a-line\n"


def test_Listener_switching_framing_mid_connection_decodes_buffered_bytes(gtcp_listener, tls):
    lopts, copts = tls

    def reply(caller, frame):
        if caller.framing == gtcp.Lines() and frame.startswith(b"BIN "):
            caller.framing = gtcp.FixedSize(int(frame[4:]))  # the body may be read already
            return None
        if isinstance(caller.framing, gtcp.FixedSize):
            caller.framing = gtcp.Lines()
            caller.write_frame(b"body follows")
            return frame.hex().encode()  # encoded by Lines, in effect when this returns
        return frame

    rec = Recorder(reply)
    listener = gtcp_listener(One(rec), framing=gtcp.Lines(), **lopts)
    with _client(listener, copts) as client:
        client.write_bytes(b"BIN 5\n\x00\n\x01\x02\x03after\n")  # header, binary body, a line: one write
        assert client.read_line() == b"body follows\n"
        assert client.read_line() == b"000a010203\n"
        assert client.read_line() == b"after\n"
    assert rec.closed.wait(LONG) and rec.errors == []
    assert [rec.frames.get(timeout=LONG) for _ in range(3)] == [b"BIN 5", b"\x00\n\x01\x02\x03", b"after"]


def test_Listener_reply_is_encoded_with_the_codec_in_effect_when_on_bytes_returns(gtcp_listener):
    def reply(caller, frame):
        caller.framing = gtcp.LengthPrefixed(header_size=1)
        return frame

    listener = gtcp_listener(One(Recorder(reply)), framing=gtcp.Lines())
    with _client(listener, {}) as client:
        client.write_bytes(b"abc\n")
        assert client.read_exactly(4) == b"\x03abc"


def test_Listener_framing_switched_to_none_delivers_buffered_bytes_raw(gtcp_listener):
    def reply(caller, frame):
        if frame == b"RAW":
            caller.framing = None
        return None

    rec = Recorder(reply)
    listener = gtcp_listener(One(rec), framing=gtcp.Lines())
    with _client(listener, {}) as client:
        client.write_bytes(b"RAW\nraw\nbytes")
        assert rec.frames.get(timeout=LONG) == b"RAW"
        got = b""
        while got != b"raw\nbytes":
            got += rec.frames.get(timeout=LONG)


def test_Listener_write_frame_without_framing_raises(gtcp_listener):
    errors: Queue = Queue()

    def reply(caller, frame):
        try:
            caller.write_frame(b"x")
        except gtcp.Error as exc:
            errors.put(exc)

    listener = gtcp_listener(One(Recorder(reply)))
    with _client(listener, {}) as client:
        client.write_bytes(b"go")
        err = errors.get(timeout=LONG)
    assert type(err) is gtcp.Error and "needs framing" in str(err)


def test_Listener_frame_too_long_goes_to_on_error_after_earlier_replies(gtcp_listener, tls):
    lopts, copts = tls
    rec = Recorder()
    listener = gtcp_listener(One(rec), framing=gtcp.Lines(max_length=10), **lopts)
    with _client(listener, copts) as client:
        client.write_bytes(b"short\n" + b"y" * 11 + b"\n")
        assert client.read_line() == b"short\n"
        with pytest.raises(gtcp.PeerClosedError):
            client.read_bytes()
    assert rec.closed.wait(LONG)
    assert len(rec.errors) == 1 and type(rec.errors[0]) is gtcp.FrameTooLongError
    assert str(rec.errors[0]) == "Frame too long: more than max_length (10 bytes)"


def test_Listener_eof_mid_frame_reports_the_partial_bytes(gtcp_listener, tls):
    lopts, copts = tls
    rec = Recorder()
    listener = gtcp_listener(One(rec), framing=gtcp.LengthPrefixed(), **lopts)
    with _client(listener, copts) as client:
        client.write_bytes(struct.pack(">I", 10) + b"12345")
    assert rec.closed.wait(LONG)
    (err,) = rec.errors
    assert type(err) is gtcp.PeerClosedError
    assert err.partial == struct.pack(">I", 10) + b"12345"
    assert str(err) == "Connection closed by the server. 9 byte(s) of an incomplete frame were left."


def test_Listener_eof_between_frames_is_a_clean_end(gtcp_listener, tls):
    lopts, copts = tls
    rec = Recorder()
    listener = gtcp_listener(One(rec), framing=gtcp.Lines(), **lopts)
    with _client(listener, copts) as client:
        client.write_bytes(b"a\n")
        assert client.read_line() == b"a\n"
    assert rec.closed.wait(LONG) and rec.errors == []


@pytest.mark.gtcp_expect_callback_errors("cannot encode")
def test_Listener_reply_the_codec_cannot_encode_is_logged_and_closes(gtcp_listener, gtcp_log):
    rec = Recorder(lambda caller, frame: b"two\nlines")
    listener = gtcp_listener(One(rec), framing=gtcp.Lines())
    with _client(listener, {}) as client:
        client.write_bytes(b"x\n")
        with pytest.raises(gtcp.PeerClosedError):
            client.read_bytes()
    assert rec.closed.wait(LONG)
    assert "cannot encode" in gtcp_log.text


def test_Listener_custom_codec_from_the_readme(gtcp_listener):
    listener = gtcp_listener(One(Recorder(lambda caller, frame: frame[::-1])), framing=Netstring())
    with _client(listener, {}, framing=Netstring()) as client:
        client.write_bytes(b"5:hello,3:a")
        client.write_bytes(b"bc,")
        assert client.read_frame() == b"olleh"
        assert client.read_frame() == b"cba"


def test_Listener_codec_protocol_error_goes_to_on_error(gtcp_listener):
    rec = Recorder()
    listener = gtcp_listener(One(rec), framing=Netstring())
    with _client(listener, {}, framing=Netstring()) as client:
        client.write_bytes(b"2:ok,3:abcX")
        assert client.read_frame() == b"ok"
        with pytest.raises(gtcp.PeerClosedError):
            client.read_frame()
    assert rec.closed.wait(LONG)
    (err,) = rec.errors
    assert type(err) is NetstringError and str(err) == "netstring must end with ','"


def test_Listener_framing_is_per_connection_state(gtcp_listener):
    """Switching one connection's framing leaves the listener's and other connections' alone."""
    def reply(caller, frame):
        if frame == b"switch":
            caller.framing = gtcp.Delimited(b";")
        return frame

    listener = gtcp_listener(One(Recorder(reply)), framing=gtcp.Lines())
    with _client(listener, {}) as first, _client(listener, {}) as second:
        first.write_bytes(b"switch\na;")
        assert first.read_exactly(9) == b"switch;a;"  # the reply to "switch" already uses ";"
        second.write_bytes(b"b;\n")
        assert second.read_line() == b"b;\n"


def test_Listener_frames_split_at_every_byte_boundary(gtcp_listener, tls):
    """The server sees each split (it has read the first part before the second is sent)."""
    lopts, copts = tls
    service = One(Recorder())
    codec = gtcp.LengthPrefixed(header_size=2)
    listener = gtcp_listener(service, framing=codec, **lopts)
    wire = codec.encode(b"frame-one") + codec.encode(b"2")
    with _client(listener, copts) as client:
        client.write_bytes(b"\x00\x00")  # an empty frame, so that the connection is up
        assert client.read_exactly(2) == b"\x00\x00"
        (conn,) = listener._run.connections
        for cut in range(1, len(wire)):
            client.write_bytes(wire[:cut])
            left = _pending(wire, cut, codec)
            wait_until(lambda left=left: conn.stream.reading and conn.stream.buffered == left)
            client.write_bytes(wire[cut:])
            assert client.read_exactly(len(wire)) == wire, cut


def _pending(wire: bytes, cut: int, codec: Any) -> int:
    return len(decode_all(codec, [wire[:cut]])[1])


# -- the client ----------------------------------------------------------------------


class RawServer:
    """A listening socket whose one accepted connection the test drives by hand."""

    def __init__(self) -> None:
        self.sock = gevent.socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]

    def client(self, **options: Any) -> tuple[gtcp.Client, Any]:
        options.setdefault("timeout", LONG)
        client = gtcp.Client("127.0.0.1", self.port, **options)
        conn, _ = self.sock.accept()
        return client, conn

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_server():
    server = RawServer()
    yield server
    server.close()


def test_Client_reads_share_one_buffer(raw_server):
    client, conn = raw_server.client(framing=gtcp.LengthPrefixed(header_size=1))
    with client:
        conn.sendall(b"line one\r\nrest\x03abc" + b"XYZ" + b"tail;more")
        assert client.read_line() == b"line one\r\n"
        assert client.read_exactly(4) == b"rest"
        assert client.read_frame() == b"abc"
        assert client.read_until(b"Z") == b"XYZ"
        assert client.read_until(b";") == b"tail;"
        assert client.read_bytes() == b"more"
        client.write_frame(b"hi")
        assert conn.recv(10) == b"\x02hi"
    conn.close()


def test_Client_read_frame_without_framing_raises(raw_server):
    client, conn = raw_server.client()
    with client:
        with pytest.raises(gtcp.Error, match="needs framing"):
            client.read_frame()
        with pytest.raises(gtcp.Error, match="needs framing"):
            client.write_frame(b"x")
    conn.close()


def test_Client_one_deadline_per_call_and_nothing_consumed_on_timeout(raw_server):
    client, conn = raw_server.client(timeout=0.5)
    stop = Event()

    def dribble():  # a byte every 50 ms: per-read deadlines would never expire
        while not stop.is_set():
            conn.sendall(b"x")
            stop.wait(0.05)

    pusher = gevent.spawn(dribble)
    try:
        with pytest.raises(gtcp.ReadTimeoutError):
            client.read_exactly(10_000)
        with pytest.raises(gtcp.ReadTimeoutError):
            client.read_line()
    finally:
        stop.set()
        pusher.join()
    got = b""
    conn.sendall(b"\n")
    line = client.read_line()  # every byte that came is still there
    got = line
    assert set(got[:-1]) == {ord("x")} and len(got) > 10 and got.endswith(b"\n")
    client.close()
    conn.close()


def test_Client_frame_too_long_consumes_nothing_and_client_stays_open(raw_server):
    client, conn = raw_server.client()
    with client:
        conn.sendall(b"0123456789abc\n")
        with pytest.raises(gtcp.FrameTooLongError, match=r"max_length \(5 bytes\)"):
            client.read_line(max_length=5)
        with pytest.raises(gtcp.FrameTooLongError):
            client.read_until(b"c", max_length=5)
        assert client.read_line() == b"0123456789abc\n"
    conn.close()


def test_Client_eof_mid_frame_carries_partial_then_plain_peer_closed(raw_server):
    client, conn = raw_server.client()
    with client:
        conn.sendall(b"full\npart")
        conn.close()
        assert client.read_line() == b"full\n"
        with pytest.raises(gtcp.PeerClosedError) as info:
            client.read_line()
        assert info.value.partial == b"part"
        left = "4 byte(s) of an incomplete frame were left."
        assert str(info.value) == f"Connection closed by the server. {left}"
        with pytest.raises(gtcp.PeerClosedError) as again:
            client.read_exactly(1)
        assert again.value.partial == b"" and str(again.value) == "Connection closed by the server."


def test_Client_eof_at_a_frame_boundary_has_no_partial(raw_server):
    client, conn = raw_server.client(framing=gtcp.Lines())
    with client:
        conn.sendall(b"a\n")
        conn.close()
        assert client.read_frame() == b"a"
        with pytest.raises(gtcp.PeerClosedError) as info:
            client.read_frame()
        assert info.value.partial == b"" and str(info.value) == "Connection closed by the server."


def test_Client_frames_split_at_every_byte_boundary(raw_server):
    codec = gtcp.Lines()
    client, conn = raw_server.client(framing=codec)
    wire = b"first line\r\nsecond\n"
    with client:
        stream = client._stream
        for cut in range(1, len(wire)):
            reader = gevent.spawn(lambda: [client.read_frame(), client.read_frame()])
            conn.sendall(wire[:cut])
            # The client has read the first part and waits for more.
            wait_until(lambda cut=cut: stream.reading and stream.buffered == _pending(wire, cut, codec))
            conn.sendall(wire[cut:])
            assert reader.get(timeout=LONG) == [b"first line", b"second"], cut
    conn.close()


def test_Client_unknown_option_is_a_config_error(raw_server):
    with pytest.raises(gtcp.ConfigError, match="Unknown client option"):
        gtcp.Client("127.0.0.1", raw_server.port, framming=gtcp.Lines())
    with pytest.raises(gtcp.ConfigError, match="framing must be a codec"):
        gtcp.Client("127.0.0.1", raw_server.port, framing="lines")


def test_Client_read_exactly_validates_n(raw_server):
    client, conn = raw_server.client()
    with client:
        assert client.read_exactly(0) == b""
        with pytest.raises(gtcp.ConfigError):
            client.read_exactly(-1)
    conn.close()


# -- a descriptor closed under a waiting read: one outcome, plain and TLS ---------------


def test_Listener_descriptor_closed_under_waiting_read_ends_silently(gtcp_listener, tls):
    lopts, copts = tls
    rec = Recorder()
    listener = gtcp_listener(One(rec), **lopts)
    with _client(listener, copts) as client:
        client.write_bytes(b"x")
        assert client.read_bytes() == b"x"
        (conn,) = listener._run.connections
        wait_until(lambda: conn.stream.reading)
        conn.stream.gsock.close()  # under the waiting read, not through the stream
        assert rec.closed.wait(LONG)
    assert rec.errors == []


def test_gevent_private_attributes_the_stream_relies_on():
    a, b = gevent.socket.socketpair()
    try:
        for name in ("_sock", "_read_event", "_write_event"):
            assert hasattr(a, name), name
        assert a._sock.fileno() == a.fileno() and callable(a._sock.recv)
        assert a._read_event.fd == a.fileno()
    finally:
        a.close()
        b.close()
    from gevent import ssl as gssl

    ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
    c, d = gevent.socket.socketpair()
    try:
        tls = ctx.wrap_socket(c, server_hostname="x", do_handshake_on_connect=False)
        assert hasattr(tls, "_sslobj")
        tls.close()
    finally:
        d.close()


def test_on_connect_returning_none_warns_once_per_service_class(gtcp_listener, gtcp_log):
    class Forgetful(gtcp.Service):
        def on_connect(self, caller):
            pass  # forgot to return

    listener = gtcp_listener(Forgetful(), framing=gtcp.Lines())
    for _ in range(3):
        with _client(listener, {}) as client:
            client.write_bytes(b"y" * 100_000)  # no newline: discarded raw, never a FrameTooLongError
    wait_until(lambda: not listener._run.connections)
    warnings = [r for r in gtcp_log.records if "on_connect returned None" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "Forgetful" in warnings[0].getMessage()
    assert "FrameTooLong" not in gtcp_log.text


def test_stream_feed_does_not_copy_quadratically():
    """A big frame arriving in 64 KiB pieces is appended, not re-glued per piece."""
    a, b = gevent.socket.socketpair()
    try:
        stream = Stream(a, None)
        stream.feed(b"x" * 10)
        stream.consume(5)
        buffers = set()
        for _ in range(64):
            stream.feed(b"y" * 65536)
            buffers.add(id(stream.rbuf))
        assert len(buffers) == 1  # one bytearray grown in place
        assert stream.buffered == 5 + 64 * 65536
    finally:
        a.close()
        b.close()


# -- a peer that never sends a newline -----------------------------------------------

FLOOD_SERVER = r"""
import sys
import gtcp

class Lines:
    def on_bytes(self, data): return data
    def on_error(self, err): print("on_error", type(err).__name__, err, flush=True)
    def on_close(self): print("on_close", flush=True)

class Svc:
    def on_connect(self, caller): return Lines()

listener = gtcp.Listener(0, local_host="127.0.0.1", framing=gtcp.Lines())
listener.attach(Svc())
listener.start()
print(listener.port, flush=True)
listener.serve_forever()
"""


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_Listener_a_gigabyte_without_newline_keeps_memory_flat(tmp_path):
    import subprocess
    import sys

    server = subprocess.Popen([sys.executable, "-c", FLOOD_SERVER], stdout=subprocess.PIPE,
                              text=True, env=child_env())
    try:
        port = int(server.stdout.readline())
        with gtcp.Client("127.0.0.1", port, timeout=LONG) as probe:  # warm the server up
            probe.write_bytes(b"warm\n")
            assert probe.read_line() == b"warm\n"
        assert server.stdout.readline() == "on_close\n"
        before = _peak_rss_kib(server.pid)
        flood = gtcp.Client("127.0.0.1", port, timeout=LONG, write_timeout=LONG)
        chunk = b"z" * (1 << 20)
        sent = 0
        try:
            while sent < 1 << 30:
                flood.write_bytes(chunk)
                sent += len(chunk)
        except gtcp.Error:
            pass  # the server may close before the gigabyte is out
        flood.close()
        # Other connections are unaffected meanwhile.
        with gtcp.Client("127.0.0.1", port, timeout=LONG) as other:
            other.write_bytes(b"still here\n")
            assert other.read_line() == b"still here\n"
        lines = [server.stdout.readline() for _ in range(3)]
        after = _peak_rss_kib(server.pid)
    finally:
        server.terminate()
        server.wait(LONG)
    assert lines[0] == "on_error FrameTooLongError Frame too long: more than max_length (65536 bytes)\n"
    assert lines[1] == "on_close\n"  # then the connection closed
    assert lines[2] == "on_close\n"  # the other client's
    assert after - before < 16 * 1024, (before, after, sent)


def test_Listener_close_in_on_bytes_stops_delivery_of_buffered_frames(gtcp_listener):
    def reply(caller, frame):
        if frame == b"quit":
            caller.close()
            return None
        return b"echo " + frame

    rec = Recorder(reply)
    listener = gtcp_listener(One(rec), framing=gtcp.Lines())
    with _client(listener, {}) as client:
        client.write_bytes(b"a\nquit\nb\nc\n")  # one segment: b and c are buffered at the close
        assert client.read_line() == b"echo a\n"
        with pytest.raises(gtcp.PeerClosedError):
            client.read_line()
    assert rec.closed.wait(LONG)
    assert [rec.frames.get(timeout=LONG) for _ in range(2)] == [b"a", b"quit"]
    assert rec.frames.empty() and rec.errors == []


class Stuck(gtcp.Codec):
    """A buggy codec: the frame it finds ends where it starts."""

    def decode(self, buffer, start):
        return b"", start

    def encode(self, frame):
        return bytes(frame)


class Never(gtcp.Codec):
    """A codec that never finds a frame and bounds nothing itself."""

    def decode(self, buffer, start):
        return None

    def encode(self, frame):
        return bytes(frame)


@pytest.mark.gtcp_expect_callback_errors("it must move forward")
def test_Listener_codec_that_does_not_move_forward_is_closed_not_spun(gtcp_listener, gtcp_log):
    rec = Recorder()
    listener = gtcp_listener(One(rec), framing=Stuck())
    with _client(listener, {}) as client:
        client.write_bytes(b"abc")
        with pytest.raises(gtcp.PeerClosedError):
            client.read_bytes()
    assert rec.closed.wait(LONG)
    assert "it must move forward" in gtcp_log.text


def test_Client_codec_that_does_not_move_forward_raises(raw_server):
    client, conn = raw_server.client(framing=Stuck())
    with client:
        conn.sendall(b"abc")
        with pytest.raises(gtcp.Error, match="must move forward"):
            client.read_frame()
        assert client.read_bytes() == b"abc"  # nothing consumed
    conn.close()


def test_Listener_buffer_backstop_for_a_codec_that_bounds_nothing(gtcp_listener):
    rec = Recorder()
    listener = gtcp_listener(One(rec), framing=Never())
    flood = _client(listener, {}, write_timeout=LONG)
    try:
        chunk = b"n" * (1 << 20)
        for _ in range(40):  # 40 MiB, more than the 16 MiB backstop
            flood.write_bytes(chunk)
    except gtcp.Error:
        pass
    finally:
        flood.close()
    assert rec.closed.wait(LONG)
    (err,) = rec.errors
    assert type(err) is gtcp.FrameTooLongError
    assert str(err) == "Frame too long: more than 16777216 bytes buffered without a whole frame"


def test_Listener_array_reply_is_sent_whole(gtcp_listener):
    from array import array

    listener = gtcp_listener(One(Recorder(lambda caller, frame: array("i", range(1000)))))
    with _client(listener, {}) as client:
        client.write_bytes(b"x")
        assert client.read_exactly(4000) == array("i", range(1000)).tobytes()
