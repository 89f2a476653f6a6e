"""Socket options shared by Listener and Client: TCP keepalive and TCP_USER_TIMEOUT.

Both are validated when the Listener or Client is built (``ConfigError``
naming the option, also where the platform lacks it) and turned into a
tuple of ``setsockopt`` arguments once, so a connection only replays them.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError
from ._timeouts import seconds

__all__ = ["KeepAlive", "SocketOptions", "apply", "socket_options"]

#: (level, option, value) triples for ``setsockopt``.
SocketOptions = tuple[tuple[int, int, int], ...]


def _whole_seconds(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1 or math.isinf(value):
        raise ConfigError(f"KeepAlive.{name} must be a number of seconds >= 1, got {value!r}")
    return math.ceil(value)


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """TCP keepalive probes: after ``idle`` silent seconds, every ``interval`` seconds, ``count`` times.

    A peer that answers none of the ``count`` probes is declared dead and
    the connection fails (a read raises ``PeerClosedError``). Seconds are
    whole (the kernel's unit); fractions are rounded up.
    """

    idle: float = 60
    interval: float = 10
    count: int = 6

    def __post_init__(self) -> None:
        _whole_seconds(self.idle, "idle")
        _whole_seconds(self.interval, "interval")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or not 1 <= self.count <= 127:
            raise ConfigError(f"KeepAlive.count must be an int from 1 to 127, got {self.count!r}")


def _option(name: str, option: str) -> int:
    value = getattr(socket, name, None)
    if value is None:
        raise ConfigError(f"{option} is not supported on this platform (no socket.{name})")
    return int(value)


def socket_options(keepalive: object = None, user_timeout: object = None) -> SocketOptions:
    """Validate ``keepalive`` (``None``/``False``, ``True`` or a :class:`KeepAlive`) and
    ``user_timeout`` (seconds; ``None`` or ``<= 0``: the system's default) into setsockopt triples."""
    options: list[tuple[int, int, int]] = []
    if keepalive is True or isinstance(keepalive, KeepAlive):
        options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
        if isinstance(keepalive, KeepAlive):
            tcp = socket.IPPROTO_TCP
            options += [
                (tcp, _option("TCP_KEEPIDLE", "keepalive"), _whole_seconds(keepalive.idle, "idle")),
                (tcp, _option("TCP_KEEPINTVL", "keepalive"), _whole_seconds(keepalive.interval, "interval")),
                (tcp, _option("TCP_KEEPCNT", "keepalive"), keepalive.count),
            ]
    elif keepalive is not None and keepalive is not False:
        raise ConfigError(f"keepalive must be True, False, None or a gtcp.KeepAlive, got {keepalive!r}")
    timeout = seconds(user_timeout, "user_timeout")
    if timeout is not None:
        options.append((socket.IPPROTO_TCP, _option("TCP_USER_TIMEOUT", "user_timeout"),
                        max(1, math.ceil(timeout * 1000))))
    return tuple(options)


def apply(sock: Any, options: SocketOptions) -> None:
    """Set *options* on *sock*; a connection that died meanwhile is left to fail at its first read."""
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError:
            return
