"""The client commands: submit, watch, ls, get, logs, cancel, rm.

Each takes the parsed arguments and returns the exit status; errors from
the server propagate as ``JobstreamError`` for ``main`` to report.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from itertools import islice
from typing import Any

from rich.console import Console
from rich.text import Text

from jobstream.client.cli.exits import EXIT_OK, EXIT_USAGE, exit_code_for
from jobstream.client.cli.failures import CommandError, failure_of, report
from jobstream.client.cli.jsonout import print_json, to_jsonable
from jobstream.client.cli.render import (
    format_count,
    job_detail,
    job_table,
    log_line,
    safe_text,
    state_text,
    styled,
)
from jobstream.client.cli.top import cmd_top
from jobstream.client.cli.watchview import only_events, watch_live
from jobstream.client.client import JobClient
from jobstream.client.errors import JobstreamError, NotFoundError
from jobstream.client.models import DeleteResult, Job, JobEvent, JobState
from jobstream.client.security import cli_security

__all__ = ["COMMANDS", "Output"]

MAX_PAGE_SIZE = 1000
"""Largest ListJobs page the server accepts."""

MIN_STATS_WINDOW = timedelta(seconds=1)
"""The shortest window GetStats takes: when only its counts are wanted, the
figures over the window cost least."""

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
def _client(args: argparse.Namespace, *, timeout: float | None = None) -> Iterator[JobClient]:
    """A client of the server the flags name, with their ``--timeout``
    unless given a shorter one."""
    seconds: float | None = args.timeout or None
    if timeout is not None:
        seconds = timeout if seconds is None else min(seconds, timeout)
    with JobClient(args.target, timeout=seconds, security=cli_security(args)) as client:
        yield client


def _close(iterator: Iterator[Any]) -> None:
    """Cancel a server stream we stop reading early."""
    close: Callable[[], None] | None = getattr(iterator, "close", None)
    if close is not None:
        close()


def _watch(client: JobClient, job_id: str, after_seq: int, out: Output) -> int:
    """Follow one job to its end; the exit status says how it ended."""
    stream = client.watch(job_id, after_seq=after_seq)
    try:
        snapshot = next(stream, None)
        if not isinstance(snapshot, Job):
            print(f"error: the watch of {job_id!r} sent no snapshot", file=sys.stderr)
            return EXIT_USAGE
        state = snapshot.state
        if out.json:
            out.json_out({"snapshot": snapshot}, indent=None)
            for item in stream:
                if isinstance(item, JobEvent):
                    out.json_out({"event": item}, indent=None)
                    if item.state_change is not None:
                        state = item.state_change.state
        else:
            state = watch_live(out.console, snapshot, only_events(stream)).state
    finally:
        _close(stream)
    return _final_status(client, job_id, state)


def _final_status(client: JobClient, job_id: str, state: JobState) -> int:
    if not state.terminal:
        # The stream ends only after the terminal event; ending sooner
        # means it was cut, so ask once more before calling it an error.
        state = client.get(job_id).state
    if not state.terminal:
        print(f"error: the watch of {job_id!r} ended while the job is {state}", file=sys.stderr)
    return exit_code_for(state)


def cmd_submit(args: argparse.Namespace) -> int:
    """``jobstream submit KIND``: print the new job's id (or the job as JSON)."""
    out = Output.from_args(args)
    params: dict[str, Any] = dict(args.params_json or {})
    params.update(dict(args.param or []))
    labels: dict[str, str] = dict(args.label or [])
    if args.not_before is not None and getattr(args, "in") is not None:
        print("error: give --in or --not-before, not both", file=sys.stderr)
        return EXIT_USAGE
    with _client(args) as client:
        job = client.submit(
            args.kind,
            params,
            job_id=args.id or None,
            queue=args.queue,
            priority=args.priority,
            labels=labels,
            max_attempts=args.max_attempts,
            not_before=args.not_before or getattr(args, "in"),
            request_id=args.request_id or None,
        )
        if args.watch:
            # --json --watch prints the watch stream alone: its snapshot
            # line is the submitted job, so nothing is said twice.
            if not out.json:
                out.line(safe_text(job.id))
            return _watch(client, job.id, 0, out)
    if out.json:
        out.json_out(job)
    else:
        out.line(safe_text(job.id))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    """``jobstream watch ID``: live progress and log until the job ends."""
    out = Output.from_args(args)
    with _client(args) as client:
        return _watch(client, args.job_id, args.after_seq, out)


