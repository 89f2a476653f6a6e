"""Services and helpers shared by the tests."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import gevent
from conftest import LONG
from gevent.event import Event
from gevent.queue import Queue

import gtcp

T = TypeVar("T")

#: The repository (this checkout), its tests, examples and benchmarks.
ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
EXAMPLES = ROOT / "examples"
BENCHMARKS = ROOT / "benchmarks"

#: The TLS versions every TLS behaviour is tested with (pytest ids: the names).
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")


class Echo(gtcp.ConnectionService):
    """Echoes every chunk; records what happened on its connection."""

    def __init__(self, events: Queue | None = None) -> None:
        self.events = events if events is not None else Queue()
        self.closed = Event()

    def on_bytes(self, caller: gtcp.Caller, data: bytes) -> bytes:
        return data

    def on_error(self, err: gtcp.Error) -> None:
        self.events.put(("error", err))

    def on_close(self) -> None:
        self.events.put(("close", None))
        self.closed.set()


class EchoService(gtcp.Service):
    """Hands out one Echo per connection and keeps them and their callers."""

    def __init__(self) -> None:
        self.events: Queue = Queue()
        self.callers: list[gtcp.Caller] = []
        self.services: list[Echo] = []
        self.connected = Queue()

    def on_connect(self, caller: gtcp.Caller) -> Echo:
        self.callers.append(caller)
        service = Echo(self.events)
        self.services.append(service)
        self.connected.put(caller)
        return service


def wait_until(condition: Callable[[], T], what: str = "the condition", timeout: float = LONG,
               interval: float = 0.001) -> T:
    """Poll *condition* until it returns something true, and return that; fail after *timeout* s.

    Other greenlets run between the polls (``gevent.sleep(interval)``). For
    a state that nothing signals (a count, a socket queue, a child process);
    wait on an event where there is one.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        gevent.sleep(interval)


def raw_connect(port: int, host: str = "127.0.0.1") -> Any:
    """A plain gevent socket connected to the listener."""
    return gevent.socket.create_connection((host, port))


def recv_all(sock: Any) -> bytes:
    """Everything a raw socket receives until EOF."""
    parts = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


#: Echo service classes for scripts run by :func:`run_script` (prepend it).
ECHO_PRELUDE = """
import gtcp

class Echo:
    def on_bytes(self, data): return data

class Svc:
    def on_connect(self, caller): return Echo()
"""


def run_script(
    code: str, *, echo: bool = False, patch: bool = False, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run Python *code* in a fresh interpreter that imports this checkout's gtcp.

    *patch* runs ``gevent.monkey.patch_all()`` first; *echo* defines the
    ``Echo``/``Svc`` services of :data:`ECHO_PRELUDE`. Monkey-patching and
    resource limits happen there, never in the test process.
    """
    source = textwrap.dedent(code)
    if echo:
        source = ECHO_PRELUDE + source
    if patch:
        source = "from gevent import monkey\nmonkey.patch_all()\n" + source
    return subprocess.run([sys.executable, "-c", source], capture_output=True,
                          text=True, timeout=timeout, env=child_env())


def child_env(*paths: Path | str, **extra: str) -> dict[str, str]:
    """This process's environment for a child interpreter that imports this checkout's gtcp.

    ``PYTHONPATH`` is the repository (gtcp need not be installed), then
    *paths*, then what it was; systemd's ``LISTEN_*`` variables are never
    passed on (a child would take them for sockets of its own); *extra*
    variables are set last.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("LISTEN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), *map(str, paths), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as ``gtcp_example_<name>`` (``examples/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(f"gtcp_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
