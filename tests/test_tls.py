"""Tests of gtcp's TLS modules (_tls_probe, _keys, _contexts, _sessions, _tlsinfo): contexts from records,
key material, sessions, handshakes."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import shutil
import ssl
import stat
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import gevent.ssl
import pytest
import trustme
from conftest import LONG
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from helpers import TLS_VERSIONS, child_env

from gtcp import _contexts, _keys, _memfile, _sessions, _tls_probe
from gtcp._config import (
    CertKey,
    ClientSecureSocket,
    KeyStore,
    ListenerSecureSocket,
    MutualSsl,
    ProtocolConfig,
    TrustStore,
    VerifyClient,
)
from gtcp._contexts import client_context, server_context
from gtcp._errors import ConfigError, TLSError
from gtcp._sessions import SessionCache
from gtcp._tls_probe import IANA_CIPHER_NAMES, version_supported
from gtcp._tlsinfo import TLSInfo, tls_info

pytestmark = pytest.mark.timeout(30)

#: Bound on any one blocking step (handshake, one exchange) of a test.

PREFIX = "Failed to initialize the SSL context: "
TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3
KEY_FORMATS = [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL]


def _raises(kind: type[BaseException], message: str) -> Any:
    return pytest.raises(kind, match=f"^{re.escape(message)}$")


# --- certificate material made fresh for each test ---------------------------------------------


@dataclasses.dataclass
class Material:
    """Files for a CA, a server certificate (localhost) and a client certificate."""

    dir: Path
    ca: trustme.CA
    ca_pem: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)


def _key_of(pem: bytes) -> Any:
    return serialization.load_pem_private_key(pem, None)


@pytest.fixture
def material(tmp_path: Path) -> Material:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("client@example.com")
    m = Material(tmp_path, ca, str(tmp_path / "ca.pem"), str(tmp_path / "server.pem"),
                 str(tmp_path / "server.key"), str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    ca.cert_pem.write_to_path(m.ca_pem)
    Path(m.server_cert).write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(m.server_key)
    Path(m.client_cert).write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    client.private_key_pem.write_to_path(m.client_key)
    return m


def _p12(m: Material, name: str, *, key_file: str | None, cert_file: str | None, cas: list[str],
         encryption: Any = None) -> str:
    key = _key_of(Path(key_file).read_bytes()) if key_file else None
    cert = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())[0] if cert_file else None
    extra = [x509.load_pem_x509_certificate(Path(ca).read_bytes()) for ca in cas]
    data = pkcs12.serialize_key_and_certificates(
        b"gtcp", key, cert, extra or None, encryption or serialization.BestAvailableEncryption(b"pw")
    )
    return m.write(name, data)


def _legacy_3des() -> Any:
    return (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(50000)
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())
        .build(b"pw")
    )


def _server(m: Material, **kwargs: Any) -> ListenerSecureSocket:
    return ListenerSecureSocket(CertKey(m.server_cert, m.server_key), **kwargs)


def _client(m: Material, **kwargs: Any) -> ClientSecureSocket:
    kwargs.setdefault("cert", m.ca_pem)
    return ClientSecureSocket(**kwargs)


def _versions(*names: str) -> ProtocolConfig:
    return ProtocolConfig("TLS", names)


# --- handshakes over a socketpair ---------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What each side of a handshake (and a one-byte exchange each way) saw."""

    server: TLSInfo | BaseException
    client: TLSInfo | BaseException
    session: ssl.SSLSession | None


