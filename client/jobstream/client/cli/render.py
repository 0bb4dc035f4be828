"""Terminal rendering of jobs, steps and log lines with rich.

Everything shown here that came from the server (ids, kinds, phases, log
text, errors, params) is untrusted: a job's log can hold escape sequences
or rich markup. It goes through :func:`safe_text`, which makes a
:class:`~rich.text.Text` (never parsed as markup) from sanitised text (see
``escape``), so no job can drive the terminal of whoever looks at it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from jobstream.client.cli.escape import sanitize
from jobstream.client.models import (
    Counters,
    Job,
    JobEvent,
    JobState,
    LogLevel,
    Progress,
    Step,
    StepState,
)

__all__ = [
    "format_count",
    "format_duration",
    "format_time",
    "items_text",
    "job_detail",
    "job_table",
    "log_line",
    "progress_line",
    "run_time",
    "safe_text",
    "state_text",
    "steps_table",
    "styled",
]

PROGRESS_BAR_WIDTH = 30
"""Width in cells of the progress bars in ``watch`` and ``get``."""

STATE_STYLES: Mapping[JobState, str] = {
    JobState.QUEUED: "yellow",
    JobState.RUNNING: "cyan",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "bold red",
    JobState.CANCELLED: "magenta",
    JobState.INTERRUPTED: "red",
}
"""Colour of each job state wherever a state is shown."""

STEP_MARKS: Mapping[StepState, tuple[str, str]] = {
    StepState.PENDING: ("·", "dim"),
    StepState.RUNNING: ("▶", "cyan"),
    StepState.SUCCEEDED: ("✓", "green"),
    StepState.FAILED: ("✗", "red"),
    StepState.SKIPPED: ("-", "dim"),
    StepState.CANCELLED: ("⊘", "magenta"),
    StepState.INTERRUPTED: ("↯", "red"),
}
"""Mark and colour of each step state in step lists."""

LEVEL_STYLES: Mapping[LogLevel, str] = {
    LogLevel.DEBUG: "dim",
    LogLevel.INFO: "blue",
    LogLevel.WARNING: "yellow",
    LogLevel.ERROR: "bold red",
}
"""Colour of each log level in log lines."""


def styled(text: str, style: str = "") -> Text:
    """A ``Text`` whose style covers ``text`` only, not what is appended later.

    ``Text(text, style=...)`` would make ``style`` the base of the whole
    line, so everything appended after it would be dim or bold too.
    """
    result = Text()
    result.append(text, style=style or None)
    return result


def safe_text(text: str, style: str = "", *, multiline: bool = False) -> Text:
    """A rich ``Text`` of untrusted ``text``: sanitised and never read as markup."""
    return styled(sanitize(text, multiline=multiline), style)


def format_time(value: datetime | None, *, date: bool = True, compact: bool = False) -> str:
    """``value`` in local time for people (``-`` when unset).

    ``date=False`` gives only the time of day with milliseconds, for live
    log lines where the date is today's; ``compact`` gives the time alone
    for today and the date with minutes otherwise, as ``ls -l`` does.
    """
    if value is None:
        return "-"
    local = value.astimezone()
    if compact:
        today = datetime.now(local.tzinfo).date()
        return local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M")
    if date:
        return local.strftime("%Y-%m-%d %H:%M:%S")
    return local.strftime("%H:%M:%S.%f")[:-3]


DURATION_UNITS: Sequence[tuple[str, float, float]] = (
    ("s", 1.0, 60.0),
    ("min", 60.0, 3_600.0),
    ("h", 3_600.0, 2 * 86_400.0),
    ("d", 86_400.0, float("inf")),
)
"""Unit, its length in seconds, and from how many seconds on the next unit
takes over. Hours run to 48 so that a day reads "24 h", as people say it."""


def format_duration(value: timedelta | float) -> str:
    """A span for people: ``350 ms``, ``1.5 s``, ``42 s``, ``2.5 min``,
    ``1 h``, ``24 h``, ``3.5 d``: the largest unit that fits, one decimal
    below ten of it (none when it is zero)."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    for unit, size, upto in DURATION_UNITS:
        if seconds < upto:
            amount = seconds / size
            shown = f"{amount:.1f}".removesuffix(".0") if amount < 10 else f"{amount:.0f}"
            return f"{shown} {unit}"
    raise AssertionError("the last unit has no upper bound")


def format_count(n: int) -> str:
    """A count with thousands separators: ``1,234``."""
    return f"{n:,}"


def run_time(job: Job, now: datetime | None = None) -> timedelta | None:
    """How long the job's last attempt ran: to its end, or to ``now`` while
    it runs; None when it never started."""
    if job.start_time is None:
        return None
    if job.end_time is not None:
        return job.end_time - job.start_time
    if job.state is JobState.RUNNING:
        return (now or datetime.now(UTC)) - job.start_time
    return None


