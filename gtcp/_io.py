"""The byte stream under every connection, and the one place where OS and ssl
errors become gtcp errors.

Theory of operation
-------------------
gevent's socket methods are convenient but costly on the hot path: ``recv``
first makes a non-blocking ``recv`` that fails with ``EAGAIN`` (an exception
with its message formatted) before it waits, ``sendall`` makes a
``getsockopt`` call each time, and arming a ``gevent.Timeout`` around every
write costs a fifth of an echo server's throughput (measured). A
:class:`Stream` therefore drives the *raw* non-blocking socket (or, for TLS,
the C-level ``_ssl._SSLSocket`` object) itself and waits on the two io
watchers the gevent socket already owns, so an open connection costs no extra
watcher:

* a read tries ``recv`` once; only when that would block does it wait for
  readiness, and only then is a deadline armed;
* after a short read the socket is most likely drained, so the next read
  waits for readiness *first* (see ``STREAMING_CHUNK``);
* a write tries ``send`` once; only when the kernel buffer is full does it
  take the write lock's slow path, arm the write deadline and wait.

The stream owns the connection's one read buffer (``rbuf`` from ``rpos`` on):
codecs decode frames out of it, the client's ``read_exactly``/``read_until``
read from it, and ``read`` hands out what is buffered before it reads the
socket again, so mixing them never loses or reorders a byte. Replies to
pipelined frames are queued (:meth:`Stream.queue`) and sent together by
:meth:`Stream.flush`, or by the next :meth:`Stream.write`, which keeps their
order with writes made directly.

The socket, its watchers and its TLS object are bound by :meth:`Stream._bind`,
not fixed for the stream's life, so that a connection can change layers
(STARTTLS) under the same stream.

Closing never turns unsent data into a reset. Linux answers a ``close()`` of a
socket with unread input by a RST, and the peer then loses whatever it had not
read yet. :meth:`Stream.close` therefore sends TLS close_notify (one attempt,
never waiting for the reply), shuts the write side (the FIN goes out after
every queued byte), and leaves the descriptor open; :meth:`Stream.finish`
then discards what the peer still sends until its EOF or for at most
``LINGER_SECONDS``, and only then closes the descriptor.

Private attributes used here: gevent's ``socket._sock``, ``_read_event``
and ``_write_event``, the hub's ``cancel_wait`` throwing into
``watcher.callback.__self__``, and the standard library's
``SSLObject._sslobj``. They have been stable since gevent 20;
``tests/test_gevent_internals.py`` pins each of them (and the
``StreamServer`` internals ``gtcp._listener`` uses), so an upgrade that moves
one fails loudly, naming it, instead of silently slowing.
"""

from __future__ import annotations

import re
import socket as _stdsocket
import ssl
import struct
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent import Timeout, get_hub, getcurrent
from gevent.lock import Semaphore
from greenlet import greenlet

from ._errors import (
    ClosedError,
    Error,
    FrameTooLongError,
    PeerClosedError,
    ReadTimeoutError,
    TLSError,
    WriteError,
    WriteTimeoutError,
)

if TYPE_CHECKING:
    from ._tlsinfo import TLSInfo

__all__ = [
    "LINGER_SECONDS", "READ", "READ_SIZE", "STREAMING_CHUNK", "WRITE", "Interrupted", "Stream", "reason",
    "switch_to",
]


#: Largest chunk one read returns: ``read_bytes()`` and ``on_bytes`` get up to 64 KiB.
READ_SIZE = 65536

#: A chunk at least this big suggests a peer streaming a large message: more
#: is probably already in the socket, so the next recv is tried at once. After
#: a smaller chunk the socket is most likely drained (request/response
#: traffic), so the next read waits for readiness first and saves a failing
#: recv. Measured: waiting first after every short read cost 20% of
#: throughput with 64 KiB messages; trying first after small ones costs an
#: exception per chunk.
STREAMING_CHUNK = 8192

#: Linux's ``struct tcp_info``: ``tcpi_bytes_acked`` and ``tcpi_bytes_received``
#: (two u64, in that order) at this offset since Linux 4.2.
_TCP_INFO = getattr(_stdsocket, "TCP_INFO", None) if sys.platform.startswith("linux") else None
_TCP_INFO_SIZE = 232
_TCP_INFO_BYTES_OFFSET = 120
_TCP_INFO_BYTES = struct.Struct("=QQ")
#: ``tcpi_state`` (the first byte) values: after the peer's FIN (CLOSE_WAIT,
#: LAST_ACK, CLOSING, TIME_WAIT), after the peer acknowledged ours
#: (FIN_WAIT2, TIME_WAIT).
_FIN_RECEIVED = frozenset({8, 9, 11, 6})
_FIN_ACKED = frozenset({5, 6})
_TCP_CLOSE = 7

#: Replies queued for pipelined frames are sent once they reach this size,
#: even if more frames are waiting: coalescing saves system calls, not memory.
QUEUE_LIMIT = 65536

#: Largest plaintext encrypted at once: bigger writes are encrypted and sent
#: piece by piece, so a 64 MiB write never holds 64 MiB of ciphertext too.
TLS_PIECE = 256 * 1024

