"""The ``jobstream`` command called in this process, as a shell would call it.

Starting a Python process costs a third of a second, more than most
commands take, so tests call the command's ``main(argv)`` here instead,
with what a process would have of its own: an environment of its own (no
``JOBSTREAM_*`` or terminal settings from outside), a working directory,
stdin/stdout/stderr captured as bytes, the exit status (``SystemExit``
included) and the library's warnings on stderr, as Python's last-resort
log handler prints them in a process that configures no logging.

What only a process has stays in subprocess tests: signals (Ctrl-C), a
closed pipe, a terminal, ``jobstream serve`` and ``jobstream worker``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from conftest import clean_environ

from jobstream.client.cli import main

RUN_TIMEOUT_S = 60.0
"""Longest any one run of the command may take before the test fails."""

TERMINAL_VARIABLES = ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS", "LINES", "NO_COLOR")
"""Variables that change how rich draws; none of them comes from outside."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CliRun:
    """What one run of the command left: its exit status and output."""

    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        """stdout as text."""
        return self.stdout.decode()

    @property
    def err(self) -> str:
        """stderr as text."""
        return self.stderr.decode()


def command_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a command run by the tests gets: this process's,
    without ``JOBSTREAM_*`` or terminal settings, plus ``extra``."""
    env = {k: v for k, v in clean_environ().items() if k not in TERMINAL_VARIABLES}
    env.update(extra or {})
    return env


def run_cli(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = RUN_TIMEOUT_S,
    meanwhile: Callable[[Callable[[], str]], None] | None = None,
) -> CliRun:
    """Runs ``jobstream ARGS`` to completion in this process, with
    ``command_environ(env)`` as its environment and ``cwd`` as its working
    directory; fails the test if it takes longer than ``timeout`` seconds.
    An exception that escapes ``main`` (a traceback, in a process) is
    raised here.

    ``meanwhile``, for a command that runs until something else happens
    (a watch, until its job ends), is called while the command runs, with
    a function that returns the command's stdout so far: it can wait for
    what the command shows first, then make the thing happen."""
    stdout, stderr = _Capture(errors="strict"), _Capture(errors="backslashreplace")
    command = _ThisThread()
    codes: list[int] = []
    failures: list[BaseException] = []

    def call() -> None:
        command.thread = threading.get_ident()
        try:
            codes.append(main(list(args)))
        except SystemExit as exc:
            codes.append(_exit_status(exc, stderr.text))
        except BaseException as exc:  # raised in the test's thread below
            failures.append(exc)

    # On a thread of its own so that the run has a deadline.
    runner = threading.Thread(target=call, name="jobstream-cli", daemon=True)
    with (
        _environment(command_environ(env)),
        _working_directory(cwd),
        _last_resort_logging(stderr.text, command),
        contextlib.redirect_stdout(stdout.text),
        contextlib.redirect_stderr(stderr.text),
        _stdin(),
    ):
        runner.start()
        try:
            if meanwhile is not None:
                meanwhile(lambda: stdout.value().decode(errors="replace"))
        finally:
            runner.join(timeout)
    if runner.is_alive():
        raise AssertionError(
            f"jobstream {list(args)} still running after {timeout}s; "
            f"stdout so far: {stdout.value()[-2000:]!r}"
        )
    if failures:
        raise failures[0]
    return CliRun(returncode=codes[0], stdout=stdout.value(), stderr=stderr.value())


class _Capture:
    """A text stream over bytes, encoded as a process's pipe would be."""

    def __init__(self, *, errors: str) -> None:
        self._buffer = io.BytesIO()
        self.text = io.TextIOWrapper(self._buffer, encoding="utf-8", errors=errors)

    def value(self) -> bytes:
        """Everything written so far."""
        self.text.flush()
        return self._buffer.getvalue()


def _exit_status(exc: SystemExit, stderr: io.TextIOWrapper) -> int:
    """The status a process would exit with after ``sys.exit(code)``."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=stderr)
    return 1


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` is ``env`` for the duration (changed in place: rich
    and the CLI keep a reference to the mapping)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _working_directory(cwd: Path | None) -> Iterator[None]:
    if cwd is None:
        yield
        return
    before = Path.cwd()
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def _stdin() -> Iterator[None]:
    """An empty stdin, as ``subprocess.run`` with captured output gives
    (pytest's own stdin refuses reads)."""
    saved = sys.stdin
    sys.stdin = io.StringIO()
    try:
        yield
    finally:
        sys.stdin = saved


class _ThisThread(logging.Filter):
    """Passes only records logged by the command's thread: a server in this
    process logs on other threads, and that is not the command's output."""

    def __init__(self) -> None:
        super().__init__()
        self.thread: int | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread


@contextlib.contextmanager
def _last_resort_logging(stderr: io.TextIOWrapper, command: _ThisThread) -> Iterator[None]:
    """Warnings the command logs go to its stderr, as ``logging.lastResort``
    prints them in a process where nothing configured logging."""
    handler = logging.StreamHandler(stderr)
    handler.setLevel(logging.WARNING)
    handler.addFilter(command)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
