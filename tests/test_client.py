"""Client behaviour: Ballerina's client tests, translated, and the README's Client section."""

from __future__ import annotations

import decimal
import socket

import gevent
import pytest
from conftest import LONG, SHORT
from helpers import EchoService, run_script, wait_until

import gtcp


def _until_reading(client):
    """Yield until a greenlet is blocked reading on *client* (with a deadline)."""
    wait_until(lambda: client._stream.reading, "a greenlet blocked reading")


def _closing_service():
    class CloseAtConnect(gtcp.Service):
        def on_connect(self, caller):
            caller.close()
            return None

    return CloseAtConnect()


def test_Client_echo(gtcp_listener):
    listener = gtcp_listener(EchoService())
    client = gtcp.Client("localhost", listener.port, timeout=LONG)
    client.write_bytes(b"Hello Ballerina Echo from client")
    assert client.read_bytes() == b"Hello Ballerina Echo from client"
    client.close()


def test_Client_invalid_local_host_fails_at_construction(gtcp_listener):
    listener = gtcp_listener(EchoService())
    with pytest.raises(gtcp.ConnectError) as info:
        gtcp.Client("127.0.0.1", listener.port, local_host="invalid")
    assert str(info.value).startswith("Unable to connect with remote host: ")
    assert "invalid" in str(info.value)
    assert isinstance(info.value, ConnectionError)


def test_Client_local_host_binds_local_side(gtcp_listener):
    listener = gtcp_listener(EchoService())
    with gtcp.Client("127.0.0.1", listener.port, local_host="127.0.0.1", timeout=LONG) as client:
        assert client.local_address[0] == "127.0.0.1"


def test_Client_read_timeout_then_still_usable(gtcp_listener):
    class Late(gtcp.ConnectionService):
        def on_bytes(self, data):
            return data if data == b"now" else None

    class Svc(gtcp.Service):
        def on_connect(self, caller):
            return Late()

    listener = gtcp_listener(Svc())
    client = gtcp.Client("127.0.0.1", listener.port, timeout=0.1)
    client.write_bytes(b"later")
    with pytest.raises(gtcp.ReadTimeoutError) as info:
        client.read_bytes()
    assert str(info.value) == "Read timed out"
    assert isinstance(info.value, TimeoutError)
    client.write_bytes(b"now")
    assert client.read_bytes() == b"now"
    client.close()


def test_Client_server_closing_in_on_connect_gives_read_error_and_close_succeeds(gtcp_listener):
    listener = gtcp_listener(_closing_service())
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    for _ in range(3):  # this read and every later read
        with pytest.raises(gtcp.PeerClosedError) as info:
            client.read_bytes()
        assert str(info.value) == "Connection closed by the server."
    client.close()
    client.close()


def test_Client_refused_raises_connect_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # bound then closed: nothing listens there
    with pytest.raises(gtcp.ConnectError) as info:
        gtcp.Client("127.0.0.1", port)
    assert str(info.value) == "Unable to connect with remote host: Connection refused"
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


@pytest.mark.parametrize(("host", "cause"), [
    pytest.param("no-such-host.invalid", "socket.gaierror: ", id="unresolvable"),  # RFC 2606: never resolves
    pytest.param("127.0.0.1", "ConnectionRefusedError: ", id="refused"),
])
def test_Client_uncaught_connect_error_prints_a_short_chained_traceback(host, cause):
    # Through gevent's resolver (or socket) it used to print 22 to 37 lines; now: the OS error, then
    # the user's frame and the ConnectError (raised from Client's own frame).
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: a refused port while the test runs
        port = unused.getsockname()[1]
        result = run_script(f"""
            import gtcp
            gtcp.Client({host!r}, {port}, connect_timeout={LONG})
            """)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) <= 12, result.stderr
    assert lines[0].startswith(cause), result.stderr  # the cause, without gevent's frames
    assert "The above exception was the direct cause of the following exception:" in lines
    assert lines[-1].startswith("gtcp.ConnectError: Unable to connect with remote host: "), result.stderr
    assert 'File "<string>"' in result.stderr  # the user's frame
    assert "gevent" not in result.stderr and "During handling" not in result.stderr


