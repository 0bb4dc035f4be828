"""Exit statuses of the ``jobstream`` command, one meaning each.

``watch`` (and ``submit --watch``, ``logs --follow``) report how the job
ended, so a script can branch on a job's outcome without parsing output.
"""

from __future__ import annotations

from jobstream.client.models import JobState

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_CANCELLED",
    "EXIT_INTERRUPTED",
    "EXIT_JOB_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "exit_code_for",
]

EXIT_OK = 0
"""The command did what it was asked; a watched job succeeded."""

EXIT_JOB_FAILED = 1
"""A watched job ended FAILED or INTERRUPTED."""

EXIT_USAGE = 2
"""Bad usage, or the server refused or could not be reached (as argparse uses 2)."""

EXIT_CANCELLED = 3
"""A watched job ended CANCELLED."""

EXIT_INTERRUPTED = 130
"""The command itself was stopped with Ctrl-C (128 + SIGINT, as shells report it)."""

EXIT_BROKEN_PIPE = 141
"""Whoever read stdout went away (``| head``): 128 + SIGPIPE, as for any
command a closed pipe stops. Neither success nor a job's failure."""


def exit_code_for(state: JobState) -> int:
    """The exit status for a watched job that ended in ``state``.

    A state that is not terminal means the watch ended before the job did,
    which the caller reports as an error.
    """
    if state is JobState.SUCCEEDED:
        return EXIT_OK
    if state is JobState.CANCELLED:
        return EXIT_CANCELLED
    if state in (JobState.FAILED, JobState.INTERRUPTED):
        return EXIT_JOB_FAILED
    return EXIT_USAGE
