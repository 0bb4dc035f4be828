"""gRPC status -> HTTP: the status code grpc-gateway uses for each gRPC code,
and a ``google.rpc.Status`` JSON body carrying every detail the gRPC call
had (decoded from its ``grpc-status-details-bin`` trailer)."""

from __future__ import annotations

import base64
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

# error_details_pb2 also registers the standard detail types (BadRequest,
# ErrorInfo …) so that json_format can print an Any holding one.
from google.rpc import code_pb2, error_details_pb2, status_pb2

from jobstream.client.errors import DOMAIN, sent_status
from jobstream.v1 import errors_pb2

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    # grpc-gateway's choice: a precondition of the resource's state that the
    # request could only meet after another change is a client error.
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
"""gRPC code -> HTTP status, grpc-gateway's table (runtime/errors.go)."""


def status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The call's google.rpc.Status: the server's own (with its details) when
    it sent one, else made from the code and message."""
    sent = sent_status(error, error.code())
    if sent is not None:
        return sent
    return status_pb2.Status(code=error.code().value[0], message=error.details() or "")


def status_json(status: status_pb2.Status) -> dict[str, Any]:
    """The Status as the JSON body of an error answer. A detail of a type
    this gateway does not know keeps its ``@type`` and base64 ``value``."""
    details: list[dict[str, Any]] = []
    for detail in status.details:
        try:
            details.append(json_format.MessageToDict(detail))
        except TypeError:
            details.append({"@type": detail.type_url, "value": _b64(detail)})
    body: dict[str, Any] = {"code": status.code, "message": status.message}
    if details:
        body["details"] = details
    return body


def _b64(detail: any_pb2.Any) -> str:
    return base64.b64encode(detail.value).decode()


def http_status(code: int) -> int:
    """The HTTP status of a google.rpc.Code number."""
    for status_code, http in HTTP_STATUS.items():
        if status_code.value[0] == code:
            return http
    return 500


def _packed(message: Message) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail


def _error_info(reason: errors_pb2.ErrorReason.ValueType, metadata: dict[str, str]) -> any_pb2.Any:
    """The google.rpc.ErrorInfo the gateway's own refusals carry, as the
    server's do: domain jobstream, a reason of the protos' ErrorReason."""
    return _packed(
        error_details_pb2.ErrorInfo(
            reason=errors_pb2.ErrorReason.Name(reason), domain=DOMAIN, metadata=metadata
        )
    )


def bad_request(field: str, description: str) -> status_pb2.Status:
    """INVALID_ARGUMENT with an ErrorInfo (INVALID_FIELD) and a BadRequest
    naming the field, as the server words its own refusals."""
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
    details = [
        _packed(error_details_pb2.BadRequest(field_violations=[violation])),
        _error_info(errors_pb2.INVALID_FIELD, {"field": field} if field else {}),
    ]
    message = f"{field}: {description}" if field else description
    return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=details)


def refusal(
    code: grpc.StatusCode,
    message: str,
    reason: errors_pb2.ErrorReason.ValueType,
    **metadata: str,
) -> status_pb2.Status:
    """A Status of the gateway's own, with its ErrorInfo."""
    return status_pb2.Status(
        code=code.value[0], message=message, details=[_error_info(reason, metadata)]
    )
