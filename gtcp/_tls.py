"""TLS records -> ``gevent.ssl.SSLContext``; sessions and facts about TLS connections.

This is the only gtcp module that imports :mod:`ssl`. It turns the records of
:mod:`gtcp._config` into contexts, and it is what those records ask when they
need to know what the local OpenSSL can do.

Contexts are built with ``gevent.ssl.SSLContext(PROTOCOL_TLS_SERVER/CLIENT)``,
never ``create_default_context`` (that returns a stdlib context whose sockets
block the whole process). Every context refuses renegotiation and compression.

Protocol versions
-----------------
With no ``versions`` a context allows TLS 1.2 to TLS 1.3. Otherwise it allows
from the lowest to the highest listed version *that the local OpenSSL can
speak*. "Can speak" is measured, not assumed: :func:`version_supported` runs a
full handshake pinned to that one version between two in-memory endpoints (no
socket), once per version and process. SSLv3 is not compiled into any current
OpenSSL, so a config listing only SSLv3 raises ``ConfigError`` when it is
built rather than failing at every handshake later.

OpenSSL 3 has TLS 1.0 and 1.1 compiled in but refuses them at security level
1 and above, its default (they sign the handshake with SHA-1/MD5). gtcp does
not lower the security level: the contract (API.md section 6) says
``["TLSv1.2", "TLSv1.1"]`` means TLS 1.2 here, as on a current JDK, so on
OpenSSL 3 TLS 1.0/1.1 count as unsupported and are left out, and a list of
only those raises ``ConfigError``. (Appending ``@SECLEVEL=0`` to the cipher
string would make them work, but level 0 applies to the whole context and also
admits short keys and SHA-1 certificate signatures; that is a decision for an
explicit option, not a side effect of listing a version.) Where the local
OpenSSL does allow them (e.g. OpenSSL 1.1.1 at level 1), a context whose range
starts below TLS 1.2 uses OpenSSL's ``DEFAULT`` cipher list unless ciphers are
named, because Python's own default list leaves out the SHA-1 suites those
versions need.

Cipher suites
-------------
Names may be IANA names (``TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256``, as
Ballerina and Java write them), OpenSSL names (``ECDHE-RSA-AES128-GCM-SHA256``)
or TLS 1.3 suite names (``TLS_AES_128_GCM_SHA256``; OpenSSL uses the IANA name
for those). The OpenSSL names come from the local OpenSSL
(``SSLContext.get_ciphers()``); IANA names of TLS 1.2-and-older suites are not
in there, so :data:`IANA_CIPHER_NAMES` maps the common ones (generated from,
and tested against, ``openssl ciphers -stdname``). Unknown names raise
``ConfigError`` listing them all.

TLS 1.2-and-older suites go to ``set_ciphers``. Python's ``ssl`` has no way to
narrow the TLS 1.3 suites (OpenSSL's ``SSL_CTX_set_ciphersuites`` is not
exposed), so naming TLS 1.3 suites does not restrict *which* TLS 1.3 suites
are offered; it only decides whether TLS 1.3 is allowed: a list with no TLS
1.3 suite caps the context at TLS 1.2, and a list of only TLS 1.3 suites
requires TLS 1.3, as the JDK does.

Session timeout
---------------
Python's ``ssl`` has no setter for a server's session lifetime
(``SSL_CTX_set_timeout``): a server keeps OpenSSL's default, which OpenSSL 3.0
sets to 7200 s (the lifetime hint sent with its session tickets), whatever
``ListenerSecureSocket.session_timeout`` says. The one thing that can be done
is ``session_timeout <= 0``: the server then sends no session tickets
(``num_tickets = 0`` and ``OP_NO_TICKET``); OpenSSL's server-side session-ID
cache for TLS 1.2 cannot be switched off from Python. On the client side the
timeout is enforced by :class:`SessionCache`, which only offers a session
while it is younger than ``session_timeout`` (None: 300 s) and than the
lifetime the server gave it.

Key material
------------
``load_cert_chain`` only reads files. PEM ``CertKey`` files are handed to it
as they are, with a password callback even when no ``key_password`` is given
(without one OpenSSL prompts on the terminal for an encrypted key, blocking the
process). When loading fails, the files are read again with ``cryptography``
to say which file is wrong and why; an encrypted key that will not load with
the ``key_password`` given is always reported as a possibly wrong password.
A PKCS#12 ``KeyStore`` is decoded with ``cryptography`` (legacy
RC2/3DES stores included) and re-encoded as PEM, the private key encrypted
with a random one-time password, into an anonymous in-memory file
(``memfd_create``, read through ``/proc/self/fd``). Where that does not exist
a private temporary file (mode 0600) is used and deleted as soon as OpenSSL has
read it; either way the key never reaches a disk unencrypted. Every
certificate of a ``TrustStore`` is handed over in memory
(``load_verify_locations(cadata=...)``).

``cryptography`` (some 20 MiB and 100 ms) is imported only on those paths:
PKCS#12 stores and the diagnosis of a failure. PEM files are loaded by
:mod:`ssl` alone, so a program without stores never imports it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math
import os
import ssl
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from typing import Protocol as _Protocol

import gevent.ssl  # type: ignore[import-untyped, unused-ignore]

from ._config import (
    DEFAULT_SESSION_TIMEOUT,
    CertKey,
    ClientSecureSocket,
    KeyStore,
    ListenerSecureSocket,
    ProtocolConfig,
    TrustStore,
    VerifyClient,
)
from ._errors import ConfigError, TLSError
from ._io import reason

if TYPE_CHECKING:  # cryptography is imported where it is used (PKCS#12 stores, diagnosis)
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

__all__ = [
    "CLIENT_CONTEXT_CACHE_SIZE",
    "SESSIONS",
    "IANA_CIPHER_NAMES",
    "SESSION_CACHE_SIZE",
    "NegotiationPlan",
    "SessionCache",
    "TLSInfo",
    "client_context",
    "handshake_timeout",
    "negotiation_plan",
    "resolve_ciphers",
    "server_context",
    "tls_info",
    "version_supported",
]

#: Sessions kept by the process-wide :data:`SESSIONS`. A session is a few
#: hundred bytes; 1000 covers a client talking to many servers while bounding
#: memory when host names are unbounded.
SESSION_CACHE_SIZE = 1000

#: Client contexts kept, one per distinct ``ClientSecureSocket``. A context
#: holds the loaded trust store (the system one is ~150 certificates), so keep
#: few; real programs use a handful of configurations.
CLIENT_CONTEXT_CACHE_SIZE = 32

#: Versions a context allows when ``versions`` is empty (API.md section 6).
DEFAULT_VERSIONS = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)

_VERSIONS: dict[str, ssl.TLSVersion] = {
    "SSLv3": ssl.TLSVersion.SSLv3,
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}

#: Cipher string for versions below TLS 1.2 when no cipher is named: Python's
#: default list has no SHA-1 suite, and TLS 1.0/1.1 have nothing else.
_LEGACY_CIPHERS = "DEFAULT"

#: Every suite the local OpenSSL knows, whatever is enabled by default.
_ALL_CIPHERS = "ALL:COMPLEMENTOFALL:@SECLEVEL=0"

_NO_RENEGOTIATION: int = getattr(ssl, "OP_NO_RENEGOTIATION", 0)

#: IANA name -> OpenSSL name of the common TLS 1.2-and-older suites, as
#: ``openssl ciphers -stdname`` prints them (OpenSSL 3.0). TLS 1.3 suites are
#: not here: OpenSSL names them by their IANA names.
IANA_CIPHER_NAMES: dict[str, str] = {
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_DHE_DSS_WITH_AES_256_GCM_SHA384": "DHE-DSS-AES256-GCM-SHA384",
    "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384": "DHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "DHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_DHE_DSS_WITH_AES_128_GCM_SHA256": "DHE-DSS-AES128-GCM-SHA256",
    "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256": "DHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384": "ECDHE-ECDSA-AES256-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384": "ECDHE-RSA-AES256-SHA384",
    "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256": "DHE-RSA-AES256-SHA256",
    "TLS_DHE_DSS_WITH_AES_256_CBC_SHA256": "DHE-DSS-AES256-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256": "DHE-RSA-AES128-SHA256",
    "TLS_DHE_DSS_WITH_AES_128_CBC_SHA256": "DHE-DSS-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_DHE_RSA_WITH_AES_256_CBC_SHA": "DHE-RSA-AES256-SHA",
    "TLS_DHE_DSS_WITH_AES_256_CBC_SHA": "DHE-DSS-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_DHE_RSA_WITH_AES_128_CBC_SHA": "DHE-RSA-AES128-SHA",
    "TLS_DHE_DSS_WITH_AES_128_CBC_SHA": "DHE-DSS-AES128-SHA",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_CBC_SHA256": "AES256-SHA256",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
}


# ---------------------------------------------------------------------------
# What the local OpenSSL supports.


def _set_versions(ctx: ssl.SSLContext, minimum: ssl.TLSVersion, maximum: ssl.TLSVersion) -> None:
    if minimum >= ssl.TLSVersion.TLSv1_2:
        ctx.minimum_version = minimum
        ctx.maximum_version = maximum
        return
    with warnings.catch_warnings():  # ssl deprecates the TLSv1/TLSv1_1 members
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = minimum
        ctx.maximum_version = maximum


#: A throwaway self-signed EC P-256 key and certificate (PEM) for
#: :func:`version_supported`, which handshakes with it between two in-memory
#: endpoints of this process only, its client verifying nothing; so it is no
#: secret, and its dates do not matter. It is fixed here rather than generated
#: so that building a TLS context with PEM files needs no ``cryptography``.
_PROBE_IDENTITY = b"""\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgwMSdHRT3I4+jlAXV
792lseKj+aYcfYSR/AmBJRf7ovehRANCAASJL9mBShL3Wy/6naE6tEodV5MXTLxK
d6BQUij9E148Eai11+SDQzYv0Z0IdeATkysqA85Z5aBrFoJoJGacytQL
-----END PRIVATE KEY-----
-----BEGIN CERTIFICATE-----
MIIBPDCB4qADAgECAhQrzFtpbvrWlurR8/2hYSj14r7F6TAKBggqhkjOPQQDAjAd
MRswGQYDVQQDDBJndGNwIHZlcnNpb24gcHJvYmUwIBcNMDAwMTAxMDAwMDAwWhgP
OTk5OTEyMzEyMzU5NTlaMB0xGzAZBgNVBAMMEmd0Y3AgdmVyc2lvbiBwcm9iZTBZ
MBMGByqGSM49AgEGCCqGSM49AwEHA0IABIkv2YFKEvdbL/qdoTq0Sh1XkxdMvEp3
oFBSKP0TXjwRqLXX5INDNi/RnQh14BOTKyoDzlnloGsWgmgkZpzK1AswCgYIKoZI
zj0EAwIDSQAwRgIhAJaji7t2eoO+8fwF15ayhb5x1ioCR1KRhfLp5qRtYg/TAiEA
shr4gRD82HvTyBh7kf96GF4nkT4y9oqAfHKZrY56xMw=
-----END CERTIFICATE-----
"""


def _handshake_in_memory(client: ssl.SSLObject, server: ssl.SSLObject, pipes: list[ssl.MemoryBIO]) -> bool:
    """Pump a handshake between two SSLObjects; True when both finish."""
    client_out, server_in, server_out, client_in = pipes
    done = [False, False]
    for _ in range(10):
        for index, (side, outgoing, incoming) in enumerate(
            ((client, client_out, server_in), (server, server_out, client_in))
        ):
            if not done[index]:
                try:
                    side.do_handshake()
                    done[index] = True
                except ssl.SSLWantReadError:
                    pass
            incoming.write(outgoing.read())
        if all(done):
            return True
    return False


@functools.cache
def version_supported(version: ssl.TLSVersion) -> bool:
    """True when the local OpenSSL completes a handshake at exactly ``version``.

    Measured once per version with a full handshake between two in-memory
    endpoints (no socket) pinned to that version, at the local OpenSSL's own
    security level. Versions below TLS 1.2 use OpenSSL's ``DEFAULT`` cipher
    list, as gtcp would.
    """
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    pipes = [ssl.MemoryBIO() for _ in range(4)]
    try:
        with _transient_file(_PROBE_IDENTITY) as path:
            server.load_cert_chain(path)
        for ctx in (server, client):
            if version < ssl.TLSVersion.TLSv1_2:
                ctx.set_ciphers(_LEGACY_CIPHERS)
            _set_versions(ctx, version, version)
        return _handshake_in_memory(
            client.wrap_bio(pipes[3], pipes[0]),
            server.wrap_bio(pipes[1], pipes[2], server_side=True),
            pipes,
        )
    except (ssl.SSLError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def _known_ciphers() -> tuple[dict[str, str], dict[str, str]]:
    """(upper-cased name -> OpenSSL name) for TLS <= 1.2 suites, and for TLS 1.3 suites."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers(_ALL_CIPHERS)
    legacy: dict[str, str] = {}
    modern: dict[str, str] = {}
    for cipher in ctx.get_ciphers():
        name = cipher["name"]
        (modern if cipher["protocol"] == "TLSv1.3" else legacy)[name.upper()] = name
    return legacy, modern


