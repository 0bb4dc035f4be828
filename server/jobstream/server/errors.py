"""Domain errors: what a caller can act on, in the server's own terms.

They know nothing of gRPC: :mod:`jobstream.server.error_details` maps each
class to a status code, in one place. Every raise site names the request
``field`` at fault when there is one, and states a ``reason`` (a value of
the protos' ``ErrorReason``, sent by name in a google.rpc.ErrorInfo) unless
its class's default is the right one, with ``metadata`` (string keys and
values) for the particulars, so a client in any language can branch on it
without parsing the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, TypeAlias

from jobstream.v1 import errors_pb2

Reason: TypeAlias = errors_pb2.ErrorReason.ValueType
"""A value of the protos' ErrorReason enum."""


class ServiceError(Exception):
    """An error a caller can act on; ``field`` names the request field at fault."""

    default_reason: ClassVar[Reason] = errors_pb2.INTERNAL_ERROR
    """The reason of a raise site that states none."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason: Reason = self.default_reason if reason is None else reason
        """What went wrong, as a stable value clients may branch on."""
        self.metadata: Mapping[str, str] = dict(metadata or {})
        """The particulars of ``reason`` (lowerCamelCase keys: jobId, limit …)."""

    @property
    def reason_name(self) -> str:
        """The reason as sent in google.rpc.ErrorInfo (``LEASE_EXPIRED``)."""
        return errors_pb2.ErrorReason.Name(self.reason)

    def details(self) -> str:
        """The message the caller reads: ``field: message``."""
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidArgument(ServiceError):
    """A request field is malformed or beyond its limit."""

    default_reason = errors_pb2.INVALID_FIELD


class NotFound(ServiceError):
    """The named job does not exist (or is not the caller's)."""

    default_reason = errors_pb2.JOB_NOT_FOUND


class AlreadyExists(ServiceError):
    """A job id or request_id is taken by a different job."""

    default_reason = errors_pb2.JOB_ID_TAKEN


class FailedPrecondition(ServiceError):
    """The job is not in a state that allows the call (or the lease is stale).
    Every raise site states its reason."""


class OutOfRange(ServiceError):
    """A resume point lies outside the kept history."""

    default_reason = errors_pb2.BEYOND_END


class Aborted(ServiceError):
    """The call lost a race with a concurrent change; starting it again may succeed."""

    default_reason = errors_pb2.ARTIFACT_REPLACED


class ResourceExhausted(ServiceError):
    """A configured limit was reached (metadata: limit, setting)."""

    default_reason = errors_pb2.LIMIT_EXCEEDED


class Unavailable(ServiceError):
    """The store cannot take writes right now (e.g. disk full); try again."""

    default_reason = errors_pb2.STORAGE_UNAVAILABLE


class Unauthenticated(ServiceError):
    """The call carried no token the server knows."""

    default_reason = errors_pb2.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    """The caller's roles do not allow the method."""

    default_reason = errors_pb2.PERMISSION_DENIED


class Internal(ServiceError):
    """The server broke an invariant; the details stay in its log."""


def not_found(job_id: str) -> NotFound:
    """The one wording for an unknown job."""
    return NotFound(f"no job {job_id!r}", field="job_id", metadata={"jobId": job_id})