MORE_COUNT_TIMEOUT = 2.0
"""Seconds ``ls`` gives GetStats to count the jobs a ``--limit`` left out;
beyond that (a huge table) it only says that more match."""


def _more_count(args: argparse.Namespace, shown: int) -> int | None:
    """How many jobs match beyond the ``shown`` ones, from GetStats' counts by
    state over the same filter (its window at the minimum, so it does no
    more than count); None when that is not cheap or not allowed."""
    try:
        with _client(args, timeout=MORE_COUNT_TIMEOUT) as client:
            stats = client.stats(
                window=MIN_STATS_WINDOW,
                states=tuple(args.state or ()),
                kinds=tuple(args.kind or ()),
                labels=dict(args.label or []),
                queues=tuple(args.queue or ()),
            )
    except JobstreamError:
        return None
    more = sum(stats.by_state.values()) - shown
    # Jobs submitted or deleted between the two calls can make the count
    # disagree with the listing; then it only says that more match.
    return more if more > 0 else None


def cmd_ls(args: argparse.Namespace) -> int:
    """``jobstream ls``: a table (or JSON array) of jobs, newest first; with
    more matches than ``--limit``, how many more."""
    out = Output.from_args(args)
    limit: int = args.limit
    with _client(args) as client:
        # One job beyond the limit says whether more match, at the cost of
        # one row rather than of another page.
        found = client.list(
            states=tuple(args.state or ()),
            kinds=tuple(args.kind or ()),
            labels=dict(args.label or []),
            queues=tuple(args.queue or ()),
            page_size=min(limit + 1, MAX_PAGE_SIZE),
        )
        jobs = list(islice(found, limit + 1))
        _close(found)
        more = len(jobs) > limit
        jobs = jobs[:limit]
    more_count = _more_count(args, len(jobs)) if more and not out.json else None
    if out.json:
        out.json_out(jobs)
        return EXIT_OK
    if not jobs:
        out.line(styled("no jobs", "dim"))
        return EXIT_OK
    out.console.print(job_table(jobs, out.console))
    if more:
        counted = f"{format_count(more_count)} more" if more_count else "more jobs match"
        out.line(styled(f"… {counted}; --limit to see more", "dim"))
    return EXIT_OK


def cmd_get(args: argparse.Namespace) -> int:
    """``jobstream get ID``: one job in detail."""
    out = Output.from_args(args)
    with _client(args) as client:
        job = client.get(args.job_id)
    if out.json:
        out.json_out(job)
    else:
        out.console.print(job_detail(job))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    """``jobstream logs ID [-f]``: the job's log lines; ``-f`` until it ends."""
    out = Output.from_args(args)

    def show(event: JobEvent) -> None:
        if event.log is None:
            return
        if out.json:
            out.json_out(event, indent=None)
        else:
            out.line(log_line(event, date=True))

    with _client(args) as client:
        if not args.follow:
            for event in client.logs(args.job_id):
                show(event)
            return EXIT_OK
        # A watch from seq 0 replays every stored event and then the live
        # ones, so each line shows exactly once with no stitching of a
        # GetJobLogs listing onto a watch.
        stream = client.watch(args.job_id)
        state: JobState | None = None
        try:
            for item in stream:
                if isinstance(item, Job):
                    state = item.state
                    continue
                show(item)
                if item.state_change is not None:
                    state = item.state_change.state
        finally:
            _close(stream)
        if state is None:
            print(f"error: the watch of {args.job_id!r} sent no snapshot", file=sys.stderr)
            return EXIT_USAGE
        return _final_status(client, args.job_id, state)


def cmd_cancel(args: argparse.Namespace) -> int:
    """``jobstream cancel ID``: cancel a queued job, or ask a running one to stop."""
    out = Output.from_args(args)
    with _client(args) as client:
        job = client.cancel(args.job_id, args.reason)
    if out.json:
        out.json_out(job)
        return EXIT_OK
    text = safe_text(job.id, "bold")
    if job.state is JobState.CANCELLED:
        text.append(" cancelled")
    elif job.cancel_requested and not job.state.terminal:
        text.append(" asked to stop; it ends cancelled when its worker stops")
    else:
        text.append(" is ")
        text.append_text(state_text(job.state))
    out.line(text)
    return EXIT_OK


CONFIRM_WORDS = frozenset({"y", "yes"})
"""Answers to ``rm``'s question that mean yes (any case); anything else is no."""


def _interactive(out: Output) -> bool:
    """Whether someone at a terminal can be asked: stdin and stdout are
    terminals and the output is not JSON for a script."""
    return not out.json and sys.stdin.isatty() and out.console.is_terminal