def items_text(counters: Counters) -> Text:
    """Per-item counts as ``118 ok, 2 failed, 1 skipped`` (zero counts left
    out; ``-`` when there are none)."""
    parts = [
        (counters.succeeded, "ok", "green"),
        (counters.failed, "failed", "red"),
        (counters.skipped, "skipped", "dim"),
    ]
    text = Text()
    for n, word, style in parts:
        if n:
            if text:
                text.append(", ")
            text.append(f"{format_count(n)} {word}", style=style)
    return text if text else Text("-")


def state_text(state: JobState, *, cancel_requested: bool = False) -> Text:
    """A job state, coloured; a running job asked to stop says so."""
    text = styled(state.value, STATE_STYLES.get(state, ""))
    if cancel_requested and not state.terminal:
        text.append(" (cancelling)", style="magenta")
    return text


def fraction_of(progress: Progress) -> float:
    """The fraction done, 0..1, derived from done/total when not reported."""
    fraction = progress.fraction
    if fraction <= 0 and progress.total > 0:
        fraction = progress.done / progress.total
    return min(max(fraction, 0.0), 1.0)


def progress_line(progress: Progress, state: JobState | None = None) -> Table:
    """Bar, percentage, ``done/total``, phase and message on one line."""
    fraction = fraction_of(progress)
    if state is JobState.SUCCEEDED:
        # A handler need not report its last item; a succeeded job is done.
        fraction = 1.0
    grid = Table.grid(padding=(0, 1))
    bar = ProgressBar(total=1.0, completed=fraction, width=PROGRESS_BAR_WIDTH)
    counts = Text(f"{fraction * 100:5.1f}%")
    if progress.total > 0:
        counts.append(f"  {progress.done}/{progress.total}")
    elif progress.done > 0:
        counts.append(f"  {progress.done}")
    cells: list[RenderableType] = [bar, counts]
    if progress.phase:
        cells.append(safe_text(progress.phase, "bold"))
    if progress.message:
        cells.append(safe_text(progress.message, "italic"))
    for _ in cells:
        grid.add_column(no_wrap=True)
    grid.add_row(*cells)
    return grid


def step_line(step: Step) -> Text:
    """One step as ``✓ name  (2 attempts)  error``."""
    mark, style = STEP_MARKS.get(step.state, ("?", ""))
    text = styled(f"{mark} ", style)
    text.append_text(safe_text(step.name))
    if step.attempts > 1:
        text.append(f"  ({step.attempts} attempts)", style="dim")
    if step.error:
        text.append("  ")
        text.append_text(safe_text(step.error, "red"))
    return text


def steps_table(steps: Iterable[Step]) -> Table:
    """The steps of a job with their states, attempts, times and errors."""
    table = Table(title="steps", title_justify="left", expand=False)
    table.add_column("step", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("ended", no_wrap=True)
    table.add_column("error", overflow="fold")
    for step in steps:
        mark, style = STEP_MARKS.get(step.state, ("?", ""))
        table.add_row(
            safe_text(step.name),
            styled(f"{mark} {step.state.value}", style),
            str(step.attempts),
            format_time(step.start_time),
            format_time(step.end_time),
            safe_text(step.error, "red"),
        )
    return table


def log_line(event: JobEvent, *, date: bool = False) -> Text:
    """A log event as ``time level [stream] text``; empty Text for other events."""
    log = event.log
    if log is None:
        return Text()
    text = styled(format_time(event.event_time, date=date), "dim")
    text.append(" ")
    text.append(f"{log.level.value:<7}", style=LEVEL_STYLES.get(log.level, ""))
    text.append(" ")
    if log.stream:
        text.append_text(safe_text(f"[{log.stream}] ", "dim"))
    text.append_text(safe_text(log.text))
    return text


def _attempts(job: Job) -> str:
    if job.max_attempts > 0:
        return f"{job.attempt}/{job.max_attempts}"
    return str(job.attempt)


LS_COLUMNS = (
    "id",
    "kind",
    "state",
    "progress",
    "items",
    "duration",
    "attempt",
    "phase",
    "created",
    "ended",
)
"""The columns of ``ls``, in order."""

LS_DROP_ORDER = ("phase", "attempt", "created", "items", "ended", "duration")
"""Columns ``ls`` leaves out, in this order, on a terminal too narrow for all
of them; rich would otherwise squeeze wrappable columns to nothing. id,
kind, state and progress always stay."""


def _ls_cells(job: Job, now: datetime) -> dict[str, RenderableType]:
    fraction = 1.0 if job.state is JobState.SUCCEEDED else fraction_of(job.progress)
    ran = run_time(job, now)
    return {
        "id": safe_text(job.id),
        "kind": safe_text(job.kind),
        "state": state_text(job.state, cancel_requested=job.cancel_requested),
        "progress": f"{fraction * 100:.0f}%",
        "items": items_text(job.counters),
        "duration": format_duration(ran) if ran is not None else "-",
        "attempt": _attempts(job),
        "phase": safe_text(job.progress.phase),
        "created": format_time(job.create_time, compact=True),
        "ended": format_time(job.end_time, compact=True),
    }


_LS_RIGHT = frozenset({"progress", "attempt", "duration"})
_UNBOUNDED_WIDTH = 100_000


def _ls_table(rows: Sequence[dict[str, RenderableType]], columns: Sequence[str]) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, expand=False
    )
    for name in columns:
        table.add_column(name, no_wrap=True, justify="right" if name in _LS_RIGHT else "left")
    for row in rows:
        table.add_row(*(row[name] for name in columns))
    return table


