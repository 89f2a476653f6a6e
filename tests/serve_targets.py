"""Targets of ``python -m gtcp serve serve_targets:NAME`` for tests/test_serve.py.

Run with ``tests/`` on PYTHONPATH. The services record what happened (one
line per event: ``closed PID REMOTE``) in the file ``events`` of the folder
named by the environment variable ``SERVE_TARGETS_DIR``, when it is set.
"""

from __future__ import annotations

import os

import gevent

import gtcp


def record(line: str) -> None:
    """Append one line to $SERVE_TARGETS_DIR/events (one write: lines of several workers never mix)."""
    folder = os.environ.get("SERVE_TARGETS_DIR")
    if folder is None:
        return
    fd = os.open(os.path.join(folder, "events"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class EchoConnection(gtcp.ConnectionService):
    """Replies ``TAG PID REMOTE DATA``; ``env NAME`` is answered with that variable's value (or ``-``)."""

    def __init__(self, tag: str, caller: gtcp.Caller) -> None:
        self.tag = tag
        self.remote = f"{caller.remote_host}:{caller.remote_port}"

    def on_bytes(self, caller: gtcp.Caller, data: bytes) -> bytes:
        if data.startswith(b"env "):
            return os.environ.get(data[4:].decode().strip(), "-").encode()
        return f"{self.tag} {os.getpid()} {self.remote} ".encode() + data

    def on_close(self) -> None:
        record(f"closed {os.getpid()} {self.remote}")


class Echo(gtcp.Service):
    """The echo service: one :class:`EchoConnection` per connection."""

    def __init__(self, tag: str = "echo") -> None:
        self.tag = tag

    def on_connect(self, caller: gtcp.Caller) -> EchoConnection:
        return EchoConnection(self.tag, caller)


class SlowConnection(EchoConnection):
    """``sleep S``: answers ``working`` at once, ``done`` S seconds later; ``hold``: ``held``."""

    def on_bytes(self, caller: gtcp.Caller, data: bytes) -> bytes:
        if data.startswith(b"sleep "):
            caller.write_bytes(b"working\n")
            gevent.sleep(float(data[6:]))
            return b"done"
        if data == b"hold":
            return b"held"
        return super().on_bytes(caller, data)


class Slow(gtcp.Service):
    """For the drain tests (with ``--framing lines``)."""

    def on_connect(self, caller: gtcp.Caller) -> SlowConnection:
        return SlowConnection("slow", caller)


#: A Service instance.
echo = Echo()

#: A Service class (each worker makes its own).
EchoClass = Echo

slow = Slow()


def make_echo() -> Echo:
    """A factory."""
    return Echo("factory")


# -- unusable targets ------------------------------------------------------------

number = 42


class NotAService:
    """A class without on_connect."""


def returns_a_number() -> int:
    """A factory that does not return a service."""
    return 42


def crash_at_start() -> Echo:
    """A factory that raises in every worker."""
    raise RuntimeError("boom at start-up")


def exit_at_start() -> Echo:
    """A factory whose process ends at once, reporting nothing."""
    os._exit(3)


def breaks_later() -> Echo:
    """Serves until the file ``broken`` exists in $SERVE_TARGETS_DIR; from then on every start fails."""
    if os.path.exists(os.path.join(os.environ["SERVE_TARGETS_DIR"], "broken")):
        raise RuntimeError("broken since")
    return Echo()


def crash_in_one_worker() -> Echo:
    """The first worker to call this crashes; the others serve (and record ``serving PID``)."""
    folder = os.environ["SERVE_TARGETS_DIR"]
    try:
        fd = os.open(os.path.join(folder, "crash-claimed"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        record(f"serving {os.getpid()}")
        return Echo()
    os.close(fd)
    raise RuntimeError("the first worker crashes")
