"""Stopping long-running commands on a signal: gracefully, with a deadline.

Shared by ``python -m gtcp echo`` and the workers of ``python -m gtcp serve``.
A :class:`Drain` waits for a stop request (a signal, or :meth:`Drain.request`
called by the program), then stops its listeners with
``graceful_stop(timeout=...)``: accepting stops at once, open connections may
finish within the deadline, and those left then are closed (each gets its
``on_close``). A request for an immediate stop (a repeated signal where the
command allows it, or one of the ``immediate`` signals) closes every
connection at once, still through ``on_close``.

The handlers are gevent's (:func:`gevent.signal_handler`): each runs in its
own greenlet, so the hub never sees a ``KeyboardInterrupt`` and never prints
one.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from gevent.event import Event

from ._listener import Listener

__all__ = ["Drain"]


class Drain:
    """Wait for a stop request, then stop listeners gracefully within *timeout* seconds.

    *graceful* signals ask for a graceful stop; when *repeat_is_immediate*, a
    second one while draining asks for an immediate stop. *immediate* signals
    always ask for an immediate stop. *on_stop* runs once, when the first
    request is acted on (the echo command prints a line there).
    ``timeout=0`` closes the connections at once. Add listeners once they
    are started.
    """

    def __init__(
        self,
        timeout: float,
        *,
        graceful: Iterable[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
        immediate: Iterable[signal.Signals] = (),
        repeat_is_immediate: bool = True,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.timeout = timeout
        self._graceful = tuple(graceful)
        self._immediate = tuple(immediate)
        self._repeat_is_immediate = repeat_is_immediate
        self._on_stop = on_stop
        self._listeners: list[Listener] = []
        self._requested = Event()
        self._now = False
        self._draining = False
        self._handlers: list[Any] = []
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def requested(self) -> bool:
        """True once a stop was asked for."""
        return self._requested.is_set()

    def add(self, listener: Listener) -> None:
        """Stop *listener* too when the stop comes."""
        self._listeners.append(listener)

    def install(self) -> None:
        """Install the signal handlers (from the main thread)."""
        for signum in (*self._graceful, *self._immediate):
            self._previous.setdefault(signum, signal.getsignal(signum))
        for signum in self._graceful:
            self._handlers.append(gevent.signal_handler(signum, self.request))
        for signum in self._immediate:
            self._handlers.append(gevent.signal_handler(signum, self.request_immediate))

    def uninstall(self) -> None:
        """Cancel the handlers :meth:`install` put in place and restore Python's previous ones.

        (Cancelling a gevent handler leaves the signal at its OS default, which
        for SIGINT is not Python's ``KeyboardInterrupt``.)
        """
        handlers, self._handlers = self._handlers, []
        for handler in handlers:
            handler.cancel()
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)

    def __enter__(self) -> Drain:
        self.install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()

    def request(self) -> None:
        """Ask for a graceful stop; a second request may make it immediate."""
        if self._requested.is_set():
            if self._repeat_is_immediate:
                self.request_immediate()
            return
        self._requested.set()

    def request_immediate(self) -> None:
        """Ask for an immediate stop: close every connection now (``on_close`` still runs)."""
        self._now = True
        self._requested.set()
        if self._draining:
            for listener in self._listeners:
                listener.immediate_stop()

    def wait(self) -> None:
        """Block until a stop is asked for, then stop the listeners; return when they are done.

        Every listener is stopped at the same moment and drained in its own
        greenlet, so one deadline covers them all.
        """
        self._requested.wait()
        if self._on_stop is not None:
            self._on_stop()
        self._draining = True
        if self._now:
            for listener in self._listeners:
                listener.immediate_stop()
            return
        stops = [gevent.spawn(listener.graceful_stop, self.timeout) for listener in self._listeners]
        gevent.joinall(stops)
        for job in stops:
            if job.exception is not None:
                raise job.exception
