"""The slow-callback watchdog: one WARNING when something keeps the gevent hub from running.

A callback that blocks the whole thread (``time.sleep``, a blocking socket or
database driver in a process that is not monkey-patched, a long computation)
stalls every connection of the process. The listener option
``slow_callback_warning`` (seconds, default 0.5; ``None`` disables it) makes
gtcp report it, in the spirit of asyncio's ``loop.slow_callback_duration``:

* **The heartbeat** is a repeating timer in each watched hub's loop, every
  threshold/4 (``ref=False``: it never keeps ``gevent.wait()`` waiting), that
  writes down ``time.monotonic()``, the hub thread's CPU time
  (``time.thread_time()``) and the process's garbage-collection time so far
  (added up by a ``gc.callbacks`` hook: a clock read at each end of a
  collection). It is the only cost in the hub; nothing is done per callback
  or per chunk.
* **The watchdog** is one real OS thread per process, started with the
  original (never monkey-patched) ``_thread.start_new_thread``, shared by every
  watched hub. It wakes every threshold/4 (the smallest threshold of the hubs
  it watches). When a hub's heartbeat is older than threshold/2 it *looks* at
  that hub thread's stack (``sys._current_frames()``): the gtcp ``Connection``
  it is serving (the service class, the peer, the caller's id), the callback
  gtcp called, and the frame where the thread is; it looks again every
  threshold/8 while the heartbeat stays late (every threshold/2 after
  ``FAST_LOOKS`` looks). Between two looks it keeps *the call* it saw: the
  callback's frame object (outside callbacks, that of the function the
  greenlet or timer ran). The same frame object in consecutive looks is one
  call that has not returned; another one is another call, even of the same
  function at the same line.
* **The one WARNING** is logged from the hub, when it runs again: the
  heartbeat sees the gap since the last beat, and if it is longer than the
  threshold it logs what the looks say, with the measured gap (through a
  greenlet: a log handler may block):

  - garbage collection took half the gap or more: that (the watchdog cannot
    look during a collection: the collector holds the GIL);
  - one call seen in consecutive looks that span at least half the time the
    thread looked: that call blocked the hub, "a blocking call?" (or, when
    the hub's thread was on the CPU for half the gap or more, "CPU-bound
    work?");
  - other calls at other looks: the hub was busy running many callbacks
    without the loop coming back (CPU-bound work spread over connections;
    or, off the CPU, many short blocking calls), and the last look is named
    only as "last seen";
  - the hub waiting for events at every look: it was not blocked; the
    process was paused or starved of CPU;
  - running code seen once, or never: too few looks to blame anything (the
    GIL was held, or the process was paused).

  Looks at a block shorter than the threshold are dropped. The thread does
  not log this one: under ``patch_all()`` the locks of ``logging`` are
  gevent's, not safe in a thread without a hub.
* **A block that does not end** (a deadlock, a read without a timeout) never
  lets the hub log. In a process whose ``threading`` is not monkey-patched
  (logging's locks are real ones) the thread logs the WARNING itself once the
  block has lasted ``STUCK_FACTOR`` thresholds and one call fills the latest
  looks ("... so far, and still does"); when the hub runs again it logs only
  an INFO line (whichever of the two claims the episode first logs the
  WARNING). In a patched process nothing is logged until the block ends.

The gap is measured between heartbeats, so it may exceed the block by up to
threshold/4: a block longer than the threshold is always reported, and looked
at twice at least (first by 3/4 of the threshold after the last beat, again
threshold/8 later); one a quarter shorter may be. The thread starts with the
first listener that enables the option and stops when the last one stops.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import sysconfig
import threading
import time
from types import CodeType, FrameType
from typing import Any, NamedTuple

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

#: Looks every threshold/8 in an episode, then every threshold/2.
FAST_LOOKS = 8

#: The share of a gap from which the hub's thread counts as computing (its CPU time), or the
#: episode as a garbage collection.
_MOSTLY = 0.5

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


class _Look(NamedTuple):
    """What one look at the hub thread's stack saw (in the watchdog thread)."""

    #: The callback gtcp called, its service and connection; or "code outside gtcp callbacks".
    who: str
    #: The innermost frame, and the innermost frame of the user's own code when that is another one.
    where: str
    #: The call the thread is in: the callback's frame; outside callbacks, the outermost frame of
    #: the user's code (the function the greenlet or timer ran); else the innermost frame.
    call: FrameType
    #: The gtcp connection being served, if any.
    conn: Connection | None


