"""The ``jobstream`` command: serve, gateway, worker, submit, watch, ls, get, logs, cancel, rm.

``main`` is the console-script entry point. It parses the command line
(``options``), hands ``serve`` and ``worker`` to ``processes`` and the client
commands to ``commands`` (which need rich, the ``[cli]`` extra), and turns
every error from the server into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Sequence

import grpc

from jobstream.client.cli.exits import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from jobstream.client.cli.failures import CommandError, failure_of, report
from jobstream.client.cli.jsonout import print_json
from jobstream.client.errors import JobstreamError, from_rpc_error

__all__ = ["main", "package_version"]

CLI_EXTRA_MESSAGE = "the CLI needs the [cli] extra: pip install 'jobstream[cli]'"
"""What the client commands say when rich is not installed."""

UNKNOWN_VERSION = "unknown"
"""The version shown when jobstream runs from a tree that was never installed."""


def package_version() -> str:
    """The installed jobstream distribution's version (``pyproject.toml``'s)."""
    try:
        return importlib.metadata.version("jobstream")
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


def _print_version(as_json: bool) -> int:
    version = package_version()
    if as_json:
        print_json({"version": version}, file=sys.stdout)
    else:
        print(f"jobstream {version}")
    return EXIT_OK


def _report(error: JobstreamError | CommandError, args: argparse.Namespace) -> None:
    timeout: float | None = getattr(args, "timeout", None)
    failure = failure_of(error, target=getattr(args, "target", None), timeout=timeout)
    report(failure, as_json=bool(getattr(args, "json", False)))


def _missing_rich(exc: ModuleNotFoundError) -> bool:
    return exc.name is not None and exc.name.split(".")[0] == "rich"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jobstream`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status: 0 ok, 1 a watched job failed or was
    interrupted, 2 usage or server errors, 3 a watched job was cancelled,
    130 Ctrl-C, 141 stdout closed by its reader.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["serve"]:
        # Checked before argparse sees anything so that every server flag,
        # --help included, reaches the server untouched.
        from jobstream.client.cli.processes import serve

        return serve(arguments[1:])
    if arguments[:1] == ["gateway"]:
        # Like serve: the gateway's own parser takes every flag after it.
        try:
            from jobstream.gateway.cli import main as gateway_main
        except ImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        return gateway_main(arguments[1:])
    if arguments[:1] == ["__complete"]:
        # What the completion scripts ask for on a TAB; never in --help.
        from jobstream.client.cli.completion import complete_values

        return complete_values(arguments[1:])
    if arguments[:1] == ["db"]:
        # Like serve: the server's own parser handles `db` and its flags.
        from jobstream.client.cli.processes import db

        return db(arguments[1:])

    from jobstream.client.cli.options import parse_args

    args = parse_args(arguments)
    if args.version:
        return _print_version(bool(args.json))
    try:
        if args.command in ("serve", "gateway"):
            print(
                f"error: {args.command} must come first: jobstream {args.command} [its flags]",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if args.command == "db":
            from jobstream.client.cli.processes import db

            # The common --json came before `db`; the admin parser takes it after.
            return db([*args.db_argv, *(["--json"] if args.json else [])])
        if args.command == "completion":
            from jobstream.client.cli.completion import script

            sys.stdout.write(script(args.shell))
            return EXIT_OK
        if args.command == "worker":
            from jobstream.client.cli.processes import run_worker

            return run_worker(args)
        try:
            from jobstream.client.cli.commands import COMMANDS
            from jobstream.client.cli.ops import OPS_COMMANDS
            from jobstream.client.cli.presence import cmd_workers
            from jobstream.client.cli.remove import cmd_rm
            from jobstream.client.cli.top import cmd_top
        except ModuleNotFoundError as exc:
            if not _missing_rich(exc):
                raise
            print(CLI_EXTRA_MESSAGE, file=sys.stderr)
            return EXIT_USAGE
        commands = {
            **COMMANDS,
            **OPS_COMMANDS,
            "rm": cmd_rm,
            "top": cmd_top,
            "workers": cmd_workers,
        }
        return commands[args.command](args)
    except (JobstreamError, CommandError) as exc:
        _report(exc, args)
        return EXIT_USAGE
    except grpc.RpcError as exc:
        # The client converts its call errors; this catches any that slip
        # through so the user still gets one line instead of a traceback.
        _report(from_rpc_error(exc), args)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `jobstream logs ID | head`: the reader left; say nothing more.
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _silence_stdout() -> None:
    # Python would complain about the broken pipe again when it flushes
    # stdout at exit; point stdout at /dev/null so it cannot.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
