"""PROXY protocol v1 and v2 (listener option ``proxy_protocol``): the parser and the listener.

The parser is checked on its own (every valid form, every malformed form,
headers split at every byte, hypothesis fuzzing); the listener with real
sockets: addresses from the header, ``caller.proxy``, LOCAL and UNKNOWN,
a TLS ClientHello in the header's segment, and the refusals (one log line,
no callback). HAProxy itself is in ``test_haproxy.py``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct

import gevent
import gevent.socket
import pytest
from conftest import LONG
from gevent.queue import Queue
from helpers import recv_all, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

import gtcp
from gtcp import _dispatch
from gtcp._proxy import V2_SIGNATURE, BadHeader, ProxyInfo, decode, encode_v1, encode_v2

# -- the parser ------------------------------------------------------------------


def test_v1_tcp4_and_tcp6():
    info, end = decode(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET", 0, "v1")
    assert end == len(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n")
    assert (info.version, info.command, info.family) == (1, "PROXY", "TCP4")
    assert (info.source_host, info.source_port) == ("192.0.2.1", 56324)
    assert (info.destination_host, info.destination_port) == ("198.51.100.2", 443)
    info, _ = decode(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n", 0, "any")
    assert (info.family, info.source_host, info.destination_port) == ("TCP6", "2001:db8::1", 65535)


def test_v1_unknown_is_local():
    info, end = decode(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nrest", 0, "v1")
    assert (info.command, info.family, info.source_host) == ("LOCAL", "UNKNOWN", None)
    assert end == len(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")


def test_v2_tcp4_tcp6_local_and_tlvs():
    header = encode_v2(("203.0.113.7", 40000), ("198.51.100.1", 25),
                       ((ProxyInfo.PP2_TYPE_AUTHORITY, b"mail.example"), (ProxyInfo.PP2_TYPE_NOOP, b"")))
    info, end = decode(b"ab" + header + b"EHLO", 2, "v2")
    assert end == 2 + len(header)
    assert (info.version, info.command, info.family) == (2, "PROXY", "TCP4")
    assert (info.source_host, info.source_port, info.destination_port) == ("203.0.113.7", 40000, 25)
    assert info.tlv(ProxyInfo.PP2_TYPE_AUTHORITY) == b"mail.example"
    assert info.tlv(ProxyInfo.PP2_TYPE_ALPN) is None
    assert info.tlvs == ((2, b"mail.example"), (4, b""))
    info, _ = decode(encode_v2(("2001:db8::7", 1), ("2001:db8::8", 2)), 0, "any")
    assert (info.family, info.source_host, info.destination_host) == ("TCP6", "2001:db8::7", "2001:db8::8")
    info, end = decode(encode_v2(None), 0, "v2")
    assert (info.command, info.family, end) == ("LOCAL", "UNKNOWN", 16)


def test_v2_unix_udp_and_unspec():
    block = b"/run/a.sock".ljust(108, b"\0") + b"/run/b.sock".ljust(108, b"\0")
    header = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x31, len(block)) + block
    info, _ = decode(header, 0, "v2")
    assert (info.family, info.source_host, info.source_port, info.destination_host) == (
        "UNIX", "/run/a.sock", 0, "/run/b.sock")
    udp = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x12, 12) + bytes(range(12))
    assert decode(udp, 0, "v2")[0].family == "UDP4"
    # PROXY over AF_UNSPEC: addresses ignored, served like LOCAL.
    unspec = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x00, 0)
    assert decode(unspec, 0, "v2")[0].command == "LOCAL"


def test_v2_crc32c_checked():
    header = encode_v2(("192.0.2.1", 5), ("192.0.2.2", 6), crc=True)
    assert decode(header, 0, "v2")[0].tlv(ProxyInfo.PP2_TYPE_CRC32C) is not None
    broken = bytearray(header)
    broken[-1] ^= 0x01
    with pytest.raises(BadHeader, match="CRC32C mismatch"):
        decode(bytes(broken), 0, "v2")


MALFORMED = [
    (b"GET / HTTP/1.1\r\n", "any", "expected a PROXY header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "v2", "expected a PROXY v2 header"),
    (encode_v2(("1.2.3.4", 1)), "v1", "expected a PROXY v1 header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "v1", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "v1", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "v1", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "v1", "CRLF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "v1", "6 fields"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "v1", "6 fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "v1", "6 fields"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "v1", "unknown protocol"),
    (b"PROXY TCP4 ::1 ::1 1 2\r\n", "v1", "not an IPv4 address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "v1", "not an IPv6 address"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "v1", "bad address"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "v1", "bad address"),
    (b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", "v1", "control characters"),
    (b"PROXY TCP4 1.2.3.4\r5.6.7", "v1", "CR not followed by LF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\t\r\n", "v1", "control characters"),
    (b"PROXY TCP4 \xc3\xa9.2.3.4 5.6.7.8 1 2\r\n", "v1", "not ASCII"),
    (b"PROXY " + b"9" * 120, "v1", "longer than 107 bytes"),
    (b"PROXX TCP4", "v1", "not a PROXY v1 header"),
    (V2_SIGNATURE[:5] + b"X", "v2", "bad signature"),
    (V2_SIGNATURE + b"\x31\x11\x00\x0c", "v2", "unsupported version 3"),
    (V2_SIGNATURE + b"\x22\x11\x00\x0c", "v2", "unknown command 2"),
    (V2_SIGNATURE + b"\x21\x41\x00\x00", "v2", "unknown address family"),
    (V2_SIGNATURE + b"\x21\x13\x00\x00", "v2", "unknown address family"),
    (V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\0" * 4, "v2", "too short for its addresses"),
    (V2_SIGNATURE + b"\x21\x11\x10\x01", "v2", "more than 4096"),
    (V2_SIGNATURE + b"\x21\x11\x00\x0e" + b"\0" * 12 + b"\x01\x00", "v2", "truncated TLV"),
    (V2_SIGNATURE + b"\x21\x11\x00\x10" + b"\0" * 12 + b"\x01\x00\x09X", "v2", "overruns the header"),
    (V2_SIGNATURE + b"\x21\x11\x00\x13" + b"\0" * 12 + b"\x03\x00\x04\0\0\0\0", "v2", "CRC32C mismatch"),
    (V2_SIGNATURE + b"\x21\x11\x00\x11" + b"\0" * 12 + b"\x03\x00\x02\0\0", "v2", "not 4 bytes"),
]


@pytest.mark.parametrize(("data", "mode", "message"), MALFORMED)
def test_malformed_headers_are_refused_as_soon_as_they_show(data, mode, message):
    with pytest.raises(BadHeader, match=message):
        decode(data, 0, mode)


VALID = [
    (encode_v1(("192.0.2.1", 4000), ("192.0.2.2", 80)), "v1"),
    (encode_v1(("2001:db8::1", 4000), ("2001:db8::2", 80)), "any"),
    (encode_v1(None), "v1"),
    (encode_v2(("192.0.2.1", 4000), ("192.0.2.2", 80), ((1, b"h2"), (2, b"example.org")), crc=True), "v2"),
    (encode_v2(("2001:db8::1", 4000), ("2001:db8::2", 80)), "any"),
    (encode_v2(None), "v2"),
]


@pytest.mark.parametrize(("header", "mode"), VALID)
def test_header_split_at_every_byte(header, mode):
    """Fed as it grows, a header is 'need more' at every prefix and whole at its end only."""
    after = b"\x16\x03\x01 next bytes"
    full = header + after
    for cut in range(len(header)):
        assert decode(full[:cut], 0, mode) is None, cut
        buffer = bytearray(b"junk" + full[:cut])
        assert decode(buffer, 4, mode) is None, cut
    for cut in range(len(header), len(full) + 1):
        _, end = decode(full[:cut], 0, mode)
        assert end == len(header)
    assert full[end:] == after


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["v1", "v2", "any"]))
def test_fuzz_random_bytes_never_crash_the_parser(data, mode):
    try:
        found = decode(data, 0, mode)
    except BadHeader:
        return
    if found is not None:
        _, end = found
        assert 0 < end <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_fuzz_mutated_headers_never_crash_the_parser(valid, data):
    header, mode = valid
    mutated = bytearray(header)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(mutated) - 1))
        mutated[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    try:
        found = decode(bytes(mutated[:cut]), 0, mode)
    except BadHeader:
        return
    if found is not None:
        assert 0 < found[1] <= cut


_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)
_port = st.integers(0, 65535)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.tuples(_ipv4, _ipv4), st.tuples(_ipv6, _ipv6)), _port, _port,
       st.lists(st.tuples(st.integers(0, 255).filter(lambda t: t != 3), st.binary(max_size=40)), max_size=4),
       st.booleans(), st.booleans())
def test_fuzz_round_trip(hosts, sport, dport, tlvs, v2, crc):
    source, destination = (hosts[0], sport), (hosts[1], dport)
    header = encode_v2(source, destination, tuple(tlvs), crc=crc) if v2 else encode_v1(source, destination)
    info, end = decode(header + b"tail", 0, "any")
    assert end == len(header)
    assert (info.command, info.source_host, info.source_port) == ("PROXY", hosts[0], sport)
    assert (info.destination_host, info.destination_port) == (hosts[1], dport)
    if v2:
        assert [t for t in info.tlvs if t[0] != 3] == tlvs


def test_options_are_checked_when_built(tmp_path):
    with pytest.raises(gtcp.ConfigError, match="proxy_protocol must be None, 'v1', 'v2' or 'any'"):
        gtcp.Listener(0, proxy_protocol="v3")
    with pytest.raises(gtcp.ConfigError, match="trusted_proxies: 'nope' is not an IP address or network"):
        gtcp.Listener(0, proxy_protocol="v2", trusted_proxies=("10.0.0.0/8", "nope"))
    with pytest.raises(gtcp.ConfigError, match="trusted_proxies is empty"):
        gtcp.Listener(0, proxy_protocol="v2", trusted_proxies=())
    with pytest.raises(gtcp.ConfigError, match="trusted_proxies needs proxy_protocol"):
        gtcp.Listener(0, trusted_proxies=("127.0.0.1",))
    with pytest.raises(gtcp.ConfigError, match="does not apply to a Unix domain socket"):
        gtcp.Listener.unix(str(tmp_path / "s"), proxy_protocol="v1", trusted_proxies=("127.0.0.1",))
    # One address as a str is one entry, not its characters.
    gtcp.Listener(0, proxy_protocol="any", trusted_proxies="127.0.0.1")


# -- the listener ----------------------------------------------------------------


class Recorder(gtcp.Service):
    """Records each caller and echoes; ``connected`` gets (caller, first bytes)."""

    def __init__(self) -> None:
        self.connected: Queue = Queue()
        self.closed: Queue = Queue()

    def on_connect(self, caller):
        service = self

        class Echo(gtcp.ConnectionService):
            def on_bytes(self, data):
                return data

            def on_close(self):
                service.closed.put(caller)

        self.connected.put(caller)
        return Echo()


def _talk(port: int, payload: bytes, reply_size: int) -> tuple[bytes, tuple[str, int]]:
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=LONG)
    try:
        sock.sendall(payload)
        got = b""
        while len(got) < reply_size:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got, sock.getsockname()
    finally:
        sock.close()


def _warnings(caplog) -> list[str]:
    """gtcp's warnings, less the watchdog's (a loaded CI machine may stall the hub; not this file's topic)."""
    return [r.getMessage() for r in caplog.records if r.name == "gtcp" and r.levelno >= logging.WARNING
            and "gevent hub" not in r.getMessage()]


@pytest.mark.parametrize("version", ["v1", "v2", "any"])
def test_remote_address_comes_from_the_header(gtcp_listener, version):
    service = Recorder()
    listener = gtcp_listener(service, proxy_protocol=version)
    encode = encode_v1 if version == "v1" else encode_v2
    header = encode(("203.0.113.9", 51000), ("198.51.100.4", 6379))
    reply, own = _talk(listener.port, header + b"PING", 4)  # the first bytes share the header's segment
    assert reply == b"PING"
    caller = service.connected.get(timeout=LONG)
    assert (caller.remote_host, caller.remote_port) == ("203.0.113.9", 51000)
    assert (caller.local_host, caller.local_port) == ("127.0.0.1", listener.port)  # the socket's own
    proxy = caller.proxy
    assert isinstance(proxy, gtcp.ProxyInfo)
    assert (proxy.command, proxy.version) == ("PROXY", 1 if version == "v1" else 2)
    assert (proxy.destination_host, proxy.destination_port) == ("198.51.100.4", 6379)
    assert (proxy.proxy_host, proxy.proxy_port) == own


def test_ipv6_client_and_tlvs(gtcp_listener):
    service = Recorder()
    listener = gtcp_listener(service, proxy_protocol="v2")
    header = encode_v2(("2001:db8::42", 443), ("2001:db8::1", 8443),
                       ((ProxyInfo.PP2_TYPE_ALPN, b"h2"), (0xE0, b"custom")), crc=True)
    assert _talk(listener.port, header + b"x", 1)[0] == b"x"
    caller = service.connected.get(timeout=LONG)
    assert (caller.remote_host, caller.remote_port) == ("2001:db8::42", 443)
    assert caller.proxy.tlv(ProxyInfo.PP2_TYPE_ALPN) == b"h2"
    assert caller.proxy.tlv(0xE0) == b"custom"


@pytest.mark.parametrize("header", [encode_v2(None), encode_v1(None)], ids=["v2-LOCAL", "v1-UNKNOWN"])
def test_local_and_unknown_keep_the_socket_addresses(gtcp_listener, header):
    service = Recorder()
    listener = gtcp_listener(service, proxy_protocol="any")
    reply, own = _talk(listener.port, header + b"health", 6)
    assert reply == b"health"
    caller = service.connected.get(timeout=LONG)
    assert caller.proxy.command == "LOCAL"
    assert (caller.remote_host, caller.remote_port) == own
    assert (caller.proxy.proxy_host, caller.proxy.proxy_port) == own


def test_header_split_at_every_byte_over_a_socket(gtcp_listener):
    """Each split point in its own connection: the two pieces are two sends (TCP_NODELAY)."""
    service = Recorder()
    listener = gtcp_listener(service, proxy_protocol="any")
    payload = encode_v2(("192.0.2.77", 1234), ("192.0.2.1", 80), ((2, b"example.net"),)) + b"hello"
    for cut in range(1, len(payload)):
        sock = gevent.socket.create_connection(("127.0.0.1", listener.port), timeout=LONG)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(payload[:cut])
            gevent.sleep(0)  # lets the server read the first piece alone (not needed for correctness)
            sock.sendall(payload[cut:])
            got = b""
            while len(got) < 5:
                chunk = sock.recv(100)
                assert chunk, cut
                got += chunk
            assert got == b"hello", cut
        finally:
            sock.close()
        caller = service.connected.get(timeout=LONG)
        assert (caller.remote_host, caller.remote_port) == ("192.0.2.77", 1234), cut


def test_framing_sees_frames_that_came_with_the_header(gtcp_listener):
    service = Recorder()
    listener = gtcp_listener(service, proxy_protocol="v1", framing=gtcp.Lines())
    reply, _ = _talk(listener.port, encode_v1(("192.0.2.5", 9)) + b"one\ntwo\n", 8)
    assert reply == b"one\ntwo\n"


@pytest.fixture(scope="module")
def tls_files(gtcp_tls):
    """The files of the plugin's TLS kit, by the names these tests use."""
    return {"ca": gtcp_tls.ca_file, "cert": gtcp_tls.cert_file, "key": gtcp_tls.key_file}


def _tls_client_hello_with_header(port: int, header: bytes, ca: str) -> bytes:
    """A TLS client whose first send is header + ClientHello, in one segment; returns the echo of b"tls"."""
    context = ssl.create_default_context(cafile=ca)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=LONG)
    try:
        first = True
        while True:
            try:
                tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            pending = outgoing.read()
            if pending:
                sock.sendall(header + pending if first else pending)
                first = False
            if done:
                break
            data = sock.recv(65536)
            assert data, "server closed during the handshake"
            incoming.write(data)
        tls.write(b"tls")
        sock.sendall(outgoing.read())
        while True:
            try:
                return tls.read(3)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                assert data
                incoming.write(data)
    finally:
        sock.close()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_tls_client_hello_in_the_header_segment_is_kept(gtcp_listener, tls_files, version):
    service = Recorder()
    secure = gtcp.ListenerSecureSocket(key=gtcp.CertKey(tls_files["cert"], tls_files["key"]))
    listener = gtcp_listener(service, proxy_protocol=version, secure_socket=secure)
    header = (encode_v1 if version == "v1" else encode_v2)(("192.0.2.8", 7000), ("192.0.2.9", 443))
    assert _tls_client_hello_with_header(listener.port, header, tls_files["ca"]) == b"tls"
    caller = service.connected.get(timeout=LONG)
    assert caller.tls is not None
    assert (caller.remote_host, caller.remote_port) == ("192.0.2.8", 7000)


