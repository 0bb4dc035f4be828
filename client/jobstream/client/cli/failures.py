"""How the ``jobstream`` command reports what went wrong: one line on stderr
that says what is wrong and, where the fix is known, what to do; with
``--json``, one JSON object on stderr instead, so stdout holds the answer or
nothing and ``jobstream get ID --json | jq`` never mistakes an error for a
job.

Kept free of rich so errors can be reported even without the ``[cli]`` extra.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from jobstream.client.cli.escape import sanitize
from jobstream.client.cli.jsonout import print_json
from jobstream.client.errors import JobstreamError, unreachable_reason

__all__ = ["USAGE_CODE", "CommandError", "Failure", "failure_of", "report"]

USAGE_CODE = "USAGE"
"""The code of a command's own refusals in ``--json`` errors (gRPC codes
name the server's)."""

START_HINT = (
    "Is it running? Start it with `make run` or `jobstream serve`, "
    "or point --target / JOBSTREAM_TARGET at it."
)
"""What to do when nothing answers at the target."""

HINTS = {
    "host name not found": "Check the host in --target / JOBSTREAM_TARGET.",
    "network unreachable": "Check the address in --target / JOBSTREAM_TARGET.",
    "TLS handshake failed": "Does the server use TLS? --ca, --cert and --key "
    "(JOBSTREAM_CA, JOBSTREAM_CERT, JOBSTREAM_KEY) must match how it serves.",
}
"""What to do, by why the server could not be reached (``START_HINT`` otherwise)."""


class CommandError(Exception):
    """A command refuses to go on (a file it would overwrite, an artifact
    that is not there); reported like a server's error, exit status 2."""

    def __init__(self, message: str, *, code: str = USAGE_CODE, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field


@dataclass(frozen=True, kw_only=True, slots=True)
class Failure:
    """What went wrong, ready to print."""

    code: str
    """A gRPC status name, or ``USAGE`` for the command's own refusals."""
    message: str
    field: str | None = None
    """The request field at fault, as the server named it."""
    target: str | None = None
    reason: str | None = None
    """Why it failed, in one word for programs: the server's reason
    (``JOB_NOT_FOUND``, see the README's API section), or, when the server
    could not be reached, why (``connection refused``)."""
    metadata: dict[str, str] | None = None
    """The particulars of the server's reason (``jobId``, ``limit`` …)."""
    unreachable: bool = False
    """Whether no server answered (then the message says so, without a code)."""
    hint: str | None = None
    """What to do about it, when known."""
    detail: str | None = None
    """gRPC's own words, when ``message`` says it more plainly."""

    def text(self) -> str:
        """The one line printed on stderr (after ``error: ``)."""
        line = self.message
        if not self.unreachable and self.code != USAGE_CODE:
            line = f"{self.code}: {line}"
        return f"{line} {self.hint}" if self.hint else line

    def jsonable(self) -> dict[str, Any]:
        """The ``--json`` form: ``{"error": {...}}`` with every field."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "field": self.field,
                "target": self.target,
                "reason": self.reason,
                "metadata": self.metadata,
                "hint": self.hint,
                "detail": self.detail,
            }
        }


def failure_of(
    error: JobstreamError | CommandError, *, target: str | None, timeout: float | None = None
) -> Failure:
    """The report of ``error`` from a command talking to ``target`` with
    calls of ``timeout`` seconds."""
    if isinstance(error, CommandError):
        return Failure(code=error.code, message=error.message, field=error.field)
    reason = unreachable_reason(error)
    if reason is not None:
        return Failure(
            code=error.code.name,
            message=f"cannot reach the jobstream server at {target} ({reason}).",
            target=target,
            reason=reason,
            unreachable=True,
            hint=HINTS.get(reason, START_HINT),
            detail=error.message,
        )
    hint: str | None = None
    if error.code.name == "DEADLINE_EXCEEDED" and timeout:
        hint = (
            f"(no answer from {target} within {timeout:g} s; "
            "--timeout or JOBSTREAM_TIMEOUT gives it longer)"
        )
    return Failure(
        code=error.code.name,
        message=error.message,
        field=error.field,
        target=target,
        reason=error.reason,
        metadata=dict(error.metadata) if error.metadata else None,
        hint=hint,
    )


def report(failure: Failure, *, as_json: bool) -> None:
    """Print ``failure`` on stderr: one line of text, or of JSON."""
    if as_json:
        print_json(failure.jsonable(), file=sys.stderr)
        return
    # The message can quote what the caller sent (an id, a kind), so it is
    # escaped like any other untrusted text before it reaches the terminal.
    print(f"error: {sanitize(failure.text())}", file=sys.stderr)
