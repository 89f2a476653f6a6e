"""gtcp._timeouts.seconds: the one normaliser of timeouts, for arguments and record fields."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

import gtcp
from gtcp._timeouts import seconds


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (60, 60.0), (0.5, 0.5), (Decimal("0.25"), 0.25), (Fraction(1, 4), 0.25),
     (0, None), (-1, None), (math.inf, math.inf)],
)
def test_a_deadline_is_disabled_by_None_or_zero_or_less(value: object, expected: float | None) -> None:
    got = seconds(value, "timeout")
    assert got == expected
    assert got is None or type(got) is float


@pytest.mark.parametrize("value", [60, 0, -1, Decimal("2.5"), math.inf])
def test_a_record_field_is_kept_as_given(value: object) -> None:
    got = seconds(value, "handshake_timeout", as_given=True)
    assert type(got) is float and got == float(value)  # type: ignore[arg-type]


def _raises(message: str) -> Any:
    return pytest.raises(gtcp.ConfigError, match=f"^{re.escape(message)}$")


@pytest.mark.parametrize(
    "value", ["5", b"5", True, False, [1], object(), math.nan, Decimal("NaN"), Decimal("sNaN")]
)
def test_bad_values_name_the_argument(value: object) -> None:
    with _raises(f"timeout must be a number of seconds or None, got {value!r}"):
        seconds(value, "timeout")
    with _raises(f"handshake_timeout must be a number of seconds, got {value!r}"):
        seconds(value, "handshake_timeout", as_given=True)


def test_None_is_refused_as_a_record_field() -> None:
    with _raises("handshake_timeout must be a number of seconds, got None"):
        seconds(None, "handshake_timeout", as_given=True)


@pytest.mark.parametrize(("stored", "deadline"), [(60, 60.0), (0.5, 0.5), (0, None), (-1, None)])
def test_a_records_handshake_timeout_as_a_deadline(stored: float, deadline: float | None) -> None:
    for record in (gtcp.ClientSecureSocket(handshake_timeout=stored),
                   gtcp.ListenerSecureSocket(gtcp.CertKey("c", "k"), handshake_timeout=stored)):
        assert record.handshake_timeout == stored
        assert seconds(record.handshake_timeout, "handshake_timeout") == deadline


def test_arguments_use_the_same_rule() -> None:
    with _raises("idle_timeout must be a number of seconds or None, got 'soon'"):
        gtcp.Listener(0, idle_timeout="soon")
    with _raises("timeout must be a number of seconds or None, got Decimal('sNaN')"):
        gtcp.Client("127.0.0.1", 9, timeout=Decimal("sNaN"))  # checked before connecting
