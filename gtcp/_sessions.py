"""The client's TLS sessions: what a later connection may resume, and for how long.

A ``ClientSecureSocket``'s ``session_timeout`` is enforced here, on the client
side: :class:`SessionCache` only offers a session while it is younger than
``session_timeout`` (None: 300 s) and than the lifetime the server gave it.
(A server cannot be told its session lifetime from Python: see
:mod:`gtcp._contexts`.) Every ``Client`` shares :data:`SESSIONS`.

A client given a ready ``ssl.SSLContext`` instead of a record keys its
sessions by that context object (two equal-looking contexts are two keys: a
session can only be resumed with the context that made it) and keeps them for
:data:`~gtcp._config.DEFAULT_SESSION_TIMEOUT`.
"""

from __future__ import annotations

import collections
import ssl
import threading
import time
from collections.abc import Callable

from ._config import DEFAULT_SESSION_TIMEOUT, ClientSecureSocket

__all__ = ["SESSIONS", "SESSION_CACHE_SIZE", "SessionCache"]

#: What sessions are saved for: a client record, or the user's own context.
_Owner = ClientSecureSocket | ssl.SSLContext

#: Sessions kept by the process-wide :data:`SESSIONS`. A session is a few
#: hundred bytes; 1000 covers a client talking to many servers while bounding
#: memory when host names are unbounded.
SESSION_CACHE_SIZE = 1000


class SessionCache:
    """TLS sessions a client may resume, keyed by (record, host, port).

    The record may be an ``ssl.SSLContext`` instead (a client given a raw
    context): its ``session_timeout`` is then None.

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
            tuple[_Owner, str, int], tuple[ssl.SSLSession, float, ssl.SSLContext | None]
        ] = collections.OrderedDict()

    @staticmethod
    def _lifetime(cfg: _Owner) -> float:
        timeout = cfg.session_timeout if isinstance(cfg, ClientSecureSocket) else None
        return DEFAULT_SESSION_TIMEOUT if timeout is None else timeout

    def get(
        self, cfg: _Owner, host: str, port: int, context: ssl.SSLContext | None = None
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
        cfg: _Owner,
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
