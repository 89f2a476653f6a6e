"""``python -m gtcp serve MODULE:NAME``: serve a Service with worker processes.

The **supervisor** (the process you start) checks everything that can be
checked before a worker exists: the target (importable, and a
``gtcp.Service`` instance, a Service class, or a factory), the listener
options, the TLS files (the context is built as ``Listener.start`` builds it)
and the addresses (it binds the listening socket itself, or takes systemd's
from ``LISTEN_FDS``). A failure there is one line on stderr, ``gtcp: error:
...``, and exit status 1, with nothing started and nothing left bound.

It then starts N **workers**, each a fresh interpreter (``python -m gtcp
serve ... --worker-fds``) that inherits the listening socket(s) and serves
them with ``Listener.from_socket``. All workers accept on the one socket the
supervisor holds, so a worker that stops (at a reload, a crash) never takes
queued connections with it: closing a worker's *own* ``SO_REUSEPORT`` socket
resets the connections queued on it, a shared inherited socket loses none.

Each worker reports over a pipe, one JSON object per line: ``ready`` once
serving, its summed ``listener.stats()`` every :data:`STATS_INTERVAL`
seconds, a ``final`` report at exit, or an ``error`` (one line) if it cannot
start. The supervisor keeps each worker's last report; the counters of a
worker that exits are added to a retired total, so the sums it serves on
``--metrics-port`` (``GET /metrics``, the Prometheus text format, written
by hand below: a few lines, no dependency) never go down across restarts
and reloads.

Signals (to the supervisor): SIGTERM or SIGINT stop gracefully (workers get
SIGTERM and drain for ``--graceful-timeout`` seconds; then their remaining
connections are closed, each with its ``on_close``); a second one, or
SIGQUIT, stops at once (workers get SIGQUIT). SIGHUP reloads: a new
generation of workers starts (fresh code, fresh TLS files) and, once every
one of them reports ready, the old ones get SIGTERM and drain; if the new
generation fails to start, the old one keeps serving. Workers ignore SIGINT
and SIGHUP (a terminal's Ctrl-C reaches the whole process group: the
supervisor decides) and stop gracefully by themselves if the supervisor
disappears.

A worker that exits unexpectedly is restarted after a back-off
(:data:`BACKOFF_MIN` doubling to :data:`BACKOFF_MAX`, reset once a worker
ran :data:`HEALTHY_SECONDS`); a worker of the first generation that fails at
start-up, or a slot whose worker fails at start-up :data:`STARTUP_FAILURES`
times in a row, stops the server: ``gtcp: error: worker exited at start-up
(...); stopping``, exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.os
import gevent.socket
import gevent.subprocess
from gevent.event import Event
from gevent.lock import Semaphore

from ._config import CertKey, ListenerSecureSocket, MutualSsl
from ._drain import Drain
from ._errors import ConfigError, Error, ListenerError
from ._framing import Codec, LengthPrefixed, Lines
from ._io import reason
from ._listener import DEFAULT_BACKLOG, Listener, ListenerStats, clear_unix_path
from ._service import Service, check_service

__all__ = ["GRACEFUL_TIMEOUT", "add_command", "listener_secure_socket", "load_target", "metrics_text",
           "non_negative_seconds", "run", "target_kind"]

log = logging.getLogger("gtcp")

#: Default ``--graceful-timeout``: seconds open connections get to finish at a stop.
GRACEFUL_TIMEOUT = 10.0

#: Seconds between two stats reports of a worker (the metrics are at most twice that old).
STATS_INTERVAL = 0.5

#: Restart back-off of a crashed worker: doubles from MIN to MAX, back to MIN
#: once a worker ran HEALTHY_SECONDS.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
HEALTHY_SECONDS = 10.0

#: Start-up failures in a row (of one worker slot) that stop the server.
STARTUP_FAILURES = 5

#: Seconds a worker may take to report ready before it counts as failed at start-up.
STARTUP_SECONDS = 60.0

#: Seconds, beyond --graceful-timeout, the supervisor waits for workers at a
#: stop before it kills them (SIGKILL).
KILL_MARGIN = 5.0

#: Exit status of a worker that could not start (it reported why).
EXIT_STARTUP = 1

#: ``--framing`` names and their codecs.
FRAMINGS: dict[str, Callable[[], Codec] | None] = {
    "raw": None,
    "lines": Lines,
    "len1": lambda: LengthPrefixed(1),
    "len2": lambda: LengthPrefixed(2),
    "len4": lambda: LengthPrefixed(4),
    "len8": lambda: LengthPrefixed(8),
}

LOG_LEVELS = ("debug", "info", "warning", "error")

#: The stats fields that are counters (every field of ListenerStats but ``open``).
COUNTERS = tuple(field.name for field in dataclasses.fields(ListenerStats) if field.name != "open")

#: # HELP text of each metric.
_HELP = {
    "open": "Connections open now, over all workers.",
    "accepted": "Connections accepted.",
    "closed": "Connections closed.",
    "handshake_failures": "TLS handshakes that failed.",
    "idle_timeouts": "Connections closed by the idle timeout.",
    "frames_too_long": "Connections ended by a frame longer than the codec's max_length.",
    "bytes_in": "Bytes received on the connections' sockets (TLS records included).",
    "bytes_out": "Bytes sent on the connections' sockets (TLS records included).",
}

DESCRIPTION = """\
Serve MODULE:NAME (a gtcp.Service instance, a Service class, or a factory
returning a Service; a class or factory is called once in each worker) with N
worker processes sharing one listening socket (systemd's when LISTEN_FDS is
set). Prints one line when every worker is serving:
  gtcp serve: listening on HOST:PORT (N workers)"""

EPILOG = """\
signals (to this process):
  SIGTERM, SIGINT  stop accepting, let connections finish within --graceful-timeout,
                   then close the rest; exit status 0
  second one, SIGQUIT  close every connection now
  SIGHUP           reload: start new workers (fresh code and TLS files), then drain
                   the old ones; no connection is refused or reset
