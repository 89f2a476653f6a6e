"""A path that holds given bytes for a moment, in memory where possible.

OpenSSL, through Python's ``ssl``, loads certificates and keys from files
only. :func:`transient_file` gives it a path to bytes gtcp made: an anonymous
in-memory file (``memfd_create``, read through ``/proc/self/fd``) or, where
that does not exist, a private temporary file (mode 0600) deleted as soon as
the ``with`` block ends. Used for the re-encoded PKCS#12 key stores of
:mod:`gtcp._keys` (whose private key is encrypted first, so it never reaches
a disk in the clear) and for the probe identity of :mod:`gtcp._tls_probe`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

__all__ = ["transient_file"]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _memfd() -> int | None:
    """An anonymous in-memory file readable by path, or None where there is none."""
    create = getattr(os, "memfd_create", None)
    if create is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return int(create("gtcp-tls", getattr(os, "MFD_CLOEXEC", 0)))
    except OSError:
        return None


@contextlib.contextmanager
def transient_file(data: bytes) -> Iterator[str]:
    """A path holding ``data`` for the duration of the ``with`` block only."""
    fd = _memfd()
    if fd is not None:
        try:
            _write_all(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="gtcp-", suffix=".pem")  # mode 0600
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

