"""``jobstream top``: a live full-screen table of jobs with progress bars.

The table is folded from one WatchJobs stream (every matching job as it is,
a caught-up marker, then each change as it commits), so it costs the server
one stream however often the screen is redrawn, and it resumes by position
after a reconnect like any watch.

On a terminal the table fills the screen (rich's alternate screen) until
Ctrl-C. Elsewhere (a pipe, a file) it prints the table once, as of the
caught-up marker, and exits; ``--json`` prints every change as a JSON line
instead, for scripts that follow the job list.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from jobstream.client.cli.exits import EXIT_OK
from jobstream.client.cli.render import fraction_of, safe_text, state_text, styled
from jobstream.client.client import JobClient
from jobstream.client.models import Job, JobChange, JobState
from jobstream.client.security import cli_security

__all__ = ["TopView", "cmd_top"]

REFRESH_PER_SECOND = 4
"""Redraws per second: smooth enough for progress bars, and the ages in the
table tick without any change arriving."""

TOP_BAR_WIDTH = 20
"""Width in cells of each row's progress bar."""

MAX_FINISHED_KEPT = 1_000
"""Ended jobs remembered (newest kept): bounds the memory of a ``top`` left
running for days against a busy server. Active jobs are always kept."""

CHROME_LINES = 5
"""Screen lines that are not job rows: title, table header and rule, the
"more" line, and one spare so the table never scrolls the screen."""

STATE_ORDER = {JobState.RUNNING: 0, JobState.QUEUED: 1}
"""Running jobs first, then queued ones, then the ended ones."""


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
    """The jobs known from a WatchJobs stream, renderable as the top table.

    ``apply`` runs on the thread reading the stream while rich redraws from
    its refresh thread, so both hold ``_lock``.
    """

    def __init__(self, target: str, console: Console) -> None:
        """An empty view of the server at ``target``, sized to ``console``."""
        self._lock = threading.Lock()
        self.target = target
        self.console = console
        self.jobs: dict[str, Job] = {}
        self.caught_up = False
        self.position = 0

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
                del self.jobs[job.id]

    def __rich__(self) -> RenderableType:
        """Title line and the table, cut to the console's height."""
        now = datetime.now(UTC)
        with self._lock:
            jobs = sorted(self.jobs.values(), key=_sort_key)
            caught_up = self.caught_up
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
        room = max(1, self.console.size.height - CHROME_LINES)
        shown = jobs[:room]
        # Full width on a terminal; a pipe gets no padding to 200 columns.
        table = _table(shown, now, expand=self.console.is_terminal)
        parts: list[RenderableType] = [title, table]
        if len(jobs) > len(shown):
            parts.append(styled(f"… {len(jobs) - len(shown)} more", "dim"))
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


def _table(jobs: Iterable[Job], now: datetime, *, expand: bool) -> Table:
    table = Table(box=box.SIMPLE_HEAD, expand=expand, pad_edge=False, show_edge=False)
    table.add_column("ID", no_wrap=True, overflow="ellipsis", max_width=40)
    table.add_column("KIND", no_wrap=True, overflow="ellipsis", max_width=30)
    table.add_column("STATE", no_wrap=True)
    table.add_column("PROGRESS", no_wrap=True)
    table.add_column("ATT", no_wrap=True, justify="right")
    table.add_column("AGE", no_wrap=True, justify="right")
    table.add_column("PHASE / MESSAGE", no_wrap=True, overflow="ellipsis", ratio=1)
    for job in jobs:
        attempts = f"{job.attempt}/{job.max_attempts}" if job.max_attempts else str(job.attempt)
        table.add_row(
            safe_text(job.id),
            safe_text(job.kind),
            state_text(job.state, cancel_requested=job.cancel_requested),
            _progress_cell(job),
            attempts,
            _age(job.start_time or job.create_time, now),
            _detail_cell(job),
        )
    return table


def _changes(client: JobClient, args: argparse.Namespace) -> Iterator[JobChange]:
    return client.watch_jobs(
        states=tuple(args.state or ()),
        kinds=tuple(args.kind or ()),
        labels=dict(args.label or []),
        queues=tuple(args.queue or ()),
    )


def cmd_top(args: argparse.Namespace) -> int:
    """``jobstream top``: the live table until Ctrl-C (see the module docstring)."""
    from jobstream.client.cli.commands import Output

    out = Output.from_args(args)
    timeout: float = args.timeout
    with JobClient(args.target, timeout=timeout or None, security=cli_security(args)) as client:
        changes = _changes(client, args)
        try:
            if out.json:
                for change in changes:
                    out.json_out(change, indent=None)
                return EXIT_OK
            view = TopView(args.target, out.console)
            if not out.console.is_terminal:
                for change in changes:
                    view.apply(change)
                    if change.caught_up:
                        break
                out.console.print(view)
                return EXIT_OK
            with Live(
                view,
                console=out.console,
                screen=True,
                auto_refresh=True,
                refresh_per_second=REFRESH_PER_SECOND,
                redirect_stdout=False,
                redirect_stderr=False,
            ):
                for change in changes:
                    view.apply(change)
        finally:
            close = getattr(changes, "close", None)
            if close is not None:
                close()
    return EXIT_OK
