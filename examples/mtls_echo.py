"""Mutual TLS echo: a listener that requires client certificates, and a client with one.

Both sides of mutual TLS in one program:

* the listener has ``secure_socket=ListenerSecureSocket(key=CertKey(...),
  mutual_ssl=MutualSsl(cert=<CA pem>))``: a client must present a certificate
  signed by that CA, or its connection is refused during the handshake. Its
  ``on_connect`` reads ``caller.tls.peer_certificate`` (the verified client
  certificate) and greets the client by the certificate's common name, then
  echoes what the client sends;
* the client has ``secure_socket=ClientSecureSocket(cert=<CA pem>,
  key=CertKey(...))``: it trusts the server's CA and presents its own
  certificate.

Run it::

    python examples/mtls_echo.py

With no ``--certs-dir`` it makes throwaway certificates with trustme (``pip
install trustme``; trustme is a test dependency of gtcp, not a runtime one, so
it is imported only then) in a temporary directory, runs one exchange on a
free loopback port, prints what the client received and stops.

To use certificates of your own, give ``--certs-dir DIR`` laid out as two
runs of ``python -m trustme`` write it (each run makes its own CA)::

    mkdir -p certs/server certs/client
    python -m trustme -q -d certs/server                          # the server's
    python -m trustme -q -d certs/client --common-name alice      # the client's
    python examples/mtls_echo.py --certs-dir certs

In each directory trustme names the leaf certificate ``server.pem`` (key
``server.key``) and the CA that signed it ``client.pem``. So the listener
serves ``certs/server/server.pem`` and trusts ``certs/client/client.pem``; the
client presents ``certs/client/server.pem`` and trusts
``certs/server/client.pem``. The gtcp command line takes the same files::

    python -m gtcp echo --port 9003 --cert certs/server/server.pem \\
        --key certs/server/server.key --ca certs/client/client.pem
    python -m gtcp send 127.0.0.1 9003 hello --ca certs/server/client.pem \\
        --cert certs/client/server.pem --key certs/client/server.key

From Python, ``main(host, port, certs_dir=...)`` does the exchange and returns
the text the client received: the greeting line, then the echo.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gtcp

log = logging.getLogger(__name__)

MESSAGE = "Hello over mutual TLS"

#: The common name of the client certificate made when no certificates are given.
CLIENT_NAME = "gtcp-example-client"

#: Seconds any step may take: connect and handshake, each read, the stop.
TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class Certs:
    """The PEM files of both sides, in the layout of two ``python -m trustme`` runs."""

    server_cert: str  #: the listener's certificate chain
    server_key: str  #: its private key
    server_ca: str  #: the CA that signed the listener's certificate: the client trusts it
    client_cert: str  #: the client's certificate chain
    client_key: str  #: its private key
    client_ca: str  #: the CA that signed the client's certificate: the listener trusts it

    @classmethod
    def in_dir(cls, certs_dir: str | Path) -> Certs:
        """The files under *certs_dir*: ``server/`` and ``client/``, each a trustme output."""
        server, client = Path(certs_dir, "server"), Path(certs_dir, "client")
        return cls(
            server_cert=str(server / "server.pem"),
            server_key=str(server / "server.key"),
            server_ca=str(server / "client.pem"),
            client_cert=str(client / "server.pem"),
            client_key=str(client / "server.key"),
            client_ca=str(client / "client.pem"),
        )


def make_certs(certs_dir: str | Path, client_name: str = CLIENT_NAME) -> Certs:
    """Write throwaway certificates under *certs_dir*, as :meth:`Certs.in_dir` expects them.

    The server's certificate is valid for ``localhost``, ``127.0.0.1`` and
    ``::1``; the client's has the common name *client_name*. Needs trustme.
    """
    import trustme  # A test dependency: imported only when certificates must be made.

    certs = Certs.in_dir(certs_dir)
    for role, identities, common_name in (
        ("server", ("localhost", "127.0.0.1", "::1"), None),
        ("client", (client_name,), client_name),
    ):
        Path(certs_dir, role).mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        leaf = ca.issue_cert(*identities, common_name=common_name)
        cert, key = (certs.server_cert, certs.server_key) if role == "server" else (
            certs.client_cert, certs.client_key)
        Path(cert).write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(key)
        ca.cert_pem.write_to_path(certs.server_ca if role == "server" else certs.client_ca)
    return certs


def common_name(peer_certificate: dict[str, Any] | None) -> str | None:
    """The subject's common name in a ``getpeercert()`` dict, or None if it has none.

    ``subject`` is a tuple of relative distinguished names, each a tuple of
    ``(field, value)`` pairs.
    """
    if not peer_certificate:
        return None
    for rdn in peer_certificate.get("subject", ()):
        for field, value in rdn:
            if field == "commonName":
                return str(value)
    return None


class EchoService(gtcp.ConnectionService):
    """One connection, after the greeting: echo every chunk."""

    def on_bytes(self, data: bytes) -> bytes:
        """Write the chunk back (Ballerina: ``return data``)."""
        return data

    def on_error(self, err: gtcp.Error) -> None:
        """A read or write failed; the connection closes next."""
        log.error("An error occurred: %s", err)


class Greeter(gtcp.Service):
    """Greets each client by the common name of its certificate, then echoes."""

    def on_connect(self, caller: gtcp.Caller) -> EchoService | gtcp.Error:
        """Say ``Hello, <common name>!``; a failed write ends the connection (it is returned)."""
        peer = caller.tls.peer_certificate if caller.tls is not None else None
        name = common_name(peer) or "stranger"
        print(f"Client {name} connected from port {caller.remote_port}", flush=True)
        try:
            caller.write_bytes(f"Hello, {name}!\n".encode())
        except gtcp.Error as err:
            return err
        return EchoService()


def start(certs: Certs, host: str = "127.0.0.1", port: int = 0) -> gtcp.Listener:
    """Start the mutual TLS listener on *host*:*port* (0: a free port) and return it."""
    secure_socket = gtcp.ListenerSecureSocket(
        key=gtcp.CertKey(cert_file=certs.server_cert, key_file=certs.server_key),
        mutual_ssl=gtcp.MutualSsl(cert=certs.client_ca),
    )
    listener = gtcp.Listener(port, local_host=host, secure_socket=secure_socket)
    listener.attach(Greeter())
    listener.start()
    return listener


def connect(certs: Certs, host: str, port: int, *, versions: Sequence[str] = ()) -> gtcp.Client:
    """Connect with the client certificate; *versions* narrows the TLS versions allowed."""
    protocol = gtcp.ProtocolConfig(gtcp.Protocol.TLS, versions=versions) if versions else None
    secure_socket = gtcp.ClientSecureSocket(
        cert=certs.server_ca,
        key=gtcp.CertKey(cert_file=certs.client_cert, key_file=certs.client_key),
        protocol=protocol,
    )
    return gtcp.Client(host, port, timeout=TIMEOUT, connect_timeout=TIMEOUT, secure_socket=secure_socket)


def exchange(client: gtcp.Client, message: str = MESSAGE) -> str:
    """Read the greeting line, send *message*, read its echo; all the text received.

    The greeting and the echo may each arrive in several pieces: ``read_line``
    and ``read_exactly`` wait for the whole of them.
    """
    greeting = client.read_line()
    sent = message.encode("utf-8")
    client.write_bytes(sent)
    return (greeting + client.read_exactly(len(sent))).decode("utf-8", errors="replace")


def main(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    certs_dir: str | Path | None = None,
    message: str = MESSAGE,
    versions: Sequence[str] = (),
) -> str:
    """Run the listener, one client exchange, and a stop; print and return what the client received.

    *certs_dir* holds the certificates (see the module docstring); None makes
    throwaway ones with trustme in a temporary directory.
    """
    if certs_dir is None:
        with tempfile.TemporaryDirectory(prefix="gtcp-mtls-") as scratch:
            return _run(make_certs(scratch), host, port, message, versions)
    return _run(Certs.in_dir(certs_dir), host, port, message, versions)


def _run(certs: Certs, host: str, port: int, message: str, versions: Sequence[str]) -> str:
    listener = start(certs, host, port)
    try:
        with connect(certs, host, listener.port, versions=versions) as client:
            text = exchange(client, message)
    finally:
        # Waits (bounded) for the connection to end, so the output is the same every run.
        listener.graceful_stop(timeout=TIMEOUT)
    print("Received:", text, flush=True)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Mutual TLS: greet a client by its certificate's name.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind and connect to (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port (default: %(default)s: any free one)")
    parser.add_argument("--certs-dir", metavar="DIR",
                        help="certificates laid out as in this file's docstring (default: throwaway ones)")
    parser.add_argument("--message", default=MESSAGE, help="text to send (default: %(default)r)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    try:
        main(args.host, args.port, certs_dir=args.certs_dir, message=args.message)
    except gtcp.Error as err:
        raise SystemExit(f"mtls_echo: {err}") from None
