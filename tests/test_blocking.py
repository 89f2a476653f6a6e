"""The slow-callback watchdog (``slow_callback_warning``): one WARNING when the hub is blocked.

The test process is not monkey-patched, so ``time.sleep`` blocks the whole
thread, hub included: that blocking is the thing under test. Everything else
waits on events or polls a condition under a deadline. A test reads only the
warnings that name its own service or function: on a loaded machine the
test's own code may stall the hub too, and that is not what it is about.
"""

from __future__ import annotations

import decimal
import gc
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from conftest import LONG
from gevent import monkey
from helpers import run_script, wait_until

import gtcp
from gtcp import _watchdog

#: Blocks the whole thread whatever is patched.
block = monkey.get_original("time", "sleep")


class Records(logging.Handler):
    """The records of the gtcp logger, at INFO and above."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def warnings(self, about: str = "") -> list[str]:
        """The WARNING messages (those that contain *about*: a stall of the test's own code, on a
        slow machine, is not what the test is about)."""
        return [m for r in self.records if r.levelno == logging.WARNING and about in (m := r.getMessage())]

    def infos(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == logging.INFO]


@pytest.fixture
def records() -> Iterator[Records]:
    logger = logging.getLogger("gtcp")
    handler = Records()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def no_watchdog_yet() -> None:
    """These tests count the watchdog's thread: none may run when they start."""
    if _watchdog.running_thread() is not None:
        pytest.skip("a listener of another test still runs the watchdog")


def heartbeats(count: int) -> None:
    """Wait until the current hub's heartbeat has run *count* more times."""
    watch = _watchdog._watches[gevent.get_hub()]
    seen = [watch.beat]

    def beaten() -> bool:
        if watch.beat != seen[-1]:
            seen.append(watch.beat)
        return len(seen) > count

    wait_until(beaten, f"{count} heartbeats")


class Blocking(gtcp.ConnectionService):
    """Blocks the thread for the number of seconds it receives, then answers b"ok"."""

    def __init__(self, service: BlockingService) -> None:
        self.service = service

    def on_bytes(self, caller: gtcp.Caller, data: bytes) -> bytes:
        self.service.line = sys._getframe().f_lineno + 1
        block(float(data))
        self.service.after_block(caller)
        return b"ok"


class BlockingService(gtcp.Service):
    def __init__(self) -> None:
        self.line = 0
        self.callers: list[gtcp.Caller] = []
        self.after_block: Callable[[gtcp.Caller], None] = lambda caller: None

    def on_connect(self, caller: gtcp.Caller) -> Blocking:
        self.callers.append(caller)
        return Blocking(self)


def serve(service: Any, **options: Any) -> gtcp.Listener:
    listener = gtcp.Listener(0, local_host="127.0.0.1", **options)
    listener.attach(service)
    listener.start()
    return listener


def ask(listener: gtcp.Listener, seconds: float) -> gtcp.Client:
    """Make the service block for *seconds*; returns the (open) client once the answer came."""
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    client.write_bytes(str(seconds).encode())
    assert client.read_bytes() == b"ok"
    return client


def test_a_blocking_callback_logs_one_warning_naming_service_connection_and_line(records):
    service = BlockingService()
    listener = serve(service, slow_callback_warning=0.3)
    try:
        client = ask(listener, 0.8)
        wait_until(records.warnings, "the warning")
        heartbeats(2)  # the episode is over: a second warning would be there by now
    finally:
        listener.immediate_stop()
    client.close()
    (message,) = records.warnings("BlockingService")
    caller = service.callers[0]
    assert "Blocking.on_bytes" in message or "on_bytes (" in message
    assert "service BlockingService" in message
    assert f"connection 127.0.0.1:{caller.remote_port}" in message
    assert f"id {caller.id}" in message
    assert f"at {__file__}:{service.line} in on_bytes" in message
    gap = float(message.split(" blocked the gevent hub for ")[1].split(" s ")[0])
    assert 0.8 <= gap < 0.8 + LONG
    assert "every other connection and greenlet waited: a blocking call?" in message  # sleeping: off the CPU
    assert "slow_callback_warning=0.3" in message
    assert records.infos() == []


def test_a_block_shorter_than_the_threshold_logs_nothing(records):
    listener = serve(BlockingService(), slow_callback_warning=0.3)
    try:
        ask(listener, 0.1).close()
        heartbeats(3)
    finally:
        listener.immediate_stop()
    assert records.warnings("BlockingService") == []


