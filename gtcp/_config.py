"""TLS configuration records: Ballerina's ``tcp:SecureSocket`` types as frozen dataclasses.

Every record is checked when it is built, so a bad configuration raises
:class:`~gtcp.ConfigError` before any file is opened or any socket is bound.
Blank required fields raise Ballerina's exact messages (``Certificate file
location must be provided for secure connection`` and the like); any other bad
field raises a message that names the field.

Wherever a record is accepted, a ``dict`` with the same keys is accepted too
(nested dicts included). The constructors normalise what they are given, so a
stored field always holds a record, a ``tuple`` (never a ``list``) or a
``float`` (never a ``Decimal``): records are hashable and compare equal when
they mean the same thing. ``gtcp._contexts`` and ``gtcp._sessions`` rely on
that to cache TLS contexts and sessions per record.

The records are dataclasses with ``init=False`` and a hand-written
``__init__``: the parameters accept the wide input types (dicts, lists,
``Decimal``, path-like objects) while the fields are typed with the narrow,
normalised types that the rest of gtcp reads. Fields may be given positionally,
in the order of the README's table of fields (Ballerina's), or by keyword.

Which TLS versions and cipher suites exist is a question for the local OpenSSL,
so ``ProtocolConfig`` and the secure-socket records ask
:func:`gtcp._tls_probe.negotiation_plan`, passing it their version names and
cipher names (not the records: ``gtcp._tls_probe`` does not import this
module).

The escape hatch: wherever a record is accepted, a ready ``ssl.SSLContext``
is accepted too (the standard library's class or gevent's, which subclasses
it), for TLS settings the records do not cover. :func:`listener_secure_socket`
and :func:`client_secure_socket` check that it was made for the right side and
hand it back as it is; gtcp never changes it. What a record would say, a raw
context leaves to gtcp's defaults (:func:`handshake_deadline`).
"""

from __future__ import annotations

import _ssl
import dataclasses
import enum
import os
import ssl
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, TypeVar, cast

from ._errors import ConfigError
from ._timeouts import seconds
from ._tls_probe import negotiation_plan

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_SESSION_TIMEOUT",
    "TLS_VERSION_NAMES",
    "CertKey",
    "ClientSecureSocket",
    "KeyStore",
    "ListenerSecureSocket",
    "MutualSsl",
    "Protocol",
    "ProtocolConfig",
    "TrustStore",
    "VerifyClient",
    "client_secure_socket",
    "handshake_deadline",
    "is_ssl_context",
    "listener_secure_socket",
]

#: Seconds a TLS handshake may take by default, on both sides. Long enough for
#: a slow mobile link and a cold client, short enough that a peer which connects
#: and then says nothing does not hold a connection slot for long.
DEFAULT_HANDSHAKE_TIMEOUT = 60.0

#: Seconds a client keeps a TLS session for resumption when ``session_timeout``
#: is None: 300 s, the lifetime OpenSSL's manual documents;
#: note that OpenSSL 3.0 servers actually issue sessions valid for 7200 s, so on
#: a gtcp client the shorter of the two applies.
DEFAULT_SESSION_TIMEOUT = 300.0

#: The protocol version names Ballerina (and Java) accept, oldest first.
TLS_VERSION_NAMES = ("SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")

#: What a timeout argument may be: ``int``, ``float`` or ``decimal.Decimal``.
Seconds = float | Decimal

#: A file location: ``str`` or any ``os.PathLike[str]`` (stored as ``str``).
FilePath = str | os.PathLike[str]

_CERT_FILE_BLANK = "Certificate file location must be provided for secure connection"
_KEY_FILE_BLANK = "Private key file location must be provided for secure connection"
_KEYSTORE_PATH_BLANK = "KeyStore file location must be provided for secure connection"
_KEYSTORE_PASSWORD_BLANK = "KeyStore password must be provided for secure connection"
_TRUSTSTORE_PATH_BLANK = "TrustStore file location must be provided for secure connection"
_TRUSTSTORE_PASSWORD_BLANK = "TrustStore password must be provided for secure connection"

_R = TypeVar("_R")


class Protocol(enum.Enum):
    """The protocol family of :class:`ProtocolConfig` (Ballerina ``tcp:Protocol``).

    Kept for fidelity with Ballerina: the versions listed in the
    ``ProtocolConfig`` decide what is negotiated, not this name.
    """

    TLS = "TLS"
    SSL = "SSL"


