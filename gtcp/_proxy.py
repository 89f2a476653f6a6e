"""The PROXY protocol, versions 1 and 2 (HAProxy's ``proxy-protocol.txt``), receiving side.

A load balancer in TCP mode (HAProxy ``send-proxy``/``send-proxy-v2``, AWS
NLB, nginx ``proxy_protocol on``) opens its own connection to the server, so
the socket's peer is the balancer. It therefore sends one header first, naming
the client it is relaying. The listener reads that header before TLS and
before ``on_connect`` (option ``proxy_protocol=``), and the service sees the
client's address in ``caller.remote_host``/``remote_port`` and the rest in
``caller.proxy`` (a :class:`ProxyInfo`).

:func:`decode` is written for a buffer that grows as bytes arrive: it returns
``None`` while the header is incomplete, ``(info, end)`` once it is whole,
and raises :class:`BadHeader` as soon as the bytes cannot be the start of a
valid header. Whatever follows the header (often the client's first bytes or
its TLS ClientHello, in the same segment) stays in the buffer, untouched.

Limits: a v1 header is at most 107 bytes (the specification's maximum); a v2
header at most ``MAX_V2_LENGTH`` bytes after its 16-byte preamble. A v2
``CRC32C`` TLV, when present, is checked.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["MODES", "BadHeader", "ProxyInfo", "check_mode", "decode", "encode_v1", "encode_v2", "is_trusted",
           "trusted_networks"]

#: The values of the listener option ``proxy_protocol`` (besides ``None``).
MODES = ("v1", "v2", "any")

V1_PREFIX = b"PROXY "
#: The v1 maximum, CRLF included ("PROXY TCP6 " + two full IPv6 addresses + two ports).
V1_MAX_LENGTH = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: Longest v2 header gtcp accepts after the 16-byte preamble: addresses plus
#: TLVs. What HAProxy sends with every ``proxy-v2-options`` set is a few hundred
#: bytes; the format allows 65535.
MAX_V2_LENGTH = 4096

#: v2 address families: (name for STREAM, name for DGRAM, address block length).
_V2_FAMILIES = {
    0x1: ("TCP4", "UDP4", 12),
    0x2: ("TCP6", "UDP6", 36),
    0x3: ("UNIX", "UNIX_DGRAM", 216),
}
_PP2_TYPE_CRC32C = 0x03


class BadHeader(Exception):
    """The bytes are not a valid PROXY header (the message says why)."""


@dataclass(frozen=True)
class ProxyInfo:
    """What a PROXY protocol header said about a connection: ``caller.proxy``.

    ``command`` is ``"PROXY"`` (relayed: ``source_*`` is the client, as the
    proxy reported it, and ``caller.remote_host``/``remote_port`` are set
    from it) or ``"LOCAL"`` (a v2 ``LOCAL`` header, sent by health checks, or
    v1 ``UNKNOWN``: no addresses, the connection keeps the socket's own).
    ``family`` is ``"TCP4"``, ``"TCP6"``, ``"UDP4"``, ``"UDP6"``, ``"UNIX"``,
    ``"UNIX_DGRAM"`` or ``"UNKNOWN"``. ``destination_*`` is the address the
    client connected to (on the proxy). ``proxy_host``/``proxy_port`` are the
    proxy's own address (the socket's peer). ``tlvs`` holds the v2
    type-length-value fields in order, as ``(type, value)`` pairs; see
    :meth:`tlv`. For a Unix address the host is the path and the port 0.
    """

    version: int
    command: str
    family: str
    source_host: str | None = None
    source_port: int | None = None
    destination_host: str | None = None
    destination_port: int | None = None
    proxy_host: str = ""
    proxy_port: int = 0
    tlvs: tuple[tuple[int, bytes], ...] = ()

    #: Well-known TLV types (``proxy-protocol.txt`` section 2.2).
    PP2_TYPE_ALPN = 0x01
    PP2_TYPE_AUTHORITY = 0x02
    PP2_TYPE_CRC32C = 0x03
    PP2_TYPE_NOOP = 0x04
    PP2_TYPE_UNIQUE_ID = 0x05
    PP2_TYPE_SSL = 0x20
    PP2_TYPE_NETNS = 0x30

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type *kind* (``ProxyInfo.PP2_TYPE_AUTHORITY``...), or ``None``."""
        for found, value in self.tlvs:
            if found == kind:
                return value
        return None


