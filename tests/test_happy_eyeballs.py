"""Happy Eyeballs (RFC 8305) in Client: a name with several addresses, some dead.

The name is made to resolve to chosen addresses by replacing
``gevent.socket.getaddrinfo`` (the resolver gtcp calls) for one reserved name.
An address that "never answers" is a loopback listener with backlog 0 whose
accept queue is full: Linux then drops every SYN (``tcp_abort_on_overflow=0``,
the default), so a connect to it hangs, as one to a blackholed host does. An
address that fails fast is a bound socket that does not listen (a reset:
``ECONNREFUSED``), or the limited broadcast address, which the kernel refuses
before sending anything (``ENETUNREACH``). Nothing leaves the host.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.socket
import pytest
from conftest import LONG
from gevent.event import Event
from helpers import EchoService

import gtcp
from gtcp import _client

#: The name made to resolve to the test's addresses (.test is reserved, RFC 6761).
NAME = "happy-eyeballs.test"

#: Each test's own deadline (seconds): generous, and far below the 30 s Happy
#: Eyeballs would need if a hanging attempt held the connect up.
DEADLINE = 20.0

pytestmark = pytest.mark.skipif(sys.platform != "linux",
                                reason="the hanging address relies on Linux's SYN drop")


@pytest.fixture(autouse=True)
def _deadline() -> Iterator[None]:
    with gevent.Timeout(DEADLINE, AssertionError(f"the test took more than {DEADLINE:g} s")):
        yield


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


class Sockets:
    """Loopback sockets a test opens, closed at teardown."""

    def __init__(self) -> None:
        self.opened: list[socket.socket] = []

    def _socket(self, host: str) -> socket.socket:
        sock = socket.socket(_family(host), socket.SOCK_STREAM)
        self.opened.append(sock)
        sock.bind((host, 0))
        return sock

    def hanging(self, host: str = "127.0.0.1") -> tuple[str, int]:
        """An address whose connects hang: backlog 0, its one queue place taken and never accepted."""
        sock = self._socket(host)
        sock.listen(0)
        address = sock.getsockname()[:2]
        filler = socket.create_connection(address, timeout=LONG)  # completes: the queue had one place
        self.opened.append(filler)
        return address

    def refusing(self, host: str = "127.0.0.1") -> tuple[str, int]:
        """An address that resets a connect at once (bound, not listening)."""
        return self._socket(host).getsockname()[:2]  # type: ignore[no-any-return]

    def listening(self, host: str = "127.0.0.1") -> tuple[str, int]:
        """An address that completes connects (its accept queue takes them; nobody accepts)."""
        sock = self._socket(host)
        sock.listen(16)
        return sock.getsockname()[:2]  # type: ignore[no-any-return]

    def close(self) -> None:
        for sock in self.opened:
            sock.close()


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    if open("/proc/sys/net/ipv4/tcp_abort_on_overflow").read().strip() != "0":
        pytest.skip("tcp_abort_on_overflow is set: a full accept queue resets instead of hanging")
    made = Sockets()
    yield made
    made.close()


@pytest.fixture
def resolve(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``resolve(addr, ...)`` makes NAME resolve to those (host, port) pairs, in that order."""
    real = gevent.socket.getaddrinfo

    def make(*addresses: tuple[str, int]) -> None:
        def getaddrinfo(host: Any, port: Any, family: int = 0, kind: int = 0, proto: int = 0,
                        flags: int = 0) -> list[Any]:
            if host != NAME:
                return real(host, port, family, kind, proto, flags)  # type: ignore[no-any-return]
            return [(_family(address[0]), socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)
                    for address in addresses]

        monkeypatch.setattr(gevent.socket, "getaddrinfo", getaddrinfo)

    return make


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The addresses connection attempts were started for, in order."""
    started: list[Any] = []
    real = _client._attempt

    def attempt(target: Any, sources: Any) -> Any:
        started.append(target[3][:2])
        return real(target, sources)

    monkeypatch.setattr(_client, "_attempt", attempt)
    return started


def _remote(field: str) -> tuple[Any, int]:
    """An address of /proc/net/tcp{,6}: hex, in 32-bit words of host (little-endian) order."""
    host, port = field.split(":")
    raw = bytes.fromhex(host)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw), int(port, 16)


def _sockets_towards(addresses: list[tuple[str, int]], sockets: Sockets) -> int:
    """How many descriptors of this process are TCP sockets connected, or connecting, to *addresses*.

    Read from /proc/self/fd and /proc/net/tcp{,6}; the test's own sockets
    (the listeners and the fillers of hanging addresses) are left out. Not a
    plain count of /proc/self/fd: earlier tests' clients may still be
    closing in the background meanwhile.
    """
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            ours.add(int(link[8:-1]))
    ours -= {os.fstat(sock.fileno()).st_ino for sock in sockets.opened if sock.fileno() >= 0}
    wanted = {(ipaddress.ip_address(host), port) for host, port in addresses}
    found = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[9]) in ours and _remote(fields[2]) in wanted:
                    found += 1
    return found


@pytest.fixture
def echo_listener() -> Iterator[gtcp.Listener]:
    listener = gtcp.Listener(0, local_host="127.0.0.1")
    listener.attach(EchoService())
    listener.start()
    yield listener
    listener.immediate_stop()


# -- a dead first address -----------------------------------------------------------------------


def test_the_hanging_address_hangs_a_sequential_connect(sockets: Sockets, resolve: Any) -> None:
    """The premise: gevent's create_connection (one address after another) waits on the dead one."""
    hanging = sockets.hanging()
    resolve(hanging, sockets.listening())
    started = time.monotonic()
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.6):
            gevent.socket.create_connection((NAME, 1)).close()
    assert time.monotonic() - started >= 0.5  # where Happy Eyeballs takes one attempt delay (0.25 s)


