"""Client: a blocking-style TCP (or TLS) client on gevent sockets."""

from __future__ import annotations

import collections
import itertools
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import gevent.socket
from gevent import Timeout
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.queue import Empty, Queue

from ._errors import ClosedError, ConfigError, ConnectError, Error, PeerClosedError
from ._framing import DEFAULT_MAX_LENGTH, Codec, Delimited, Lines, check_codec
from ._io import Stream, reason
from ._sockopts import apply as apply_sockopts
from ._sockopts import socket_options
from ._timeouts import seconds

if TYPE_CHECKING:
    from ._tlsinfo import TLSInfo

__all__ = ["Client"]

log = logging.getLogger("gtcp")

#: Seconds a read or a write may wait (Ballerina's default for both).
DEFAULT_TIMEOUT = 300.0

#: The private keyword through which Client.unix() asks for a Unix domain socket.
_UNIX = "_gtcp_unix"

#: read_line()'s decoder at the default limit, made once.
_LINES = Lines()

#: Seconds to establish the TCP connection (all attempts together).
DEFAULT_CONNECT_TIMEOUT = 30.0

#: Seconds Happy Eyeballs waits for an attempt before it starts the next one
#: alongside (RFC 8305 section 5, "Connection Attempt Delay": 250 ms is its
#: recommended value). A failed attempt starts the next one at once.
CONNECTION_ATTEMPT_DELAY = 0.25


class _ConnectTimeout(Exception):
    """Private marker: the connect deadline passed."""