def _doomed_row(client: JobClient, job_id: str, *, allow_missing: bool, force: bool) -> Text:
    """One line of what ``rm`` is about to delete: id, kind, state, and what
    happens to it. A missing job is an error here unless ``allow_missing``,
    so nothing is deleted when one id is wrong."""
    try:
        job = client.get(job_id)
    except NotFoundError:
        if not allow_missing:
            raise
        return safe_text(job_id, "bold").append("  does not exist; skipped", "dim")
    text = safe_text(job.id, "bold").append("  ").append_text(safe_text(job.kind))
    text.append("  ").append_text(state_text(job.state, cancel_requested=job.cancel_requested))
    if job.state is JobState.RUNNING:
        text.append(
            "  cancelled first" if force else "  running: refused without --force",
            "yellow",
        )
    return text


def _confirm(client: JobClient, args: argparse.Namespace, job_ids: list[str], out: Output) -> bool:
    """Show what would be deleted and ask; True to go ahead."""
    rows = [
        _doomed_row(client, job_id, allow_missing=args.allow_missing, force=args.force)
        for job_id in job_ids
    ]
    out.line(styled(f"about to delete {len(job_ids)} job(s) with their events and files:", "bold"))
    for row in rows:
        out.line(Text("  ").append_text(row))
    out.console.print("delete them? [y/N] ", end="")
    answer = sys.stdin.readline()
    return answer.strip().lower() in CONFIRM_WORDS


def _deleted_lines(job_id: str, result: DeleteResult, out: Output) -> None:
    text = safe_text(job_id, "bold")
    text.append(" deleted" if result.deleted else " did not exist; nothing deleted")
    out.line(text)
    for path in result.removed_paths:
        out.line(Text("  removed ").append_text(safe_text(path)))
    for path in result.refused_paths:
        # The server never touches a recorded path outside its data
        # directory; someone should look at how it got recorded.
        line = styled("  refused (outside the data directory, left in place) ", "yellow")
        out.line(line.append_text(safe_text(path)))


def cmd_rm(args: argparse.Namespace) -> int:
    """``jobstream rm ID...``: delete jobs and their files; list what was removed.

    On a terminal it first lists the jobs (id, kind, state) and asks, unless
    ``--yes``; elsewhere one id goes at once (as scripts always had it) and
    several need ``--yes``, as nobody is there to answer. ``--json`` never
    asks: one id prints one object, several an array.
    """
    out = Output.from_args(args)
    job_ids = list(dict.fromkeys(args.job_ids))  # each once, in the order given
    ask = not args.yes and (_interactive(out) or len(job_ids) > 1)
    if ask and not _interactive(out):
        raise CommandError(
            f"deleting {len(job_ids)} jobs needs --yes here: nobody can be asked "
            "(stdin or stdout is not a terminal, or --json)"
        )
    with _client(args) as client:
        if ask and not _confirm(client, args, job_ids, out):
            out.line(styled("nothing deleted", "dim"))
            return EXIT_OK
        if len(job_ids) == 1:
            result = client.delete(job_ids[0], force=args.force, allow_missing=args.allow_missing)
            if out.json:
                out.json_out({"job_id": job_ids[0], **to_jsonable(result)})
            else:
                _deleted_lines(job_ids[0], result, out)
            return EXIT_OK
        return _rm_several(client, args, job_ids, out)


def _rm_several(
    client: JobClient, args: argparse.Namespace, job_ids: list[str], out: Output
) -> int:
    """Delete each job in turn; one that is refused does not stop the others,
    and makes the exit status 2."""
    answers: list[dict[str, Any]] = []
    status = EXIT_OK
    for job_id in job_ids:
        try:
            result = client.delete(job_id, force=args.force, allow_missing=args.allow_missing)
        except JobstreamError as exc:
            status = EXIT_USAGE
            failure = failure_of(exc, target=args.target, timeout=args.timeout)
            if out.json:
                answers.append({"job_id": job_id, **failure.jsonable()})
            else:
                report(failure, as_json=False)
            continue
        if out.json:
            answers.append({"job_id": job_id, **to_jsonable(result)})
        else:
            _deleted_lines(job_id, result, out)
    if out.json:
        out.json_out(answers)
    return status


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "submit": cmd_submit,
    "watch": cmd_watch,
    "ls": cmd_ls,
    "get": cmd_get,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "rm": cmd_rm,
    "top": cmd_top,
}
"""Command name -> implementation, for ``main``."""
