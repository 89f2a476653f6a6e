"""The gtcp command line: ``python -m gtcp {demo,echo,send,serve}``.

* ``demo``: the Ballerina spec's section 6 samples, end to end, in one
  process: the echo listener on a free loopback port, the echo client that
  sends ``Hello Ballerina Echo from client`` and prints the reply, then a stop.
* ``echo``: serve the section 6 echo listener until Ctrl-C or SIGTERM, then
  stop gracefully within ``--graceful-timeout`` (:class:`gtcp._drain.Drain`).
* ``send``: connect, send one text, print the one reply.
* ``serve``: serve ``MODULE:NAME`` with worker processes (``gtcp._serve``).

A failure gtcp reports (``gtcp.Error``: connection refused, a bad port...) is
one line on stderr, ``gtcp: error: <message>``, and exit status 1; no
traceback. Command-line mistakes are argparse's (exit status 2).

``echo`` serves TLS with ``--cert``/``--key`` (and mutual TLS with ``--ca``);
``send`` connects with TLS given ``--tls``, ``--ca`` or a client ``--cert``/``--key``.
The options are declared in :func:`_add_listener_options` and
:func:`_add_client_options` and turned into ``secure_socket`` records by
:func:`_listener_kwargs` and :func:`_client_kwargs`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from ._caller import Caller
from ._client import Client
from ._config import CertKey, ClientSecureSocket
from ._drain import Drain
from ._errors import ConfigError, Error
from ._listener import Listener
from ._serve import GRACEFUL_TIMEOUT, add_command, listener_secure_socket, non_negative_seconds
from ._service import ConnectionService, Service

__all__ = ["main"]

log = logging.getLogger("gtcp")

#: The message of the Ballerina client sample (spec section 6).
DEMO_MESSAGE = "Hello Ballerina Echo from client"

#: Seconds any single step of the demo may take (connect, read, stop); the
#: demo is loopback only, so reaching it means something is broken.
DEMO_STEP_SECONDS = 30.0

#: Default read/connect deadline of ``send``, in seconds.
SEND_TIMEOUT = 30.0

#: Signals that stop the echo server gracefully (Ctrl-C, and a service manager's stop).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: Exit status when a gtcp.Error ends a command.
EXIT_ERROR = 1

#: Exit status after Ctrl-C in a command that is not a server (128 + SIGINT).
EXIT_INTERRUPTED = 130


def _say(text: str) -> None:
    """Print one line of the samples' output, at once (``io:println``)."""
    print(text, flush=True)


# -- the section 6 echo service ------------------------------------------------


class EchoService(ConnectionService):
    """Ballerina's section 6 ``EchoService``: print each chunk, echo it back."""

    def on_bytes(self, caller: Caller, data: bytes) -> Error | None:
        """Print the chunk as text and write it back to the caller.

        A failed write is returned, as Ballerina's ``return caller->writeBytes(data)``:
        gtcp logs it (no traceback: a peer that left is not a bug).
        """
        _say(f"Echo: {data.decode('utf-8', errors='replace')}")
        try:
            caller.write_bytes(data)
        except Error as err:
            return err
        return None

    def on_error(self, err: Error) -> None:
        """Log the error (Ballerina: ``log:printError``)."""
        log.error("An error occurred: %s", err)

    def on_close(self) -> None:
        """The connection ended."""
        _say("Client left")


class Echo(Service):
    """Ballerina's section 6 listener service: greet each connection."""

    def on_connect(self, caller: Caller) -> EchoService:
        """Print the client's port; serve the connection with :class:`EchoService`."""
        _say(f"Client connected to echo server: {caller.remote_port}")
        return EchoService()


# -- building listeners and clients: plain or TLS ------------------------------


def _add_listener_options(parser: argparse.ArgumentParser) -> None:
    """Options of a subcommand that runs a listener."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s; 0.0.0.0 or :: for all interfaces)")
    tls = parser.add_argument_group("TLS", "serve TLS when --cert and --key are given")
    tls.add_argument("--cert", metavar="FILE", help="the server's PEM certificate chain")
    tls.add_argument("--key", metavar="FILE", help="the server's PEM private key")
    tls.add_argument("--ca", metavar="FILE",
                     help="PEM CA certificates: require a client certificate signed by one (mutual TLS)")


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    """Options of a subcommand that runs a client."""
    parser.add_argument("--timeout", type=float, default=SEND_TIMEOUT, metavar="S",
                        help="seconds to wait to connect and for the reply (default: %(default)g; "
                             "0 waits forever)")
    tls = parser.add_argument_group("TLS", "connect with TLS when --tls or any option below is given")
    tls.add_argument("--tls", action="store_true", help="use TLS, trusting the system's CA certificates")
    tls.add_argument("--ca", metavar="FILE", help="PEM certificates to trust instead of the system's")
    tls.add_argument("--cert", metavar="FILE", help="a client PEM certificate chain (mutual TLS)")
    tls.add_argument("--key", metavar="FILE", help="the client certificate's PEM private key")
    tls.add_argument("--server-name", metavar="NAME",
                     help="name to send in SNI and to check the certificate against (default: HOST)")
    tls.add_argument("--no-verify-hostname", dest="verify_hostname", action="store_false",
                     help="do not check the certificate's name (Ballerina's behaviour)")


def _cert_key(args: argparse.Namespace) -> CertKey | None:
    """The ``CertKey`` of --cert/--key, or None; both or neither must be given."""
    if (args.cert is None) != (args.key is None):
        raise ConfigError("--cert and --key must be given together")
    return None if args.cert is None else CertKey(args.cert, args.key)


def _listener_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``Listener`` from the parsed options."""
    kwargs: dict[str, Any] = {"local_host": args.host}
    secure_socket = listener_secure_socket(args.cert, args.key, args.ca)
    if secure_socket is not None:
        kwargs["secure_socket"] = secure_socket
    return kwargs


