"""The echo Service that ``serve_bench.py`` runs under ``python -m gtcp serve``.

``python -m gtcp serve serve_echo:service --port 0 --workers N`` (with
``benchmarks/`` on PYTHONPATH): each worker imports this module and serves
``service``, whose connections echo what they receive, ``on_bytes(self,
data): return data``, the same handler as ``echo_server.py``. The only
difference from that script is who owns the socket: here the ``gtcp serve``
supervisor binds it and the workers accept on it with ``Listener.from_socket``.
"""

from __future__ import annotations

from typing import Any

import gtcp


class EchoConnection(gtcp.ConnectionService):
    """Echoes every chunk (or, with ``--framing``, every frame) back."""

    def on_bytes(self, data: bytes) -> bytes:
        return data


class Echo(gtcp.Service):
    """One :class:`EchoConnection` per connection."""

    def on_connect(self, caller: Any) -> EchoConnection:
        return EchoConnection()


#: The instance ``gtcp serve serve_echo:service`` serves.
service = Echo()
