"""TLS end to end: Listener and Client over real loopback connections.

Ballerina's own TLS tests, translated (with trustme certificates: theirs have
expired), plus what gtcp adds: handshake deadlines, mutual TLS, hostname
checks, session resumption, close_notify. Parametrised over TLS 1.2 and 1.3.
"""

from __future__ import annotations

import logging
import socket
import ssl
import warnings

import gevent
import gevent.ssl
import pytest
import trustme
from conftest import LONG
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509 import load_pem_x509_certificate
from helpers import TLS_VERSIONS, EchoService, raw_connect

import gtcp
from gtcp._tls_probe import version_supported
from gtcp.testing import RawPeer


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(key_type=trustme.KeyType.RSA)  # RSA, as Ballerina's test certificates


@pytest.fixture(scope="module")
def pki(ca, tmp_path_factory):
    """Files: CA PEM, server cert/key PEM, client cert/key PEM, truststore and keystore."""
    root = tmp_path_factory.mktemp("pki")
    rsa = trustme.KeyType.RSA
    server = ca.issue_cert("localhost", "127.0.0.1", "::1", key_type=rsa)
    client = ca.issue_cert("client@example.org", common_name="gtcp test client", key_type=rsa)
    files = {
        "ca": root / "ca.pem",
        "server_cert": root / "server.pem",
        "server_key": root / "server.key",
        "client_cert": root / "client.pem",
        "client_key": root / "client.key",
        "truststore": root / "trust.p12",
        "keystore": root / "server.p12",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    server.cert_chain_pems[0].write_to_path(str(files["server_cert"]))
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(str(files["server_cert"]), append=True)
    client.private_key_pem.write_to_path(str(files["client_key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    ca_cert = load_pem_x509_certificate(ca.cert_pem.bytes())
    files["truststore"].write_bytes(pkcs12.serialize_key_and_certificates(
        b"trust", None, None, [ca_cert], serialization.BestAvailableEncryption(b"ballerina")))
    key = serialization.load_pem_private_key(server.private_key_pem.bytes(), None)
    cert = load_pem_x509_certificate(server.cert_chain_pems[0].bytes())
    files["keystore"].write_bytes(pkcs12.serialize_key_and_certificates(
        b"server", key, cert, [ca_cert], serialization.BestAvailableEncryption(b"ballerina")))
    return {name: str(path) for name, path in files.items()}


def _listener_tls(pki, version=None, **fields):
    protocol = gtcp.ProtocolConfig(name=gtcp.Protocol.TLS, versions=[version]) if version else None
    return gtcp.ListenerSecureSocket(
        key=gtcp.CertKey(cert_file=pki["server_cert"], key_file=pki["server_key"]),
        protocol=protocol, **fields)


def _client_tls(pki, version=None, **fields):
    fields.setdefault("cert", pki["ca"])
    protocol = gtcp.ProtocolConfig(name=gtcp.Protocol.TLS, versions=[version]) if version else None
    return gtcp.ClientSecureSocket(protocol=protocol, **fields)


def _echo_once(port, secure, host="localhost", message=b"Hello Ballerina Echo from client"):
    with gtcp.Client(host, port, secure_socket=secure, timeout=LONG) as client:
        client.write_bytes(message)
        assert client.read_bytes() == message
        return client.tls


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_secure_client_echo_with_cert_file(gtcp_listener, pki, version):
    listener = gtcp_listener(EchoService(), secure_socket=_listener_tls(pki, version))
    info = _echo_once(listener.port, _client_tls(pki))
    assert info.version == version
    assert info.cipher
    assert info.peer_certificate["subjectAltName"]


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_secure_client_echo_with_truststore(gtcp_listener, pki, version):
    listener = gtcp_listener(EchoService(), secure_socket=_listener_tls(pki, version))
    store = gtcp.TrustStore(path=pki["truststore"], password="ballerina")
    assert _echo_once(listener.port, _client_tls(pki, cert=store)).version == version


def test_secure_listener_with_keystore(gtcp_listener, pki):
    secure = gtcp.ListenerSecureSocket(key=gtcp.KeyStore(path=pki["keystore"], password="ballerina"))
    listener = gtcp_listener(EchoService(), secure_socket=secure)
    _echo_once(listener.port, _client_tls(pki))


def test_secure_dicts_are_accepted_for_records(gtcp_listener, pki):
    secure = {"key": {"cert_file": pki["server_cert"], "key_file": pki["server_key"]}}
    listener = gtcp_listener(EchoService(), secure_socket=secure)
    _echo_once(listener.port, {"cert": pki["ca"]})


def test_secure_caller_tls_facts(gtcp_listener, pki):
    service = EchoService()
    listener = gtcp_listener(service, secure_socket=_listener_tls(pki))
    _echo_once(listener.port, _client_tls(pki))
    info = service.callers[0].tls
    assert info.version in ("TLSv1.2", "TLSv1.3") and info.cipher
    assert info.peer_certificate is None  # no client certificate asked


def _tls11_only_context() -> ssl.SSLContext:
    """A client that speaks TLS 1.1 and nothing else, as OpenSSL 3 still can at security level 0."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl.TLSVersion.TLSv1_1
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def _handshake_failures(gtcp_log, count):
    gtcp_log.wait_for("TLS handshake", count=count, level="WARNING")
    return [r for r in gtcp_log.records if "TLS handshake" in r.getMessage()]


def test_secure_client_tls11_only_against_tls12_server_fails(gtcp_listener, pki, gtcp_log):
    listener = gtcp_listener(EchoService(), secure_socket=_listener_tls(pki, "TLSv1.2"))
    if version_supported(ssl.TLSVersion.TLSv1_1):
        record = _client_tls(pki, "TLSv1.1")  # an OpenSSL that still allows it: a gtcp client of TLS 1.1
        with pytest.raises(gtcp.TLSError):
            gtcp.Client("localhost", listener.port, secure_socket=record)
    else:
        # OpenSSL 3 refuses TLS 1.1 at its security level: the record is refused when built...
        with pytest.raises(gtcp.ConfigError, match=r"No supported TLS protocol version in \['TLSv1.1'\]"):
            _client_tls(pki, "TLSv1.1")
        # ...and a client that speaks TLS 1.1 anyway is refused by the listener.
        with pytest.raises(ssl.SSLError):
            RawPeer(listener, tls=_tls11_only_context(), timeout=LONG)
    assert len(_handshake_failures(gtcp_log, 1)) == 1
    assert listener.stats().handshake_failures == 1
    assert _echo_once(listener.port, _client_tls(pki)).version == "TLSv1.2"  # and serves on


def test_secure_cipher_mismatch_fails_at_client(gtcp_listener, pki):
    server = _listener_tls(pki, ciphers=["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"])
    listener = gtcp_listener(EchoService(), secure_socket=server)
    client = _client_tls(pki, ciphers=["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"])
    with pytest.raises(gtcp.TLSError):
        gtcp.Client("localhost", listener.port, secure_socket=client)


def test_secure_listener_without_ciphers_and_matching_cipher_work(gtcp_listener, pki):
    server = _listener_tls(pki, ciphers=["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"])
    listener = gtcp_listener(EchoService(), secure_socket=server)
    info = _echo_once(listener.port, _client_tls(pki, ciphers=["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]))
    assert info.version == "TLSv1.2" and info.cipher == "ECDHE-RSA-AES128-GCM-SHA256"


def test_secure_enable_false_talks_to_plain_server(gtcp_listener):
    listener = gtcp_listener(EchoService())
    secure = gtcp.ClientSecureSocket(enable=False, cert="")  # nothing else validated
    assert _echo_once(listener.port, secure, host="127.0.0.1") is None


def test_secure_invalid_truststore_path_fails(gtcp_listener, pki):
    listener = gtcp_listener(EchoService(), secure_socket=_listener_tls(pki))
    store = gtcp.TrustStore(path="/nonexistent/trust.p12", password="ballerina")
    with pytest.raises(gtcp.TLSError) as info:
        gtcp.Client("localhost", listener.port, secure_socket=_client_tls(pki, cert=store))
    assert str(info.value).startswith("Failed to initialize the SSL context: ")
    assert "/nonexistent/trust.p12" in str(info.value)


def test_secure_plaintext_client_on_tls_port_gets_read_error_and_listener_serves_on(
        gtcp_listener, pki, gtcp_log):
    listener = gtcp_listener(EchoService(), secure_socket=_listener_tls(pki))
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as plain:
        plain.write_bytes(b"GET / HTTP/1.0\r\n\r\n")
        with pytest.raises(gtcp.PeerClosedError):
            while True:
                plain.read_bytes()  # an alert may come first, then the close
    _echo_once(listener.port, _client_tls(pki))
    failures = [r for r in gtcp_log.records if "TLS handshake" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is None


def _sslv3_client_hello() -> bytes:
    """An SSL 3.0 ClientHello (no OpenSSL of today can send one): two RSA suites, no extensions."""
    body = b"\x03\x00" + bytes(32) + b"\x00" + b"\x00\x04\x00\x2f\x00\x0a" + b"\x01\x00"
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x00" + len(handshake).to_bytes(2, "big") + handshake


def test_secure_sslv3_only_client_fails(gtcp_listener, pki, gtcp_log):
    listener = gtcp_listener(EchoService(), secure_socket=_listener_tls(pki))
    # A gtcp client cannot be made to offer SSLv3: the record is refused when built, before any socket.
    with pytest.raises(gtcp.ConfigError, match=r"No supported TLS protocol version in \['SSLv3'\]"):
        _client_tls(pki, "SSLv3")
    # A client that offers only SSLv3 is refused by the listener: an alert (or nothing), then the close.
    peer = RawPeer(listener, timeout=LONG)
    peer.send(_sslv3_client_hello())
    reply = peer.read_until_eof()
    assert reply == b"" or reply[:1] == b"\x15", reply  # content type 21: alert
    peer.close()
    assert len(_handshake_failures(gtcp_log, 1)) == 1
    assert listener.stats().handshake_failures == 1
    assert listener.stats().accepted == 1
    _echo_once(listener.port, _client_tls(pki))  # and serves on


def test_secure_invalid_cert_path_fails_at_start_and_leaves_port_free(pki):
    secure = gtcp.ListenerSecureSocket(key=gtcp.CertKey(cert_file="/nonexistent/cert.pem",
                                                        key_file=pki["server_key"]))
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    listener = gtcp.Listener(port, local_host="127.0.0.1", secure_socket=secure)
    listener.attach(EchoService())
    expected = r"^Failed to initialize the SSL context: .*/nonexistent/cert.pem"
    with pytest.raises(gtcp.TLSError, match=expected):
        listener.start()
    again = socket.socket()
    again.bind(("127.0.0.1", port))  # the failed start never held the port
    again.close()
    assert not listener.running


def test_secure_pem_given_as_keystore_fails(pki):
    secure = gtcp.ListenerSecureSocket(key=gtcp.KeyStore(path=pki["server_cert"], password="x"))
    listener = gtcp.Listener(0, local_host="127.0.0.1", secure_socket=secure)
    listener.attach(EchoService())
    with pytest.raises(gtcp.TLSError) as info:
        listener.start()
    assert str(info.value).startswith("Failed to initialize the SSL context")


def test_secure_blank_fields_messages():
    cases = [
        (lambda: gtcp.CertKey(cert_file="", key_file="k"),
         "Certificate file location must be provided for secure connection"),
        (lambda: gtcp.CertKey(cert_file="c", key_file="  "),
         "Private key file location must be provided for secure connection"),
        (lambda: gtcp.KeyStore(path="", password="p"),
         "KeyStore file location must be provided for secure connection"),
        (lambda: gtcp.KeyStore(path="p", password=""),
         "KeyStore password must be provided for secure connection"),
        (lambda: gtcp.TrustStore(path=" ", password="p"),
         "TrustStore file location must be provided for secure connection"),
        (lambda: gtcp.TrustStore(path="p", password=""),
         "TrustStore password must be provided for secure connection"),
        (lambda: gtcp.ClientSecureSocket(cert=""),
         "Certificate file location must be provided for secure connection"),
    ]
    for make, message in cases:
        with pytest.raises(gtcp.ConfigError) as info:
            make()
        assert str(info.value) == message


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_secure_hostname_is_verified(gtcp_listener, pki, version):
    listener = gtcp_listener(EchoService(), secure_socket=_listener_tls(pki, version))
    wrong = _client_tls(pki, server_name="not-the-server.example")
    with pytest.raises(gtcp.TLSError, match=r"[Hh]ostname|match"):
        gtcp.Client("127.0.0.1", listener.port, secure_socket=wrong)
    lax = _client_tls(pki, server_name="not-the-server.example", verify_hostname=False)
    _echo_once(listener.port, lax, host="127.0.0.1")
    _echo_once(listener.port, _client_tls(pki, server_name="localhost"), host="127.0.0.1")


def test_secure_untrusted_server_fails(gtcp_listener, pki):
    listener = gtcp_listener(EchoService(), secure_socket=_listener_tls(pki))
    other_ca = trustme.CA()
    with other_ca.cert_pem.tempfile() as other:
        with pytest.raises(gtcp.TLSError, match="certificate"):
            gtcp.Client("localhost", listener.port, secure_socket=_client_tls(pki, cert=other))


def test_secure_system_trust_store_rejects_private_ca(gtcp_listener, pki):
    listener = gtcp_listener(EchoService(), secure_socket=_listener_tls(pki))
    with pytest.raises(gtcp.TLSError, match="certificate"):
        gtcp.Client("localhost", listener.port, secure_socket=gtcp.ClientSecureSocket())


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_secure_mutual_tls_require(gtcp_listener, pki, version):
    service = EchoService()
    secure = _listener_tls(pki, version, mutual_ssl=gtcp.MutualSsl(cert=pki["ca"]))
    listener = gtcp_listener(service, secure_socket=secure)
    key = gtcp.CertKey(cert_file=pki["client_cert"], key_file=pki["client_key"])
    _echo_once(listener.port, _client_tls(pki, key=key))
    peer = service.callers[0].tls.peer_certificate
    assert dict(x[0] for x in peer["subject"])["commonName"] == "gtcp test client"
    # Without a client certificate: refused (TLS 1.3 reports it at the first read).
    with pytest.raises((gtcp.TLSError, gtcp.PeerClosedError)):
        with gtcp.Client("localhost", listener.port, secure_socket=_client_tls(pki), timeout=LONG) as c:
            c.write_bytes(b"x")
            c.read_bytes()


def test_secure_mutual_tls_optional(gtcp_listener, pki):
    service = EchoService()
    mutual = gtcp.MutualSsl(cert=pki["ca"], verify_client=gtcp.VerifyClient.OPTIONAL)
    listener = gtcp_listener(service, secure_socket=_listener_tls(pki, mutual_ssl=mutual))
    _echo_once(listener.port, _client_tls(pki))
    assert service.callers[0].tls.peer_certificate is None
    key = gtcp.CertKey(cert_file=pki["client_cert"], key_file=pki["client_key"])
    _echo_once(listener.port, _client_tls(pki, key=key))
    assert service.callers[1].tls.peer_certificate is not None


def test_secure_handshake_timeout_cuts_silent_and_trickling_clients(gtcp_listener, pki, gtcp_log):
    secure = _listener_tls(pki, handshake_timeout=0.3)
    listener = gtcp_listener(EchoService(), secure_socket=secure)
    silent = [raw_connect(listener.port) for _ in range(200)]
    trickle = raw_connect(listener.port)

    def drip():
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40
        try:
            for byte in hello:
                trickle.sendall(bytes([byte]))
                gevent.sleep(0.05)
        except OSError:
            pass

    dripper = gevent.spawn(drip)
    # A good client is served at once despite 201 stuck handshakes.
    with gevent.Timeout(2):
        _echo_once(listener.port, _client_tls(pki))
    # ... and the stuck ones are dropped at the deadline.
    for sock in silent[:5]:
        sock.settimeout(LONG)
        assert sock.recv(100) == b""
    # The trickler is dropped too; the drip may still be sending, so the
    # kernel may answer its late bytes with a reset instead of the FIN.
    trickle.settimeout(LONG)
    try:
        assert trickle.recv(100) == b""
    except ConnectionResetError:
        pass
    dripper.kill()
    for sock in silent:
        sock.close()
    trickle.close()
    timeouts = [r for r in gtcp_log.records if "timed out" in r.getMessage()]
    assert timeouts and all(r.exc_info is None for r in timeouts)


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_secure_session_resumption(gtcp_listener, pki, version):
    listener = gtcp_listener(EchoService(), secure_socket=_listener_tls(pki, version))
    secure = _client_tls(pki, session_timeout=60)
    first = _echo_once(listener.port, secure)
    assert first.session_reused is False
    second = _echo_once(listener.port, _client_tls(pki, session_timeout=60))  # an equal record
    assert second.session_reused is True


def test_secure_session_not_resumed_after_session_timeout(gtcp_listener, pki, monkeypatch):
    from gtcp import _sessions

    listener = gtcp_listener(EchoService(), secure_socket=_listener_tls(pki, "TLSv1.2"))
    now = [1000.0]
    monkeypatch.setattr(_sessions.SESSIONS, "_clock", lambda: now[0])
    secure = _client_tls(pki, "TLSv1.2", session_timeout=5)
    assert _echo_once(listener.port, secure).session_reused is False
    now[0] += 10
    assert _echo_once(listener.port, secure).session_reused is False


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_secure_close_sends_close_notify(gtcp_listener, pki, version):
    """The client's close() sends close_notify: the server sees a clean TLS EOF."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
    raw = gevent.socket.socket()
    raw.bind(("127.0.0.1", 0))
    raw.listen(1)
    port = raw.getsockname()[1]
    gctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    gctx.load_cert_chain(pki["server_cert"], pki["server_key"])

    def serve_one():
        conn, _ = raw.accept()
        tls = gctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False)
        data = tls.recv(100)
        tls.sendall(data)
        try:
            return tls.recv(100)  # b"" only on a close_notify
        except ssl.SSLEOFError:
            return "ragged"
        finally:
            tls.close()

    server = gevent.spawn(serve_one)
    client = gtcp.Client("localhost", port, secure_socket=_client_tls(pki, version), timeout=LONG)
    client.write_bytes(b"bye")
    assert client.read_bytes() == b"bye"
    client.close()
    assert server.get(timeout=LONG) == b""
    raw.close()


def test_secure_peer_vanishing_without_close_notify_is_peer_closed(gtcp_listener, pki):
    gctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    gctx.load_cert_chain(pki["server_cert"], pki["server_key"])
    raw = gevent.socket.socket()
    raw.bind(("127.0.0.1", 0))
    raw.listen(1)

    def serve_one():
        conn, _ = raw.accept()
        tls = gctx.wrap_socket(conn, server_side=True)
        tls.recv(100)
        tls._sock.shutdown(socket.SHUT_RDWR)  # TCP FIN without close_notify
        tls.close()

    server = gevent.spawn(serve_one)
    client = gtcp.Client("localhost", raw.getsockname()[1], secure_socket=_client_tls(pki), timeout=LONG)
    client.write_bytes(b"x")
    server.get(timeout=LONG)
    for _ in range(2):
        with pytest.raises(gtcp.PeerClosedError) as info:
            client.read_bytes()
        assert str(info.value) == "Connection closed by the server."
    client.close()
    raw.close()


def test_secure_handshake_failure_logs_one_line_no_traceback(gtcp_listener, pki, gtcp_log, capfd):
    listener = gtcp_listener(EchoService(), secure_socket=_listener_tls(pki))
    other = trustme.CA()
    with other.cert_pem.tempfile() as other_pem:
        for _ in range(3):
            with pytest.raises(gtcp.TLSError):
                gtcp.Client("localhost", listener.port, secure_socket=_client_tls(pki, cert=other_pem))
    with gevent.Timeout(LONG):  # the listener logs each failure in its own greenlet
        while len([r for r in gtcp_log.records if "TLS handshake" in r.getMessage()]) < 3:
            gevent.sleep(0.01)
    lines = [r for r in gtcp_log.records if "TLS handshake" in r.getMessage()]
    assert len(lines) == 3
    assert all(r.exc_info is None and r.levelno == logging.WARNING for r in lines)
    _, err = capfd.readouterr()
    assert "Traceback" not in err


def test_secure_session_from_an_evicted_context_is_not_offered(gtcp_listener, pki):
    from gtcp import _contexts

    listener = gtcp_listener(EchoService(), secure_socket=_listener_tls(pki, "TLSv1.2"))
    secure = _client_tls(pki, "TLSv1.2", session_timeout=60)
    assert _echo_once(listener.port, secure).session_reused is False
    _contexts._client_contexts.clear()  # as if 32 other configurations had pushed it out
    info = _echo_once(listener.port, secure)  # a new context: must not fail
    assert info.session_reused is False
    assert _echo_once(listener.port, secure).session_reused is True


def test_secure_immediate_stop_ends_handshakes_in_progress(gtcp_listener, pki):
    listener = gtcp_listener(EchoService(), secure_socket=_listener_tls(pki, handshake_timeout=LONG))
    stuck = raw_connect(listener.port)  # connects, never sends a ClientHello
    with gtcp.Client("localhost", listener.port, secure_socket=_client_tls(pki)) as client:
        client.write_bytes(b"x")  # the listener has accepted both by now
        client.read_bytes()
    with gevent.Timeout(2):
        listener.immediate_stop()
        stuck.settimeout(LONG)
        assert stuck.recv(10) == b""
    stuck.close()
