"""gtcp in plain scripts, in greenlets, and after gevent.monkey.patch_all().

Monkey-patching happens only in subprocesses: it cannot be undone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import gevent
from conftest import LONG
from helpers import EchoService

import gtcp


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, env=env)


def test_import_patches_nothing():
    result = _run("""
        import gtcp, gevent.monkey, socket, threading, time
        assert not gevent.monkey.is_anything_patched()
        assert socket.socket.__module__ == "socket", socket.socket.__module__
        print("OK")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"


def test_plain_script_without_patching():
    result = _run("""
        import gtcp

        class Echo:
            def on_bytes(self, data): return data

        class Svc:
            def on_connect(self, caller): return Echo()

        listener = gtcp.Listener(0, local_host="127.0.0.1")
        listener.attach(Svc())
        with listener:
            with gtcp.Client("127.0.0.1", listener.port, timeout=10) as client:
                client.write_bytes(b"plain")
                print(client.read_bytes().decode())
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "plain"


def test_monkey_patched_process_with_thread_clients():
    result = _run("""
        from gevent import monkey
        monkey.patch_all()
        import threading
        import gtcp

        class Echo:
            def on_bytes(self, data): return data

        class Svc:
            def on_connect(self, caller): return Echo()

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
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(list(range(8)))
    assert "Traceback" not in result.stderr


def test_clients_inside_greenlets(serve):
    listener = serve(EchoService())

    def talk(n: int) -> bytes:
        with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
            client.write_bytes(b"g%d" % n)
            return client.read_bytes()

    jobs = [gevent.spawn(talk, n) for n in range(20)]
    gevent.joinall(jobs, raise_error=True, timeout=LONG)
    assert [job.value for job in jobs] == [b"g%d" % n for n in range(20)]


def test_serve_forever_ctrl_c_stops_and_raises_keyboard_interrupt_without_hub_output():
    result = _run("""
        import os, signal, threading, gevent, gtcp

        class Echo:
            def on_bytes(self, data): return data

        class Svc:
            def on_connect(self, caller): return Echo()

        listener = gtcp.Listener(0, local_host="127.0.0.1")
        listener.attach(Svc())
        # The signal comes from another OS thread, as a real Ctrl-C would
        # arrive while the hub waits.
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            listener.serve_forever()
        except KeyboardInterrupt:
            print("interrupted", listener.running)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "interrupted False"
    assert result.stderr == ""
