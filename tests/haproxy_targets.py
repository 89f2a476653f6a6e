"""Services that ``gtcp serve`` runs behind HAProxy in ``test_haproxy.py`` (imported by the workers).

``Where``: for each line ``ID`` it replies ``ID host port pid command`` (the
client's address as the service sees it, the worker's pid and
``caller.proxy.command``). With ``GTCP_TEST_RECORD`` set to a directory, each
worker appends every ID it received to ``<dir>/<pid>.ids`` before replying, so
a test can check that every request a worker accepted got its reply. With
``GTCP_TEST_DELAY`` (seconds) each reply waits that long first: requests are
then in flight when a signal arrives.
"""

from __future__ import annotations

import os

import gevent

import gtcp


class _Connection(gtcp.ConnectionService):
    def __init__(self, caller: gtcp.Caller) -> None:
        self.caller = caller
        self.delay = float(os.environ.get("GTCP_TEST_DELAY", "0"))
        record = os.environ.get("GTCP_TEST_RECORD")
        self.record = None if record is None else os.path.join(record, f"{os.getpid()}.ids")

    def on_bytes(self, line: bytes) -> bytes:
        request = line.decode("ascii").strip()
        if self.record is not None:
            with open(self.record, "a", encoding="ascii") as out:
                out.write(request + "\n")
        if self.delay:
            gevent.sleep(self.delay)
        caller = self.caller
        command = caller.proxy.command if caller.proxy is not None else "-"
        return f"{request} {caller.remote_host} {caller.remote_port} {os.getpid()} {command}".encode("ascii")


class Where(gtcp.Service):
    """Replies with where the request came from and which worker served it."""

    def on_connect(self, caller: gtcp.Caller) -> _Connection:
        return _Connection(caller)
