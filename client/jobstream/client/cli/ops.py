"""The operations commands: retry, results, artifacts, download, purge, stats.

Like the commands in ``commands``, each takes the parsed arguments and
returns the exit status; errors from the server propagate as
``JobstreamError`` for ``main`` to report.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from jobstream.client.cli.exits import EXIT_OK, EXIT_USAGE
from jobstream.client.cli.failures import CommandError
from jobstream.client.cli.jsonout import to_jsonable
from jobstream.client.cli.output import Output, connect
from jobstream.client.cli.render import (
    format_count,
    format_duration,
    format_time,
    safe_text,
    state_text,
    styled,
)
from jobstream.client.client import JobClient
from jobstream.client.models import Artifact, JobState, ResultItem, ResultStatus

__all__ = ["OPS_COMMANDS"]

SHA_SHOWN = 12
"""Hex digits of an artifact's sha256 shown in the table (--json has all)."""


@dataclass(frozen=True, kw_only=True)
class _Filter:
    """The --state/--kind/--label/--queue flags, as client keyword arguments."""

    states: tuple[JobState, ...]
    kinds: tuple[str, ...]
    labels: dict[str, str]
    queues: tuple[str, ...]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> _Filter:
        """The filter the flags ask for."""
        return cls(
            states=tuple(args.state or ()),
            kinds=tuple(args.kind or ()),
            labels=dict(args.label or []),
            queues=tuple(args.queue or ()),
        )


def cmd_retry(args: argparse.Namespace) -> int:
    """``jobstream retry ID``: queue an ended job again as a new attempt."""
    out = Output.from_args(args)
    with connect(args) as client:
        job = client.retry(args.job_id, args.reason, additional_attempts=args.attempts)
    if out.json:
        out.json_out(job)
        return EXIT_OK
    text = safe_text(job.id, "bold").append(" is ").append_text(state_text(job.state))
    text.append(f" again: attempt {job.attempt + 1} of {job.max_attempts} comes next")
    out.line(text)
    return EXIT_OK


def cmd_results(args: argparse.Namespace) -> int:
    """``jobstream results ID``: every key's latest result, in the order
    those were stored, one line each with its data as compact JSON cut to
    the terminal's width; ``--jsonl`` (or ``--json``) streams one JSON object
    per line; ``--status`` keeps only results of those statuses."""
    out = Output.from_args(args)
    as_json = out.json or bool(args.jsonl)
    statuses: set[ResultStatus] = set(args.status or ())
    with connect(args) as client:
        for event in client.results(args.job_id):
            item = event.result_item
            if item is None or (statuses and item.status not in statuses):
                continue
            if as_json:
                # replaced_status belongs to watched events, never to a listed result.
                fields = {k: v for k, v in vars_of(item).items() if k != "replaced_status"}
                out.json_out({"seq": event.seq, "time": event.event_time, **fields}, indent=None)
                continue
            out.console.print(_result_line(item), no_wrap=True, overflow="ellipsis", crop=True)
    return EXIT_OK


RESULT_STYLES = {
    ResultStatus.SUCCEEDED: "green",
    ResultStatus.FAILED: "red",
    ResultStatus.SKIPPED: "dim",
}
"""Colour of each result status."""

STATUS_WIDTH = max(len(status.value) for status in ResultStatus)
"""Width of the status column of ``results``, so data starts in one column
for keys of one length."""


def _result_line(item: ResultItem) -> Text:
    """``key  status  error  {"compact": "json"}``: one line, cut by the caller."""
    rest = Text()
    if item.error:
        rest.append("  ").append_text(safe_text(item.error, "red"))
    if item.data:
        data = json.dumps(
            item.data, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str
        )
        rest.append("  ").append_text(safe_text(data, "dim"))
    status = f"{item.status.value:<{STATUS_WIDTH}}" if rest else item.status.value
    line = safe_text(item.key, "bold").append("  ")
    line.append(status, RESULT_STYLES.get(item.status, ""))
    return line.append_text(rest)


def vars_of(value: object) -> dict[str, Any]:
    """A model's fields as JSON-able data, to merge into one JSON object."""
    data = to_jsonable(value)
    assert isinstance(data, dict)
    return data


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


def cmd_artifacts(args: argparse.Namespace) -> int:
    """``jobstream artifacts ID``: the job's output files."""
    out = Output.from_args(args)
    with connect(args) as client:
        found = client.artifacts(args.job_id)
    if out.json:
        out.json_out(found)
        return EXIT_OK
    if not found:
        out.line(styled("no artifacts", "dim"))
        return EXIT_OK
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "SIZE", "SHA256", "TYPE", "ATTEMPT", "CREATED"):
        table.add_column(column, no_wrap=True, justify="right" if column == "SIZE" else "left")
    for artifact in found:
        table.add_row(
            safe_text(artifact.name),
            _size(artifact.size_bytes),
            artifact.sha256[:SHA_SHOWN],
            safe_text(artifact.content_type or "-"),
            str(artifact.attempt),
            format_time(artifact.create_time),
        )
    out.console.print(table)
    return EXIT_OK