def _run(sock: Any) -> TLSInfo | BaseException:
    try:
        sock.do_handshake()
        info = tls_info(sock)
        sock.sendall(b"x")  # with TLS 1.3 the session ticket arrives before this byte
        if sock.recv(1) != b"x":
            raise ConnectionError("peer closed")
        return info
    except (ssl.SSLError, OSError) as exc:
        return exc


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str = "localhost",
               session: ssl.SSLSession | None = None) -> Outcome:
    a, b = gevent.socket.socketpair()
    server = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    client = client_ctx.wrap_socket(b, server_hostname=hostname, do_handshake_on_connect=False,
                                    session=session)
    try:
        with gevent.Timeout(LONG):
            jobs = [gevent.spawn(_run, server), gevent.spawn(_run, client)]
            # A side that failed closes its socket so that the other one is not left waiting.
            for job, sock in zip(jobs, (server, client), strict=True):
                job.link_value(lambda g, s=sock: s.close() if isinstance(g.value, BaseException) else None)
            gevent.joinall(jobs, raise_error=True)
        return Outcome(jobs[0].value, jobs[1].value, client.session)
    finally:
        server.close()
        client.close()


def _ok(result: TLSInfo | BaseException) -> TLSInfo:
    assert isinstance(result, TLSInfo), result
    return result


# --- versions --------------------------------------------------------------------------------


def test_server_context_is_gevent_context_with_safe_defaults(material: Material) -> None:
    ctx = server_context(_server(material))
    assert isinstance(ctx, gevent.ssl.SSLContext)
    assert ctx.minimum_version == TLS12
    assert ctx.maximum_version == TLS13
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.verify_mode == ssl.CERT_NONE
    assert not ctx.options & ssl.OP_NO_TICKET


def test_client_context_is_gevent_context_with_safe_defaults(material: Material) -> None:
    ctx = client_context(_client(material))
    assert isinstance(ctx, gevent.ssl.SSLContext)
    assert ctx.minimum_version == TLS12
    assert ctx.maximum_version == TLS13
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is True
    assert ctx.cert_store_stats()["x509_ca"] == 1


@pytest.mark.parametrize(
    ("names", "minimum", "maximum"),
    [
        (("TLSv1.2",), TLS12, TLS12),
        (("TLSv1.3",), TLS13, TLS13),
        (("TLSv1.2", "TLSv1.3"), TLS12, TLS13),
        (("TLSv1.3", "TLSv1.2"), TLS12, TLS13),
        (("SSLv3", "TLSv1.3"), TLS13, TLS13),
    ],
)
def test_contexts_follow_versions(material: Material, names: tuple[str, ...],
                                  minimum: ssl.TLSVersion, maximum: ssl.TLSVersion) -> None:
    for ctx in (server_context(_server(material, protocol=_versions(*names))),
                client_context(_client(material, protocol=_versions(*names)))):
        assert (ctx.minimum_version, ctx.maximum_version) == (minimum, maximum)


def test_contexts_leave_out_versions_openssl_refuses(material: Material) -> None:
    # README, Versions: Ballerina's ["TLSv1.2", "TLSv1.1"] is TLS 1.2 where TLS 1.1 is refused (OpenSSL 3).
    expected = ssl.TLSVersion.TLSv1_1 if version_supported(ssl.TLSVersion.TLSv1_1) else TLS12
    ctx = server_context(_server(material, protocol=_versions("TLSv1.2", "TLSv1.1")))
    assert (ctx.minimum_version, ctx.maximum_version) == (expected, TLS12)


@pytest.mark.skipif(ssl.OPENSSL_VERSION_INFO < (3,), reason="OpenSSL 3 refuses TLS 1.0/1.1 by default")
def test_version_supported_measures_openssl() -> None:
    assert version_supported(TLS12)
    assert version_supported(TLS13)
    assert not version_supported(ssl.TLSVersion.SSLv3)
    if not version_supported(ssl.TLSVersion.TLSv1_1):  # OpenSSL 3 at its default security level
        with _raises(ConfigError, "No supported TLS protocol version in ['TLSv1', 'TLSv1.1']"):
            ProtocolConfig("TLS", ["TLSv1", "TLSv1.1"])


def test_SSLv3_only_is_refused_when_built() -> None:
    with _raises(ConfigError, "No supported TLS protocol version in ['SSLv3']"):
        ClientSecureSocket(protocol={"name": "SSL", "versions": ["SSLv3"]})


# --- ciphers ---------------------------------------------------------------------------------


