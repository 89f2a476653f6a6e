"""examples/resp_server.py against the client Python users use: redis-py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import LONG
from helpers import EXAMPLES, child_env

redis = pytest.importorskip("redis")


@pytest.fixture(scope="module")
def resp_port() -> Iterator[int]:
    server = subprocess.Popen([sys.executable, str(EXAMPLES / "resp_server.py"), "--port", "0"],
                              stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert server.stdout is not None
        word, port = server.stdout.readline().split()
        assert word == "READY"
        yield int(port)
    finally:
        server.terminate()
        assert server.wait(LONG) == 0  # SIGTERM is a clean stop


@pytest.fixture(params=[3, 2], ids=["resp3", "resp2"])
def r(resp_port: int, request: pytest.FixtureRequest) -> Iterator[object]:
    # redis-py's default is HELLO 3; protocol=2 is what older clients speak.
    client = redis.Redis(host="127.0.0.1", port=resp_port, socket_timeout=LONG, protocol=request.param)
    yield client
    client.close()


def test_resp_commands(r):
    assert r.ping() is True
    assert r.echo(b"hello") == b"hello"
    assert r.set("greeting", "hi") is True
    assert r.get("greeting") == b"hi"
    assert r.get("missing") is None
    assert r.incr("counter") == 1
    assert r.incr("counter") == 2
    assert r.delete("counter", "greeting", "missing") == 2
    assert r.get("counter") is None


def test_resp_errors_are_replies_and_the_connection_goes_on(r):
    r.set("text", "abc")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.incr("text")
    with pytest.raises(redis.ResponseError, match="unknown command"):
        r.execute_command("FLY")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        r.execute_command("GET", "a", "b")
    assert r.ping() is True


def test_resp_pipeline_of_1000_commands(r):
    pipe = r.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"key:{i}", f"value:{i}")
    for i in range(500):
        pipe.get(f"key:{i}")
    results = pipe.execute()
    assert results[:500] == [True] * 500
    assert results[500:] == [f"value:{i}".encode() for i in range(500)]


def test_resp_one_mebibyte_value(r):
    value = os.urandom(1 << 20)
    assert r.set("big", value) is True
    assert r.get("big") == value


def test_resp_inline_commands_pipelined_in_one_segment(resp_port):
    with socket.create_connection(("127.0.0.1", resp_port), timeout=LONG) as sock:
        sock.sendall(b"PING\r\nSET inline yes\r\nGET inline\r\n\r\nECHO x\n")
        expected = b"+PONG\r\n+OK\r\n$3\r\nyes\r\n$1\r\nx\r\n"
        got = b""
        while len(got) < len(expected):
            chunk = sock.recv(65536)
            assert chunk
            got += chunk
        assert got == expected


def test_resp_garbage_closes_the_connection(resp_port, r):
    with socket.create_connection(("127.0.0.1", resp_port), timeout=LONG) as sock:
        sock.sendall(b"*1\r\n+PING\r\n")  # a simple string where a bulk string must be
        assert sock.recv(65536) == b""
    assert r.ping() is True  # others unaffected


def test_resp_bare_newlines_in_a_multibulk_close_the_connection(resp_port, r):
    with socket.create_connection(("127.0.0.1", resp_port), timeout=LONG) as sock:
        sock.sendall(b"*1\n$4\nPING\n")  # RESP needs \r\n
        assert sock.recv(65536) == b""
    assert r.ping() is True
