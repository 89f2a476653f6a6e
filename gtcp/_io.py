"""The byte stream under every connection, and the one place where OS and ssl
errors become gtcp errors.

Theory of operation
-------------------
gevent's socket methods are convenient but costly on the hot path: ``recv``
first makes a non-blocking ``recv`` that fails with ``EAGAIN`` (an exception
with its message formatted) before it waits, ``sendall`` makes a
``getsockopt`` call each time, and arming a ``gevent.Timeout`` around every
write costs a fifth of an echo server's throughput (see NOTES.md). A
:class:`Stream` therefore drives the *raw* non-blocking socket (or, for TLS,
the C-level ``_ssl._SSLSocket`` object) itself and waits on the two io
watchers the gevent socket already owns, so an open connection costs no extra
watcher:

* a read tries ``recv`` once; only when that would block does it wait for
  readiness, and only then is a deadline armed;
* a read loop that just saw a short read knows the socket is drained and
  waits for readiness *first* (``read(wait_first=True)``);
* a write tries ``send`` once; only when the kernel buffer is full does it
  take the write lock's slow path, arm the write deadline and wait.

Closing never turns unsent data into a reset. Linux answers a ``close()`` of a
socket with unread input by a RST, and the peer then loses whatever it had not
read yet. :meth:`Stream.close` therefore sends TLS close_notify (one attempt,
never waiting for the reply), shuts the write side (the FIN goes out after
every queued byte), and leaves the descriptor open; :meth:`Stream.finish`
then discards what the peer still sends until its EOF or for at most
``LINGER_SECONDS``, and only then closes the descriptor.

gevent private attributes used here (``_sock``, ``_read_event``,
``_write_event``, ``_sslobj``) have been stable since gevent 20; the tests pin
them so an upgrade that moves them fails loudly instead of silently slowing.
"""

from __future__ import annotations

import re
import socket as _stdsocket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent import Timeout, get_hub, getcurrent
from gevent.lock import Semaphore
from greenlet import greenlet

from ._errors import (
    ClosedError,
    Error,
    PeerClosedError,
    ReadTimeoutError,
    TLSError,
    WriteError,
    WriteTimeoutError,
)

if TYPE_CHECKING:
    from ._tls import TLSInfo

__all__ = [
    "LINGER_SECONDS", "READ_SIZE", "STREAMING_CHUNK", "Interrupted", "Stream", "handshake", "reason", "seconds",
    "switch_to",
]


#: Largest chunk one read returns (API.md: "up to 64 KiB").
READ_SIZE = 65536

#: A chunk at least this big suggests a peer streaming a large message: more
#: is probably already in the socket, so the next recv is tried at once. After
#: a smaller chunk the socket is most likely drained (request/response
#: traffic), so the loop waits for readiness first and saves a failing recv.
#: Measured: waiting first after every short read cost 20% of throughput with
#: 64 KiB messages; trying first after small ones costs an exception per chunk.
STREAMING_CHUNK = 8192

#: How long a closed connection keeps reading (and discarding) what the peer
#: still sends, so that the close is not turned into a reset. Apache's
#: lingering close uses 2 s for the same purpose.
LINGER_SECONDS = 2.0

#: Bound on flushing a TLS close_notify to a peer that does not read.
CLOSE_NOTIFY_SECONDS = 1.0

_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError)

#: ``greenlet.switch`` itself: switching to the hub this way skips gevent's
#: ``Hub.switch`` wrapper, whose only job (refusing a switch *from* the hub)
#: cannot apply to a connection's greenlet.
switch_to = greenlet.switch
_TLS_EOF = (ssl.SSLZeroReturnError, ssl.SSLEOFError)