def _client_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``Client`` from the parsed options."""
    kwargs: dict[str, Any] = {"timeout": args.timeout, "connect_timeout": args.timeout}
    key = _cert_key(args)
    tls_asked = (args.tls, args.ca is not None, key is not None, args.server_name is not None,
                 not args.verify_hostname)
    if any(tls_asked):
        kwargs["secure_socket"] = ClientSecureSocket(
            cert=args.ca, key=key, server_name=args.server_name,
            verify_hostname=args.verify_hostname,
        )
    return kwargs


# -- the subcommands -------------------------------------------------------------


def _start_echo(port: int, *, local_host: str, **kwargs: Any) -> Listener:
    """The section 6 echo listener, started; prints where it listens."""
    listener = Listener(port, local_host=local_host, **kwargs)
    listener.attach(Echo())
    listener.start()
    tls = " (TLS)" if kwargs.get("secure_socket") is not None else ""
    _say(f"Echo server listening on {local_host}:{listener.port}{tls}")
    return listener


def _demo(args: argparse.Namespace) -> int:
    """Run the section 6 listener and client samples against each other."""
    listener = _start_echo(0, local_host="127.0.0.1")
    try:
        with Client("127.0.0.1", listener.port, timeout=DEMO_STEP_SECONDS,
                    connect_timeout=DEMO_STEP_SECONDS) as client:
            client.write_bytes(DEMO_MESSAGE.encode("utf-8"))
            received = client.read_bytes()
            _say(f"Received: {received.decode('utf-8', errors='replace')}")
    finally:
        # Waits for the connection to end, so "Client left" is printed
        # before the demo returns: the output is the same on every run.
        listener.graceful_stop(timeout=DEMO_STEP_SECONDS)
    return 0


def _echo(args: argparse.Namespace) -> int:
    """Serve the echo listener until Ctrl-C (or SIGTERM), then stop it gracefully.

    The first SIGINT/SIGTERM stops accepting and lets open connections finish
    within ``--graceful-timeout`` seconds; those left then are closed (each
    prints ``Client left``). A second signal closes them at once. Exit status 0.
    """
    drain = Drain(args.graceful_timeout, graceful=STOP_SIGNALS,
                  on_stop=lambda: _say("Stopping the echo server"))
    with drain:
        drain.add(_start_echo(args.port, **_listener_kwargs(args)))
        drain.wait()
    return 0


def _send(args: argparse.Namespace) -> int:
    """Send TEXT, print the one reply."""
    with Client(args.host, args.port, **_client_kwargs(args)) as client:
        client.write_bytes(args.text.encode("utf-8"))
        reply = client.read_bytes()
    _say(reply.decode("utf-8", errors="replace"))
    return 0


# -- the parser --------------------------------------------------------------


def _port(text: str) -> int:
    """An argparse type: a TCP port number (0..65535; gtcp checks the range)."""
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gtcp",
        description="The Ballerina tcp library in Python, on gevent: samples and small tools.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run the Ballerina spec's echo samples end to end on loopback",
        description="Start the section 6 echo listener on a free loopback port, run the echo "
                    f"client against it ({DEMO_MESSAGE!r}), then stop the listener.",
    )
    demo.set_defaults(run=_demo)

    echo = commands.add_parser(
        "echo", help="serve the echo listener until Ctrl-C",
        description="Serve the section 6 echo listener until Ctrl-C, then stop it gracefully.",
    )
    _add_listener_options(echo)
    echo.add_argument("--port", type=_port, required=True,
                      help="port to listen on (0 picks a free one; the line printed at start shows it)")
    echo.add_argument("--graceful-timeout", type=non_negative_seconds, default=GRACEFUL_TIMEOUT,
                      metavar="S",
                      help="at Ctrl-C or SIGTERM, seconds open connections get to finish before they are "
                           "closed (default: %(default)g s); a second signal closes them at once")
    echo.set_defaults(run=_echo)

    add_command(commands)

    send = commands.add_parser(
        "send", help="send one text and print the reply",
        description="Connect to HOST:PORT, send TEXT (UTF-8), print the one reply that comes back.",
    )
    send.add_argument("host", metavar="HOST", help="host name or address of the server")
    send.add_argument("port", metavar="PORT", type=_port, help="port of the server")
    send.add_argument("text", metavar="TEXT", help="the text to send")
    _add_client_options(send)
    send.set_defaults(run=_send)
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the command line with *argv* (default ``sys.argv[1:]``); the exit status."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="gtcp: %(levelname)s: %(message)s")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except Error as err:
        print(f"gtcp: error: {_one_line(err)}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