BAD_INPUT = [
    ("malformed", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\nhello", "bad PROXY protocol header"),
    ("no header", b"GET / HTTP/1.0\r\n\r\n", "bad PROXY protocol header"),
    ("oversized v1", b"PROXY " + b"1" * 200, "longer than 107 bytes"),
    ("oversized v2", V2_SIGNATURE + b"\x21\x11\xff\xff" + b"\0" * 100, "more than 4096"),
    ("truncated", encode_v2(("1.2.3.4", 5))[:20], "truncated PROXY protocol header"),
]


@pytest.mark.parametrize(("payload", "message"), [case[1:] for case in BAD_INPUT],
                         ids=[case[0] for case in BAD_INPUT])
def test_bad_input_closes_with_one_log_line_and_no_callback(gtcp_listener, gtcp_log, payload, message):
    service = Recorder()
    listener = gtcp_listener(service, proxy_protocol="any")
    before = listener.stats()
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port), timeout=LONG)
    try:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""  # closed by the server, nothing sent
    finally:
        sock.close()
    _wait_closed(listener, before.closed + 1)
    assert service.connected.empty()
    warnings = _warnings(gtcp_log)
    assert len(warnings) == 1, warnings
    assert message in warnings[0]


def test_connection_closed_without_a_byte_is_one_info_line(gtcp_listener, gtcp_log):
    """A TCP health check (a Kubernetes tcpSocket probe) sends nothing: INFO, not WARNING."""
    service = Recorder()
    listener = gtcp_listener(service, proxy_protocol="v2")
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port), timeout=LONG)
    sock.close()
    _wait_closed(listener, 1)
    assert service.connected.empty()
    assert _warnings(gtcp_log) == []
    lines = [r.getMessage() for r in gtcp_log.records if r.name == "gtcp" and r.levelno == logging.INFO]
    assert len(lines) == 1 and "ended before its PROXY protocol header" in lines[0], lines