def _look(frame: FrameType) -> _Look:
    """What the stack whose innermost frame is *frame* says; runs in the watchdog thread."""
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
        call = next((f for f in reversed(stack) if not _is_library(f.f_code.co_filename)), stack[0])
        return _Look("code outside gtcp callbacks", where, call, None)
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
    if callback is None:  # in gtcp's own code, between callbacks: the call is the innermost frame
        return _Look(f"gtcp serving a connection ({about})", where, stack[0], conn)
    return _Look(f"{_qualname(callback)} ({about})", where, callback, conn)


class _Sample:
    """What the watchdog thread has seen of one episode (one stale heartbeat) so far.

    A snapshot: the thread publishes a new one after each look (one attribute
    store), and the hub takes the last one. It holds text and counts only;
    the frames it compares live in the thread (:attr:`_HubWatch._seen`).
    """

    __slots__ = ("_unclaimed", "beat", "best_span", "best_where", "best_who", "calls", "first", "idle",
                 "last", "looks", "one_connection", "since", "streak", "where", "who")

    def __init__(self, beat: float, now: float) -> None:
        #: The heartbeat found stale: the episode.
        self.beat = beat
        #: When the first and the latest look were taken.
        self.first = self.last = now
        #: Looks taken, looks at the hub waiting for events, calls seen (a run of looks at one
        #: call counts once), and the looks of the current run.
        self.looks = self.idle = self.calls = self.streak = 0
        #: When the current run's first look was taken.
        self.since = now
        #: The latest look at running code.
        self.who = self.where = ""
        #: Every look at running code was in one gtcp connection.
        self.one_connection = True
        #: The run of two looks or more at one call spanning the most time, and that span
        #: (negative: no such run yet).
        self.best_who = self.best_where = ""
        self.best_span = -1.0
        self._unclaimed = [True]  # shared by the episode's snapshots

    def looked(self, now: float, look: _Look | None, same_call: bool, same_connection: bool) -> _Sample:
        """A new snapshot: this one and a look at *now* (None: the hub was waiting for events)."""
        new = _Sample.__new__(_Sample)
        for name in _Sample.__slots__:
            setattr(new, name, getattr(self, name))
        new.looks += 1
        new.last = now
        if look is None:
            new.idle += 1
            new.streak = 0
            return new
        new.who, new.where = look.who, look.where
        if same_call and self.streak:
            new.streak += 1
        else:
            new.streak, new.since = 1, now
            new.calls += 1
        new.one_connection = self.one_connection and same_connection
        span = now - new.since
        if new.streak >= 2 and span >= new.best_span:
            new.best_who, new.best_where, new.best_span = new.who, new.where, span
        return new

    def blamed(self) -> bool:
        """True if one call was seen in consecutive looks spanning half the time looked, or more."""
        return self.best_span >= 0 and 2 * self.best_span >= self.last - self.first

    def still_blocked(self, now: float) -> bool:
        """True if the latest looks, half the time looked or more, all saw one call."""
        return self.streak >= 2 and 2 * (now - self.since) >= now - self.first

    def claim(self) -> bool:
        """True for the first caller only: the hub, or the watchdog thread for a block that goes on.

        ``list.pop`` is atomic, so the two threads never both log the WARNING.
        """
        try:
            return self._unclaimed.pop()
        except IndexError:
            return False