def _artifact_named(client: JobClient, job_id: str, name: str) -> Artifact:
    """The job's artifact ``name``, or NOT_FOUND naming the ones it has."""
    found = client.artifacts(job_id)
    for artifact in found:
        if artifact.name == name:
            return artifact
    has = ", ".join(a.name for a in found) if found else "none"
    raise CommandError(
        f"job {job_id!r} has no artifact {name!r} (it has: {has})", code="NOT_FOUND", field="name"
    )


def cmd_download(args: argparse.Namespace) -> int:
    """``jobstream download ID NAME [-o FILE]``: with a progress bar on
    stderr; the file is checked against the artifact's sha256. An existing
    file is kept unless ``--force`` (replace it) or ``--resume`` (continue it)."""
    out = Output.from_args(args)
    target = Path(args.output or args.name)
    if target.is_dir():
        target = target / args.name
    with connect(args) as client:
        # Asked first, so that a wrong job or name is said before any
        # progress bar is drawn or any file is touched.
        expected = _artifact_named(client, args.job_id, args.name)
        if target.exists() and not (args.force or args.resume):
            raise CommandError(
                f"{target} exists; --force replaces it, --resume continues a partial download"
            )
        # stderr, so `-o /dev/stdout`-style use and --json keep stdout clean.
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=out.json,
        )
        task = progress.add_task(args.name, total=expected.size_bytes)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        with progress:
            artifact = client.download(
                args.job_id, args.name, target, resume=bool(args.resume), on_progress=advance
            )
    if out.json:
        out.json_out({"path": str(target), "artifact": artifact})
    else:
        text = Text("saved ").append_text(safe_text(artifact.name, "bold")).append(" to ")
        text.append_text(safe_text(str(target)))
        text.append(f" ({_size(artifact.size_bytes)}, sha256 verified)")
        out.line(text)
    return EXIT_OK


def cmd_purge(args: argparse.Namespace) -> int:
    """``jobstream purge --older-than 30d [--dry-run]``."""
    out = Output.from_args(args)
    older_than: timedelta | None = args.older_than
    if older_than is None:
        print("error: purge needs --older-than (e.g. 30d; 0 for every ended job)", file=sys.stderr)
        return EXIT_USAGE
    with connect(args) as client:
        flt = _Filter.from_args(args)
        result = client.purge(
            older_than=older_than,
            dry_run=bool(args.dry_run),
            states=flt.states,
            kinds=flt.kinds,
            labels=flt.labels,
            queues=flt.queues,
        )
    if out.json:
        out.json_out({"dry_run": bool(args.dry_run), **vars_of(result)})
        return EXIT_OK
    verb = "would delete" if args.dry_run else "deleted"
    out.line(Text(f"{verb} {result.purged_count} job(s)", "bold"))
    for job_id in result.job_ids:
        out.line(Text("  ").append_text(safe_text(job_id)))
    if len(result.job_ids) < result.purged_count:
        out.line(styled(f"  … and {result.purged_count - len(result.job_ids)} more", "dim"))
    for path in result.refused_paths:
        line = styled("  refused (outside the data directory, left in place) ", "yellow")
        out.line(line.append_text(safe_text(path)))
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    """``jobstream stats``: counts by state and kind, and the window's
    success rate, run-time percentiles and throughput."""
    out = Output.from_args(args)
    with connect(args) as client:
        flt = _Filter.from_args(args)
        stats = client.stats(
            window=args.window,
            states=flt.states,
            kinds=flt.kinds,
            labels=flt.labels,
            queues=flt.queues,
        )
    if out.json:
        out.json_out(stats)  # spans in seconds
        return EXIT_OK
    states = [s for s in JobState if s in stats.by_state]
    out.line(styled("jobs by kind and state", "bold"))
    table = Table(box=None, pad_edge=False)
    table.add_column("KIND", no_wrap=True)
    for state in states:
        table.add_column(state.value.upper(), justify="right")
    table.add_column("TOTAL", justify="right")
    for kind, counts in sorted(stats.by_kind.items()):
        cells = [str(counts.get(s, 0)) for s in states]
        table.add_row(safe_text(kind), *cells, str(sum(counts.values())))
    totals = [str(stats.by_state[s]) for s in states]
    table.add_row(Text("all", "bold"), *totals, str(sum(stats.by_state.values())))
    out.console.print(table)
    n = stats.ended_count
    ended = "1 job ended" if n == 1 else f"{format_count(n)} jobs ended"
    out.line(styled(f"last {format_duration(stats.window)}: ", "bold").append(ended))
    if stats.ended_count:
        out.line(Text(f"  success rate {stats.success_rate:.1%} (cancelled jobs not counted)"))
        p50, p95 = format_duration(stats.duration_p50), format_duration(stats.duration_p95)
        out.line(Text(f"  run time p50 {p50}, p95 {p95} (succeeded and failed jobs)"))
    out.line(Text(f"  throughput {stats.throughput_per_minute:.2f} jobs/min"))
    return EXIT_OK


OPS_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "retry": cmd_retry,
    "results": cmd_results,
    "artifacts": cmd_artifacts,
    "download": cmd_download,
    "purge": cmd_purge,
    "stats": cmd_stats,
}
"""Command name -> implementation, merged into ``commands.COMMANDS`` by ``main``."""