class VerifyClient(enum.Enum):
    """Whether a listener with :class:`MutualSsl` insists on a client certificate.

    ``REQUIRE`` refuses a client without a valid certificate; ``OPTIONAL``
    accepts a client without one but still refuses an invalid one.
    """

    REQUIRE = "REQUIRE"
    OPTIONAL = "OPTIONAL"


# ---------------------------------------------------------------------------
# Field checks. Each returns the normalised value or raises ConfigError.


def _type_name(value: object) -> str:
    return type(value).__name__


def _file(value: object, field: str, blank_message: str) -> str:
    """A file location: None and blank strings are "not provided"."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(blank_message)
    if not isinstance(value, str):
        raise ConfigError(f"{field} must be a file path, got {value!r}")
    return value


def _password(value: object, field: str, blank_message: str | None) -> str | None:
    """A password; its value never appears in a message."""
    if blank_message is not None and (value is None or (isinstance(value, str) and not value.strip())):
        raise ConfigError(blank_message)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{field} must be a string, got {_type_name(value)}")
    return value


def _optional_seconds(value: object, field: str) -> float | None:
    """A record field in seconds that may be None (``session_timeout``)."""
    return None if value is None else seconds(value, field, as_given=True)


def _flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{field} must be True or False, got {value!r}")
    return value


def _names(value: object, field: str, what: str) -> tuple[str, ...]:
    """A list of non-blank names, stored as a tuple."""
    if isinstance(value, (str, bytes)) or isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise ConfigError(f"{field} must be a list of {what}, got {value!r}")
    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{field} must be a list of {what}, got {name!r} in it")
    return tuple(name.strip() for name in names)


def _enum(value: object, kind: type[enum.Enum], field: str) -> Any:
    """An enum member, or its name/value as a string (any case)."""
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        for member in kind:
            if value.strip().upper() == member.name:
                return member
    choices = " or ".join(f"{kind.__name__}.{member.name}" for member in kind)
    raise ConfigError(f"{field} must be {choices}, got {value!r}")


def _from_mapping(factory: Callable[..., _R], value: Mapping[Any, Any], record: str) -> _R:
    """Build ``record`` from a dict: unknown keys are refused, missing ones are None.

    A missing required field is passed as None so that the record reports it
    with the same message as a blank one.
    """
    fields = dataclasses.fields(cast(Any, factory))
    names = {field.name for field in fields}
    unknown = [key for key in value if key not in names]
    if unknown:
        listed = ", ".join(repr(key) for key in unknown)
        raise ConfigError(f"Unknown {record} field(s): {listed} (expected {', '.join(sorted(names))})")
    kwargs = {field.name: None for field in fields if field.default is dataclasses.MISSING}
    kwargs.update(value)
    return factory(**kwargs)


def _key(value: object, field: str) -> CertKey | KeyStore:
    """A private key and certificate chain: CertKey, KeyStore or a dict of either."""
    if isinstance(value, (CertKey, KeyStore)):
        return value
    if isinstance(value, Mapping):
        if {"cert_file", "key_file", "key_password"} & set(value):
            return _from_mapping(CertKey, value, "CertKey")
        if {"path", "password"} & set(value):
            return _from_mapping(KeyStore, value, "KeyStore")
        raise ConfigError(
            f"{field} dict must have the fields of a CertKey (cert_file, key_file, key_password)"
            f" or of a KeyStore (path, password), got {sorted(map(str, value))}"
        )
    raise ConfigError(f"{field} must be a CertKey or a KeyStore, got {_type_name(value)}")


def _trust(value: object, field: str) -> str | TrustStore:
    """Trusted certificates: a PEM file path, a TrustStore or a dict of one."""
    if isinstance(value, TrustStore):
        return value
    if isinstance(value, Mapping):
        return _from_mapping(TrustStore, value, "TrustStore")
    if isinstance(value, (str, os.PathLike)) or value is None:
        return _file(value, field, _CERT_FILE_BLANK)
    raise ConfigError(f"{field} must be a certificate file path or a TrustStore, got {_type_name(value)}")


def _protocol(value: object) -> ProtocolConfig | None:
    if value is None or isinstance(value, ProtocolConfig):
        return value
    if isinstance(value, Mapping):
        return _from_mapping(ProtocolConfig, value, "ProtocolConfig")
    raise ConfigError(f"protocol must be a ProtocolConfig, got {_type_name(value)}")


def _mutual_ssl(value: object) -> MutualSsl | None:
    if value is None or isinstance(value, MutualSsl):
        return value
    if isinstance(value, Mapping):
        return _from_mapping(MutualSsl, value, "MutualSsl")
    raise ConfigError(f"mutual_ssl must be a MutualSsl, got {_type_name(value)}")


def _check_tls(protocol: ProtocolConfig | None, ciphers: tuple[str, ...] | None) -> None:
    """Ask the local OpenSSL whether the versions and ciphers can work together."""
    negotiation_plan(protocol.versions if protocol is not None else (), ciphers)


# ---------------------------------------------------------------------------
# Records.


@dataclasses.dataclass(frozen=True, init=False)
class CertKey:
    """A PEM certificate chain and its PEM private key (Ballerina ``tcp:CertKey``).

    The key may be PKCS#8 or traditional, encrypted with ``key_password`` or not.
    """

    cert_file: str
    key_file: str
    key_password: str | None = dataclasses.field(default=None, repr=False)

    def __init__(self, cert_file: FilePath, key_file: FilePath, key_password: str | None = None) -> None:
        object.__setattr__(self, "cert_file", _file(cert_file, "cert_file", _CERT_FILE_BLANK))
        object.__setattr__(self, "key_file", _file(key_file, "key_file", _KEY_FILE_BLANK))
        object.__setattr__(self, "key_password", _password(key_password, "key_password", None))


@dataclasses.dataclass(frozen=True, init=False)
class KeyStore:
    """A PKCS#12 file holding a private key and its certificate chain (``crypto:KeyStore``)."""

    path: str
    password: str = dataclasses.field(repr=False)

    def __init__(self, path: FilePath, password: str) -> None:
        object.__setattr__(self, "path", _file(path, "KeyStore path", _KEYSTORE_PATH_BLANK))
        object.__setattr__(
            self, "password", _password(password, "KeyStore password", _KEYSTORE_PASSWORD_BLANK)
        )


