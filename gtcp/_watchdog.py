"""The slow-callback watchdog: one WARNING when something keeps the gevent hub from running.

A callback that blocks the whole thread (``time.sleep``, a blocking socket or
database driver in a process that is not monkey-patched, a long computation)
stalls every connection of the process. The listener option
``slow_callback_warning`` (seconds, default 0.5; ``None`` disables it) makes
gtcp report it, in the spirit of asyncio's ``loop.slow_callback_duration``:

* **The heartbeat** is a repeating timer in each watched hub's loop, every
  threshold/4 (``ref=False``: it never keeps ``gevent.wait()`` waiting), that
  writes ``time.monotonic()`` down. It is the only cost in the hub; nothing is
  done per callback or per chunk.
* **The watchdog** is one real OS thread per process, started with the
  original (never monkey-patched) ``_thread.start_new_thread``, shared by every
  watched hub. It wakes every threshold/2 (the smallest threshold of the hubs
  it watches). When a hub's heartbeat is older than threshold/2 it samples that
  hub thread's stack (``sys._current_frames()``) once per episode: the gtcp
  ``Connection`` it is serving (the service class, the peer, the caller's
  id), the callback gtcp called, and the frame where the thread is.
* **The one WARNING** is logged from the hub, when it runs again: the
  heartbeat sees the gap since the last beat, and if it is longer than the
  threshold it logs the stored sample with the measured gap (through a
  greenlet: a log handler may block). A sample of a block shorter than the
  threshold is dropped. The thread does not log this one: under
  ``patch_all()`` the locks of ``logging`` are gevent's, not safe in a
  thread without a hub.
* **A block that does not end** (a deadlock, a read without a timeout) never
  lets the hub log. In a process whose ``threading`` is not monkey-patched
  (logging's locks are real ones) the thread logs the WARNING itself once the
  block has lasted ``STUCK_FACTOR`` thresholds ("... so far, and still
  does"); when the hub runs again it logs only an INFO line (whichever of
  the two claims the sample first logs the WARNING). In a patched process
  nothing is logged until the block ends.

The gap is measured between heartbeats, so it may exceed the block by up to
threshold/4: a block longer than the threshold is always reported, one a
quarter shorter may be. The thread starts with the first listener that
enables the option and stops when the last one stops.
"""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
import threading
import time
from types import FrameType
from typing import Any

import gevent
from gevent import get_hub, monkey

from ._caller import Caller
from ._dispatch import Connection
from ._errors import ConfigError

__all__ = ["DEFAULT_THRESHOLD", "Watching", "check_threshold", "watch"]

log = logging.getLogger("gtcp")

#: ``slow_callback_warning``'s default, seconds (asyncio's slow_callback_duration is 0.1 s, in debug mode).
DEFAULT_THRESHOLD = 0.5

#: The smallest threshold accepted: the heartbeat runs every threshold/4.
MIN_THRESHOLD = 0.01

#: A block that lasts this many thresholds is logged by the watchdog thread
#: while it goes on (only where that is safe: ``threading`` not monkey-patched).
STUCK_FACTOR = 10

# The real primitives, whatever gevent.monkey patched (or patches later).
_start_new_thread = monkey.get_original("_thread", "start_new_thread")
_allocate_lock = monkey.get_original("_thread", "allocate_lock")
_get_ident = monkey.get_original("_thread", "get_ident")


def check_threshold(value: object) -> float | None:
    """``slow_callback_warning`` as a float, or None (disabled); ``ConfigError`` for a bad value."""
    if value is None:
        return None
    message = (f"slow_callback_warning must be a number of seconds of at least {MIN_THRESHOLD:g}, "
               f"or None to disable it, got {value!r}")
    try:
        if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
            raise ValueError
        result = float(value)
    except ValueError:
        raise ConfigError(message) from None
    if not MIN_THRESHOLD <= result < float("inf"):  # NaN fails too
        raise ConfigError(message)
    return result


# -- what the sampled stack says ------------------------------------------------------------------

_GTCP_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_DISPATCH_FILE = os.path.join(_GTCP_DIR, "_dispatch.py")
#: gtcp and gevent: never "the user's code".
_OWN_DIRS = (_GTCP_DIR, os.path.dirname(os.path.abspath(gevent.__file__)) + os.sep)
_STDLIB_DIRS = tuple({os.path.join(path, "") for path in (sysconfig.get_path("stdlib"),
                                                          sysconfig.get_path("platstdlib")) if path})
_SITE_DIRS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")


def _is_library(filename: str) -> bool:
    """True for gtcp, gevent and the standard library; False for the user's code (site-packages included)."""
    if filename.startswith("<"):
        return filename.startswith("<frozen")  # <string> and <stdin> are the user's
    if filename.startswith(_OWN_DIRS):
        return True
    return filename.startswith(_STDLIB_DIRS) and not any(part in filename for part in _SITE_DIRS)


def _place(frame: FrameType) -> str:
    code = frame.f_code
    return f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"