class Client:
    """A connected TCP (or TLS) client: Ballerina's ``tcp:Client``.

    The constructor connects (and, with ``secure_socket``, finishes the TLS
    handshake) before it returns. Each read and each write gets its own
    deadline: ``timeout`` for reads, ``write_timeout`` for writes (seconds;
    ``None`` or ``<= 0`` disables). One greenlet may read while another
    writes; concurrent writes never interleave and concurrent reads are
    served one at a time.

    ``secure_socket`` is a ``ClientSecureSocket``, a dict of one, or a ready
    client-side ``ssl.SSLContext`` (used as it is). A host name that resolves
    to several addresses is connected with Happy Eyeballs (RFC 8305): one
    attempt after another, :data:`CONNECTION_ATTEMPT_DELAY` apart or as soon
    as the previous one failed, families interleaved, the first to connect
    wins; ``connect_timeout`` bounds the whole connect.
    """

    def __init__(
        self,
        remote_host: str,
        remote_port: int,
        *,
        local_host: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        write_timeout: float | None = DEFAULT_TIMEOUT,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        secure_socket: Any = None,
        framing: Codec | None = None,
        keepalive: Any = None,
        user_timeout: float | None = None,
        **options: Any,
    ) -> None:
        unix = options.pop(_UNIX, False)  # set by Client.unix(): remote_host is a path
        if options:
            # The Listener's rule too: an unknown option is a ConfigError.
            raise ConfigError(f"Unknown client option(s): {', '.join(sorted(options))}")
        if not isinstance(remote_host, str) or not remote_host.strip():
            raise ConfigError(f"remote_host must be a non-empty str, got {remote_host!r}")
        if unix:
            if local_host is not None:
                raise ConfigError("local_host does not apply to a Unix domain socket")
        elif (isinstance(remote_port, bool) or not isinstance(remote_port, int)
              or not 0 < remote_port <= 65535):
            raise ConfigError(f"remote_port must be an int from 1 to 65535, got {remote_port!r}")
        if local_host is not None and not isinstance(local_host, str):
            raise ConfigError(f"local_host must be a str or None, got {local_host!r}")
        codec = check_codec(framing, "framing")
        sockopts = socket_options(keepalive, user_timeout)
        self._timeout = seconds(timeout, "timeout")
        write_deadline = seconds(write_timeout, "write_timeout")
        connect_deadline = seconds(connect_timeout, "connect_timeout")
        from ._config import client_secure_socket

        secure = client_secure_socket(secure_socket)  # a record, or the user's own ssl.SSLContext
        context = None
        if secure is not None:
            from ._contexts import client_context

            context = client_context(secure)  # before connecting: a bad file fails fast
        self.remote_host = remote_host
        self.remote_port = remote_port
        self._read_lock = Semaphore(1)
        self._peer_error: PeerClosedError | None = None
        #: The record (or raw context) whose TLS 1.3 session is still to be saved (at the first read or at
        #: close), or None.
        self._unsaved_session_record: Any = None
        self._context: Any = None
        self._unix = unix
        try:
            if unix:
                gsock = _connect_unix(remote_host, connect_deadline)
            else:
                gsock = _connect(remote_host, remote_port, local_host, connect_deadline)
        except ConnectError as exc:
            raise _shortened(exc) from exc.__cause__
        apply_sockopts(gsock, sockopts)
        self._stream = Stream(gsock, write_deadline, codec)
        if secure is not None:
            try:
                self._secure(secure, context)
            except BaseException:
                self._stream.finish(None)  # no socket left behind
                raise

    @classmethod
    def unix(cls, path: str, **options: Any) -> Client:
        """A client connected to the Unix domain socket *path* (``Listener.unix``).

        Takes the same options as ``Client(...)`` but ``local_host``;
        ``remote_host`` is then the path and ``remote_port`` 0. With
        ``secure_socket``, the name checked and sent in SNI is
        ``server_name`` (``"localhost"`` when not given).
        """
        options[_UNIX] = True
        return cls(path, 0, **options)

    def _secure(self, secure: Any, context: Any) -> None:
        """The TLS handshake with *context*, for *secure* (a record, or that same context)."""
        from ._config import handshake_deadline
        from ._sessions import SESSIONS

        # A raw context has no server_name: the host, checked or not as its check_hostname says.
        server_name = getattr(secure, "server_name", None)
        host = server_name or ("localhost" if self._unix else self.remote_host)
        session = SESSIONS.get(secure, self.remote_host, self.remote_port, context)
        timeout = handshake_deadline(secure)
        self._stream.start_tls(context, server_side=False, timeout=timeout,
                               server_hostname=host, session=session)
        tls: Any = self._stream.tls_object
        self._context = context
        if tls.version() == "TLSv1.3" and not tls.session_reused:
            # The ticket comes after the handshake: save the session after
            # the first read (or at close), once.
            self._unsaved_session_record = secure
        elif not tls.session_reused:
            SESSIONS.put(secure, self.remote_host, self.remote_port, tls.session, context)

    def start_tls(self, secure_socket: Any) -> None:
        """Upgrade this plain client to TLS (STARTTLS); returns once the handshake is done.

        *secure_socket* is a ``ClientSecureSocket`` (or a dict of one), or a
        client-side ``ssl.SSLContext`` used as it is. Call it after the
        server's "go ahead". Whatever plaintext is buffered or
        already readable before the ClientHello goes out was not protected
        (a TLS server sends nothing first): it is discarded and logged at
        WARNING, never returned by a later read. Raises ``TLSError`` (the
        client is then closed), ``gtcp.Error`` if it is already TLS.
        """
        from ._config import client_secure_socket
        from ._contexts import client_context

        stream = self._stream
        if stream.tls_object is not None:
            raise Error("start_tls(): the client is already TLS")
        secure = client_secure_socket(secure_socket)
        if secure is None:
            raise ConfigError("start_tls() needs a ClientSecureSocket with enable=True, or an ssl.SSLContext")
        context = client_context(secure)
        with self._read_lock:
            if stream.closed:
                raise ClosedError()
            unprotected = stream.buffered + stream.discard_readable()
            stream.consume(len(stream.rbuf))
            if unprotected:
                log.warning("start_tls to %s:%s: discarded %d byte(s) of plaintext received before the "
                            "TLS handshake", self.remote_host, self.remote_port, unprotected)
            try:
                self._secure(secure, context)
            except BaseException:
                self.close()
                raise

    # -- I/O ---------------------------------------------------------------------

    def write_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Send the whole of *data*, or raise.

        ``ClosedError`` after ``close()``; ``WriteError`` if the OS refuses
        (the client is then closed); ``WriteTimeoutError`` if the peer did not
        take the bytes within ``write_timeout`` (the client is then closed:
        part of the data may have gone).
        """
        self._stream.write(data)

    def send_eof(self) -> None:
        """Shut the write side (TLS: close_notify) and keep reading until the server's EOF.

        Later writes raise ``ClosedError``; a second call does nothing; after
        ``close()`` it raises ``ClosedError``. What the server still sends is
        read as usual.
        """
        self._stream.send_eof()

    def write_frame(self, frame: Any) -> None:
        """Encode *frame* with the client's framing and send it, or raise.

        ``gtcp.Error`` without framing; whatever the codec's ``encode``
        raises for a frame it cannot encode; else as :meth:`write_bytes`.
        """
        self._stream.write(self._codec("write_frame").encode(frame))

    def read_bytes(self) -> bytes:
        """One read: 1 to 65536 bytes, whatever has arrived (buffered bytes first).

        ``ReadTimeoutError`` if nothing arrived within ``timeout`` (nothing is
        consumed; read again). ``PeerClosedError`` once the server ended the
        connection: this read and every later one. ``ClosedError`` after
        ``close()``.
        """
        with self._read_lock:
            self._check_peer()
            try:
                data = self._stream.read(self._timeout)
            except PeerClosedError as exc:
                self._peer_error = exc
                raise
        if self._unsaved_session_record is not None:
            self._remember_session()
        return data

    def read_frame(self) -> Any:
        """The next frame, decoded by the client's framing (``framing=``).

        ``gtcp.Error`` without framing. One deadline, ``timeout``, for the
        whole call; on ``ReadTimeoutError`` or ``FrameTooLongError`` nothing
        is consumed and the client stays open. An EOF in the middle of a
        frame raises ``PeerClosedError`` with the bytes left as ``partial``.
        """
        return self._read_decoded(self._codec("read_frame").decode)

    def read_exactly(self, n: int) -> bytes:
        """Exactly *n* bytes (whatever the framing), under one deadline for the call.

        As :meth:`read_frame` for timeouts and EOF.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"n must be an int >= 0, got {n!r}")
        stream = self._stream
        if 0 < n <= stream.buffered and not self._read_lock.locked() and not stream.closed:
            # Already buffered (a header's payload, say): no read, nothing can switch.
            return stream.take(n)

        def exactly(buffer: bytes | bytearray, start: int) -> tuple[bytes, int] | None:
            end = start + n
            return (bytes(buffer[start:end]), end) if len(buffer) >= end else None

        return b"" if n == 0 else self._read_decoded(exactly)

    def read_until(self, delimiter: bytes, max_length: int = DEFAULT_MAX_LENGTH) -> bytes:
        """The bytes up to and including *delimiter*, under one deadline for the call.

        ``FrameTooLongError`` (nothing consumed) if more than *max_length*
        bytes come before the delimiter. As :meth:`read_frame` for timeouts
        and EOF.
        """
        if not isinstance(delimiter, bytes) or not delimiter:
            raise ConfigError(f"delimiter must be non-empty bytes, got {delimiter!r}")
        decode = Delimited(delimiter, max_length).decode

        def until(buffer: bytes | bytearray, start: int) -> tuple[bytes, int] | None:
            found = decode(buffer, start)
            return None if found is None else (bytes(buffer[start:found[1]]), found[1])

        return self._read_decoded(until)  # type: ignore[no-any-return]

    def read_line(self, max_length: int = DEFAULT_MAX_LENGTH) -> bytes:
        """The next line with its ending (``b"\n"`` or ``b"\r\n"``), under one deadline.

        *max_length* counts the line's bytes before its ending;
        ``FrameTooLongError`` (nothing consumed) beyond it. As
        :meth:`read_frame` for timeouts and EOF.
        """
        decode = (_LINES if max_length == DEFAULT_MAX_LENGTH else Lines(max_length)).decode

        def line(buffer: bytes | bytearray, start: int) -> tuple[bytes, int] | None:
            found = decode(buffer, start)
            return None if found is None else (bytes(buffer[start:found[1]]), found[1])

        return self._read_decoded(line)  # type: ignore[no-any-return]

    def _read_decoded(self, decode: Callable[[Any, int], tuple[Any, int] | None]) -> Any:
        with self._read_lock:
            self._check_peer()
            try:
                frame = self._stream.read_decoded(decode, self._timeout)
            except PeerClosedError as exc:
                # Later reads raise the plain error: the partial bytes were handed over.
                self._peer_error = PeerClosedError() if exc.partial else exc
                raise
        if self._unsaved_session_record is not None:
            self._remember_session()
        return frame

    def _check_peer(self) -> None:
        error = self._peer_error
        if error is not None and not self._stream.closed:
            raise PeerClosedError(str(error)) from error.__cause__

    def _codec(self, what: str) -> Codec:
        codec = self._stream.codec
        if codec is None:
            raise Error(f"{what}() needs framing: pass framing= to Client (or set client.framing)")
        return codec  # type: ignore[no-any-return]

    @property
    def framing(self) -> Codec | None:
        """The codec of ``read_frame``/``write_frame``, or ``None``; may be changed."""
        return self._stream.codec  # type: ignore[no-any-return]

    @framing.setter
    def framing(self, codec: Codec | None) -> None:
        self._stream.codec = check_codec(codec, "framing")

    def _remember_session(self) -> None:
        """Save a TLS 1.3 session once its ticket arrived (after a read)."""
        secure = self._unsaved_session_record
        tls = self._stream.tls_object
        session = tls.session if tls is not None else None
        if secure is not None and session is not None and session.has_ticket:
            from ._sessions import SESSIONS

            SESSIONS.put(secure, self.remote_host, self.remote_port, session, self._context)
            self._unsaved_session_record = None

    def close(self) -> None:
        """Close the connection gracefully; idempotent, returns at once.

        Sends TLS close_notify and shuts the write side at once; what the
        server still sends is drained for a short bounded time in the
        background so the close never turns into a reset.
        """
        stream = self._stream
        if not stream.closed and self._unsaved_session_record is not None:
            stream.absorb_tls_input()  # a TLS 1.3 ticket may be waiting unread
            self._remember_session()
        if not stream.finished:  # also after a failed write closed the stream
            stream.finish_in_background()

    # -- facts -------------------------------------------------------------------

    @property
    def tls(self) -> TLSInfo | None:
        """Facts about the TLS connection, or ``None`` on plain TCP."""
        return self._stream.tls

    @property
    def closed(self) -> bool:
        """True once this side closed the connection: ``close()``, or a failed write or TLS
        handshake; every later operation raises ``ClosedError``.

        The server's EOF alone does not close it (reads raise ``PeerClosedError``,
        and the server may only have half-closed). The same as ``Caller.closed``.
        """
        return self._stream.closed

    @property
    def local_address(self) -> tuple[str, int]:
        """This side's (host, port)."""
        name = self._stream.gsock.getsockname()
        return str(name[0]), int(name[1])

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        tls = " TLS" if self._stream.tls_object is not None else ""
        return f"<gtcp.Client{tls} {self.remote_host}:{self.remote_port}{state}>"


