"""Caller: the handle a listener gives the user for one accepted connection."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from ._io import Stream

if TYPE_CHECKING:
    from ._tls import TLSInfo

__all__ = ["Caller", "host_text"]


def host_text(address: Any) -> str:
    """The IP address of a socket address as text, IPv4-mapped IPv6 as IPv4."""
    host = str(address[0])
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


class Caller:
    """One accepted connection, as seen by the service (Ballerina ``tcp:Caller``).

    Built by the listener and passed to ``on_connect`` and (optionally)
    ``on_bytes``. It may be kept and used from other greenlets (a push server
    writing from a timer) while the connection is open.

    Attributes: ``remote_host`` and ``remote_port`` (the peer), ``local_host``
    and ``local_port`` (this side), ``id`` (a unique string, the same in every
    callback of the connection) and ``tls`` (a :class:`gtcp.TLSInfo`, or
    ``None`` on plain TCP).
    """

    __slots__ = ("_id", "_stream", "local_host", "local_port", "remote_host", "remote_port")

    def __init__(self, stream: Stream, remote: Any, local: Any) -> None:
        self._stream = stream
        self.remote_host: str = host_text(remote)
        self.remote_port: int = int(remote[1])
        self.local_host: str = host_text(local)
        self.local_port: int = int(local[1])
        self._id: str | None = None

    @property
    def id(self) -> str:
        """A unique string (a UUID) for this connection, the same in every callback."""
        if self._id is None:
            self._id = str(uuid.uuid4())
        return self._id

    @property
    def tls(self) -> TLSInfo | None:
        """Facts about the TLS connection, or ``None`` on plain TCP."""
        return self._stream.tls

    @property
    def closed(self) -> bool:
        """True once the connection was closed (by either side or a stop)."""
        return self._stream.closed or self._stream.eof

    def write_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Send the whole of *data* to the peer, or raise.

        Raises ``ClosedError`` if the connection is closed, ``WriteError`` if
        the OS refuses the write, ``WriteTimeoutError`` if the peer does not
        take the bytes within the listener's ``write_timeout`` (the
        connection is then closed). Writes from several greenlets never
        interleave. Errors raised here are not also passed to ``on_error``.
        """
        self._stream.write(data)

    def close(self) -> None:
        """Close the connection gracefully; idempotent. ``on_close`` runs once."""
        self._stream.close()

    def __repr__(self) -> str:
        return (
            f"<gtcp.Caller {self.id} {self.remote_host}:{self.remote_port}"
            f"{' closed' if self.closed else ''}>"
        )