def _describe(frame: FrameType) -> tuple[str, str]:
    """(who, where) for the stack whose innermost frame is *frame*; runs in the watchdog thread.

    *who* names the callback gtcp called, its service and connection, or says
    the thread was outside gtcp callbacks; *where* is the innermost frame,
    and the innermost frame of the user's own code when that is another one.
    """
    stack: list[FrameType] = []
    current: FrameType | None = frame
    while current is not None:  # all of it: gtcp's Connection frame is the outermost
        stack.append(current)
        current = current.f_back
    where = _place(stack[0])
    user = next((f for f in stack if not _is_library(f.f_code.co_filename)), None)
    if user is not None and user is not stack[0]:
        where += f" (called from {_place(user)})"
    # The outermost frame of gtcp's Connection (its run()), then inwards past
    # gtcp's own frames to the first frame gtcp called: the callback.
    conn: Connection | None = None
    outermost = -1
    for index in range(len(stack) - 1, -1, -1):
        if stack[index].f_code.co_filename == _DISPATCH_FILE:
            found = stack[index].f_locals.get("self")
            if isinstance(found, Connection):
                conn, outermost = found, index
                break
    if conn is None:
        return "code outside gtcp callbacks", where
    caller = getattr(conn, "caller", None)
    callback: FrameType | None = None
    for index in range(outermost, -1, -1):
        code = stack[index].f_code
        if not code.co_filename.startswith(_GTCP_DIR):
            callback = stack[index]
            break
        if not isinstance(caller, Caller):
            caller = stack[index].f_locals.get("caller")
    try:
        service = type(conn.listener_run.settings.service).__name__
    except AttributeError:
        service = "?"
    about = f"service {service}, connection {conn.peer}"
    if isinstance(caller, Caller):
        about += f", id {caller.id}"
    if callback is None:
        return f"gtcp serving a connection ({about})", where
    code = callback.f_code
    return f"{getattr(code, 'co_qualname', code.co_name)} ({about})", where


class _Sample:
    """What the watchdog thread saw during one block: the heartbeat it found stale, who and where."""

    __slots__ = ("_unclaimed", "beat", "where", "who")

    def __init__(self, beat: float, who: str, where: str) -> None:
        self.beat = beat
        self.who = who
        self.where = where
        self._unclaimed = [True]

    def claim(self) -> bool:
        """True for the first caller only: the hub, or the watchdog thread for a block that goes on.

        ``list.pop`` is atomic, so the two threads never both log the WARNING.
        """
        try:
            return self._unclaimed.pop()
        except IndexError:
            return False


_HINT = ("every other connection and greenlet %s: a blocking call? (see the README on monkey-patching; "
         "slow_callback_warning=%g)")


def _emit(gap: float, threshold: float, sample: _Sample | None, logged: bool) -> None:
    """The line for a block that ended (runs in a greenlet of the hub's thread); *logged*: the
    watchdog thread logged the WARNING already, while the block went on."""
    if sample is None:
        log.warning("something blocked the gevent hub for %.2f s at an unknown place (the watchdog thread "
                    "could not look: the GIL was held, or the whole process was paused); " + _HINT,
                    gap, "waited", threshold)
    elif logged:
        log.info("the gevent hub ran again after %.2f s (the block reported above: %s at %s)",
                 gap, sample.who, sample.where)
    else:
        log.warning("%s blocked the gevent hub for %.2f s at %s; " + _HINT,
                    sample.who, gap, sample.where, "waited", threshold)


# -- per hub: the heartbeat -------------------------------------------------------------------------

class _HubWatch:
    """The heartbeat of one hub, and what the watchdog thread saw there.

    Changed only in the hub's own thread, except :attr:`sample`, which the
    watchdog thread sets (one attribute store) and the heartbeat takes.
    """

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.thread_ident: int = _get_ident()
        #: The thresholds of the listeners watching this hub; the smallest applies.
        self.thresholds: list[float] = []
        self.threshold = 0.0
        self.beat = time.monotonic()
        self.sample: _Sample | None = None
        self._timer: Any = None

    def configure(self) -> None:
        """(Re)start the heartbeat for the smallest threshold."""
        self.threshold = min(self.thresholds)
        tick = self.threshold / 4
        if self._timer is not None:
            self._timer.close()
        self.beat = time.monotonic()
        self.sample = None
        timer = self._timer = self.hub.loop.timer(tick, tick, ref=False)
        timer.start(self._on_beat)

    def close(self) -> None:
        """Stop the heartbeat."""
        if self._timer is not None:
            self._timer.close()
            self._timer = None

    def _on_beat(self) -> None:
        """Runs in the hub: write the beat down; after a gap longer than the threshold, report it."""
        now = time.monotonic()
        previous, self.beat = self.beat, now
        sample, self.sample = self.sample, None
        if _restart_needed:
            _restart_after_fork()
        gap = now - previous
        if gap <= self.threshold:
            return  # a sample, if any, was of a block shorter than the threshold
        if sample is not None and sample.beat != previous:
            sample = None  # of an earlier episode, stored too late
        logged = sample is not None and not sample.claim()
        gevent.spawn(_emit, gap, self.threshold, sample, logged)

    def check(self, now: float) -> None:
        """Runs in the watchdog thread: sample a stale hub's stack, once per episode."""
        threshold, beat = self.threshold, self.beat
        age = now - beat
        if threshold <= 0 or age <= threshold / 2:
            return
        sample = self.sample
        if sample is None or sample.beat != beat:
            frame = sys._current_frames().get(self.thread_ident)
            if frame is None:
                return
            try:
                who, where = _describe(frame)
            finally:
                del frame
            self.sample = _Sample(beat, who, where)
        elif age >= STUCK_FACTOR * threshold and _thread_may_log() and sample.claim():
            current = threading.current_thread()  # a _DummyThread: give the log record a name
            if current.name.startswith("Dummy"):
                current.name = "gtcp-watchdog"
            log.warning("%s has blocked the gevent hub for %.1f s so far, at %s, and still does; " + _HINT,
                        sample.who, age, sample.where, "is waiting", threshold)


