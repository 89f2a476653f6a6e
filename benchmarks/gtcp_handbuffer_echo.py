"""gtcp framed echo on today's API: raw chunks, framing by hand, one write per message.

``on_bytes(self, caller, data)`` gets whatever chunk arrived. The service
appends it to a ``bytearray``, walks the complete messages in it with an
offset, hands each payload to the (identity) handler, writes each reply with
its framing by ``caller.write_bytes`` (one call per message), and drops the
consumed prefix once per chunk. That is how a careful user writes a framed
protocol on gtcp without a framing option: the baseline the framed gtcp
server is measured against.

usage: python benchmarks/gtcp_handbuffer_echo.py PORT --framing lines|len4
"""

from __future__ import annotations

import signal
from typing import Any

import gevent
from _common import add_repo_to_path, announce, parse_framed_args, raise_nofile_limit


def handle(payload: bytes) -> bytes:
    """The application: echo."""
    return payload


def make_listener(port: int, framing: str) -> Any:
    """Build the hand-buffered echo listener for ``framing`` (lines or len4)."""
    add_repo_to_path()
    import gtcp

    class LineEcho(gtcp.ConnectionService):
        def __init__(self) -> None:
            self.buf = bytearray()

        def on_bytes(self, caller: Any, data: bytes) -> None:
            buf = self.buf
            buf += data
            start = 0
            find = buf.find
            write = caller.write_bytes
            try:
                while True:
                    end = find(b"\n", start)
                    if end < 0:
                        break
                    write(handle(bytes(buf[start:end])) + b"\n")
                    start = end + 1
            except gtcp.Error:
                return  # the peer went away: gtcp has closed the connection
            if start:
                del buf[:start]

    class Len4Echo(gtcp.ConnectionService):
        def __init__(self) -> None:
            self.buf = bytearray()

        def on_bytes(self, caller: Any, data: bytes) -> None:
            buf = self.buf
            buf += data
            start = 0
            have = len(buf)
            write = caller.write_bytes
            try:
                while have - start >= 4:
                    size = int.from_bytes(buf[start : start + 4], "big")
                    end = start + 4 + size
                    if end > have:
                        break
                    reply = handle(bytes(buf[start + 4 : end]))
                    write(len(reply).to_bytes(4, "big") + reply)
                    start = end
            except gtcp.Error:
                return  # the peer went away: gtcp has closed the connection
            if start:
                del buf[:start]

    echo = LineEcho if framing == "lines" else Len4Echo

    class Svc(gtcp.Service):
        def on_connect(self, caller: Any) -> gtcp.ConnectionService:
            return echo()

    listener = gtcp.Listener(port, local_host="127.0.0.1", backlog=4096)
    listener.attach(Svc())
    return listener


def main() -> None:
    """Serve until SIGTERM/SIGINT."""
    args = parse_framed_args(__doc__ or "")
    raise_nofile_limit()
    listener = make_listener(args.port, args.framing)
    listener.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, lambda: gevent.spawn(listener.immediate_stop))
    announce(listener.port)
    listener.serve_forever()


if __name__ == "__main__":
    main()