def _wait_closed(listener: gtcp.Listener, count: int) -> None:
    wait_until(lambda: listener.stats().closed >= count, f"{count} closed connection(s)")


def test_header_deadline(gtcp_listener, gtcp_log, monkeypatch, tls_files):
    monkeypatch.setattr(_dispatch, "PROXY_HEADER_TIMEOUT", 0.2)
    service = Recorder()
    listener = gtcp_listener(service, proxy_protocol="v2")
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port), timeout=LONG)
    try:
        sock.sendall(V2_SIGNATURE[:6])  # a slow-loris start
        assert recv_all(sock) == b""
    finally:
        sock.close()
    _wait_closed(listener, 1)
    assert service.connected.empty()
    assert _warnings(gtcp_log) == [f"no PROXY protocol header from 127.0.0.1:{_port_of(gtcp_log)} "
                                   "within 0.2 s; closing"]
    # A TLS listener uses its handshake timeout for the header.
    secure = gtcp.ListenerSecureSocket(key=gtcp.CertKey(tls_files["cert"], tls_files["key"]),
                                       handshake_timeout=0.3)
    tls_listener = gtcp_listener(Recorder(), proxy_protocol="v1", secure_socket=secure)
    gtcp_log.clear()
    sock = gevent.socket.create_connection(("127.0.0.1", tls_listener.port), timeout=LONG)
    try:
        assert recv_all(sock) == b""
    finally:
        sock.close()
    _wait_closed(tls_listener, 1)
    assert len(_warnings(gtcp_log)) == 1
    assert "within 0.3 s" in _warnings(gtcp_log)[0]


