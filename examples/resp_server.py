"""A Redis-protocol server on a custom gtcp codec: PING, ECHO, SET, GET, INCR, DEL
(and INCRBY, HELLO).

Run it, then talk to it with ``redis-cli``, ``redis-benchmark`` or redis-py::

    python examples/resp_server.py --port 6380
    redis-cli -p 6380 set greeting hello
    redis-cli -p 6380 get greeting

The protocol lives in :class:`RespCodec`, a sans-I/O codec (bytes in,
commands out; replies in, bytes out). The service itself never buffers or
parses: ``on_bytes`` gets one command as a list of ``bytes`` arguments and
returns the reply, which the codec encodes. gtcp delivers the commands of a
pipeline one by one and sends their replies together, in as few system
calls as it can.

From Python, ``main(host, port, ready=..., stop=...)`` runs the server until
``stop`` is set; ``ready`` receives the bound port. With ``--port 0`` the
script prints ``READY <port>`` once it listens (for benchmarks).
"""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

import gevent
from gevent.event import AsyncResult, Event

import gtcp

#: Longest bulk string accepted (Redis's own default is 512 MB).
MAX_BULK = 64 * 1024 * 1024
#: Longest inline command or header line.
MAX_LINE = 64 * 1024
#: Most arguments in one command.
MAX_ARGS = 1024 * 1024


