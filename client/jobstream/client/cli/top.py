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
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Generic, TypeVar

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.measure import Measurement
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from jobstream.client.cli.exits import EXIT_OK
from jobstream.client.cli.render import fraction_of, safe_text, state_text, styled
from jobstream.client.cli.watchview import WatchScreen
from jobstream.client.client import JobClient
from jobstream.client.errors import JobstreamError, NotFoundError
from jobstream.client.models import Job, JobChange, JobEvent, JobState
from jobstream.client.security import cli_security

if TYPE_CHECKING:
    from jobstream.client.cli.keys import KeyReader

__all__ = ["TopView", "cmd_top"]

REFRESH_PER_SECOND = 4
"""Redraws per second: smooth enough for progress bars, and the ages in the
table tick without any change arriving."""

KEY_POLL_SECONDS = 0.1
"""How long the main thread waits for a key before it checks on the streams."""

TOP_BAR_WIDTH = 20
"""Width in cells of each row's progress bar."""

MAX_FINISHED_KEPT = 1_000
"""Ended jobs remembered (newest kept): bounds the memory of a ``top`` left
running for days against a busy server. Active jobs are always kept."""

CHROME_LINES = 5
"""Screen lines that are not job rows: title, table header and rule, the
"more" line, and one spare so the table never scrolls the screen."""

MIN_DETAIL_WIDTH = 10
"""The phase / message column never gets narrower than this."""

STATE_ORDER = {JobState.RUNNING: 0, JobState.QUEUED: 1}
"""Running jobs first, then queued ones, then the ended ones."""

QUIT_KEYS = frozenset({"q", "Q"})
"""Keys that end ``top`` (and leave a job's view)."""

UP_KEYS = frozenset({"up", "k"})
DOWN_KEYS = frozenset({"down", "j"})
BACK_KEYS = frozenset({"escape", *QUIT_KEYS})
"""Keys that leave a job's view for the table."""

KEYS_HINT = "↑↓ select  enter watch  q quit"
"""What the keys do, in the table's title line."""

BACK_HINT = "esc/q back to the list"
"""What the keys do in a job's view."""

T = TypeVar("T")


def _age(since: datetime | None, now: datetime) -> str:
    """``12s``, ``5m``, ``3h``, ``2d`` since ``since``."""
    if since is None:
        return ""
    seconds = max(0, int((now - since).total_seconds()))
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _sort_key(job: Job) -> tuple[int, float]:
    """Active jobs oldest first (they have waited longest); ended jobs newest first."""
    order = STATE_ORDER.get(job.state, 2)
    if order == 2:
        ended = job.end_time or job.update_time
        return order, -(ended.timestamp() if ended else 0.0)
    since = job.start_time if job.state is JobState.RUNNING else job.create_time
    return order, since.timestamp() if since else 0.0


class TopView:
    """The jobs known from a WatchJobs stream, renderable as the top table,
    with one of them selected when ``selecting``.

    ``apply`` runs on the thread reading the stream while rich redraws from
    its refresh thread and keys move the selection on the main thread, so
    all of them hold ``_lock``.
    """

    def __init__(self, target: str, console: Console, *, selecting: bool = False) -> None:
        """An empty view of the server at ``target``, sized to ``console``."""
        self._lock = threading.Lock()
        self.target = target
        self.console = console
        self.selecting = selecting
        self.jobs: dict[str, Job] = {}
        self.caught_up = False
        self.position = 0
        self.selected: str | None = None
        """The id of the selected job (it stays selected as rows move)."""
        self._selected_index = 0

    def apply(self, change: JobChange) -> None:
        """Fold one change into the view."""
        with self._lock:
            self.position = change.position
            if change.caught_up:
                self.caught_up = True
            elif change.deleted_job_id is not None:
                self.jobs.pop(change.deleted_job_id, None)
            elif change.job is not None:
                self.jobs[change.job.id] = change.job
                self._forget_old()

    def _forget_old(self) -> None:
        finished = [j for j in self.jobs.values() if j.state.terminal]
        if len(finished) > MAX_FINISHED_KEPT:
            finished.sort(key=_sort_key)
            for job in finished[MAX_FINISHED_KEPT:]:
                if job.id != self.selected:
                    del self.jobs[job.id]

    def _ordered(self) -> list[Job]:
        """The jobs in table order, with the selection pinned to a job that
        is still there (the row where it was, when its job went away)."""
        jobs = sorted(self.jobs.values(), key=_sort_key)
        if not jobs:
            self.selected = None
            return jobs
        ids = [job.id for job in jobs]
        if self.selected in ids:
            self._selected_index = ids.index(self.selected)
        else:
            self._selected_index = min(self._selected_index, len(jobs) - 1)
            self.selected = ids[self._selected_index]
        return jobs

    def move(self, rows: int) -> None:
        """Move the selection ``rows`` down (up when negative)."""
        with self._lock:
            jobs = self._ordered()
            if jobs:
                index = min(max(self._selected_index + rows, 0), len(jobs) - 1)
                self._selected_index = index
                self.selected = jobs[index].id

    def selected_job(self) -> Job | None:
        """The selected job, as last seen."""
        with self._lock:
            self._ordered()
            return self.jobs.get(self.selected) if self.selected else None

    def __rich__(self) -> RenderableType:
        """Title line and the table, cut to the console's height (scrolled
        so the selected row shows)."""
        now = datetime.now(UTC)
        with self._lock:
            jobs = self._ordered()
            caught_up = self.caught_up
            index = self._selected_index
        counts: dict[JobState, int] = {}
        for job in jobs:
            counts[job.state] = counts.get(job.state, 0) + 1
        title = styled("jobstream top", "bold")
        title.append(f"  {self.target}  ", style="dim")
        title.append(f"{len(jobs)} jobs")
        for state in JobState:
            if counts.get(state):
                title.append("  ")
                title.append_text(state_text(state))
                title.append(f" {counts[state]}")
        title.append(f"  {now.astimezone().strftime('%H:%M:%S')}", style="dim")
        if not caught_up:
            title.append("  loading…", style="yellow")
        if self.selecting:
            title.append(f"  {KEYS_HINT}", style="dim")
        room = max(1, self.console.size.height - CHROME_LINES)
        first = max(0, index - room + 1) if self.selecting else 0
        shown = jobs[first : first + room]
        selected = index - first if self.selecting and jobs else None
        table = _table(
            shown,
            now,
            self.console,
            # Full width on a terminal; a pipe gets no padding to 200 columns.
            expand=self.console.is_terminal,
            selected=selected,
        )
        parts: list[RenderableType] = [title, table]
        hidden = len(jobs) - len(shown)
        if hidden:
            parts.append(styled(f"… {hidden} more", "dim"))
        return Group(*parts)