def test_Client_connect_error_keeps_its_cause_and_suppresses_the_context():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        with pytest.raises(gtcp.ConnectError) as info:
            gtcp.Client("127.0.0.1", unused.getsockname()[1])
    error = info.value
    assert isinstance(error.__cause__, ConnectionRefusedError)
    assert error.__cause__.__traceback__ is None
    assert error.__suppress_context__
    frames = [entry.name for entry in info.traceback]
    assert frames[-1] == "__init__"  # Client(...)'s own frame is the last: nothing of _connect or gevent


def test_Client_connect_timeout():
    # A listener with a full accept queue drops further SYNs: connect hangs.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        with pytest.raises(gtcp.ConnectError, match="timed out") as info:
            for _ in range(16):
                filler = gtcp.Client("127.0.0.1", port, connect_timeout=SHORT)
                fillers.append(filler)
        assert str(info.value).startswith("Unable to connect with remote host: ")
    finally:
        for filler in fillers:
            filler.close()
        server.close()


def test_Client_bad_arguments_raise_config_error():
    with pytest.raises(gtcp.ConfigError, match="remote_port"):
        gtcp.Client("127.0.0.1", 0)
    with pytest.raises(gtcp.ConfigError, match="remote_host"):
        gtcp.Client("", 80)
    with pytest.raises(gtcp.ConfigError, match="timeout"):
        gtcp.Client("127.0.0.1", 80, timeout="5")


def test_Client_timeouts_accept_decimal_and_nonpositive_disables(gtcp_listener):
    listener = gtcp_listener(EchoService())
    with gtcp.Client("127.0.0.1", listener.port, timeout=decimal.Decimal("0.1")) as client:
        with pytest.raises(gtcp.ReadTimeoutError):
            client.read_bytes()
    with gtcp.Client("127.0.0.1", listener.port, timeout=0, write_timeout=-1) as client, \
            gtcp.Client("127.0.0.1", listener.port, timeout=SHORT) as control:
        reader = gevent.spawn(client.read_bytes)
        _until_reading(client)
        # The synchronisation point: a read that started after this one, with a SHORT timeout, timed out.
        with pytest.raises(gtcp.ReadTimeoutError):
            control.read_bytes()
        assert not reader.ready()  # no timeout: still waiting
        client.write_bytes(b"late")
        assert reader.get(timeout=LONG) == b"late"


def test_Client_use_after_close_raises_closed_error(gtcp_listener):
    listener = gtcp_listener(EchoService())
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    client.close()
    for operation in (client.read_bytes, lambda: client.write_bytes(b"x")):
        with pytest.raises(gtcp.ClosedError) as info:
            operation()
        assert str(info.value) == "Socket connection already closed."
    assert client.closed


def test_Client_close_wakes_a_blocked_reader(gtcp_listener):
    listener = gtcp_listener(EchoService())
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    reader = gevent.spawn(client.read_bytes)
    _until_reading(client)
    client.close()
    with pytest.raises(gtcp.ClosedError):
        reader.get(timeout=LONG)


def test_Client_read_and_write_in_two_greenlets_both_complete(gtcp_listener):
    listener = gtcp_listener(EchoService())
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    payload = b"q" * (4 * 1024 * 1024)
    reader = gevent.spawn(client.read_exactly, len(payload))
    writer = gevent.spawn(client.write_bytes, payload)
    assert writer.get(timeout=LONG) is None
    assert reader.get(timeout=LONG) == payload
    client.close()


def test_Client_concurrent_writes_never_interleave(gtcp_listener):
    listener = gtcp_listener(EchoService())
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    size = 1024 * 1024
    blocks = [bytes([65 + i]) * size for i in range(4)]
    reader = gevent.spawn(client.read_exactly, 4 * size)
    writers = [gevent.spawn(client.write_bytes, block) for block in blocks]
    gevent.joinall(writers, raise_error=True, timeout=LONG)
    data = reader.get(timeout=LONG)
    runs = [data[i : i + size] for i in range(0, len(data), size)]
    assert sorted(runs) == sorted(blocks)  # each write arrived whole
    client.close()


def test_Client_concurrent_reads_are_served_one_at_a_time(gtcp_listener):
    listener = gtcp_listener(EchoService())
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    readers = [gevent.spawn(client.read_bytes) for _ in range(2)]
    _until_reading(client)
    client.write_bytes(b"one")
    first = gevent.wait(readers, count=1, timeout=LONG)
    assert len(first) == 1 and first[0].get() == b"one"
    client.write_bytes(b"two")
    assert {r.get(timeout=LONG) for r in readers} == {b"one", b"two"}
    client.close()


