"""Helpers shared by the benchmark echo servers: arguments, TLS context, limits.

Every byte-echo server script takes ``PORT [--tls CERT KEY]``; every framed
echo server takes ``PORT --framing lines|len4``. Each prints ``READY <port>``
on stdout once it listens (``PORT`` 0 picks a free port), and exits 0 on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import os
import resource
import ssl
import sys
from pathlib import Path
from typing import NamedTuple

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The gtcp checkout measured: this one, or ``$GTCP_ROOT`` (e.g. an exported older commit).
GTCP_ROOT = Path(os.environ.get("GTCP_ROOT") or REPO_ROOT).resolve()
HOST = "127.0.0.1"


class ServerArgs(NamedTuple):
    """Parsed command line of an echo server script."""

    port: int
    cert: str | None
    key: str | None

    @property
    def tls(self) -> bool:
        """True when ``--tls CERT KEY`` was given."""
        return self.cert is not None


def parse_server_args(description: str, argv: list[str] | None = None) -> ServerArgs:
    """Parse ``PORT [--tls CERT KEY]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("port", type=int, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="PEM cert chain and key")
    args = parser.parse_args(argv)
    cert, key = args.tls if args.tls else (None, None)
    return ServerArgs(args.port, cert, key)


FRAMINGS = ("lines", "len4")


class FramedArgs(NamedTuple):
    """Parsed command line of a framed echo server script."""

    port: int
    framing: str
    loop: str


def parse_framed_args(
    description: str, loops: tuple[str, ...] = (), argv: list[str] | None = None
) -> FramedArgs:
    """Parse ``PORT --framing lines|len4 [--loop asyncio|uvloop]``.

    ``lines``: newline-terminated messages. ``len4``: a 4-byte big-endian
    length, then that many bytes.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("port", type=int, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--framing", choices=FRAMINGS, required=True)
    if loops:
        parser.add_argument("--loop", choices=loops, default=loops[0])
    args = parser.parse_args(argv)
    return FramedArgs(args.port, args.framing, getattr(args, "loop", ""))


def raise_nofile_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def configure_server_context(ctx: ssl.SSLContext, cert: str, key: str) -> ssl.SSLContext:
    """Apply the settings every benchmark TLS server shares (same as gtcp's)."""
    ctx.load_cert_chain(cert, key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    if hasattr(ssl, "OP_NO_RENEGOTIATION"):
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    return ctx


def announce(port: int) -> None:
    """Tell the harness the server is listening."""
    print("READY", port, flush=True)


def add_repo_to_path() -> None:
    """Make the ``gtcp`` package of this checkout (or of ``$GTCP_ROOT``) importable."""
    root = str(GTCP_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
