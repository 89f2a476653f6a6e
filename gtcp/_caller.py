"""Caller: the handle a listener gives the user for one accepted connection."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from ._errors import Error
from ._framing import Codec, check_codec
from ._io import Stream

if TYPE_CHECKING:
    from ._proxy import ProxyInfo
    from ._tlsinfo import TLSInfo

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
    callback of the connection), ``tls`` (a :class:`gtcp.TLSInfo`, or
    ``None`` on plain TCP) and ``proxy`` (a :class:`gtcp.ProxyInfo` on a
    listener with ``proxy_protocol``, else ``None``). Behind a proxy,
    ``remote_host``/``remote_port`` are the client's, as the header gave them.
    """

    __slots__ = ("_conn", "_id", "_stream", "local_host", "local_port", "proxy", "remote_host", "remote_port")

    def __init__(self, stream: Stream, remote: Any, local: Any, conn: Any = None) -> None:
        self._stream = stream
        self._conn = conn  # the dispatcher's Connection: start_tls needs it
        if isinstance(local, tuple):
            self.remote_host: str = host_text(remote)
            self.remote_port: int = int(remote[1])
            self.local_host: str = host_text(local)
            self.local_port: int = int(local[1])
        else:  # a Unix domain socket: the listener's path, no ports (peers are unnamed)
            self.remote_host = str(remote or "")
            self.remote_port = 0
            self.local_host = str(local)
            self.local_port = 0
        self._id: str | None = None
        #: What the PROXY protocol header said (``gtcp.ProxyInfo``), on a
        #: listener with ``proxy_protocol``; ``None`` otherwise.
        self.proxy: ProxyInfo | None = None

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
        """True once this side closed the connection: ``close()``, a failed write, a stop, or
        the end of the connection (before ``on_close`` runs); every later operation raises
        ``ClosedError``.

        The peer's EOF alone does not close it: during ``on_eof`` the peer may
        only have half-closed, and writes still go out. The same as ``Client.closed``.
        """
        return self._stream.closed

    def write_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Send the whole of *data* to the peer, raw (never framed), or raise.

        Raises ``ClosedError`` if the connection is closed, ``WriteError`` if
        the OS refuses the write, ``WriteTimeoutError`` if the peer does not
        take the bytes within the listener's ``write_timeout`` (the
        connection is then closed). Writes from several greenlets never
        interleave, and replies queued for earlier frames go out first.
        Errors raised here are not also passed to ``on_error``.
        """
        self._stream.write(data)

    def write_frame(self, frame: Any) -> None:
        """Encode *frame* with the connection's framing and send it, or raise.

        Raises ``gtcp.Error`` when the connection has no framing, whatever
        the codec's ``encode`` raises for a frame it cannot encode, and the
        errors of :meth:`write_bytes`.
        """
        codec = self._stream.codec
        if codec is None:
            raise Error("write_frame() needs framing: set framing= on the Listener or caller.framing")
        self._stream.write(codec.encode(frame))

    @property
    def framing(self) -> Codec | None:
        """The codec that cuts what the peer sends into frames, or ``None`` (raw chunks).

        Set it during a callback to switch codec for the bytes that follow,
        the ones already buffered included; what that callback returns is
        encoded with the codec in effect when it returns.
        """
        return self._stream.codec  # type: ignore[no-any-return]

    @framing.setter
    def framing(self, codec: Codec | None) -> None:
        self._stream.codec = check_codec(codec, "framing")

    def send_eof(self) -> None:
        """Shut this side's writing (TLS: close_notify) and keep reading until the peer's EOF.

        Replies queued for earlier frames go out first. Later writes raise
        ``ClosedError``; a second call does nothing; after ``close()`` it
        raises ``ClosedError``.
        """
        self._stream.send_eof()

    def start_tls(self, secure_socket: Any) -> None:
        """Upgrade this connection to TLS (STARTTLS), from one of its callbacks.

        *secure_socket* is a ``ListenerSecureSocket`` (or a dict of one),
        whose context is built once per record and reused, or a server-side
        ``ssl.SSLContext``, used as it is. Write the protocol's
        "go ahead" first; replies queued for earlier frames go out in
        plaintext before the handshake, and plaintext already received past
        the upgrade point is discarded (logged at WARNING), never delivered
        as if it had come over TLS. Returns once the handshake is done, after
        which ``tls`` is set and framing carries on. Raises ``TLSError`` (the
        connection then closes) and ``gtcp.Error`` when the connection is
        already TLS or this is not one of its callbacks.
        """
        if self._conn is None:
            raise Error("start_tls() is not available on this caller")
        self._conn.start_tls(secure_socket)

    def close(self) -> None:
        """Close the connection gracefully; idempotent. ``on_close`` runs once."""
        self._stream.close()

    def __repr__(self) -> str:
        return (
            f"<gtcp.Caller {self.id} {self.remote_host}:{self.remote_port}"
            f"{' closed' if self.closed else ''}>"
        )
