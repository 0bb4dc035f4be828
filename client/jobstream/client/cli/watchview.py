"""The live view of ``jobstream watch``: a job's progress, phase and steps
pinned at the bottom of the terminal, its log lines scrolling above.

The view is folded from the watch stream (a snapshot, then events), so it
never asks the server for anything itself and shows exactly what the stream
said, in order.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.text import Text

from jobstream.client.cli.render import (
    log_line,
    progress_line,
    safe_text,
    state_text,
    step_line,
    styled,
)
from jobstream.client.models import (
    Counters,
    Job,
    JobError,
    JobEvent,
    JobState,
    ResultStatus,
    Step,
)

__all__ = ["WatchScreen", "WatchView", "only_events", "scroll_line", "watch_live"]

MAX_LIVE_STEPS = 12
"""Steps shown in the live view; older ones are summarised in one line so
a job with hundreds of steps cannot push its progress bar off screen."""

REFRESH_PER_SECOND = 10
"""How often the live view is redrawn while events arrive."""

SCREEN_LINES_KEPT = 1_000
"""Scrolling lines a full-screen watch keeps: more than any screen shows."""


class WatchView:
    """What is known about a watched job, updated event by event.

    ``apply`` runs on the thread reading the stream while rich redraws from
    its own refresh thread, so both hold ``_lock``.
    """

    def __init__(self, job: Job) -> None:
        """Start from the watch snapshot ``job``."""
        self._lock = threading.Lock()
        self.job_id = job.id
        self.kind = job.kind
        self.state = job.state
        self.cancel_requested = job.cancel_requested
        self.attempt = job.attempt
        self.max_attempts = job.max_attempts
        self.progress = job.progress
        self.error: JobError | None = job.error
        self.last_seq = job.last_seq
        self._succeeded = job.counters.succeeded
        self._failed = job.counters.failed
        self._skipped = job.counters.skipped
        self.steps: dict[str, Step] = {step.name: step for step in job.steps}
        # The snapshot counts results up to its own last_seq; a replay from
        # an earlier seq would count them twice.
        self._counted_through = job.last_seq

    @property
    def counters(self) -> Counters:
        """Per-item result counts so far."""
        return Counters(succeeded=self._succeeded, failed=self._failed, skipped=self._skipped)

    def apply(self, event: JobEvent) -> None:
        """Fold one event into the view."""
        with self._lock:
            self.last_seq = max(self.last_seq, event.seq)
            if event.state_change is not None:
                change = event.state_change
                self.state = change.state
                if change.attempt:
                    self.attempt = change.attempt
                if change.error is not None:
                    self.error = change.error
                if change.state is JobState.QUEUED:
                    # A retry starts afresh: the old attempt's cancel is spent.
                    self.cancel_requested = False
            elif event.progress is not None:
                self.progress = event.progress
            elif event.step is not None:
                self.steps[event.step.name] = event.step
            elif event.cancel_requested is not None:
                self.cancel_requested = True
            elif event.result_item is not None and event.seq > self._counted_through:
                # One count per key: an item that replaced an earlier version
                # of its key moves that version's count.
                item = event.result_item
                if item.replaced_status is not None:
                    self._count(item.replaced_status, -1)
                self._count(item.status, 1)

    def _count(self, status: ResultStatus, n: int) -> None:
        if status is ResultStatus.SUCCEEDED:
            self._succeeded += n
        elif status is ResultStatus.FAILED:
            self._failed += n
        elif status is ResultStatus.SKIPPED:
            self._skipped += n

    def __rich__(self) -> RenderableType:
        """The pinned part of the view: header, progress, counters, steps."""
        with self._lock:
            header = safe_text(self.job_id, "bold")
            header.append("  ")
            header.append_text(safe_text(self.kind))
            header.append("  ")
            header.append_text(state_text(self.state, cancel_requested=self.cancel_requested))
            if self.attempt:
                limit = f"/{self.max_attempts}" if self.max_attempts else ""
                header.append(f"  attempt {self.attempt}{limit}", style="dim")
            header.append(f"  seq {self.last_seq}", style="dim")
            parts: list[RenderableType] = [header, progress_line(self.progress, self.state)]
            if self._succeeded or self._failed or self._skipped:
                parts.append(
                    Text(
                        f"items: {self._succeeded} succeeded, {self._failed} failed, "
                        f"{self._skipped} skipped",
                        style="dim",
                    )
                )
            steps = list(self.steps.values())
            if len(steps) > MAX_LIVE_STEPS:
                hidden = len(steps) - MAX_LIVE_STEPS
                parts.append(styled(f"… {hidden} earlier steps", "dim"))
                steps = steps[-MAX_LIVE_STEPS:]
            parts.extend(step_line(step) for step in steps)
            if self.error is not None and self.state.terminal:
                error = styled("error: ", "bold red")
                error.append_text(safe_text(self.error.code, "red"))
                if self.error.message:
                    error.append(": ")
                    error.append_text(safe_text(self.error.message))
                parts.append(error)
            return Group(*parts)


def scroll_line(event: JobEvent) -> Text | None:
    """The line an event adds to the scrolling part (log lines, state
    changes, cancel requests, artifacts), if any."""
    if event.log is not None:
        return log_line(event)
    if event.state_change is not None:
        change = event.state_change
        text = styled("→ ", "dim")
        text.append_text(state_text(change.state))
        if change.reason:
            text.append("  ")
            text.append_text(safe_text(change.reason, "dim"))
        return text
    if event.cancel_requested is not None:
        text = styled("→ cancel requested", "magenta")
        if event.cancel_requested:
            text.append("  ")
            text.append_text(safe_text(event.cancel_requested, "dim"))
        return text
    if event.artifact_added is not None:
        artifact = event.artifact_added
        text = styled("→ artifact ", "cyan")
        text.append_text(safe_text(artifact.name, "bold"))
        text.append(f"  {artifact.size_bytes} bytes", "dim")
        return text
    return None


class WatchScreen:
    """A watch that fills the screen (``top``'s view of one job): the newest
    log lines and state changes above, the pinned part of :class:`WatchView`
    below, then ``footer``. Fed one event at a time by ``apply``, from the
    thread that reads the stream."""

    def __init__(self, snapshot: Job, footer: Text) -> None:
        """Start from the watch snapshot."""
        self._lock = threading.Lock()
        self.view = WatchView(snapshot)
        self.footer = footer
        self._lines: deque[Text] = deque(maxlen=SCREEN_LINES_KEPT)

    def apply(self, event: JobEvent) -> None:
        """Fold one event into the screen."""
        self.view.apply(event)
        line = scroll_line(event)
        if line is not None:
            # One screen line each, cut at the edge, so the count below holds.
            line.no_wrap = True
            line.overflow = "ellipsis"
            with self._lock:
                self._lines.append(line)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """As many of the newest lines as fit above the pinned part."""
        pinned = self.view.__rich__()
        pinned_height = len(console.render_lines(pinned, options, pad=False))
        height = options.height or console.size.height
        room = max(0, height - pinned_height - 1)
        with self._lock:
            lines = list(self._lines)[-room:] if room else []
        blank = [Text()] * (room - len(lines))
        yield Group(*lines, *blank, pinned, self.footer)


def watch_live(console: Console, snapshot: Job, events: Iterable[JobEvent]) -> WatchView:
    """Show ``events`` live on ``console`` and return the final view.

    Log lines and state changes are printed above the pinned view as they
    arrive; on a terminal the pinned part is redrawn in place, elsewhere
    (a pipe, a file) it is printed once, at the end.
    """
    view = WatchView(snapshot)
    with Live(
        view,
        console=console,
        auto_refresh=True,
        refresh_per_second=REFRESH_PER_SECOND,
        transient=False,
        redirect_stdout=False,
        redirect_stderr=False,
    ) as live:
        for event in events:
            view.apply(event)
            line = scroll_line(event)
            if line is not None:
                # soft_wrap: a long log line is not cut into pieces that look
                # like separate lines when the output is a pipe.
                live.console.print(line, soft_wrap=True)
    if not console.is_terminal:
        # rich ends the final frame with a newline only on a terminal.
        console.line()
    return view


def only_events(items: Iterator[Job | JobEvent]) -> Iterator[JobEvent]:
    """The events of a watch stream whose snapshot was already taken."""
    for item in items:
        if isinstance(item, JobEvent):
            yield item