def _thread_may_log() -> bool:
    """True if logging from the watchdog thread is safe: its locks are real ones (threading not patched)."""
    return not monkey.is_module_patched("threading")


# -- the process: the watchdog thread ----------------------------------------------------------------

class _Monitor:
    """The watchdog thread (a real one, whatever is monkey-patched) and how to stop it."""

    def __init__(self) -> None:
        self.stopping = False
        self._wake = _allocate_lock()
        self._wake.acquire()  # held: the thread's wait on it is its sleep, and stop() cuts it short
        self._done = _allocate_lock()
        self._done.acquire()
        self.ident: int = _start_new_thread(self._run, ())

    def _run(self) -> None:
        try:
            while not self.stopping:
                with _state_lock:
                    watches = list(_watches.values())
                now = time.monotonic()
                for hub_watch in watches:
                    try:
                        hub_watch.check(now)
                    except Exception:  # never let the thread die, nor print
                        pass
                thresholds = [w.threshold for w in watches if w.threshold > 0]
                self._wake.acquire(True, min(thresholds, default=1.0) / 2)
        except BaseException:  # interpreter shutdown: nowhere to report, nothing to print
            pass
        finally:
            self._done.release()

    def stop(self) -> None:
        """Ask the thread to end, and wait (briefly) until it has."""
        self.stopping = True
        self._wake.release()
        self._done.acquire(True, 1.0)


#: Guards _watches and _monitor (a real lock: hubs of several threads may start listeners).
_state_lock = _allocate_lock()
_watches: dict[Any, _HubWatch] = {}
_monitor: _Monitor | None = None
#: Set in a forked child: the watchdog thread did not come along; the next heartbeat starts one.
_restart_needed = False


def _restart_after_fork() -> None:
    global _monitor, _restart_needed
    with _state_lock:
        _restart_needed = False
        if _monitor is None and _watches:
            _monitor = _Monitor()


def _after_fork_in_child() -> None:
    global _state_lock, _monitor, _restart_needed
    _state_lock = _allocate_lock()  # the watchdog thread may have held it at the fork
    _monitor = None
    ident = _get_ident()
    for hub, hub_watch in list(_watches.items()):
        if hub_watch.thread_ident != ident:  # that hub's thread did not come along
            del _watches[hub]
    _restart_needed = bool(_watches)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def running_thread() -> int | None:
    """The ident of the watchdog thread, or None when none runs (for tests)."""
    monitor = _monitor
    return None if monitor is None else monitor.ident


class Watching:
    """One listener's use of the watchdog, from its ``start()`` to its stop; :meth:`release` once."""

    __slots__ = ("_hub_watch", "_threshold")

    def __init__(self, hub_watch: _HubWatch, threshold: float) -> None:
        self._hub_watch: _HubWatch | None = hub_watch
        self._threshold = threshold

    def release(self) -> None:
        """Stop watching for this listener; the last one out stops the heartbeat and the thread."""
        global _monitor
        hub_watch, self._hub_watch = self._hub_watch, None
        if hub_watch is None:
            return
        hub_watch.thresholds.remove(self._threshold)
        if hub_watch.thresholds:
            if self._threshold <= hub_watch.threshold:
                hub_watch.configure()
            return
        hub_watch.close()
        stopping = None
        with _state_lock:
            if _watches.get(hub_watch.hub) is hub_watch:
                del _watches[hub_watch.hub]
            if not _watches:
                stopping, _monitor = _monitor, None
        if stopping is not None:
            stopping.stop()  # outside the lock: the thread takes it on each pass


def watch(threshold: float) -> Watching:
    """Watch the current thread's hub with *threshold* seconds (until the result is released)."""
    global _monitor
    hub = get_hub()
    with _state_lock:
        hub_watch = _watches.get(hub)
        if hub_watch is None:
            hub_watch = _watches[hub] = _HubWatch(hub)
    hub_watch.thresholds.append(threshold)
    if threshold < hub_watch.threshold or len(hub_watch.thresholds) == 1:
        hub_watch.configure()
    with _state_lock:
        if _monitor is None:
            _monitor = _Monitor()
    return Watching(hub_watch, threshold)