def test_blocking_outside_callbacks_names_where(records):
    listener = serve(BlockingService(), slow_callback_warning=0.2)
    line = 0

    def own_greenlet() -> None:
        nonlocal line
        line = sys._getframe().f_lineno + 1
        block(0.5)

    try:
        gevent.spawn(own_greenlet).join()
        wait_until(records.warnings, "the warning")
        heartbeats(2)
    finally:
        listener.immediate_stop()
    (message,) = records.warnings("own_greenlet")
    assert message.startswith("code outside gtcp callbacks blocked the gevent hub for ")
    assert f"at {__file__}:{line} in own_greenlet" in message
    assert "service" not in message.split(";")[0]


def test_a_block_that_goes_on_is_logged_while_it_lasts(records):
    # threading is not patched here, so the watchdog thread may log itself,
    # after STUCK_FACTOR thresholds (0.5 s), while on_bytes still blocks.
    service = BlockingService()
    seen_while_blocked: list[list[str]] = []
    service.after_block = lambda caller: seen_while_blocked.append(records.warnings("BlockingService"))
    listener = serve(service, slow_callback_warning=0.05)
    try:
        ask(listener, 0.05 * _watchdog.STUCK_FACTOR + 0.4).close()
        wait_until(records.infos, "the INFO line of the block's end")
        heartbeats(2)
    finally:
        listener.immediate_stop()
    ((during,),) = seen_while_blocked
    assert " so far, at " in during and "and still does" in during
    assert f"at {__file__}:{service.line} in on_bytes" in during
    assert records.warnings("BlockingService") == [during]  # one WARNING for the episode
    (info,) = [text for text in records.infos() if "BlockingService" in text]
    assert info.startswith("the gevent hub ran again after ")
    assert f"at {__file__}:{service.line} in on_bytes" in info


# -- a busy hub is not a blocked one ------------------------------------------------------------------