@dataclasses.dataclass(frozen=True, init=False)
class TrustStore:
    """A PKCS#12 file of trusted certificates (``crypto:TrustStore``).

    Every certificate in it becomes a trusted CA certificate.
    """

    path: str
    password: str = dataclasses.field(repr=False)

    def __init__(self, path: FilePath, password: str) -> None:
        object.__setattr__(self, "path", _file(path, "TrustStore path", _TRUSTSTORE_PATH_BLANK))
        object.__setattr__(
            self, "password", _password(password, "TrustStore password", _TRUSTSTORE_PASSWORD_BLANK)
        )


@dataclasses.dataclass(frozen=True, init=False)
class ProtocolConfig:
    """The protocol and the versions allowed (Ballerina ``tcp:ProtocolConfig``).

    ``versions`` lists names from :data:`TLS_VERSION_NAMES`; the connection may
    use any version from the lowest to the highest listed that the local
    OpenSSL supports. Empty means the default, TLS 1.2 and 1.3. An unknown name,
    or a list without any version the local OpenSSL can speak, raises
    ``ConfigError``.
    """

    name: Protocol
    versions: tuple[str, ...] = ()

    def __init__(self, name: Protocol | str, versions: Iterable[str] = ()) -> None:
        object.__setattr__(self, "name", _enum(name, Protocol, "ProtocolConfig name"))
        names = _names(versions, "versions", "TLS protocol version names")
        for version in names:
            if version not in TLS_VERSION_NAMES:
                raise ConfigError(f"Unknown TLS protocol version: {version!r}")
        object.__setattr__(self, "versions", names)
        negotiation_plan(names, None)


@dataclasses.dataclass(frozen=True, init=False)
class MutualSsl:
    """Client-certificate authentication on a listener (``mutualSsl``).

    ``cert`` is a PEM file of CA certificates or a :class:`TrustStore`; client
    certificates must chain to one of them.
    """

    cert: str | TrustStore
    verify_client: VerifyClient = VerifyClient.REQUIRE

    def __init__(self, cert: FilePath | TrustStore | Mapping[str, Any],
                 verify_client: VerifyClient | str = VerifyClient.REQUIRE) -> None:
        object.__setattr__(self, "cert", _trust(cert, "mutual_ssl cert"))
        object.__setattr__(self, "verify_client", _enum(verify_client, VerifyClient, "verify_client"))