def _tls12_names(ctx: ssl.SSLContext) -> set[str]:
    return {c["name"] for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"}


@pytest.mark.parametrize(
    "name", ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256",
             "ecdhe-ecdsa-aes128-gcm-sha256", "tls_ecdhe_ecdsa_with_aes_128_gcm_sha256"],
)
def test_contexts_map_cipher_names(material: Material, name: str) -> None:
    ctx = server_context(_server(material, ciphers=[name]))
    assert _tls12_names(ctx) == {"ECDHE-ECDSA-AES128-GCM-SHA256"}
    assert ctx.maximum_version == TLS12  # no TLS 1.3 suite listed


def test_contexts_only_tls13_ciphers_require_tls13(material: Material) -> None:
    ctx = client_context(_client(material, ciphers=["TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"]))
    assert (ctx.minimum_version, ctx.maximum_version) == (TLS13, TLS13)


def test_contexts_mixed_ciphers_keep_both_versions(material: Material) -> None:
    ctx = server_context(_server(material, ciphers=["TLS_AES_128_GCM_SHA256",
                                                    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]))
    assert (ctx.minimum_version, ctx.maximum_version) == (TLS12, TLS13)
    assert _tls12_names(ctx) == {"ECDHE-RSA-AES256-GCM-SHA384"}


def test_contexts_unknown_ciphers_are_listed() -> None:
    with _raises(ConfigError, "Unknown or unsupported cipher suites: 'TLS_FAKE_WITH_NOTHING', 'FOO-BAR'"):
        ClientSecureSocket(ciphers=["TLS_FAKE_WITH_NOTHING", "AES128-SHA", "FOO-BAR"])


def test_IANA_CIPHER_NAMES_all_resolve_locally() -> None:
    old, new = _tls_probe.resolve_ciphers(tuple(IANA_CIPHER_NAMES))
    assert old == tuple(IANA_CIPHER_NAMES.values())
    assert new == ()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")