def resolve_ciphers(names: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split cipher suite names into (OpenSSL names for TLS <= 1.2, TLS 1.3 names).

    Accepts IANA and OpenSSL names, in any case. Raises ``ConfigError`` listing
    every name the local OpenSSL does not know.
    """
    legacy, modern = _known_ciphers()
    old: list[str] = []
    new: list[str] = []
    unknown: list[str] = []
    for name in names:
        key = name.strip().upper()
        key = IANA_CIPHER_NAMES.get(key, key).upper()
        if key in modern:
            new.append(modern[key])
        elif key in legacy:
            old.append(legacy[key])
        else:
            unknown.append(name)
    if unknown:
        raise ConfigError(f"Unknown or unsupported cipher suites: {', '.join(map(repr, unknown))}")
    return tuple(dict.fromkeys(old)), tuple(dict.fromkeys(new))


@dataclasses.dataclass(frozen=True)
class NegotiationPlan:
    """What a context allows: the version range and the TLS <= 1.2 cipher string.

    ``cipher_string`` is None when OpenSSL's (Python's) defaults apply.
    """

    minimum_version: ssl.TLSVersion
    maximum_version: ssl.TLSVersion
    cipher_string: str | None


def _version_range(protocol: ProtocolConfig | None) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    names = protocol.versions if protocol is not None else ()
    if names:
        usable = [_VERSIONS[name] for name in names if version_supported(_VERSIONS[name])]
        if not usable:
            raise ConfigError(f"No supported TLS protocol version in {list(names)!r}")
    else:
        usable = [version for version in DEFAULT_VERSIONS if version_supported(version)]
        if not usable:
            raise ConfigError("The local OpenSSL supports neither TLS 1.2 nor TLS 1.3")
    return min(usable), max(usable)


@functools.lru_cache(maxsize=256)
def negotiation_plan(protocol: ProtocolConfig | None, ciphers: tuple[str, ...] | None) -> NegotiationPlan:
    """Work out the version range and cipher string for ``protocol`` and ``ciphers``.

    Raises ``ConfigError`` for versions or ciphers the local OpenSSL cannot
    use, and when the ciphers leave no version in the range (TLS 1.2 suites
    with only TLS 1.3 allowed, or the reverse).
    """
    minimum, maximum = _version_range(protocol)
    old, new = resolve_ciphers(ciphers or ())
    if ciphers:
        if not new:
            maximum = min(maximum, ssl.TLSVersion.TLSv1_2)
        if not old:
            minimum = max(minimum, ssl.TLSVersion.TLSv1_3)
        if minimum > maximum:
            versions = list(protocol.versions) if protocol is not None and protocol.versions else "default"
            raise ConfigError(
                f"No TLS protocol version suits both the versions {versions} and the ciphers {list(ciphers)}"
            )
    cipher_string = ":".join(old) if old and minimum < ssl.TLSVersion.TLSv1_3 else None
    if cipher_string is None and minimum < ssl.TLSVersion.TLSv1_2:
        cipher_string = _LEGACY_CIPHERS
    if cipher_string is not None:
        try:  # names OpenSSL knows may still be refused at its security level
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(cipher_string)
        except ssl.SSLError as exc:
            raise ConfigError(f"No usable cipher suite in {list(ciphers or ())}") from exc
    return NegotiationPlan(minimum, maximum, cipher_string)


# ---------------------------------------------------------------------------
# Loading keys, certificates and stores.


def _context_error(cause: str) -> TLSError:
    return TLSError(f"Failed to initialize the SSL context: {cause}")


class _PasswordMissing(Exception):
    """Raised by the password callback: the key is encrypted and no password was given."""


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and block.
    raise _PasswordMissing("the private key is encrypted and no key_password was given")


def _is_encrypted_pem(data: bytes) -> bool:
    """True when ``data`` holds an encrypted PEM private key (PKCS#8 or traditional)."""
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data


def _private_key_problem(data: bytes, password: str | None) -> str | None:
    """Why ``data`` is not a usable PEM private key, or None if it is."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    secret = None if password is None else password.encode()
    try:
        serialization.load_pem_private_key(data, secret)
    except TypeError as exc:
        if secret is not None and "not encrypted" in str(exc):
            return None  # a spare password on a plain key is harmless
        return str(exc)
    except (ValueError, UnsupportedAlgorithm) as exc:
        return str(exc)
    return None


def _diagnose_cert_key(key: CertKey, exc: BaseException) -> str:
    """Name the file (and the reason) behind a failed ``load_cert_chain``.

    An encrypted key that cannot be loaded with the password given is reported
    as a wrong password whatever the reason: a wrong password decrypts to
    garbage, which usually fails the padding check ("Incorrect password") but
    about once in 300 passes it and then fails as ASN.1 ("invalid length",
    "unexpected tag"), a reason that would not point at the password.
    """
    from cryptography import x509

    try:
        chain = Path(key.cert_file).read_bytes()
    except OSError as err:
        return f"cannot read certificate file {key.cert_file!r}: {reason(err)}"
    try:
        x509.load_pem_x509_certificates(chain)
    except ValueError:
        return f"no PEM certificate in {key.cert_file!r}"
    try:
        pem = Path(key.key_file).read_bytes()
    except OSError as err:
        return f"cannot read private key file {key.key_file!r}: {reason(err)}"
    problem = _private_key_problem(pem, key.key_password)
    if problem is not None:
        if key.key_password is not None and _is_encrypted_pem(pem):
            return f"cannot decrypt private key file {key.key_file!r}: wrong password? ({problem})"
        return f"cannot load private key {key.key_file!r}: {problem}"
    return f"cannot use certificate {key.cert_file!r} with private key {key.key_file!r}: {reason(exc)}"


def _load_cert_key(ctx: ssl.SSLContext, key: CertKey) -> None:
    password: str | Callable[[], bytes] = _no_password if key.key_password is None else key.key_password
    try:
        ctx.load_cert_chain(key.cert_file, key.key_file, password=password)
    except (OSError, ValueError, _PasswordMissing) as exc:
        raise _context_error(_diagnose_cert_key(key, exc)) from exc


def _read_store(
    path: str, password: str, kind: str
) -> tuple[PrivateKeyTypes | None, list[x509.Certificate]]:
    """The private key (if any) and every certificate of a PKCS#12 file, leaf first."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import pkcs12

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise _context_error(f"cannot read {kind} {path!r}: {reason(exc)}") from exc
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise _context_error(f"cannot load {kind} {path!r}: {reason(exc)}") from exc
    return key, ([cert] if cert is not None else []) + list(extra)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _memfd() -> int | None:
    """An anonymous in-memory file readable by path, or None where there is none."""
    create = getattr(os, "memfd_create", None)
    if create is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return int(create("gtcp-tls", getattr(os, "MFD_CLOEXEC", 0)))
    except OSError:
        return None


@contextlib.contextmanager
def _transient_file(data: bytes) -> Iterator[str]:
    """A path holding ``data`` for the duration of the ``with`` block only."""
    fd = _memfd()
    if fd is not None:
        try:
            _write_all(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="gtcp-", suffix=".pem")  # mode 0600
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _load_key_store(ctx: ssl.SSLContext, store: KeyStore) -> None:
    from cryptography.hazmat.primitives import serialization

    key, certs = _read_store(store.path, store.password, "KeyStore")
    if key is None or not certs:
        raise _context_error(f"KeyStore {store.path!r} does not hold a private key with its certificate")
    secret = os.urandom(32).hex().encode()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(secret),
    ) + b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)
    with _transient_file(pem) as path:
        try:
            ctx.load_cert_chain(path, password=secret)
        except (OSError, ValueError) as exc:
            raise _context_error(f"cannot use KeyStore {store.path!r}: {reason(exc)}") from exc


