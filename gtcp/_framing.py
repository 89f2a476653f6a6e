"""Framing: codecs that cut a byte stream into messages, and back.

Theory of operation
-------------------
A codec is sans-I/O (as h11's ``receive_data``/``next_event``): it never sees
a socket, only bytes. The stream that owns the connection keeps *one* read
buffer; a codec is asked, again and again, "is there a whole frame at
``buffer[start:]``?" and answers with the frame and where it ends, or with
``None`` when more bytes are needed. Because the buffer belongs to the
stream and not to the codec, codecs hold no per-connection state: one frozen
codec serves every connection, switching codec mid-connection is a plain
assignment (the bytes already buffered are simply decoded by the new one),
and ``Client.read_exactly``/``read_until``/``read_bytes`` share the same
buffer as ``read_frame``.

Memory is bounded by the codec: ``decode`` raises :class:`FrameTooLongError`
as soon as the buffered bytes show that the frame cannot fit ``max_length``,
so a peer that never sends a delimiter makes gtcp hold at most
``max_length`` plus one read. The delimiter scans are bounded by the same
window, so they do not grow with what is buffered.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Literal

from ._errors import ConfigError, FrameTooLongError

__all__ = [
    "DEFAULT_MAX_LENGTH", "Codec", "Delimited", "FixedSize", "LengthPrefixed", "Lines", "check_codec",
    "frame_bytes",
]

#: Default longest frame for the delimiter codecs and the client's
#: ``read_until``/``read_line``: a generous line, and what one read returns.
DEFAULT_MAX_LENGTH = 65536

#: Default longest frame of :class:`LengthPrefixed`: big enough for real
#: payloads, small enough that a hostile header cannot make gtcp buffer GBs.
DEFAULT_MAX_PREFIXED = 16 * 1024 * 1024


class Codec:
    """The codec interface: bytes in, frames out; frame in, bytes out.

    Subclass it (or write any object with these two methods) to frame your
    own protocol, and pass it as ``framing=`` to a ``Listener`` or
    ``Client``. A codec should hold no per-connection state: the stream owns
    the read buffer, and one codec object may serve many connections.

    ``decode(buffer, start)`` looks for one whole frame in
    ``buffer[start:]`` (``buffer`` is ``bytes`` or ``bytearray``; read it,
    never modify or keep it). Return ``(frame, end)``, where ``end`` is the
    offset just past the frame's last byte, or ``None`` if more bytes are
    needed. Raise :class:`gtcp.FrameTooLongError` as soon as the buffered
    bytes show the frame is too long, so that memory stays bounded. The
    frame is usually ``bytes``, but may be any object (a parsed command).

    ``encode(frame)`` returns the bytes to send for one frame (what
    ``on_bytes`` returned, or what ``write_frame`` was given).
    """

    __slots__ = ()

    def decode(self, buffer: bytes | bytearray, start: int) -> tuple[Any, int] | None:
        """One whole frame at ``buffer[start:]`` and its end offset, or ``None``."""
        raise NotImplementedError(f"{type(self).__name__} must define decode(buffer, start)")

    def encode(self, frame: Any) -> bytes:
        """The bytes that carry *frame*."""
        raise NotImplementedError(f"{type(self).__name__} must define encode(frame)")


def check_codec(value: object, name: str = "framing") -> Codec | None:
    """Return *value* if it is ``None`` or a codec, else raise ``ConfigError``."""
    if value is None:
        return None
    if isinstance(value, type):
        raise ConfigError(f"{name} takes a codec instance, not the class {value.__name__}: "
                          f"pass {value.__name__}(...)")
    if not (callable(getattr(value, "decode", None)) and callable(getattr(value, "encode", None))):
        raise ConfigError(f"{name} must be a codec (gtcp.Lines(), gtcp.LengthPrefixed(), ... or an "
                          f"object with decode(buffer, start) and encode(frame)), got {value!r}")
    return value  # type: ignore[return-value]


def frame_bytes(frame: object) -> bytes | bytearray | memoryview:
    """*frame* if it is bytes-like, else a ``TypeError`` naming its type."""
    if isinstance(frame, (bytes, bytearray)):
        return frame
    if isinstance(frame, str):
        raise TypeError("a frame must be bytes, not str: encode it first (data.encode())")
    try:
        return memoryview(frame).cast("B")  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"a frame must be a bytes-like object, not {type(frame).__name__!r}") from None


def _check_max_length(value: object, name: str = "max_length") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")


def _too_long(limit: int, size: int | None = None) -> FrameTooLongError:
    if size is None:
        return FrameTooLongError(f"Frame too long: more than max_length ({limit} bytes)", limit)
    return FrameTooLongError(
        f"Frame too long: {size} bytes announced, more than max_length ({limit} bytes)", limit
    )


@dataclass(frozen=True, slots=True)
class Lines(Codec):
    """Lines: a frame ends at ``b"\\n"``; one ``b"\\r"`` before it is stripped too.

    Frames are delivered without their ending. ``ending`` (``b"\\n"`` or
    ``b"\\r\\n"``) is what encoding appends. ``max_length`` counts the
    line's own bytes, not its ending.
    """

    max_length: int = DEFAULT_MAX_LENGTH
    ending: bytes = b"\n"

    def __post_init__(self) -> None:
        _check_max_length(self.max_length)
        if self.ending not in (b"\n", b"\r\n"):
            raise ConfigError(f"ending must be b'\\n' or b'\\r\\n', got {self.ending!r}")

    def decode(self, buffer: bytes | bytearray, start: int) -> tuple[bytes, int] | None:
        """The line at ``buffer[start:]`` without its ending, or ``None``."""
        limit = self.max_length
        # A line of max_length bytes may still be followed by b"\r\n".
        end = buffer.find(10, start, start + limit + 2)  # 10: b"\n" (an int: memchr)
        if end < 0:
            if len(buffer) - start >= limit + 2:
                raise _too_long(limit)
            return None
        stop = end - 1 if end > start and buffer[end - 1] == 13 else end
        if stop - start > limit:
            raise _too_long(limit)
        frame = buffer[start:stop]
        return (frame if type(frame) is bytes else bytes(frame)), end + 1

    def encode(self, frame: Any) -> bytes:
        """*frame* plus ``ending``.

        ``ValueError`` if it holds a ``b"\\n"`` (it would arrive as two
        frames) or ends with ``b"\\r"`` (decoding would strip it).
        """
        data = frame if type(frame) is bytes else bytes(frame_bytes(frame))
        # 10 in data: memchr; b"\n" in data takes CPython's slower substring path.
        if 10 in data or (data and data[-1] == 13):
            raise ValueError("a line frame must not contain b'\\n' nor end with b'\\r': "
                             "it would not arrive as sent")
        return data + self.ending


@dataclass(frozen=True, slots=True)
class Delimited(Codec):
    """Frames separated by ``delimiter`` (any non-empty bytes); delivered without it.

    ``max_length`` counts the frame's own bytes, not the delimiter.
    """

    delimiter: bytes
    max_length: int = DEFAULT_MAX_LENGTH

    def __post_init__(self) -> None:
        if not isinstance(self.delimiter, bytes) or not self.delimiter:
            raise ConfigError(f"delimiter must be non-empty bytes, got {self.delimiter!r}")
        _check_max_length(self.max_length)

    def decode(self, buffer: bytes | bytearray, start: int) -> tuple[bytes, int] | None:
        """The frame at ``buffer[start:]`` without the delimiter, or ``None``."""
        delimiter = self.delimiter
        window = self.max_length + len(delimiter)
        end = buffer.find(delimiter, start, start + window)
        if end < 0:
            if len(buffer) - start >= window:
                raise _too_long(self.max_length)
            return None
        frame = buffer[start:end]
        return (frame if type(frame) is bytes else bytes(frame)), end + len(delimiter)

    def encode(self, frame: Any) -> bytes:
        """*frame* plus the delimiter; ``ValueError`` if it holds the delimiter."""
        data = frame_bytes(frame)
        if self.delimiter in data:
            raise ValueError(f"a frame must not contain the delimiter {self.delimiter!r}: "
                             "it would arrive as two frames")
        return bytes(data) + self.delimiter


_HEADER_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}


@dataclass(frozen=True, slots=True)
class LengthPrefixed(Codec):
    """Frames preceded by their length: an unsigned ``header_size``-byte integer.

    ``header_size`` is 1, 2, 4 or 8; ``byteorder`` ``"big"`` (network order)
    or ``"little"``. A header announcing more than ``max_length`` raises
    :class:`gtcp.FrameTooLongError` at once, before any payload is buffered;
    so does encoding a frame the header cannot express.
    """

    header_size: int = 4
    byteorder: Literal["big", "little"] = "big"
    max_length: int = DEFAULT_MAX_PREFIXED
    _header: struct.Struct = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.header_size not in _HEADER_FORMATS or isinstance(self.header_size, bool):
            raise ConfigError(f"header_size must be 1, 2, 4 or 8, got {self.header_size!r}")
        if self.byteorder not in ("big", "little"):
            raise ConfigError(f"byteorder must be 'big' or 'little', got {self.byteorder!r}")
        _check_max_length(self.max_length)
        order = ">" if self.byteorder == "big" else "<"
        object.__setattr__(self, "_header", struct.Struct(order + _HEADER_FORMATS[self.header_size]))

    def decode(self, buffer: bytes | bytearray, start: int) -> tuple[bytes, int] | None:
        """The payload at ``buffer[start:]``, or ``None``."""
        begin = start + self.header_size
        if len(buffer) < begin:
            return None
        (size,) = self._header.unpack_from(buffer, start)
        if size > self.max_length:
            raise _too_long(self.max_length, size)
        end = begin + size
        if len(buffer) < end:
            return None
        frame = buffer[begin:end]
        return (frame if type(frame) is bytes else bytes(frame)), end

    def encode(self, frame: Any) -> bytes:
        """The header and *frame*; ``FrameTooLongError`` if the header cannot hold its length."""
        data = frame if type(frame) is bytes else frame_bytes(frame)
        size = len(data)  # a memoryview from frame_bytes is cast to bytes: len is its size
        if size >= 1 << (8 * self.header_size):
            raise FrameTooLongError(
                f"Frame too long: {size} bytes do not fit a {self.header_size}-byte length header",
                (1 << (8 * self.header_size)) - 1,
            )
        return self._header.pack(size) + data


@dataclass(frozen=True, slots=True)
class FixedSize(Codec):
    """Frames of exactly ``size`` bytes."""

    size: int

    def __post_init__(self) -> None:
        _check_max_length(self.size, "size")

    @property
    def max_length(self) -> int:
        """The frame size: the longest (and only) length."""
        return self.size

    def decode(self, buffer: bytes | bytearray, start: int) -> tuple[bytes, int] | None:
        """The next ``size`` bytes, or ``None``."""
        end = start + self.size
        if len(buffer) < end:
            return None
        return bytes(buffer[start:end]), end

    def encode(self, frame: Any) -> bytes:
        """*frame* itself; ``ValueError`` unless it is exactly ``size`` bytes."""
        data = frame_bytes(frame)
        size = len(data) if not isinstance(data, memoryview) else data.nbytes
        if size != self.size:
            raise ValueError(f"a FixedSize({self.size}) frame must be {self.size} bytes, got {size}")
        return bytes(data)