def _port_of(caplog) -> str:
    message = _warnings(caplog)[0]
    return message.split("127.0.0.1:")[1].split(" ")[0]


def test_untrusted_peer_is_closed_before_any_callback(gtcp_listener, gtcp_log):
    service = Recorder()
    listener = gtcp_listener(service, proxy_protocol="v1", trusted_proxies=("10.0.0.0/8", "192.168.1.1"))
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port), timeout=LONG)
    try:
        sock.sendall(encode_v1(("192.0.2.1", 1)) + b"hello")  # a valid header does not help
        assert recv_all(sock) == b""
    finally:
        sock.close()
    _wait_closed(listener, 1)
    assert service.connected.empty()
    warnings = _warnings(gtcp_log)
    assert len(warnings) == 1 and "not a trusted proxy" in warnings[0], warnings


def test_trusted_peer_is_served(gtcp_listener):
    service = Recorder()
    listener = gtcp_listener(service, proxy_protocol="v1", trusted_proxies=("10.0.0.0/8", "127.0.0.0/8"))
    assert _talk(listener.port, encode_v1(("192.0.2.1", 1)) + b"ok", 2)[0] == b"ok"
    assert service.connected.get(timeout=LONG).remote_host == "192.0.2.1"


def test_trusted_ipv6_peer_on_a_dual_stack_listener(gtcp_listener):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    service = Recorder()
    try:
        listener = gtcp_listener(service, local_host="::1", proxy_protocol="v2", trusted_proxies=("::1",))
    except gtcp.ListenerError:
        pytest.skip("::1 cannot be bound here")
    sock = gevent.socket.create_connection(("::1", listener.port), timeout=LONG)
    try:
        sock.sendall(encode_v2(("192.0.2.3", 3)) + b"6")
        assert sock.recv(1) == b"6"
    finally:
        sock.close()
    assert service.connected.get(timeout=LONG).proxy.proxy_host == "::1"


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_health_check_closing_after_the_header_is_debug_only(gtcp_listener, gtcp_log, tls_files, reset, tls):
    """What HAProxy's ``check`` with ``check-send-proxy`` does: a header, then a close or reset."""
    service = Recorder()
    options = {}
    if tls:
        options["secure_socket"] = gtcp.ListenerSecureSocket(
            key=gtcp.CertKey(tls_files["cert"], tls_files["key"]))
    listener = gtcp_listener(service, proxy_protocol="v2", **options)
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port), timeout=LONG)
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.sendall(encode_v2(None))
    sock.close()  # no yield since the send: the server finds header and close together
    _wait_closed(listener, 1)
    assert service.connected.empty()
    assert _warnings(gtcp_log) == []
    assert any("after its PROXY protocol header" in r.getMessage() for r in gtcp_log.records
               if r.levelno == logging.DEBUG)
    assert listener.stats().handshake_failures == 0


