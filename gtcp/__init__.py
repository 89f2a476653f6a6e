"""gtcp: the Ballerina ``tcp`` library (Swan Lake) in Python, on gevent.

A ``Listener`` serves each connection in its own greenlet and calls your
``Service.on_connect(caller)``, then the returned ``ConnectionService``'s
``on_bytes``, ``on_error`` and ``on_close``; a blocking-style ``Client``
writes and reads with per-operation deadlines. TLS on both sides.

Everything public is importable from here; the ``_modules`` are private.
Importing gtcp patches nothing.
"""

from ._caller import Caller
from ._client import Client
from ._config import (
    CertKey,
    ClientSecureSocket,
    KeyStore,
    ListenerSecureSocket,
    MutualSsl,
    Protocol,
    ProtocolConfig,
    TrustStore,
    VerifyClient,
)
from ._errors import (
    ClosedError,
    ConfigError,
    ConnectError,
    Error,
    FrameTooLongError,
    ListenerError,
    PeerClosedError,
    ReadTimeoutError,
    TLSError,
    WriteError,
    WriteTimeoutError,
)
from ._framing import Codec, Delimited, FixedSize, LengthPrefixed, Lines
from ._listener import Listener, ListenerStats
from ._proxy import ProxyInfo
from ._service import ConnectionService, Service
from ._sockopts import KeepAlive
from ._tlsinfo import TLSInfo
from ._version import __version__

__all__ = [
    "Caller",
    "CertKey",
    "Client",
    "ClientSecureSocket",
    "ClosedError",
    "Codec",
    "ConfigError",
    "ConnectError",
    "ConnectionService",
    "Delimited",
    "Error",
    "FixedSize",
    "FrameTooLongError",
    "KeepAlive",
    "KeyStore",
    "LengthPrefixed",
    "Lines",
    "ListenerError",
    "ListenerSecureSocket",
    "Listener",
    "ListenerStats",
    "MutualSsl",
    "PeerClosedError",
    "Protocol",
    "ProtocolConfig",
    "ProxyInfo",
    "ReadTimeoutError",
    "Service",
    "TLSError",
    "TLSInfo",
    "TrustStore",
    "VerifyClient",
    "WriteError",
    "WriteTimeoutError",
    "__version__",
]


def _fixup_module_metadata() -> None:
    """Show public classes as ``gtcp.X`` in reprs and tracebacks (as trio does)."""
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) and obj.__module__.startswith("gtcp._"):
            obj.__module__ = "gtcp"


_fixup_module_metadata()
del _fixup_module_metadata
