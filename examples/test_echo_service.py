"""A complete test file for a gtcp service: copy it next to your code and adapt it.

The fixtures (``gtcp_pair``, ``gtcp_listener``, ``gtcp_client``, ``gtcp_peer``,
``gtcp_tls``, ``gtcp_log``) come from gtcp's pytest plugin, which is active as
soon as gtcp is installed: nothing to import, nothing to register. Run::

    python -m pytest examples/test_echo_service.py

The service under test is defined here so that the file runs as it is; yours
would be imported (``from myapp import ShoutService``).
"""

from __future__ import annotations

import logging

import pytest

import gtcp

log = logging.getLogger("shout")


# -- the service under test ---------------------------------------------------------------------


class Shout(gtcp.ConnectionService):
    """One line in, the line upper-cased out; ``quit`` hangs up; the client's EOF gets ``bye``."""

    def on_bytes(self, caller: gtcp.Caller, line: bytes) -> bytes | None:
        if line == b"quit":
            caller.close()
            return None
        if not line:
            raise ValueError("empty line")  # a bug on purpose: gtcp logs it and closes the connection
        return line.upper()

    def on_eof(self) -> bytes:
        return b"bye"

    def on_error(self, err: gtcp.Error) -> None:
        log.warning("connection failed: %s", err)


class ShoutService(gtcp.Service):
    """Greets each connection, then serves it with a :class:`Shout`."""

    def on_connect(self, caller: gtcp.Caller) -> Shout:
        caller.write_frame(b"hello")
        return Shout()


LINES = gtcp.Lines()


# -- unit tests: one connection, no port (gtcp_pair) --------------------------------------------


def test_each_line_is_shouted_back(gtcp_pair):
    pair = gtcp_pair(ShoutService(), framing=LINES)
    assert pair.written_frames() == [b"hello"]  # what on_connect wrote
    pair.feed(b"one\ntwo\n")
    assert pair.written_frames() == [b"ONE", b"TWO"]


def test_half_a_line_gets_no_answer_until_the_rest_comes(gtcp_pair):
    pair = gtcp_pair(ShoutService(), framing=LINES)
    pair.written()  # the greeting
    pair.feed(b"thr")
    assert pair.written() == b""  # settled: it read the bytes and wrote nothing
    pair.feed(b"ee\n")
    assert pair.read_frame() == b"THREE"


def test_quit_hangs_up(gtcp_pair):
    pair = gtcp_pair(ShoutService(), framing=LINES)
    pair.feed_frame(b"quit")
    pair.wait_closed()
    assert pair.written_frames() == [b"hello"]


def test_the_clients_eof_gets_a_goodbye(gtcp_pair):
    pair = gtcp_pair(ShoutService(), framing=LINES)
    pair.feed(b"last\n")
    pair.send_eof()  # the client half-closes: on_eof answers, then the connection closes
    assert pair.written_frames() == [b"hello", b"LAST", b"bye"]
    pair.expect_eof()


def test_a_reset_is_reported_to_on_error(gtcp_pair, caplog):
    pair = gtcp_pair(ShoutService(), framing=LINES)
    pair.feed(b"half a li")
    pair.reset()
    pair.wait_closed()
    assert "connection failed: Connection reset by peer" in caplog.text


@pytest.mark.gtcp_expect_callback_errors("empty line")  # without it, the test would fail on the traceback
def test_an_empty_line_is_a_bug_that_closes_the_connection(gtcp_pair, gtcp_log):
    pair = gtcp_pair(ShoutService(), framing=LINES)
    pair.feed(b"\n")
    pair.wait_closed()
    assert "ValueError: empty line" in gtcp_log.text


def test_an_idle_client_is_dropped(gtcp_pair, caplog):
    pair = gtcp_pair(ShoutService(), framing=LINES, idle_timeout=0.05)
    pair.wait_closed()
    assert "connection failed: Read timed out" in caplog.text


# -- end to end: a listener on a free loopback port, real clients -------------------------------


def test_over_tcp(gtcp_listener, gtcp_client):
    listener = gtcp_listener(ShoutService(), framing=LINES)
    client = gtcp_client(listener, framing=LINES)
    assert client.read_frame() == b"hello"
    client.write_frame(b"hi")
    assert client.read_frame() == b"HI"


def test_over_mutual_tls(gtcp_listener, gtcp_client, gtcp_tls):
    listener = gtcp_listener(ShoutService(), framing=LINES, secure_socket=gtcp_tls.mutual_listener)
    client = gtcp_client(listener, framing=LINES, secure_socket=gtcp_tls.mutual_client)
    assert client.read_frame() == b"hello"
    client.write_frame(b"secret")
    assert client.read_frame() == b"SECRET"
    assert client.tls is not None


def test_a_client_without_a_certificate_is_refused(gtcp_listener, gtcp_client, gtcp_tls):
    listener = gtcp_listener(ShoutService(), framing=LINES, secure_socket=gtcp_tls.mutual_listener)
    with pytest.raises(gtcp.Error):
        client = gtcp_client(listener, framing=LINES, secure_socket=gtcp_tls.client)
        client.read_frame()  # TLS 1.3 may report the refusal only at the first read


# -- faults: a scripted raw peer ------------------------------------------------------------------


def test_a_line_sent_byte_by_byte_gets_one_answer(gtcp_listener, gtcp_peer):
    listener = gtcp_listener(ShoutService(), framing=LINES)
    peer = gtcp_peer(listener)
    peer.expect(b"hello\n")
    peer.send_slowly(b"slowly\n", interval=0.001)
    peer.expect(b"SLOWLY\n")
    peer.half_close()
    peer.expect(b"bye\n")
    peer.expect_eof()