def _connect_unix(path: str, timeout: float | None) -> Any:
    """A gevent socket connected to the Unix domain socket *path*, or ConnectError."""
    gsock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    timer = Timeout.start_new(timeout, _ConnectTimeout) if timeout else None
    try:
        gsock.connect(path)
    except _ConnectTimeout:
        gsock.close()
        raise ConnectError(
            f"Unable to connect with remote host: connection timed out after {timeout:g} s"
        ) from None
    except OSError as exc:
        gsock.close()
        raise ConnectError(f"Unable to connect with remote host: {reason(exc)} ({path})") from exc
    finally:
        if timer is not None:
            timer.cancel()
    return gsock


def _shortened(exc: ConnectError) -> ConnectError:
    """*exc* without the frames below ``Client(...)``, its OS error cause without any.

    Uncaught, a refused or unresolvable connect would print some 30 lines,
    most of them gevent's resolver, thread pool and socket internals. Raised
    from ``__init__`` (``raise _shortened(exc) from exc.__cause__``), it shows
    the user's frame, this error and the OS error's message (a
    ``socket.gaierror``, a ``ConnectionRefusedError``...), which stays
    ``__cause__``; the ``__context__`` is suppressed.
    """
    cause = exc.__cause__
    if cause is not None:
        cause.with_traceback(None)
    return exc.with_traceback(None)