#: The read buffer's backstop beyond a codec's own ``max_length`` (room for
#: its header or delimiter), and its limit for a codec that declares none.
BUFFER_SLACK = 65536
DEFAULT_BUFFER_LIMIT = 16 * 1024 * 1024

#: How long a closed connection keeps reading (and discarding) what the peer
#: still sends, so that the close is not turned into a reset. Apache's
#: lingering close uses 2 s for the same purpose.
LINGER_SECONDS = 2.0

#: Bound on flushing, at a close, what did not fit the socket buffer (queued
#: replies, a TLS close_notify) to a peer that does not read.
CLOSE_NOTIFY_SECONDS = 1.0

#: libev event masks, for the io watchers.
READ = 1
WRITE = 2

#: ``greenlet.switch`` itself: switching to the hub this way skips gevent's
#: ``Hub.switch`` wrapper, whose only job (refusing a switch *from* the hub)
#: cannot apply to a connection's greenlet.
switch_to = greenlet.switch
_TLS_EOF = (ssl.SSLZeroReturnError, ssl.SSLEOFError)


def reason(exc: BaseException) -> str:
    """The human part of an OS, ssl or cryptography error: ``"Connection reset by peer"``.

    The one helper every module uses to put a low-level error into a gtcp
    message: an ``OSError``'s ``strerror``, an ``SSLError``'s text without
    CPython's ``(_ssl.c:NNN)`` suffix, else ``str(exc)``.
    """
    if isinstance(exc, ssl.SSLError):
        text = str(exc.args[1]) if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
        return _SSL_SUFFIX.sub("", text) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


_SSL_SUFFIX = re.compile(r"\s*\(_ssl\.c:\d+\)$")


def _hub_keeps_running() -> bool:
    """True where a background greenlet will get to run after we return.

    That is the main thread, or any "thread" of a process whose threading
    module gevent patched (its threads are greenlets of the main hub).
    """
    import threading

    import gevent.monkey

    if gevent.monkey.is_module_patched("threading"):
        return True
    return threading.current_thread() is threading.main_thread()


def _as_bytes_view(data: object) -> memoryview:
    """A flat byte view of any bytes-like object, or a clear TypeError."""
    try:
        return memoryview(data).cast("B")  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"data must be a bytes-like object, not {type(data).__name__!r}"
        ) from None


class _HandshakeTimeout(Exception):
    """Private marker: the handshake deadline passed."""


class _Lingered(Exception):
    """Private marker: the lingering close ran out of time."""


class Interrupted(BaseException):
    """Thrown into a greenlet waiting on a :class:`Stream` to wake it.

    A ``BaseException`` so user code's ``except Exception`` cannot eat it;
    it never leaves gtcp.
    """


