"""What generic gRPC tools rely on: server reflection and health checking.

The reflection test builds its messages from the descriptors the server
sends, never from the generated ``jobstream.v1`` modules, so it proves what
grpcurl would need: a client without the .proto files can call an RPC.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from conftest import Server, ServerProcess
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

CALL_TIMEOUT_S = 10.0
"""Deadline of every call and stream read in these tests."""

JOB_SERVICE = "jobstream.v1.JobService"
WORKER_SERVICE = "jobstream.v1.WorkerService"
HEALTH_SERVICE = "grpc.health.v1.Health"

JOB_SERVICE_METHODS = {
    "SubmitJob",
    "SubmitJobs",
    "GetJob",
    "ListJobs",
    "WatchJob",
    "WatchJobs",
    "CancelJob",
    "DeleteJob",
    "ListJobLogs",
    "ListJobResults",
}
"""RPCs JobService has had since v1 (more may be added; none removed)."""


@pytest.fixture
def channel(bare_server: Server) -> Iterator[grpc.Channel]:
    """A plain channel to a server without handlers."""
    with grpc.insecure_channel(bare_server.target) as ch:
        yield ch


def test_reflection_lists_services(channel: grpc.Channel) -> None:
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {JOB_SERVICE, WORKER_SERVICE, HEALTH_SERVICE} <= services
    assert "grpc.reflection.v1alpha.ServerReflection" in services


def test_reflection_describes_the_job_service(channel: grpc.Channel) -> None:
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    service = pool.FindServiceByName(JOB_SERVICE)
    methods = {m.name: m for m in service.methods}
    assert set(methods) >= JOB_SERVICE_METHODS
    watch = methods["WatchJob"]
    assert watch.server_streaming and not watch.client_streaming
    assert watch.input_type.full_name == "jobstream.v1.WatchJobRequest"
    submit = methods["SubmitJob"].input_type
    assert {"kind", "queue", "params", "labels", "request_id"} <= set(submit.fields_by_name)
    # Imported types (Timestamp, Struct) resolve through reflection too.
    job = pool.FindMessageTypeByName("jobstream.v1.Job")
    create_time = job.fields_by_name["create_time"].message_type
    assert create_time is not None
    assert create_time.full_name == "google.protobuf.Timestamp"


def _reflected_call(
    channel: grpc.Channel, pool: descriptor_pool.DescriptorPool, method: str
) -> tuple[Any, Any]:
    """The request class and a callable for ``JobService/method``, both made
    from reflected descriptors alone (so typed Any: no stubs know them)."""
    descriptor = pool.FindServiceByName(JOB_SERVICE).methods_by_name[method]
    request_class = message_factory.GetMessageClass(descriptor.input_type)
    response_class = message_factory.GetMessageClass(descriptor.output_type)
    call: grpc.UnaryUnaryMultiCallable[Any, Any] = channel.unary_unary(
        f"/{JOB_SERVICE}/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    return request_class, call


def test_reflection_is_enough_to_call_rpcs(channel: grpc.Channel) -> None:
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    submit_request, submit = _reflected_call(channel, pool, "SubmitJob")
    label = uuid.uuid4().hex
    request = submit_request(kind="reflect.test", labels={"run": label})
    request.params.update({"n": 3})
    submitted = submit(request, timeout=CALL_TIMEOUT_S)
    job_id = submitted.job.id
    assert job_id and submitted.created

    get_request, get = _reflected_call(channel, pool, "GetJob")
    got = get(get_request(job_id=job_id), timeout=CALL_TIMEOUT_S)
    assert got.job.kind == "reflect.test"
    assert dict(got.job.labels) == {"run": label}
    assert got.job.params["n"] == 3


def _check(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S)
    return int(response.status)


@pytest.mark.parametrize("service", ["", JOB_SERVICE, WORKER_SERVICE])
def test_health_serving(channel: grpc.Channel, service: str) -> None:
    assert _check(channel, service) == health_pb2.HealthCheckResponse.SERVING


def test_health_unknown_service_is_not_found(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _check(channel, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_reports_shutdown(start_server: Callable[..., ServerProcess]) -> None:
    # A long grace period keeps the server up while draining, so the watch
    # sees NOT_SERVING before the connection goes away.
    server = start_server(extra_args=("--grace-seconds", "5"))
    with grpc.insecure_channel(server.target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        stream = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S)
        first = next(stream)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        assert server.proc is not None
        server.proc.terminate()
        second = next(stream)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        stream.cancel()
    # Not stop(): a second SIGTERM would mean "exit now" to the server.
    assert server.proc.wait(20) == 0