#: One address to connect to: (family, type, proto, sockaddr), as getaddrinfo gives them.
_Target = tuple[int, int, int, Any]


class _LocalHostError(Exception):
    """Private: resolving ``local_host`` failed (its OSError is the cause)."""


def _connect(host: str, port: int, local_host: str | None, timeout: float | None) -> Any:
    """A connected gevent socket with TCP_NODELAY, or ConnectError.

    *host* is resolved with gevent's resolver (an IP address is not looked
    up); one address is connected to in this greenlet, as
    ``gevent.socket.create_connection`` does; several are raced by
    :func:`_happy_eyeballs`. With *local_host*, each attempt binds the local
    address of its own family, and addresses of a family *local_host* has
    none of are left out. *timeout* bounds everything, resolution included.
    """
    timer = Timeout.start_new(timeout, _ConnectTimeout) if timeout else None
    try:
        sources = _local_addresses(local_host) if local_host is not None else None
        targets = _addresses(host, port)
        if sources is not None:
            families = {target[0] for target in targets}
            targets = [target for target in targets if target[0] in sources]
            if not targets:
                raise ConnectError(
                    f"Unable to connect with remote host: local_host {local_host!r} has no address of the "
                    f"family of {host!r} ({_family_names(families)})"
                )
        if len(targets) == 1:
            gsock = _attempt(targets[0], sources)
        else:
            gsock = _happy_eyeballs(_interleave(targets), sources)
    except _ConnectTimeout:
        raise ConnectError(
            f"Unable to connect with remote host: connection timed out after {timeout:g} s"
        ) from None
    except ConnectError:
        raise
    except _LocalHostError as exc:
        cause = exc.__cause__
        assert isinstance(cause, OSError)
        raise ConnectError(
            f"Unable to connect with remote host: {reason(cause)} (local_host {local_host!r})"
        ) from cause
    except OSError as exc:
        raise ConnectError(f"Unable to connect with remote host: {reason(exc)}") from exc
    except ValueError as exc:  # UnicodeError: a name IDNA cannot encode ("bad..name")
        raise ConnectError(f"Unable to connect with remote host: {host!r} is not a valid host name "
                           f"({exc})") from exc
    finally:
        if timer is not None:
            timer.cancel()
    try:
        gsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    return gsock


