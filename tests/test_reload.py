"""listener.reload_tls() (README): new handshakes get the new certificate, open ones keep theirs."""

from __future__ import annotations

import shutil

import gevent
import gevent.event
import pytest
import trustme
from conftest import LONG
from helpers import EchoService

import gtcp


def _write(ca: trustme.CA, root, name: str) -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", common_name=name)
    cert_path, key_path = str(root / f"{name}.pem"), str(root / f"{name}.key")
    cert.private_key_pem.write_to_path(key_path)
    for i, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(cert_path, append=i > 0)
    return cert_path, key_path


def _common_name(client: gtcp.Client) -> str:
    subject = dict(item[0] for item in client.tls.peer_certificate["subject"])
    return str(subject["commonName"])


def test_reload_tls_rotation_under_load(tmp_path):
    ca = trustme.CA()
    ca_path = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_path)
    live_cert, live_key = str(tmp_path / "live.pem"), str(tmp_path / "live.key")
    for name in ("old", "new"):
        _write(ca, tmp_path, name)
    shutil.copy(tmp_path / "old.pem", live_cert)
    shutil.copy(tmp_path / "old.key", live_key)
    listener = gtcp.Listener(0, local_host="127.0.0.1",
                             secure_socket=gtcp.ListenerSecureSocket(key=gtcp.CertKey(live_cert, live_key)))
    listener.attach(EchoService())
    listener.start()
    secure = gtcp.ClientSecureSocket(cert=ca_path, session_timeout=0)  # no resumption: a full handshake
    stop = gevent.event.Event()
    seen: list[str] = []
    after: list[str] = []  # names seen by clients that connected after the reload
    reloaded = gevent.event.Event()
    failures: list[BaseException] = []

    def load() -> None:  # a client loop connecting throughout the rotation
        while not stop.is_set():
            try:
                late = reloaded.is_set()
                with gtcp.Client("127.0.0.1", listener.port, timeout=LONG, secure_socket=secure) as c:
                    c.write_bytes(b"ping")
                    assert c.read_exactly(4) == b"ping"
                    seen.append(_common_name(c))
                    if late:
                        after.append(seen[-1])
            except BaseException as exc:
                failures.append(exc)
                return

    try:
        kept = gtcp.Client("127.0.0.1", listener.port, timeout=LONG, secure_socket=secure)
        assert _common_name(kept) == "old"
        loaders = [gevent.spawn(load) for _ in range(3)]
        while len(seen) < 10:
            gevent.sleep(0.01)
        shutil.copy(tmp_path / "new.pem", live_cert)
        shutil.copy(tmp_path / "new.key", live_key)
        listener.reload_tls()  # the same record: the files are read again
        reloaded.set()
        while len(after) < 10:
            gevent.sleep(0.01)
        stop.set()
        gevent.joinall(loaders, timeout=LONG)
        assert failures == []
        assert "old" in seen
        assert set(after) == {"new"}  # every connection made after the reload
        kept.write_bytes(b"still")  # the open connection keeps its TLS session
        assert kept.read_exactly(5) == b"still" and _common_name(kept) == "old"
        kept.close()
    finally:
        stop.set()
        listener.immediate_stop()


def test_reload_tls_bad_file_keeps_the_old_context(tmp_path):
    ca = trustme.CA()
    ca_path = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_path)
    cert_path, key_path = _write(ca, tmp_path, "good")
    listener = gtcp.Listener(0, local_host="127.0.0.1",
                             secure_socket=gtcp.ListenerSecureSocket(key=gtcp.CertKey(cert_path, key_path)))
    listener.attach(EchoService())
    listener.start()
    try:
        (tmp_path / "broken.pem").write_text("not a certificate")
        with pytest.raises(gtcp.TLSError, match=r"^Failed to initialize the SSL context: "):
            listener.reload_tls({"key": {"cert_file": str(tmp_path / "broken.pem"), "key_file": key_path}})
        with gtcp.Client("127.0.0.1", listener.port, timeout=LONG,
                         secure_socket=gtcp.ClientSecureSocket(cert=ca_path)) as client:
            assert _common_name(client) == "good"
    finally:
        listener.immediate_stop()


def test_reload_tls_on_a_plain_listener_raises():
    listener = gtcp.Listener(0, local_host="127.0.0.1")
    with pytest.raises(gtcp.Error, match="needs a TLS listener"):
        listener.reload_tls()