@dataclasses.dataclass(frozen=True, init=False)
class ListenerSecureSocket:
    """TLS settings of a :class:`~gtcp.Listener` (Ballerina ``tcp:ListenerSecureSocket``).

    ``key`` is the server's certificate and key. ``ciphers`` takes IANA or
    OpenSSL suite names (empty: OpenSSL's defaults). ``handshake_timeout``
    bounds each connection's handshake (``<= 0`` disables it).
    ``session_timeout`` cannot be applied by Python's ``ssl`` on a server
    except that ``<= 0`` turns session tickets off (see ``gtcp._contexts``).
    """

    key: CertKey | KeyStore
    protocol: ProtocolConfig | None = None
    ciphers: tuple[str, ...] = ()
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    session_timeout: float | None = None
    mutual_ssl: MutualSsl | None = None

    def __init__(
        self,
        key: CertKey | KeyStore | Mapping[str, Any],
        protocol: ProtocolConfig | Mapping[str, Any] | None = None,
        ciphers: Iterable[str] | None = (),
        handshake_timeout: Seconds = DEFAULT_HANDSHAKE_TIMEOUT,
        session_timeout: Seconds | None = None,
        mutual_ssl: MutualSsl | Mapping[str, Any] | None = None,
    ) -> None:
        object.__setattr__(self, "key", _key(key, "key"))
        object.__setattr__(self, "protocol", _protocol(protocol))
        object.__setattr__(self, "ciphers", _listener_ciphers(ciphers))
        object.__setattr__(self, "handshake_timeout",
                           seconds(handshake_timeout, "handshake_timeout", as_given=True))
        object.__setattr__(self, "session_timeout", _optional_seconds(session_timeout, "session_timeout"))
        object.__setattr__(self, "mutual_ssl", _mutual_ssl(mutual_ssl))
        _check_tls(self.protocol, self.ciphers)


@dataclasses.dataclass(frozen=True, init=False)
class ClientSecureSocket:
    """TLS settings of a :class:`~gtcp.Client` (Ballerina ``tcp:ClientSecureSocket``).

    ``cert`` is the trusted certificates (PEM path or TrustStore; None: the
    system's). ``key`` is a client certificate for mutual TLS. With
    ``enable=False`` the connection is plain TCP and no other field is checked:
    each is stored normalised when it is valid and as given otherwise.
    Empty ``ciphers`` are stored as None (OpenSSL's defaults).
    """

    enable: bool = True
    cert: str | TrustStore | None = None
    key: CertKey | KeyStore | None = None
    protocol: ProtocolConfig | None = None
    ciphers: tuple[str, ...] | None = None
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    session_timeout: float | None = None
    verify_hostname: bool = True
    server_name: str | None = None

    def __init__(
        self,
        enable: bool = True,
        cert: FilePath | TrustStore | Mapping[str, Any] | None = None,
        key: CertKey | KeyStore | Mapping[str, Any] | None = None,
        protocol: ProtocolConfig | Mapping[str, Any] | None = None,
        ciphers: Iterable[str] | None = None,
        handshake_timeout: Seconds = DEFAULT_HANDSHAKE_TIMEOUT,
        session_timeout: Seconds | None = None,
        verify_hostname: bool = True,
        server_name: str | None = None,
    ) -> None:
        enabled = _flag(enable, "enable")
        object.__setattr__(self, "enable", enabled)
        checks: list[tuple[str, object, Callable[[Any], object]]] = [
            ("cert", cert, lambda v: None if v is None else _trust(v, "cert")),
            ("key", key, lambda v: None if v is None else _key(v, "key")),
            ("protocol", protocol, _protocol),
            ("ciphers", ciphers, _client_ciphers),
            ("handshake_timeout", handshake_timeout,
             lambda v: seconds(v, "handshake_timeout", as_given=True)),
            ("session_timeout", session_timeout, lambda v: _optional_seconds(v, "session_timeout")),
            ("verify_hostname", verify_hostname, lambda v: _flag(v, "verify_hostname")),
            ("server_name", server_name, _server_name),
        ]
        for field, value, check in checks:
            try:
                normalised = check(value)
            except ConfigError:
                if enabled:
                    raise
                normalised = value  # enable=False: Ballerina ignores the other fields.
            object.__setattr__(self, field, normalised)
        if enabled:
            _check_tls(self.protocol, self.ciphers)


def _listener_ciphers(value: object) -> tuple[str, ...]:
    return () if value is None else _names(value, "ciphers", "cipher suite names")


def _client_ciphers(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    return _names(value, "ciphers", "cipher suite names") or None


def _server_name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"server_name must be a non-blank host name, got {value!r}")
    return value.strip()


# ---------------------------------------------------------------------------
# Entry points for Listener and Client.


