"""Tests of gtcp._config: the TLS configuration records."""

from __future__ import annotations

import dataclasses
import pathlib
import pickle
import re
from decimal import Decimal
from typing import Any

import pytest

from gtcp._config import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    CertKey,
    ClientSecureSocket,
    KeyStore,
    ListenerSecureSocket,
    MutualSsl,
    Protocol,
    ProtocolConfig,
    TrustStore,
    VerifyClient,
    client_secure_socket,
    listener_secure_socket,
)
from gtcp._errors import ConfigError

pytestmark = pytest.mark.timeout(30)

CERT_BLANK = "Certificate file location must be provided for secure connection"
KEY_BLANK = "Private key file location must be provided for secure connection"
KEYSTORE_PATH_BLANK = "KeyStore file location must be provided for secure connection"
KEYSTORE_PASSWORD_BLANK = "KeyStore password must be provided for secure connection"
TRUSTSTORE_PATH_BLANK = "TrustStore file location must be provided for secure connection"
TRUSTSTORE_PASSWORD_BLANK = "TrustStore password must be provided for secure connection"

BLANKS = ["", "   ", "\t\n"]


def _raises(message: str) -> Any:
    return pytest.raises(ConfigError, match=f"^{re.escape(message)}$")


# --- blank fields: Ballerina's exact messages -------------------------------------------


@pytest.mark.parametrize("blank", BLANKS)
def test_CertKey_blank_cert_file(blank: str) -> None:
    with _raises(CERT_BLANK):
        CertKey(blank, "k.pem")


@pytest.mark.parametrize("blank", BLANKS)
def test_CertKey_blank_key_file(blank: str) -> None:
    with _raises(KEY_BLANK):
        CertKey("c.pem", blank)


@pytest.mark.parametrize("blank", BLANKS)
def test_KeyStore_blank_fields(blank: str) -> None:
    with _raises(KEYSTORE_PATH_BLANK):
        KeyStore(blank, "pw")
    with _raises(KEYSTORE_PASSWORD_BLANK):
        KeyStore("ks.p12", blank)


@pytest.mark.parametrize("blank", BLANKS)
def test_TrustStore_blank_fields(blank: str) -> None:
    with _raises(TRUSTSTORE_PATH_BLANK):
        TrustStore(blank, "pw")
    with _raises(TRUSTSTORE_PASSWORD_BLANK):
        TrustStore("ts.p12", blank)


@pytest.mark.parametrize("blank", BLANKS)
def test_ClientSecureSocket_blank_cert(blank: str) -> None:
    with _raises(CERT_BLANK):
        ClientSecureSocket(cert=blank)


@pytest.mark.parametrize("blank", BLANKS)
def test_MutualSsl_blank_cert(blank: str) -> None:
    with _raises(CERT_BLANK):
        MutualSsl(blank)


def test_CertKey_blank_checked_in_field_order() -> None:
    with _raises(CERT_BLANK):
        CertKey("", "")


def test_records_missing_dict_fields_read_as_blank() -> None:
    with _raises(KEY_BLANK):
        ListenerSecureSocket(key={"cert_file": "c.pem"})
    with _raises(KEYSTORE_PASSWORD_BLANK):
        ListenerSecureSocket(key={"path": "ks.p12"})
    with _raises(TRUSTSTORE_PATH_BLANK):
        MutualSsl({"password": "pw"})
    with _raises(CERT_BLANK):
        listener_secure_socket({"key": {"key_file": "k.pem"}})


def test_records_non_string_fields() -> None:
    with _raises("cert_file must be a file path, got 42"):
        CertKey(42, "k.pem")  # type: ignore[arg-type]
    with _raises("key_password must be a string, got bytes"):
        CertKey("c.pem", "k.pem", b"secret")  # type: ignore[arg-type]
    with _raises("KeyStore password must be a string, got int"):
        KeyStore("ks.p12", 1234)  # type: ignore[arg-type]


# --- construction, equality, hashing --------------------------------------------------------


