"""The one normaliser of timeouts, for every argument and record field given in seconds.

A timeout may be an ``int``, a ``float``, a ``decimal.Decimal`` or anything
else with ``__float__``, except ``bool``, ``str`` and ``bytes``; never NaN.
Bad values raise ``ConfigError`` naming the argument or field.

Two uses, one rule:

* a deadline (``Client(timeout=...)``, ``Listener(idle_timeout=...)``,
  ``graceful_stop(timeout)``, a record's ``handshake_timeout`` when a
  handshake starts): ``None`` or a value ``<= 0`` disables it (Ballerina's
  rule) and comes back as ``None``; anything else as a ``float``;
* a record field (``as_given=True``): the ``float``, kept as given (``<= 0``
  included, so that equal records compare equal and the rule above applies
  where the value is used); ``None`` is refused.
"""

from __future__ import annotations

from typing import Literal, overload

from ._errors import ConfigError

__all__ = ["seconds"]


@overload
def seconds(value: object, name: str, *, as_given: Literal[False] = False) -> float | None: ...


@overload
def seconds(value: object, name: str, *, as_given: Literal[True]) -> float: ...


def seconds(value: object, name: str, *, as_given: bool = False) -> float | None:
    """Normalise the timeout *value* given as *name* (see the module's docstring).

    The message for a bad deadline is ``"<name> must be a number of seconds
    or None, got <value>"``; for a bad record field it leaves out ``or None``.
    """
    if value is None and not as_given:
        return None
    try:
        if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
            raise ValueError
        result = float(value)
        if result != result:  # NaN
            raise ValueError
    except ValueError:  # also Decimal("sNaN"), which float() refuses
        allowed = "a number of seconds" if as_given else "a number of seconds or None"
        raise ConfigError(f"{name} must be {allowed}, got {value!r}") from None
    if as_given:
        return result
    return result if result > 0 else None