def test_stop_while_waiting_for_the_header(gtcp_listener, gtcp_log):
    service = Recorder()
    listener = gtcp_listener(service, proxy_protocol="v1")
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port), timeout=LONG)
    try:
        sock.sendall(b"PROXY TCP4 1.2.")
        with gevent.Timeout(LONG):
            while listener.stats().bytes_in < 15:
                gevent.sleep(0.005)
        listener.immediate_stop()
        assert recv_all(sock) == b""
    finally:
        sock.close()
    assert listener.stats().open == 0
    assert service.connected.empty()
    assert _warnings(gtcp_log) == []


def test_unix_listener_with_proxy_protocol(tmp_path):
    service = Recorder()
    path = str(tmp_path / "p.sock")
    listener = gtcp.Listener.unix(path, proxy_protocol="v2")
    listener.attach(service)
    listener.start()
    try:
        with gtcp.Client.unix(path, timeout=LONG) as client:
            client.write_bytes(encode_v2(("192.0.2.10", 10)) + b"u")
            assert client.read_bytes() == b"u"
        caller = service.connected.get(timeout=LONG)
        assert (caller.remote_host, caller.remote_port) == ("192.0.2.10", 10)
        assert (caller.proxy.proxy_host, caller.proxy.proxy_port) == ("", 0)
    finally:
        listener.immediate_stop()