def job_table(jobs: Iterable[Job], console: Console, *, now: datetime | None = None) -> Table:
    """The ``ls`` table: one row per job, as many columns as ``console`` fits.
    A running job's duration runs to ``now`` (default: the clock's)."""
    when = now or datetime.now(UTC)
    rows = [_ls_cells(job, when) for job in jobs]
    columns = list(LS_COLUMNS)
    table = _ls_table(rows, columns)
    # Measured against unbounded room: measuring against the console's
    # width would report a table squeezed to fit it.
    unbounded = console.options.update_width(_UNBOUNDED_WIDTH)
    for name in LS_DROP_ORDER:
        if Measurement.get(console, unbounded, table).maximum <= console.width:
            break
        columns.remove(name)
        table = _ls_table(rows, columns)
    return table


def _json_block(value: Any) -> Text:
    """Pretty JSON of job data, sanitised (JSON escapes controls anyway)."""
    return safe_text(json.dumps(value, indent=2, ensure_ascii=False, default=str), multiline=True)


def _pairs(mapping: Mapping[str, str]) -> Text:
    return safe_text(", ".join(f"{key}={value}" for key, value in sorted(mapping.items())))


def job_detail(job: Job, note: str | None = None) -> Group:
    """The ``get`` view: fields, progress, counters, steps, error and result;
    ``note`` (e.g. that no live worker serves its kind) under the state."""
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column(overflow="fold")

    def row(name: str, value: RenderableType | None) -> None:
        fields.add_row(name, value if value is not None else "-")

    row("id", safe_text(job.id))
    row("kind", safe_text(job.kind))
    row("state", state_text(job.state, cancel_requested=job.cancel_requested))
    if note:
        row("note", safe_text(note, "yellow"))
    row("attempt", _attempts(job))
    row("queue", safe_text(job.queue))
    row("priority", str(job.priority))
    if job.labels:
        row("labels", _pairs(job.labels))
    row("params", _json_block(job.params) if job.params else None)
    if job.owner:
        row("owner", safe_text(job.owner))
    if job.request_id:
        row("request id", safe_text(job.request_id))
    if job.worker_id:
        row("worker", safe_text(job.worker_id))
    row("created", format_time(job.create_time))
    if job.schedule_time is not None and (
        job.create_time is None or job.schedule_time > job.create_time
    ):
        row("not before", format_time(job.schedule_time))
    row("started", format_time(job.start_time))
    row("ended", format_time(job.end_time))
    row("updated", format_time(job.update_time))
    ran = run_time(job)
    if ran is not None:
        row("ran" if job.state.terminal else "running for", format_duration(ran))
    row("last seq", str(job.last_seq))
    row("progress", progress_line(job.progress, job.state))
    if job.checkpoint is not None:
        row("checkpoint", _json_block(job.checkpoint))
    if job.server_paths:
        row("files", safe_text("\n".join(job.server_paths), multiline=True))
    counters = job.counters
    row(
        "items",
        Text.assemble(
            (f"{counters.succeeded} succeeded", "green"),
            ", ",
            (f"{counters.failed} failed", "red" if counters.failed else ""),
            ", ",
            f"{counters.skipped} skipped",
        ),
    )
    parts: list[RenderableType] = [fields]
    if job.steps:
        parts.append(steps_table(job.steps))
    if job.error is not None:
        error = styled("error: ", "bold red")
        error.append_text(safe_text(job.error.code, "red"))
        if job.error.message:
            error.append(": ")
            error.append_text(safe_text(job.error.message, multiline=True))
        parts.append(error)
        details = dict(job.error.details)
        traceback = details.pop("traceback", None)
        if details:
            parts.append(_json_block(details))
        if isinstance(traceback, str) and traceback:
            parts.append(safe_text(traceback.rstrip("\n"), "dim", multiline=True))
    if job.result is not None:
        parts.append(styled("result:", "bold green"))
        parts.append(_json_block(job.result))
    return Group(*parts)
