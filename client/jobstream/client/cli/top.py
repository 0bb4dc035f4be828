"""``jobstream top``: a live full-screen table of jobs with progress bars.

The table is folded from one WatchJobs stream (every matching job as it is,
a caught-up marker, then each change as it commits), so it costs the server
one stream however often the screen is redrawn, and it resumes by position
after a reconnect like any watch.

On a terminal the table fills the screen (rich's alternate screen) until
``q`` or Ctrl-C. Up/down (or ``k``/``j``) select a job and Enter shows it
live, full screen (its log and state changes above, progress, counters and
steps below: ``watch``'s view), until Esc or ``q`` goes back to the table.
Elsewhere (a pipe, a file) it prints the table once, as of the caught-up
marker, and exits; ``--json`` prints every change as a JSON line instead,
for scripts that follow the job list.

Streams are read on threads of their own while the main thread reads keys;
leaving a view closes the channel its stream runs on, which ends the read.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from rich.live import Live

from jobstream.client.cli.exits import EXIT_OK
from jobstream.client.cli.output import Output
from jobstream.client.cli.presence import read_workers
from jobstream.client.cli.render import safe_text, styled
from jobstream.client.cli.topview import TopView
from jobstream.client.cli.watchview import WatchScreen
from jobstream.client.client import JobClient
from jobstream.client.errors import JobstreamError, NotFoundError
from jobstream.client.models import Job, JobChange, JobEvent
from jobstream.client.security import cli_security

if TYPE_CHECKING:
    from jobstream.client.cli.keys import KeyReader

__all__ = ["cmd_top"]

REFRESH_PER_SECOND = 4
"""Redraws per second: smooth enough for progress bars, and the ages in the
table tick without any change arriving."""

KEY_POLL_SECONDS = 0.1
"""How long the main thread waits for a key before it checks on the streams."""

QUIT_KEYS = frozenset({"q", "Q"})
"""Keys that end ``top`` (and leave a job's view)."""

UP_KEYS = frozenset({"up", "k"})
"""Keys that select the row above."""

DOWN_KEYS = frozenset({"down", "j"})
"""Keys that select the row below."""

BACK_KEYS = frozenset({"escape", *QUIT_KEYS})
"""Keys that leave a job's view for the table."""

BACK_HINT = "esc/q back to the list"
"""What the keys do in a job's view."""

WORKERS_EVERY_S = 5.0
"""How often top re-reads the workers (the servers record them every 5 s)."""

T = TypeVar("T")


def _changes(client: JobClient, args: argparse.Namespace) -> Iterator[JobChange]:
    return client.watch_jobs(
        states=tuple(args.state or ()),
        kinds=tuple(args.kind or ()),
        labels=dict(args.label or []),
        queues=tuple(args.queue or ()),
    )


class _Pump(Generic[T]):
    """Reads a stream on a daemon thread, handing each item to ``apply``;
    the main thread asks ``check`` whether it failed. Errors after ``stop``
    (its channel closed under it) are the expected end, not failures."""

    def __init__(self, items: Iterator[T], apply: Callable[[T], None], name: str) -> None:
        self._items = items
        self._apply = apply
        self._stopping = False
        self.error: BaseException | None = None
        self.ended = threading.Event()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            for item in self._items:
                if self._stopping:
                    return
                self._apply(item)
        except Exception as exc:
            if not self._stopping:
                self.error = exc
        finally:
            self.ended.set()

    def stop(self) -> None:
        """Whatever the stream does from now on is not an error."""
        self._stopping = True

    def check(self) -> None:
        """Raise the stream's error, if it failed."""
        if self.error is not None:
            raise self.error


def _watch_screen(args: argparse.Namespace, job: Job, live: Live, keys: KeyReader) -> None:
    """Show ``job`` live, full screen, until Esc or ``q``."""
    timeout: float = args.timeout
    footer = styled(f"{BACK_HINT}  ", "dim").append_text(safe_text(job.id, "dim"))
    # A client of its own: closing it ends this watch and nothing else.
    with JobClient(args.target, timeout=timeout or None, security=cli_security(args)) as client:
        stream = client.watch(job.id)
        try:
            snapshot = next(stream, None)
        except NotFoundError:
            return  # deleted since the table showed it: the table will say so
        if not isinstance(snapshot, Job):
            return
        screen = WatchScreen(snapshot, footer)

        def apply(item: Job | JobEvent) -> None:
            if isinstance(item, JobEvent):
                screen.apply(item)

        pump = _Pump(stream, apply, f"jobstream-top-watch-{job.id}")
        live.update(screen, refresh=True)
        try:
            while not BACK_KEYS.intersection(keys.read(KEY_POLL_SECONDS)):
                if pump.error is not None and screen.footer is footer:
                    # The job's stream failed (deleted meanwhile, server
                    # gone): say so here; the table still has its own.
                    error = pump.error
                    message = error.message if isinstance(error, JobstreamError) else str(error)
                    screen.footer = (
                        styled("watch ended: ", "red")
                        .append_text(safe_text(message))
                        .append(f"  {BACK_HINT}", "dim")
                    )
        finally:
            pump.stop()


def _interactive(
    args: argparse.Namespace, view: TopView, live: Live, pump: _Pump[JobChange]
) -> None:
    """Keys move the selection, open a job's view, or quit."""
    # Imported here: termios exists on POSIX only, and the rest of the CLI
    # works without it.
    from jobstream.client.cli.keys import KeyReader

    with KeyReader() as keys:
        while True:
            pump.check()
            for key in keys.read(KEY_POLL_SECONDS):
                if key in QUIT_KEYS:
                    return
                if key in UP_KEYS:
                    view.move(-1)
                elif key in DOWN_KEYS:
                    view.move(1)
                elif key == "enter":
                    job = view.selected_job()
                    if job is not None:
                        _watch_screen(args, job, live, keys)
                        live.update(view, refresh=True)
                    break  # keys typed meanwhile were meant for that view
                else:
                    continue
                live.refresh()


def _follow_workers(client: JobClient, view: TopView) -> None:
    """Re-reads the workers every WORKERS_EVERY_S seconds on a daemon thread
    (it ends with the process; a failed read leaves the notes out)."""

    def run() -> None:
        while True:
            try:
                view.set_workers(read_workers(client))
            except Exception:  # the channel closed as top ended
                return
            time.sleep(WORKERS_EVERY_S)

    threading.Thread(target=run, name="jobstream-top-workers", daemon=True).start()


def cmd_top(args: argparse.Namespace) -> int:
    """``jobstream top``: the live table until ``q`` or Ctrl-C (see the module docstring)."""
    out = Output.from_args(args)
    timeout: float = args.timeout
    with JobClient(args.target, timeout=timeout or None, security=cli_security(args)) as client:
        changes = _changes(client, args)
        if out.json or not out.console.is_terminal:
            try:
                if out.json:
                    for change in changes:
                        out.json_out(change, indent=None)
                    return EXIT_OK
                view = TopView(args.target, out.console)
                view.set_workers(read_workers(client))
                for change in changes:
                    view.apply(change)
                    if change.caught_up:
                        break
                out.console.print(view)
                return EXIT_OK
            finally:
                close = getattr(changes, "close", None)
                if close is not None:
                    close()
        # Keys only from a terminal: `top < /dev/null` still shows the table.
        selecting = sys.stdin.isatty()
        view = TopView(args.target, out.console, selecting=selecting)
        pump = _Pump(changes, view.apply, "jobstream-top")
        _follow_workers(client, view)
        try:
            with Live(
                view,
                console=out.console,
                screen=True,
                auto_refresh=True,
                refresh_per_second=REFRESH_PER_SECOND,
                redirect_stdout=False,
                redirect_stderr=False,
            ) as live:
                if selecting:
                    _interactive(args, view, live, pump)
                else:
                    while not pump.ended.wait(KEY_POLL_SECONDS):
                        pump.check()
                    pump.check()
        finally:
            # Leaving the `with` closes the channel, which ends the read.
            pump.stop()
    return EXIT_OK