# The ends of the lines: what to do about it.
_BLOCKING = ("every other connection and greenlet %s: a blocking call? (see the README on monkey-patching; "
             "slow_callback_warning=%g)")
_COMPUTING = ("every other connection and greenlet waited: CPU-bound work? (run it in "
              "gevent.get_hub().threadpool, or in more worker processes; slow_callback_warning=%g)")
_SPREAD = ("every other connection and greenlet waited: CPU-bound work spread over the connections? (offload "
           "it to a thread pool, gevent.get_hub().threadpool.spawn(...), or run more worker processes; "
           "slow_callback_warning=%g)")
_SPREAD_OFF_CPU = ("yet its thread had only %.2f s of CPU: short blocking calls in many callbacks (see the "
                   "README on monkey-patching), or a process paused or starved of CPU? "
                   "(slow_callback_warning=%g)")
_PAUSED = ("the process was paused or starved of CPU (SIGSTOP, a suspended VM, an overloaded machine), "
           "or another thread held the GIL (slow_callback_warning=%g)")
_UNSEEN_ON_CPU = ("its thread was computing (%.2f s of CPU) in code that held the GIL: a C extension? "
                  "(run it in more worker processes; slow_callback_warning=%g)")
_UNSEEN_OFF_CPU = ("its thread had only %.2f s of CPU: the whole process was paused (SIGSTOP, a suspended "
                   "VM), or a C call waited holding the GIL (slow_callback_warning=%g)")


def _report(gap: float, threshold: float, sample: _Sample | None, cpu: float,
            gc_time: float, gc_count: int) -> tuple[str, tuple[Any, ...]]:
    """The WARNING for an episode that ended: (format, args), a format per kind of episode.

    *gap*: seconds between the two heartbeats; *cpu*: the hub thread's CPU
    time meanwhile; *gc_time*, *gc_count*: the process's garbage collection.
    """
    computing = cpu >= _MOSTLY * gap
    if gc_time >= _MOSTLY * gap:
        return ("garbage collection stopped the gevent hub for %.2f s of the %.2f s it did not run "
                "(%d collection%s); every other connection and greenlet waited: many objects for the "
                "collector to traverse? (gc.freeze() after start-up, a higher gc.set_threshold(), fewer "
                "long-lived objects; slow_callback_warning=%g)",
                (gc_time, gap, gc_count, "" if gc_count == 1 else "s", threshold))
    if sample is None:
        if computing:
            return ("the gevent hub did not run for %.2f s, and the watchdog thread could not look where "
                    "(the GIL was held, or the whole process was paused); " + _UNSEEN_ON_CPU,
                    (gap, cpu, threshold))
        return ("the gevent hub did not run for %.2f s, and the watchdog thread could not look where "
                "(the GIL was held, or the whole process was paused); " + _UNSEEN_OFF_CPU,
                (gap, cpu, threshold))
    if sample.blamed():
        if computing:
            return ("%s blocked the gevent hub for %.2f s at %s, computing (%.2f s of CPU); " + _COMPUTING,
                    (sample.best_who, gap, sample.best_where, cpu, threshold))
        return ("%s blocked the gevent hub for %.2f s at %s; " + _BLOCKING,
                (sample.best_who, gap, sample.best_where, "waited", threshold))
    if sample.idle == sample.looks:
        return ("the gevent hub did not run for %.2f s, though it was not blocked: it was waiting for events "
                "each time the watchdog looked (%d time%s); " + _PAUSED,
                (gap, sample.looks, "" if sample.looks == 1 else "s", threshold))
    if sample.looks - sample.idle == 1:
        unseen = _UNSEEN_ON_CPU if computing else _UNSEEN_OFF_CPU
        return ("the gevent hub did not run for %.2f s; the watchdog thread saw it running code only once, "
                "in %s at %s: too few looks to blame that code (the GIL was held, or the process was paused, "
                "the rest of the time); " + unseen,
                (gap, sample.who, sample.where, cpu, threshold))
    seen = (f"the watchdog looked {sample.looks} times and saw {sample.calls} different calls"
            + (", all serving one connection" if sample.one_connection else ""))
    if computing:
        return ("the gevent hub was busy for %.2f s running many callbacks without the loop coming back "
                "(%s; last seen in %s at %s); " + _SPREAD,
                (gap, seen, sample.who, sample.where, threshold))
    return ("the gevent hub was busy for %.2f s running many callbacks without the loop coming back "
            "(%s; last seen in %s at %s), " + _SPREAD_OFF_CPU,
            (gap, seen, sample.who, sample.where, cpu, threshold))


