"""Domain errors, and the one place they become gRPC status codes."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """An error a caller can act on; ``field`` names the request field at fault."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def details(self) -> str:
        """The status message sent on the wire: ``field: message``."""
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidArgument(ServiceError):
    """A request field is malformed or beyond its limit."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    """The named job does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    """A job id or request_id is taken by a different job."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    """The job is not in a state that allows the call (or the lease is stale)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(ServiceError):
    """A resume point lies outside the kept history."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Aborted(ServiceError):
    """The call lost a race with a concurrent change; starting it again may succeed."""

    code = grpc.StatusCode.ABORTED


class ResourceExhausted(ServiceError):
    """A configured limit was reached."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """The store cannot take writes right now (e.g. disk full); try again."""

    code = grpc.StatusCode.UNAVAILABLE


def not_found(job_id: str) -> NotFound:
    """The one wording for an unknown job."""
    return NotFound(f"no job {job_id!r}", field="job_id")
