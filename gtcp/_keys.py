"""Key material into a TLS context: PEM key pairs, PKCS#12 stores, trusted CAs.

:func:`load_key` loads a record's ``CertKey`` or ``KeyStore`` and
:func:`load_trust` its trusted certificates (a PEM file or a
``TrustStore``) into an ``ssl.SSLContext``; every failure raises
``TLSError("Failed to initialize the SSL context: <cause>")`` naming the file.

``load_cert_chain`` only reads files. PEM ``CertKey`` files are handed to it
as they are, with a password callback even when no ``key_password`` is given
(without one OpenSSL prompts on the terminal for an encrypted key, blocking the
process). When loading fails, the files are read again with ``cryptography``
to say which file is wrong and why; an encrypted key that will not load with
the ``key_password`` given is always reported as a possibly wrong password.
A PKCS#12 ``KeyStore`` is decoded with ``cryptography`` (legacy
RC2/3DES stores included) and re-encoded as PEM, the private key encrypted
with a random one-time password, into a :func:`~gtcp._memfile.transient_file`
(in memory where the platform allows), so the key never reaches a disk
unencrypted. Every certificate of a ``TrustStore`` is handed over in memory
(``load_verify_locations(cadata=...)``).

``cryptography`` (some 20 MiB and 100 ms) is imported only on those paths:
PKCS#12 stores and the diagnosis of a failure. PEM files are loaded by
:mod:`ssl` alone, so a program without stores never imports it.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ._config import CertKey, KeyStore, TrustStore
from ._errors import TLSError
from ._io import reason
from ._memfile import transient_file

if TYPE_CHECKING:  # cryptography is imported where it is used (PKCS#12 stores, diagnosis)
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

__all__ = ["load_key", "load_trust"]


def _context_error(cause: str) -> TLSError:
    """The error for a context that cannot be built: ``Failed to initialize the SSL context: <cause>``."""
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
    with transient_file(pem) as path:
        try:
            ctx.load_cert_chain(path, password=secret)
        except (OSError, ValueError) as exc:
            raise _context_error(f"cannot use KeyStore {store.path!r}: {reason(exc)}") from exc


def load_key(ctx: ssl.SSLContext, key: CertKey | KeyStore) -> None:
    """Load the certificate chain and private key of a CertKey (PEM files) or a KeyStore (PKCS#12)."""
    if isinstance(key, CertKey):
        _load_cert_key(ctx, key)
    else:
        _load_key_store(ctx, key)


def load_trust(ctx: ssl.SSLContext, cert: str | TrustStore) -> None:
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

