"""HTTP/1.1 over gtcp: Ballerina's ``http-client-server`` tcp example.

A gtcp listener reads HTTP/1.1 requests and answers each ``POST`` with
``HTTP/1.1 200 Ok`` and the request's body as the response body; any other
method gets ``400 Bad Request``. A gtcp client sends a ``POST`` and prints
the response. Both run once, in one process, on a free loopback port::

    python examples/http_over_tcp.py

or separately (try the server with ``curl -d hello http://127.0.0.1:3000/``)::

    python examples/http_over_tcp.py --serve --port 3000
    python examples/http_over_tcp.py --client --port 3000 --body "hello"

From Python, ``main(host, port, body)`` runs the server and the client once
and returns the response text; ``start(host, port)`` and ``post(host, port,
body)`` are the two halves.

This is an illustration of framing a protocol on a byte stream, not an HTTP
implementation: no chunked bodies, no ``Expect: 100-continue``.
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import gevent
from gevent.event import Event

import gtcp

log = logging.getLogger(__name__)

#: The body the client sends, as in the Ballerina example.
BODY = "request body"

#: Largest request head (request line and headers) the server buffers.
MAX_HEAD = 16 * 1024

#: Largest request body the server accepts.
MAX_BODY = 1024 * 1024

#: Seconds the client waits to connect and for each part of the response.
TIMEOUT = 30.0

_HEAD_END = b"\r\n\r\n"


class BadRequest(Exception):
    """The bytes received are not a request this server can answer."""


@dataclass(frozen=True)
class Request:
    """One parsed HTTP/1.1 request."""

    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """Split a message head into its start line and its (lower-cased) headers."""
    try:
        start_line, *lines = head.decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        raise BadRequest("head is not ASCII") from None
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(f"malformed header line {line!r}")
        headers[name.lower()] = value.strip()
    return start_line, headers


def content_length(headers: dict[str, str]) -> int:
    """The body length a request or response announces (0 when absent)."""
    if "transfer-encoding" in headers:
        raise BadRequest("Transfer-Encoding is not supported")
    text = headers.get("content-length", "0")
    if not text.isdigit() or int(text) > MAX_BODY:
        raise BadRequest(f"bad Content-Length {text!r}")
    return int(text)


def response(status: str, body: bytes, *, content_type: str = "text/plain", close: bool = False) -> bytes:
    """Serialise an HTTP/1.1 response."""
    head = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


class HttpEchoService(gtcp.ConnectionService):
    """One connection: buffer bytes until a whole request is in, answer it.

    ``on_bytes`` gets whatever TCP delivered: part of a request, one request,
    or several (pipelining). The buffer is parsed until it holds no complete
    request; the rest waits for the next chunk.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def on_bytes(self, caller: gtcp.Caller, data: bytes) -> None:
        """Add *data* to the buffer and answer every complete request in it."""
        self._buffer += data
        try:
            for reply, close in self._replies():
                caller.write_bytes(reply)
                if close:
                    caller.close()
                    return
        except gtcp.Error as err:
            # The client went away mid-answer: not a bug, nothing to retry.
            log.warning("Cannot answer %s:%s: %s", caller.remote_host, caller.remote_port, err)
            caller.close()

    def _replies(self) -> Iterator[tuple[bytes, bool]]:
        """(response, close after it) for each complete request buffered."""
        try:
            while (request := self._take_request()) is not None:
                close = request.headers.get("connection", "").lower() == "close"
                yield self._answer(request, close), close
        except BadRequest as exc:
            yield response("400 Bad Request", f"{exc}\n".encode(), close=True), True

    def _take_request(self) -> Request | None:
        """Remove and return the first complete request, or None if there is none yet."""
        end = self._buffer.find(_HEAD_END)
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                raise BadRequest("request head too large")
            return None
        request_line, headers = parse_head(bytes(self._buffer[:end]))
        try:
            method, target, version = request_line.split(" ")
        except ValueError:
            raise BadRequest(f"malformed request line {request_line!r}") from None
        start = end + len(_HEAD_END)
        length = content_length(headers)
        if len(self._buffer) < start + length:
            return None
        body = bytes(self._buffer[start:start + length])
        del self._buffer[:start + length]
        return Request(method, target, version, headers, body)

    @staticmethod
    def _answer(request: Request, close: bool) -> bytes:
        if request.method != "POST":
            return response("400 Bad Request", b"Only POST requests are echoed\n", close=close)
        content_type = request.headers.get("content-type", "text/plain")
        return response("200 Ok", request.body, content_type=content_type, close=close)

    def on_error(self, err: gtcp.Error) -> None:
        """A read or write failed; the connection closes next."""
        log.warning("HTTP connection failed: %s", err)


class HttpEcho(gtcp.Service):
    """The listener's service: one :class:`HttpEchoService` per connection."""

    def on_connect(self, caller: gtcp.Caller) -> HttpEchoService:
        """Serve the new connection."""
        return HttpEchoService()


def start(host: str = "127.0.0.1", port: int = 0) -> gtcp.Listener:
    """Start the HTTP echo listener on *host*:*port* (0: a free port) and return it."""
    listener = gtcp.Listener(port, local_host=host)
    listener.attach(HttpEcho())
    listener.start()
    return listener


def read_response(client: gtcp.Client) -> bytes:
    """Read one whole HTTP response: its head, then Content-Length bytes of body."""
    data = bytearray()
    while (end := data.find(_HEAD_END)) < 0:
        data += client.read_bytes()
    _, headers = parse_head(bytes(data[:end]))
    total = end + len(_HEAD_END) + content_length(headers)
    while len(data) < total:
        data += client.read_bytes()
    return bytes(data[:total])


def post(host: str, port: int, body: str = BODY, path: str = "/test") -> str:
    """POST *body* to *host*:*port* over a gtcp.Client; print and return the response."""
    payload = body.encode("utf-8")
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: text/plain\r\n"
        "custom-header: header1\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "\r\n"
    )
    with gtcp.Client(host, port, timeout=TIMEOUT, connect_timeout=TIMEOUT) as client:
        client.write_bytes(head.encode("ascii") + payload)
        reply = read_response(client)
    text = reply.decode("utf-8", errors="replace")
    print(text, flush=True)
    return text


def main(host: str = "127.0.0.1", port: int = 0, body: str = BODY) -> str:
    """Start the server, POST *body* to it once, stop it; return the response text."""
    listener = start(host, port)
    try:
        return post(host, listener.port, body)
    finally:
        listener.graceful_stop()


def _serve(host: str, port: int) -> None:
    listener = start(host, port)
    print(f"HTTP echo server listening on {host}:{listener.port}", flush=True)
    interrupted = Event()
    gevent.signal_handler(signal.SIGINT, interrupted.set)
    interrupted.wait()
    listener.graceful_stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Ballerina's HTTP echo example, over gtcp.")
    role = parser.add_mutually_exclusive_group()
    role.add_argument("--serve", action="store_true", help="only run the server, until Ctrl-C")
    role.add_argument("--client", action="store_true", help="only send one POST to --host:--port")
    parser.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default: 3000 with --serve/--client, else a free one)")
    parser.add_argument("--body", default=BODY, help="request body (default: %(default)r)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    try:
        if args.serve:
            _serve(args.host, 3000 if args.port is None else args.port)
        elif args.client:
            post(args.host, 3000 if args.port is None else args.port, args.body)
        else:
            main(args.host, args.port or 0, args.body)
    except (gtcp.Error, BadRequest) as err:
        raise SystemExit(f"http_over_tcp: {err}") from None
