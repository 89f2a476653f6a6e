"""gtcp framed echo with gtcp's own framing: ``on_bytes(self, data)`` gets one message.

``gtcp.Listener(port, framing=gtcp.Lines())`` (or
``gtcp.LengthPrefixed(header_size=4)``) delivers one frame per ``on_bytes``
call, without its newline or header; the returned bytes are framed and
written by gtcp, which coalesces the replies to the frames of one read into
one send.

usage: python benchmarks/gtcp_framed_echo.py PORT --framing lines|len4
"""

from __future__ import annotations

import signal
from typing import Any

import gevent
from _common import add_repo_to_path, announce, parse_framed_args, raise_nofile_limit


def make_listener(port: int, framing: str) -> Any:
    """Build the framed echo listener for ``framing`` (lines or len4)."""
    add_repo_to_path()
    import gtcp

    class Echo(gtcp.ConnectionService):
        def on_bytes(self, data: bytes) -> bytes:
            return data

    class Svc(gtcp.Service):
        def on_connect(self, caller: Any) -> Echo:
            return Echo()

    frames = gtcp.Lines() if framing == "lines" else gtcp.LengthPrefixed(header_size=4)
    listener = gtcp.Listener(port, local_host="127.0.0.1", framing=frames, backlog=4096)
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
