"""Secure echo client: the TLS client of the Ballerina tcp spec, section 5.1.2.

The section 6 echo client over TLS: the client is given a
``ClientSecureSocket`` whose ``cert`` is the PEM file of the CA it trusts
(``ClientSecureSocket(cert=...)``), and it checks that the server's
certificate names the host it connected to.

Make test certificates with trustme (``pip install trustme``) in an empty
directory, then start ``examples/tls_echo_server.py`` there::

    python -m trustme
    python examples/tls_echo_server.py --cert server.pem --key server.key

trustme writes ``server.pem`` and ``server.key`` for the server and
``client.pem``, the certificate of the throwaway CA that signed the server's:
the file this client trusts. In another terminal, in the same directory::

    python examples/tls_echo_client.py --ca client.pem
    python examples/tls_echo_client.py --ca client.pem --tls-version TLSv1.2

It sends ``Hello Ballerina Echo from client``, prints ``Received: ...`` with
the reply and closes. From Python, ``main(host, port, ca_file=...)`` does the
same and returns the text received.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import gtcp

MESSAGE = "Hello Ballerina Echo from client"

#: The port of the spec's secure sample.
DEFAULT_PORT = 9002

#: Seconds to wait for the connection (handshake included) and for the reply.
TIMEOUT = 30.0


def secure_socket(ca_file: str, versions: Sequence[str] = ()) -> gtcp.ClientSecureSocket:
    """The client's TLS settings: trust *ca_file*; allow only *versions* if any are given.

    With no *versions* the library default applies (TLS 1.2 and 1.3).
    """
    protocol = gtcp.ProtocolConfig(gtcp.Protocol.TLS, versions=versions) if versions else None
    return gtcp.ClientSecureSocket(cert=ca_file, protocol=protocol)


def main(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    ca_file: str,
    message: str = MESSAGE,
    versions: Sequence[str] = (),
) -> str:
    """Send *message* over TLS to the echo server at *host*:*port*; print and return the reply.

    *ca_file* is the PEM file of the CA the server's certificate must chain
    to; *versions* (e.g. ``["TLSv1.3"]``) narrows the TLS versions allowed.
    A server that cannot be trusted raises ``gtcp.TLSError``.
    """
    sent = message.encode("utf-8")
    with gtcp.Client(host, port, timeout=TIMEOUT, connect_timeout=TIMEOUT,
                     secure_socket=secure_socket(ca_file, versions)) as client:
        client.write_bytes(sent)
        # TCP carries bytes, not messages (TLS records neither): wait for
        # every byte sent rather than print half a reply.
        received = client.read_bytes()
        while len(received) < len(sent):
            received += client.read_bytes()
    text = received.decode("utf-8", errors="replace")
    print("Received:", text, flush=True)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The Ballerina tcp spec's secure echo client.")
    parser.add_argument("--host", default="127.0.0.1", help="server host (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="server port (default: %(default)s)")
    parser.add_argument("--ca", required=True, metavar="FILE",
                        help="PEM certificates of the CA to trust (trustme: client.pem)")
    parser.add_argument("--tls-version", dest="versions", action="append", default=[],
                        choices=["TLSv1.2", "TLSv1.3"],
                        help="allow only this TLS version (repeatable; default: both)")
    parser.add_argument("--message", default=MESSAGE, help="text to send (default: %(default)r)")
    args = parser.parse_args()
    try:
        main(args.host, args.port, ca_file=args.ca, message=args.message, versions=args.versions)
    except gtcp.Error as err:
        raise SystemExit(f"tls_echo_client: {err}") from None
