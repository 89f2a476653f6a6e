"""The public surface: names, module metadata, exception shapes."""

from __future__ import annotations

import pickle

import pytest

import gtcp

PUBLIC = {
    "Caller", "CertKey", "Client", "ClientSecureSocket", "ClosedError", "Codec", "ConfigError",
    "ConnectError", "ConnectionService", "Delimited", "Error", "FixedSize", "FrameTooLongError",
    "KeepAlive", "KeyStore", "LengthPrefixed", "Lines", "Listener", "ListenerError", "ListenerStats",
    "ListenerSecureSocket", "MutualSsl", "PeerClosedError", "Protocol", "ProtocolConfig", "ProxyInfo",
    "ReadTimeoutError", "Service", "TLSError", "TLSInfo", "TrustStore", "VerifyClient",
    "WriteError", "WriteTimeoutError", "__version__",
}


def test_exports_are_exactly_the_public_names():
    assert set(gtcp.__all__) == PUBLIC
    for name in gtcp.__all__:
        assert hasattr(gtcp, name), name


def test_exports_show_as_gtcp_in_tracebacks():
    for name in PUBLIC - {"__version__"}:
        obj = getattr(gtcp, name)
        assert obj.__module__ == "gtcp", name


def test_exports_have_docstrings():
    for name in PUBLIC - {"__version__"}:
        assert getattr(gtcp, name).__doc__, name


def test_exports_no_camel_case_aliases():
    for name in ("onBytes", "writeBytes", "readBytes", "gracefulStop", "immediateStop"):
        for cls in (gtcp.Listener, gtcp.Client, gtcp.Caller, gtcp.ConnectionService):
            assert not hasattr(cls, name)


@pytest.mark.parametrize(
    ("cls", "bases", "message"),
    [
        (gtcp.ClosedError, (gtcp.Error,), "Socket connection already closed."),
        (gtcp.PeerClosedError, (gtcp.Error, ConnectionError), "Connection closed by the server."),
        (gtcp.ReadTimeoutError, (gtcp.Error, TimeoutError), "Read timed out"),
        (gtcp.WriteTimeoutError, (gtcp.Error, TimeoutError), "Write timed out"),
    ],
)
def test_errors_default_messages_and_bases(cls, bases, message):
    err = cls()
    assert str(err) == message
    for base in bases:
        assert isinstance(err, base)


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (gtcp.ConfigError, (gtcp.Error, ValueError)),
        (gtcp.ConnectError, (gtcp.Error, ConnectionError)),
        (gtcp.ListenerError, (gtcp.Error,)),
        (gtcp.TLSError, (gtcp.Error,)),
        (gtcp.WriteError, (gtcp.Error, ConnectionError)),
        (gtcp.FrameTooLongError, (gtcp.Error, ValueError)),
    ],
)
def test_errors_bases(cls, bases):
    for base in bases:
        assert issubclass(cls, base)


@pytest.mark.parametrize(
    "err",
    [gtcp.Error("e"), gtcp.ClosedError(), gtcp.PeerClosedError("Connection reset by peer"),
     gtcp.ReadTimeoutError(), gtcp.WriteTimeoutError(), gtcp.WriteError("Failed to write data: x"),
     gtcp.ConnectError("Unable to connect with remote host: x"), gtcp.ConfigError("bad"),
     gtcp.TLSError("t"), gtcp.ListenerError("Error initializing the server: x"),
     gtcp.FrameTooLongError("Frame too long: more than max_length (10 bytes)", 10),
     gtcp.PeerClosedError.mid_frame(b"abc")],
)
def test_errors_pickle(err):
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is type(err) and str(copy) == str(err)
    assert copy.__dict__ == err.__dict__  # partial, limit
