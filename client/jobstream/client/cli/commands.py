"""The client commands: submit, watch, ls, get, logs, cancel.

Each takes the parsed arguments and returns the exit status; errors from
the server propagate as ``JobstreamError`` for ``main`` to report.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from itertools import islice
from typing import Any

from jobstream.client.cli.exits import EXIT_OK, EXIT_USAGE, exit_code_for
from jobstream.client.cli.output import Output, connect
from jobstream.client.cli.presence import unserved, warn_at_submit
from jobstream.client.cli.render import (
    format_count,
    job_detail,
    job_table,
    log_line,
    safe_text,
    state_text,
    styled,
)
from jobstream.client.cli.watchview import only_events, watch_live
from jobstream.client.client import JobClient
from jobstream.client.errors import JobstreamError
from jobstream.client.models import Job, JobEvent, JobState
from jobstream.client.operations import DEFAULT_EVENT_PAGE_SIZE

__all__ = ["COMMANDS"]

MAX_PAGE_SIZE = 1000
"""Largest ListJobs page the server accepts."""

MIN_STATS_WINDOW = timedelta(seconds=1)
"""The shortest window GetStats takes: when only its counts are wanted, the
figures over the window cost least."""


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
        note = None if out.json else unserved(client, snapshot)
        if note is not None:
            out.line(styled(f"note: {note}; the job waits until one does", "yellow"))
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
    with connect(args) as client:
        job = client.submit(
            args.kind,
            params,
            job_id=args.id or None,
            queue=args.queue,
            priority=args.priority,
            labels=labels,
            max_attempts=args.max_attempts,
            schedule_time=args.not_before or getattr(args, "in"),
            request_id=args.request_id or None,
        )
        warn_at_submit(client, job)
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
    with connect(args) as client:
        return _watch(client, args.job_id, args.after_seq, out)


MORE_COUNT_TIMEOUT = 2.0
"""Seconds ``ls`` gives GetStats to count the jobs a ``--limit`` left out;
beyond that (a huge table) it only says that more match."""


def _more_count(args: argparse.Namespace, shown: int) -> int | None:
    """How many jobs match beyond the ``shown`` ones, from GetStats' counts by
    state over the same filter (its window at the minimum, so it does no
    more than count); None when that is not cheap or not allowed, or when
    the listing's filter is one GetStats does not take (times, text, params)."""
    if args.since or args.until or args.ended_since or args.grep or args.param:
        return None
    try:
        with connect(args, timeout=MORE_COUNT_TIMEOUT) as client:
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
    with connect(args) as client:
        # One job beyond the limit says whether more match, at the cost of
        # one row rather than of another page.
        found = client.list(
            states=tuple(args.state or ()),
            kinds=tuple(args.kind or ()),
            labels=dict(args.label or []),
            queues=tuple(args.queue or ()),
            page_size=min(limit + 1, MAX_PAGE_SIZE),
            created_after=args.since,
            created_before=args.until,
            ended_after=args.ended_since,
            text=args.grep,
            params=dict(args.param or []),
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
    with connect(args) as client:
        job = client.get(args.job_id)
        note = None if out.json else unserved(client, job)
    if out.json:
        out.json_out(job)
    else:
        out.console.print(job_detail(job, note))
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

    with connect(args) as client:
        if not args.follow:
            for event in client.logs(
                args.job_id,
                level=args.level,
                text=args.grep,
                since=args.since,
                tail=args.tail or 0,
                page_size=max(args.tail or 0, DEFAULT_EVENT_PAGE_SIZE),
            ):
                show(event)
            return EXIT_OK
        if args.level or args.grep or args.since or args.tail:
            print("error: --follow shows every line; give it without filters", file=sys.stderr)
            return EXIT_USAGE
        # A watch from seq 0 replays every stored event and then the live
        # ones, so each line shows exactly once with no stitching of a
        # ListJobLogs listing onto a watch.
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
    with connect(args) as client:
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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "submit": cmd_submit,
    "watch": cmd_watch,
    "ls": cmd_ls,
    "get": cmd_get,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
}
"""Command name -> implementation, for ``main``."""