def is_ssl_context(value: object) -> bool:
    """True for any ``ssl.SSLContext``: the standard library's class, gevent's, or a subclass of either.

    Every one of them derives from the C type ``_ssl._SSLContext``. The check
    does not go through the name ``ssl.SSLContext`` because monkey-patching
    rebinds it to gevent's class: a context of the standard library's own
    class, made before ``patch_all()`` or from ``gevent.ssl.orig_SSLContext``,
    is no instance of that.
    """
    return isinstance(value, _SSL_CONTEXT_BASE) and hasattr(value, "wrap_bio")


#: The C base of every SSLContext class (see is_ssl_context).
_SSL_CONTEXT_BASE: type = _ssl._SSLContext

_SERVER_CONTEXT_HINT = ("ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) or "
                        "ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)")
_CLIENT_CONTEXT_HINT = "ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT) or ssl.create_default_context()"


def _checked_context(value: Any, server_side: bool) -> ssl.SSLContext:
    """*value*, an SSLContext, if it can serve the side it is given to; else ConfigError.

    Only the protocol tells a side: ``PROTOCOL_TLS_CLIENT`` contexts cannot
    accept connections and ``PROTOCOL_TLS_SERVER`` ones cannot make them
    (``PROTOCOL_TLS`` and the fixed-version protocols can do both). Whether a
    server context has a certificate loaded cannot be read from Python (and a
    context with an ``sni_callback`` may legitimately have none): it is not
    checked, and a handshake on such a context fails (logged per connection).
    """
    context = cast(ssl.SSLContext, value)
    if server_side and context.protocol == ssl.PROTOCOL_TLS_CLIENT:
        raise ConfigError("secure_socket: a listener needs a server-side ssl.SSLContext, got a client-side "
                          f"one (PROTOCOL_TLS_CLIENT); make it with {_SERVER_CONTEXT_HINT}")
    if not server_side and context.protocol == ssl.PROTOCOL_TLS_SERVER:
        raise ConfigError("secure_socket: a client needs a client-side ssl.SSLContext, got a server-side "
                          f"one (PROTOCOL_TLS_SERVER); make it with {_CLIENT_CONTEXT_HINT}")
    return context


def listener_secure_socket(value: object) -> ListenerSecureSocket | ssl.SSLContext | None:
    """Normalise a listener's ``secure_socket`` argument.

    None stays None (plain TCP); a :class:`ListenerSecureSocket` is returned
    as is; a dict becomes one; a server-side ``ssl.SSLContext`` is returned as
    is (a client-side one raises ``ConfigError``). Anything else raises
    ``ConfigError``.
    """
    if value is None or isinstance(value, ListenerSecureSocket):
        return value
    if isinstance(value, Mapping):
        return _from_mapping(ListenerSecureSocket, value, "ListenerSecureSocket")
    if is_ssl_context(value):
        return _checked_context(value, server_side=True)
    raise ConfigError("secure_socket must be a ListenerSecureSocket, a dict or an ssl.SSLContext, "
                      f"got {_type_name(value)}")


def client_secure_socket(value: object) -> ClientSecureSocket | ssl.SSLContext | None:
    """Normalise a client's ``secure_socket`` argument.

    None, and a record or dict with ``enable=False``, give None (plain TCP); a
    :class:`ClientSecureSocket` is returned as is; a dict becomes one; a
    client-side ``ssl.SSLContext`` is returned as is (a server-side one raises
    ``ConfigError``). Anything else raises ``ConfigError``.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = _from_mapping(ClientSecureSocket, value, "ClientSecureSocket")
    if isinstance(value, ClientSecureSocket):
        return value if value.enable else None
    if is_ssl_context(value):
        return _checked_context(value, server_side=False)
    raise ConfigError("secure_socket must be a ClientSecureSocket, a dict or an ssl.SSLContext, "
                      f"got {_type_name(value)}")


def handshake_deadline(secure: ListenerSecureSocket | ClientSecureSocket | ssl.SSLContext) -> float | None:
    """The handshake deadline in seconds (None: none) for a record or a raw context.

    A record's ``handshake_timeout`` (``<= 0``: none); for an ``ssl.SSLContext``,
    which has no such setting, :data:`DEFAULT_HANDSHAKE_TIMEOUT` (read at each
    call).
    """
    if isinstance(secure, (ListenerSecureSocket, ClientSecureSocket)):
        return seconds(secure.handshake_timeout, "handshake_timeout")
    return seconds(DEFAULT_HANDSHAKE_TIMEOUT, "handshake_timeout")