def spin(seconds: float) -> None:
    """Honest CPU work: a pure-Python loop for *seconds* (of wall time)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Busy(gtcp.ConnectionService):
    """Computes for ``BusyService.work`` seconds per message, then answers b"ok"."""

    def __init__(self, service: BusyService) -> None:
        self.service = service

    def on_bytes(self, caller: gtcp.Caller, data: bytes) -> bytes:
        spin(self.service.work)
        return b"ok"


class BusyService(gtcp.Service):
    def __init__(self, work: float) -> None:
        self.work = work
        self.callers: list[gtcp.Caller] = []

    def on_connect(self, caller: gtcp.Caller) -> Busy:
        self.callers.append(caller)
        return Busy(self)


def connect(listener: gtcp.Listener, service: Any, count: int) -> list[gtcp.Client]:
    clients = [gtcp.Client("127.0.0.1", listener.port, timeout=LONG) for _ in range(count)]
    wait_until(lambda: len(service.callers) == count, f"{count} connections served")
    return clients


def one_round(clients: list[tuple[gtcp.Client, bytes]]) -> None:
    """Every client sends at once (the server's hub finds them all readable in one loop
    iteration), then every answer is read."""
    for client, message in clients:
        client.write_bytes(message)
    for client, _ in clients:
        assert client.read_bytes() == b"ok"


def test_many_connections_doing_short_cpu_work_are_a_busy_hub_not_a_blocking_call(records):
    # 50 connections x 10 ms: each loop iteration runs 0.5 s of callbacks, none longer than 10 ms,
    # and the watchdog looks every 25 ms or more: never twice at one call.
    service = BusyService(work=0.01)
    listener = serve(service, slow_callback_warning=0.2)
    try:
        clients = connect(listener, service, 50)
        for _ in range(3):
            one_round([(client, b"x") for client in clients])
        heartbeats(2)
    finally:
        listener.immediate_stop()
    for client in clients:
        client.close()
    about = records.warnings("BusyService")
    assert about, "no warning about the busy hub"
    for message in about:
        assert " blocked the gevent hub " not in message and "a blocking call?" not in message, message
    busy = [m for m in about if m.startswith("the gevent hub was busy for ")]
    assert busy, about
    message = busy[0]
    assert " s running many callbacks without the loop coming back (the watchdog looked " in message
    # The last look only, as such: in the callback, or in gtcp between two callbacks.
    last_seen = message.split("; last seen in ")[1]
    assert last_seen.startswith(("Busy.on_bytes (service BusyService, connection 127.0.0.1:",
                                 "gtcp serving a connection (service BusyService, connection 127.0.0.1:"))
    gap = float(message.split(" was busy for ")[1].split(" s ")[0])
    assert 0.2 < gap < LONG
    assert "threadpool" in message or "blocking calls in many callbacks" in message  # on or off the CPU


def test_a_blocking_call_among_busy_connections_is_still_named(records):
    busy_service = BusyService(work=0.01)
    blocking_service = BlockingService()
    busy = serve(busy_service, slow_callback_warning=0.3)
    blocking = serve(blocking_service, slow_callback_warning=0.3)
    try:
        clients = [(client, b"x") for client in connect(busy, busy_service, 20)]
        (blocker,) = connect(blocking, blocking_service, 1)
        one_round([*clients[:10], (blocker, b"1.2"), *clients[10:]])
        wait_until(lambda: records.warnings("BlockingService"), "the warning")
        heartbeats(2)
    finally:
        busy.immediate_stop()
        blocking.immediate_stop()
    (message,) = records.warnings("BlockingService")
    assert message.startswith("Blocking.on_bytes (service BlockingService, ")
    assert f" at {__file__}:{blocking_service.line} in on_bytes; " in message
    assert "a blocking call?" in message


def test_one_long_computation_is_named(records):
    service = BusyService(work=0.8)
    listener = serve(service, slow_callback_warning=0.2)
    try:
        (client,) = connect(listener, service, 1)
        one_round([(client, b"x")])
        wait_until(lambda: records.warnings("BusyService"), "the warning")
        heartbeats(2)
    finally:
        listener.immediate_stop()
    client.close()
    (message,) = records.warnings("BusyService")
    assert message.startswith("Busy.on_bytes (service BusyService, connection 127.0.0.1:")
    assert " blocked the gevent hub for " in message and f" at {__file__}:" in message
    # On the CPU (unless the machine is so loaded that the thread ran less than half the time):
    assert (", computing (" in message and "CPU-bound work?" in message) or "a blocking call?" in message


def test_a_garbage_collection_is_named_as_such(records):
    # A heap that takes the collector long enough; the threshold is set from how long it takes here.
    heap: list[list[None]] = []
    took = 0.0
    while took < 0.1 and len(heap) < 8_000_000:
        heap.extend([None] for _ in range(1_000_000))
        start = time.monotonic()
        gc.collect()
        took = time.monotonic() - start
    threshold = max(_watchdog.MIN_THRESHOLD, round(took / 3, 3))
    listener = serve(BlockingService(), slow_callback_warning=threshold)
    try:
        heartbeats(2)
        gc.collect()
        wait_until(lambda: records.warnings("garbage collection"), "the warning")
        heartbeats(2)
    finally:
        listener.immediate_stop()
        del heap
    message = records.warnings("garbage collection")[0]
    assert message.startswith("garbage collection stopped the gevent hub for ")
    assert re.search(r" s it did not run \(\d+ collections?\); ", message), message
    assert "gc.freeze()" in message
    assert "blocked" not in message


def test_a_paused_process_is_not_a_blocked_hub():
    result = run_script("""
        import logging, os, subprocess, sys
        import gevent
        import gtcp

        records = []
        class Keep(logging.Handler):
            def emit(self, record): records.append(record)
        logging.getLogger("gtcp").addHandler(Keep())

        listener = gtcp.Listener(0, local_host="127.0.0.1", slow_callback_warning=0.2)
        listener.attach(gtcp.Service())
        listener.start()
        # Stopped for 1 s (SIGSTOP, then SIGCONT from outside) while the hub waits for events.
        helper = subprocess.Popen(["sh", "-c", f"sleep 0.3; kill -STOP {os.getpid()}; sleep 1; "
                                               f"kill -CONT {os.getpid()}"])
        gevent.sleep(2)
        helper.wait()
        gevent.sleep(0.2)
        listener.immediate_stop()
        for record in records:
            print(record.levelname, record.getMessage())
    """, timeout=LONG * 3)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("WARNING ")]
    assert len(warnings) == 1, result.stdout
    (warning,) = warnings
    assert warning.startswith("WARNING the gevent hub did not run for "), warning
    assert "SIGSTOP" in warning and "paused" in warning
    assert " blocked the gevent hub " not in warning


def test_disabled_logs_nothing_and_starts_no_thread(records, no_watchdog_yet):
    listener = serve(BlockingService(), slow_callback_warning=None)
    try:
        assert _watchdog.running_thread() is None
        assert gevent.get_hub() not in _watchdog._watches
        ask(listener, 0.4).close()
        gevent.sleep(0)
    finally:
        listener.immediate_stop()
    assert records.records == []


def watchdog_threads() -> list[int]:
    """The threads running the watchdog's code now."""
    return [ident for ident, frame in sys._current_frames().items()
            if frame.f_code.co_filename == _watchdog.__file__]


