"""The private attributes and behaviours of gevent (and of ``ssl``) that gtcp relies on.

gtcp drives the raw socket and gevent's io watchers itself (``gtcp._io``),
and bends gevent's ``StreamServer`` (``gtcp._listener``). None of that is
public API, so each piece is pinned here: if a gevent release moves one, the
test names the attribute and the gtcp code that reads it, instead of gtcp
failing or slowing down somewhere else.
"""

from __future__ import annotations

import _socket
import socket
import ssl
import sys
from typing import Any

import gevent
import gevent.socket
import gevent.ssl
import greenlet
import pytest
import trustme
from conftest import LONG
from gevent import Timeout, get_hub, getcurrent
from gevent.baseserver import BaseServer
from gevent.pool import Pool
from gevent.server import StreamServer

from gtcp._io import READ, WRITE, switch_to


def pinned(obj: object, name: str, used_by: str, library: str = f"gevent {gevent.__version__}") -> Any:
    """``getattr(obj, name)``, or a failure that names it and who needs it."""
    owner = obj.__name__ if isinstance(obj, type) else type(obj).__name__
    assert hasattr(obj, name), f"{library} changed: {owner}.{name} is gone, and {used_by} relies on it"
    return getattr(obj, name)


@pytest.fixture
def pair() -> Any:
    """A connected pair of gevent sockets; both closed at teardown."""
    left, right = gevent.socket.socketpair()
    yield left, right
    left.close()
    right.close()


def wait_readable(gsock: Any) -> BaseException | None:
    """Wait on ``gsock._read_event`` as ``Stream._wait`` does; None when resumed, else what was thrown in."""
    watcher = gsock._read_event
    watcher.start(getcurrent().switch)
    try:
        switch_to(get_hub())
    except BaseException as exc:  # the tests look at what it was
        return exc
    finally:
        watcher.stop()
    return None


# --- the gevent socket under a Stream (gtcp._io.Stream._bind) ---------------------------------


def test_gevent_socket_holds_its_raw_nonblocking_socket_in__sock(pair: Any) -> None:
    gsock, _ = pair
    raw = pinned(gsock, "_sock", "gtcp._io.Stream._bind (reads and writes on the raw socket)")
    assert isinstance(raw, _socket.socket), f"gevent changed: socket._sock is a {type(raw)!r}, not a socket"
    assert raw.fileno() == gsock.fileno(), "gevent changed: socket._sock is not the same descriptor"
    assert raw.gettimeout() == 0.0, (
        "gevent changed: socket._sock is not non-blocking, and gtcp._io.Stream expects BlockingIOError"
    )
    with pytest.raises(BlockingIOError):
        raw.recv(1)


@pytest.mark.parametrize(("name", "events"), [("_read_event", READ), ("_write_event", WRITE)])
def test_gevent_socket_owns_its_two_io_watchers(pair: Any, name: str, events: int) -> None:
    gsock, _ = pair
    watcher = pinned(gsock, name, "gtcp._io.Stream._bind (every wait of a Stream)")
    used_by = f"gtcp._io.Stream (waits on socket.{name})"
    for method in ("start", "stop"):
        assert callable(pinned(watcher, method, used_by))
    assert pinned(watcher, "callback", used_by) is None, (
        f"gevent changed: socket.{name}.callback is not None while nobody waits "
        "(gtcp._io.Stream.interrupt and Stream.reading test it)"
    )
    assert watcher.fd == gsock.fileno(), f"gevent changed: socket.{name} watches another descriptor"
    watched = watcher.events & (READ | WRITE)  # libev adds flags of its own above these
    assert watched == events, f"gevent changed: socket.{name} watches events {watcher.events:#x}"


def test_a_greenlet_switch_as_watcher_callback_is_resumed_when_readable(pair: Any) -> None:
    # Stream._wait: watcher.start(getcurrent().switch), then greenlet.switch(hub).
    gsock, peer = pair
    hub = get_hub()
    assert isinstance(hub, greenlet.greenlet), "gevent changed: the hub is no greenlet (gtcp._io.switch_to)"
    gevent.spawn_later(0.01, peer.sendall, b"x")
    with Timeout(LONG):
        assert wait_readable(gsock) is None
    assert gsock._read_event.callback is None, "gevent changed: a stopped watcher keeps its callback"
    assert gsock._sock.recv(1) == b"x"


def test_cancel_wait_throws_into_the_greenlet_whose_switch_is_the_callback(pair: Any) -> None:
    # Stream.interrupt and Stream.wake_all: hub.cancel_wait(watcher, Interrupted()).
    gsock, _ = pair
    cancel_wait = pinned(get_hub(), "cancel_wait", "gtcp._io.Stream.interrupt")

    class Woken(BaseException):
        pass

    waiter = gevent.spawn(wait_readable, gsock)
    gevent.sleep(0)  # let it wait
    assert gsock._read_event.callback is not None
    cancel_wait(gsock._read_event, Woken())
    assert isinstance(waiter.get(timeout=LONG), Woken), (
        "gevent changed: hub.cancel_wait no longer throws into callback.__self__ (gtcp._io.Stream.interrupt)"
    )