def check_mode(value: object) -> str | None:
    """The ``proxy_protocol`` option, checked: None, "v1", "v2" or "any"."""
    if value is None or (isinstance(value, str) and value in MODES):
        return value
    raise _config_error(f"proxy_protocol must be None, 'v1', 'v2' or 'any', got {value!r}")


def trusted_networks(value: object) -> tuple[Any, ...] | None:
    """The ``trusted_proxies`` option as a tuple of ``ipaddress`` networks (None: any peer)."""
    if value is None:
        return None
    entries = [value] if isinstance(value, (str, ipaddress.IPv4Address, ipaddress.IPv6Address,
                                            ipaddress.IPv4Network, ipaddress.IPv6Network)) else value
    try:
        items = list(entries)  # type: ignore[call-overload]
    except TypeError:
        raise _config_error(f"trusted_proxies must be addresses or networks, got {value!r}") from None
    networks = []
    for entry in items:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except (TypeError, ValueError):
            raise _config_error(f"trusted_proxies: {entry!r} is not an IP address or network") from None
    if not networks:
        raise _config_error("trusted_proxies is empty: no peer could connect (use None for any)")
    return tuple(networks)


def is_trusted(host: str, networks: tuple[Any, ...] | None) -> bool:
    """True if the peer *host* (text, IPv4-mapped IPv6 already as IPv4) is in *networks*."""
    if networks is None:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


def _config_error(message: str) -> Exception:
    from ._errors import ConfigError

    return ConfigError(message)


# -- decoding ----------------------------------------------------------------


def decode(buffer: bytes | bytearray, start: int, mode: str) -> tuple[ProxyInfo, int] | None:
    """Decode a header at ``buffer[start:]`` for *mode* ("v1", "v2" or "any").

    ``None`` if more bytes are needed, ``(info, end)`` once the header is
    whole (``end``: the offset just past it), :class:`BadHeader` as soon as
    the bytes cannot start a valid header of *mode*.
    """
    available = len(buffer) - start
    if available <= 0:
        return None
    first = buffer[start]
    if first == V2_SIGNATURE[0]:  # b"\r"
        if mode == "v1":
            raise BadHeader("expected a PROXY v1 header, got a v2 one")
        return _decode_v2(buffer, start)
    if first == V1_PREFIX[0]:  # b"P"
        if mode == "v2":
            raise BadHeader("expected a PROXY v2 header, got " + _looks_like(buffer, start))
        return _decode_v1(buffer, start)
    wanted = {"v1": "a PROXY v1 header", "v2": "a PROXY v2 header"}.get(mode, "a PROXY header")
    raise BadHeader(f"expected {wanted}, got {_looks_like(buffer, start)}")


def _looks_like(buffer: bytes | bytearray, start: int) -> str:
    head = bytes(buffer[start:start + 16])
    if head.startswith(V1_PREFIX[:len(head)]) and head:
        return "a v1 one"
    return f"{head!r}"


def _decode_v1(buffer: bytes | bytearray, start: int) -> tuple[ProxyInfo, int] | None:
    limit = start + V1_MAX_LENGTH
    newline = buffer.find(b"\n", start, limit)
    if newline < 0:
        head = bytes(buffer[start:limit])
        size = min(len(head), len(V1_PREFIX))
        if head[:size] != V1_PREFIX[:size]:
            raise BadHeader(f"not a PROXY v1 header: {head[:16]!r}")
        cr = head.find(b"\r")
        if cr >= 0 and cr + 1 < len(head):
            raise BadHeader("PROXY v1 header: CR not followed by LF")
        if len(head) >= V1_MAX_LENGTH:
            raise BadHeader(f"PROXY v1 header longer than {V1_MAX_LENGTH} bytes")
        return None
    if newline == start or buffer[newline - 1] != 0x0D:
        raise BadHeader("PROXY v1 header: line does not end with CRLF")
    line = bytes(buffer[start:newline - 1])
    if not line.startswith(V1_PREFIX):
        raise BadHeader(f"not a PROXY v1 header: {line[:16]!r}")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise BadHeader("PROXY v1 header: not ASCII") from None
    if not text.isprintable():
        raise BadHeader("PROXY v1 header: control characters in the line")
    fields = text.split(" ")
    end = newline + 1
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyInfo(1, "LOCAL", "UNKNOWN"), end
    if len(fields) != 6:
        raise BadHeader(f"PROXY v1 header: expected 6 fields, got {len(fields)}: {text!r}")
    _, family, source, destination, source_port, destination_port = fields
    if family == "TCP4":
        version = 4
    elif family == "TCP6":
        version = 6
    else:
        raise BadHeader(f"PROXY v1 header: unknown protocol {family!r}")
    return ProxyInfo(
        1, "PROXY", family,
        _v1_address(source, version), _v1_port(source_port),
        _v1_address(destination, version), _v1_port(destination_port),
    ), end