# -- found in review --------------------------------------------------------------


def test_v1_zone_ids_are_refused():
    """``ipaddress`` accepts ``::1%anything``; remote_host must never carry free text."""
    with pytest.raises(BadHeader, match="bad address"):
        decode(b"PROXY TCP6 ::1%'OR'1'='1 ::1 1 2\r\n", 0, "v1")


def test_v2_a_second_crc32c_tlv_is_refused():
    header = encode_v2(("192.0.2.1", 5), ("192.0.2.2", 6), ((3, b"\0\0\0\0"),), crc=True)
    with pytest.raises(BadHeader, match="more than one CRC32C TLV"):
        decode(header, 0, "v2")


def test_a_relayed_client_that_half_closes_at_once_is_served(gtcp_listener):
    """Only a LOCAL header then EOF, or a reset, is taken for a health check."""
    service = Recorder()
    listener = gtcp_listener(service, proxy_protocol="v1")
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port), timeout=LONG)
    try:
        sock.sendall(encode_v1(("192.0.2.44", 4444)))
        sock.shutdown(socket.SHUT_WR)  # no yield since the send: header and FIN arrive together
        assert recv_all(sock) == b""
    finally:
        sock.close()
    assert service.connected.get(timeout=LONG).remote_host == "192.0.2.44"


