"""Domain errors: what a caller can act on, in the server's own terms.

They know nothing of gRPC: :mod:`jobstream.server.status` maps each class to
a status code, in one place. Every raise site names the request ``field`` at
fault when there is one, and may state a ``reason``: a stable,
machine-readable UPPER_SNAKE_CASE word for what went wrong (``LEASE_EXPIRED``),
with ``metadata`` (string keys and values) for the particulars, so a client
can branch on it without parsing the message.
"""

from __future__ import annotations

from collections.abc import Mapping


class ServiceError(Exception):
    """An error a caller can act on; ``field`` names the request field at fault."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason = reason
        """What went wrong, as a stable word clients may branch on; None
        when the raise site states none."""
        self.metadata: Mapping[str, str] = dict(metadata or {})
        """The particulars of ``reason`` (e.g. the limit that was reached)."""

    def details(self) -> str:
        """The message the caller reads: ``field: message``."""
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidArgument(ServiceError):
    """A request field is malformed or beyond its limit."""


class NotFound(ServiceError):
    """The named job does not exist (or is not the caller's)."""


class AlreadyExists(ServiceError):
    """A job id or request_id is taken by a different job."""


class FailedPrecondition(ServiceError):
    """The job is not in a state that allows the call (or the lease is stale)."""


class OutOfRange(ServiceError):
    """A resume point lies outside the kept history."""


class Aborted(ServiceError):
    """The call lost a race with a concurrent change; starting it again may succeed."""


class ResourceExhausted(ServiceError):
    """A configured limit was reached."""


class Unavailable(ServiceError):
    """The store cannot take writes right now (e.g. disk full); try again."""


def not_found(job_id: str) -> NotFound:
    """The one wording for an unknown job."""
    return NotFound(f"no job {job_id!r}", field="job_id")
