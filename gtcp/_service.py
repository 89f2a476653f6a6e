"""Service and ConnectionService: the user's callbacks, checked once.

Ballerina checks services at compile time (its compiler plugin). gtcp does
the same checks at run time, as early as it can: a ``Service`` when it is
attached, a ``ConnectionService`` when ``on_connect`` returns it. The result of
checking a connection service is a :class:`Callbacks` record, so the per-chunk
path never looks a method up or counts parameters again.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._caller import Caller
    from ._errors import Error

__all__ = ["Callbacks", "ConnectionService", "Service", "check_service", "resolve"]

#: Ballerina spellings that a Python service must not use, with their names.
_BALLERINA_NAMES = {
    "onConnect": "on_connect",
    "onBytes": "on_bytes",
    "onError": "on_error",
    "onClose": "on_close",
    "onEof": "on_eof",
}

#: Allowed positional parameter counts (after ``self``) of each callback.
_ARITY = {
    "on_connect": (1,),
    "on_bytes": (1, 2),
    "on_error": (1,),
    "on_close": (0,),
    "on_eof": (0, 1),
}


class Service:
    """Base class for the service attached to a :class:`gtcp.Listener`.

    Subclassing is optional: any object with an ``on_connect(caller)`` method
    works. ``on_connect`` runs once per accepted connection, before any byte
    is delivered, and returns the connection's :class:`ConnectionService`, or
    ``None`` to discard what the peer sends.
    """

    def on_connect(self, caller: Caller) -> ConnectionService | Error | None:
        """Called for each new connection; return its ConnectionService."""
        raise NotImplementedError(f"{type(self).__name__} must define on_connect(caller)")


class ConnectionService:
    """Base class for the per-connection service that ``on_connect`` returns.

    Define ``on_bytes(self, data)`` or ``on_bytes(self, caller, data)`` (one
    chunk, or one frame with the listener's ``framing``), and optionally
    ``on_error(self, err)``, ``on_close(self)`` and ``on_eof(self)`` or
    ``on_eof(self, caller)`` (the peer half-closed: what it returns is sent,
    then the connection closes). Subclassing is optional: any object with
    these methods works.
    """


@dataclass(frozen=True, slots=True)
class Callbacks:
    """A connection service's bound callbacks, resolved once per connection.

    ``on_bytes_with_caller`` (``on_eof_with_caller``) says whether
    ``on_bytes`` (``on_eof``) takes the caller.
    """

    on_bytes: Callable[..., object]
    on_bytes_with_caller: bool
    on_error: Callable[[Error], object] | None
    on_close: Callable[[], object] | None
    on_eof: Callable[..., object] | None = None
    on_eof_with_caller: bool = False


def _positional_count(method: Callable[..., object]) -> tuple[int, int] | None:
    """(required, maximum) positional parameters of a bound method.

    ``None`` when the signature cannot be read (builtins): then any count is
    accepted. A ``*args`` makes the maximum unbounded (a large number).
    """
    try:
        sig = inspect.signature(method)
    except (TypeError, ValueError):
        return None
    required = maximum = 0
    for param in sig.parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            maximum += 1
            if param.default is param.empty:
                required += 1
        elif param.kind is param.VAR_POSITIONAL:
            maximum = 1 << 16
    return required, maximum


def _check_arity(obj: object, name: str, method: Callable[..., object]) -> int:
    """Return the parameter count to call *method* with, or raise TypeError."""
    allowed = _ARITY[name]
    counts = _positional_count(method)
    if counts is None:
        return allowed[-1]
    required, maximum = counts
    # Prefer the largest allowed count (on_bytes(caller, data)) that fits.
    for count in reversed(allowed):
        if required <= count <= maximum:
            return count
    wanted = " or ".join(str(n) for n in allowed)
    raise TypeError(
        f"{type(obj).__name__}.{name} must take {wanted} parameter(s) after self, "
        f"not {required if required == maximum else f'{required} to {maximum}'}"
    )


def _check_spelling(obj: object) -> None:
    for ballerina, python in _BALLERINA_NAMES.items():
        if callable(getattr(obj, ballerina, None)):
            raise TypeError(
                f"{type(obj).__name__} defines {ballerina!r}: gtcp callbacks are "
                f"snake_case; rename it to {python!r}"
            )


def check_service(service: object) -> None:
    """Raise ``TypeError`` if *service* cannot serve a listener.

    It must be an instance, not a class, with a callable ``on_connect(caller)``
    and no Ballerina-spelled callbacks.
    """
    if isinstance(service, type):
        name = service.__name__
        raise TypeError(f"attach() takes a Service instance, not the class {name}: pass {name}()")
    _check_spelling(service)
    on_connect = getattr(service, "on_connect", None)
    if not callable(on_connect):
        raise TypeError(
            f"{type(service).__name__} is not a gtcp service: it has no on_connect(caller) method"
        )
    _check_arity(service, "on_connect", on_connect)


#: Per class, once it passed the checks: whether on_bytes and on_eof take the caller.
_CHECKED: dict[type, tuple[bool, bool]] = {}


def resolve(service: Any, source: str | None = None) -> Callbacks:
    """Check a ConnectionService as a whole and bind its callbacks.

    Raises ``TypeError`` with a message naming the problem; the dispatcher
    logs it and closes the connection. *source* names the ``Service`` whose
    ``on_connect`` returned *service*, for that message. A class is checked
    once; an instance that carries callbacks of its own (in its ``__dict__``)
    every time. A class itself is refused: its ``on_bytes(self, data)`` would
    be called with the caller as ``self``, which works until it keeps state.
    """
    if isinstance(service, type):
        name = service.__name__
        where = "on_connect" if source is None else f"on_connect of {source}"
        raise TypeError(f"{where} returned the class {name}, not an instance: return {name}()")
    cls = type(service)
    checked = _CHECKED.get(cls)
    if checked is not None and not _overrides(service):
        return Callbacks(service.on_bytes, checked[0],
                         getattr(service, "on_error", None), getattr(service, "on_close", None),
                         getattr(service, "on_eof", None), checked[1])
    callbacks = _resolve(service)
    if not _overrides(service):
        if len(_CHECKED) > 4096:  # classes made on the fly: do not grow forever
            _CHECKED.clear()
        _CHECKED[cls] = (callbacks.on_bytes_with_caller, callbacks.on_eof_with_caller)
    return callbacks


def _overrides(service: Any) -> bool:
    attrs: dict[str, Any] | None = getattr(service, "__dict__", None)
    return attrs is not None and any(name in attrs for name in _CALLBACK_NAMES)


_CALLBACK_NAMES = ("on_bytes", "on_error", "on_close", "on_eof", *_BALLERINA_NAMES)


def _resolve(service: Any) -> Callbacks:
    _check_spelling(service)
    on_bytes = getattr(service, "on_bytes", None)
    if not callable(on_bytes):
        raise TypeError(
            f"{type(service).__name__} is not a gtcp connection service: "
            "it has no on_bytes(data) or on_bytes(caller, data) method"
        )
    with_caller = _check_arity(service, "on_bytes", on_bytes) == 2
    optional: dict[str, Callable[..., object] | None] = {}
    eof_with_caller = False
    for name in ("on_error", "on_close", "on_eof"):
        method = getattr(service, name, None)
        if method is not None and not callable(method):
            raise TypeError(f"{type(service).__name__}.{name} is not callable")
        if method is not None:
            count = _check_arity(service, name, method)
            eof_with_caller = eof_with_caller or (name == "on_eof" and count == 1)
        optional[name] = method
    return Callbacks(on_bytes, with_caller, optional["on_error"], optional["on_close"],
                     optional["on_eof"], eof_with_caller)