def test_one_thread_for_all_listeners_gone_after_the_last_stops(no_watchdog_yet):
    first = serve(BlockingService(), slow_callback_warning=0.5)
    second = serve(BlockingService(), slow_callback_warning=0.3)
    try:
        ident = _watchdog.running_thread()
        assert ident is not None
        wait_until(lambda: ident in sys._current_frames(), "the watchdog thread to run")
        wait_until(lambda: watchdog_threads() == [ident], "the one watchdog thread to wait")
        watch = _watchdog._watches[gevent.get_hub()]
        assert watch.threshold == 0.3  # the smallest threshold applies to the hub
        second.immediate_stop()
        assert _watchdog.running_thread() == ident
        assert watch.threshold == 0.5
    finally:
        first.immediate_stop()
        second.immediate_stop()
    assert _watchdog.running_thread() is None
    assert gevent.get_hub() not in _watchdog._watches
    wait_until(lambda: ident not in sys._current_frames() and not watchdog_threads(), "the thread to end")
    # and a later start starts a new one
    again = serve(BlockingService())
    try:
        assert _watchdog.running_thread() is not None
    finally:
        again.immediate_stop()
    assert _watchdog.running_thread() is None


def test_detection_after_patch_all():
    result = run_script("""
        import logging, sys
        import gevent
        from gevent import monkey
        import gtcp
        from gtcp import _watchdog

        records = []
        class Keep(logging.Handler):
            def emit(self, record): records.append(record)
        logging.getLogger("gtcp").addHandler(Keep())

        block = monkey.get_original("time", "sleep")

        lines = []

        class Blocking:
            def on_bytes(self, data):
                lines.append(sys._getframe().f_lineno + 1)
                block(0.8)
                return b"ok"

        ports = []

        class BlockingService:
            def on_connect(self, caller):
                ports.append(caller.remote_port)
                return Blocking()

        listener = gtcp.Listener(0, local_host="127.0.0.1", slow_callback_warning=0.3)
        listener.attach(BlockingService())
        listener.start()
        ident = _watchdog.running_thread()
        with gtcp.Client("127.0.0.1", listener.port, timeout=10) as client:
            client.write_bytes(b"x")
            assert client.read_bytes() == b"ok"
        for _ in range(1000):  # poll, cooperatively, for at most 10 s
            if records:
                break
            gevent.sleep(0.01)
        listener.immediate_stop()
        assert _watchdog.running_thread() is None
        for _ in range(1000):
            if ident not in sys._current_frames():
                break
            gevent.sleep(0.01)
        print("thread gone:", ident not in sys._current_frames())
        print("port:", ports[0])
        print("line:", lines[0])
        for record in records:
            print(record.levelname, record.getMessage())
    """, patch=True, timeout=LONG * 3)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert "thread gone: True" in lines
    port, line = lines[1].split()[1], lines[2].split()[1]
    (warning,) = [text for text in lines if text.startswith("WARNING ")]
    assert f"on_bytes (service BlockingService, connection 127.0.0.1:{port}, id " in warning
    assert f"at <string>:{line} in on_bytes;" in warning


@pytest.mark.parametrize("value", [0, -1, 0.001, float("nan"), float("inf"), "0.5", True, b"1", object()])
def test_bad_thresholds_are_config_errors(value):
    with pytest.raises(gtcp.ConfigError, match="slow_callback_warning must be a number of seconds"):
        gtcp.Listener(0, slow_callback_warning=value)


@pytest.mark.parametrize("value", [None, 1, 0.25, decimal.Decimal("0.75")])
def test_good_thresholds(value):
    listener = gtcp.Listener(0, slow_callback_warning=value)
    assert listener._slow_callback_warning == (None if value is None else float(value))
