"""Long stress runs: not selected by default.

Run them with ``python -m pytest -m stress`` (a few minutes). They raise the
descriptor limit as far as the hard limit allows and skip when it is too low.
"""

from __future__ import annotations

import os
import resource

import gevent
import pytest
from conftest import LONG
from helpers import EchoService

import gtcp

pytestmark = [pytest.mark.stress, pytest.mark.timeout(600)]


def _raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_stress_many_concurrent_clients(gtcp_listener):
    clients_wanted = 2000
    if _raise_nofile(2 * clients_wanted + 200) < 2 * clients_wanted + 100:
        pytest.skip("descriptor limit too low")
    listener = gtcp_listener(EchoService(), backlog=4096)

    def talk(n: int) -> bytes:
        with gtcp.Client("127.0.0.1", listener.port, timeout=LONG * 6) as client:
            payload = b"%06d" % n * 100
            for _ in range(5):
                client.write_bytes(payload)
                assert client.read_exactly(len(payload)) == payload
            return payload[:6]

    jobs = [gevent.spawn(talk, n) for n in range(clients_wanted)]
    gevent.joinall(jobs, raise_error=True)
    assert sorted(job.value for job in jobs) == [b"%06d" % n for n in range(clients_wanted)]


def test_stress_connect_close_cycles_do_not_leak(gtcp_listener):
    listener = gtcp_listener(EchoService())
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(20000):
        client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
        client.write_bytes(b"x")
        assert client.read_bytes() == b"x"
        client.close()
    with gevent.Timeout(LONG):
        while len(os.listdir("/proc/self/fd")) > fds_before:
            gevent.sleep(0.05)


def test_stress_large_transfers_in_both_directions(gtcp_listener):
    listener = gtcp_listener(EchoService())
    payload = os.urandom(64 * 1024 * 1024)

    def one() -> None:
        with gtcp.Client("127.0.0.1", listener.port, timeout=LONG * 6) as client:
            writer = gevent.spawn(client.write_bytes, payload)
            assert client.read_exactly(len(payload)) == payload
            writer.get()

    gevent.joinall([gevent.spawn(one) for _ in range(4)], raise_error=True)