class RespError:
    """An error reply (``-ERR ...``). Not a ``gtcp.Error``: returning one of
    those from ``on_bytes`` means "log it", not "send it"."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


#: The null bulk string (``$-1``): GET of a missing key. ``None`` cannot be
#: the null reply, because returning ``None`` from ``on_bytes`` sends nothing.
NULL = object()


class ProtocolError(gtcp.Error, ValueError):
    """The client sent something that is not RESP."""


class RespCodec(gtcp.Codec):
    """RESP requests (multi-bulk ``*N`` arrays, or inline commands) and replies.

    ``resp3=True`` encodes replies in RESP3 (null as ``_``, maps as ``%``):
    a client that sends ``HELLO 3`` gets its connection switched to it.
    """

    #: The most one command may make gtcp buffer (its backstop reads it): one
    #: bulk string at its limit, and the lines around it.
    max_length = MAX_BULK + MAX_LINE

    def __init__(self, resp3: bool = False) -> None:
        self.resp3 = resp3
        self._null = b"_\r\n" if resp3 else b"$-1\r\n"

    def decode(self, buffer: bytes | bytearray, start: int) -> tuple[list[bytes], int] | None:
        """One command at ``buffer[start:]`` as its arguments, or None if incomplete."""
        if buffer[start] != 42:  # "*": else an inline command, as redis-cli sends by hand
            return self._inline(buffer, start)
        eol = buffer.find(10, start) - 1  # "\r\n": find the "\n" (an int: memchr), check the "\r"
        if eol < 0:
            return self._need_more(buffer, start)
        if buffer[eol] != 13:
            raise ProtocolError("expected '\\r\\n'")
        count = self._number(buffer, start + 1, eol)
        if count > MAX_ARGS:
            raise gtcp.FrameTooLongError(f"Frame too long: {count} arguments, more than {MAX_ARGS}", MAX_ARGS)
        pos = eol + 2
        args = []
        size_of = len(buffer)
        for _ in range(count):
            if pos >= size_of:
                return None
            if buffer[pos] != 36:  # "$"
                raise ProtocolError(f"expected '$', got {bytes(buffer[pos:pos + 1])!r}")
            eol = buffer.find(10, pos) - 1
            if eol < 0:
                return self._need_more(buffer, pos)
            if buffer[eol] != 13:
                raise ProtocolError("expected '\\r\\n'")
            size = self._number(buffer, pos + 1, eol)
            if size > MAX_BULK:
                raise gtcp.FrameTooLongError(
                    f"Frame too long: {size} bytes announced, more than max_length ({MAX_BULK} bytes)",
                    MAX_BULK)
            pos = eol + 2
            end = pos + size
            if end + 2 > size_of:
                return None
            arg = buffer[pos:end]
            args.append(arg if type(arg) is bytes else bytes(arg))
            pos = end + 2
        return args, pos

    @staticmethod
    def _number(buffer: bytes | bytearray, begin: int, end: int) -> int:
        try:
            return int(buffer[begin:end])
        except ValueError:
            raise ProtocolError(f"invalid length {bytes(buffer[begin:end])!r}") from None

    @staticmethod
    def _need_more(buffer: bytes | bytearray, start: int) -> None:
        if len(buffer) - start > MAX_LINE:
            raise gtcp.FrameTooLongError(f"Frame too long: more than max_length ({MAX_LINE} bytes)", MAX_LINE)
        return None

    def _inline(self, buffer: bytes | bytearray, start: int) -> tuple[list[bytes], int] | None:
        eol = buffer.find(b"\n", start, start + MAX_LINE + 2)
        if eol < 0:
            return self._need_more(buffer, start)
        return bytes(buffer[start:eol]).split(), eol + 1

    def encode(self, reply: Any) -> bytes:
        """RESP2 for a reply: bytes (bulk), str (status), int, NULL, RespError or a list."""
        if type(reply) is bytes:
            return b"$%d\r\n%s\r\n" % (len(reply), reply)
        if type(reply) is str:
            return b"+%s\r\n" % reply.encode()
        if type(reply) is int:
            return b":%d\r\n" % reply
        if reply is NULL:
            return self._null
        if isinstance(reply, RespError):
            return b"-%s\r\n" % reply.message.encode()
        if isinstance(reply, list):
            return b"*%d\r\n" % len(reply) + b"".join(self.encode(item) for item in reply)
        if isinstance(reply, dict):  # RESP3 map; a flat array in RESP2
            items = b"".join(self.encode(key) + self.encode(value) for key, value in reply.items())
            if self.resp3:
                return b"%%%d\r\n%s" % (len(reply), items)
            return b"*%d\r\n%s" % (2 * len(reply), items)
        raise TypeError(f"cannot encode {type(reply).__name__!r} as RESP")


class RespConnection(gtcp.ConnectionService):
    """One client: every command is one ``on_bytes`` call."""

    def __init__(self, store: dict[bytes, bytes]) -> None:
        self.store = store

    def on_bytes(self, caller: gtcp.Caller, args: list[bytes]) -> Any:
        """Run one command; return its reply."""
        if not args:
            return None  # an empty inline line: Redis ignores it
        name = args[0].upper()
        handler = _COMMANDS.get(name)
        if handler is None:
            return RespError(f"ERR unknown command '{args[0].decode(errors='replace')}'")
        arity, run = handler
        if len(args) != arity and not (arity < 0 and len(args) >= -arity):
            return RespError(f"ERR wrong number of arguments for '{name.decode().lower()}' command")
        if name == b"HELLO":
            return self._hello(caller, args)
        return run(self.store, args)

    def _hello(self, caller: gtcp.Caller, args: list[bytes]) -> Any:
        """HELLO [2|3]: redis-py 5+ opens every connection with ``HELLO 3``."""
        version = args[1] if len(args) > 1 else b"2"
        if version not in (b"2", b"3"):
            return RespError("NOPROTO unsupported protocol version")
        # Switch the codec: this reply, and every later one, is encoded by it.
        caller.framing = RespCodec(resp3=version == b"3")
        return {b"server": b"gtcp-resp-example", b"version": b"1.0.0", b"proto": int(version),
                b"mode": b"standalone", b"role": b"master", b"modules": []}

    def on_error(self, err: gtcp.Error) -> None:
        """A protocol error or a failed write; the connection closes next."""
        logging.getLogger(__name__).info("connection ended: %s", err)


def _ping(store: dict[bytes, bytes], args: list[bytes]) -> Any:
    return "PONG" if len(args) == 1 else args[1]


def _echo(store: dict[bytes, bytes], args: list[bytes]) -> Any:
    return args[1]


def _set(store: dict[bytes, bytes], args: list[bytes]) -> Any:
    store[args[1]] = args[2]
    return "OK"


def _get(store: dict[bytes, bytes], args: list[bytes]) -> Any:
    return store.get(args[1], NULL)


def _incr(store: dict[bytes, bytes], args: list[bytes]) -> Any:
    # INCR key, or INCRBY key n (what redis-py's incr() sends).
    try:
        value = int(store.get(args[1], b"0")) + (int(args[2]) if len(args) > 2 else 1)
    except ValueError:
        return RespError("ERR value is not an integer or out of range")
    store[args[1]] = b"%d" % value
    return value


def _del(store: dict[bytes, bytes], args: list[bytes]) -> Any:
    return sum(store.pop(key, None) is not None for key in args[1:])


def _command(store: dict[bytes, bytes], args: list[bytes]) -> Any:
    return []  # redis-cli asks for the command table at start-up: there is none to give


#: name -> (arity, handler); a negative arity means "at least that many".
_COMMANDS = {
    b"PING": (-1, _ping), b"ECHO": (2, _echo), b"SET": (3, _set), b"GET": (2, _get),
    b"INCR": (2, _incr), b"INCRBY": (3, _incr), b"DEL": (-2, _del), b"COMMAND": (-1, _command),
    b"HELLO": (-1, _command),  # arity checked here; RespConnection runs it (it switches the codec)
}


class Resp(gtcp.Service):
    """The listener's service: one shared key space, one RespConnection per client."""

    def __init__(self) -> None:
        self.store: dict[bytes, bytes] = {}

    def on_connect(self, caller: gtcp.Caller) -> RespConnection:
        """Serve the new client."""
        return RespConnection(self.store)


def start(host: str = "127.0.0.1", port: int = 0) -> gtcp.Listener:
    """Start the RESP listener on *host*:*port* (0: a free port) and return it."""
    listener = gtcp.Listener(port, local_host=host, framing=RespCodec())
    listener.attach(Resp())
    listener.start()
    return listener


def main(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ready: AsyncResult | None = None,
    stop: Event | None = None,
) -> None:
    """Serve RESP on *host*:*port* until *stop* is set (forever if None)."""
    listener = start(host, port)
    if ready is not None:
        ready.set(listener.port)
    try:
        if stop is None:
            listener.serve_forever()
        else:
            stop.wait()
    finally:
        listener.immediate_stop()


def _cli() -> None:
    parser = argparse.ArgumentParser(description="A Redis-protocol subset on gtcp.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=6380, help="port (default: %(default)s; 0: any)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    stop = Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stop.set)
    ready: AsyncResult = AsyncResult()
    ready.rawlink(lambda result: print("READY", result.get(), flush=True))
    main(args.host, args.port, ready=ready, stop=stop)


if __name__ == "__main__":
    _cli()