def _emit(gap: float, threshold: float, sample: _Sample | None, logged: bool, cpu: float,
          gc_time: float, gc_count: int) -> None:
    """The line for an episode that ended (runs in a greenlet of the hub's thread); *logged*: the
    watchdog thread logged the WARNING already, while the block went on."""
    if logged and sample is not None:
        log.info("the gevent hub ran again after %.2f s (the block reported above: %s at %s)",
                 gap, sample.best_who, sample.best_where)
        return
    message, args = _report(gap, threshold, sample, cpu, gc_time, gc_count)
    log.warning(message, *args)


# -- garbage collection: its time, added up ------------------------------------------------------------

#: [start of the collection under way, seconds spent collecting, collections]: written by the hook.
_gc_clock: list[float] = [0.0, 0.0, 0.0]


def _on_gc(phase: str, info: dict[str, int], _clock: list[float] = _gc_clock,
           _now: Any = time.monotonic) -> None:
    """The ``gc.callbacks`` hook: a clock read at each end of a collection (defaults: no globals)."""
    if phase == "start":
        _clock[0] = _now()
    else:
        _clock[1] += _now() - _clock[0]
        _clock[2] += 1


def _hook_gc(on: bool) -> None:
    """Add the hook (once), or take it out; under ``_state_lock``."""
    hooked = _on_gc in gc.callbacks
    if on and not hooked:
        gc.callbacks.append(_on_gc)
    elif not on and hooked:
        gc.callbacks.remove(_on_gc)


# -- per hub: the heartbeat -------------------------------------------------------------------------

_thread_time = time.thread_time


