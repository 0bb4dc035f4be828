"""``jobstream rm``: delete jobs, with their events and files, after saying
which and asking, on a terminal.

Takes the parsed arguments and returns the exit status; errors from the
server propagate as ``JobstreamError`` for ``main`` to report.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.text import Text

from jobstream.client.cli.exits import EXIT_OK, EXIT_USAGE
from jobstream.client.cli.failures import CommandError, failure_of, report
from jobstream.client.cli.jsonout import to_jsonable
from jobstream.client.cli.output import Output, connect
from jobstream.client.cli.render import safe_text, state_text, styled
from jobstream.client.client import JobClient
from jobstream.client.errors import JobstreamError, NotFoundError
from jobstream.client.models import DeleteResult, JobState

__all__ = ["CONFIRM_WORDS", "cmd_rm"]

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
    with connect(args) as client:
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
