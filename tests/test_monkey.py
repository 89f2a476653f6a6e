"""gtcp in plain scripts, in greenlets, and after gevent.monkey.patch_all().

Monkey-patching happens only in subprocesses: it cannot be undone.
"""

from __future__ import annotations

import gevent
from conftest import LONG
from helpers import EchoService, run_script

import gtcp


def test_import_patches_nothing():
    result = run_script("""
        import gtcp, gevent.monkey, socket, threading, time
        assert not gevent.monkey.is_anything_patched()
        assert socket.socket.__module__ == "socket", socket.socket.__module__
        print("OK")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"


def test_plain_script_without_patching():
    result = run_script("""
        listener = gtcp.Listener(0, local_host="127.0.0.1")
        listener.attach(Svc())
        with listener:
            with gtcp.Client("127.0.0.1", listener.port, timeout=10) as client:
                client.write_bytes(b"plain")
                print(client.read_bytes().decode())
    """, echo=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "plain"


def test_monkey_patched_process_with_thread_clients():
    result = run_script("""
        import threading

        listener = gtcp.Listener(0, local_host="127.0.0.1")
        listener.attach(Svc())
        listener.start()
        results = []

        def worker(n):
            with gtcp.Client("127.0.0.1", listener.port, timeout=10) as client:
                for i in range(20):
                    msg = b"thread %d msg %d" % (n, i)
                    client.write_bytes(msg)
                    got = b""
                    while len(got) < len(msg):
                        got += client.read_bytes()
                    assert got == msg
            results.append(n)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads: t.start()
        for t in threads: t.join(30)
        listener.graceful_stop(timeout=5)
        print(sorted(results))
    """, echo=True, patch=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(list(range(8)))
    assert "Traceback" not in result.stderr


def test_clients_inside_greenlets(gtcp_listener):
    listener = gtcp_listener(EchoService())

    def talk(n: int) -> bytes:
        with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
            client.write_bytes(b"g%d" % n)
            return client.read_bytes()

    jobs = [gevent.spawn(talk, n) for n in range(20)]
    gevent.joinall(jobs, raise_error=True, timeout=LONG)
    assert [job.value for job in jobs] == [b"g%d" % n for n in range(20)]


def test_serve_forever_ctrl_c_stops_and_raises_keyboard_interrupt_without_hub_output():
    result = run_script("""
        import os, signal, threading, gevent, gtcp


        listener = gtcp.Listener(0, local_host="127.0.0.1")
        listener.attach(Svc())
        # The signal comes from another OS thread, as a real Ctrl-C would
        # arrive while the hub waits.
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            listener.serve_forever()
        except KeyboardInterrupt:
            print("interrupted", listener.running)
    """, echo=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "interrupted False"
    assert result.stderr == ""