def _load_key(ctx: ssl.SSLContext, key: CertKey | KeyStore) -> None:
    if isinstance(key, CertKey):
        _load_cert_key(ctx, key)
    else:
        _load_key_store(ctx, key)


def _load_trust(ctx: ssl.SSLContext, cert: str | TrustStore) -> None:
    """Trust the CA certificates of a PEM file or of every certificate in a TrustStore."""
    if isinstance(cert, TrustStore):
        from cryptography.hazmat.primitives import serialization

        _key, certs = _read_store(cert.path, cert.password, "TrustStore")
        if not certs:
            raise _context_error(f"TrustStore {cert.path!r} holds no certificate")
        pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)
        try:
            ctx.load_verify_locations(cadata=pem)
        except (OSError, ValueError) as exc:
            raise _context_error(f"cannot use TrustStore {cert.path!r}: {reason(exc)}") from exc
        return
    try:
        ctx.load_verify_locations(cafile=cert)
    except (OSError, ValueError) as exc:
        raise _context_error(f"cannot load CA certificates from {cert!r}: {reason(exc)}") from exc


# ---------------------------------------------------------------------------
# Contexts.


def _new_context(
    purpose: ssl._SSLMethod, protocol: ProtocolConfig | None, ciphers: tuple[str, ...] | None
) -> ssl.SSLContext:
    plan = negotiation_plan(protocol, ciphers)
    ctx: ssl.SSLContext = gevent.ssl.SSLContext(purpose)
    ctx.options |= ssl.OP_NO_COMPRESSION | _NO_RENEGOTIATION
    if plan.cipher_string is not None:
        ctx.set_ciphers(plan.cipher_string)  # checked by negotiation_plan
    _set_versions(ctx, plan.minimum_version, plan.maximum_version)
    return ctx