def test_Client_write_timeout_against_server_that_never_reads():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = gtcp.Client("127.0.0.1", server.getsockname()[1], write_timeout=0.3)
    conn, _ = server.accept()  # accepted, never read
    try:
        with pytest.raises(gtcp.WriteTimeoutError) as info:
            client.write_bytes(b"w" * (64 * 1024 * 1024))
        assert str(info.value) == "Write timed out"
        with pytest.raises(gtcp.ClosedError):  # the stream was closed
            client.write_bytes(b"more")
    finally:
        client.close()
        conn.close()
        server.close()


def test_Client_write_after_peer_reset_raises_write_error():
    import struct

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = gtcp.Client("127.0.0.1", server.getsockname()[1], timeout=LONG)
    conn, _ = server.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # SO_LINGER 0: a reset, not a FIN
    server.close()
    with pytest.raises(gtcp.PeerClosedError) as info:
        client.read_bytes()
    assert str(info.value) == "Connection reset by peer"
    with pytest.raises(gtcp.PeerClosedError):  # sticky, same message
        client.read_bytes()
    # The kernel took the RST: the very first write fails with the OS's reason (EPIPE), and closes.
    with pytest.raises(gtcp.WriteError) as winfo:
        client.write_bytes(b"x" * 65536)
    assert type(winfo.value) is gtcp.WriteError
    assert str(winfo.value).startswith("Failed to write data: ")
    assert isinstance(winfo.value.__cause__, OSError)
    assert client.closed
    with pytest.raises(gtcp.ClosedError):  # then, as after any failed write
        client.write_bytes(b"x")
    client.close()


def test_Client_write_rejects_non_bytes(gtcp_listener):
    listener = gtcp_listener(EchoService())
    with gtcp.Client("127.0.0.1", listener.port) as client:
        with pytest.raises(TypeError, match=r"bytes-like.*'str'"):
            client.write_bytes("text")  # type: ignore[arg-type]
        client.write_bytes(bytearray(b"ba"))
        client.write_bytes(memoryview(b"mv"))
        assert client.read_exactly(4) == b"bamv"


def test_Client_tls_is_none_on_plain_tcp(gtcp_listener):
    listener = gtcp_listener(EchoService())
    with gtcp.Client("127.0.0.1", listener.port) as client:
        assert client.tls is None
        assert "gtcp.Client" in repr(client)


def test_Client_every_read_gets_its_own_deadline_after_a_timeout(gtcp_listener):
    class Delayed(gtcp.ConnectionService):
        def on_bytes(self, caller, data):
            def later():
                gevent.sleep(0.3)
                caller.write_bytes(data)

            gevent.spawn(later)

    class Svc(gtcp.Service):
        def on_connect(self, caller):
            return Delayed()

    listener = gtcp_listener(Svc())
    with gtcp.Client("127.0.0.1", listener.port, timeout=1.0) as client:
        client.write_bytes(b"a")
        assert client.read_bytes() == b"a"  # 0.3 s: within its 1 s deadline
        for _ in range(3):  # timeouts do not shorten later deadlines
            with pytest.raises(gtcp.ReadTimeoutError):
                client.read_bytes()
            client.write_bytes(b"b")
            assert client.read_bytes() == b"b"


def test_Client_write_interrupted_by_callers_timeout_closes_client():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = gtcp.Client("127.0.0.1", server.getsockname()[1], write_timeout=LONG)
    conn, _ = server.accept()  # never reads
    try:
        with pytest.raises(gevent.Timeout):  # the caller's own Timeout propagates
            with gevent.Timeout(SHORT):
                client.write_bytes(b"w" * (64 * 1024 * 1024))
        assert client.closed  # part of it went out: the stream cannot go on
        with pytest.raises(gtcp.ClosedError):
            client.write_bytes(b"more")
    finally:
        client.close()
        conn.close()
        server.close()


def test_Client_close_in_an_unpatched_thread_releases_the_socket():
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    result = {}

    def work():
        client = gtcp.Client("127.0.0.1", server.getsockname()[1], timeout=LONG)
        client.write_bytes(b"x")
        client.close()  # the thread's hub never runs again after this
        result["fileno"] = client._stream.gsock.fileno()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(LONG)
    server.close()
    assert result == {"fileno": -1}