class _HubWatch:
    """The heartbeat of one hub, and what the watchdog thread saw there.

    Changed only in the hub's own thread, except :attr:`sample`, which the
    watchdog thread sets (one attribute store) and the heartbeat takes, and
    :attr:`_seen`, the watchdog thread's own.
    """

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.thread_ident: int = _get_ident()
        #: The thresholds of the listeners watching this hub; the smallest applies.
        self.thresholds: list[float] = []
        self.threshold = 0.0
        self.beat = time.monotonic()
        #: At the beat: the hub thread's CPU time, the process's time collecting garbage, collections.
        self._mark = (_thread_time(), _gc_clock[1], _gc_clock[2])
        self.sample: _Sample | None = None
        #: The watchdog thread's: (the stale beat, the call of the latest look, the connection of the
        #: first look at running code, looks); None outside an episode (no frame kept alive).
        self._seen: tuple[float, FrameType | None, Connection | None, int] | None = None
        code = getattr(getattr(type(hub), "run", None), "__code__", None)
        #: Hub.run's code: the innermost frame while the hub waits for events or runs C callbacks.
        self._idle_code: CodeType | None = code if isinstance(code, CodeType) else None
        self._last_look = 0.0
        self._timer: Any = None

    def configure(self) -> None:
        """(Re)start the heartbeat for the smallest threshold."""
        self.threshold = min(self.thresholds)
        tick = self.threshold / 4
        if self._timer is not None:
            self._timer.close()
        self.beat = time.monotonic()
        self._mark = (_thread_time(), _gc_clock[1], _gc_clock[2])
        self.sample = None
        timer = self._timer = self.hub.loop.timer(tick, tick, ref=False)
        timer.start(self._on_beat)

    def close(self) -> None:
        """Stop the heartbeat (and let go of the frames of the last episode's looks)."""
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        self._seen = None

    def _on_beat(self) -> None:
        """Runs in the hub: write the beat down; after a gap longer than the threshold, report it."""
        now = time.monotonic()
        mark = (_thread_time(), _gc_clock[1], _gc_clock[2])
        previous, self.beat = self.beat, now
        before, self._mark = self._mark, mark
        sample, self.sample = self.sample, None
        if _restart_needed:
            _restart_after_fork()
        gap = now - previous
        if gap <= self.threshold:
            return  # looks, if any, were at a block shorter than the threshold
        if sample is not None and sample.beat != previous:
            sample = None  # of an earlier episode, stored too late
        logged = sample is not None and not sample.claim()
        gevent.spawn(_emit, gap, self.threshold, sample, logged, mark[0] - before[0],
                     mark[1] - before[1], int(mark[2] - before[2]))

    def interval(self) -> float:
        """Runs in the watchdog thread: how long it may sleep before this hub needs a look."""
        seen = self._seen
        if seen is not None and seen[3] < FAST_LOOKS:
            return self.threshold / 8
        return self.threshold / 4

    def check(self, now: float) -> None:
        """Runs in the watchdog thread: look at a stale hub's stack, and again while it stays stale."""
        threshold, beat = self.threshold, self.beat
        seen = self._seen
        if seen is not None and seen[0] != beat:
            seen = self._seen = None  # the episode is over: let go of its frames
        age = now - beat
        if threshold <= 0 or age <= threshold / 2:
            return
        if seen is not None and seen[3] >= FAST_LOOKS and now - self._last_look < threshold * 3 / 8:
            return  # slower after FAST_LOOKS looks: every threshold/2 (the thread wakes every threshold/4)
        frame = sys._current_frames().get(self.thread_ident)
        if frame is None:
            return
        try:
            look = None if frame.f_code is self._idle_code else _look(frame)
        finally:
            del frame
        self._last_look = now
        sample = self.sample
        if seen is None or sample is None or sample.beat != beat:
            sample, seen = _Sample(beat, now), (beat, None, None, 0)
        if look is None:
            self.sample = sample = sample.looked(now, None, False, False)
            self._seen = (beat, None, seen[2], seen[3] + 1)
        else:
            first = seen[2] if sample.looks > sample.idle else look.conn
            self.sample = sample = sample.looked(now, look, look.call is seen[1],
                                                 look.conn is not None and look.conn is first)
            self._seen = (beat, look.call, first, seen[3] + 1)
        del look
        if (age >= STUCK_FACTOR * threshold and sample.still_blocked(now) and _thread_may_log()
                and sample.claim()):
            current = threading.current_thread()  # a _DummyThread: give the log record a name
            if current.name.startswith("Dummy"):
                current.name = "gtcp-watchdog"
            log.warning("%s has blocked the gevent hub for %.1f s so far, at %s, and still does; "
                        + _BLOCKING, sample.who, age, sample.where, "is waiting", threshold)


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
                intervals = [w.interval() for w in watches if w.threshold > 0]
                self._wake.acquire(True, min(intervals, default=0.25))
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
        hub_watch._seen = None  # the thread that kept those frames did not come along either
    _restart_needed = bool(_watches)
    if not _watches:
        _hook_gc(False)


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
                _hook_gc(False)
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
        _hook_gc(True)
        if _monitor is None:
            _monitor = _Monitor()
    return Watching(hub_watch, threshold)


def _qualname(frame: Any) -> str:
    """``Class.method`` of *frame*'s function: ``co_qualname`` (3.11+), else built from ``self`` (3.10)."""
    code = frame.f_code
    qualname = getattr(code, "co_qualname", None)
    if qualname is not None:
        return str(qualname)
    owner = frame.f_locals.get("self") if code.co_argcount else None
    return f"{type(owner).__name__}.{code.co_name}" if owner is not None else str(code.co_name)