def server_context(cfg: ListenerSecureSocket) -> ssl.SSLContext:
    """Build a listener's context (a ``gevent.ssl.SSLContext``) from its record.

    Loads the key and, with ``mutual_ssl``, the CA certificates client
    certificates are checked against (``CERT_REQUIRED`` or ``CERT_OPTIONAL``).
    File failures raise ``TLSError("Failed to initialize the SSL context: ...")``
    naming the file; a new context is built at every call.
    """
    ctx = _new_context(ssl.PROTOCOL_TLS_SERVER, cfg.protocol, cfg.ciphers)
    _load_key(ctx, cfg.key)
    if cfg.mutual_ssl is not None:
        _load_trust(ctx, cfg.mutual_ssl.cert)
        required = cfg.mutual_ssl.verify_client is VerifyClient.REQUIRE
        ctx.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    if cfg.session_timeout is not None and cfg.session_timeout <= 0:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    return ctx


def _build_client_context(cfg: ClientSecureSocket) -> ssl.SSLContext:
    ctx = _new_context(ssl.PROTOCOL_TLS_CLIENT, cfg.protocol, cfg.ciphers)
    ctx.check_hostname = cfg.verify_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cfg.cert is None:
        ctx.load_default_certs()
    else:
        _load_trust(ctx, cfg.cert)
    if cfg.key is not None:
        _load_key(ctx, cfg.key)
    return ctx


