"""gtcp.testing: a kit for testing services built on gtcp.

Everything here is plain Python (no pytest needed); the pytest plugin that
ships with gtcp (active as soon as gtcp is installed) turns it into fixtures:
``gtcp_listener``, ``gtcp_client``, ``gtcp_peer``, ``gtcp_pair``, ``gtcp_tls``
and ``gtcp_log`` (see the README, "Testing your service").

What is in the kit:

* :class:`ListenerFactory` and :class:`ClientFactory`: listeners on a free
  loopback port and clients connected to them, all closed at the end; with an
  :class:`ErrorWatch`, the end also fails if a callback raised.
* :class:`RawPeer` (and :class:`ScriptedPeer` over any socket): a peer you
  script byte by byte for fault tests: send, expect, half-close, reset, stall,
  read or send slowly; plain or TLS.
* :func:`connect` and :class:`ConnectionPair`: one connection of a real
  listener driven by the test, to unit-test a ``ConnectionService``: feed it
  bytes or frames, see what it wrote, trigger EOF, resets and closes.
* :class:`TLSKit`: a throwaway CA (trustme) with server and client
  certificates on disk and ready ``ListenerSecureSocket``/``ClientSecureSocket``
  records, mutual TLS included.
* :class:`LogCapture`: what the ``gtcp`` logger said, down to DEBUG.

Every wait in the kit has a deadline (``timeout=``, default
:data:`DEFAULT_TIMEOUT` seconds) and fails with :class:`ScriptError` (an
``AssertionError``) rather than hang; nothing in it sleeps to synchronise.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import ssl
import struct
import sys
import tempfile
import termios
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import gevent
import gevent.socket
from gevent.event import Event

from ._client import Client
from ._config import CertKey, ClientSecureSocket, ListenerSecureSocket, MutualSsl, VerifyClient
from ._framing import Codec, check_codec
from ._listener import Listener

if TYPE_CHECKING:
    from ._caller import Caller
    from ._dispatch import Connection

__all__ = [
    "DEFAULT_TIMEOUT",
    "ClientFactory",
    "ConnectionPair",
    "DeadlineExceeded",
    "ErrorWatch",
    "ListenerFactory",
    "LogCapture",
    "PairFactory",
    "PeerFactory",
    "RawPeer",
    "ScriptError",
    "ScriptedPeer",
    "TLSKit",
    "UnexpectedErrors",
    "connect",
]

#: Seconds any wait of the kit may take before it fails (a test that works
#: waits milliseconds; one that does not fails in bounded time).
DEFAULT_TIMEOUT = 10.0

#: Bytes asked of the socket per read.
_READ_SIZE = 65536

#: Polling interval of the waits that have no event to wait on (a callback
#: busy elsewhere, a log record from another OS thread).
_POLL = 0.001


class ScriptError(AssertionError):
    """What a scripted peer or a pair saw was not what the script expected, or nothing came in time."""


class DeadlineExceeded(AssertionError):
    """A test ran past its gevent deadline (the pytest plugin's opt-in ``gtcp_deadline``)."""


def _seconds(timeout: float | None, default: float) -> float:
    return default if timeout is None else float(timeout)


def _unread(fd: int) -> int:
    """Bytes waiting in the receive queue of socket *fd* (FIONREAD)."""
    buffer = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", buffer)[0])


# -- a scripted peer ------------------------------------------------------------------------------


class ScriptedPeer:
    """A peer you script step by step, over a connected socket: for fault tests.

    *sock* is a connected stream socket (a gevent socket, or a standard one,
    which is converted: the peer must not block the hub the server runs on).
    With *tls* (an ``ssl.SSLContext`` for the client side, such as
    ``TLSKit.client_context()``) the TLS handshake runs before the
    constructor returns, over memory BIOs, so every method below keeps its
    meaning at the socket level: ``read_slowly`` reads the ciphertext slowly,
    ``reset`` resets the TCP connection. *framing* is the codec of
    :meth:`send_frame` and :meth:`read_frame`. Each wait is bounded by its
    *timeout* argument or else by *timeout* given here.

    Reading methods take what arrived first from the peer's own buffer, then
    from the socket; bytes that arrive beyond what a method wanted stay
    buffered for the next one. They raise :class:`ScriptError` on a timeout
    or on something other than what they expect, and the socket's
    ``ConnectionResetError`` on a reset (except :meth:`expect_reset`).
    """

    def __init__(
        self,
        sock: Any,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        framing: Codec | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not isinstance(sock, gevent.socket.socket):
            sock = gevent.socket.socket(sock.family, sock.type, fileno=sock.detach())
        #: The (gevent) socket underneath, for anything the script needs beyond these methods.
        self.sock: Any = sock
        #: Default bound, in seconds, of every wait.
        self.timeout = float(timeout)
        #: The codec of :meth:`send_frame` and :meth:`read_frame` (``None``: no framing).
        self.framing: Codec | None = check_codec(framing, "framing")
        self._buf = bytearray()
        self._eof = False
        self._failure: OSError | None = None
        self._closed = False
        self._tls: ssl.SSLObject | None = None
        self._tin = ssl.MemoryBIO()
        self._tout = ssl.MemoryBIO()
        if tls is not None:
            self._handshake(tls, server_hostname)

    # -- facts ----------------------------------------------------------------------

    @property
    def eof(self) -> bool:
        """True once the other side's EOF (TLS: its close_notify or TCP EOF) arrived."""
        return self._eof

    @property
    def closed(self) -> bool:
        """True once this peer closed (or reset) its socket."""
        return self._closed

    @property
    def tls(self) -> ssl.SSLObject | None:
        """The TLS object (``version()``, ``cipher()``, ``getpeercert()``), or ``None`` on plain TCP."""
        return self._tls

    # -- sending --------------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of *data* (TLS: encrypted), or raise ``ScriptError`` if the other side does not take it.

        An ``OSError`` of the socket (``BrokenPipeError`` after the other
        side closed) propagates.
        """
        if self._tls is not None:
            view = memoryview(data).cast("B")
            while view:
                written = self._tls.write(view)
                view = view[written:]
            self._flush_tls()
        else:
            self._sendall(bytes(data))

    def send_frame(self, frame: Any) -> None:
        """Encode *frame* with :attr:`framing` and send it."""
        self.send(self._codec(None).encode(frame))

    def send_slowly(self, data: bytes, *, chunk: int = 1, interval: float = 0.01) -> None:
        """Send *data* *chunk* bytes at a time, *interval* seconds apart (a trickling peer)."""
        for start in range(0, len(data), chunk):
            if start:
                gevent.sleep(interval)  # pacing is the behaviour under test, not synchronisation
            self.send(data[start:start + chunk])

    def half_close(self) -> None:
        """Shut this side's writing: TLS close_notify (if TLS), then a FIN; reading goes on."""
        if self._tls is not None:
            try:
                self._tls.unwrap()
            except (ssl.SSLWantReadError, ssl.SSLError):
                pass  # close_notify is written; the other side's comes later (or never)
            self._flush_tls()
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        """Abort the connection: close with ``SO_LINGER`` 0, so the other side gets a reset (TCP RST)."""
        if self._closed:
            return
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def stall(self, rcvbuf: int = 1) -> None:
        """Stop reading, and shrink the receive buffer (``SO_RCVBUF``) so a writer is held back sooner.

        The peer reads nothing unless a reading method is called. On TCP the
        smaller buffer limits what the other side may send beyond what is
        already in flight (``RawPeer(rcvbuf=...)`` sets it before connecting,
        which is stricter); a Unix socket's writer is bounded by its own send
        buffer instead.
        """
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)

    def close(self) -> None:
        """Close the socket (a clean close: FIN); idempotent."""
        if not self._closed:
            self._closed = True
            self.sock.close()

    # -- reading --------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> bytes:
        """The next bytes: what is buffered, else whatever arrives next (1 byte or more); ``b""`` at EOF."""
        if not self._buf:
            wait = _seconds(timeout, self.timeout)
            if not self._fill(time.monotonic() + wait):
                raise ScriptError(f"nothing arrived within {wait:g} s")
        return self._take(len(self._buf))

    def read_available(self) -> bytes:
        """Whatever has arrived so far, without waiting (``b""`` if nothing)."""
        self._pull()
        return self._take(len(self._buf))

    def read_exactly(self, size: int, timeout: float | None = None) -> bytes:
        """Exactly *size* bytes; ``ScriptError`` if EOF or the deadline comes first."""
        wait = _seconds(timeout, self.timeout)
        deadline = time.monotonic() + wait
        while len(self._buf) < size:
            if self._eof:
                raise ScriptError(f"EOF after {len(self._buf)} of {size} bytes: {bytes(self._buf)!r}")
            if not self._fill(deadline):
                raise ScriptError(f"{len(self._buf)} of {size} bytes within {wait:g} s: {bytes(self._buf)!r}")
        return self._take(size)

    def expect(self, data: bytes, timeout: float | None = None) -> None:
        """Read ``len(data)`` bytes and check they are *data*; ``ScriptError`` says what came instead.

        Fails as soon as what arrived cannot be the start of *data*, without
        waiting for the rest.
        """
        wait = _seconds(timeout, self.timeout)
        deadline = time.monotonic() + wait
        while True:
            got = bytes(self._buf[:len(data)])
            if not data.startswith(got):
                raise ScriptError(f"expected {data!r}, got {got!r}")
            if len(got) == len(data):
                self._take(len(data))
                return
            if self._eof:
                raise ScriptError(f"expected {data!r}, got {got!r} and then EOF")
            if not self._fill(deadline):
                raise ScriptError(f"expected {data!r}, got {got!r} within {wait:g} s")

    def read_frame(self, timeout: float | None = None, *, framing: Codec | None = None) -> Any:
        """The next whole frame, decoded with *framing* (default: :attr:`framing`)."""
        codec = self._codec(framing)
        wait = _seconds(timeout, self.timeout)
        deadline = time.monotonic() + wait
        while True:
            found = codec.decode(bytes(self._buf), 0) if self._buf else None
            if found is not None:
                frame, end = found
                del self._buf[:end]
                return frame
            if self._eof:
                raise ScriptError(f"EOF before a whole frame; buffered: {bytes(self._buf)!r}")
            if not self._fill(deadline):
                raise ScriptError(f"no whole frame within {wait:g} s; buffered: {bytes(self._buf)!r}")

    def read_until_eof(self, timeout: float | None = None) -> bytes:
        """Everything until the other side's EOF."""
        wait = _seconds(timeout, self.timeout)
        deadline = time.monotonic() + wait
        while not self._eof:
            if not self._fill(deadline):
                raise ScriptError(f"no EOF within {wait:g} s; got {bytes(self._buf)!r}")
        return self._take(len(self._buf))

    def expect_eof(self, timeout: float | None = None) -> None:
        """Check that nothing more arrives, then EOF (a clean close, not a reset)."""
        data = self.read_until_eof(timeout)
        if data:
            raise ScriptError(f"expected EOF, got {data!r} first")

    def expect_reset(self, timeout: float | None = None) -> bytes:
        """Wait for a reset (``ECONNRESET``); returns what arrived before it. A clean EOF fails."""
        wait = _seconds(timeout, self.timeout)
        deadline = time.monotonic() + wait
        try:
            while not self._eof:
                if not self._fill(deadline):
                    raise ScriptError(f"no reset within {wait:g} s; got {bytes(self._buf)!r}")
        except ConnectionResetError:
            return self._take(len(self._buf))
        raise ScriptError(f"expected a reset, got a clean EOF after {bytes(self._buf)!r}")

    def read_slowly(self, size: int, *, chunk: int = 1, interval: float = 0.01,
                    timeout: float | None = None) -> bytes:
        """Read *size* bytes, taking at most *chunk* bytes off the socket every *interval* seconds.

        A slow reader: what the other side writes backs up in the socket
        buffers, so its writes block (and its ``write_timeout`` may fire).
        With TLS, *chunk* counts ciphertext and *size* plaintext.
        """
        wait = _seconds(timeout, self.timeout)
        deadline = time.monotonic() + wait
        while len(self._buf) < size:
            if self._eof:
                raise ScriptError(f"EOF after {len(self._buf)} of {size} bytes")
            if not self._fill(deadline, chunk):
                raise ScriptError(f"{len(self._buf)} of {size} bytes within {wait:g} s")
            if len(self._buf) < size:
                gevent.sleep(interval)  # the slowness is the behaviour under test
        return self._take(size)

    # -- context manager ------------------------------------------------------------

    def __enter__(self) -> ScriptedPeer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "eof" if self._eof else "open"
        tls = " TLS" if self._tls else ""
        return f"<{type(self).__name__}{tls} {state}, {len(self._buf)} byte(s) buffered>"

    # -- internals ------------------------------------------------------------------

    def _codec(self, framing: Codec | None) -> Codec:
        codec = framing if framing is not None else self.framing
        if codec is None:
            raise ScriptError("frames need a codec: pass framing= to the peer (or to this call)")
        return codec

    def _take(self, size: int) -> bytes:
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def _sendall(self, data: bytes) -> None:
        self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise ScriptError(f"the other side did not take the bytes within {self.timeout:g} s") from None

    def _flush_tls(self) -> None:
        pending = self._tout.read()
        if pending:
            self._sendall(pending)

    def _recv_raw(self, size: int, deadline: float | None) -> bytes | None:
        """One read of the socket: bytes (``b""`` at EOF), or None if nothing came by *deadline*.

        ``deadline=None`` does not wait at all.
        """
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        if self._closed:
            raise ScriptError("this peer's socket is closed")
        wait = 0.0 if deadline is None else max(0.0, deadline - time.monotonic())
        self.sock.settimeout(wait)
        try:
            data: bytes = self.sock.recv(size)
        except (TimeoutError, BlockingIOError):
            return None
        return data

    def _fill(self, deadline: float | None, size: int = _READ_SIZE) -> bool:
        """Read once more into the buffer (TLS: until a record decrypts); False if nothing came in time.

        True also at EOF (then :attr:`eof` is set).
        """
        while not self._eof:
            data = self._recv_raw(size, deadline)
            if data is None:
                return False
            if self._tls is None:
                if data:
                    self._buf += data
                else:
                    self._eof = True
                return True
            if data:
                self._tin.write(data)
            else:
                self._tin.write_eof()
            if self._decrypt():
                return True
        return True

    def _decrypt(self) -> bool:
        """Move what the incoming BIO holds into the buffer; True if plaintext came (or EOF)."""
        tls = self._tls
        assert tls is not None
        got = False
        while True:
            try:
                chunk = tls.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True
                got = True
                break
            if not chunk:
                self._eof = got = True
                break
            self._buf += chunk
            got = True
        self._flush_tls()  # post-handshake messages
        return got

    def _pull(self) -> bool:
        """Take whatever the socket holds now, without waiting; True if anything (or EOF) came.

        A reset is kept and raised by the next reading method.
        """
        moved = False
        while not self._eof and not self._closed and self._failure is None:
            try:
                if not self._fill(None):
                    break
            except OSError as exc:
                self._failure = exc
                return True
            moved = True
        return moved

    def _handshake(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        tls = context.wrap_bio(self._tin, self._tout, server_side=False, server_hostname=server_hostname)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            pending = self._tout.read()
            if pending:
                self._sendall(pending)
            if done:
                break
            data = self._recv_raw(_READ_SIZE, deadline)
            if data is None:
                raise ScriptError(f"TLS handshake not done within {self.timeout:g} s")
            if data:
                self._tin.write(data)
            else:
                self._tin.write_eof()
        self._tls = tls


class RawPeer(ScriptedPeer):
    """A :class:`ScriptedPeer` connected to *target*: a port, or a running ``Listener``.

    ``RawPeer(listener)`` connects to ``host:listener.port`` (``127.0.0.1``
    by default); *rcvbuf* sets ``SO_RCVBUF`` before connecting, which bounds
    what the server can push to a peer that does not read. TLS is on with
    *tls* (an ``ssl.SSLContext``); *server_hostname* defaults to *host*.
    """

    def __init__(
        self,
        target: int | Listener,
        host: str = "127.0.0.1",
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        framing: Codec | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        rcvbuf: int | None = None,
    ) -> None:
        port = target.port if isinstance(target, Listener) else int(target)
        family, kind, proto, _, address = gevent.socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        sock = gevent.socket.socket(family, kind, proto)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        super().__init__(sock, tls=tls, server_hostname=server_hostname or host, framing=framing,
                         timeout=timeout)


# -- a connection pair ----------------------------------------------------------------------------


class _OneConnection:
    """The Service of a pair given a ConnectionService: hands it to the one connection."""

    def __init__(self, connection_service: Any) -> None:
        self.connection_service = connection_service

    def on_connect(self, caller: Caller) -> Any:
        return self.connection_service


def _private_address() -> tuple[str, str | None]:
    """A Unix socket address nobody else knows, and a directory to remove afterwards (or None)."""
    if sys.platform.startswith("linux"):
        return f"\0gtcp-testing-{uuid.uuid4().hex}", None  # the abstract namespace: no file at all
    directory = tempfile.mkdtemp(prefix="gtcp-testing-")
    return os.path.join(directory, "s"), directory


class ConnectionPair:
    """One connection of a real gtcp listener, with the test at the other end.

    Made by :func:`connect`. The service runs exactly as it does in
    production, because it *is* production code: the pair builds a
    ``gtcp.Listener`` with your options (``Listener.from_socket`` on a Unix
    socket in the abstract namespace: no port, no file, nothing reachable
    from outside), lets it accept one connection from :attr:`peer` and stops
    accepting. From there on the connection is served by the listener's own
    ``Connection`` greenlet: the same ``on_connect``/``on_bytes``/``on_eof``/
    ``on_error``/``on_close`` rules, framing, replies, ``idle_timeout``,
    ``write_timeout``, TLS and lingering close. Nothing is re-implemented,
    so nothing can drift from the listener (a copy of the dispatch loop, as
    Twisted's ``StringTransport`` tests are, could).

    Why a socket and not a fake in-memory transport: gtcp's dispatch reads a
    socket with gevent's watchers; an in-kernel Unix socket pair is the
    smallest thing it runs on unchanged, and it costs microseconds.
    The socket being a Unix one shows in two places: ``caller.remote_host``
    is ``""`` and the ports are 0 (as on ``Listener.unix``), and TCP socket
    options (``keepalive``, ``user_timeout``) have nothing to act on. Use
    ``gtcp_listener`` with a :class:`RawPeer` for those.

    What makes it a unit-testing tool is :meth:`settle`: it waits until the
    connection has read everything fed to it and is waiting for more (or has
    closed), so :meth:`written` tells what the service wrote *in answer to
    what was fed*, and an empty :meth:`written` proves it wrote nothing,
    without any sleep. A callback that waits on something other than the
    peer (a timer, another greenlet) keeps the connection busy; :meth:`settle`
    then waits for it, up to its timeout.
    """

    def __init__(
        self,
        service: Any,
        *,
        peer_tls: ssl.SSLContext | None = None,
        server_hostname: str = "localhost",
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> None:
        if isinstance(service, type):
            raise TypeError(f"connect() takes a Service or ConnectionService instance, not the class "
                            f"{service.__name__}: pass {service.__name__}()")
        self.timeout = float(timeout)
        self._caller: Caller | None = None
        self._one: _OneConnection | None = None
        if not callable(getattr(service, "on_connect", None)):
            self._one = _OneConnection(service)
        address, self._directory = _private_address()
        listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listening.bind(address)
            listening.listen(1)
            #: The listener serving the pair's one connection (``stats()``; :meth:`stop` stops it).
            self.listener = Listener.from_socket(listening, **options)
        except BaseException:
            listening.close()
            self._remove_directory()
            raise
        self.listener.attach(self._one if self._one is not None else service)
        self.listener.start()
        sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(address)
            self._conn = self._accepted()
        except BaseException:
            sock.close()
            self.listener.immediate_stop()
            self._remove_directory()
            raise
        self.listener.graceful_stop()  # accept nothing more; the connection carries on
        self._remove_directory()
        if peer_tls is None and options.get("secure_socket") is not None:
            peer_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            peer_tls.check_hostname = False
            peer_tls.verify_mode = ssl.CERT_NONE
        try:
            #: The test's end of the connection (a :class:`ScriptedPeer`).
            self.peer = ScriptedPeer(sock, tls=peer_tls, server_hostname=server_hostname,
                                     framing=options.get("framing"), timeout=timeout)
        except BaseException:
            sock.close()
            self.listener.immediate_stop()
            raise
        self.settle()

    def _accepted(self) -> Connection | None:
        deadline = time.monotonic() + self.timeout
        while self.listener.stats().accepted < 1:
            if time.monotonic() > deadline:
                raise ScriptError(f"the pair's connection was not accepted within {self.timeout:g} s")
            gevent.sleep(_POLL)
        # The one connection of the listener's one run (already gone if on_connect refused it).
        for run in self.listener._runs:
            for conn in run.connections:
                return conn
        return None

    def _remove_directory(self) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    # -- facts ----------------------------------------------------------------------

    @property
    def caller(self) -> Caller | None:
        """The connection's ``gtcp.Caller`` (the one ``on_connect`` got), or None if it never got that far."""
        if self._caller is None and self._conn is not None:
            self._caller = self._conn.caller
        return self._caller

    @property
    def closed(self) -> bool:
        """True once the server side closed the connection (by itself, a stop, or after the peer left).

        ``on_close`` runs right after, in the connection's greenlet;
        :meth:`wait_closed` waits for it.
        """
        conn = self._conn
        if conn is None or conn.greenlet is None or conn.greenlet.dead:
            return True
        stream = conn.stream
        return stream is not None and bool(stream.closed)

    # -- feeding --------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Send *data* to the connection (``on_bytes`` sees it as a peer's bytes)."""
        self.peer.send(data)

    def feed_frame(self, frame: Any) -> None:
        """Encode *frame* with the pair's ``framing`` and send it."""
        self.peer.send_frame(frame)

    def send_eof(self) -> None:
        """Half-close the peer's side: the service gets ``on_eof`` (or ``on_close``) and can still reply."""
        self.peer.half_close()

    def reset(self) -> None:
        """Reset the connection from the peer's side: the service gets ``on_error(PeerClosedError)``,
        then ``on_close``; its later writes fail.

        The kernel reports ``ECONNRESET`` to a Unix socket whose peer closes
        with unread data (Linux); when the peer has none, one byte is put in
        its queue from the server's socket first, at the OS level (no gtcp
        code sees it), then the peer closes.
        """
        conn = self._conn
        if not self.peer.closed and conn is not None and conn.gsock.fileno() >= 0 \
                and _unread(self.peer.sock.fileno()) == 0:
            try:
                os.write(conn.gsock.fileno(), b"\0")
            except OSError:
                pass  # the server's side is gone already
        self.peer.reset()

    def close(self) -> None:
        """Close the peer's side completely (a client that hangs up): the service sees EOF."""
        self.peer.close()

    def stop(self) -> None:
        """Close the connection from the server side, at once, as ``Listener.immediate_stop()`` does.

        ``on_close`` has run when this returns. The peer stays open (it sees EOF).
        """
        self.listener.immediate_stop()

    # -- seeing what it did ---------------------------------------------------------

    def settle(self, timeout: float | None = None) -> None:
        """Wait until the connection has read all that was fed and waits for more, or has closed.

        Meanwhile what it writes is taken off the socket into the peer's
        buffer, so a service blocked on a full socket makes progress.
        ``ScriptError`` if it is still busy (a callback waiting on something
        other than the peer) after *timeout* seconds.
        """
        wait = _seconds(timeout, self.timeout)
        deadline = time.monotonic() + wait
        while True:
            gevent.idle()  # everything that can run has run
            moved = self.peer._pull()
            if not moved and self._quiet():
                return
            if time.monotonic() > deadline:
                raise ScriptError(f"the connection is still busy after {wait:g} s (a callback waiting on "
                                  "something other than the peer?)")
            if not moved:
                gevent.sleep(_POLL)

    def written(self, timeout: float | None = None) -> bytes:
        """:meth:`settle`, then everything the connection wrote that was not read yet (``b""``: nothing)."""
        self.settle(timeout)
        return self.peer.read_available()

    def written_frames(self, timeout: float | None = None) -> list[Any]:
        """:meth:`settle`, then every whole frame written and not read yet (a partial one stays buffered)."""
        self.settle(timeout)
        self.peer._pull()
        frames: list[Any] = []
        codec = self.peer._codec(None)
        buffer = self.peer._buf
        while buffer:
            found = codec.decode(bytes(buffer), 0)
            if found is None:
                break
            frame, end = found
            del buffer[:end]
            frames.append(frame)
        return frames

    def expect(self, data: bytes, timeout: float | None = None) -> None:
        """The next bytes the connection writes are *data* (see :meth:`ScriptedPeer.expect`)."""
        self.peer.expect(data, timeout)

    def read_frame(self, timeout: float | None = None) -> Any:
        """The next frame the connection writes, decoded with the pair's ``framing``."""
        return self.peer.read_frame(timeout)

    def expect_eof(self, timeout: float | None = None) -> None:
        """Nothing more is written, then the connection closes its side."""
        self.peer.expect_eof(timeout)

    def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the connection closed on the server side and its ``on_close`` has run.

        (Unless ``on_close`` itself waits for something.) The lingering close
        goes on after it, until the peer closes or for up to 2 s; :meth:`close`
        or the end of the test ends it.
        """
        wait = _seconds(timeout, self.timeout)
        deadline = time.monotonic() + wait
        while True:
            gevent.idle()
            self.peer._pull()
            if self.closed:
                return
            if time.monotonic() > deadline:
                raise ScriptError(f"the connection is still open after {wait:g} s")
            gevent.sleep(_POLL)

    def _quiet(self) -> bool:
        conn = self._conn
        if self._caller is None and conn is not None:
            self._caller = conn.caller  # kept: the connection forgets it when it ends
        if conn is None or conn.greenlet is None or conn.greenlet.dead:
            return True
        stream = conn.stream
        if stream is None:
            return False
        fd = conn.gsock.fileno()
        if fd < 0:
            return True
        if _unread(fd):
            return False  # fed bytes not read yet
        return bool(stream.closed or stream.reading)

    # -- context manager ------------------------------------------------------------

    def __enter__(self) -> ConnectionPair:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        self.peer.close()

    def __repr__(self) -> str:
        return f"<gtcp.testing.ConnectionPair {'closed' if self.closed else 'open'} {self.peer!r}>"


def connect(
    service: Any,
    *,
    peer_tls: ssl.SSLContext | None = None,
    server_hostname: str = "localhost",
    timeout: float = DEFAULT_TIMEOUT,
    **options: Any,
) -> ConnectionPair:
    """Serve one connection with *service* and return the test's end of it.

    *service* is a ``Service`` (its ``on_connect`` runs, as for any
    connection) or a ``ConnectionService`` (served as if ``on_connect`` had
    returned it). *options* are the ``Listener`` options (``framing``,
    ``idle_timeout``, ``write_timeout``, ``secure_socket``, ``proxy_protocol``
    ...), checked as the listener checks them. With ``secure_socket``, the
    peer does a TLS handshake with *peer_tls* (by default a context that
    does not check the server's certificate) for *server_hostname*.
    Returns once ``on_connect`` has run and the connection waits for bytes
    (see :class:`ConnectionPair`); use it as a context manager, or call
    ``stop()`` at the end.
    """
    return ConnectionPair(service, peer_tls=peer_tls, server_hostname=server_hostname, timeout=timeout,
                          **options)


# -- failing on callback errors -------------------------------------------------------------------


class UnexpectedErrors(AssertionError):
    """gtcp logged errors (a callback raised, returned what cannot be sent...) the test did not expect."""


def _record_text(record: logging.LogRecord) -> str:
    return logging.Formatter("%(levelname)s %(name)s: %(message)s").format(record)


class ErrorWatch(logging.Handler):
    """Collects what the ``gtcp`` logger reports at ERROR or above, and fails on it.

    gtcp logs at ERROR what is a bug on the serving side: a callback that
    raised, that returned something that cannot be sent, a bad
    ``ConnectionService``, a returned ``gtcp.Error``, a listener that cannot
    accept. Peer problems (failed handshakes, bad PROXY headers) are
    WARNINGs and do not count. :meth:`check` raises :class:`UnexpectedErrors`
    for records it has not reported yet, unless they were expected
    (:meth:`expect`). Use it as a context manager (``check()`` at the end) or
    :meth:`start`/:meth:`stop` it.
    """

    def __init__(self, logger: str = "gtcp") -> None:
        super().__init__(logging.ERROR)
        #: Every record seen at ERROR or above, expected or not.
        self.records: list[logging.LogRecord] = []
        self._logger = logging.getLogger(logger)
        self._saved_level: int | None = None
        self._any = False
        self._patterns: list[str] = []
        self._checked = 0

    def start(self) -> None:
        """Start collecting (lowers the logger's level to ERROR if it was set higher)."""
        self._logger.addHandler(self)
        if self._logger.getEffectiveLevel() > logging.ERROR:
            self._saved_level = self._logger.level
            self._logger.setLevel(logging.ERROR)

    def stop(self) -> None:
        """Stop collecting."""
        self._logger.removeHandler(self)
        if self._saved_level is not None:
            self._logger.setLevel(self._saved_level)
            self._saved_level = None

    def emit(self, record: logging.LogRecord) -> None:
        """Keep *record* (called by the logging machinery)."""
        self.records.append(record)

    def expect(self, *patterns: str) -> None:
        """Allow errors: all, or those whose text (message or traceback) contains one of *patterns*."""
        if patterns:
            self._patterns.extend(patterns)
        else:
            self._any = True

    def expected(self, record: logging.LogRecord) -> bool:
        """True if *record* was allowed by :meth:`expect`."""
        return self._any or any(pattern in _record_text(record) for pattern in self._patterns)

    def unexpected(self) -> list[logging.LogRecord]:
        """The records seen so far that were not expected."""
        return [record for record in self.records if not self.expected(record)]

    def check(self) -> None:
        """Raise :class:`UnexpectedErrors` for unexpected records not reported by an earlier check."""
        fresh = self.records[self._checked:]
        self._checked = len(self.records)
        bad = [record for record in fresh if not self.expected(record)]
        if bad:
            lines = "\n".join("  " + _record_text(record).replace("\n", "\n    ") for record in bad)
            raise UnexpectedErrors(
                f"gtcp logged {len(bad)} error(s) while serving (a callback raised, or returned something "
                f"gtcp cannot send...):\n{lines}\nIf the test expects them, mark it "
                "@pytest.mark.gtcp_expect_callback_errors (or call gtcp_listener.expect_errors())."
            )

    def skip(self) -> None:
        """Count the records seen so far as reported: the next :meth:`check` looks only at later ones."""
        self._checked = len(self.records)

    def __enter__(self) -> ErrorWatch:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        if exc_type is None:
            self.check()


# -- factories (the fixtures' machinery) ----------------------------------------------------------


class _Expecting:
    """expect_errors() and errors, for the factories that share an ErrorWatch."""

    watch: ErrorWatch | None

    def expect_errors(self, *patterns: str) -> None:
        """Tell the watch that this test expects gtcp errors (all, or those containing one of *patterns*)."""
        if self.watch is None:
            raise RuntimeError("this factory has no ErrorWatch: nothing checks errors")
        self.watch.expect(*patterns)

    @property
    def errors(self) -> list[logging.LogRecord]:
        """The ERROR records gtcp logged so far in this test (expected or not)."""
        return [] if self.watch is None else list(self.watch.records)


class ListenerFactory(_Expecting):
    """Starts listeners on 127.0.0.1, port 0, and stops them all at :meth:`close` (``immediate_stop``).

    ``factory(service, **options)`` returns the started ``gtcp.Listener``
    (``listener.port`` is its port); *options* are the ``Listener``'s, plus
    ``local_host`` (default ``"127.0.0.1"``) and ``local_port`` (default 0).
    With an :class:`ErrorWatch`, ``expect_errors()`` and ``errors`` talk to it.
    """

    def __init__(self, watch: ErrorWatch | None = None) -> None:
        self.watch = watch
        #: The listeners started so far.
        self.listeners: list[Listener] = []

    def __call__(self, service: Any, **options: Any) -> Listener:
        """Start a listener for *service* and return it."""
        options.setdefault("local_host", "127.0.0.1")
        listener = Listener(options.pop("local_port", 0), **options)
        listener.attach(service)
        listener.start()
        self.listeners.append(listener)
        return listener

    def close(self) -> None:
        """``immediate_stop()`` every listener (their connections' ``on_close`` have run on return)."""
        listeners, self.listeners = self.listeners, []
        for listener in listeners:
            listener.immediate_stop()

    def __enter__(self) -> ListenerFactory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ClientFactory:
    """Makes ``gtcp.Client`` objects connected to a listener, and closes them all at :meth:`close`.

    ``factory(target, host="127.0.0.1", **options)``: *target* is a
    ``Listener`` or a port; *options* are the ``Client``'s, with test-sized
    defaults: ``timeout``, ``write_timeout`` and ``connect_timeout`` of
    :data:`DEFAULT_TIMEOUT` seconds instead of minutes.
    """

    def __init__(self) -> None:
        #: The clients made so far.
        self.clients: list[Client] = []

    def __call__(self, target: Listener | int, host: str = "127.0.0.1", **options: Any) -> Client:
        """Connect a client to *target* and return it."""
        for name in ("timeout", "write_timeout", "connect_timeout"):
            options.setdefault(name, DEFAULT_TIMEOUT)
        port = target.port if isinstance(target, Listener) else int(target)
        client = Client(host, port, **options)
        self.clients.append(client)
        return client

    def close(self) -> None:
        """Close every client."""
        clients, self.clients = self.clients, []
        for client in clients:
            client.close()

    def __enter__(self) -> ClientFactory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PeerFactory:
    """Makes :class:`RawPeer` objects (same arguments) and closes them all at :meth:`close`."""

    def __init__(self) -> None:
        #: The peers made so far.
        self.peers: list[RawPeer] = []

    def __call__(self, target: int | Listener, host: str = "127.0.0.1", **options: Any) -> RawPeer:
        """Connect a raw peer to *target* and return it."""
        peer = RawPeer(target, host, **options)
        self.peers.append(peer)
        return peer

    def close(self) -> None:
        """Close every peer."""
        peers, self.peers = self.peers, []
        for peer in peers:
            peer.close()

    def __enter__(self) -> PeerFactory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PairFactory(_Expecting):
    """Makes :class:`ConnectionPair` objects (:func:`connect`'s arguments); stops them at :meth:`close`."""

    def __init__(self, watch: ErrorWatch | None = None) -> None:
        self.watch = watch
        #: The pairs made so far.
        self.pairs: list[ConnectionPair] = []

    def __call__(self, service: Any, **options: Any) -> ConnectionPair:
        """Serve one connection with *service*; see :func:`connect`."""
        pair = connect(service, **options)
        self.pairs.append(pair)
        return pair

    def close(self) -> None:
        """Stop every pair (``on_close`` has run) and close its peer."""
        pairs, self.pairs = self.pairs, []
        for pair in pairs:
            pair.stop()
            pair.peer.close()

    def __enter__(self) -> PairFactory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- logs -----------------------------------------------------------------------------------------


def _level(level: int | str) -> int:
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise ValueError(f"unknown logging level {level!r}")
        return number
    return level


class LogCapture(logging.Handler):
    """What the ``gtcp`` logger (and its children) says, down to DEBUG, while started.

    ``records`` holds the ``logging.LogRecord`` objects, ``text`` the lines
    (tracebacks included), :meth:`messages` the messages at a level, and
    :meth:`wait_for` waits until a message appears (for what a connection's
    greenlet logs after the test's last step). The logger's level is set
    to *level* while capturing and restored afterwards.
    """

    def __init__(self, logger: str = "gtcp", level: int | str = logging.DEBUG) -> None:
        super().__init__(logging.DEBUG)
        #: Everything captured, oldest first.
        self.records: list[logging.LogRecord] = []
        self._logger = logging.getLogger(logger)
        self._capture_level = _level(level)
        self._saved_level: int | None = None
        self._arrived = Event()
        self._thread = threading.get_ident()

    def start(self) -> None:
        """Start capturing."""
        self._saved_level = self._logger.level
        self._logger.setLevel(self._capture_level)
        self._logger.addHandler(self)

    def stop(self) -> None:
        """Stop capturing (what was captured stays)."""
        self._logger.removeHandler(self)
        if self._saved_level is not None:
            self._logger.setLevel(self._saved_level)
            self._saved_level = None

    def emit(self, record: logging.LogRecord) -> None:
        """Keep *record* (called by the logging machinery)."""
        self.records.append(record)
        if threading.get_ident() == self._thread:  # gevent objects belong to one thread
            self._arrived.set()

    @property
    def text(self) -> str:
        """Every record as ``LEVEL logger: message`` lines, tracebacks included."""
        return "".join(_record_text(record) + "\n" for record in self.records)

    def messages(self, level: int | str | None = None, *, and_above: bool = False) -> list[str]:
        """The messages (``getMessage()``) of the records at *level* (``"WARNING"`` or
        ``logging.WARNING``; ``None``: all), or at *level* and above."""
        if level is None:
            return [record.getMessage() for record in self.records]
        number = _level(level)
        return [record.getMessage() for record in self.records
                if record.levelno == number or (and_above and record.levelno > number)]

    def clear(self) -> None:
        """Forget what was captured so far."""
        self.records.clear()

    def wait_for(self, text: str, *, count: int = 1, level: int | str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> list[logging.LogRecord]:
        """Wait until *count* records (at *level* or above, if given) contain *text*; returns them.

        ``ScriptError`` after *timeout* seconds, with what was logged.
        """
        minimum = logging.NOTSET if level is None else _level(level)
        deadline = time.monotonic() + timeout
        while True:
            found = [record for record in self.records
                     if record.levelno >= minimum and text in record.getMessage()]
            if len(found) >= count:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise ScriptError(f"{len(found)} of {count} log record(s) with {text!r} within "
                                  f"{timeout:g} s; logged:\n{self.text}")
            self._arrived.clear()
            self._arrived.wait(min(left, 0.05))  # records from other OS threads do not set the event

    def __enter__(self) -> LogCapture:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- TLS ------------------------------------------------------------------------------------------


class TLSKit:
    """A throwaway PKI in *directory*: a trustme CA, a server and a client certificate, and records.

    Files (paths as ``str``): ``ca_file`` (the CA, to trust), ``cert_file``
    and ``key_file`` (the server: ``localhost``, ``127.0.0.1`` and ``::1``),
    ``client_cert_file`` and ``client_key_file`` (a client,
    ``client@example.org``), ``other_ca_file`` (a CA that signed nothing
    here: trust it to see verification fail). Records: ``listener``
    and ``client`` (server-authenticated TLS), ``mutual_listener`` (requires
    a client certificate signed by the CA) and ``mutual_client`` (presents
    one). *key_type* is ``"ecdsa"`` (fast) or ``"rsa"``. Needs ``trustme``
    (``pip install gtcp[testing]``).
    """

    def __init__(self, directory: str | os.PathLike[str], *, key_type: str = "ecdsa") -> None:
        try:
            import trustme
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("gtcp.testing.TLSKit needs trustme: pip install trustme "
                               "(or pip install gtcp[testing])") from exc
        kinds = {"ecdsa": trustme.KeyType.ECDSA, "rsa": trustme.KeyType.RSA}
        if key_type not in kinds:
            raise ValueError(f"key_type must be 'ecdsa' or 'rsa', got {key_type!r}")
        self._key_type = kinds[key_type]
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        self._root = root
        #: The ``trustme.CA`` itself (``issue_cert``, ``cert_pem``...).
        self.ca = trustme.CA(key_type=self._key_type)
        self.ca_file = str(root / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.cert_file, self.key_file = self.issue("localhost", "127.0.0.1", "::1", name="server")
        self.client_cert_file, self.client_key_file = self.issue(
            "client@example.org", name="client", common_name="gtcp test client")
        self.other_ca_file = str(root / "other-ca.pem")
        trustme.CA(key_type=self._key_type).cert_pem.write_to_path(self.other_ca_file)
        #: The server's record: its certificate and key.
        self.listener = self.listener_secure_socket()
        #: A client's record: trusts the CA.
        self.client = self.client_secure_socket()
        #: A server that requires a client certificate signed by the CA.
        self.mutual_listener = self.listener_secure_socket(
            mutual_ssl=MutualSsl(cert=self.ca_file, verify_client=VerifyClient.REQUIRE))
        #: A client that trusts the CA and presents the client certificate.
        self.mutual_client = self.client_secure_socket(
            key=CertKey(self.client_cert_file, self.client_key_file))

    def issue(self, *identities: str, name: str | None = None,
              common_name: str | None = None) -> tuple[str, str]:
        """Issue a certificate for *identities* from the CA; ``(cert_file, key_file)`` written as *name*.

        The certificate file holds the whole chain. For a second server
        name, a rotation (``reload_tls``), an expired-looking one, and so on.
        """
        stem = name or f"cert-{uuid.uuid4().hex[:8]}"
        issued = self.ca.issue_cert(*identities, common_name=common_name, key_type=self._key_type)
        cert_file, key_file = str(self._root / f"{stem}.pem"), str(self._root / f"{stem}.key")
        issued.private_key_pem.write_to_path(key_file)
        for index, pem in enumerate(issued.cert_chain_pems):
            pem.write_to_path(cert_file, append=index > 0)
        return cert_file, key_file

    def listener_secure_socket(self, **fields: Any) -> ListenerSecureSocket:
        """A ``ListenerSecureSocket`` with the server's key and *fields* (``protocol=``, ``mutual_ssl=``)."""
        fields.setdefault("key", CertKey(self.cert_file, self.key_file))
        return ListenerSecureSocket(**fields)

    def client_secure_socket(self, **fields: Any) -> ClientSecureSocket:
        """A ``ClientSecureSocket`` trusting the CA, with *fields* (``protocol=``, ``key=`` ...)."""
        fields.setdefault("cert", self.ca_file)
        return ClientSecureSocket(**fields)

    def client_context(self, *, mutual: bool = False) -> ssl.SSLContext:
        """A standard-library client context trusting the CA (presenting the client certificate if *mutual*).

        For raw peers (``RawPeer(listener, tls=...)``) and third-party clients.
        """
        context = ssl.create_default_context(cafile=self.ca_file)
        if mutual:
            context.load_cert_chain(self.client_cert_file, self.client_key_file)
        return context

    def server_context(self, *, mutual: bool = False) -> ssl.SSLContext:
        """A standard-library server context with the server certificate (and client checks if *mutual*)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        if mutual:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca_file)
        return context

    def __repr__(self) -> str:
        return f"<gtcp.testing.TLSKit {self._root}>"
