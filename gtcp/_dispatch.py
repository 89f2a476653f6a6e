"""The per-connection greenlet: handshake, on_connect, the read loop, close.

One :class:`Connection` runs in its own greenlet, spawned by the listener's
``StreamServer``. All callbacks of a connection run in that greenlet, so they
never run at the same time; other greenlets may only write through the
``Caller`` (serialised by the stream's write lock) or close it.

The per-chunk path is ``Stream.read`` -> ``on_bytes`` -> ``Stream.write``; everything
that can be decided once per connection (which ``on_bytes`` signature, which
optional callbacks exist, whether an idle timer runs) is decided before the
loop starts. Deadlines that almost never fire are not armed per chunk: the
idle timeout is one timer per connection that re-arms itself lazily, and the
write timeout is armed only when a write would block.

Every exception a callback raises ends in ``logging.getLogger("gtcp")``; none
reaches the gevent hub's stderr printer.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from gevent import Timeout, get_hub, getcurrent
from gevent.event import Event

from ._caller import Caller, host_text
from ._errors import (
    SEND_FAILED_MESSAGE,
    ClosedError,
    ConfigError,
    Error,
    FrameTooLongError,
    PeerClosedError,
    ReadTimeoutError,
    TLSError,
    WriteError,
)
from ._io import LINGER_SECONDS, Stream
from ._proxy import BadHeader, ProxyInfo, decode, is_trusted
from ._service import Callbacks, resolve
from ._sockopts import apply as apply_sockopts

__all__ = ["Connection", "ConnectionSettings", "Counters", "ListenerRun"]

log = logging.getLogger("gtcp")


def _discard(data: bytes) -> None:
    return None


#: What a callback may raise that is a bug in the handler, not control flow
#: for gtcp: any Exception, and a gevent.Timeout the handler started and did
#: not catch (nobody above the connection's greenlet could). GreenletExit,
#: KeyboardInterrupt and SystemExit end the greenlet as they should.
_HANDLER_FAILURES = (Exception, Timeout)

#: _handle_result's answer for "close the connection, report nothing".
_CLOSE = object()

#: Callbacks of a connection whose on_connect returned None: read and drop.
_DISCARD = Callbacks(_discard, False, None, None)

#: Seconds a PROXY protocol header may take to arrive on a plain listener (a
#: TLS listener uses its handshake timeout).
PROXY_HEADER_TIMEOUT = 60.0


def _reply_bytes(caller: Caller, codec: Any, result: object, name: str = "on_bytes") -> object:
    """What to send for an ``on_bytes`` (or *name*) result other than plain bytes.

    The bytes (encoded by *codec* when framing is on), None for nothing
    (a returned ``gtcp.Error`` is logged), or ``_CLOSE`` for a result that
    cannot be sent (logged; the connection closes).
    """
    if isinstance(result, Error):
        log.error("%s of connection %s returned an error: %s", name, caller.id, result)
        return None
    if codec is not None:
        try:
            return codec.encode(result)
        except Exception as exc:
            log.error("%s of connection %s returned a reply the framing cannot encode; "
                      "closing it: %s", name, caller.id, exc)
            return _CLOSE
    if isinstance(result, bytearray):
        return result
    try:
        return memoryview(result).cast("B")  # type: ignore[arg-type]  # in bytes, whatever the item size
    except TypeError:
        log.error(
            "%s of connection %s returned %s; expected bytes, None or a gtcp.Error; closing it",
            name, caller.id, type(result).__name__,
        )
        return _CLOSE


#: STARTTLS contexts, built once per ListenerSecureSocket record and reused.
_STARTTLS_CONTEXTS: dict[Any, tuple[Any, float | None]] = {}


def _starttls_context(record: Any) -> tuple[Any, float | None]:
    """The server context and handshake timeout for *record* (built once, then cached).

    A ready ``ssl.SSLContext`` is its own context (not cached), with gtcp's
    default handshake timeout.
    """
    from ._config import ListenerSecureSocket, handshake_deadline

    if not isinstance(record, ListenerSecureSocket):
        return record, handshake_deadline(record)
    found = _STARTTLS_CONTEXTS.get(record)
    if found is None:
        from ._contexts import server_context

        found = (server_context(record), handshake_deadline(record))
        if len(_STARTTLS_CONTEXTS) >= 64:  # records made on the fly: do not grow forever
            _STARTTLS_CONTEXTS.pop(next(iter(_STARTTLS_CONTEXTS)))
        _STARTTLS_CONTEXTS[record] = found
    return found


#: Service classes already warned about on_connect returning None.
_WARNED_NONE: set[type] = set()


def _warn_no_connection_service(service: object) -> None:
    """Log once per Service class that on_connect returned None (a forgotten ``return``?)."""
    cls = type(service)
    if cls in _WARNED_NONE:
        return
    if len(_WARNED_NONE) > 4096:  # classes made on the fly: do not grow forever
        _WARNED_NONE.clear()
    _WARNED_NONE.add(cls)
    log.warning("%s.on_connect returned None: the connection has no ConnectionService and what the "
                "peer sends is discarded (did on_connect forget to return one?); logged once per class",
                cls.__name__)


def _send_failure(exc: Error) -> Error:
    """The error on_error gets when a reply could not be sent.

    A ``WriteError("Failed to send data.")`` caused by the write's own error
    (README, Errors); other errors (a ``WriteTimeoutError``) as they are.
    """
    if isinstance(exc, WriteError):
        failure = WriteError(SEND_FAILED_MESSAGE)
        failure.__cause__ = exc
        return failure
    return exc


class Counters:
    """A listener's running totals (``Listener.stats()``), kept across its runs."""

    __slots__ = ("accepted", "bytes_in", "bytes_out", "closed", "frames_too_long", "handshake_failures",
                 "idle_timeouts")

    def __init__(self) -> None:
        self.accepted = self.closed = self.handshake_failures = 0
        self.idle_timeouts = self.frames_too_long = self.bytes_in = self.bytes_out = 0