def seconds(value: object, name: str) -> float | None:
    """Normalise a timeout: ``None`` or ``<= 0`` disables it (Ballerina).

    Accepts ``int``, ``float`` and ``decimal.Decimal`` (anything with
    ``__float__`` except ``bool`` and ``str``); raises ``ConfigError`` naming
    the argument otherwise.
    """
    from ._errors import ConfigError

    if value is None:
        return None
    if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
        raise ConfigError(f"{name} must be a number of seconds or None, got {value!r}")
    result = float(value)
    if result != result:  # NaN
        raise ConfigError(f"{name} must be a number of seconds or None, got {value!r}")
    return result if result > 0 else None


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
        "_gsock",
        "_hub",
        "_notify_pending",
        "_others",
        "_raw",
        "_rtimer",
        "_rwatch",
        "_sslobj",
        "_wtimer",
        "_wwatch",
        "closed",
        "eof",
        "wlock",
        "write_timeout",
    )

    def __init__(self, gsock: Any, write_timeout: float | None) -> None:
        self._gsock = gsock
        self._hub = get_hub()
        raw = gsock._sock
        self._raw = raw
        self._rwatch = gsock._read_event
        self._wwatch = gsock._write_event
        sslobj = getattr(gsock, "_sslobj", None)
        self._sslobj = sslobj
        #: Serialises slow writes; made at the first write that has to wait.
        #: Nobody mid-write when it is None or unlocked (the fast path's test).
        self.wlock: Semaphore | None = None
        self._others: list[Any] | None = None  # TLS waits on private watchers
        self._notify_pending = False  # a close_notify that did not fit yet
        self._rtimer: Timeout | None = None  # deadlines, made at the first wait
        self._wtimer: Timeout | None = None
        #: True once close() ran: every later operation raises ClosedError.
        self.closed = False
        #: True once the peer's EOF was read.
        self.eof = False
        self.write_timeout = write_timeout

    # -- reading ---------------------------------------------------------

    def read(self, timeout: float | None, wait_first: bool = False) -> bytes:
        """Return 1..READ_SIZE bytes, whatever has arrived.

        Raises ``PeerClosedError`` on EOF or reset, ``ReadTimeoutError`` when
        nothing arrived within *timeout* (nothing is consumed), ``ClosedError``
        when the stream was closed, ``TLSError`` for a TLS alert.
        With *wait_first*, waits for readiness before the first attempt (the
        caller knows its last read drained the socket). One deadline covers
        the whole call; it is armed only once the read has to wait.
        """
        if self.closed:
            raise ClosedError()
        timer = None
        try:
            if wait_first and (self._sslobj is None or not self._sslobj.pending()):
                # Nothing buffered inside OpenSSL either: the socket decides.
                timer = self._arm_read(timeout)
                self._wait(self._rwatch)
            # Bound here, not kept on the stream: an idle connection holds
            # no more objects than it needs.
            recv: Callable[[int], bytes] = (
                self._sslobj.read if self._sslobj is not None else self._raw.recv
            )
            while True:
                # The waits happen outside the except clauses: waiting inside
                # one would keep the exception and its traceback alive for as
                # long as the connection is idle (half a KiB per connection).
                want = 0
                try:
                    data = recv(READ_SIZE)
                except _WOULD_BLOCK:
                    want = 1
                except ssl.SSLWantWriteError:
                    want = 2
                except _TLS_EOF:
                    data = b""
                except ssl.SSLError as exc:
                    raise TLSError(reason(exc)) from exc
                except OSError as exc:
                    if self.closed:
                        raise ClosedError() from exc
                    self.eof = True
                    raise PeerClosedError(reason(exc)) from exc
                if want and timer is None:
                    timer = self._arm_read(timeout)
                if want == 1:
                    self._wait(self._rwatch)
                elif want == 2:
                    self._wait_other(2)
                elif data:
                    return data
                else:
                    self.eof = True
                    raise PeerClosedError()
        except Timeout as exc:
            if exc is not timer:
                raise
            # A gevent Timeout that fired cannot be started again (its timer
            # would fire at once): the next read makes a new one.
            self._rtimer = None
            raise ReadTimeoutError() from None
        finally:
            if timer is not None:
                timer.cancel()

    def _arm_read(self, timeout: float | None) -> Timeout | None:
        """Start the read deadline; one ``gevent.Timeout`` reused per stream.

        Creating a Timeout per wait costs a fifth of a round trip; reusing
        one costs a timer start and stop.
        """
        if not timeout:
            return None
        timer = self._rtimer
        if timer is None or timer.seconds != timeout:
            timer = self._rtimer = Timeout(timeout)
        timer.start()
        return timer

    def read_failed(self, exc: OSError) -> PeerClosedError | None:
        """The error for a plain recv that failed: None if we closed it."""
        if self.closed:
            return None
        self.eof = True
        error = PeerClosedError(reason(exc))
        error.__cause__ = exc
        return error

    @property
    def raw(self) -> Any:
        """The raw non-blocking socket (plain TCP fast path: ``recv``, ``send``, ``fileno``)."""
        return self._raw

    @property
    def read_watcher(self) -> Any:
        """The io watcher for readability (the plain-TCP fast path waits on it)."""
        return self._rwatch

    # -- writing ---------------------------------------------------------

    def write(self, data: Any) -> None:
        """Send the whole of *data* or raise.

        ``ClosedError`` if the stream is closed, ``WriteError`` if the OS
        refuses, ``WriteTimeoutError`` if the peer did not take the bytes
        within ``write_timeout`` (the stream is then closed: part of the data
        may have gone). Writes of several greenlets never interleave.
        """
        if self.closed:
            raise ClosedError()
        if type(data) is not bytes:
            data = _as_bytes_view(data)
        wlock = self.wlock
        if wlock is None or not wlock.locked():
            # Fast path: nothing else is mid-write and no switch can happen
            # between this check and send(), so the bytes cannot interleave.
            try:
                sent = (self._sslobj.write if self._sslobj is not None else self._raw.send)(data)
            except _WOULD_BLOCK:
                sent = 0
            except ssl.SSLWantWriteError:
                sent = 0
            except OSError as exc:
                raise self._write_failed(exc) from exc
            if sent == len(data):
                return
            data = memoryview(data).cast("B")[sent:]
        if self.wlock is None:
            self.wlock = Semaphore(1)
        with self.wlock:
            self._write_slow(data)

    def _write_slow(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        send = self._sslobj.write if self._sslobj is not None else self._raw.send
        timer = None  # armed at the first wait only
        try:
            while view:
                if self.closed:
                    raise ClosedError()
                want = 0
                try:
                    sent = send(view)
                except (BlockingIOError, ssl.SSLWantWriteError):
                    want = 2
                except ssl.SSLWantReadError:
                    want = 1
                except OSError as exc:
                    raise self._write_failed(exc) from exc
                if not want:
                    view = view[sent:]
                    continue
                if timer is None and self.write_timeout:
                    timer = self._wtimer
                    if timer is None or timer.seconds != self.write_timeout:
                        timer = self._wtimer = Timeout(self.write_timeout)
                    timer.start()
                if want == 2:
                    self._wait(self._wwatch)
                else:
                    self._wait_other(1)
        except Timeout as exc:
            self.close()
            if exc is not timer:
                raise
            self._wtimer = None  # a fired Timeout cannot be reused
            raise WriteTimeoutError() from None
        except BaseException:
            # Interrupted mid-write (a caller's own Timeout, a kill): part of
            # the data may be out, and with TLS OpenSSL still holds the rest
            # of this record, so the stream can carry no further write.
            self.close()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _write_failed(self, exc: OSError) -> Error:
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

    def _wait_other(self, events: int) -> None:
        """TLS only: a read that needs writability, or a write readability.

        Uses a watcher of its own so it cannot collide with a greenlet that
        waits on the stream's shared watcher for the other direction.
        """
        watcher = self._hub.loop.io(self._raw.fileno(), events)
        others = self._others
        if others is None:
            others = self._others = []
        others.append(watcher)  # so that close() wakes this wait too
        try:
            self._wait(watcher)
        finally:
            others.remove(watcher)
            watcher.close()

    # -- closing ---------------------------------------------------------

    def close(self) -> None:
        """Start a graceful close; idempotent, never blocks.

        Sends close_notify (TLS, one attempt), shuts the write side and wakes
        every greenlet waiting on this stream with ``ClosedError``. The
        descriptor stays open until :meth:`finish`. If the close_notify does
        not fit the socket buffer, it is flushed by :meth:`finish` (bounded
        by ``CLOSE_NOTIFY_SECONDS``) before the write side is shut.
        """
        if self.closed:
            return
        self.closed = True
        if self._sslobj is not None and not self._send_close_notify():
            self._notify_pending = True
        else:
            self._shutdown_write()
        self.wake_all()

    def wake_all(self) -> None:
        """Wake every greenlet waiting on this stream, a lingering close included."""
        self.interrupt(self._wwatch)
        self.interrupt()
        for watcher in self._others or ():
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
        except OSError:
            pass

    def _send_close_notify(self) -> bool:
        """One ``SSL_shutdown``: False if the close_notify is still unsent."""
        sslobj: Any = self._sslobj
        try:
            sslobj.shutdown()
        except ssl.SSLWantReadError:
            # Our close_notify is out; OpenSSL now wants the peer's, which
            # we do not wait for (a peer that never answers would hang us).
            pass
        except ssl.SSLWantWriteError:
            return False
        except (ssl.SSLError, OSError, ValueError):
            pass
        return True

    def _flush_close_notify(self, bound: float) -> None:
        watcher = self._hub.loop.io(self._raw.fileno(), 2)
        others = self._others
        if others is None:
            others = self._others = []
        others.append(watcher)  # so that wake_all() (a stop) cuts it short
        timer = Timeout.start_new(bound, _Lingered)
        try:
            while not self._send_close_notify():
                self._hub.wait(watcher)
        except (OSError, Interrupted, _Lingered):
            pass
        finally:
            timer.cancel()
            others.remove(watcher)
            watcher.close()

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
        try:
            self._gsock.close()
        except OSError:
            pass

    def _drain(self, linger: float) -> None:
        # A watcher of its own: a reader woken by close() may not have left
        # the shared one yet.
        raw = self._raw
        fileno = raw.fileno()
        if fileno < 0:
            return
        watcher = self._hub.loop.io(fileno, 1)
        others = self._others
        if others is None:
            others = self._others = []
        others.append(watcher)  # so that wake_all() can cut the linger short
        timer = Timeout.start_new(linger, _Lingered)
        try:
            while True:
                try:
                    if not raw.recv(READ_SIZE):
                        return
                except BlockingIOError:
                    self._hub.wait(watcher)
        except (OSError, Interrupted, _Lingered):
            return
        finally:
            timer.cancel()
            others.remove(watcher)
            watcher.close()

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
        """Facts about the TLS connection, or ``None`` on plain TCP."""
        if self._sslobj is None:
            return None
        from ._tls import tls_info

        return tls_info(self._gsock)

    @property
    def sslobj(self) -> Any:
        """The C-level TLS object, or None on plain TCP."""
        return self._sslobj



class _HandshakeTimeout(Exception):
    """Private marker: the handshake deadline passed."""


def handshake(
    gsock: Any,
    context: Any,
    timeout: float | None,
    *,
    server_side: bool,
    server_hostname: str | None = None,
    session: Any = None,
    on_wrapped: Callable[[Any], None] | None = None,
) -> Any:
    """Wrap *gsock* in TLS and finish the handshake within *timeout* seconds.

    gevent's socket timeouts apply per wait, so a peer sending its hello a
    byte at a time would never be cut by them: the deadline here is one
    ``gevent.Timeout`` around the whole handshake. Returns the gevent
    ``SSLSocket``; raises ``TLSError`` (the wrapped socket is closed).
    """
    try:
        tls = context.wrap_socket(
            gsock,
            server_side=server_side,
            server_hostname=server_hostname,
            do_handshake_on_connect=False,
            session=session,
        )
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TLSError(reason(exc)) from exc
    if on_wrapped is not None:
        on_wrapped(tls)  # lets a stop end the handshake (Connection.abort)
    timer = Timeout.start_new(timeout, _HandshakeTimeout) if timeout else None
    try:
        tls.do_handshake()
    except _HandshakeTimeout:
        tls.close()
        raise TLSError(f"TLS handshake timed out after {timeout:g} s") from None
    except ssl.SSLCertVerificationError as exc:
        tls.close()
        raise TLSError(exc.verify_message or reason(exc)) from exc
    except _TLS_EOF as exc:
        tls.close()
        raise TLSError("Connection closed by the peer during the TLS handshake") from exc
    except (ssl.SSLError, OSError) as exc:
        tls.close()
        raise TLSError(reason(exc)) from exc
    except BaseException:  # a caller's own Timeout, a kill: no socket left behind
        tls.close()
        raise
    finally:
        if timer is not None:
            timer.cancel()
    return tls
