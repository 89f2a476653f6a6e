"""What the local OpenSSL can do, and what a TLS context may negotiate with it.

Holds the protocol version names, the cipher suite names (IANA and OpenSSL),
the probe that measures which versions the local OpenSSL really speaks, and
:func:`negotiation_plan`, which turns the ``versions`` and ``ciphers`` of a
record into a version range and a cipher string (or a ``ConfigError``). The
records of :mod:`gtcp._config` call it when they are built; the contexts of
:mod:`gtcp._contexts` are set from it. It takes plain tuples, not records, so
it depends on no gtcp module but :mod:`gtcp._errors` and
:mod:`gtcp._memfile`.

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
not lower the security level: Ballerina's ``["TLSv1.2", "TLSv1.1"]`` means
TLS 1.2 here, as on a current JDK, so on OpenSSL 3 TLS 1.0/1.1 count as
unsupported and are left out, and a list of only those raises
``ConfigError`` (README, "TLS", Versions). (Appending ``@SECLEVEL=0`` to the
cipher string would make them work, but level 0 applies to the whole context
and also admits short keys and SHA-1 certificate signatures; that is a
decision for an explicit option, not a side effect of listing a version.)
Where the local OpenSSL does allow them (e.g. OpenSSL 1.1.1 at level 1), a
context whose range starts below TLS 1.2 uses OpenSSL's ``DEFAULT`` cipher
list unless ciphers are named, because Python's own default list leaves out
the SHA-1 suites those versions need.

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
"""

from __future__ import annotations

import dataclasses
import functools
import ssl
import warnings

from ._errors import ConfigError
from ._memfile import transient_file

__all__ = [
    "DEFAULT_VERSIONS",
    "IANA_CIPHER_NAMES",
    "NegotiationPlan",
    "negotiation_plan",
    "resolve_ciphers",
    "set_versions",
    "version_supported",
]

#: Versions a context allows when ``versions`` is empty: TLS 1.2 and 1.3.
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


def set_versions(ctx: ssl.SSLContext, minimum: ssl.TLSVersion, maximum: ssl.TLSVersion) -> None:
    """Allow *minimum* to *maximum* on *ctx* (without ssl's deprecation warnings for TLS 1.0/1.1)."""
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
        with transient_file(_PROBE_IDENTITY) as path:
            server.load_cert_chain(path)
        for ctx in (server, client):
            if version < ssl.TLSVersion.TLSv1_2:
                ctx.set_ciphers(_LEGACY_CIPHERS)
            set_versions(ctx, version, version)
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


def _version_range(names: tuple[str, ...]) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
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
def negotiation_plan(versions: tuple[str, ...], ciphers: tuple[str, ...] | None) -> NegotiationPlan:
    """Work out the version range and cipher string for ``versions`` and ``ciphers``.

    *versions* are a ``ProtocolConfig``'s names (empty: the default, TLS 1.2
    and 1.3), each one ``ProtocolConfig`` checked is a known name.

    Raises ``ConfigError`` for versions or ciphers the local OpenSSL cannot
    use, and when the ciphers leave no version in the range (TLS 1.2 suites
    with only TLS 1.3 allowed, or the reverse).
    """
    minimum, maximum = _version_range(versions)
    old, new = resolve_ciphers(ciphers or ())
    if ciphers:
        if not new:
            maximum = min(maximum, ssl.TLSVersion.TLSv1_2)
        if not old:
            minimum = max(minimum, ssl.TLSVersion.TLSv1_3)
        if minimum > maximum:
            listed = list(versions) if versions else "default"
            raise ConfigError(
                f"No TLS protocol version suits both the versions {listed} and the ciphers {list(ciphers)}"
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

