"""The TLS examples (``tls_echo_server``, ``tls_echo_client``, ``mtls_echo``) each run once.

Certificates come from trustme: the ``python -m trustme`` command the
examples' docstrings tell users to run (so the instructions are tested too),
or ``mtls_echo.make_certs``. Where an example lets the client choose the TLS
version, the test runs over TLS 1.2 and TLS 1.3 and checks the version that
was negotiated. Loopback and port 0 only; nothing waits on a sleep; every test
has conftest's gevent deadline and pytest-timeout as a backstop.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import trustme
from conftest import LONG
from gevent.event import AsyncResult, Event
from helpers import TLS_VERSIONS, load_example

import gtcp

#: Seconds something that must happen may take (loopback: it takes ms).


tls_echo_server = load_example("tls_echo_server")
tls_echo_client = load_example("tls_echo_client")
mtls_echo = load_example("mtls_echo")


def run_trustme(directory: Path, *args: str) -> Path:
    """Run ``python -m trustme -q -d DIRECTORY ARGS`` as the docstrings say; returns *directory*."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "trustme", "-q", "-d", str(directory), *args],
                   check=True, timeout=LONG * 3, capture_output=True)
    return directory


@pytest.fixture(scope="module")
def trustme_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``server.pem``, ``server.key`` and ``client.pem`` (the CA) from ``python -m trustme``."""
    return run_trustme(tmp_path_factory.mktemp("trustme"))


@pytest.fixture
def secure_echo_server(trustme_dir: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[int]:
    """``tls_echo_server.main`` running in a greenlet; its port. Stopped (and checked) after the test."""
    ready: AsyncResult[int] = AsyncResult()
    stop = Event()
    greenlet = gevent.spawn(
        tls_echo_server.main, "127.0.0.1", 0,
        cert_file=str(trustme_dir / "server.pem"), key_file=str(trustme_dir / "server.key"),
        ready=ready, stop=stop,
    )
    try:
        port = ready.get(timeout=LONG)
        assert port is not None
        assert f"Secure echo server listening on 127.0.0.1:{port}\n" in capsys.readouterr().out
        yield port
    finally:
        stop.set()
        greenlet.join(timeout=LONG)
    assert greenlet.dead and greenlet.successful(), greenlet.exception


@pytest.fixture
def mtls_certs(tmp_path: Path) -> Any:
    """Throwaway certificates for ``mtls_echo``, in its directory layout."""
    return mtls_echo.make_certs(tmp_path)


# -- tls_echo_server / tls_echo_client (Ballerina spec section 5.1) ------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_tls_echo_client_and_server_echo_the_sample_message(
    secure_echo_server: int, trustme_dir: Path, version: str, capsys: pytest.CaptureFixture[str]
) -> None:
    port = secure_echo_server
    received = tls_echo_client.main("127.0.0.1", port, ca_file=str(trustme_dir / "client.pem"),
                                    versions=[version])
    assert received == "Hello Ballerina Echo from client"
    out = capsys.readouterr().out.splitlines()
    connected = [line for line in out if line.startswith("Client connected to secure echo server: ")]
    assert len(connected) == 1 and connected[0].endswith(f" ({version})")
    echoed = out.index("Echo: Hello Ballerina Echo from client")
    assert out.index("Received: Hello Ballerina Echo from client") > echoed


@pytest.mark.timeout(60)
def test_tls_echo_client_sends_a_chosen_message_with_default_versions(
    secure_echo_server: int, trustme_dir: Path
) -> None:
    received = tls_echo_client.main("127.0.0.1", secure_echo_server,
                                    ca_file=str(trustme_dir / "client.pem"), message="héllo tls")
    assert received == "héllo tls"


@pytest.mark.timeout(60)
def test_tls_echo_client_refuses_a_server_it_does_not_trust(secure_echo_server: int, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with pytest.raises(gtcp.TLSError, match="unable to get local issuer certificate"):
        tls_echo_client.main("127.0.0.1", secure_echo_server, ca_file=str(other_ca))


@pytest.mark.timeout(60)
def test_tls_echo_server_reports_a_missing_certificate_file(tmp_path: Path) -> None:
    with pytest.raises(gtcp.TLSError, match=r"^Failed to initialize the SSL context: "):
        tls_echo_server.start("127.0.0.1", 0, cert_file=str(tmp_path / "missing.pem"),
                              key_file=str(tmp_path / "missing.key"))


# -- mtls_echo -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_mtls_echo_main_greets_the_client_by_its_common_name(capsys: pytest.CaptureFixture[str]) -> None:
    text = mtls_echo.main("127.0.0.1", 0)  # throwaway trustme certificates
    assert text == f"Hello, {mtls_echo.CLIENT_NAME}!\n{mtls_echo.MESSAGE}"
    out = capsys.readouterr().out
    assert f"Client {mtls_echo.CLIENT_NAME} connected from port " in out
    assert f"Received: Hello, {mtls_echo.CLIENT_NAME}!" in out


@pytest.mark.timeout(60)
def test_mtls_echo_main_uses_certificates_from_the_trustme_command(tmp_path: Path) -> None:
    run_trustme(tmp_path / "server")
    run_trustme(tmp_path / "client", "--common-name", "alice")
    text = mtls_echo.main("127.0.0.1", 0, certs_dir=tmp_path, message="hi")
    assert text == "Hello, alice!\nhi"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_mtls_echo_exchange_over_each_tls_version(mtls_certs: Any, version: str) -> None:
    listener = mtls_echo.start(mtls_certs, "127.0.0.1", 0)
    try:
        with mtls_echo.connect(mtls_certs, "127.0.0.1", listener.port, versions=[version]) as client:
            text = mtls_echo.exchange(client, "ping")
            assert client.tls is not None and client.tls.version == version
    finally:
        listener.immediate_stop()
    assert text == f"Hello, {mtls_echo.CLIENT_NAME}!\nping"


@pytest.mark.timeout(60)
def test_mtls_echo_exchange_waits_for_the_whole_echo(mtls_certs: Any) -> None:
    message = "é" * 50_000  # 100 000 bytes: several TLS records, several reads
    listener = mtls_echo.start(mtls_certs, "127.0.0.1", 0)
    try:
        with mtls_echo.connect(mtls_certs, "127.0.0.1", listener.port) as client:
            assert mtls_echo.exchange(client, message) == f"Hello, {mtls_echo.CLIENT_NAME}!\n{message}"
            client.write_bytes(b"more")  # exchange left nothing unread: the next echo is this
            assert client.read_exactly(4) == b"more"
    finally:
        listener.immediate_stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_mtls_echo_listener_refuses_a_client_without_a_certificate(
    mtls_certs: Any, version: str, capsys: pytest.CaptureFixture[str]
) -> None:
    listener = mtls_echo.start(mtls_certs, "127.0.0.1", 0)
    secure_socket = gtcp.ClientSecureSocket(
        cert=mtls_certs.server_ca,
        protocol=gtcp.ProtocolConfig(gtcp.Protocol.TLS, versions=[version]),
    )
    try:
        # TLS 1.2 refuses in the handshake (Client(...) raises); with TLS 1.3
        # the client's handshake is done before the server checks, and the
        # refusal arrives at the first read. Accepted, the read would return
        # the greeting.
        with pytest.raises((gtcp.TLSError, gtcp.PeerClosedError)):
            with gtcp.Client("127.0.0.1", listener.port, timeout=LONG, connect_timeout=LONG,
                             secure_socket=secure_socket) as client:
                client.read_bytes()
    finally:
        listener.immediate_stop()
    assert "connected from port" not in capsys.readouterr().out  # on_connect never ran


def test_mtls_echo_common_name_reads_the_subject() -> None:
    subject = ((("countryName", "NZ"),), (("organizationName", "x"), ("commonName", "bob")))
    assert mtls_echo.common_name({"subject": subject}) == "bob"
    assert mtls_echo.common_name({"subject": ((("organizationName", "x"),),)}) is None
    assert mtls_echo.common_name({}) is None
    assert mtls_echo.common_name(None) is None
