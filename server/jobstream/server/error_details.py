"""The one place domain errors become gRPC statuses: each class's status
code, and the google.rpc.Status details every refusal carries (AIP-193): a
google.rpc.ErrorInfo always (domain ``jobstream``, the reason by name, its
metadata), and where they fit a BadRequest naming the field
(INVALID_ARGUMENT), a PreconditionFailure (FAILED_PRECONDITION) or a
QuotaFailure (RESOURCE_EXHAUSTED). Below the interceptors and the
servicers alike, so authentication refusals are told the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from jobstream.server.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)

DOMAIN = "jobstream"
"""google.rpc.ErrorInfo.domain of every refusal."""

DETAILS_TRAILER = "grpc-status-details-bin"
"""The trailer gRPC's rich-status convention puts the google.rpc.Status in."""

CODES: Mapping[type[ServiceError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    Aborted: grpc.StatusCode.ABORTED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Internal: grpc.StatusCode.INTERNAL,
}
"""The status code of each domain error class (a subclass takes its
nearest listed base's)."""


def code_of(exc: ServiceError) -> grpc.StatusCode:
    """The status code of a domain error."""
    for cls in type(exc).__mro__:
        code = CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _packed(message: Any) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail


def rich_status(exc: ServiceError) -> status_pb2.Status:
    """The google.rpc.Status of ``exc``: code, message and details."""
    code = code_of(exc)
    metadata = dict(exc.metadata)
    if exc.field:
        metadata.setdefault("field", exc.field)
    # The detail of the code first (where clients of the earlier contract
    # found the BadRequest), the ErrorInfo every refusal carries last.
    details: list[any_pb2.Any] = []
    if code is grpc.StatusCode.INVALID_ARGUMENT and exc.field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=exc.field, description=exc.message
        )
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    elif code is grpc.StatusCode.FAILED_PRECONDITION:
        job_id = exc.metadata.get("jobId")
        violation = error_details_pb2.PreconditionFailure.Violation(
            type=exc.reason_name,
            subject=f"jobs/{job_id}" if job_id else exc.field or "",
            description=exc.message,
        )
        details.append(_packed(error_details_pb2.PreconditionFailure(violations=[violation])))
    elif code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        quota = error_details_pb2.QuotaFailure.Violation(
            subject=exc.metadata.get("setting", ""), description=exc.message
        )
        details.append(_packed(error_details_pb2.QuotaFailure(violations=[quota])))
    info = error_details_pb2.ErrorInfo(reason=exc.reason_name, domain=DOMAIN, metadata=metadata)
    details.append(_packed(info))
    return status_pb2.Status(code=code.value[0], message=exc.details(), details=details)


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: ServiceError) -> None:
    """Ends the call with ``exc``'s status, its details in the trailer."""
    status = rich_status(exc)
    await context.abort(
        code_of(exc), status.message, ((DETAILS_TRAILER, status.SerializeToString()),)
    )