def test_CertKey_positional_and_keyword_are_equal() -> None:
    positional = CertKey("c.pem", "k.pem", "pw")
    keyword = CertKey(key_file="k.pem", cert_file="c.pem", key_password="pw")
    assert positional == keyword
    assert hash(positional) == hash(keyword)
    assert positional != CertKey("c.pem", "k.pem")


def test_records_accept_path_objects() -> None:
    key = CertKey(pathlib.Path("/etc/c.pem"), pathlib.Path("k.pem"))
    assert key.cert_file == "/etc/c.pem"
    assert key.key_file == "k.pem"
    assert KeyStore(pathlib.Path("ks.p12"), "pw").path == "ks.p12"
    assert ClientSecureSocket(cert=pathlib.Path("ca.pem")).cert == "ca.pem"


def test_records_are_frozen() -> None:
    key = CertKey("c.pem", "k.pem")
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.cert_file = "other.pem"  # type: ignore[misc]


def test_records_hide_passwords_in_repr() -> None:
    text = repr(ListenerSecureSocket(CertKey("c.pem", "k.pem", "s3cret"),
                                     mutual_ssl=MutualSsl(TrustStore("t.p12", "hunter2"))))
    assert "s3cret" not in text
    assert "hunter2" not in text
    assert "c.pem" in text
    assert repr(KeyStore("ks.p12", "pw")) == "KeyStore(path='ks.p12')"


def test_ListenerSecureSocket_defaults() -> None:
    cfg = ListenerSecureSocket(CertKey("c.pem", "k.pem"))
    assert cfg.protocol is None
    assert cfg.ciphers == ()
    assert cfg.handshake_timeout == DEFAULT_HANDSHAKE_TIMEOUT == 60.0
    assert cfg.session_timeout is None
    assert cfg.mutual_ssl is None


def test_ClientSecureSocket_defaults() -> None:
    cfg = ClientSecureSocket()
    assert cfg == ClientSecureSocket(True, None, None, None, None, 60.0, None, True, None)
    assert cfg.enable is True
    assert cfg.verify_hostname is True
    assert cfg.ciphers is None