def _v1_address(text: str, version: int) -> str:
    if "%" in text:  # an IPv6 zone ID: not in the v1 grammar, and free text in remote_host
        raise BadHeader(f"PROXY v1 header: bad address {text!r}")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise BadHeader(f"PROXY v1 header: bad address {text!r}") from None
    if address.version != version:
        raise BadHeader(f"PROXY v1 header: {text!r} is not an IPv{version} address")
    return _host(address)


def _v1_port(text: str) -> int:
    if not (text.isdigit() and text.isascii() and len(text) <= 5) or (len(text) > 1 and text[0] == "0"):
        raise BadHeader(f"PROXY v1 header: bad port {text!r}")
    port = int(text)
    if port > 65535:
        raise BadHeader(f"PROXY v1 header: bad port {text!r}")
    return port


def _host(address: Any) -> str:
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped if mapped is not None else address)


def _decode_v2(buffer: bytes | bytearray, start: int) -> tuple[ProxyInfo, int] | None:
    head = bytes(buffer[start:start + 16])
    signature = head[:12]
    if not V2_SIGNATURE.startswith(signature):
        raise BadHeader("PROXY v2 header: bad signature")
    if len(head) < 16:
        if len(head) > 12 and head[12] >> 4 != 2:
            raise BadHeader(f"PROXY v2 header: unsupported version {head[12] >> 4}")
        return None
    version_command, family_protocol, length = struct.unpack_from("!BBH", head, 12)
    if version_command >> 4 != 2:
        raise BadHeader(f"PROXY v2 header: unsupported version {version_command >> 4}")
    command = version_command & 0x0F
    if command > 1:
        raise BadHeader(f"PROXY v2 header: unknown command {command}")
    if length > MAX_V2_LENGTH:
        raise BadHeader(f"PROXY v2 header: {length} bytes of addresses and TLVs, more than {MAX_V2_LENGTH}")
    end = start + 16 + length
    if len(buffer) < end:
        return None
    body = bytes(buffer[start + 16:start + 16 + min(length, 216)])
    family_code, protocol = family_protocol >> 4, family_protocol & 0x0F
    if family_code > 3 or protocol > 2:
        raise BadHeader(f"PROXY v2 header: unknown address family/protocol 0x{family_protocol:02x}")
    known = _V2_FAMILIES.get(family_code)
    block = known[2] if known is not None else 0
    if command == 1 and known is not None and protocol != 0:
        if length < block:
            raise BadHeader(f"PROXY v2 header: {length} bytes, too short for its addresses ({block})")
        family = known[0] if protocol == 1 else known[1]
        source, source_port, destination, destination_port = _v2_addresses(family_code, body)
        tlvs = _tlvs(buffer, start, end, 16 + block)
        info = ProxyInfo(2, "PROXY", family, source, source_port, destination, destination_port, tlvs=tlvs)
    else:
        # LOCAL (health checks), or PROXY with an UNSPEC family or protocol:
        # the addresses are ignored and the socket's own are used.
        tlvs = _tlvs(buffer, start, end, 16 + block) if length >= block else ()
        info = ProxyInfo(2, "LOCAL", "UNKNOWN", tlvs=tlvs)
    return info, end