def test_idle_timeout_bounds_the_header_wait(gtcp_listener, gtcp_log):
    service = Recorder()
    listener = gtcp_listener(service, proxy_protocol="v2", idle_timeout=0.2)
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port), timeout=LONG)
    try:
        sock.sendall(V2_SIGNATURE[:3])
        with gevent.Timeout(5, AssertionError("the header wait outlived idle_timeout")):
            assert recv_all(sock) == b""
    finally:
        sock.close()
    _wait_closed(listener, 1)
    assert "within 0.2 s" in _warnings(gtcp_log)[0]


def test_a_tls_handshake_that_times_out_after_the_header_is_reported(gtcp_listener, gtcp_log, tls_files):
    """Silence after the header is a slow peer (WARNING, counted), not a health check."""
    secure = gtcp.ListenerSecureSocket(key=gtcp.CertKey(tls_files["cert"], tls_files["key"]),
                                       handshake_timeout=0.3)
    listener = gtcp_listener(Recorder(), proxy_protocol="v2", secure_socket=secure)
    sock = gevent.socket.create_connection(("127.0.0.1", listener.port), timeout=LONG)
    try:
        sock.sendall(encode_v2(("192.0.2.7", 7)))
        assert recv_all(sock) == b""
    finally:
        sock.close()
    _wait_closed(listener, 1)
    warnings = _warnings(gtcp_log)
    assert len(warnings) == 1 and "timed out" in warnings[0], warnings
    assert listener.stats().handshake_failures == 1