def test_closing_the_gevent_socket_wakes_its_waiters_with_OSError_and_closes__sock(pair: Any) -> None:
    # Stream._wait turns that OSError into ClosedError; Stream.finished reads _sock.fileno() < 0.
    gsock, _ = pair
    raw = gsock._sock
    waiter = gevent.spawn(wait_readable, gsock)
    gevent.sleep(0)
    gsock.close()
    woken = waiter.get(timeout=LONG)
    assert isinstance(woken, OSError), (
        f"gevent changed: closing a socket woke its waiter with {woken!r}, not an OSError "
        "(gtcp._io.Stream._wait)"
    )
    assert raw.fileno() == -1, (
        "gevent changed: socket.close() leaves socket._sock open (gtcp._io.Stream.finished)"
    )


def test_hub_loop_makes_private_watchers(pair: Any) -> None:
    # Stream._private_watcher (lingering close) and the listener's back-off timer.
    gsock, _ = pair
    loop = get_hub().loop
    watcher = pinned(loop, "io", "gtcp._io.Stream._private_watcher")(gsock.fileno(), READ)
    try:
        assert watcher.callback is None
    finally:
        watcher.close()
    timer = pinned(loop, "timer", "gtcp._listener._Server._back_off")(1.0)
    timer.close()
    assert isinstance(pinned(loop, "now", "gtcp._io.Stream.read_decoded")(), float)


def test_Timeout_keeps_its_seconds() -> None:
    # Stream._arm_read and _write_slow reuse a Timeout while its seconds match.
    timer = Timeout(1.5)
    assert pinned(timer, "seconds", "gtcp._io.Stream._arm_read") == 1.5


# --- TLS objects (gtcp._io.Stream.start_tls) ---------------------------------------------------------


def test_SSLObject_wraps_a_C_level_object_in__sslobj() -> None:
    # Stream keeps getattr(tls, "_sslobj", tls): without it TLS works but costs a Python frame per call.
    ca = trustme.CA()
    server_ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client_ctx)
    pipes = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(pipes[0], pipes[1], server_hostname="localhost")
    server = server_ctx.wrap_bio(pipes[2], pipes[3], server_side=True)
    assert isinstance(client, ssl.SSLObject), "SSLContext.wrap_bio no longer gives an ssl.SSLObject"
    used_by = "gtcp._io.Stream.start_tls (TLS on the C-level object)"
    python_ssl = f"Python {sys.version.split()[0]}'s ssl"
    c_client = pinned(client, "_sslobj", used_by, python_ssl)
    c_server = pinned(server, "_sslobj", used_by, python_ssl)
    for name in ("do_handshake", "read", "write", "pending", "version", "cipher", "getpeercert", "shutdown"):
        assert callable(pinned(c_client, name, used_by, python_ssl))
    for _ in range(10):
        for side in (c_client, c_server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        pipes[2].write(pipes[1].read())
        pipes[0].write(pipes[3].read())
        if c_client.version() and c_server.version():
            break
    assert c_client.version() in ("TLSv1.2", "TLSv1.3")
    assert isinstance(pinned(c_client, "session_reused", used_by, python_ssl), bool)
    assert pinned(c_client, "session", "gtcp._client.Client (saves the session)", python_ssl) is not None


# --- StreamServer (gtcp._listener._Server) -----------------------------------------------------------


def test_StreamServer_spawns_through__spawn() -> None:
    # _Server.do_handle spawns Connection.run through self._spawn, the pool's when there is one.
    pool = Pool(2)
    with_pool = StreamServer(("127.0.0.1", 0), lambda *args: None, spawn=pool)
    default = StreamServer(("127.0.0.1", 0), lambda *args: None)
    used_by = "gtcp._listener._Server.do_handle"
    assert pinned(with_pool, "_spawn", used_by) == pool.spawn, "gevent changed: _spawn is not pool.spawn"
    spawned = pinned(default, "_spawn", used_by)(lambda: "ran")
    assert spawned.get(timeout=LONG) == "ran", "gevent changed: the default _spawn does not run a greenlet"


def test_BaseServer_restarts_accepting_through__start_accepting_if_started() -> None:
    # _Server._back_off arms its own timer with this callback.
    restart = pinned(BaseServer, "_start_accepting_if_started", "gtcp._listener._Server._back_off")
    assert callable(restart)
    server = StreamServer(("127.0.0.1", 0), lambda *args: None)
    server.start()
    try:
        server.stop_accepting()
        server._start_accepting_if_started()  # no argument, as a timer calls it
        assert server._watcher is not None, "gevent changed: _start_accepting_if_started() does not resume"
    finally:
        server.stop()


def test_StreamServer_calls_do_read_then_do_handle_with_its_result() -> None:
    # _Server overrides both: do_read to catch accept errors, do_handle to spawn Connection.run.
    seen: list[tuple[str, Any]] = []

    class Recording(StreamServer):  # type: ignore[misc]
        def do_read(self) -> Any:
            result = super().do_read()
            seen.append(("do_read", result))
            return result

        def do_handle(self, *args: Any) -> None:
            seen.append(("do_handle", args))
            args[0].close()

    server = Recording(("127.0.0.1", 0), lambda *args: None)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=LONG):
            with Timeout(LONG):
                while not any(kind == "do_handle" for kind, _ in seen):
                    gevent.sleep(0.01)
    finally:
        server.stop()
    reads = [value for kind, value in seen if kind == "do_read" and value]
    handles = [value for kind, value in seen if kind == "do_handle"]
    assert reads and handles, f"gevent changed: StreamServer no longer calls do_read/do_handle: {seen}"
    assert handles[0] == tuple(reads[0]), "gevent changed: do_handle does not get do_read's (socket, address)"
    assert isinstance(handles[0][0], gevent.socket.socket)
