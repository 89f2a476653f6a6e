"""The exceptions gtcp raises: the Python face of Ballerina's ``tcp:Error``.

Every failure the library reports is a :class:`Error`. The subclasses are named
by what the caller can do about them, and each docstring says how it differs
from its neighbours. Where a builtin exception already means the same thing
(``ValueError``, ``ConnectionError``, ``TimeoutError``) the class also derives
from it, so ``except TimeoutError`` keeps working in code that knows nothing of
gtcp. The low-level cause is always chained (``raise ... from exc``).

``gevent.Timeout``, ``GreenletExit`` and ``KeyboardInterrupt`` are never caught
or wrapped by gtcp: they are not errors, they are control flow.
"""

from __future__ import annotations

__all__ = [
    "ClosedError",
    "ConfigError",
    "ConnectError",
    "Error",
    "FrameTooLongError",
    "ListenerError",
    "PeerClosedError",
    "ReadTimeoutError",
    "TLSError",
    "WriteError",
    "WriteTimeoutError",
]

CLOSED_MESSAGE = "Socket connection already closed."
PEER_CLOSED_MESSAGE = "Connection closed by the server."
READ_TIMEOUT_MESSAGE = "Read timed out"
WRITE_TIMEOUT_MESSAGE = "Write timed out"
SEND_FAILED_MESSAGE = "Failed to send data."


class Error(Exception):
    """Base class of every error gtcp reports (Ballerina's ``tcp:Error``).

    ``str(err)`` is the message. An ``on_bytes`` callback may also *return* an
    ``Error`` (Ballerina's ``return error(...)`` idiom): it is logged and the
    connection stays open.
    """


class ConfigError(Error, ValueError):
    """An argument or configuration record is invalid.

    Raised when the object is built (``Listener(...)``, ``CertKey(...)``...),
    never later, so a bad configuration fails before any socket is opened.
    """


class ConnectError(Error, ConnectionError):
    """``Client(...)`` could not connect: refused, unresolvable, timed out.

    The message is ``"Unable to connect with remote host: <cause>"``. A TLS
    handshake failure after the TCP connection succeeded is a :class:`TLSError`
    instead.
    """


class ListenerError(Error):
    """``Listener.start()`` could not bind its address.

    The message is ``"Error initializing the server: <cause>"``: the port is in
    use, the address is not local, or the host name does not resolve.
    """


class TLSError(Error):
    """TLS could not be set up: a handshake failed or a key/cert file is bad.

    Handshake failures carry the TLS library's reason. Context failures read
    ``"Failed to initialize the SSL context: <cause>"`` and name the file.
    """


class ClosedError(Error):
    """*You* (or a stop, or an earlier write timeout) closed this connection.

    The message is always ``"Socket connection already closed."``. Compare
    :class:`PeerClosedError`, where the *peer* ended it.
    """

    def __init__(self, message: str = CLOSED_MESSAGE) -> None:
        super().__init__(message)


class PeerClosedError(Error, ConnectionError):
    """The *peer* ended the connection (EOF or reset).

    On EOF the message is ``"Connection closed by the server."``; on a reset,
    the operating system's reason. Once raised, every later read raises it
    again: a read never returns ``b""``.

    When the EOF came in the middle of a frame (``read_exactly``,
    ``read_until``, ``read_line``, ``read_frame``, or a listener's framing),
    the message also says how many bytes of the incomplete frame were left,
    and ``partial`` holds them; it is ``b""`` on every other
    ``PeerClosedError``.
    """

    def __init__(self, message: str = PEER_CLOSED_MESSAGE, partial: bytes = b"") -> None:
        super().__init__(message)
        self.partial = partial

    @classmethod
    def mid_frame(cls, partial: bytes) -> PeerClosedError:
        """The EOF error for a frame left incomplete by *partial* bytes."""
        return cls(f"{PEER_CLOSED_MESSAGE} {len(partial)} byte(s) of an incomplete frame were left.",
                   partial)


class FrameTooLongError(Error, ValueError):
    """A frame is longer than the codec's ``max_length`` (the message names it).

    Raised by a codec as soon as the buffered bytes (or a length header) show
    it, so memory stays bounded. A client read that raises it consumes
    nothing and the client stays open; on a listener it goes to
    ``on_error`` and the connection closes. ``limit`` is the limit that was
    exceeded. Also raised when a frame cannot be encoded (a length header too
    small for it).
    """

    def __init__(self, message: str, limit: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit


class ReadTimeoutError(Error, TimeoutError):
    """No byte arrived within the read timeout.

    Nothing was consumed and the connection is still usable: read again.
    """

    def __init__(self, message: str = READ_TIMEOUT_MESSAGE) -> None:
        super().__init__(message)


class WriteTimeoutError(Error, TimeoutError):
    """A write did not complete within the write timeout.

    Part of the data may have been sent, so the byte stream is no longer in a
    known state: the connection has been closed.
    """

    def __init__(self, message: str = WRITE_TIMEOUT_MESSAGE) -> None:
        super().__init__(message)


class WriteError(Error, ConnectionError):
    """The operating system refused a write (broken pipe, reset).

    The message is ``"Failed to write data: <cause>"`` (or ``"Failed to send
    data."`` when reported to ``on_error`` for a reply that could not be sent).
    """
