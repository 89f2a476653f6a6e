"""TLS records -> ``gevent.ssl.SSLContext``: listener contexts and the cache of client contexts.

Contexts are built with ``gevent.ssl.SSLContext(PROTOCOL_TLS_SERVER/CLIENT)``,
never ``create_default_context`` (that returns a stdlib context whose sockets
block the whole process). Every context refuses renegotiation and compression.
The version range and cipher string come from
:func:`gtcp._tls_probe.negotiation_plan`, the key material is loaded by
:mod:`gtcp._keys`.

Python's ``ssl`` has no setter for a server's session lifetime
(``SSL_CTX_set_timeout``): a server keeps OpenSSL's default, which OpenSSL 3.0
sets to 7200 s (the lifetime hint sent with its session tickets), whatever
``ListenerSecureSocket.session_timeout`` says. The one thing that can be done
is ``session_timeout <= 0``: the server then sends no session tickets
(``num_tickets = 0`` and ``OP_NO_TICKET``); OpenSSL's server-side session-ID
cache for TLS 1.2 cannot be switched off from Python. The client side of
``session_timeout`` is :mod:`gtcp._sessions`.

A ready ``ssl.SSLContext`` given instead of a record (checked for its side by
:mod:`gtcp._config`) is used as it is: :func:`server_context` and
:func:`client_context` return it unchanged, and gtcp sets nothing on it.
"""

from __future__ import annotations

import collections
import ssl
import threading

import gevent.ssl  # type: ignore[import-untyped, unused-ignore]

from ._config import ClientSecureSocket, ListenerSecureSocket, ProtocolConfig, VerifyClient
from ._errors import ConfigError
from ._keys import load_key, load_trust
from ._tls_probe import negotiation_plan, set_versions

__all__ = ["CLIENT_CONTEXT_CACHE_SIZE", "client_context", "server_context"]

#: Client contexts kept, one per distinct ``ClientSecureSocket``. A context
#: holds the loaded trust store (the system one is ~150 certificates), so keep
#: few; real programs use a handful of configurations.
CLIENT_CONTEXT_CACHE_SIZE = 32

_NO_RENEGOTIATION: int = getattr(ssl, "OP_NO_RENEGOTIATION", 0)


def _new_context(
    purpose: ssl._SSLMethod, protocol: ProtocolConfig | None, ciphers: tuple[str, ...] | None
) -> ssl.SSLContext:
    plan = negotiation_plan(protocol.versions if protocol is not None else (), ciphers)
    ctx: ssl.SSLContext = gevent.ssl.SSLContext(purpose)
    ctx.options |= ssl.OP_NO_COMPRESSION | _NO_RENEGOTIATION
    if plan.cipher_string is not None:
        ctx.set_ciphers(plan.cipher_string)  # checked by negotiation_plan
    set_versions(ctx, plan.minimum_version, plan.maximum_version)
    return ctx


def server_context(cfg: ListenerSecureSocket | ssl.SSLContext) -> ssl.SSLContext:
    """Build a listener's context (a ``gevent.ssl.SSLContext``) from its record.

    Loads the key and, with ``mutual_ssl``, the CA certificates client
    certificates are checked against (``CERT_REQUIRED`` or ``CERT_OPTIONAL``).
    File failures raise ``TLSError("Failed to initialize the SSL context: ...")``
    naming the file; a new context is built at every call. An
    ``ssl.SSLContext`` (the user's own) is returned as it is.
    """
    if not isinstance(cfg, ListenerSecureSocket):
        return cfg
    ctx = _new_context(ssl.PROTOCOL_TLS_SERVER, cfg.protocol, cfg.ciphers)
    load_key(ctx, cfg.key)
    if cfg.mutual_ssl is not None:
        load_trust(ctx, cfg.mutual_ssl.cert)
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
        load_trust(ctx, cfg.cert)
    if cfg.key is not None:
        load_key(ctx, cfg.key)
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


def client_context(cfg: ClientSecureSocket | ssl.SSLContext) -> ssl.SSLContext:
    """The context (a ``gevent.ssl.SSLContext``) for a client record.

    An ``ssl.SSLContext`` (the user's own) is returned as it is.

    Equal records get the same context object (a bounded cache), because a
    TLS session can only be resumed with the context that made it; files are
    therefore read when a record is first used. Trusts ``cfg.cert`` (None: the
    system store), checks the host name when ``verify_hostname``, and loads
    ``cfg.key`` as the client certificate. Raises ``ConfigError`` for a record
    with ``enable=False`` and ``TLSError`` for files that cannot be loaded.
    """
    if not isinstance(cfg, ClientSecureSocket):
        return cfg
    if not cfg.enable:
        raise ConfigError("TLS is disabled in this ClientSecureSocket (enable=False)")
    return _client_contexts.get(cfg)

