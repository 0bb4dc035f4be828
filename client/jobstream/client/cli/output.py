"""Where a command's output goes and whom it talks to: the rich console (or
JSON) the common flags ask for, and a client of the server they name.

Shared by every client command (``commands``, ``ops``, ``remove``, ``top``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.text import Text

from jobstream.client.cli.jsonout import print_json
from jobstream.client.client import JobClient
from jobstream.client.security import cli_security

__all__ = ["PIPE_WIDTH", "Output", "connect"]

PIPE_WIDTH = 200
"""Line width for output to a pipe or file: rich would assume 80 columns and
squeeze tables into ellipses that ``grep`` then cannot find. ``COLUMNS``
overrides it."""


class _Console(Console):
    """A rich Console that leaves a closed stdout to ``main``.

    rich's own handling exits with status 1, which here means "the job
    failed"; ``main`` turns the error into status 141 instead.
    """

    def on_broken_pipe(self) -> None:
        """Stop writing and let the error reach ``main``."""
        self.quiet = True
        raise BrokenPipeError


@dataclass(frozen=True, kw_only=True)
class Output:
    """Where and how a command prints: a rich console on stdout, or JSON."""

    console: Console
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Output:
        """The output the common flags ask for."""
        # markup, emoji and highlighting off: nothing printed is ever read
        # as markup (untrusted text is Text anyway; this guards plain str
        # cells too) and numbers in ids are not recoloured.
        console = _Console(markup=False, emoji=False, highlight=False)
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console.width = PIPE_WIDTH
        return cls(console=console, json=bool(args.json))

    def json_out(self, value: Any, *, indent: int | None = 2) -> None:
        """Print one JSON document (``indent=None``: one line, for JSON lines)."""
        print_json(value, file=sys.stdout, indent=indent)

    def line(self, text: Text) -> None:
        """Print one line of output, never wrapped into several."""
        self.console.print(text, soft_wrap=True)


@contextmanager
def connect(args: argparse.Namespace, *, timeout: float | None = None) -> Iterator[JobClient]:
    """A client of the server the flags name, with their ``--timeout``
    unless given a shorter one."""
    seconds: float | None = args.timeout or None
    if timeout is not None:
        seconds = timeout if seconds is None else min(seconds, timeout)
    with JobClient(args.target, timeout=seconds, security=cli_security(args)) as client:
        yield client
