"""Nothing but a forwarding import for ``gtcp/_serve.py``, which still imports
``server_context`` from here; remove this file once it imports
:mod:`gtcp._contexts`. The TLS code lives in ``_tls_probe`` (what the local
OpenSSL can do), ``_keys`` (key material), ``_contexts`` (contexts),
``_sessions`` (the client's session cache) and ``_tlsinfo`` (``TLSInfo``).
"""

from ._contexts import server_context

__all__ = ["server_context"]