def _progress_cell(job: Job) -> RenderableType:
    fraction = 1.0 if job.state is JobState.SUCCEEDED else fraction_of(job.progress)
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True, justify="right")
    grid.add_row(
        ProgressBar(total=1.0, completed=fraction, width=TOP_BAR_WIDTH),
        Text(f"{fraction * 100:5.1f}%"),
    )
    return grid


def _detail_cell(job: Job) -> Text:
    """Phase and message, or the error of a failed job."""
    if job.error is not None and job.state.terminal:
        text = safe_text(job.error.code, "red")
        if job.error.message:
            text.append(": ")
            text.append_text(safe_text(job.error.message))
        return text
    text = safe_text(job.progress.phase, "bold")
    if job.progress.message:
        if job.progress.phase:
            text.append("  ")
        text.append_text(safe_text(job.progress.message, "italic"))
    return text


def _base_table(*, expand: bool) -> Table:
    table = Table(box=box.SIMPLE_HEAD, expand=expand, pad_edge=False, show_edge=False)
    table.add_column("ID", no_wrap=True, overflow="ellipsis", max_width=40)
    table.add_column("KIND", no_wrap=True, overflow="ellipsis", max_width=30)
    table.add_column("STATE", no_wrap=True)
    table.add_column("PROGRESS", no_wrap=True)
    table.add_column("ATT", no_wrap=True, justify="right")
    table.add_column("AGE", no_wrap=True, justify="right")
    return table


_UNBOUNDED_WIDTH = 100_000
_COLUMN_GAP = 2
"""Cells between two columns of the table (padding 1 on each side)."""


def _table(
    jobs: Iterable[Job],
    now: datetime,
    console: Console,
    *,
    expand: bool,
    selected: int | None = None,
) -> Table:
    rows = []
    for job in jobs:
        attempts = f"{job.attempt}/{job.max_attempts}" if job.max_attempts else str(job.attempt)
        rows.append(
            [
                safe_text(job.id),
                safe_text(job.kind),
                state_text(job.state, cancel_requested=job.cancel_requested),
                _progress_cell(job),
                attempts,
                _age(job.start_time or job.create_time, now),
            ]
        )
    # The phase / message column gets what the others leave of the width,
    # measured: sized by ratio alone, rich squeezes every column to fit a
    # long message.
    base = _base_table(expand=False)
    for cells in rows:
        base.add_row(*cells)
    used = Measurement.get(console, console.options.update_width(_UNBOUNDED_WIDTH), base).maximum
    room = max(MIN_DETAIL_WIDTH, console.width - used - _COLUMN_GAP)
    table = _base_table(expand=expand)
    table.add_column("PHASE / MESSAGE", no_wrap=True, overflow="ellipsis", ratio=1, max_width=room)
    for index, (cells, job) in enumerate(zip(rows, jobs, strict=False)):
        table.add_row(*cells, _detail_cell(job), style="reverse" if index == selected else None)
    return table


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


def cmd_top(args: argparse.Namespace) -> int:
    """``jobstream top``: the live table until ``q`` or Ctrl-C (see the module docstring)."""
    from jobstream.client.cli.commands import Output

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