class _ContextCache:
    """A bounded LRU map from client record to context."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._contexts: collections.OrderedDict[ClientSecureSocket, ssl.SSLContext]
        self._contexts = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, cfg: ClientSecureSocket) -> ssl.SSLContext:
        with self._lock:
            ctx = self._contexts.get(cfg)
            if ctx is not None:
                self._contexts.move_to_end(cfg)
                return ctx
        ctx = _build_client_context(cfg)
        with self._lock:
            ctx = self._contexts.setdefault(cfg, ctx)
            self._contexts.move_to_end(cfg)
            while len(self._contexts) > self._size:
                self._contexts.popitem(last=False)
        return ctx

    def clear(self) -> None:
        with self._lock:
            self._contexts.clear()


_client_contexts = _ContextCache(CLIENT_CONTEXT_CACHE_SIZE)


def client_context(cfg: ClientSecureSocket) -> ssl.SSLContext:
    """The context (a ``gevent.ssl.SSLContext``) for a client record.

    Equal records get the same context object (a bounded cache), because a
    TLS session can only be resumed with the context that made it; files are
    therefore read when a record is first used. Trusts ``cfg.cert`` (None: the
    system store), checks the host name when ``verify_hostname``, and loads
    ``cfg.key`` as the client certificate. Raises ``ConfigError`` for a record
    with ``enable=False`` and ``TLSError`` for files that cannot be loaded.
    """
    if not cfg.enable:
        raise ConfigError("TLS is disabled in this ClientSecureSocket (enable=False)")
    return _client_contexts.get(cfg)


def handshake_timeout(cfg: ListenerSecureSocket | ClientSecureSocket) -> float | None:
    """The handshake deadline in seconds, or None when it is disabled (``<= 0``)."""
    seconds = cfg.handshake_timeout
    return seconds if 0 < seconds < math.inf else None


# ---------------------------------------------------------------------------
# Client sessions.


class SessionCache:
    """TLS sessions a client may resume, keyed by (record, host, port).

    A session is offered while it is younger than the record's
    ``session_timeout`` (None: 300 s) and than the lifetime the server gave it;
    ``session_timeout <= 0`` disables caching. At most ``size`` sessions are
    kept, the oldest dropped first. With TLS 1.3 the session arrives after the
    handshake, so a client should ``put`` it after its first read (or at close).
    Safe to share between greenlets and threads.
    """

    def __init__(self, size: int = SESSION_CACHE_SIZE, clock: Callable[[], float] = time.monotonic) -> None:
        self._size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: collections.OrderedDict[
            tuple[ClientSecureSocket, str, int], tuple[ssl.SSLSession, float, ssl.SSLContext | None]
        ] = collections.OrderedDict()

    @staticmethod
    def _lifetime(cfg: ClientSecureSocket) -> float:
        return DEFAULT_SESSION_TIMEOUT if cfg.session_timeout is None else cfg.session_timeout

    def get(
        self, cfg: ClientSecureSocket, host: str, port: int, context: ssl.SSLContext | None = None
    ) -> ssl.SSLSession | None:
        """The session to offer to ``host:port``, or None (none, or expired).

        With *context*, a session made by another context is dropped, not
        offered: OpenSSL can only resume a session with the context that made
        it (``client_context`` evicts contexts from its bounded cache).
        """
        key = (cfg, host, port)
        with self._lock:
            entry = self._sessions.get(key)
            if entry is None:
                return None
            session, expires, made_by = entry
            stale = context is not None and made_by is not None and made_by is not context
            if stale or self._clock() >= expires:
                del self._sessions[key]
                return None
            return session

    def put(
        self,
        cfg: ClientSecureSocket,
        host: str,
        port: int,
        session: ssl.SSLSession | None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        """Remember ``session`` for ``host:port`` (None, or a disabled timeout, does nothing).

        *context* is the context that made it (see :meth:`get`).
        """
        lifetime = self._lifetime(cfg)
        if session is None or lifetime <= 0:
            return
        if session.timeout > 0:
            lifetime = min(lifetime, float(session.timeout))
        key = (cfg, host, port)
        with self._lock:
            self._sessions[key] = (session, self._clock() + lifetime, context)
            self._sessions.move_to_end(key)
            while len(self._sessions) > self._size:
                self._sessions.popitem(last=False)

    def clear(self) -> None:
        """Forget every session."""
        with self._lock:
            self._sessions.clear()

    def __len__(self) -> int:
        """The number of sessions held (expired ones included until looked up)."""
        return len(self._sessions)


#: The process-wide client session cache.
SESSIONS = SessionCache()


# ---------------------------------------------------------------------------
# Facts about an established connection.


class _TLSSocket(_Protocol):
    """What :func:`tls_info` reads: ``ssl.SSLSocket``, gevent's SSLSocket, ``ssl.SSLObject``."""

    @property
    def session_reused(self) -> bool: ...

    def version(self) -> str | None: ...

    def cipher(self) -> tuple[str, str, int] | None: ...

    def getpeercert(self) -> Any: ...


@dataclasses.dataclass(frozen=True)
class TLSInfo:
    """An established TLS connection: ``client.tls`` / ``caller.tls``.

    ``version`` is e.g. ``"TLSv1.3"``; ``cipher`` the OpenSSL suite name;
    ``peer_certificate`` the dict ``getpeercert()`` gives, or None when the
    peer sent none (or it was not verified).
    """

    version: str
    cipher: str
    session_reused: bool
    peer_certificate: dict[str, Any] | None


def tls_info(sock: _TLSSocket) -> TLSInfo:
    """Describe ``sock``, whose handshake must have completed (else ``ValueError``)."""
    version = sock.version()
    cipher = sock.cipher()
    if version is None or cipher is None:
        raise ValueError("the TLS handshake has not completed")
    peer = sock.getpeercert()
    return TLSInfo(
        version=version,
        cipher=cipher[0],
        session_reused=bool(sock.session_reused),
        peer_certificate=dict(peer) if peer else None,
    )