class Stream:
    """One connected socket, plain or TLS, driven without gevent's wrappers.

    Not thread-safe (no gevent object is); safe for several greenlets: reads
    are serialised by the caller (the client's read lock, or the single
    dispatch greenlet), writes by the stream's own write lock.
    """

    __slots__ = (
        "_counts",
        "_gsock",
        "_hub",
        "_notify_left",
        "_notify_pending",
        "_out",
        "_out_size",
        "_private_watchers",
        "_raw",
        "_reset",
        "_rtimer",
        "_rwatch",
        "_tcp",
        "_tin",
        "_tls",
        "_tls_ready",
        "_tout",
        "_write_shut",
        "_wtimer",
        "_wwatch",
        "closed",
        "codec",
        "drained",
        "eof",
        "eof_sent",
        "handshake_bytes",
        "handshaking",
        "rbuf",
        "rpos",
        "wlock",
        "write_timeout",
    )

    def __init__(self, gsock: Any, write_timeout: float | None, codec: Any = None) -> None:
        self._hub = get_hub()
        self._bind(gsock)
        #: Serialises slow writes; made at the first write that has to wait.
        #: Nobody mid-write when it is None or unlocked (the fast path's test).
        self.wlock: Semaphore | None = None
        #: Watchers of the stream's own (lingering close, close_notify flush), so wake_all() ends their waits.
        self._private_watchers: list[Any] | None = None
        #: TLS, when on: the SSLObject and its two memory BIOs (see start_tls).
        #: The C-level ``_ssl`` object of ``SSLContext.wrap_bio`` (not its Python
        #: ``SSLObject`` wrapper: one object less per connection, one frame less per call).
        self._tls: Any = None
        self._tin: ssl.MemoryBIO | None = None
        self._tout: ssl.MemoryBIO | None = None
        self._tls_ready = False  # handshake done: close() may send close_notify
        self._notify_pending = False  # close_notify bytes wait in _notify_left
        self._notify_left = b""
        self._rtimer: Timeout | None = None  # deadlines, made at the first wait
        self._wtimer: Timeout | None = None
        #: Replies queued by the dispatcher, sent by flush() or the next write().
        self._out: list[Any] | None = None  # made at the first queued reply
        self._out_size = 0
        #: The read buffer: bytes not yet consumed are ``rbuf[rpos:]``. Invariant:
        #: ``rbuf`` is empty (``b""``) whenever everything in it was consumed, so
        #: ``if stream.rbuf`` means "bytes are buffered".
        self.rbuf: bytes | bytearray = b""
        self.rpos = 0
        #: The framing codec in effect (None: raw chunks).
        self.codec = codec
        #: True when the last read was short: the socket is most likely empty,
        #: so the next read waits for readiness first (see STREAMING_CHUNK). A
        #: new peer has rarely sent yet, so it starts True.
        self.drained = True
        #: True once close() ran: every later operation raises ClosedError.
        self.closed = False
        #: True once the peer's EOF was read.
        self.eof = False
        #: True once send_eof() shut our write side: writes raise ClosedError.
        self.eof_sent = False
        #: True while a TLS handshake waits (its waits are not idle time).
        self.handshaking = False
        self.write_timeout = write_timeout
        #: Bytes of ciphertext the TLS handshake read from the socket.
        self.handshake_bytes = 0
        #: The kernel's byte counts, taken when the socket is closed (see byte_counts()).
        self._counts: tuple[int, int] | None = None
        self._tcp = gsock.family in (_stdsocket.AF_INET, _stdsocket.AF_INET6)
        #: The peer reset the connection (no FIN came); our write side was shut (our FIN went out).
        self._reset = False
        self._write_shut = False

    def _bind(self, gsock: Any) -> None:
        """Use the gevent socket *gsock*: its raw socket and its two io watchers."""
        self._gsock = gsock
        self._raw = gsock._sock
        self._rwatch = gsock._read_event
        self._wwatch = gsock._write_event

    # -- the read buffer -----------------------------------------------------

    @property
    def buffered(self) -> int:
        """How many bytes were read from the socket but not consumed yet."""
        return len(self.rbuf) - self.rpos

    def feed(self, data: bytes) -> None:
        """Append *data* to the read buffer (amortised: no quadratic copying).

        An empty buffer simply becomes *data* (no copy). Otherwise the
        leftover moves into a ``bytearray`` once, and consumed bytes at its
        front are dropped only when they are more than half of it.
        """
        buf = self.rbuf
        pos = self.rpos
        if pos >= len(buf):
            self.rbuf = data
            self.rpos = 0
        elif type(buf) is bytes:
            grown = bytearray(memoryview(buf)[pos:])
            grown += data
            self.rbuf = grown
            self.rpos = 0
        else:
            assert isinstance(buf, bytearray)
            if pos > len(buf) >> 1:
                del buf[:pos]  # O(1) in CPython: the start pointer moves
                self.rpos = 0
            buf += data

    def check_room(self, incoming: int) -> FrameTooLongError | None:
        """The error if *incoming* more bytes would exceed the buffer's backstop, else None.

        Codecs bound memory themselves (``FrameTooLongError`` from
        ``decode``); this catches one that does not. The limit is the
        codec's ``max_length`` (if it has one) plus ``BUFFER_SLACK``, or
        ``DEFAULT_BUFFER_LIMIT`` for a codec without one.
        """
        limit = getattr(self.codec, "max_length", None)
        limit = limit + BUFFER_SLACK if isinstance(limit, int) else DEFAULT_BUFFER_LIMIT
        if self.buffered + incoming <= limit + READ_SIZE:
            return None
        return FrameTooLongError(
            f"Frame too long: more than {limit} bytes buffered without a whole frame", limit)

    def bad_frame_end(self, end: object) -> Error | None:
        """The error for a codec's ``end`` that does not move forward within the buffer, else None.

        Checked by both readers of frames (the listener's loop, the client's
        reads): a codec bug must end the connection, never spin it.
        """
        if isinstance(end, int) and self.rpos < end <= len(self.rbuf):
            return None
        return Error(f"the framing codec returned end={end!r} for a frame starting at "
                     f"{self.rpos} of {len(self.rbuf)} buffered bytes (it must move forward)")

    def consume(self, end: int) -> None:
        """Mark the buffer consumed up to offset *end*."""
        if end >= len(self.rbuf):
            self.rbuf = b""
            self.rpos = 0
        else:
            self.rpos = end

    def take(self, size: int = READ_SIZE) -> bytes:
        """Up to *size* buffered bytes, consumed."""
        pos = self.rpos
        end = min(len(self.rbuf), pos + size)
        data = bytes(self.rbuf[pos:end])
        self.consume(end)
        return data

    # -- reading ---------------------------------------------------------

    def read(self, timeout: float | None) -> bytes:
        """Return 1..READ_SIZE bytes: what is buffered, else whatever arrives.

        Raises ``PeerClosedError`` on EOF or reset, ``ReadTimeoutError`` when
        nothing arrived within *timeout* (nothing is consumed), ``ClosedError``
        when the stream was closed, ``TLSError`` for a TLS alert.
        """
        if self.rpos < len(self.rbuf):
            return self.take()
        return self.recv(timeout)

    def recv(self, timeout: float | None) -> bytes:
        """One read from the connection (the buffer is not looked at); see :meth:`read`.

        After a short read it waits for readiness before the first attempt
        (``drained``). One deadline covers the whole call; it is armed only
        once the read has to wait. With TLS on, one decrypted record.
        """
        if self.closed:
            raise ClosedError()
        if self._tls is not None:
            return self._recv_tls(timeout)
        timer = None
        try:
            if self.drained:
                if timeout:
                    timer = self._arm_read(timeout)
                # _wait(self._rwatch), inlined: the one wait per request of the
                # plain hot path (same checks, same outcomes).
                watcher = self._rwatch
                if self._raw.fileno() < 0:
                    raise ClosedError()
                watcher.start(getcurrent().switch)
                try:
                    switch_to(self._hub)
                except Interrupted:
                    raise ClosedError() from None
                except OSError as exc:
                    raise ClosedError() from exc
                finally:
                    watcher.stop()
                if self.closed:
                    raise ClosedError()
            while True:
                # The waits happen outside the except clauses: waiting inside
                # one would keep the exception and its traceback alive for as
                # long as the connection is idle (half a KiB per connection).
                try:
                    data = self._raw.recv(READ_SIZE)
                except BlockingIOError:
                    data = None
                except OSError as exc:
                    raise self._read_error(exc) from exc
                if data is not None:
                    if data:
                        self.drained = len(data) < STREAMING_CHUNK
                        return data  # type: ignore[no-any-return]
                    self.eof = True
                    raise PeerClosedError()
                if timer is None and timeout:
                    timer = self._arm_read(timeout)
                self._wait(self._rwatch)
        except Timeout as exc:
            raise self._read_timeout_error(exc, timer) from None
        finally:
            if timer is not None:
                timer.cancel()

    def _recv_tls(self, timeout: float | None) -> bytes:
        """:meth:`recv` through TLS: decrypt what the incoming BIO holds, else read more."""
        tls: Any = self._tls
        tin: Any = self._tin
        timer = None
        try:
            decrypt = bool(tin.pending or tls.pending() or tin.eof)
            while True:
                if decrypt:
                    try:
                        data = tls.read(READ_SIZE)
                    except ssl.SSLWantReadError:
                        data = None  # a partial record: read more ciphertext
                    except _TLS_EOF:
                        data = b""  # the peer's close_notify, or a TCP EOF without one
                    except ssl.SSLError as exc:
                        raise TLSError(reason(exc)) from exc
                    if self._tout.pending:  # type: ignore[union-attr]
                        self._send_tls_output()  # post-handshake messages, alerts
                    if data is not None:
                        if data:
                            self.drained = self.drained and len(data) < STREAMING_CHUNK and not tin.pending
                            return data  # type: ignore[no-any-return]
                        self.eof = True
                        raise PeerClosedError()
                if self.drained:
                    if timer is None and timeout:
                        timer = self._arm_read(timeout)
                    self._wait(self._rwatch)
                try:
                    chunk = self._raw.recv(READ_SIZE)
                except BlockingIOError:
                    self.drained = True
                    decrypt = False
                    continue
                except OSError as exc:
                    raise self._read_error(exc) from exc
                self.drained = len(chunk) < STREAMING_CHUNK
                if chunk:
                    tin.write(chunk)
                else:
                    tin.write_eof()  # the read then reports the EOF (SSLEOFError)
                decrypt = True
        except Timeout as exc:
            raise self._read_timeout_error(exc, timer) from None
        finally:
            if timer is not None:
                timer.cancel()

    def _read_timeout_error(self, exc: Timeout, timer: Timeout | None) -> ReadTimeoutError:
        """The error for a read whose deadline *timer* fired; a Timeout not ours (*exc*) is re-raised."""
        if exc is not timer:
            raise exc
        # A gevent Timeout that fired cannot be started again (its timer
        # would fire at once): the next read makes a new one.
        self._rtimer = None
        return ReadTimeoutError()

    def _read_error(self, exc: BaseException) -> Error:
        """The gtcp error for a read that failed (a reset marks the EOF): the one read-side translation."""
        if self.closed or isinstance(exc, ValueError) or self._raw.fileno() < 0:
            return ClosedError()  # we closed it (or its descriptor) under the read
        self.eof = True
        self._reset = True
        return PeerClosedError(reason(exc))

    def read_decoded(self, decode: Callable[[Any, int], tuple[Any, int] | None],
                     timeout: float | None) -> Any:
        """Read until *decode* finds a whole frame in the buffer; return it.

        ``decode(buffer, start)`` is a codec's (see ``gtcp.Codec``). One
        deadline, *timeout*, covers the whole call; on ``ReadTimeoutError``
        or ``FrameTooLongError`` nothing is consumed. An EOF with part of a
        frame buffered raises ``PeerClosedError`` carrying those bytes.
        """
        deadline = None
        remaining = timeout
        while True:
            if self.rpos < len(self.rbuf):
                found = decode(self.rbuf, self.rpos)
                if found is not None:
                    frame, end = found
                    bad = self.bad_frame_end(end)
                    if bad is not None:
                        raise bad
                    self.consume(end)
                    return frame
            if timeout:
                now = self._hub.loop.now()
                if deadline is None:
                    deadline = now + timeout
                remaining = deadline - now
                if remaining <= 0:
                    raise ReadTimeoutError()
            try:
                data = self.recv(remaining)
            except PeerClosedError as exc:
                if self.rpos < len(self.rbuf) and exc.__cause__ is None:
                    raise PeerClosedError.mid_frame(self.take(len(self.rbuf))) from None
                raise
            too_long = self.check_room(len(data))
            self.feed(data)  # kept: a read never loses bytes, even when it raises
            if too_long is not None:
                raise too_long

    def _arm_read(self, timeout: float) -> Timeout:
        """Start the read deadline; one ``gevent.Timeout`` reused per stream.

        Creating a Timeout per wait costs a fifth of a round trip; reusing
        one costs a timer start and stop.
        """
        timer = self._rtimer
        if timer is None or timer.seconds != timeout:
            timer = self._rtimer = Timeout(timeout)
        timer.start()
        return timer

    # -- writing ---------------------------------------------------------

    def queue(self, data: Any) -> None:
        """Queue a reply (bytes-like) to be sent by :meth:`flush` or the next write.

        Sends at once when the queue reaches ``QUEUE_LIMIT``. Raises what
        :meth:`write` raises.
        """
        if self._out is None:
            self._out = [data]
        else:
            self._out.append(data)
        self._out_size += data.nbytes if type(data) is memoryview else len(data)
        if self._out_size >= QUEUE_LIMIT:
            self.flush()

    def flush(self) -> None:
        """Send the queued replies, together; raises what :meth:`write` raises."""
        out = self._out
        if out:
            self._out = None
            self._out_size = 0
            self._send(out[0] if len(out) == 1 else b"".join(out))

    def write(self, data: Any) -> None:
        """Send queued replies and then the whole of *data*, or raise.

        ``ClosedError`` if the stream is closed, ``WriteError`` if the OS
        refuses, ``WriteTimeoutError`` if the peer did not take the bytes
        within ``write_timeout`` (the stream is then closed: part of the data
        may have gone). Writes of several greenlets never interleave.
        """
        if type(data) is not bytes:
            data = _as_bytes_view(data)
        out = self._out
        if out:
            out.append(data)
            self._out = None
            self._out_size = 0
            data = b"".join(out)
        wlock = self.wlock
        if self._tls is None and not (self.closed or self.eof_sent) and (wlock is None or not wlock.locked()):
            # _send's fast path, plain TCP, inlined: one call less per reply.
            try:
                sent = self._raw.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise self._write_error(exc) from exc
            if sent == len(data):
                return
            data = memoryview(data).cast("B")[sent:]
        self._send(data)

    def _send(self, data: Any) -> None:
        if self.closed or self.eof_sent:
            raise ClosedError()
        wlock = self.wlock
        if wlock is None or not wlock.locked():
            # Fast path: nothing else is mid-write and no switch can happen
            # between this check and send(), so the bytes cannot interleave
            # (nor, with TLS, the records: they are sent in the order made).
            if self._tls is not None:
                if len(data) > TLS_PIECE:
                    return self._locked_send(data)
                data = self._encrypt(data)
            try:
                sent = self._raw.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise self._write_error(exc) from exc
            if sent == len(data):
                return None
            data = memoryview(data).cast("B")[sent:]
            if self.wlock is None:
                self.wlock = Semaphore(1)
            with self.wlock:
                self._write_slow(iter((data,)))
            return None
        return self._locked_send(data)

    def _locked_send(self, data: Any) -> None:
        """Send under the write lock (someone else is mid-write, or big TLS data)."""
        if self.wlock is None:
            self.wlock = Semaphore(1)
        with self.wlock:
            if self.closed or self.eof_sent:
                raise ClosedError()
            if self._tls is None:
                self._write_slow(iter((data,)))
            else:
                # Encrypted piece by piece, so big data never doubles in memory.
                view = memoryview(data).cast("B")
                pieces = (self._encrypt(view[i:i + TLS_PIECE]) for i in range(0, len(view), TLS_PIECE))
                self._write_slow(pieces)

    def _encrypt(self, data: Any) -> bytes:
        """The TLS records that carry *data* (a memory BIO never blocks)."""
        try:
            self._tls.write(data)
        except (ssl.SSLError, ValueError) as exc:
            self.close()
            raise WriteError(f"Failed to write data: {reason(exc)}") from exc
        return self._tout.read()  # type: ignore[union-attr]

    def _write_slow(self, pieces: Any) -> None:
        """Send every piece, waiting for writability; one write deadline for all."""
        timer = None  # armed at the first wait only
        try:
            for piece in pieces:
                view = memoryview(piece).cast("B")
                while view:
                    if self.closed:
                        raise ClosedError()
                    try:
                        sent = self._raw.send(view)
                    except BlockingIOError:
                        sent = -1
                    except OSError as exc:
                        raise self._write_error(exc) from exc
                    if sent >= 0:
                        view = view[sent:]
                        continue
                    if timer is None and self.write_timeout:
                        timer = self._wtimer
                        if timer is None or timer.seconds != self.write_timeout:
                            timer = self._wtimer = Timeout(self.write_timeout)
                        timer.start()
                    self._wait(self._wwatch)
        except Timeout as exc:
            self.close()
            if exc is not timer:
                raise
            self._wtimer = None  # a fired Timeout cannot be reused
            raise WriteTimeoutError() from None
        except BaseException:
            # Interrupted mid-write (a caller's own Timeout, a kill): part of
            # the data may be out, and with TLS part of a record, so the
            # stream can carry no further write.
            self.close()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _send_tls_output(self, locked: bool = False) -> None:
        """Send what OpenSSL wrote outside a write (handshake, tickets, alerts).

        *locked*: the caller holds the write lock already (the handshake).
        """
        out = self._tout.read()  # type: ignore[union-attr]
        if out and not self.closed:
            if locked:
                self._write_slow(iter((out,)))
                return
            with self._write_lock():
                self._write_slow(iter((out,)))

    def _write_lock(self) -> Semaphore:
        if self.wlock is None:
            self.wlock = Semaphore(1)
        return self.wlock

    def _write_error(self, exc: OSError) -> Error:
        """The gtcp error for a write that failed, closing the stream: the one write-side translation."""
        if self.closed:
            return ClosedError()
        self.close()
        return WriteError(f"Failed to write data: {reason(exc)}")

    # -- waiting ---------------------------------------------------------

    def _wait(self, watcher: Any) -> None:
        """Wait until *watcher* fires; ``ClosedError`` if the stream closed meanwhile.

        The watcher switches straight back into this greenlet (no ``Waiter``):
        one object and two Cython frames less on every wait, which shows in
        both throughput and the memory an idle connection holds.
        ``hub.cancel_wait`` still works: it throws into ``callback.__self__``.
        Deadlines are the caller's (a started ``gevent.Timeout``).
        """
        if self.closed or self._raw.fileno() < 0:
            # Closed before we got here (nobody was waiting to be woken), or
            # the descriptor was closed under us: starting the watcher would
            # then make libev abort the process (EBADF in epoll_ctl).
            raise ClosedError()
        watcher.start(getcurrent().switch)
        try:
            switch_to(self._hub)
        except Interrupted:
            raise ClosedError() from None
        except OSError as exc:
            # gevent's "File descriptor was closed in another greenlet".
            raise ClosedError() from exc
        finally:
            watcher.stop()
        if self.closed:
            raise ClosedError()

    # -- TLS, half-close ---------------------------------------------------

    def start_tls(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        timeout: float | None,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> None:
        """Put TLS on this stream and finish the handshake within *timeout* seconds.

        TLS runs over two memory BIOs (``SSLContext.wrap_bio``): gtcp moves
        the ciphertext between them and the socket itself, so the socket,
        its watchers and every wait stay the stream's own (a plain
        connection can be upgraded, STARTTLS), handshakes are cooperative
        whatever the context's class, and a close_notify is one
        ``SSL_shutdown`` under gtcp's control (see :meth:`_close_notify`).
        Bytes already in the read buffer are taken as the first ciphertext
        (a ClientHello that came in the same segment as a PROXY header); a
        caller upgrading a plaintext stream decides first what to do with
        plaintext read ahead (STARTTLS discards it). One ``gevent.Timeout`` bounds the whole
        handshake (gevent's socket timeouts apply per wait). Raises
        ``TLSError``; ``ClosedError`` if the stream is closed meanwhile (a
        stop). Either way the stream cannot be used any more.
        """
        if self.closed:
            raise ClosedError()
        tin, tout = ssl.MemoryBIO(), ssl.MemoryBIO()
        try:
            tls = context.wrap_bio(tin, tout, server_side=server_side,
                                   server_hostname=server_hostname, session=session)
        except (ssl.SSLError, ValueError) as exc:
            raise TLSError(reason(exc)) from exc
        if self.rpos < len(self.rbuf):
            tin.write(bytes(self.rbuf[self.rpos:]))
            self.consume(len(self.rbuf))
        # Writers of other greenlets (a broadcast, a push) wait for the
        # handshake, then go out encrypted: the write lock is held throughout.
        lock = self._write_lock()
        lock.acquire()
        self._tls, self._tin, self._tout = getattr(tls, "_sslobj", tls), tin, tout
        timer = Timeout.start_new(timeout, _HandshakeTimeout) if timeout else None
        self.handshaking = True
        try:
            self._handshake(tls, tin)
        except _HandshakeTimeout:
            raise TLSError(f"TLS handshake timed out after {timeout:g} s") from None
        except ssl.SSLCertVerificationError as exc:
            self._send_alert()
            raise TLSError(exc.verify_message or reason(exc)) from exc
        except ssl.SSLError as exc:
            self._send_alert()
            raise TLSError(reason(exc)) from exc
        finally:
            self.handshaking = False
            if timer is not None:
                timer.cancel()
            if not self._tls_ready_after(tin):
                self.close()  # nothing may be written on a failed handshake
            lock.release()

    def _tls_ready_after(self, tin: Any) -> bool:
        tls: Any = self._tls
        if tls is None or tls.version() is None:
            return False
        self._tls_ready = True
        self.drained = not tin.pending
        return True

    def _handshake(self, tls: Any, tin: Any) -> None:
        tls = self._tls
        while True:
            try:
                tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            self._send_tls_output(locked=True)
            if done:
                return
            self._wait(self._rwatch)
            try:
                chunk = self._raw.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise TLSError(f"TLS handshake failed: {reason(exc)}") from exc
            if not chunk:
                self.eof = True
                raise TLSError("Connection closed by the peer during the TLS handshake")
            self.handshake_bytes += len(chunk)
            tin.write(chunk)

    def peer_gone(self) -> str | None:
        """``"eof"`` or ``"reset"`` if the peer closed or reset already, else None (never waits)."""
        try:
            return None if self._raw.recv(1, _stdsocket.MSG_PEEK) else "eof"
        except BlockingIOError:
            return None
        except OSError:
            return "reset"

    def discard_readable(self) -> int:
        """Read and drop what the socket already holds (never waits); the byte count."""
        count = 0
        try:
            while True:
                chunk = self._raw.recv(READ_SIZE)
                if not chunk:
                    return count
                count += len(chunk)
        except OSError:  # BlockingIOError included: nothing more now
            return count

    def absorb_tls_input(self) -> None:
        """Decrypt, without waiting, what has arrived (a TLS 1.3 ticket), dropping any data.

        For a client closing before it ever read: its session can then be
        saved for resumption.
        """
        tls: Any = self._tls
        tin: Any = self._tin
        if tls is None or self.closed:
            return
        try:
            while chunk := self._raw.recv(READ_SIZE):
                tin.write(chunk)
        except OSError:  # BlockingIOError: nothing more now
            pass
        try:
            while tls.read(READ_SIZE):
                pass
        except (ssl.SSLError, ValueError):  # want-read, EOF: all that came is absorbed
            pass

    def _send_alert(self) -> None:
        """Best effort: tell the peer why the handshake failed (the alert OpenSSL wrote)."""
        out = self._tout.read() if self._tout is not None else b""
        if out:
            try:
                self._raw.send(out)
            except OSError:
                pass

    def send_eof(self) -> None:
        """Shut the write side (TLS: close_notify, then FIN) and keep reading.

        Queued replies go first. Later writes raise ``ClosedError``; a
        second call does nothing; after :meth:`close` it raises
        ``ClosedError``. Blocks (under ``write_timeout``) only if the
        close_notify does not fit the socket buffer.
        """
        if self.closed:
            raise ClosedError()
        if self.eof_sent:
            return
        self.flush()
        # Under the write lock: a write of another greenlet in progress
        # finishes first, so the FIN (or close_notify) follows every byte.
        with self._write_lock():
            if self.closed:
                raise ClosedError()
            if self.eof_sent:
                return
            self.eof_sent = True
            if self._tls is not None and self._tls_ready:
                notify = self._close_notify()
                if notify:
                    self._write_slow(iter((notify,)))
            self._shutdown_write()

    def _close_notify(self) -> bytes:
        """Our close_notify as bytes to send: exactly one ``SSL_shutdown`` that reads nothing.

        CPython's ``shutdown()`` calls ``SSL_shutdown`` twice, and the second
        call reads: had the peer's data already arrived, OpenSSL would fail
        it as application data after close_notify, and it would be lost with
        the connection. Taking the unread ciphertext out of the incoming BIO
        for that call, and putting it back after, leaves the second call
        nothing to read, so what the peer sends later is still decrypted by
        later reads (the half-close).
        """
        tls: Any = self._tls
        tin: Any = self._tin
        unread = tin.read()
        try:
            tls.shutdown()
        except (ssl.SSLError, ValueError):  # SSLWantReadError: ours out, the peer's not in
            pass
        if unread:
            tin.write(unread)
        return self._tout.read()  # type: ignore[union-attr]

    # -- closing ---------------------------------------------------------

    def close(self) -> None:
        """Start a graceful close; idempotent, never blocks.

        Sends close_notify (TLS, one attempt, never waiting for the peer's),
        shuts the write side and wakes every greenlet waiting on this stream
        with ``ClosedError``. The descriptor stays open until :meth:`finish`.
        Replies still queued go out first. What does not fit the socket
        buffer (queued replies, close_notify) is flushed by :meth:`finish`
        (bounded by ``CLOSE_NOTIFY_SECONDS``) before the write side is shut.
        """
        if self.closed:
            return
        self.closed = True
        out, self._out, self._out_size = self._out, None, 0
        wlock = self.wlock
        left = b""
        if wlock is None or not wlock.locked():  # not in the middle of a record
            if out:  # replies to earlier frames still go before the FIN
                left = b"".join(out)
                if self._tls is not None:
                    left = self._encrypt_quietly(left)
            if self._tls is not None and self._tls_ready and not self.eof_sent:
                left += self._close_notify()
        if left:
            try:
                sent = self._raw.send(left)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = len(left)
            if sent < len(left):
                self._notify_left = left[sent:]
                self._notify_pending = True
        if not self._notify_pending:
            self._shutdown_write()
        self.wake_all()

    def _encrypt_quietly(self, data: bytes) -> bytes:
        try:
            return self._encrypt(data)  # its close() is a no-op here: we are closing
        except WriteError:
            return b""

    def wake_all(self) -> None:
        """Wake every greenlet waiting on this stream, a lingering close included."""
        self.interrupt(self._wwatch)
        self.interrupt()
        for watcher in self._private_watchers or ():
            self.interrupt(watcher)

    def interrupt(self, watcher: Any = None) -> None:
        """Wake the greenlet waiting to read (or on *watcher*) with ``ClosedError``.

        Does nothing if no greenlet waits. The dispatch loop uses it to end
        a wait for an idle timeout or a stop; it then looks at why.
        """
        watcher = self._rwatch if watcher is None else watcher
        if watcher.callback is not None:
            self._hub.cancel_wait(watcher, Interrupted())

    def _shutdown_write(self) -> None:
        try:
            self._raw.shutdown(_stdsocket.SHUT_WR)
            self._write_shut = True
        except OSError:
            pass

    def _private_watcher(self, events: int) -> Any:
        """A watcher of its own, registered so that wake_all() can end its wait."""
        watcher = self._hub.loop.io(self._raw.fileno(), events)
        watchers = self._private_watchers
        if watchers is None:
            watchers = self._private_watchers = []
        watchers.append(watcher)
        return watcher

    def _drop_watcher(self, watcher: Any) -> None:
        watchers = self._private_watchers
        if watchers is not None and watcher in watchers:
            watchers.remove(watcher)
        watcher.close()

    def _flush_close_notify(self, bound: float) -> None:
        watcher = self._private_watcher(WRITE)
        timer = Timeout.start_new(bound, _Lingered)
        try:
            left = self._notify_left
            while left:
                try:
                    left = left[self._raw.send(left):]
                except BlockingIOError:
                    self._hub.wait(watcher)
        except (OSError, Interrupted, _Lingered):
            pass
        finally:
            self._notify_left = b""
            timer.cancel()
            self._drop_watcher(watcher)

    def finish(self, linger: float | None = LINGER_SECONDS) -> None:
        """Flush close_notify, discard what the peer still sends, then close.

        Call after :meth:`close`, from the greenlet that owns the stream.
        With *linger* seconds (default ``LINGER_SECONDS``) what the peer
        still sends is read and dropped until its EOF, so the close does not
        turn into a reset; ``linger=None`` (or 0) closes at once (an
        immediate stop).
        """
        self.close()
        if self._raw.fileno() >= 0:
            if self._notify_pending and linger:
                self._flush_close_notify(min(CLOSE_NOTIFY_SECONDS, linger))
            self._notify_pending = False
            self._shutdown_write()
            if linger and not self.eof:
                self._drain(linger)
        self.rbuf = b""
        self.rpos = 0
        if self._counts is None:
            self._counts = self.byte_counts()
        try:
            self._gsock.close()
        except OSError:
            pass

    def byte_counts(self) -> tuple[int, int]:
        """(bytes received, bytes sent that the peer acknowledged) on this TCP socket so far.

        The kernel's own counts (``TCP_INFO``'s ``tcpi_bytes_received`` and
        ``tcpi_bytes_acked``, Linux 4.2+; TLS records included), read when
        asked and once more when the socket is closed, so the per-chunk path
        counts nothing. ``(0, 0)`` where the platform has no such counts and
        for Unix domain sockets.
        """
        if self._counts is not None:
            return self._counts
        if not self._tcp or _TCP_INFO is None or self._raw.fileno() < 0:
            return (0, 0)
        try:
            info = self._raw.getsockopt(_stdsocket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_SIZE)
        except OSError:
            return (0, 0)
        if len(info) < _TCP_INFO_BYTES_OFFSET + 16:
            return (0, 0)
        acked, received = _TCP_INFO_BYTES.unpack_from(info, _TCP_INFO_BYTES_OFFSET)
        # A FIN takes one sequence number, which the kernel counts as a byte.
        # CLOSE follows a normal close (both FINs) or a reset (none: we saw
        # the reset, or nothing was read at all).
        state = info[0]
        closed_normally = state == _TCP_CLOSE and not self._reset and (self.eof or self._write_shut)
        fin_in = state in _FIN_RECEIVED or closed_normally
        fin_out = state in _FIN_ACKED or closed_normally
        return (max(0, received - fin_in), max(0, acked - fin_out))

    def _drain(self, linger: float) -> None:
        # A watcher of its own: a reader woken by close() may not have left
        # the shared one yet.
        raw = self._raw
        if raw.fileno() < 0:
            return
        watcher = self._private_watcher(READ)
        timer = Timeout.start_new(linger, _Lingered)
        try:
            while True:
                try:
                    if not raw.recv(READ_SIZE):
                        self.eof = True
                        return
                except BlockingIOError:
                    self._hub.wait(watcher)
        except OSError:
            self._reset = True
        except (Interrupted, _Lingered):
            return
        finally:
            timer.cancel()
            self._drop_watcher(watcher)

    def finish_in_background(self) -> None:
        """Close now if the peer already hung up, else linger in a greenlet.

        In an OS thread of an unpatched process the thread's hub may never
        run again once ``close()`` returns, so there the stream closes at once
        after a non-blocking drain instead of lingering.
        """
        self.close()
        raw = self._raw
        try:
            while raw.recv(READ_SIZE):
                pass
            self.eof = True
        except BlockingIOError:
            if _hub_keeps_running():
                gevent.spawn(self.finish)
                return
        except OSError:
            pass
        self.finish(None)

    # -- facts -------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the descriptor is closed (after :meth:`finish`)."""
        return self._raw.fileno() < 0  # type: ignore[no-any-return]

    @property
    def reading(self) -> bool:
        """True while a greenlet waits for bytes to read."""
        return self._rwatch.callback is not None

    @property
    def gsock(self) -> Any:
        """The gevent socket (or gevent ``SSLSocket``) underneath."""
        return self._gsock

    @property
    def tls(self) -> TLSInfo | None:
        """Facts about the TLS connection, or ``None`` on plain TCP (or mid-handshake)."""
        if self._tls is None or not self._tls_ready:
            return None
        from ._tlsinfo import tls_info

        return tls_info(self._tls)

    @property
    def tls_object(self) -> Any:
        """The TLS object once TLS is on (``version()``, ``session``, ...), else None."""
        return self._tls

