"""``jobstream __complete ids|kinds``: what the completion scripts ask the
server for on a TAB (job ids, kinds), quickly and silently."""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Sequence

from jobstream.client.cli.options import parse_args

__all__ = ["COMPLETION_JOBS", "COMPLETION_TIMEOUT", "complete_values"]

COMPLETION_TIMEOUT = 1.0
"""Seconds a completion may wait for the server: longer feels like a hung
TAB, and a server that slow is as good as down for this."""

COMPLETION_JOBS = 200
"""How many of the newest jobs give the ids and kinds offered."""


def complete_values(argv: Sequence[str]) -> int:
    """``jobstream __complete ids|kinds [--state S]... [connection flags]``:
    print the newest jobs' ids (or their kinds, each once), one a line.

    Prints nothing on any failure (no server, a refused token, bad flags):
    its output becomes the shell's offers, and its status is ignored.
    """
    if not argv or argv[0] not in ("ids", "kinds"):
        return 0
    what, rest = argv[0], list(argv[1:])
    try:
        # ls parses the same filter and connection flags (and their
        # variables); its usage errors are not for the line being typed.
        with contextlib.redirect_stderr(io.StringIO()):
            args = parse_args(["ls", *rest])
        values = _query(what, args)
    except (Exception, SystemExit):
        # A completion must never print errors into the line being typed.
        return 0
    sys.stdout.write("".join(f"{value}\n" for value in values))
    return 0


def _query(what: str, args: argparse.Namespace) -> list[str]:
    from jobstream.client.client import JobClient
    from jobstream.client.security import cli_security

    with JobClient(
        args.target,
        timeout=COMPLETION_TIMEOUT,
        read_retry_timeout=0,
        security=cli_security(args),
    ) as client:
        found = client.list(states=tuple(args.state or ()), page_size=COMPLETION_JOBS)
        jobs = [job for _, job in zip(range(COMPLETION_JOBS), found, strict=False)]
    if what == "ids":
        return [job.id for job in jobs]
    return sorted({job.kind for job in jobs})