def test_a_hanging_first_address_costs_one_attempt_delay(
        sockets: Sockets, resolve: Any, echo_listener: gtcp.Listener) -> None:
    resolve(sockets.hanging(), ("127.0.0.1", echo_listener.port))
    started = time.monotonic()
    with gtcp.Client(NAME, echo_listener.port, connect_timeout=5, timeout=LONG) as client:
        elapsed = time.monotonic() - started
        client.write_bytes(b"hello")
        assert client.read_bytes() == b"hello"
        assert client.remote_host == NAME
    # The second attempt starts after the attempt delay, not at once and not after connect_timeout.
    assert _client.CONNECTION_ATTEMPT_DELAY * 0.8 <= elapsed < 1.5, elapsed


def test_a_failed_attempt_starts_the_next_at_once(
        sockets: Sockets, resolve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # With a 60 s attempt delay, only "the previous attempt failed" can start the second in time.
    monkeypatch.setattr(_client, "CONNECTION_ATTEMPT_DELAY", 60.0)
    good = sockets.listening()
    resolve(sockets.refusing(), sockets.refusing(), good)
    with gtcp.Client(NAME, 1, connect_timeout=30) as client:
        assert client._stream.gsock.getpeername()[:2] == good


def test_the_losers_are_closed(sockets: Sockets, resolve: Any, attempts: list[Any]) -> None:
    addresses = [sockets.hanging(), sockets.hanging(), sockets.listening()]
    resolve(*addresses)
    with gtcp.Client(NAME, 1, connect_timeout=5) as client:
        assert client._stream.gsock.getpeername()[:2] == addresses[2]
        assert attempts == addresses
        # Only the winner is left: the two attempts on the hanging addresses were killed and closed.
        assert _sockets_towards(addresses, sockets) == 1


def test_connections_that_succeed_too_late_are_closed(
        sockets: Sockets, resolve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every attempt connects, then waits until all of them have: several sockets
    # come back at once, and one wins.
    monkeypatch.setattr(_client, "CONNECTION_ATTEMPT_DELAY", 0.0)
    real = _client._attempt
    connected: list[Any] = []
    gate = Event()

    def attempt(target: Any, sources: Any) -> Any:
        gsock = real(target, sources)
        connected.append(gsock)
        if len(connected) == 4:
            gate.set()
        try:
            gate.wait()
        except BaseException:  # killed: as _attempt does, leave no socket behind
            gsock.close()
            raise
        return gsock

    monkeypatch.setattr(_client, "_attempt", attempt)
    for _ in range(3):
        addresses = [sockets.listening() for _ in range(4)]  # new ones: earlier clients may still linger
        resolve(*addresses)
        connected.clear()
        gate.clear()
        with gtcp.Client(NAME, 1, connect_timeout=5) as client:
            assert len(connected) == len(addresses)
            assert client._stream.gsock.getpeername()[:2] in addresses
            assert _sockets_towards(addresses, sockets) == 1  # the winner; the other three were closed
            assert sum(not gsock.closed for gsock in connected) == 1


# -- every attempt fails ----------------------------------------------------------------------------


def test_all_attempts_hang_connect_timeout_bounds_the_whole_connect(sockets: Sockets, resolve: Any) -> None:
    addresses = [sockets.hanging() for _ in range(6)]  # 6 x 250 ms of attempt delays > connect_timeout
    resolve(*addresses)
    started = time.monotonic()
    with pytest.raises(gtcp.ConnectError) as info:
        gtcp.Client(NAME, 1, connect_timeout=0.8)
    elapsed = time.monotonic() - started
    assert str(info.value) == "Unable to connect with remote host: connection timed out after 0.8 s"
    assert 0.7 <= elapsed < 3.0, elapsed
    assert _sockets_towards(addresses, sockets) == 0  # every attempt's socket was closed


def test_all_attempts_fail_the_error_is_the_last_one(sockets: Sockets, resolve: Any) -> None:
    unreachable = ("255.255.255.255", 1)  # the kernel refuses a TCP connect to a broadcast address
    refusing = sockets.refusing()
    resolve(refusing, unreachable)
    with pytest.raises(gtcp.ConnectError) as info:
        gtcp.Client(NAME, 1, connect_timeout=5)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENETUNREACH
    assert str(info.value) == "Unable to connect with remote host: Network is unreachable"

    resolve(unreachable, refusing)
    with pytest.raises(gtcp.ConnectError) as info:
        gtcp.Client(NAME, 1, connect_timeout=5)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert str(info.value) == "Unable to connect with remote host: Connection refused"
    assert _sockets_towards([refusing, unreachable], sockets) == 0


def test_connect_timeout_bounds_name_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    never = Event()

    def getaddrinfo(*args: Any) -> list[Any]:
        never.wait()
        return []

    monkeypatch.setattr(gevent.socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(gtcp.ConnectError, match=r"timed out after 0\.3 s$"):
        gtcp.Client(NAME, 1, connect_timeout=0.3)


# -- order, families, local_host ----------------------------------------------------------------------


def _targets(*hosts: str) -> list[Any]:
    return [(_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP, (host, 1)) for host in hosts]


def test_families_are_interleaved_starting_with_the_resolvers_first() -> None:
    v6 = ["2001:db8::1", "2001:db8::2", "2001:db8::3"]
    v4 = ["192.0.2.1", "192.0.2.2"]
    ordered = _client._interleave(_targets(*v6, *v4))
    assert [target[3][0] for target in ordered] == [v6[0], v4[0], v6[1], v4[1], v6[2]]
    ordered = _client._interleave(_targets(v4[0], *v6, v4[1]))
    assert [target[3][0] for target in ordered] == [v4[0], v6[0], v4[1], v6[1], v6[2]]


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_the_second_attempt_is_of_the_other_family(
        sockets: Sockets, resolve: Any, attempts: list[Any]) -> None:
    dead6 = [sockets.hanging("::1"), sockets.hanging("::1")]
    good4 = sockets.listening()
    resolve(*dead6, good4)
    with gtcp.Client(NAME, 1, connect_timeout=5) as client:
        assert client._stream.gsock.getpeername()[:2] == good4
    assert attempts == [dead6[0], good4]


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_local_host_leaves_out_the_other_family(sockets: Sockets, resolve: Any, attempts: list[Any]) -> None:
    good6, good4 = sockets.listening("::1"), sockets.listening()
    resolve(good6, good4)
    with gtcp.Client(NAME, 1, local_host="127.0.0.1", connect_timeout=5) as client:
        assert client.local_address[0] == "127.0.0.1"
        assert client._stream.gsock.getpeername()[:2] == good4
    assert attempts == [good4]

    resolve(good6)
    with pytest.raises(gtcp.ConnectError) as info:
        gtcp.Client(NAME, 1, local_host="127.0.0.1", connect_timeout=5)
    assert str(info.value) == ("Unable to connect with remote host: local_host '127.0.0.1' has no address "
                               f"of the family of {NAME!r} (IPv6)")


# -- one address: today's path ----------------------------------------------------------------------


def test_one_address_connects_in_the_calling_greenlet(
        sockets: Sockets, resolve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_race(*args: Any) -> Any:
        raise AssertionError("one address needs no race")

    monkeypatch.setattr(_client, "_happy_eyeballs", no_race)
    good = sockets.listening()
    resolve(good)
    with gtcp.Client(NAME, 1, connect_timeout=5) as client:
        assert client._stream.gsock.getpeername()[:2] == good
    with gtcp.Client(good[0], good[1], connect_timeout=5) as client:  # an IP address: no lookup at all
        assert client._stream.gsock.getpeername()[:2] == good


def test_one_refusing_address_raises_as_before(sockets: Sockets) -> None:
    host, port = sockets.refusing()
    with pytest.raises(gtcp.ConnectError) as info:
        gtcp.Client(host, port, connect_timeout=5)
    assert str(info.value) == "Unable to connect with remote host: Connection refused"
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


@pytest.mark.parametrize("name", ["bad..name", "x" * 70 + ".example"])
def test_a_name_idna_cannot_encode_is_a_connect_error_and_prints_nothing(name, capfd):
    with pytest.raises(gtcp.ConnectError, match="is not a valid host name"):
        gtcp.Client(name, 80, connect_timeout=5)
    assert capfd.readouterr().err == ""  # not raised inside the resolver's thread, whose pool prints it
