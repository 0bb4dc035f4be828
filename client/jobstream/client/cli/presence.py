"""Who serves which kind: ``jobstream workers``, the note ``get``, ``watch``
and ``top`` show on a queued job no live worker serves, and the warning
``submit`` prints for a kind no worker has served lately.

The notes are advice, not the job's data: when the workers cannot be read
(a token whose role may not list them, an old server) they are left out
rather than failing the command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

from rich.table import Table

from jobstream.client.cli.exits import EXIT_OK
from jobstream.client.cli.output import Output, connect
from jobstream.client.cli.render import format_duration, safe_text, styled
from jobstream.client.client import JobClient
from jobstream.client.errors import JobstreamError
from jobstream.client.models import Job, JobState, WorkerInfo, unserved_note

__all__ = ["cmd_workers", "read_workers", "submit_warning", "unserved", "warn_at_submit"]


def read_workers(client: JobClient) -> list[WorkerInfo] | None:
    """The workers the servers saw, or None when they cannot be read."""
    try:
        return list(client.workers())
    except JobstreamError:
        return None


def unserved(client: JobClient, job: Job) -> str | None:
    """The note for a queued job no live worker serves; None otherwise (or
    when the workers cannot be read)."""
    if job.state is not JobState.QUEUED:
        return None
    workers = read_workers(client)
    return None if workers is None else unserved_note(job, workers)


def submit_warning(job: Job, workers: Iterable[WorkerInfo]) -> str | None:
    """What ``submit`` says when no worker seen within the last hour (the
    servers' memory of workers) serves the job's kind on its queue."""
    if any(w.serves(job.kind, job.queue) for w in workers):
        return None
    return (
        f"warning: no worker has served kind {job.kind} on queue {job.queue} in the last hour; "
        "the job waits until one does (`jobstream workers` lists them)"
    )


def warn_at_submit(client: JobClient, job: Job) -> None:
    """Prints the submit warning on stderr, if there is one to print."""
    workers = read_workers(client)
    warning = None if workers is None else submit_warning(job, workers)
    if warning is not None:
        print(warning, file=sys.stderr)


def cmd_workers(args: argparse.Namespace) -> int:
    """``jobstream workers``: the workers seen within the last hour."""
    out = Output.from_args(args)
    with connect(args) as client:
        workers = list(client.workers())
    if out.json:
        out.json_out(workers)
        return EXIT_OK
    if not workers:
        out.line(styled("no workers seen in the last hour", "dim"))
        return EXIT_OK
    now = datetime.now(UTC)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("worker", "host", "kinds", "queues", "jobs", "last seen", "live"):
        table.add_column(column, overflow="fold")
    for w in workers:
        seen = w.last_seen_time
        ago = format_duration(max(0.0, (now - seen).total_seconds())) + " ago" if seen else "-"
        slots = f"{w.running_jobs}/{w.concurrency}" if w.concurrency else str(w.running_jobs)
        table.add_row(
            safe_text(w.worker_id),
            safe_text(w.host),
            safe_text(", ".join(w.kinds)),
            safe_text(", ".join(w.queues)),
            slots,
            ago,
            styled("yes", "green") if w.live else styled("no", "red"),
        )
    out.console.print(table)
    return EXIT_OK
