"""Facts about an established TLS connection: ``client.tls`` and ``caller.tls``."""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import Protocol as _Protocol

__all__ = ["TLSInfo", "tls_info"]


class _TLSSocket(_Protocol):
    """What :func:`tls_info` reads: the C-level ``_ssl._SSLSocket`` a ``Stream`` holds, or an
    ``ssl.SSLObject``, ``ssl.SSLSocket`` or gevent ``SSLSocket``."""

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
