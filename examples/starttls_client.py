"""A gtcp client that upgrades to TLS with STARTTLS, for ``examples/starttls_server.py``.

Start the server first (see its docstring), then::

    python examples/starttls_client.py --port 2525 --ca client.pem

It reads the greeting, says ``EHLO``, sends ``STARTTLS``, and after the
server's ``220`` upgrades the same connection with ``client.start_tls``;
then it says ``EHLO`` again, sends ``ECHO`` over TLS, prints the reply and
the TLS version, and quits. From Python, ``main(host, port, ca)`` returns
the echoed line and the TLS version.
"""

from __future__ import annotations

import argparse

import gtcp

#: Seconds to wait to connect and for each reply.
TIMEOUT = 30.0


def reply(client: gtcp.Client) -> list[bytes]:
    """One SMTP reply: its lines (``250-...`` continues, ``250 ...`` ends)."""
    lines = [client.read_line(max_length=1000)]
    while lines[-1][3:4] == b"-":
        lines.append(client.read_line(max_length=1000))
    return lines


def command(client: gtcp.Client, line: bytes) -> list[bytes]:
    """Send one command line and return its reply."""
    client.write_bytes(line + b"\r\n")
    return reply(client)


def main(host: str, port: int, ca: str, text: str = "hello over TLS") -> tuple[str, str]:
    """Run the dialogue; print and return (the ECHO reply, the TLS version)."""
    with gtcp.Client(host, port, timeout=TIMEOUT, connect_timeout=TIMEOUT) as client:
        reply(client)  # 220 greeting
        if b"250-STARTTLS\r\n" not in command(client, b"EHLO client.example"):
            raise SystemExit("starttls_client: the server does not offer STARTTLS")
        go_ahead = command(client, b"STARTTLS")
        if not go_ahead[0].startswith(b"220"):
            raise SystemExit(f"starttls_client: STARTTLS refused: {go_ahead[0]!r}")
        client.start_tls(gtcp.ClientSecureSocket(cert=ca, server_name=host))
        command(client, b"EHLO client.example")  # SMTP forgets everything at the upgrade
        echoed = command(client, b"ECHO " + text.encode())[0].decode().rstrip("\r\n")
        command(client, b"QUIT")
        assert client.tls is not None
        version = client.tls.version
    print(f"{echoed} ({version})", flush=True)
    return echoed, version


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="STARTTLS with a gtcp.Client.")
    parser.add_argument("--host", default="127.0.0.1", help="server host (default: %(default)s)")
    parser.add_argument("--port", type=int, default=2525, help="server port (default: %(default)s)")
    parser.add_argument("--ca", required=True, help="CA certificate(s) to trust (PEM)")
    args = parser.parse_args()
    try:
        main(args.host, args.port, args.ca)
    except gtcp.Error as err:
        raise SystemExit(f"starttls_client: {err}") from None