A worker that crashes is restarted with back-off. Errors before serving are one
line on stderr (gtcp: error: ...) and exit status 1."""


# -- arguments ---------------------------------------------------------------------


def non_negative_seconds(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = non_negative_seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text!r}")
    return value


def _workers(text: str) -> int:
    if text == "auto":
        # The CPUs this process may run on (a container's cpuset, taskset),
        # not the machine's count.
        try:
            return len(os.sched_getaffinity(0)) or 1
        except (AttributeError, OSError):
            return os.cpu_count() or 1
    return _positive_int(text)


def _port(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0 to 65535): {text!r}")
    return value


def _fds(text: str) -> list[int]:
    try:
        return [int(part, 10) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of descriptors: {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``serve`` on *parser*."""
    parser.add_argument("target", metavar="MODULE:NAME",
                        help="the Service instance, Service class or factory to serve (e.g. app:service)")
    where = parser.add_argument_group("where", "ignored under systemd socket activation (LISTEN_FDS)")
    where.add_argument("--host", default="127.0.0.1",
                       help="address to bind, and of --metrics-port (default: %(default)s)")
    where.add_argument("--port", type=_port, help="TCP port to listen on (0 picks a free one)")
    where.add_argument("--unix", metavar="PATH", help="serve a Unix domain socket (mode 0600) instead of TCP")
    parser.add_argument("--workers", type=_workers, default=1, metavar="N|auto",
                        help="worker processes (auto: one per CPU; default: %(default)s)")
    tls = parser.add_argument_group("TLS", "serve TLS when --cert and --key are given")
    tls.add_argument("--cert", metavar="FILE", help="the server's PEM certificate chain")
    tls.add_argument("--key", metavar="FILE", help="the server's PEM private key")
    tls.add_argument("--ca", metavar="FILE",
                     help="PEM CA certificates: require a client certificate signed by one (mutual TLS)")
    options = parser.add_argument_group("listener options")
    options.add_argument("--framing", choices=list(FRAMINGS), default="raw",
                         help="raw chunks (default), lines, or frames with a 1, 2, 4 or 8-byte big-endian "
                              "length prefix")
    options.add_argument("--max-connections", type=_positive_int, metavar="N",
                         help="connections each worker serves at once; more wait in the backlog")
    options.add_argument("--idle-timeout", type=_positive_seconds, metavar="S",
                         help="close a connection that sent nothing for S seconds")
    options.add_argument("--graceful-timeout", type=non_negative_seconds, default=GRACEFUL_TIMEOUT,
                         metavar="S",
                         help="at a stop or reload, seconds connections get to finish before they are "
                              "closed (default: %(default)g s)")
    options.add_argument("--proxy-protocol", choices=("v1", "v2", "any"),
                         help="expect a PROXY protocol header on every connection")
    options.add_argument("--trusted-proxies", metavar="NETS",
                         help="with --proxy-protocol: comma-separated addresses or networks allowed to "
                              "connect (e.g. 10.0.0.0/8,::1); others are closed before any callback")
    parser.add_argument("--metrics-port", type=_port, metavar="PORT",
                        help="serve GET /metrics (Prometheus text format) on --host:PORT")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="warning",
                        help="level of the gtcp logger in the supervisor and workers (default: %(default)s)")
    # Internal: how the supervisor starts a worker.
    parser.add_argument("--worker-fds", type=_fds, help=argparse.SUPPRESS)
    parser.add_argument("--worker-pipe", type=int, help=argparse.SUPPRESS)


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` subcommand to the command line's subparsers."""
    serve = commands.add_parser(
        "serve", help="serve a Service of your code with worker processes",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(serve)
    serve.set_defaults(run=run)


def listener_secure_socket(cert: str | None, key: str | None, ca: str | None) -> ListenerSecureSocket | None:
    """The ``ListenerSecureSocket`` of ``--cert``/``--key`` (and ``--ca``), or None without them."""
    if (cert is None) != (key is None):
        raise ConfigError("--cert and --key must be given together")
    if cert is None or key is None:
        if ca is not None:
            raise ConfigError("--ca needs --cert and --key: mutual TLS is TLS")
        return None
    return ListenerSecureSocket(CertKey(cert, key), mutual_ssl=None if ca is None else MutualSsl(ca))


def _listener_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``Listener.from_socket`` (secure_socket included)."""
    options: dict[str, Any] = {}
    make_codec = FRAMINGS[args.framing]
    if make_codec is not None:
        options["framing"] = make_codec()
    if args.max_connections is not None:
        options["max_connections"] = args.max_connections
    if args.idle_timeout is not None:
        options["idle_timeout"] = args.idle_timeout
    if args.proxy_protocol is not None:
        options["proxy_protocol"] = args.proxy_protocol
    if args.trusted_proxies is not None:
        options["trusted_proxies"] = tuple(part.strip() for part in args.trusted_proxies.split(",")
                                           if part.strip())
    secure_socket = listener_secure_socket(args.cert, args.key, args.ca)
    if secure_socket is not None:
        options["secure_socket"] = secure_socket
    return options


# -- the target --------------------------------------------------------------------


def _where(exc: BaseException) -> str:
    """`` (at file.py:LINE)`` of the innermost frame of *exc*'s traceback, or ``""``."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {os.path.basename(last.filename)}:{last.lineno})"


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}{_where(exc)}" if text else f"{type(exc).__name__}{_where(exc)}"


def _short(value: object) -> str:
    shown = " ".join(repr(value).split())
    return shown if len(shown) <= 60 else shown[:57] + "..."


def load_target(spec: str) -> Any:
    """Import ``MODULE:NAME`` (NAME may be dotted) and return the object; ``ConfigError`` if not possible."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigError(f"the target must be MODULE:NAME (e.g. myapp.server:service), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            missing = f"no module named {exc.name!r}"
            raise ConfigError(f"cannot import {module_name!r} (target {spec}): {missing}") from None
        raise ConfigError(f"cannot import {module_name!r} (target {spec}): {_describe(exc)}") from None
    except (Exception, SystemExit) as exc:
        raise ConfigError(f"cannot import {module_name!r} (target {spec}): {_describe(exc)}") from None
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigError(f"{spec}: module {module_name!r} has no attribute {attribute!r}") from None
    return found


def target_kind(target: Any, spec: str) -> str:
    """``"instance"``, ``"class"`` or ``"factory"``; ``ConfigError`` for anything else.

    A class must be a ``gtcp.Service`` subclass (or define ``on_connect``);
    an instance must pass the checks of ``Listener.attach``; any other
    callable is a factory, whose result each worker checks when it calls it.
    """
    if isinstance(target, type):
        if issubclass(target, Service) or callable(getattr(target, "on_connect", None)):
            return "class"
        raise ConfigError(f"{spec} is the class {target.__name__}, which is not a gtcp.Service subclass")
    if isinstance(target, Service) or hasattr(target, "on_connect"):
        try:
            check_service(target)
        except TypeError as exc:
            raise ConfigError(f"{spec}: {exc}") from None
        return "instance"
    if callable(target):
        return "factory"
    raise ConfigError(f"{spec} is not a gtcp.Service, a Service class or a factory: it is the "
                      f"{type(target).__name__} {_short(target)}")


def _make_service(target: Any, kind: str, spec: str) -> Any:
    """The service a worker attaches: the instance itself, or what the class or factory returns."""
    if kind == "instance":
        return target
    try:
        service = target()
    except Exception as exc:
        raise ConfigError(f"{spec}() raised {_describe(exc)}") from None
    try:
        check_service(service)
    except TypeError as exc:
        raise ConfigError(f"{spec}() returned {_short(service)}: {exc}") from None
    return service


# -- sockets -------------------------------------------------------------------------


def _take_systemd_environment() -> tuple[str, str] | None:
    """``LISTEN_PID`` and ``LISTEN_FDS`` (systemd socket activation), removed from the environment.

    They are removed whatever they say, so workers (and anything the target
    starts) never take them for their own.
    """
    pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return None if pid is None or count is None else (pid, count)


def _systemd_sockets(listen: tuple[str, str] | None) -> list[socket.socket] | None:
    """The sockets systemd passed (fds 3 and up) if *listen* is meant for this process, else None."""
    if listen is None:
        return None
    pid, count = listen
    try:
        if int(pid) != os.getpid():
            log.debug("LISTEN_PID=%s is not this process (%d): binding sockets instead", pid, os.getpid())
            return None
        number = int(count)
    except ValueError:
        raise ConfigError(f"LISTEN_PID and LISTEN_FDS must be numbers, got {pid!r} and {count!r}") from None
    if number < 1:
        return None
    sockets: list[socket.socket] = []
    for fd in range(3, 3 + number):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ConfigError(f"LISTEN_FDS: descriptor {fd} is not a socket ({reason(exc)})") from None
        sockets.append(sock)
        sock.set_inheritable(False)
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ConfigError(f"LISTEN_FDS: descriptor {fd} is not a listening stream socket")
    return sockets


def _bind_tcp(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(DEFAULT_BACKLOG)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise ListenerError(f"Error initializing the server: {reason(exc)} ({host}:{port})") from None
    return sock


def _bind_unix(path: str) -> tuple[socket.socket, tuple[int, int]]:
    """Bind *path* (mode 0600); a stale socket file is replaced, a live one refused."""

    def fail(cause: str) -> ListenerError:
        return ListenerError(f"Error initializing the server: {cause} ({path})")

    clear_unix_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(DEFAULT_BACKLOG)
        bound = os.stat(path)
    except OSError as exc:
        sock.close()
        raise fail(reason(exc)) from None
    return sock, (bound.st_dev, bound.st_ino)


def _name(sock: socket.socket) -> str:
    """Where *sock* listens, for the start line: ``host:port``, ``[v6]:port`` or a path."""
    address = sock.getsockname()
    if isinstance(address, tuple):
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        return f"{host}:{address[1]}"
    if isinstance(address, bytes):
        return address.decode(errors="replace")
    return str(address)


class _Sockets:
    """The listening sockets the supervisor holds (and the Unix socket file it made)."""

    def __init__(self, sockets: list[socket.socket], unix: tuple[str, tuple[int, int]] | None = None) -> None:
        self.sockets = sockets
        self.unix = unix
        self.names = [_name(sock) for sock in sockets]

    def close(self) -> None:
        """Close our copies and remove our socket file (unless it was replaced since). Idempotent."""
        for sock in self.sockets:
            sock.close()
        unix, self.unix = self.unix, None
        if unix is not None:
            path, bound = unix
            try:
                info = os.stat(path)
                if (info.st_dev, info.st_ino) == bound:
                    os.unlink(path)
            except OSError:
                pass


def _open_sockets(args: argparse.Namespace, listen: tuple[str, str] | None) -> _Sockets:
    activated = _systemd_sockets(listen)
    if activated is not None:
        if args.port is not None or args.unix is not None:
            log.info("systemd socket activation: --port and --unix are ignored")
        return _Sockets(activated)
    if args.unix is not None:
        if args.port is not None:
            raise ConfigError("give --port or --unix, not both")
        sock, bound = _bind_unix(args.unix)
        return _Sockets([sock], (args.unix, bound))
    if args.port is None:
        raise ConfigError("--port or --unix is required (unless systemd passes the socket: LISTEN_FDS)")
    return _Sockets([_bind_tcp(args.host, args.port)])


# -- metrics ---------------------------------------------------------------------------


def metrics_text(totals: dict[str, int], workers: int, restarts: int) -> str:
    """The Prometheus text format (version 0.0.4) of *totals* (``ListenerStats`` fields).

    ``gtcp_open_connections`` is a gauge, every other field a
    ``gtcp_<name>_total`` counter; ``gtcp_workers`` (serving now) and
    ``gtcp_worker_restarts_total`` describe the supervisor.
    """
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, value: int) -> None:
        lines.extend((f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"))

    metric("gtcp_open_connections", "gauge", _HELP["open"], totals.get("open", 0))
    for field in COUNTERS:
        metric(f"gtcp_{field}_total", "counter", _HELP.get(field, field), totals.get(field, 0))
    metric("gtcp_workers", "gauge", "Worker processes serving now.", workers)
    metric("gtcp_worker_restarts_total", "counter", "Workers restarted after an unexpected exit.", restarts)
    return "\n".join(lines) + "\n"


# -- the supervisor ------------------------------------------------------------------------


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class _Generation:
    """The workers started together: at start, or at one reload."""

    def __init__(self, number: int, size: int) -> None:
        self.number = number
        self.slots = [_Slot(self) for _ in range(size)]
        #: True once every worker reported ready and the generation took over.
        self.committed = False
        #: Why it failed to start (the first start-up failure), if it did.
        self.failure: str | None = None


class _Slot:
    """One place for a worker in a generation; a crashed worker's replacement takes it."""

    def __init__(self, generation: _Generation) -> None:
        self.generation = generation
        self.worker: _Worker | None = None
        self.backoff = BACKOFF_MIN
        self.failures = 0
        self.restart: Any = None


class _Worker:
    """A worker process, as the supervisor sees it."""

    def __init__(self, slot: _Slot, proc: Any, pipe: int) -> None:
        self.slot = slot
        self.proc = proc
        self.pid: int = proc.pid
        self.pipe = pipe
        self.ready_at: float | None = None
        self.stats: dict[str, int] = {}
        self.error: str | None = None
        self.retiring = False
        self.signalled: set[int] = set()
        self.exited = Event()


class _Supervisor:
    """The supervisor's state: workers by generation, their reports, restarts, reloads, the stop.

    Everything runs in greenlets of one gevent hub: one per worker watching
    its process and reading its pipe, the signal handlers, a reload, the
    metrics server; :meth:`run` is the main line.
    """

    def __init__(self, args: argparse.Namespace, sockets: _Sockets, metrics: Any) -> None:
        self.args = args
        self.sockets = sockets
        self.fds = [sock.fileno() for sock in sockets.sockets]
        self.metrics_socket = metrics
        self.size: int = args.workers
        self.worker_args = _worker_args(args)
        self.workers: set[_Worker] = set()
        self.generations = 0
        self.current: _Generation | None = None
        self.retired = dict.fromkeys(COUNTERS, 0)
        self.restarts = 0
        self.stop = Event()
        #: Set (and replaced by a new one) at every change waiters care about: a
        #: worker ready or gone, a stop. Never cleared, so no waiter misses one.
        self.change = Event()
        self.immediate = False
        self.fatal: str | None = None
        self.reloading = Semaphore()
        self.metrics_server: Any = None

    # -- reports and totals ----------------------------------------------------------

    def totals(self) -> dict[str, int]:
        """Counters of retired workers plus the last report of each live one; ``open`` of the live ones."""
        totals = dict(self.retired)
        totals["open"] = 0
        for worker in self.workers:
            for field in ("open", *COUNTERS):
                totals[field] += worker.stats.get(field, 0)
        return totals

    def serving(self) -> int:
        """Workers that reported ready and are not being retired."""
        return sum(1 for worker in self.workers if worker.ready_at is not None and not worker.retiring)

    def _metrics_app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: try /metrics\n"]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        body = metrics_text(self.totals(), self.serving(), self.restarts).encode()
        start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    def _read_reports(self, worker: _Worker) -> None:
        buffer = b""
        try:
            while True:
                chunk = gevent.os.nb_read(worker.pipe, 65536)
                if not chunk:
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self._report(worker, line)
        except OSError as exc:
            log.warning("worker %d: reading its reports failed: %s", worker.pid, reason(exc))

    def _report(self, worker: _Worker, line: bytes) -> None:
        try:
            message = json.loads(line)
            kind = message["type"]
            if kind in ("stats", "final", "ready"):
                stats = message["stats"]
                worker.stats = {field: int(stats[field]) for field in ("open", *COUNTERS)}
            if kind == "ready" and worker.ready_at is None:
                worker.ready_at = time.monotonic()
                worker.slot.failures = 0
                log.info("worker %d ready", worker.pid)
                self._changed()
            elif kind == "error":
                worker.error = str(message["message"])
        except (ValueError, KeyError, TypeError):
            log.warning("worker %d sent a report gtcp cannot read: %.100r", worker.pid, line)

    # -- workers -------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        read_end, write_end = os.pipe()
        argv = [sys.executable, "-m", "gtcp", "serve", *self.worker_args,
                "--worker-fds", ",".join(map(str, self.fds)), "--worker-pipe", str(write_end)]
        try:
            proc = gevent.subprocess.Popen(argv, pass_fds=(*self.fds, write_end))
        except OSError as exc:
            os.close(read_end)
            self._startup_failed(slot, f"cannot start a worker: {reason(exc)}")
            return
        finally:
            os.close(write_end)
        gevent.os.make_nonblocking(read_end)
        worker = _Worker(slot, proc, read_end)
        slot.worker = worker
        self.workers.add(worker)
        log.info("worker %d started (generation %d)", worker.pid, slot.generation.number)
        gevent.spawn(self._watch, worker)

    def _watch(self, worker: _Worker) -> None:
        reader = gevent.spawn(self._read_reports, worker)
        startup = gevent.spawn_later(STARTUP_SECONDS, self._startup_deadline, worker)
        try:
            code = worker.proc.wait()
            reader.join(timeout=1.0)
        finally:
            reader.kill()
            startup.kill()
            os.close(worker.pipe)
        self._exited(worker, code)

    def _startup_deadline(self, worker: _Worker) -> None:
        if worker.ready_at is None and not worker.exited.is_set():
            worker.error = f"not ready after {STARTUP_SECONDS:g} s"
            self._signal(worker, signal.SIGKILL)

    def _signal(self, worker: _Worker, signum: signal.Signals) -> None:
        if worker.exited.is_set():
            return
        worker.signalled.add(signum)
        try:
            worker.proc.send_signal(signum)
        except (ProcessLookupError, OSError):
            pass

    def _exited(self, worker: _Worker, code: int) -> None:
        self.workers.discard(worker)
        for field in COUNTERS:
            self.retired[field] += worker.stats.get(field, 0)
        worker.exited.set()
        slot = worker.slot
        if slot.worker is worker:
            slot.worker = None
        self._changed()
        status = _status(code)
        if self.stop.is_set() or worker.retiring:
            log.info("worker %d exited (%s)", worker.pid, status)
            return
        error = f": {worker.error}" if worker.error is not None else ""
        if worker.ready_at is None or not slot.generation.committed:
            detail = f"exited at start-up ({status}){error}"
            self._startup_failed(slot, f"worker {detail}", f"worker {worker.pid} {detail}")
            return
        if time.monotonic() - worker.ready_at >= HEALTHY_SECONDS:
            slot.backoff = BACKOFF_MIN
        log.warning("worker %d exited unexpectedly (%s)%s; restarting it in %g s",
                    worker.pid, status, error, slot.backoff)
        self._schedule_restart(slot)

    def _startup_failed(self, slot: _Slot, failure: str, logged: str | None = None) -> None:
        generation = slot.generation
        if not generation.committed:
            # The first start or a reload: whoever waits for the generation decides.
            if generation.failure is None:
                generation.failure = failure
            self._changed()
            return
        slot.failures += 1
        if slot.failures >= STARTUP_FAILURES:
            self._fail(f"{failure}; {slot.failures} times in a row; stopping")
            return
        log.warning("%s; restarting it in %g s", logged or failure, slot.backoff)
        self._schedule_restart(slot)

    def _schedule_restart(self, slot: _Slot) -> None:
        slot.restart = gevent.spawn_later(slot.backoff, self._restart, slot)
        slot.backoff = min(BACKOFF_MAX, slot.backoff * 2)

    def _restart(self, slot: _Slot) -> None:
        slot.restart = None
        if self.stop.is_set() or slot.generation is not self.current or slot.worker is not None:
            return
        self.restarts += 1
        self._spawn(slot)

    def _changed(self) -> None:
        """Wake everyone waiting for a change (see ``self.change``)."""
        event, self.change = self.change, Event()
        event.set()

    def _fail(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = message
        self.stop.set()
        self._changed()

    # -- generations --------------------------------------------------------------------

    def _start_generation(self) -> _Generation:
        self.generations += 1
        generation = _Generation(self.generations, self.size)
        for slot in generation.slots:
            self._spawn(slot)
        return generation

    def _await(self, generation: _Generation) -> bool:
        """Wait until every worker of *generation* is ready (True), or one failed or a stop came (False)."""
        while True:
            change = self.change
            if self.stop.is_set() or generation.failure is not None:
                return False
            if all(slot.worker is not None and slot.worker.ready_at is not None for slot in generation.slots):
                return True
            change.wait()

    def _retire(self, generation: _Generation) -> None:
        """SIGTERM every worker of *generation*: they drain; none is restarted."""
        for slot in generation.slots:
            if slot.restart is not None:
                slot.restart.kill()
                slot.restart = None
            worker = slot.worker
            if worker is not None:
                worker.retiring = True
                self._signal(worker, signal.SIGTERM)

    def reload(self) -> None:
        """SIGHUP: start a new generation; once it is ready, retire the old one."""
        if self.reloading.locked():
            log.info("reload: one is under way; this SIGHUP runs after it")
        with self.reloading:
            if self.stop.is_set():
                return
            log.info("reload: starting %d new worker(s)", self.size)
            generation = self._start_generation()
            if not self._await(generation):
                if self.stop.is_set():
                    return
                log.error("reload failed: %s; the running workers stay", generation.failure)
                self._retire(generation)
                return
            old, self.current = self.current, generation
            generation.committed = True
            if old is not None:
                self._retire(old)
            log.info("reload: %d new worker(s) serving; the old ones drain", self.size)

    # -- running and stopping --------------------------------------------------------------

    def on_stop_signal(self) -> None:
        """SIGTERM/SIGINT: stop gracefully; a second one stops at once."""
        if self.stop.is_set():
            self.on_quit_signal()
            return
        log.info("stopping: workers drain for up to %g s", self.args.graceful_timeout)
        self.stop.set()
        self._changed()

    def on_quit_signal(self) -> None:
        """SIGQUIT (or a second SIGTERM/SIGINT): stop now."""
        log.info("stopping now: workers close their connections")
        self.immediate = True
        self.stop.set()
        self._changed()

    #: A SIGHUP came before the first generation served: reload once it does.
    reload_pending = False

    def on_reload_signal(self) -> None:
        """SIGHUP: reload (after the start, if the server is still starting; ignored while stopping)."""
        if self.stop.is_set():
            log.info("SIGHUP ignored: the server is stopping")
            return
        if self.current is None:
            log.info("SIGHUP while starting: the reload follows the start")
            self.reload_pending = True
            return
        gevent.spawn(self.reload)

    def run(self) -> None:
        """Start, serve until a stop, stop; raises ``Error`` for a failure that stopped the server."""
        handlers = [gevent.signal_handler(signal.SIGTERM, self.on_stop_signal),
                    gevent.signal_handler(signal.SIGINT, self.on_stop_signal),
                    gevent.signal_handler(signal.SIGQUIT, self.on_quit_signal),
                    gevent.signal_handler(signal.SIGHUP, self.on_reload_signal)]
        try:
            if self.metrics_socket is not None:
                from gevent.pywsgi import WSGIServer

                self.metrics_server = WSGIServer(self.metrics_socket, self._metrics_app, log=None,
                                                 error_log=log)
                self.metrics_server.start()
            generation = self._start_generation()
            if self._await(generation):
                generation.committed = True
                self.current = generation
                self._announce()
                if self.reload_pending or _EARLY_SIGHUP:
                    gevent.spawn(self.reload)  # new TLS files may have come during the start
                self.stop.wait()
            elif generation.failure is not None:
                self._fail(f"{generation.failure}; stopping")
            self._shutdown()
        finally:
            for handler in handlers:
                handler.cancel()
            if self.metrics_server is not None:
                self.metrics_server.close()
            self.sockets.close()
        if self.fatal is not None:
            raise Error(self.fatal)

    def _announce(self) -> None:
        count = f"{self.size} worker{'s' if self.size != 1 else ''}"
        tls = "TLS, " if self.args.cert is not None else ""
        line = f"gtcp serve: listening on {', '.join(self.sockets.names)} ({tls}{count})"
        if self.metrics_server is not None:
            line += f", metrics on {_name(self.metrics_socket)}"
        print(line, flush=True)

    def _shutdown(self) -> None:
        self.stop.set()
        if self.current is not None:
            for slot in self.current.slots:
                if slot.restart is not None:
                    slot.restart.kill()
        # Our copies of the listening sockets go first: once the workers close
        # theirs, new connections are refused instead of queued for no one.
        self.sockets.close()
        deadline = time.monotonic() + self.args.graceful_timeout + KILL_MARGIN
        quit_sent = False
        while self.workers:
            change = self.change
            immediate = self.immediate
            for worker in list(self.workers):
                if immediate and not quit_sent and worker.ready_at is not None:
                    self._signal(worker, signal.SIGQUIT)  # close every connection now
                elif signal.SIGTERM not in worker.signalled:
                    self._signal(worker, signal.SIGTERM)  # drain (before its handlers exist: exit)
            quit_sent = quit_sent or immediate
            left = deadline - time.monotonic()
            if left <= 0:
                break
            change.wait(timeout=min(left, 1.0))
        for worker in list(self.workers):
            log.warning("worker %d did not stop in time; killing it", worker.pid)
            self._signal(worker, signal.SIGKILL)
        gevent.wait([worker.exited for worker in list(self.workers)], timeout=KILL_MARGIN)


def _worker_args(args: argparse.Namespace) -> list[str]:
    """The arguments of ``serve`` a worker needs (paths made absolute)."""
    argv = [args.target, "--framing", args.framing, "--graceful-timeout", repr(args.graceful_timeout),
            "--log-level", args.log_level]
    if args.max_connections is not None:
        argv += ["--max-connections", str(args.max_connections)]
    if args.idle_timeout is not None:
        argv += ["--idle-timeout", repr(args.idle_timeout)]
    if args.proxy_protocol is not None:
        argv += ["--proxy-protocol", args.proxy_protocol]
    if args.trusted_proxies is not None:
        argv += ["--trusted-proxies", args.trusted_proxies]
    for flag, value in (("--cert", args.cert), ("--key", args.key), ("--ca", args.ca)):
        if value is not None:
            argv += [flag, os.path.abspath(value)]
    return argv


def _bind_metrics(host: str, port: int) -> Any:
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = gevent.socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise ListenerError(f"Error initializing the metrics server: {reason(exc)} ({host}:{port})") from None
    return sock


#: A SIGHUP that arrived while the supervisor checked the target and bound
#: its sockets (before its handlers exist): SIGHUP's default would kill it.
_EARLY_SIGHUP: list[int] = []


def _raise_fd_limit() -> None:
    """Raise the soft limit of open files to the hard one (workers inherit it).

    The usual soft limit, 1024, would cap each worker at about 1,000
    connections; the hard limit is the operator's (``ulimit -Hn``,
    ``LimitNOFILE=`` in a systemd unit).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.debug("open files limit raised from %d to %d", soft, hard)
    except (OSError, ValueError) as exc:
        log.debug("open files limit stays %d: %s", soft, exc)


def _supervise(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGHUP, lambda signum, frame: _EARLY_SIGHUP.append(signum))
    _raise_fd_limit()
    listen = _take_systemd_environment()
    kind = target_kind(load_target(args.target), args.target)
    log.debug("target %s is a Service %s", args.target, kind)
    options = _listener_options(args)
    Listener(0, **options)  # every option checked (ConfigError), nothing bound
    secure_socket = options.get("secure_socket")
    if secure_socket is not None:
        from ._contexts import server_context

        server_context(secure_socket)  # every TLS file loaded, as Listener.start() does
    sockets = _open_sockets(args, listen)
    try:
        metrics = None if args.metrics_port is None else _bind_metrics(args.host, args.metrics_port)
    except BaseException:
        sockets.close()
        raise
    try:
        _Supervisor(args, sockets, metrics).run()
    finally:
        sockets.close()
        if metrics is not None:
            metrics.close()
    return 0


# -- a worker -----------------------------------------------------------------------------


class _Reporter:
    """A worker's end of the pipe to the supervisor: one JSON object per line."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_inheritable(fd, False)
        gevent.os.make_nonblocking(fd)

    def send(self, kind: str, **fields: Any) -> None:
        """Send one report; ``BrokenPipeError`` if the supervisor is gone."""
        data = (json.dumps({"type": kind, **fields}) + "\n").encode()
        while data:
            data = data[gevent.os.nb_write(self.fd, data):]


def _summed(listeners: Iterable[Listener]) -> dict[str, int]:
    totals = dict.fromkeys(("open", *COUNTERS), 0)
    for listener in listeners:
        for field, value in dataclasses.asdict(listener.stats()).items():
            totals[field] += value
    return totals


def _run_worker(args: argparse.Namespace) -> int:
    # Ctrl-C reaches the whole process group and a terminal's hang-up may
    # too: the supervisor decides what they mean and tells the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging.basicConfig(force=True, format=f"gtcp[{os.getpid()}]: %(levelname)s: %(message)s")
    log.setLevel(args.log_level.upper())
    reporter = _Reporter(args.worker_pipe)
    drain = Drain(args.graceful_timeout, graceful=(signal.SIGTERM,), immediate=(signal.SIGQUIT,),
                  repeat_is_immediate=False)
    listeners: list[Listener] = []
    try:
        target = load_target(args.target)
        service = _make_service(target, target_kind(target, args.target), args.target)
        options = _listener_options(args)
        drain.install()
        for fd in args.worker_fds:
            sock = socket.socket(fileno=fd)
            sock.set_inheritable(False)
            listener = Listener.from_socket(sock, **options)
            listener.attach(service)
            listener.start()
            listeners.append(listener)
            drain.add(listener)
    except Exception as exc:
        message = " ".join(str(exc).split()) if isinstance(exc, Error) else _describe(exc)
        try:
            reporter.send("error", message=message)
        except OSError:
            pass
        for listener in listeners:
            listener.immediate_stop()
        return EXIT_STARTUP
    try:
        reporter.send("ready", stats=_summed(listeners))
    except OSError:
        drain.request()

    def report() -> None:
        while True:  # while draining too: the supervisor's metrics stay current
            gevent.sleep(STATS_INTERVAL)
            try:
                reporter.send("stats", stats=_summed(listeners))
            except OSError:
                log.warning("the supervisor is gone; stopping")
                drain.request()
                return

    reports = gevent.spawn(report)
    drain.wait()
    reports.kill()
    try:
        reporter.send("final", stats=_summed(listeners))
    except OSError:
        pass
    drain.uninstall()
    return 0


def run(args: argparse.Namespace) -> int:
    """``python -m gtcp serve``: the supervisor, or a worker when started with the hidden worker flags."""
    if args.worker_fds is not None and args.worker_pipe is not None:
        return _run_worker(args)
    level = log.level
    log.setLevel(args.log_level.upper())
    try:
        return _supervise(args)
    finally:
        log.setLevel(level)
