"""Mistakes a newcomer makes with services, and the messages that say how to fix them."""

from __future__ import annotations

import re

import pytest
from conftest import LONG

import gtcp
from gtcp._service import check_service, resolve


class Echo(gtcp.ConnectionService):
    """Keeps state: used as a class, its ``self`` would be the caller."""

    def __init__(self) -> None:
        self.seen = 0

    def on_bytes(self, data):
        self.seen += len(data)
        return data


class Stateless(gtcp.ConnectionService):
    """Keeps no state: used as a class, it would seem to work."""

    def on_bytes(self, data):
        return data


class EchoService(gtcp.Service):
    def on_connect(self, caller):
        return Echo()


class PlainService:
    """A service that does not subclass gtcp.Service."""

    def on_connect(self, caller):
        return Echo()


def _returning(result):
    class ClassReturner(gtcp.Service):
        def on_connect(self, caller):
            return result

    return ClassReturner()


# --- attach() given a class -------------------------------------------------------------------


@pytest.mark.parametrize("cls", [EchoService, PlainService])
def test_attach_a_class_says_pass_an_instance(cls):
    listener = gtcp.Listener(0, local_host="127.0.0.1")
    name = cls.__name__
    message = f"attach() takes a Service instance, not the class {name}: pass {name}()"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        listener.attach(cls)


def test_attach_a_class_leaves_nothing_attached():
    listener = gtcp.Listener(0, local_host="127.0.0.1")
    with pytest.raises(TypeError):
        listener.attach(EchoService)
    with pytest.raises(gtcp.Error, match=r"^No service is attached"):
        listener.start()
    listener.immediate_stop()


def test_attach_an_instance_still_works(gtcp_listener):
    listener = gtcp_listener(EchoService())
    with gtcp.Client("127.0.0.1", listener.port, timeout=LONG) as client:
        client.write_bytes(b"hi")
        assert client.read_bytes() == b"hi"


def test_check_service_of_other_classes_names_them():
    message = "attach() takes a Service instance, not the class int: pass int()"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        check_service(int)


# --- on_connect returning a class -------------------------------------------------------------


def test_resolve_refuses_a_class_naming_the_service():
    message = "on_connect of EchoService returned the class Echo, not an instance: return Echo()"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        resolve(Echo, "EchoService")


def test_resolve_refuses_a_class_without_the_service_name():
    message = "on_connect returned the class Stateless, not an instance: return Stateless()"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        resolve(Stateless)


def test_resolve_still_takes_instances():
    callbacks = resolve(Stateless())
    assert callbacks.on_bytes(b"x") == b"x"
    assert resolve(Echo(), "EchoService").on_bytes_with_caller is False


@pytest.mark.gtcp_expect_callback_errors("not an instance")
@pytest.mark.parametrize("cls", [Echo, Stateless])
def test_on_connect_returning_a_class_is_logged_and_closed(gtcp_listener, gtcp_log, cls):
    listener = gtcp_listener(_returning(cls))
    client = gtcp.Client("127.0.0.1", listener.port, timeout=LONG)
    client.write_bytes(b"hello")  # even a stateless class must not echo it
    with pytest.raises(gtcp.PeerClosedError):
        client.read_bytes()
    client.close()
    name = cls.__name__
    hint = f"returned the class {name}, not an instance: return {name}()"
    errors = [r for r in gtcp_log.records if r.levelname == "ERROR"]
    assert any(hint in r.getMessage() for r in errors), [r.getMessage() for r in gtcp_log.records]
    assert not any("AttributeError" in r.getMessage() or r.exc_info for r in gtcp_log.records)
