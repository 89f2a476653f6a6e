"""Echo client: the client sample of the Ballerina tcp spec, section 6.

Start ``examples/echo_server.py`` first, then::

    python examples/echo_client.py --port 3000

It sends ``Hello Ballerina Echo from client``, reads back as many bytes as it
sent, prints ``Received: ...`` with them and closes. From Python,
``main(host, port)`` does the same and returns the text received.
"""

from __future__ import annotations

import argparse

import gtcp

MESSAGE = "Hello Ballerina Echo from client"

#: Seconds to wait for the connection, and for the whole reply.
TIMEOUT = 30.0


def main(host: str = "127.0.0.1", port: int = 3000, message: str = MESSAGE) -> str:
    """Send *message* to the echo server at *host*:*port*; print and return the reply."""
    sent = message.encode("utf-8")
    with gtcp.Client(host, port, timeout=TIMEOUT, connect_timeout=TIMEOUT) as client:
        client.write_bytes(sent)
        # TCP carries bytes, not messages: the echo may come back in several
        # pieces. The Ballerina sample reads once; read_exactly waits for
        # every byte sent, so the whole reply is printed, never half of it.
        received = client.read_exactly(len(sent))
    text = received.decode("utf-8", errors="replace")
    print("Received:", text, flush=True)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The Ballerina tcp spec's echo client.")
    parser.add_argument("--host", default="127.0.0.1", help="server host (default: %(default)s)")
    parser.add_argument("--port", type=int, default=3000, help="server port (default: %(default)s)")
    parser.add_argument("--message", default=MESSAGE, help="text to send (default: %(default)r)")
    args = parser.parse_args()
    try:
        main(args.host, args.port, args.message)
    except gtcp.Error as err:
        raise SystemExit(f"echo_client: {err}") from None