@dataclass(frozen=True)
class ConnectionSettings:
    """How every connection of a listener run is served; fixed when the run starts."""

    service: Any
    write_timeout: float | None
    idle_timeout: float | None
    framing: Any = None
    sockopts: tuple[tuple[int, int, int], ...] = ()
    #: PROXY protocol: None, "v1", "v2" or "any"; and the networks allowed to connect (None: any).
    proxy_protocol: str | None = None
    trusted_proxies: tuple[Any, ...] | None = None


class ListenerRun:
    """One run of a listener, from ``start()`` to its stop: what its connections share.

    ``settings`` never change. ``ssl_context`` and ``handshake_timeout`` are
    what the handshakes of new connections use (``None``: plain TCP);
    ``Listener.reload_tls()`` replaces both at once (no switch in between).
    ``connections`` are the run's open connections (registered by the accept
    loop) and ``idle_event`` is set while there are none. ``counters`` are the
    listener's, shared by all its runs.
    """

    __slots__ = ("connections", "counters", "handshake_timeout", "idle_event", "settings", "ssl_context")

    def __init__(self, settings: ConnectionSettings, ssl_context: Any, handshake_timeout: float | None,
                 counters: Counters) -> None:
        self.settings = settings
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self.counters = counters
        self.connections: set[Connection] = set()
        self.idle_event = Event()
        self.idle_event.set()