def _v2_addresses(family: int, body: bytes) -> tuple[str, int, str, int]:
    if family == 0x1:
        source = ipaddress.IPv4Address(body[0:4])
        destination = ipaddress.IPv4Address(body[4:8])
        source_port, destination_port = struct.unpack_from("!HH", body, 8)
        return str(source), source_port, str(destination), destination_port
    if family == 0x2:
        source6 = ipaddress.IPv6Address(body[0:16])
        destination6 = ipaddress.IPv6Address(body[16:32])
        source_port, destination_port = struct.unpack_from("!HH", body, 32)
        return _host(source6), source_port, _host(destination6), destination_port
    return _unix_path(body[0:108]), 0, _unix_path(body[108:216]), 0


def _unix_path(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")


def _tlvs(buffer: bytes | bytearray, start: int, end: int, offset: int) -> tuple[tuple[int, bytes], ...]:
    """The TLVs of the header ``buffer[start:end]``, from *offset* on (a CRC32C one is checked)."""
    found = []
    pos = start + offset
    crc_at, crc_value = -1, b""
    while pos < end:
        if pos + 3 > end:
            raise BadHeader("PROXY v2 header: truncated TLV")
        kind, size = buffer[pos], (buffer[pos + 1] << 8) | buffer[pos + 2]
        if pos + 3 + size > end:
            raise BadHeader(f"PROXY v2 header: TLV 0x{kind:02x} of {size} bytes overruns the header")
        value = bytes(buffer[pos + 3:pos + 3 + size])
        if kind == _PP2_TYPE_CRC32C:
            if crc_at >= 0:  # one check per header: a CRC in pure Python is not free
                raise BadHeader("PROXY v2 header: more than one CRC32C TLV")
            crc_at = pos + 3 - start
            crc_value = value
        found.append((kind, value))
        pos += 3 + size
    if crc_at >= 0:
        _check_crc(bytes(buffer[start:end]), crc_at, crc_value)
    return tuple(found)


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as the v2 ``CRC32C`` TLV carries it."""
    crc = 0xFFFFFFFF
    table = _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _check_crc(header: bytes, at: int, value: bytes) -> None:
    """Check the CRC32C TLV whose value is at ``header[at:at + 4]``."""
    if len(value) != 4:
        raise BadHeader("PROXY v2 header: CRC32C TLV is not 4 bytes")
    zeroed = header[:at] + b"\x00\x00\x00\x00" + header[at + 4:]
    if crc32c(zeroed) != struct.unpack("!I", value)[0]:
        raise BadHeader("PROXY v2 header: CRC32C mismatch")


# -- encoding (for tests and test peers) ----------------------------------------


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None = None) -> bytes:
    """A v1 header relaying *source* to *destination* (``None``: ``PROXY UNKNOWN``)."""
    if source is None:
        return b"PROXY UNKNOWN\r\n"
    destination = destination or (("::1" if ":" in source[0] else "127.0.0.1"), 0)
    family = "TCP6" if ipaddress.ip_address(source[0]).version == 6 else "TCP4"
    return (f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n").encode("ascii")


def encode_v2(source: tuple[str, int] | None, destination: tuple[str, int] | None = None,
              tlvs: tuple[tuple[int, bytes], ...] = (), *, crc: bool = False) -> bytes:
    """A v2 header: ``PROXY`` for *source* to *destination*, or ``LOCAL`` when *source* is None.

    *tlvs* are appended in order; with *crc* a ``CRC32C`` TLV is added and filled in.
    """
    if source is None:
        command, family, block = 0x20, 0x00, b""
    else:
        address = ipaddress.ip_address(source[0])
        destination = destination or (("::1" if address.version == 6 else "127.0.0.1"), 0)
        target = ipaddress.ip_address(destination[0])
        command = 0x21
        family = 0x11 if address.version == 4 else 0x21
        block = address.packed + target.packed + struct.pack("!HH", source[1], destination[1])
    extra = b"".join(struct.pack("!BH", kind, len(value)) + value for kind, value in tlvs)
    if crc:
        extra += b"\x03\x00\x04\x00\x00\x00\x00"
    header = V2_SIGNATURE + struct.pack("!BBH", command, family, len(block) + len(extra)) + block + extra
    if crc:
        header = header[:-4] + struct.pack("!I", crc32c(header))
    return header