def _literal(host: str, port: int) -> list[_Target] | None:
    """The one target of an IPv4 or IPv6 address written as such, or None for a name.

    What ``getaddrinfo`` would return, without a trip through the resolver's
    thread pool. Scoped IPv6 addresses (``fe80::1%eth0``) go to the resolver.
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        address = (host, port) if family == socket.AF_INET else (host, port, 0, 0)
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, address)]
    return None


def _addresses(host: str, port: int) -> list[_Target]:
    """The addresses of *host*, in the resolver's order (RFC 6724's, where the system sorts)."""
    found = _literal(host, port)
    if found is not None:
        return found
    host.encode("idna")  # a UnicodeError here, not in the resolver's thread (which would print it)
    infos = gevent.socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"getaddrinfo returned no address for {host!r}")
    return [(family, kind, proto, address) for family, kind, proto, _, address in infos]


def _local_addresses(local_host: str) -> dict[int, Any]:
    """The address to bind for each family *local_host* has (the resolver's first of each)."""
    try:
        found = _literal(local_host, 0)
        if found is None:
            infos = gevent.socket.getaddrinfo(local_host, 0, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
            found = [(family, kind, proto, address) for family, kind, proto, _, address in infos]
    except OSError as exc:
        raise _LocalHostError() from exc
    sources: dict[int, Any] = {}
    for family, _, _, address in found:
        sources.setdefault(family, address)
    return sources


def _family_names(families: set[int]) -> str:
    names: dict[int, str] = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
    return ", ".join(sorted(names.get(family, str(family)) for family in families))


def _interleave(targets: list[_Target]) -> list[_Target]:
    """RFC 8305 section 4: alternate address families, starting with the resolver's first.

    The resolver's order within each family is kept; with the system's RFC
    6724 sorting that puts IPv6 first where the host has IPv6 connectivity.
    """
    first = targets[0][0]
    preferred = [target for target in targets if target[0] == first]
    others = [target for target in targets if target[0] != first]
    ordered: list[_Target] = []
    for pair in itertools.zip_longest(preferred, others):
        ordered.extend(target for target in pair if target is not None)
    return ordered


def _attempt(target: _Target, sources: dict[int, Any] | None) -> Any:
    """One connection attempt: a gevent socket connected to *target*, or OSError.

    The socket is closed on any failure, a kill (``GreenletExit``) and a
    timeout included.
    """
    family, kind, proto, address = target
    gsock = gevent.socket.socket(family, kind, proto)
    try:
        if sources is not None:
            gsock.bind(sources[family])
        gsock.connect(address)
    except BaseException:
        gsock.close()
        raise
    return gsock


def _happy_eyeballs(targets: list[_Target], sources: dict[int, Any] | None) -> Any:
    """Race connection attempts to *targets* (RFC 8305 section 5); the first connected socket wins.

    The first attempt starts at once; each next one after
    :data:`CONNECTION_ATTEMPT_DELAY` or as soon as an attempt fails,
    whichever comes first. When one connects, the attempts still under way
    are killed and every other socket is closed, those that connected a
    moment later included; the same happens when this greenlet is
    interrupted (the connect deadline). If every attempt fails, raises the
    OSError of the one that failed last (as ``create_connection`` does).
    """
    results: Queue[tuple[Any, BaseException | None, _Target]] = Queue()
    decided = Event()  # set once the race is over: a late winner closes its own socket

    def attempt(target: _Target) -> None:
        try:
            gsock = _attempt(target, sources)
        except Exception as exc:  # OSError; anything else is reported the same way, never to the hub
            results.put((None, exc, target))
            return
        if decided.is_set():
            gsock.close()
        else:
            results.put((gsock, None, target))

    def close_late_winners() -> None:
        while not results.empty():
            late = results.get_nowait()[0]
            if late is not None:
                late.close()

    waiting = collections.deque(targets)
    attempts: list[Any] = []
    failed = 0
    last_error: BaseException | None = None
    winner: Any = None
    try:
        while True:
            if waiting:
                attempts.append(gevent.spawn(attempt, waiting.popleft()))
            elif failed == len(attempts):
                assert last_error is not None
                raise last_error
            try:
                gsock, error, target = results.get(timeout=CONNECTION_ATTEMPT_DELAY if waiting else None)
            except Empty:
                continue  # no answer within the delay: start the next attempt alongside
            if error is None:
                winner = gsock
                return gsock
            failed += 1
            last_error = error
            log.debug("connection attempt %d of %d (%s) failed: %s", failed, len(targets), target[3], error)
    finally:
        decided.set()
        close_late_winners()  # before killall switches away: nothing is left behind if it is interrupted
        try:
            gevent.killall(attempts)  # each closes its socket (_attempt)
        except BaseException:
            # The connect deadline fired while the losers died: it replaces
            # the winner being returned, so the winner's socket is closed too.
            if winner is not None:
                winner.close()
            raise
        close_late_winners()