class Connection:
    """One accepted connection; :meth:`run` is the body of its own greenlet."""

    __slots__ = (
        "_address",
        "_idle_timer",
        "_last_read",
        "aborted",
        "caller",
        "greenlet",
        "gsock",
        "idle_expired",
        "listener_run",
        "proxy",
        "stream",
    )

    def __init__(self, listener_run: ListenerRun, gsock: Any, address: Any) -> None:
        #: The listener run this connection belongs to.
        self.listener_run = listener_run
        self.gsock = gsock
        self._address = address
        self.stream: Stream | None = None
        self.aborted = False
        self.idle_expired = False
        #: What the PROXY protocol header said (None without one).
        self.proxy: ProxyInfo | None = None
        self._idle_timer: Any = None
        self._last_read = 0.0
        #: The greenlet serving this connection (joined by the stops).
        self.greenlet: Any = None
        #: The Caller given to on_connect, from then until the connection ends (gtcp.testing's pair shows it).
        self.caller: Caller | None = None

    @property
    def peer(self) -> str:
        """``host:port`` of the peer, for log lines (the client's, and the proxy's, behind a proxy)."""
        address = self._address
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address or "unix socket")
        proxy = self.proxy
        if proxy is not None and proxy.command == "PROXY":
            return f"{proxy.source_host}:{proxy.source_port} (via proxy {peer})"
        return peer

    # -- stopping (called from other greenlets) ---------------------------

    def abort(self) -> None:
        """Close now, without lingering; ``on_close`` still runs (immediate stop).

        Also ends a TLS handshake under way, and a linger already started.
        """
        self.aborted = True
        if self.stream is not None:
            self.stream.close()
            self.stream.wake_all()

    def start_tls(self, secure_socket: Any) -> None:
        """``caller.start_tls``: upgrade this connection to TLS from one of its callbacks."""
        from ._config import listener_secure_socket

        if getcurrent() is not self.greenlet:
            raise Error("start_tls() must be called from a callback of this connection (its own greenlet)")
        stream = self.stream
        assert stream is not None
        if stream.tls_object is not None:
            raise Error("start_tls(): the connection is already TLS")
        record = listener_secure_socket(secure_socket)  # or a server-side ssl.SSLContext
        if record is None:
            raise ConfigError("start_tls() needs a ListenerSecureSocket, a dict of one or an ssl.SSLContext")
        context, timeout = _starttls_context(record)
        stream.flush()  # replies to earlier frames go out in plaintext, before the handshake
        unprotected = stream.buffered
        if unprotected:
            # Read past the upgrade point, before the handshake: not protected
            # by TLS, so never delivered as if it were (CVE-2011-0411).
            stream.consume(len(stream.rbuf))
            log.warning("start_tls on connection %s: discarded %d byte(s) of plaintext that arrived "
                        "after the upgrade point", self.peer, unprotected)
        try:
            stream.start_tls(context, server_side=True, timeout=timeout)
        except Error:
            stream.close()
            raise

    # -- the connection's life ---------------------------------------------

    def register(self) -> None:
        """Count the connection as open: done in the accept loop, before its
        greenlet is spawned, so that a stop sees it even before it runs."""
        run = self.listener_run
        run.connections.add(self)
        run.idle_event.clear()
        run.counters.accepted += 1

    def run(self) -> None:
        """Serve the connection to its end; never raises (the greenlet's body)."""
        run = self.listener_run
        try:
            if not self.aborted:  # a stop that came before this greenlet ran
                self._run()
        except Exception:  # pragma: no cover - a bug in gtcp itself
            log.exception("gtcp: internal error serving %s", self.peer)
        finally:
            if self._idle_timer is not None:
                self._idle_timer.close()
            counters = run.counters
            if self.stream is not None:
                self.stream.finish(None)
                received, sent = self.stream.byte_counts()
                counters.bytes_in += received
                counters.bytes_out += sent
            else:
                self.gsock.close()
            counters.closed += 1
            self.caller = None  # the Caller refers to this Connection: no cycle outlives it
            run.connections.discard(self)
            if not run.connections:
                run.idle_event.set()

    def _run(self) -> None:
        gsock = self.gsock
        try:
            gsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        run = self.listener_run
        settings = run.settings
        if settings.sockopts:
            apply_sockopts(gsock, settings.sockopts)
        stream = self.stream = Stream(gsock, settings.write_timeout, settings.framing)
        after_header = -1  # bytes that came after a PROXY header, before the TLS handshake
        if settings.proxy_protocol is not None:
            if not self._read_proxy_header(stream):
                return
            after_header = stream.buffered
        if run.ssl_context is not None:
            try:
                stream.start_tls(run.ssl_context, server_side=True, timeout=run.handshake_timeout)
            except Error as exc:  # TLSError, or ClosedError from a stop
                if self.aborted:
                    return
                if after_header == 0 and stream.handshake_bytes == 0 and (
                        stream.eof or isinstance(exc.__cause__, ConnectionError)):
                    # Nothing after the PROXY header, then a close: a health check.
                    log.debug("connection from %s closed after its PROXY protocol header: %s", self.peer, exc)
                    return
                log.warning("TLS handshake with %s failed: %s", self.peer, exc)
                run.counters.handshake_failures += 1
                return
        if self.aborted:
            return
        try:
            local = gsock.getsockname()
        except OSError as exc:  # reset before this greenlet ran: a normal event
            log.debug("connection from %s ended before it was served: %s", self.peer, exc)
            return
        caller = self.caller = Caller(stream, self._address, local, self)
        proxy = self.proxy
        if proxy is not None:
            caller.proxy = proxy
            if proxy.command == "PROXY":
                caller.remote_host = proxy.source_host or ""
                caller.remote_port = proxy.source_port or 0
        callbacks = self._connect(caller)
        if callbacks is None:
            stream.finish(None if self.aborted else LINGER_SECONDS)
            return
        self._serve(stream, caller, callbacks)

    def _read_proxy_header(self, stream: Stream) -> bool:
        """Check the peer is a trusted proxy and read its PROXY header; False to close.

        A refusal is one log line (WARNING) and no callback; a peer that
        closes right after a complete header (a load balancer's health check)
        is logged at DEBUG. Bytes after the header stay buffered: the
        client's first bytes, or its TLS ClientHello.
        """
        run = self.listener_run
        settings = run.settings
        address = self._address
        if settings.trusted_proxies is not None:
            host = host_text(address) if isinstance(address, tuple) else ""
            if not is_trusted(host, settings.trusted_proxies):
                log.warning("connection from %s closed: not a trusted proxy (trusted_proxies)", self.peer)
                return False
        mode = settings.proxy_protocol or "any"
        timeout = (run.handshake_timeout if run.ssl_context is not None else None) or PROXY_HEADER_TIMEOUT
        if settings.idle_timeout is not None:
            timeout = min(timeout, settings.idle_timeout)  # a silent peer is idle, header or not
        try:
            info: ProxyInfo = stream.read_decoded(lambda buffer, start: decode(buffer, start, mode), timeout)
        except BadHeader as exc:
            log.warning("bad PROXY protocol header from %s; closing: %s", self.peer, exc)
            return False
        except ReadTimeoutError:
            log.warning("no PROXY protocol header from %s within %g s; closing", self.peer, timeout)
            return False
        except PeerClosedError as exc:
            received = len(exc.partial)
            if received:
                log.warning("truncated PROXY protocol header from %s (%d bytes, then the connection "
                            "ended); closing", self.peer, received)
            else:
                # Not one byte: a TCP health check (a Kubernetes tcpSocket
                # probe, HAProxy without check-send-proxy), or a port scan.
                log.info("connection from %s ended before its PROXY protocol header: %s", self.peer, exc)
            return False
        except ClosedError:
            return False  # a stop
        except Error as exc:
            log.warning("PROXY protocol header from %s; closing: %s", self.peer, exc)
            return False
        if isinstance(address, tuple):
            info = replace(info, proxy_host=host_text(address), proxy_port=int(address[1]))
        self.proxy = info
        gone = None if stream.buffered else stream.peer_gone()
        if gone == "reset" or (gone == "eof" and info.command == "LOCAL"):
            # A load balancer's health check; a relayed client that half-closes
            # at once (it expects a greeting) is served.
            log.debug("connection from %s closed right after its PROXY protocol header (a health check?)",
                      self.peer)
            return False
        return True

    def _connect(self, caller: Caller) -> Callbacks | None:
        """Run on_connect; the callbacks to serve with, or None to close."""
        service = self.listener_run.settings.service
        try:
            result = service.on_connect(caller)
        except _HANDLER_FAILURES:
            log.exception("on_connect of %s raised; closing connection %s", type(service).__name__, caller.id)
            return None
        if result is None:
            _warn_no_connection_service(service)
            caller.framing = None  # discarded bytes need no framing (nor its limits)
            return _DISCARD
        if isinstance(result, Error):
            log.error("on_connect of %s returned an error; closing connection %s: %s",
                      type(service).__name__, caller.id, result)
            return None
        try:
            return resolve(result, type(service).__name__)
        except TypeError as exc:
            log.error("%s; closing connection %s", exc, caller.id)
            return None

    def _serve(self, stream: Stream, caller: Caller, callbacks: Callbacks) -> None:
        idle = self.listener_run.settings.idle_timeout
        if idle is not None:
            self._start_idle_timer(idle)
        error: Error | None = None
        try:
            error = self._deliver_until_end(stream, caller, callbacks)
        finally:
            # Also when the greenlet is killed: on_close runs exactly once.
            stream.close()
            if isinstance(error, FrameTooLongError):
                self.listener_run.counters.frames_too_long += 1
            if error is not None and callbacks.on_error is not None:
                self._call("on_error", callbacks.on_error, caller, error)
            if callbacks.on_close is not None:
                self._call("on_close", callbacks.on_close, caller)
        stream.finish(None if self.aborted else LINGER_SECONDS)

    def _call(self, name: str, method: Any, caller: Caller, *args: Any) -> None:
        try:
            method(*args)
        except _HANDLER_FAILURES:
            log.exception("%s of connection %s raised", name, caller.id)

    def _deliver_until_end(self, stream: Stream, caller: Caller, callbacks: Callbacks) -> Error | None:
        """Deliver chunks or frames until the connection ends; the error for on_error, if any.

        The one delivery path, plain and TLS alike. Each pass either delivers
        what the buffer already holds (a whole frame, or raw bytes left by a
        switch of ``caller.framing``) or, when the buffer holds no whole
        frame, sends the replies queued so far and reads the socket once.
        A chunk read while no framing is on and nothing is buffered is
        delivered as it is, without touching the buffer.
        """
        deliver = self._deliverer(stream, caller, callbacks)
        track = self._idle_timer is not None
        loop = get_hub().loop
        while True:
            codec = stream.codec
            if stream.rbuf:  # bytes buffered (see Stream.rbuf's invariant)
                if stream.closed:
                    return None  # caller.close() (or a stop): frames still buffered are not delivered
                if codec is None:
                    outcome = deliver(stream.take())
                    if outcome is not None:
                        return None if outcome is _CLOSE else outcome  # type: ignore[return-value]
                    continue
                try:
                    found = codec.decode(stream.rbuf, stream.rpos)
                except Error as exc:  # FrameTooLongError, or the codec's own protocol error
                    return self._flush(stream) or exc
                except Exception:
                    log.exception("the framing codec of connection %s raised; closing it", caller.id)
                    return None
                if found is not None:
                    frame, end = found
                    size = len(stream.rbuf)
                    # Stream.bad_frame_end's check, inlined on the per-frame path
                    # (a method call per frame cost 5% of a pipelined echo).
                    if type(end) is not int or not stream.rpos < end <= size:
                        bad = stream.bad_frame_end(end)
                        if bad is not None:
                            log.error("%s; closing connection %s", bad, caller.id)
                            return None
                    if end < size:
                        stream.rpos = end
                    else:
                        stream.consume(end)
                    outcome = deliver(frame)
                    if outcome is not None:
                        return None if outcome is _CLOSE else outcome  # type: ignore[return-value]
                    continue
            # No whole frame buffered: send what earlier frames produced
            # (never delay a reply while waiting), then read once.
            if stream._out:  # replies queued (Stream.queue)
                failure = self._flush(stream)
                if failure is not None:
                    return failure
            if track:
                self._last_read = loop.now()  # busy until now, idle from here
            try:
                data = stream.recv(None)
            except ClosedError:
                if self._idle_false_alarm(stream):
                    continue
                if self.idle_expired:
                    self.listener_run.counters.idle_timeouts += 1
                    return ReadTimeoutError()
                return None
            except PeerClosedError as exc:
                if exc.__cause__ is not None:
                    return exc  # a reset is reported
                if stream.rpos < len(stream.rbuf):
                    # EOF in the middle of a frame (framing is on: raw bytes
                    # would have been delivered).
                    return PeerClosedError.mid_frame(stream.take(stream.buffered))
                # EOF is the natural end; on_eof, if any, has the last word.
                return None if callbacks.on_eof is None else self._eof(stream, caller, callbacks)
            except TLSError as exc:
                return exc
            if codec is None and not stream.rbuf:
                outcome = deliver(data)
                if outcome is not None:
                    return None if outcome is _CLOSE else outcome  # type: ignore[return-value]
            else:
                too_long = stream.check_room(len(data))
                if too_long is not None:
                    return self._flush(stream) or too_long
                stream.feed(data)

    def _deliverer(self, stream: Stream, caller: Caller, callbacks: Callbacks) -> Callable[[Any], object]:
        """The per-chunk/per-frame function: call ``on_bytes``, send or queue its reply.

        Returns None to go on, an Error for ``on_error``, or ``_CLOSE``. A
        reply is sent at once when nothing more is known to be waiting (the
        buffer is empty and the last read was short); otherwise it is queued
        and goes out with the replies to the frames after it.
        """
        on_bytes = callbacks.on_bytes
        with_caller = callbacks.on_bytes_with_caller

        def deliver(frame: Any) -> object:
            try:
                result = on_bytes(caller, frame) if with_caller else on_bytes(frame)
            except _HANDLER_FAILURES as exc:
                if self.aborted and isinstance(exc, ClosedError):
                    log.debug("on_bytes of connection %s ended by a stop", caller.id)
                else:
                    log.exception("on_bytes of connection %s raised; closing it", caller.id)
                return _CLOSE
            if result is None:
                return None
            codec = stream.codec  # the codec in effect when on_bytes returned
            data: Any = None
            if type(result) is bytes:
                if codec is None:
                    data = result
                else:
                    try:
                        data = codec.encode(result)
                    except Exception:
                        data = None  # _reply_bytes below says why, in the log
            if data is None:
                data = _reply_bytes(caller, codec, result)
                if data is None:
                    return None
                if data is _CLOSE:
                    return _CLOSE
            try:
                if stream.drained and not stream.rbuf:
                    stream.write(data)
                else:
                    stream.queue(data)
            except Error as exc:
                return _send_failure(exc)
            return None

        return deliver

    def _eof(self, stream: Stream, caller: Caller, callbacks: Callbacks) -> Error | None:
        """The peer half-closed: run ``on_eof``, send what it returns; the error for on_error, if any."""
        on_eof: Any = callbacks.on_eof
        try:
            result = on_eof(caller) if callbacks.on_eof_with_caller else on_eof()
        except _HANDLER_FAILURES:
            log.exception("on_eof of connection %s raised; closing it", caller.id)
            return None
        if result is not None:
            data = result if type(result) is bytes and stream.codec is None else _reply_bytes(
                caller, stream.codec, result, "on_eof")
            if data is not None and data is not _CLOSE:
                try:
                    stream.queue(data)
                except Error as exc:
                    return _send_failure(exc)
        return self._flush(stream)

    @staticmethod
    def _flush(stream: Stream) -> Error | None:
        try:
            stream.flush()
        except Error as exc:
            return _send_failure(exc)
        return None

    # -- idle timeout --------------------------------------------------------

    def _start_idle_timer(self, after: float) -> None:
        loop = get_hub().loop
        if self._idle_timer is None:
            self._last_read = loop.now()
        else:
            self._idle_timer.close()
        timer = self._idle_timer = loop.timer(after)
        timer.start(self._on_idle_timer)

    def _idle_false_alarm(self, stream: Stream) -> bool:
        """True if an idle interrupt arrived after bytes did: re-arm, go on.

        The timer's wake-up is delivered on the next loop pass; if a chunk was
        read in between, the connection was not idle after all.
        """
        idle = self.listener_run.settings.idle_timeout
        if not self.idle_expired or stream.closed or idle is None:
            return False
        remaining = self._last_read + idle - get_hub().loop.now()
        if remaining <= 0:
            return False
        self.idle_expired = False
        self._start_idle_timer(remaining)
        return True

    def _on_idle_timer(self) -> None:
        """Runs in the hub: expire the connection, or re-arm for the rest."""
        stream = self.stream
        idle = self.listener_run.settings.idle_timeout
        if stream is None or stream.closed or idle is None:
            return
        remaining = self._last_read + idle - get_hub().loop.now()
        if remaining > 0 or not stream.reading or stream.handshaking:
            # Data came meanwhile, or a callback is running (busy, not idle).
            self._start_idle_timer(remaining if remaining > 0 else idle)
            return
        self.idle_expired = True
        stream.interrupt()