def test_records_lists_become_tuples_and_hash() -> None:
    cfg = ListenerSecureSocket(
        key=CertKey("c.pem", "k.pem"),
        protocol=ProtocolConfig(Protocol.TLS, ["TLSv1.2", "TLSv1.3"]),
        ciphers=["TLS_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"],
    )
    assert cfg.ciphers == ("TLS_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert cfg.protocol is not None
    assert cfg.protocol.versions == ("TLSv1.2", "TLSv1.3")
    same = ListenerSecureSocket(
        key=CertKey("c.pem", "k.pem"),
        protocol=ProtocolConfig("TLS", ("TLSv1.2", "TLSv1.3")),
        ciphers=("TLS_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    )
    assert cfg == same
    assert {cfg: 1}[same] == 1


def test_records_timeouts_accept_int_float_decimal() -> None:
    key = CertKey("c.pem", "k.pem")
    a = ListenerSecureSocket(key, handshake_timeout=5, session_timeout=Decimal("2.5"))
    b = ListenerSecureSocket(key, handshake_timeout=Decimal("5"), session_timeout=2.5)
    assert a == b
    assert hash(a) == hash(b)
    assert type(a.handshake_timeout) is float
    assert type(a.session_timeout) is float
    assert ClientSecureSocket(handshake_timeout=0).handshake_timeout == 0.0
    assert ClientSecureSocket(handshake_timeout=-1).handshake_timeout == -1.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("x", "handshake_timeout must be a number of seconds, got 'x'"),
        (True, "handshake_timeout must be a number of seconds, got True"),
        (None, "handshake_timeout must be a number of seconds, got None"),
        (float("nan"), "handshake_timeout must be a number of seconds, got nan"),
        (Decimal("NaN"), "handshake_timeout must be a number of seconds, got Decimal('NaN')"),
        (Decimal("sNaN"), "handshake_timeout must be a number of seconds, got Decimal('sNaN')"),
    ],
)
def test_records_bad_handshake_timeout(value: object, message: str) -> None:
    with _raises(message):
        ListenerSecureSocket(CertKey("c.pem", "k.pem"), handshake_timeout=value)  # type: ignore[arg-type]
    with _raises(message):
        ClientSecureSocket(handshake_timeout=value)  # type: ignore[arg-type]


def test_records_bad_session_timeout() -> None:
    with _raises("session_timeout must be a number of seconds, got '300'"):
        ClientSecureSocket(session_timeout="300")  # type: ignore[arg-type]
    with _raises("session_timeout must be a number of seconds, got [1]"):
        ListenerSecureSocket(CertKey("c", "k"), session_timeout=[1])  # type: ignore[arg-type]


def test_records_pickle_and_replace() -> None:
    cfg = ClientSecureSocket(cert=TrustStore("t.p12", "pw"), key=CertKey("c", "k", "pw"),
                             ciphers=["AES128-SHA"])
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    changed = dataclasses.replace(cfg, verify_hostname=False)
    assert changed.verify_hostname is False
    assert changed.cert == cfg.cert
    with _raises(CERT_BLANK):
        dataclasses.replace(cfg, cert="")


# --- dicts wherever a record goes ----------------------------------------------------------


def test_ListenerSecureSocket_accepts_nested_dicts() -> None:
    cfg = ListenerSecureSocket(
        key={"cert_file": "c.pem", "key_file": "k.pem"},
        protocol={"name": "TLS", "versions": ["TLSv1.2"]},
        mutual_ssl={"cert": {"path": "t.p12", "password": "pw"}, "verify_client": "OPTIONAL"},
    )
    assert cfg.key == CertKey("c.pem", "k.pem")
    assert cfg.protocol == ProtocolConfig(Protocol.TLS, ("TLSv1.2",))
    assert cfg.mutual_ssl == MutualSsl(TrustStore("t.p12", "pw"), VerifyClient.OPTIONAL)


def test_ListenerSecureSocket_key_dict_as_KeyStore() -> None:
    cfg = ListenerSecureSocket(key={"path": "ks.p12", "password": "pw"})
    assert cfg.key == KeyStore("ks.p12", "pw")


def test_listener_secure_socket_whole_dict() -> None:
    cfg = listener_secure_socket(
        {"key": {"cert_file": "c.pem", "key_file": "k.pem", "key_password": "pw"}, "ciphers": ["AES128-SHA"]}
    )
    assert cfg == ListenerSecureSocket(CertKey("c.pem", "k.pem", "pw"), ciphers=("AES128-SHA",))


def test_listener_secure_socket_passes_record_and_None() -> None:
    cfg = ListenerSecureSocket(CertKey("c.pem", "k.pem"))
    assert listener_secure_socket(cfg) is cfg
    assert listener_secure_socket(None) is None


def test_listener_secure_socket_rejects_other_types() -> None:
    with _raises("secure_socket must be a ListenerSecureSocket, a dict or an ssl.SSLContext, got int"):
        listener_secure_socket(1)
    with _raises("secure_socket must be a ListenerSecureSocket, a dict or an ssl.SSLContext, "
                 "got ClientSecureSocket"):
        listener_secure_socket(ClientSecureSocket())


def test_client_secure_socket_whole_dict() -> None:
    cfg = client_secure_socket(
        {"cert": "ca.pem", "key": {"path": "ks.p12", "password": "pw"}, "verify_hostname": False}
    )
    assert cfg == ClientSecureSocket(cert="ca.pem", key=KeyStore("ks.p12", "pw"), verify_hostname=False)


def test_client_secure_socket_cert_dict_is_TrustStore() -> None:
    cfg = client_secure_socket({"cert": {"path": "t.p12", "password": "pw"}})
    assert cfg is not None
    assert cfg.cert == TrustStore("t.p12", "pw")


def test_client_secure_socket_passes_record_and_None() -> None:
    cfg = ClientSecureSocket(cert="ca.pem")
    assert client_secure_socket(cfg) is cfg
    assert client_secure_socket(None) is None


def test_client_secure_socket_rejects_other_types() -> None:
    with _raises("secure_socket must be a ClientSecureSocket, a dict or an ssl.SSLContext, got str"):
        client_secure_socket("ca.pem")
    with _raises("secure_socket must be a ClientSecureSocket, a dict or an ssl.SSLContext, "
                 "got ListenerSecureSocket"):
        client_secure_socket(ListenerSecureSocket(CertKey("c", "k")))


def test_records_unknown_dict_keys() -> None:
    with _raises("Unknown CertKey field(s): 'certFile' (expected cert_file, key_file, key_password)"):
        ListenerSecureSocket(key={"cert_file": "c", "key_file": "k", "certFile": "c"})
    with _raises(
        "Unknown ClientSecureSocket field(s): 'verifyHostName', 'x' (expected cert, ciphers, enable, "
        "handshake_timeout, key, protocol, server_name, session_timeout, verify_hostname)"
    ):
        client_secure_socket({"verifyHostName": False, "x": 1})
    with _raises("Unknown ProtocolConfig field(s): 'version' (expected name, versions)"):
        ClientSecureSocket(protocol={"name": "TLS", "version": ["TLSv1.2"]})


def test_records_key_dict_of_neither_kind() -> None:
    with _raises(
        "key dict must have the fields of a CertKey (cert_file, key_file, key_password) "
        "or of a KeyStore (path, password), got ['file']"
    ):
        ListenerSecureSocket(key={"file": "x"})


def test_records_wrong_nested_types() -> None:
    with _raises("key must be a CertKey or a KeyStore, got TrustStore"):
        ListenerSecureSocket(key=TrustStore("t", "pw"))  # type: ignore[arg-type]
    with _raises("key must be a CertKey or a KeyStore, got NoneType"):
        ListenerSecureSocket(key=None)  # type: ignore[arg-type]
    with _raises("cert must be a certificate file path or a TrustStore, got KeyStore"):
        ClientSecureSocket(cert=KeyStore("k", "pw"))  # type: ignore[arg-type]
    with _raises("protocol must be a ProtocolConfig, got str"):
        ClientSecureSocket(protocol="TLSv1.2")  # type: ignore[arg-type]
    with _raises("mutual_ssl must be a MutualSsl, got bool"):
        ListenerSecureSocket(CertKey("c", "k"), mutual_ssl=True)  # type: ignore[arg-type]


# --- ClientSecureSocket specifics ----------------------------------------------------------


def test_ClientSecureSocket_disabled_validates_nothing() -> None:
    cfg = ClientSecureSocket(enable=False, cert="", ciphers=["NOT-A-CIPHER"], handshake_timeout="x",
                             protocol={"name": "TLS", "versions": ["TLSv9"]})  # type: ignore[arg-type]
    assert cfg.enable is False
    assert cfg.cert == ""
    assert client_secure_socket(cfg) is None
    assert client_secure_socket({"enable": False, "key": {"cert_file": ""}}) is None


def test_ClientSecureSocket_disabled_still_normalises_valid_fields() -> None:
    cfg = ClientSecureSocket(enable=False, ciphers=["AES128-SHA"], handshake_timeout=Decimal(3))
    assert cfg.ciphers == ("AES128-SHA",)
    assert cfg.handshake_timeout == 3.0


def test_ClientSecureSocket_flags_must_be_bool() -> None:
    with _raises("enable must be True or False, got 1"):
        ClientSecureSocket(enable=1)  # type: ignore[arg-type]
    with _raises("verify_hostname must be True or False, got 'no'"):
        ClientSecureSocket(verify_hostname="no")  # type: ignore[arg-type]


def test_ClientSecureSocket_server_name() -> None:
    assert ClientSecureSocket(server_name=" example.com ").server_name == "example.com"
    with _raises("server_name must be a non-blank host name, got ' '"):
        ClientSecureSocket(server_name=" ")


def test_ClientSecureSocket_empty_ciphers_mean_defaults() -> None:
    assert ClientSecureSocket(ciphers=[]) == ClientSecureSocket()
    assert ListenerSecureSocket(CertKey("c", "k"), ciphers=None) == ListenerSecureSocket(CertKey("c", "k"))


# --- protocol, versions, ciphers -----------------------------------------------------------


def test_ProtocolConfig_names() -> None:
    assert ProtocolConfig("tls").name is Protocol.TLS
    assert ProtocolConfig(Protocol.SSL).name is Protocol.SSL
    assert ProtocolConfig("TLS").versions == ()
    with _raises("ProtocolConfig name must be Protocol.TLS or Protocol.SSL, got 'DTLS'"):
        ProtocolConfig("DTLS")
    with _raises("ProtocolConfig name must be Protocol.TLS or Protocol.SSL, got None"):
        ClientSecureSocket(protocol={"versions": ["TLSv1.2"]})


def test_ProtocolConfig_unknown_version() -> None:
    with _raises("Unknown TLS protocol version: 'TLSv9'"):
        ProtocolConfig("TLS", ["TLSv1.2", "TLSv9"])


def test_ProtocolConfig_no_supported_version() -> None:
    # No current OpenSSL has SSLv3 compiled in: refused when the record is built.
    with _raises("No supported TLS protocol version in ['SSLv3']"):
        ProtocolConfig("SSL", ["SSLv3"])


def test_ProtocolConfig_versions_must_be_a_list() -> None:
    with _raises("versions must be a list of TLS protocol version names, got 'TLSv1.2'"):
        ProtocolConfig("TLS", "TLSv1.2")
    with _raises("versions must be a list of TLS protocol version names, got 1.2 in it"):
        ProtocolConfig("TLS", [1.2])  # type: ignore[list-item]


def test_MutualSsl_verify_client() -> None:
    assert MutualSsl("ca.pem").verify_client is VerifyClient.REQUIRE
    assert MutualSsl("ca.pem", "optional").verify_client is VerifyClient.OPTIONAL
    with _raises("verify_client must be VerifyClient.REQUIRE or VerifyClient.OPTIONAL, got 'NONE'"):
        MutualSsl("ca.pem", "NONE")


def test_records_unknown_ciphers_listed_when_built() -> None:
    with _raises("Unknown or unsupported cipher suites: 'FOO', 'TLS_NOPE'"):
        ListenerSecureSocket(CertKey("c", "k"), ciphers=["FOO", "TLS_AES_128_GCM_SHA256", "TLS_NOPE"])
    with _raises("Unknown or unsupported cipher suites: 'FOO'"):
        ClientSecureSocket(ciphers=["FOO"])


def test_records_ciphers_must_be_a_list() -> None:
    with _raises("ciphers must be a list of cipher suite names, got 'AES128-SHA:AES256-SHA'"):
        ClientSecureSocket(ciphers="AES128-SHA:AES256-SHA")
    with _raises("ciphers must be a list of cipher suite names, got '' in it"):
        ListenerSecureSocket(CertKey("c", "k"), ciphers=["AES128-SHA", ""])


def test_records_ciphers_and_versions_that_cannot_meet() -> None:
    with _raises(
        "No TLS protocol version suits both the versions ['TLSv1.2'] "
        "and the ciphers ['TLS_AES_128_GCM_SHA256']"
    ):
        ClientSecureSocket(protocol=ProtocolConfig("TLS", ["TLSv1.2"]), ciphers=["TLS_AES_128_GCM_SHA256"])
    with _raises(
        "No TLS protocol version suits both the versions ['TLSv1.3'] and the ciphers ['AES128-SHA']"
    ):
        ListenerSecureSocket(CertKey("c", "k"), protocol=ProtocolConfig("TLS", ["TLSv1.3"]),
                             ciphers=["AES128-SHA"])
