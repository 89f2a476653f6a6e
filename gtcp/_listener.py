"""Listener: accepts connections and serves each in its own greenlet."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import stat
import threading
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.socket
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from ._dispatch import Connection, ConnectionSettings, Counters, ListenerRun
from ._errors import ConfigError, Error, ListenerError
from ._framing import check_codec
from ._io import reason
from ._proxy import check_mode, trusted_networks
from ._service import check_service
from ._sockopts import socket_options
from ._timeouts import seconds
from ._watchdog import DEFAULT_THRESHOLD, Watching, check_threshold, watch

__all__ = ["Listener", "ListenerStats"]

log = logging.getLogger("gtcp")

#: Listen backlog. The kernel caps it at net.core.somaxconn (4096 on current
#: Linux); connections beyond ``max_connections`` wait here.
DEFAULT_BACKLOG = 1024

#: Seconds a write to a peer that does not read may block before the
#: connection is closed; the client's default, as in Ballerina.
DEFAULT_WRITE_TIMEOUT = 300.0

#: Seconds ``serve_forever()`` lets connections finish after Ctrl-C or SIGTERM.
GRACEFUL_TIMEOUT = 10.0

#: Python's own handlers of the signals serve_forever() turns into a graceful stop.
_DEFAULT_HANDLERS: dict[int, Any] = {
    signal.SIGINT: signal.default_int_handler,
    signal.SIGTERM: signal.SIG_DFL,
}

#: Longest time immediate_stop() waits for the on_close callbacks of the
#: connections it closed (they run in their own greenlets).
STOP_JOIN_SECONDS = 10.0

_OPTIONS = frozenset({"backlog", "max_connections", "idle_timeout", "write_timeout", "reuse_port", "framing",
                      "keepalive", "user_timeout", "proxy_protocol", "trusted_proxies",
                      "slow_callback_warning"})


def _errnos(*names: str) -> frozenset[int]:
    """The errno values of *names* that this platform defines (as trio builds its list)."""
    return frozenset(getattr(errno, name) for name in names if hasattr(errno, name))


# Accept errors: the two lists are trio's. _ONE_CONNECTION is its
# _ignorable_accept_errno_names (src/trio/_highlevel_socket.py): errors that
# concern one connection that died before accept() returned it (reset,
# refused by a firewall, ...), skipped silently. _OUT_OF_RESOURCES is its
# ACCEPT_CAPACITY_ERRNOS (src/trio/_highlevel_serve_listeners.py): out of
# descriptors or kernel memory, a state the server recovers from once some
# connections close; trio logs each one and sleeps 0.1 s, gtcp logs once per
# burst and backs off (MIN_BACKOFF doubling to MAX_BACKOFF), then resumes.
# Where the two differ: any other error ends trio's serve loop (it is raised
# to the caller), but gtcp accepts in the hub, where there is nobody to raise
# to, so such an error is logged as unexpected and backed off the same way: a
# persistent failure can never spin the accept loop. (trio's third list,
# EBADF/ENOTSOCK for a listener closed under accept(), has no counterpart: a
# stop stops the accept watcher before it closes the socket.)
_OUT_OF_RESOURCES = _errnos("EMFILE", "ENFILE", "ENOMEM", "ENOBUFS")
_ONE_CONNECTION = _errnos("EPERM", "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
                          "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "ENOSR", "ESOCKTNOSUPPORT",
                          "EPROTONOSUPPORT", "ETIMEDOUT", "ECONNRESET")


class _Server(StreamServer):
    """StreamServer whose accept errors go to the gtcp logger, never the hub."""

    #: Back-off after an accept error: doubles from MIN to MAX while the
    #: errors last. gevent's own ``delay`` is reset by ``_do_read`` whenever
    #: ``do_read`` returns, so gtcp keeps its own.
    MIN_BACKOFF = 0.05
    MAX_BACKOFF = 1.0
    _burst = False
    _backoff = MIN_BACKOFF
    _backoff_timer: Any = None

    def do_read(self) -> Any:
        try:
            result = super().do_read()
        except OSError as exc:
            if exc.errno in _ONE_CONNECTION:
                return None
            if not self._burst:
                self._burst = True
                if exc.errno in _OUT_OF_RESOURCES:
                    log.error("Listener on port %s cannot accept: %s; backing off",
                              self.server_port, reason(exc))
                else:
                    log.error("Listener on port %s cannot accept (unexpected error %s): %s; backing off",
                              self.server_port, errno.errorcode.get(exc.errno or 0, exc.errno), reason(exc))
            self._back_off()
            return None
        if result is not None and self._burst:
            self._burst = False
            self._backoff = self.MIN_BACKOFF
            log.warning("Listener on port %s accepts again", self.server_port)
        return result

    #: The listener run whose connections this server accepts (set by Listener.start()).
    listener_run: ListenerRun

    def do_handle(self, *args: Any) -> None:
        # The connection is registered here, in the accept loop, so that a
        # stop sees it even if its greenlet has not run yet. Its run() is
        # spawned directly, not through gevent's _handle_and_close_when_done
        # wrapper: the connection closes its own socket, and one interpreter
        # frame less sits on every idle greenlet's saved stack.
        gsock, address = args
        conn = Connection(self.listener_run, gsock, address)
        conn.register()
        server: Any = self
        try:
            conn.greenlet = server._spawn(conn.run)
        except BaseException:
            conn.abort()
            conn.run()  # unregisters and closes the socket at once
            raise

    def _back_off(self) -> None:
        # BaseServer._do_read's back-off, minus its traceback on the hub.
        self.stop_accepting()
        server: Any = self
        if self._backoff_timer is not None:
            self._backoff_timer.close()
        timer: Any = self.loop.timer(self._backoff)
        timer.start(server._start_accepting_if_started)
        self._backoff_timer = timer
        self._backoff = min(self.MAX_BACKOFF, self._backoff * 2)

    def close(self) -> None:
        """Stop accepting and close the listening socket (and the back-off timer)."""
        if self._backoff_timer is not None:
            self._backoff_timer.close()
            self._backoff_timer = None
        super().close()


@dataclass(frozen=True)
class ListenerStats:
    """``Listener.stats()``: counts since the listener was made; in Prometheus terms
    ``gtcp_open_connections`` (a gauge) and ``gtcp_<name>_total`` (counters)."""

    open: int
    accepted: int
    closed: int
    handshake_failures: int
    idle_timeouts: int
    frames_too_long: int
    bytes_in: int
    bytes_out: int


class Listener:
    """A TCP (or TLS) server: Ballerina's ``tcp:Listener``.

    ``Listener(local_port, *, local_host=None, secure_socket=None, **options)``
    with the options ``backlog``, ``max_connections``, ``idle_timeout``,
    ``write_timeout``, ``reuse_port``, ``framing`` (a codec such as
    ``gtcp.Lines()``: ``on_bytes`` then gets one frame at a time and what it
    returns is encoded as a frame), ``keepalive`` (``True`` or a
    ``gtcp.KeepAlive``), ``user_timeout`` (``TCP_USER_TIMEOUT``, seconds) and
    ``slow_callback_warning`` (seconds, default 0.5, ``None`` disables: one
    WARNING when a callback, or anything else, keeps the gevent hub from
    running for longer; see the README on monkey-patching).
    Attach one :class:`gtcp.Service`, then ``start()``; each connection runs in its own greenlet.
    ``secure_socket`` is a ``ListenerSecureSocket``, a dict of one, or a ready server-side
    ``ssl.SSLContext`` (used as it is, with gtcp's default handshake timeout).
    """

    def __init__(
        self,
        local_port: int,
        *,
        local_host: str | None = None,
        secure_socket: Any = None,
        **options: Any,
    ) -> None:
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ConfigError(f"Unknown listener option(s): {', '.join(unknown)}")
        if isinstance(local_port, bool) or not isinstance(local_port, int) or not 0 <= local_port <= 65535:
            raise ConfigError(f"local_port must be an int from 0 to 65535, got {local_port!r}")
        if local_host is not None and not isinstance(local_host, str):
            raise ConfigError(f"local_host must be a str or None, got {local_host!r}")
        self._local_port = local_port
        self._local_host = local_host
        from ._config import listener_secure_socket

        self._secure_socket = listener_secure_socket(secure_socket)
        self._backlog = _positive_int(options.get("backlog", DEFAULT_BACKLOG), "backlog")
        max_connections = options.get("max_connections")
        self._max_connections = (
            None if max_connections is None else _positive_int(max_connections, "max_connections")
        )
        self._idle_timeout = seconds(options.get("idle_timeout"), "idle_timeout")
        self._write_timeout = seconds(options.get("write_timeout", DEFAULT_WRITE_TIMEOUT), "write_timeout")
        self._reuse_port = bool(options.get("reuse_port", False))
        self._framing = check_codec(options.get("framing"), "framing")
        self._sockopts = socket_options(options.get("keepalive"), options.get("user_timeout"))
        self._proxy_protocol = check_mode(options.get("proxy_protocol"))
        self._trusted_proxies = trusted_networks(options.get("trusted_proxies"))
        if self._trusted_proxies is not None and self._proxy_protocol is None:
            raise ConfigError("trusted_proxies needs proxy_protocol='v1', 'v2' or 'any'")
        self._slow_callback_warning = check_threshold(options.get("slow_callback_warning", DEFAULT_THRESHOLD))
        #: The watchdog's heartbeat while running (None when stopped or disabled).
        self._watching: Watching | None = None
        if self._reuse_port and not hasattr(socket, "SO_REUSEPORT"):
            raise ConfigError("reuse_port is not supported on this platform")
        self._service: Any = None
        self._server: _Server | None = None
        #: The current run (None when stopped), and it with earlier runs that may still have connections open.
        self._run: ListenerRun | None = None
        self._runs: list[ListenerRun] = []
        self._port = local_port
        self._started_once = False
        self._stopped = Event()
        #: Listener.unix(): the socket file's path and mode, and its (dev, inode) once bound.
        self._unix_path: str | None = None
        self._unix_mode = 0o600
        self._unix_bound: tuple[int, int] | None = None
        #: Listener.from_socket(): a socket bound and listening already (a supervisor's, systemd's).
        self._adopted: Any = None
        self._counters = Counters()  # across runs: counters never go down
        self._bytes_reported = (0, 0)

    @classmethod
    def unix(cls, path: str, mode: int = 0o600, **options: Any) -> Listener:
        """A listener on the Unix domain socket *path*, with the file's permission bits *mode*.

        Same services, options, framing and TLS as ``Listener(...)``. At
        ``start()`` a stale socket file (left by a dead process: nothing
        answers on it) is replaced, and a live one raises ``ListenerError``;
        a stop removes the file. ``caller.remote_host`` is ``""`` (peers of a
        Unix socket are unnamed) and the ports are 0.
        """
        if not isinstance(path, str) or not path:
            raise ConfigError(f"path must be a non-empty str, got {path!r}")
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise ConfigError(f"mode must be permission bits from 0 to 0o777, got {mode!r}")
        if "local_host" in options:
            raise ConfigError("local_host does not apply to a Unix domain socket")
        if options.get("trusted_proxies") is not None:
            raise ConfigError("trusted_proxies does not apply to a Unix domain socket "
                              "(its file's mode decides who may connect)")
        listener = cls(0, **options)
        listener._unix_path = path
        listener._unix_mode = mode
        return listener

    @classmethod
    def from_socket(cls, sock: socket.socket, **options: Any) -> Listener:
        """A listener on *sock*, a stream socket already bound and listening.

        For sockets handed over by a supervisor (``gtcp serve`` workers) or by
        systemd socket activation. The listener owns *sock* from here on: a
        stop closes it (closing this process's descriptor; a copy held by
        another process keeps the port open). Same options as ``Listener(...)``.
        """
        if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM \
                or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ConfigError(f"from_socket() needs a listening stream socket, got {sock!r}")
        if "local_host" in options:
            raise ConfigError("local_host does not apply to a socket that is bound already")
        if sock.family == socket.AF_UNIX and options.get("trusted_proxies") is not None:
            raise ConfigError("trusted_proxies does not apply to a Unix domain socket "
                              "(its file's mode decides who may connect)")
        listener = cls(0, **options)
        listener._adopted = sock
        return listener

    # -- services --------------------------------------------------------------

    def attach(self, service: Any, name: str | list[str] | None = None) -> None:
        """Attach *service* (one per listener; a second attach replaces the first).

        Raises ``TypeError`` if it has no ``on_connect(caller)`` or defines a
        Ballerina-spelled callback such as ``onConnect``. Takes effect at the
        next ``start()``. *name* is accepted for Ballerina fidelity and ignored.
        """
        check_service(service)
        self._service = service

    def detach(self, service: Any) -> None:
        """Clear the attached service (whichever is passed, as Ballerina).

        Takes effect at the next ``start()``; running connections go on.
        """
        self._service = None

    # -- running -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port while running (or last run); ``local_port`` before."""
        return self._port

    @property
    def running(self) -> bool:
        """True between a successful ``start()`` and a stop."""
        return self._server is not None

    def start(self) -> None:
        """Bind and start accepting; returns at once.

        The TLS context is built (every file loaded) *before* binding, so a
        bad TLS configuration never holds the port. Raises ``gtcp.Error`` if
        already running or no service is attached, ``TLSError`` for a bad
        key or certificate, ``ListenerError`` if the address cannot be bound.
        """
        if self._server is not None:
            raise Error(f"The listener is already started on port {self._port}.")
        if self._service is None:
            raise Error("No service is attached to the listener; call attach() before start().")
        context = None
        handshake_timeout = None
        if self._secure_socket is not None:
            from ._config import handshake_deadline
            from ._contexts import server_context

            context = server_context(self._secure_socket)  # an ssl.SSLContext given is used as it is
            handshake_timeout = handshake_deadline(self._secure_socket)
        sock = self._bind()
        settings = ConnectionSettings(self._service, self._write_timeout, self._idle_timeout, self._framing,
                                      self._sockopts, self._proxy_protocol, self._trusted_proxies)
        run = ListenerRun(settings, context, handshake_timeout, self._counters)
        spawn: Any = Pool(self._max_connections) if self._max_connections else "default"
        server = _Server(sock, _unused_handle, spawn=spawn)
        server.listener_run = run
        server.start()
        name = sock.getsockname()
        self._port = name[1] if isinstance(name, tuple) else 0
        self._server = server
        self._run = run
        self._runs = [earlier for earlier in self._runs if earlier.connections]
        self._runs.append(run)
        self._started_once = True
        self._stopped.clear()
        if self._slow_callback_warning is not None:
            self._watching = watch(self._slow_callback_warning)

    def _bind(self) -> Any:
        if self._adopted is not None:
            return self._adopt()
        if self._unix_path is not None:
            return self._bind_unix(self._unix_path)
        host = self._local_host
        try:
            if host is None:
                infos = _wildcard_infos(self._local_port)
            else:
                infos = gevent.socket.getaddrinfo(host, self._local_port, socket.AF_UNSPEC,
                                           socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
            family, _, _, _, address = infos[0]
            sock = gevent.socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self._reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6 and host is None:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(address)
                sock.listen(self._backlog)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            cause = reason(exc)
            where = f"{host if host is not None else '*'}:{self._local_port}"
            raise ListenerError(f"Error initializing the server: {cause} ({where})") from exc
        return sock

    def _adopt(self) -> Any:
        """The gevent socket for the adopted one (once: a stop closes it)."""
        sock = self._adopted
        if sock.fileno() < 0:
            raise ListenerError("Error initializing the server: the adopted socket is closed")
        if isinstance(sock, gevent.socket.socket):
            return sock
        gsock = gevent.socket.socket(sock.family, sock.type, fileno=sock.detach())
        return gsock

    def stats(self) -> ListenerStats:
        """A snapshot of the counts since the listener was made (across its runs).

        ``open`` connections now; ``accepted`` and ``closed`` connections;
        ``handshake_failures`` (TLS handshakes that failed, stops excluded);
        ``idle_timeouts``; ``frames_too_long`` (connections ended by a
        ``FrameTooLongError``); ``bytes_in``/``bytes_out``: the bytes received
        and the bytes sent that the peer acknowledged, as the kernel counts
        them (TCP_INFO; TLS records included; 0 on Unix sockets), open
        connections' bytes so far included.
        """
        counters = self._counters
        live = [conn.stream.byte_counts() for run in self._runs for conn in run.connections
                if conn.stream is not None]
        snapshot = ListenerStats(
            open=sum(len(run.connections) for run in self._runs),
            accepted=counters.accepted,
            closed=counters.closed,
            handshake_failures=counters.handshake_failures,
            idle_timeouts=counters.idle_timeouts,
            frames_too_long=counters.frames_too_long,
            # Never less than reported before: a FIN the kernel counted as a
            # byte and gtcp could not tell apart (a rare close race) would
            # otherwise make a total step back when the connection closes.
            bytes_in=max(self._bytes_reported[0], counters.bytes_in + sum(count[0] for count in live)),
            bytes_out=max(self._bytes_reported[1], counters.bytes_out + sum(count[1] for count in live)),
        )
        self._bytes_reported = (snapshot.bytes_in, snapshot.bytes_out)
        return snapshot

    def reload_tls(self, secure_socket: Any = None) -> None:
        """Re-read the TLS files (or take a new record, dict or ``ssl.SSLContext``) for new handshakes.

        Connections already open keep the context they were made with. The
        new context is built completely first: a bad file raises
        ``TLSError`` (a bad record ``ConfigError``) and the old context stays
        in use. A listener given a ready ``ssl.SSLContext`` has no files gtcp
        could re-read: without an argument its context stays (change it in
        place, ``load_cert_chain()``, or pass a new one). Before ``start()``
        (or after a stop) it only replaces the record, checked at the next
        ``start()``. Raises ``gtcp.Error`` on a plain listener.
        """
        from ._config import handshake_deadline, listener_secure_socket
        from ._contexts import server_context

        record = self._secure_socket if secure_socket is None else listener_secure_socket(secure_socket)
        if record is None:
            raise Error("reload_tls() needs a TLS listener (secure_socket=...)")
        run = self._run
        if run is not None:
            context = server_context(record)  # raises before anything changes
            run.ssl_context = context
            run.handshake_timeout = handshake_deadline(record)
        self._secure_socket = record

    def serve_forever(self, graceful_timeout: float | None = GRACEFUL_TIMEOUT) -> None:
        """``start()`` if needed, then block until the listener is stopped.

        Ctrl-C (SIGINT) and SIGTERM stop the listener gracefully: accepting
        stops at once, open connections get *graceful_timeout* seconds
        (default 10) to finish, then the rest are closed, each with its
        ``on_close`` (``None``: do not wait for them). Then SIGINT raises
        ``KeyboardInterrupt`` here, in the caller, and SIGTERM returns. The
        gevent hub prints nothing. This applies while serving from the main
        thread with Python's default handlers for those signals; a second
        Ctrl-C during the drain interrupts it.
        """
        seconds(graceful_timeout, "graceful_timeout")  # checked before serving
        if self._server is None:
            self.start()
        caught: list[int] = []
        handlers = self._catch_stop_signals(caught)
        try:
            self._stopped.wait()
        finally:
            for signum, handler in handlers:
                handler.cancel()
                signal.signal(signum, _DEFAULT_HANDLERS[signum])
        if caught:
            self.graceful_stop(graceful_timeout)
            if caught[0] == signal.SIGINT:
                raise KeyboardInterrupt

    def _catch_stop_signals(self, caught: list[int]) -> list[tuple[int, Any]]:
        if threading.current_thread() is not threading.main_thread():
            return []
        handlers: list[tuple[int, Any]] = []
        for signum, default in _DEFAULT_HANDLERS.items():
            if signal.getsignal(signum) is not default:
                continue  # the program has its own handler: leave it alone

            def on_signal(signum: int = signum) -> None:
                caught.append(signum)
                self._stopped.set()

            handlers.append((signum, gevent.signal_handler(signum, on_signal)))
        return handlers

    # -- stopping ----------------------------------------------------------------

    def graceful_stop(self, timeout: float | None = None) -> None:
        """Stop accepting at once; let open connections end.

        With ``timeout=None`` return at once and let connections run to their
        natural end (Ballerina). With a timeout, wait up to that many seconds
        for them to end, then close those left (each gets ``on_close``),
        including connections left running by an earlier graceful stop.
        Raises ``gtcp.Error("Unable to initialize the tcp listener.")`` if the
        listener was never started.
        """
        if not self._started_once:
            raise Error("Unable to initialize the tcp listener.")
        wait = seconds(timeout, "timeout")
        self._close_server()
        if timeout is None:
            return
        if wait is not None:
            gevent.wait([run.idle_event for run in self._runs], timeout=wait)
        self._abort_all()

    def immediate_stop(self) -> None:
        """Stop accepting and close every open connection now.

        Each connection gets its ``on_close()``; this waits (up to
        ``STOP_JOIN_SECONDS``) until they ran. Connections left running by
        an earlier ``graceful_stop()`` are closed too. Does nothing if the
        listener is not running and has no connections.
        """
        self._close_server()
        self._abort_all()

    def _bind_unix(self, path: str) -> Any:
        clear_unix_path(path)
        sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, self._unix_mode)
            sock.listen(self._backlog)
            bound = os.stat(path)
        except OSError as exc:
            sock.close()
            raise ListenerError(f"Error initializing the server: {reason(exc)} ({path})") from exc
        self._unix_bound = (bound.st_dev, bound.st_ino)
        return sock

    def _close_server(self) -> None:
        server = self._server
        self._server = None
        self._run = None
        if server is not None:
            server.close()
        watching, self._watching = self._watching, None
        if watching is not None:
            watching.release()
        self._remove_unix_file()
        self._stopped.set()

    def _remove_unix_file(self) -> None:
        """Remove our socket file, unless another listener replaced it since."""
        path, bound, self._unix_bound = self._unix_path, self._unix_bound, None
        if path is None or bound is None:
            return
        try:
            info = os.stat(path)
            if (info.st_dev, info.st_ino) == bound:
                os.unlink(path)
        except OSError:
            pass

    def _abort_all(self) -> None:
        current = gevent.getcurrent()
        connections = [conn for run in self._runs for conn in run.connections]
        for conn in connections:
            conn.abort()
        others = [c.greenlet for c in connections if c.greenlet not in (None, current)]
        gevent.joinall(others, timeout=STOP_JOIN_SECONDS)
        self._runs = [run for run in self._runs if run.connections]

    def __enter__(self) -> Listener:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.immediate_stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        tls = " TLS" if self._secure_socket is not None else ""
        where = self._unix_path or f"{self._local_host or '*'}:{self._port}"
        return f"<gtcp.Listener{tls} {where} {state}>"


def clear_unix_path(path: str) -> None:
    """Make *path* free for a new Unix socket: nothing is there, or a stale socket file (removed).

    Raises ``ListenerError`` for a live listener's file (also a busy one that
    does not answer), a path that is not a socket, or an error reading it.
    """
    def fail(cause: str, exc: BaseException | None = None) -> ListenerError:
        error = ListenerError(f"Error initializing the server: {cause} ({path})")
        error.__cause__ = exc
        return error

    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise fail(reason(exc), exc) from exc
    if not stat.S_ISSOCK(info.st_mode):
        raise fail("the path exists and is not a socket")
    state = unix_socket_state(path)
    if state == "stale":
        os.unlink(path)  # its listener is gone
    elif state == "live":
        raise fail("Address already in use: a live listener answers on it")
    else:
        raise fail(f"Address already in use: a listener is there but does not answer ({state})")


def unix_socket_state(path: str) -> str:
    """Whether the socket file *path* is ``"stale"`` (refused: its process is gone), ``"live"`` (it
    answers), or something else (the reason: a live listener whose backlog is full times out, and its
    file must not be replaced)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return "stale"
    except OSError as exc:
        return reason(exc)
    finally:
        probe.close()
    return "live"


def _unused_handle(gsock: Any, address: Any) -> None:  # pragma: no cover
    """StreamServer wants a handle; _Server.do_handle spawns Connection.run instead."""
    raise AssertionError("not called")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return value


def _wildcard_infos(port: int) -> list[Any]:
    """All interfaces: dual-stack IPv6 where the host has it, else IPv4."""
    if socket.has_ipv6:
        try:
            probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            probe.close()
            return [(socket.AF_INET6, socket.SOCK_STREAM, 0, "", ("::", port))]
        except OSError:
            pass
    return [(socket.AF_INET, socket.SOCK_STREAM, 0, "", ("0.0.0.0", port))]