def test_IANA_CIPHER_NAMES_match_openssl_stdname() -> None:
    out = subprocess.run(["openssl", "ciphers", "-stdname", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"],
                         capture_output=True, text=True, timeout=LONG, check=True).stdout
    stdnames = dict(line.split()[0:3:2] for line in out.splitlines() if line.strip())
    # Every name must be there and map alike: a name openssl does not list is a mismatch too.
    mismatches = {iana: (openssl_name, stdnames.get(iana, "(not listed by openssl)"))
                  for iana, openssl_name in IANA_CIPHER_NAMES.items() if stdnames.get(iana) != openssl_name}
    assert not mismatches, mismatches


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_handshake_uses_named_cipher(material: Material, version: str) -> None:
    if version == "TLSv1.2":
        cipher, expected = "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384"
    else:
        cipher, expected = "TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384"
    outcome = _handshake(server_context(_server(material, ciphers=[cipher, "TLS_AES_256_GCM_SHA384"]
                                                if version == "TLSv1.3" else [cipher])),
                         client_context(_client(material, protocol=_versions(version), ciphers=[cipher])))
    info = _ok(outcome.client)
    assert info.version == version
    if version == "TLSv1.2":
        assert info.cipher == expected


# --- key material ------------------------------------------------------------------------------


def _encrypted_key(m: Material, fmt: serialization.PrivateFormat, name: str) -> str:
    key = _key_of(Path(m.server_key).read_bytes())
    return m.write(name, key.private_bytes(serialization.Encoding.PEM, fmt,
                                           serialization.BestAvailableEncryption(b"s3cret")))


@pytest.mark.parametrize("fmt", KEY_FORMATS)
def test_CertKey_encrypted_key_with_password(material: Material, fmt: serialization.PrivateFormat) -> None:
    key_file = _encrypted_key(material, fmt, "enc.key")
    assert b"ENCRYPTED" in Path(key_file).read_bytes()
    ctx = server_context(ListenerSecureSocket(CertKey(material.server_cert, key_file, "s3cret")))
    _ok(_handshake(ctx, client_context(_client(material))).client)


def _decrypts_to_garbage(pem: bytes, password: str) -> bool:
    """True when a wrong ``password`` gets past the padding check and fails later, as ASN.1."""
    try:
        serialization.load_pem_private_key(pem, password.encode())
    except ValueError as exc:
        return "incorrect password" not in str(exc).lower()
    return False


@pytest.mark.parametrize("fmt", KEY_FORMATS)
def test_CertKey_encrypted_key_wrong_password(material: Material, fmt: serialization.PrivateFormat) -> None:
    """Every wrong password is reported as one, whatever its garbage fails on.

    About one wrong password in 300 decrypts to bytes whose padding is valid;
    they then fail as ASN.1 ("invalid length", "unexpected tag"), not as
    "Incorrect password". The key (and its salt) is new at each run, so which
    passwords do that is found for this key, among up to 20,000 candidates
    (missing one there has a probability near 1e-30).
    """
    key_file = _encrypted_key(material, fmt, "enc.key")
    pem = Path(key_file).read_bytes()
    candidates = (f"garbage-{n}" for n in range(20_000))
    garbage = list(itertools.islice((p for p in candidates if _decrypts_to_garbage(pem, p)), 3))
    assert garbage, "no wrong password reached the ASN.1 path"
    start = f"{PREFIX}cannot decrypt private key file {key_file!r}: wrong password? ("
    for password in [f"wrong-{n}" for n in range(50)] + garbage:
        with pytest.raises(TLSError) as info:
            server_context(ListenerSecureSocket(CertKey(material.server_cert, key_file, password)))
        message = str(info.value)
        assert message.startswith(start) and message.endswith(")"), (password, message)
        assert isinstance(info.value.__cause__, ssl.SSLError)


def test_CertKey_encrypted_key_without_password_never_prompts(material: Material) -> None:
    key_file = _encrypted_key(material, serialization.PrivateFormat.PKCS8, "enc.key")
    with _raises(TLSError, f"{PREFIX}cannot load private key {key_file!r}: "
                           "Password was not given but private key is encrypted"):
        server_context(ListenerSecureSocket(CertKey(material.server_cert, key_file)))


def test_CertKey_password_on_plain_key_is_harmless(material: Material) -> None:
    server_context(ListenerSecureSocket(CertKey(material.server_cert, material.server_key, "unused")))


def test_CertKey_missing_files(material: Material) -> None:
    missing = material.path("missing.pem")
    message = f"{PREFIX}cannot read certificate file {missing!r}: No such file or directory"
    with _raises(TLSError, message) as info:
        server_context(ListenerSecureSocket(CertKey(missing, material.server_key)))
    assert isinstance(info.value.__cause__, OSError)
    with _raises(TLSError, f"{PREFIX}cannot read private key file {missing!r}: No such file or directory"):
        server_context(ListenerSecureSocket(CertKey(material.server_cert, missing)))


def test_CertKey_not_a_certificate(material: Material) -> None:
    with _raises(TLSError, f"{PREFIX}no PEM certificate in {material.server_key!r}"):
        server_context(ListenerSecureSocket(CertKey(material.server_key, material.server_key)))


def test_CertKey_key_of_another_certificate(material: Material) -> None:
    with _raises(TLSError, f"{PREFIX}cannot use certificate {material.server_cert!r} with private key "
                           f"{material.client_key!r}: [X509: KEY_VALUES_MISMATCH] key values mismatch"):
        server_context(ListenerSecureSocket(CertKey(material.server_cert, material.client_key)))


@pytest.mark.parametrize("legacy", [False, True], ids=["AES", "3DES"])
def test_KeyStore_loads(material: Material, legacy: bool) -> None:
    store = _p12(material, "server.p12", key_file=material.server_key, cert_file=material.server_cert,
                 cas=[material.ca_pem], encryption=_legacy_3des() if legacy else None)
    ctx = server_context(ListenerSecureSocket(KeyStore(store, "pw")))
    info = _ok(_handshake(ctx, client_context(_client(material))).client)
    assert info.peer_certificate is not None
    assert ("DNS", "localhost") in info.peer_certificate["subjectAltName"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")
def test_KeyStore_openssl_legacy_rc2(material: Material) -> None:
    store = material.path("legacy.p12")
    made = subprocess.run(["openssl", "pkcs12", "-export", "-legacy", "-in", material.server_cert,
                           "-inkey", material.server_key, "-out", store, "-passout", "pass:pw"],
                          capture_output=True, timeout=LONG)
    if made.returncode != 0:
        pytest.skip(f"openssl cannot write legacy stores here: {made.stderr!r}")
    ctx = server_context(ListenerSecureSocket(KeyStore(store, "pw")))
    _ok(_handshake(ctx, client_context(_client(material))).client)


def test_KeyStore_wrong_password(material: Material) -> None:
    store = _p12(material, "server.p12", key_file=material.server_key, cert_file=material.server_cert, cas=[])
    with pytest.raises(TLSError) as info:
        server_context(ListenerSecureSocket(KeyStore(store, "wrong")))
    assert str(info.value).startswith(f"{PREFIX}cannot load KeyStore {store!r}: ")
    assert isinstance(info.value.__cause__, ValueError)


def test_KeyStore_given_a_PEM_file(material: Material) -> None:
    pattern = f"^{re.escape(f'{PREFIX}cannot load KeyStore {material.server_cert!r}: ')}"
    with pytest.raises(TLSError, match=pattern):
        server_context(ListenerSecureSocket(KeyStore(material.server_cert, "pw")))


def test_KeyStore_missing_file(material: Material) -> None:
    missing = material.path("none.p12")
    with _raises(TLSError, f"{PREFIX}cannot read KeyStore {missing!r}: No such file or directory"):
        server_context(ListenerSecureSocket(KeyStore(missing, "pw")))


def test_KeyStore_without_key(material: Material) -> None:
    store = _p12(material, "cas.p12", key_file=None, cert_file=None, cas=[material.ca_pem])
    with _raises(TLSError, f"{PREFIX}KeyStore {store!r} does not hold a private key with its certificate"):
        server_context(ListenerSecureSocket(KeyStore(store, "pw")))


def test_KeyStore_leaves_no_file_or_descriptor(material: Material, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    store = _p12(material, "server.p12", key_file=material.server_key, cert_file=material.server_cert, cas=[])
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    server_context(ListenerSecureSocket(KeyStore(store, "pw")))
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before
    # Without memfd_create: a private temporary file, gone once loaded.
    monkeypatch.setattr(_memfile, "_memfd", lambda: None)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(_memfile.tempfile, "tempdir", str(scratch))
    seen: list[tuple[str, int]] = []
    real = _memfile.transient_file

    def spy(data: bytes) -> Iterator[str]:
        with real(data) as path:
            seen.append((path, stat.S_IMODE(os.stat(path).st_mode)))
            assert b"ENCRYPTED PRIVATE KEY" in Path(path).read_bytes()
            yield path

    monkeypatch.setattr(_keys, "transient_file", contextlib.contextmanager(spy))
    server_context(ListenerSecureSocket(KeyStore(store, "pw")))
    assert [(os.path.dirname(p), mode) for p, mode in seen] == [(str(scratch), 0o600)]
    assert list(scratch.iterdir()) == []


# --- trust -----------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["AES", "3DES"])
def test_TrustStore_trusts_every_certificate(material: Material, legacy: bool) -> None:
    other = trustme.CA()
    other_pem = material.write("other.pem", other.cert_pem.bytes())
    store = _p12(material, "trust.p12", key_file=None, cert_file=None, cas=[material.ca_pem, other_pem],
                 encryption=_legacy_3des() if legacy else None)
    ctx = client_context(_client(material, cert=TrustStore(store, "pw")))
    assert ctx.cert_store_stats()["x509_ca"] == 2
    _ok(_handshake(server_context(_server(material)), ctx).client)


def test_TrustStore_errors(material: Material) -> None:
    missing = material.path("none.p12")
    with _raises(TLSError, f"{PREFIX}cannot read TrustStore {missing!r}: No such file or directory"):
        client_context(_client(material, cert=TrustStore(missing, "pw")))
    with pytest.raises(TLSError, match=f"^{re.escape(PREFIX)}cannot load TrustStore"):
        client_context(_client(material, cert=TrustStore(material.ca_pem, "pw")))


def test_client_context_CA_file_errors(material: Material) -> None:
    missing = material.path("none.pem")
    message = f"{PREFIX}cannot load CA certificates from {missing!r}: No such file or directory"
    with _raises(TLSError, message):
        client_context(_client(material, cert=missing))
    with pytest.raises(TLSError, match=f"^{re.escape(PREFIX)}cannot load CA certificates from "
                                       f"{re.escape(repr(material.server_key))}: "):
        client_context(_client(material, cert=material.server_key))


def test_client_context_system_trust_by_default() -> None:
    ctx = client_context(ClientSecureSocket(verify_hostname=False))
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is False


def test_client_context_cached_per_record(material: Material) -> None:
    first = client_context(_client(material))
    assert client_context(_client(material)) is first
    assert client_context(ClientSecureSocket(cert=material.ca_pem, verify_hostname=False)) is not first


def test_client_context_cache_is_bounded(material: Material) -> None:
    for seconds in range(_contexts.CLIENT_CONTEXT_CACHE_SIZE + 5):
        client_context(_client(material, handshake_timeout=seconds + 1))
    assert len(_contexts._client_contexts._contexts) == _contexts.CLIENT_CONTEXT_CACHE_SIZE


def test_client_context_refuses_disabled_record() -> None:
    with _raises(ConfigError, "TLS is disabled in this ClientSecureSocket (enable=False)"):
        client_context(ClientSecureSocket(enable=False))


# --- handshakes ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_handshake_between_server_and_client_contexts(material: Material, version: str) -> None:
    outcome = _handshake(server_context(_server(material)),
                         client_context(_client(material, protocol=_versions(version))))
    server, client = _ok(outcome.server), _ok(outcome.client)
    assert server.version == client.version == version
    assert server.cipher == client.cipher
    assert server.session_reused is client.session_reused is False
    assert server.peer_certificate is None
    assert client.peer_certificate is not None
    assert client.peer_certificate["subjectAltName"] == (("DNS", "localhost"), ("IP Address", "127.0.0.1"))


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_handshake_mutual_tls(material: Material, version: str) -> None:
    server = server_context(_server(material, mutual_ssl=MutualSsl(material.ca_pem)))
    assert server.verify_mode == ssl.CERT_REQUIRED
    client = client_context(_client(material, key=CertKey(material.client_cert, material.client_key),
                                    protocol=_versions(version)))
    info = _ok(_handshake(server, client).server)
    assert info.peer_certificate is not None
    assert info.peer_certificate["subjectAltName"] == (("email", "client@example.com"),)


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_handshake_mutual_tls_required_refuses_anonymous_client(material: Material, version: str) -> None:
    server = server_context(_server(material, mutual_ssl=MutualSsl(material.ca_pem, VerifyClient.REQUIRE)))
    outcome = _handshake(server, client_context(_client(material, protocol=_versions(version))))
    assert isinstance(outcome.server, ssl.SSLError)
    # TLS 1.3: the client's handshake finished; it learns of the refusal at its first read.
    assert isinstance(outcome.client, (ssl.SSLError, OSError))


def test_handshake_mutual_tls_optional(material: Material) -> None:
    store = _p12(material, "trust.p12", key_file=None, cert_file=None, cas=[material.ca_pem])
    server = server_context(_server(material, mutual_ssl={"cert": {"path": store, "password": "pw"},
                                                          "verify_client": VerifyClient.OPTIONAL}))
    assert server.verify_mode == ssl.CERT_OPTIONAL
    assert _ok(_handshake(server, client_context(_client(material))).server).peer_certificate is None
    keyed = client_context(_client(material, key=CertKey(material.client_cert, material.client_key)))
    assert _ok(_handshake(server, keyed).server).peer_certificate is not None


def test_handshake_mutual_tls_with_client_KeyStore(material: Material) -> None:
    store = _p12(material, "client.p12", key_file=material.client_key, cert_file=material.client_cert,
                 cas=[], encryption=_legacy_3des())
    server = server_context(_server(material, mutual_ssl=MutualSsl(material.ca_pem)))
    client = client_context(_client(material, key=KeyStore(store, "pw")))
    assert _ok(_handshake(server, client).server).peer_certificate is not None


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_handshake_verify_hostname(material: Material, version: str) -> None:
    server = server_context(_server(material))
    strict = client_context(_client(material, protocol=_versions(version)))
    outcome = _handshake(server, strict, hostname="wrong.example")
    assert isinstance(outcome.client, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(outcome.client)
    lax = client_context(_client(material, protocol=_versions(version), verify_hostname=False))
    assert _ok(_handshake(server, lax, hostname="wrong.example").client).version == version


def test_handshake_untrusted_server(material: Material) -> None:
    other = material.write("other.pem", trustme.CA().cert_pem.bytes())
    outcome = _handshake(server_context(_server(material)), client_context(_client(material, cert=other)))
    assert isinstance(outcome.client, ssl.SSLCertVerificationError)


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_handshake_resumes_session_from_SessionCache(material: Material, version: str) -> None:
    cache = SessionCache()
    cfg = _client(material, protocol=_versions(version))
    server, client = server_context(_server(material)), client_context(cfg)
    first = _handshake(server, client, session=cache.get(cfg, "localhost", 443))
    assert _ok(first.client).session_reused is False
    cache.put(cfg, "localhost", 443, first.session)
    session = cache.get(cfg, "localhost", 443)
    assert session is not None
    second = _handshake(server, client_context(cfg), session=session)
    assert _ok(second.client).session_reused is True
    assert _ok(second.server).session_reused is True


def test_handshake_server_without_tickets_does_not_resume_tls13(material: Material) -> None:
    server = server_context(_server(material, session_timeout=0))
    assert server.num_tickets == 0
    assert server.options & ssl.OP_NO_TICKET
    cfg = _client(material, protocol=_versions("TLSv1.3"))
    first = _handshake(server, client_context(cfg))
    second = _handshake(server, client_context(cfg), session=first.session)
    assert _ok(second.client).session_reused is False


def test_tls_info_before_handshake(material: Material) -> None:
    a, b = gevent.socket.socketpair()
    sock = client_context(_client(material)).wrap_socket(a, server_hostname="localhost",
                                                          do_handshake_on_connect=False)
    try:
        with _raises(ValueError, "the TLS handshake has not completed"):
            tls_info(sock)
    finally:
        sock.close()
        b.close()


# --- SessionCache and handshake_timeout ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _session(timeout: int = 7200) -> Any:
    return types.SimpleNamespace(timeout=timeout)


def test_SessionCache_expires_at_session_timeout() -> None:
    clock = Clock()
    cache = SessionCache(clock=clock)
    cfg = ClientSecureSocket(session_timeout=10)
    session = _session()
    cache.put(cfg, "h", 1, session)
    assert cache.get(cfg, "h", 1) is session
    assert cache.get(cfg, "h", 2) is None
    assert cache.get(cfg, "other", 1) is None
    assert cache.get(ClientSecureSocket(session_timeout=11), "h", 1) is None
    clock.now += 9.9
    assert cache.get(cfg, "h", 1) is session
    clock.now += 0.1
    assert cache.get(cfg, "h", 1) is None
    assert len(cache) == 0


def test_SessionCache_default_timeout_is_300s() -> None:
    clock = Clock()
    cache = SessionCache(clock=clock)
    cfg = ClientSecureSocket()
    cache.put(cfg, "h", 1, _session())
    clock.now += 299
    assert cache.get(cfg, "h", 1) is not None
    clock.now += 1
    assert cache.get(cfg, "h", 1) is None


def test_SessionCache_honours_server_lifetime() -> None:
    clock = Clock()
    cache = SessionCache(clock=clock)
    cfg = ClientSecureSocket()
    cache.put(cfg, "h", 1, _session(timeout=5))
    clock.now += 5
    assert cache.get(cfg, "h", 1) is None


def test_SessionCache_disabled_by_non_positive_timeout() -> None:
    cache = SessionCache()
    cfg = ClientSecureSocket(session_timeout=0)
    cache.put(cfg, "h", 1, _session())
    cache.put(ClientSecureSocket(), "h", 1, None)
    assert cache.get(cfg, "h", 1) is None
    assert len(cache) == 0


def test_SessionCache_is_bounded_dropping_oldest() -> None:
    cache = SessionCache(size=3)
    cfg = ClientSecureSocket()
    for port in range(5):
        cache.put(cfg, "h", port, _session())
    assert len(cache) == 3
    assert cache.get(cfg, "h", 0) is None
    assert cache.get(cfg, "h", 1) is None
    assert cache.get(cfg, "h", 4) is not None
    cache.clear()
    assert len(cache) == 0


def test_SESSIONS_is_process_wide() -> None:
    assert isinstance(_sessions.SESSIONS, SessionCache)


# --- cryptography is loaded only where it is needed --------------------------------------------

#: Run in a fresh interpreter: a plain listener, then a PEM TLS listener with a TLS client,
#: each checked for ``cryptography`` in ``sys.modules``; prints one JSON line.
_LAZY_SCRIPT = """
import json, sys
import gtcp

class Echo:
    def on_bytes(self, data): return data

class Svc:
    def on_connect(self, caller): return Echo()

seen = {"import": "cryptography" in sys.modules}
plain = gtcp.Listener(0, local_host="127.0.0.1")
plain.attach(Svc())
plain.start()
with gtcp.Client("127.0.0.1", plain.port, timeout=10) as client:
    client.write_bytes(b"plain")
    assert client.read_bytes() == b"plain"
seen["plain"] = "cryptography" in sys.modules
cert, key, ca = sys.argv[1:4]
secure = gtcp.Listener(0, local_host="127.0.0.1",
                       secure_socket=gtcp.ListenerSecureSocket(gtcp.CertKey(cert, key)))
secure.attach(Svc())
secure.start()
with gtcp.Client("localhost", secure.port, timeout=10,
                 secure_socket=gtcp.ClientSecureSocket(cert=ca)) as client:
    client.write_bytes(b"tls")
    assert client.read_bytes() == b"tls"
seen["pem_tls"] = "cryptography" in sys.modules
from gtcp._contexts import server_context
try:  # the diagnosis of a failure may import it, and must still work in a fresh process
    server_context(gtcp.ListenerSecureSocket(gtcp.CertKey(cert, ca)))
except gtcp.TLSError as exc:
    seen["diagnosis"] = str(exc)
plain.immediate_stop()
secure.immediate_stop()
print(json.dumps(seen))
"""


def _fresh_python(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=60, env=child_env(), check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cryptography_is_not_imported_for_plain_or_PEM_listeners(material: Material) -> None:
    out = _fresh_python(_LAZY_SCRIPT, material.server_cert, material.server_key, material.ca_pem)
    seen = json.loads(out)
    assert seen["import"] is False
    assert seen["plain"] is False
    assert seen["pem_tls"] is False
    assert seen["diagnosis"].startswith(f"{PREFIX}cannot load private key {material.ca_pem!r}: ")


def test_cryptography_is_imported_for_PKCS12_stores(material: Material) -> None:
    store = _p12(material, "server.p12", key_file=material.server_key, cert_file=material.server_cert, cas=[])
    code = (
        "import sys, gtcp\n"
        "from gtcp._contexts import server_context\n"
        "assert 'cryptography' not in sys.modules\n"
        "server_context(gtcp.ListenerSecureSocket(gtcp.KeyStore(sys.argv[1], 'pw')))\n"
        "print('cryptography' in sys.modules)\n"
    )
    assert _fresh_python(code, store).strip() == "True"
