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

Neither side buffers by hand. The server's framing hands ``on_bytes`` one
whole request head (``gtcp.Delimited`` at the blank line), then, if the head
announces one, exactly the body (``gtcp.FixedSize``); the client reads with
``read_until`` and ``read_exactly``.

This is an illustration of framing a protocol on a byte stream, not an HTTP
implementation: no chunked bodies, no ``Expect: 100-continue``. A request
head over :data:`MAX_HEAD` bytes closes the connection without an answer.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal

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

#: The listener's framing: a request head ends at the first blank line. A
#: longer head is gtcp's FrameTooLongError: the connection closes unanswered.
HEAD = gtcp.Delimited(b"\r\n\r\n", max_length=MAX_HEAD)


class BadRequest(Exception):
    """The bytes received are not a request this server can answer."""


@dataclasses.dataclass(frozen=True)
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


def parse_request(head: bytes) -> tuple[Request, int]:
    """The request a head starts (its body still empty), and the length of its body."""
    request_line, headers = parse_head(head)
    try:
        method, target, version = request_line.split(" ")
    except ValueError:
        raise BadRequest(f"malformed request line {request_line!r}") from None
    return Request(method, target, version, headers, b""), content_length(headers)


def answer(request: Request, close: bool) -> bytes:
    """The response to a whole request: its body echoed to a POST, else 400."""
    if request.method != "POST":
        return response("400 Bad Request", b"Only POST requests are echoed\n", close=close)
    content_type = request.headers.get("content-type", "text/plain")
    return response("200 Ok", request.body, content_type=content_type, close=close)


class HttpEchoService(gtcp.ConnectionService):
    """One connection: each request comes as a head, then (if announced) a body.

    The listener's :data:`HEAD` framing gives ``on_bytes`` one whole head. A
    head announcing *n* body bytes switches the framing to
    ``gtcp.FixedSize(n)``, so the next call gets exactly the body, and then
    back to :data:`HEAD`. Pipelined requests are answered in order.
    """

    def __init__(self) -> None:
        self._request: Request | None = None  # a request whose body comes next

    def on_bytes(self, caller: gtcp.Caller, frame: bytes) -> None:
        """*frame* is a request head, or the body the last head announced."""
        if self._request is None:
            try:
                request, length = parse_request(frame)
            except BadRequest as exc:
                self._send(caller, response("400 Bad Request", f"{exc}\n".encode(), close=True), close=True)
                return
            if length > 0:  # the next frame is the body: exactly its bytes
                self._request = request
                caller.framing = gtcp.FixedSize(length)
                return
        else:  # the body is in; the next frame is a head again
            request, self._request = dataclasses.replace(self._request, body=frame), None
            caller.framing = HEAD
        close = request.headers.get("connection", "").lower() == "close"
        self._send(caller, answer(request, close), close)

    @staticmethod
    def _send(caller: gtcp.Caller, reply: bytes, close: bool) -> None:
        # Written raw: a reply returned from on_bytes would be encoded by the
        # framing, and HEAD would add a blank line of its own.
        try:
            caller.write_bytes(reply)
        except gtcp.Error as err:
            # The client went away mid-answer: not a bug, nothing to retry.
            log.warning("Cannot answer %s:%s: %s", caller.remote_host, caller.remote_port, err)
            close = True
        if close:
            caller.close()

    def on_error(self, err: gtcp.Error) -> None:
        """A read or write failed, or a head was over MAX_HEAD; the connection closes next."""
        log.warning("HTTP connection failed: %s", err)


class HttpEcho(gtcp.Service):
    """The listener's service: one :class:`HttpEchoService` per connection."""

    def on_connect(self, caller: gtcp.Caller) -> HttpEchoService:
        """Serve the new connection."""
        return HttpEchoService()


def start(host: str = "127.0.0.1", port: int = 0) -> gtcp.Listener:
    """Start the HTTP echo listener on *host*:*port* (0: a free port) and return it."""
    listener = gtcp.Listener(port, local_host=host, framing=HEAD)
    listener.attach(HttpEcho())
    listener.start()
    return listener


def read_response(client: gtcp.Client) -> bytes:
    """Read one whole HTTP response: its head, then Content-Length bytes of body."""
    head = client.read_until(b"\r\n\r\n", max_length=MAX_HEAD)
    _, headers = parse_head(head[:-4])
    return head + client.read_exactly(content_length(headers))


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
