"""What ``jobstream top`` shows: the jobs a WatchJobs stream told of, as a
table sized to the terminal, with one row selected when keys can move it.

Everything shown that came from the server goes through ``safe_text``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime

from rich import box
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from jobstream.client.cli.render import fraction_of, safe_text, state_text, styled
from jobstream.client.models import Job, JobChange, JobState, WorkerInfo, unserved_note

__all__ = ["KEYS_HINT", "TopView"]

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

KEYS_HINT = "↑↓ select  enter watch  q quit"
"""What the keys do, in the table's title line."""


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
        self.workers: list[WorkerInfo] | None = None
        """The workers last read (None: unknown), for the note on queued
        jobs no live worker serves."""

    def set_workers(self, workers: list[WorkerInfo] | None) -> None:
        """The workers as last read."""
        with self._lock:
            self.workers = workers

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
            workers = self.workers
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
            workers=workers,
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


def _detail_cell(job: Job, workers: list[WorkerInfo] | None = None) -> Text:
    """Phase and message, the error of a failed job, or the note on a
    queued job no live worker serves."""
    note = unserved_note(job, workers) if workers is not None else None
    if note is not None:
        return safe_text(note, "yellow")
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
    workers: list[WorkerInfo] | None = None,
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
        table.add_row(
            *cells, _detail_cell(job, workers), style="reverse" if index == selected else None
        )
    return table
