"""Scenario 8: hostile input for every RPC and every field, from the
service descriptors.

The RPCs, their request messages and every field come from
``job_service_pb2`` / ``worker_service_pb2``'s descriptors, so an RPC or a
field added later is fuzzed without anyone adding it here. Two passes:

1. systematic: for every field of every request (nested messages, repeated
   elements and map values included), each hostile value of its type alone
   (every Duration, Timestamp, page token, JSON value, repeated field and
   map), plus raw bytes no encoder makes: strings that are not UTF-8, JSON
   nested past protobuf's decoder, corrupt and cut-short messages, and for
   request streams a corrupt message after a good one;
2. hypothesis: random combinations of those values (and generated text)
   across all fields at once.

Each call must answer anything but UNKNOWN, INTERNAL or UNAVAILABLE (a
retryable code would make clients resend bad input), and a refused call
must leave the database as it was. Afterwards the server still serves.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from conftest import ServerProcess
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import Raw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faults.record import FULL, record, size
from jobstream.v1 import job_service_pb2, worker_service_pb2

CALL_TIMEOUT_S = 10.0
"""Deadline of every call (a stream's: of its first message)."""

FORBIDDEN = frozenset(
    {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE}
)
"""Codes that mean the server did not understand its own failure, or told
the client to send the same bad input again."""

SERVICES = (
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"],
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"],
)
"""Every service whose every RPC is fuzzed."""

OTHER_METHODS = (
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "stream_stream"),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "stream_stream"),
    ("/grpc.health.v1.Health/Check", "unary_unary"),
)
"""gRPC's own services on the same port: sent raw garbage only."""

MAX_NESTING = 3
"""How deep the systematic pass descends into nested request messages."""

HUGE_REPEAT = 260_000
"""Copies in an oversized repeated scalar: past every bound the server
names, and past the parameter limits of PostgreSQL (65,535) and of SQLite
as Debian builds it (250,000)."""

MANY_MESSAGES = 5_001
"""Copies in an oversized repeated message field (reports, batches)."""

MANY_ENTRIES = 5_000
"""Entries in an oversized map (labels)."""

DECODER_DEPTHS = (40, 5_000)
"""JSON nesting sent as raw bytes: past protobuf's decoder, and far past."""

NASTY = (
    "../etc/passwd",
    "..",
    "a\x00b",
    "job_\U0001f4a3",
    "' OR 1=1 --",
    '"; DROP TABLE job; --',
    "%_%",
    "\\",
    "a" * 5000,
    "",
    " ",
    "\u202e",
    "job_" + "z" * 26,
)
"""Hand-picked hostile strings, for every string field."""


def _token(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


TOKENS = (
    _token([2**63, "x"]),
    _token(2**63),
    _token([-1, "job_" + "0" * 26]),
    _token([True, "job_" + "0" * 26]),
    base64.urlsafe_b64encode(b"[" * 50_000 + b"]" * 50_000).decode(),
    base64.urlsafe_b64encode(b"{}" * 10).decode(),
    "A" * 4096,
    "%%%",
)
"""Page tokens the server never issued: huge, negative, mistyped, deeply
nested, long, not base64."""

DURATIONS = (
    (0, 0),
    (0, 300_000_000),
    (0, 999_999_999),
    (-1, 0),
    (3600, 0),
    (2**62, 0),
    (2**63 - 1, 999_999_999),
    (-(2**63), 0),
    (0, 2_000_000_000),
    (0, -2_000_000_000),
    (1, -1),
    (-1, 1),
)
"""Duration (seconds, nanos): huge, malformed nanos, mismatched signs, and
valid ones that are either under a second (no call blocks long) or an hour
(a lease that cannot expire during the scenario: the sweeper's change would
look like a refused call's)."""

TIMESTAMPS = (
    (0, 0),
    (-1, 0),
    (253_402_300_800, 0),
    (2**62, 0),
    (0, 2_000_000_000),
    (0, -1),
    (int(time.time()) + 3600, 0),
)
"""Timestamp (seconds, nanos), in and out of range."""

INT32 = (0, 1, -1, 1_000, 5_001, 2**31 - 1, -(2**31))
INT64 = (*INT32, 2**62, 2**63 - 1, -(2**63))
ENUMS = (-1, 0, 1, 5, 2**31 - 1)
BYTES = (b"", b"\x00" * 16, b"\xff" * 64, b"x" * (1024 * 1024 + 1))
DOUBLES = (0.0, -1.0, 0.5, 1.5, float("nan"), float("inf"), 1e308)


def _json_values() -> tuple[dict[str, Any], ...]:
    deep: dict[str, Any] = {}
    for _ in range(32):
        deep = {"d": deep}
    return (
        {},
        {"k": "v", "n": [1, 2.5, None, True]},
        deep,  # 33 levels: one past the default limit, still encodable
        {"blob": "x" * 400_000},
        {str(i): i for i in range(20_000)},
    )


JSON_VALUES = _json_values()
"""Struct values: empty, plain, too deep, too big, too wide."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _wire(number: int, payload: bytes) -> bytes:
    """One length-delimited field on the wire."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _deep_struct(levels: int) -> bytes:
    """A Struct nested ``levels`` objects deep, as bytes."""
    inner = b""
    for _ in range(levels - 1):
        inner = _wire(1, _wire(1, b"d") + _wire(2, _wire(5, inner)))
    return inner


# ------------------------------------------------------------ the RPC table


@dataclass(frozen=True)
class Rpc:
    """One RPC as the descriptors describe it."""

    path: str
    shape: str
    request: Descriptor

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def rpcs() -> list[Rpc]:
    """Every RPC of SERVICES, read from the descriptors."""
    found = []
    for service in SERVICES:
        method: MethodDescriptor
        for method in service.methods:
            shape = ("stream" if method.client_streaming else "unary") + (
                "_stream" if method.server_streaming else "_unary"
            )
            found.append(Rpc(f"/{service.full_name}/{method.name}", shape, method.input_type))
    return found


def message_class(descriptor: Descriptor) -> type[Message]:
    """The generated class of ``descriptor``."""
    return message_factory.GetMessageClass(descriptor)


# -------------------------------------------------------- hostile values


@dataclass
class Context:
    """Real ids and a real lease, so some hostile calls get past NOT_FOUND."""

    job_ids: list[str] = field(default_factory=list)
    lease_ids: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)


def _is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def scalar_values(f: FieldDescriptor, ctx: Context) -> tuple[Any, ...]:
    """Hostile values for one scalar (or well-known message) field."""
    wkt = f.message_type.full_name if f.message_type is not None else ""
    if wkt == "google.protobuf.Duration":
        return DURATIONS
    if wkt == "google.protobuf.Timestamp":
        return TIMESTAMPS
    if wkt == "google.protobuf.Struct":
        return JSON_VALUES
    if f.type == FieldDescriptor.TYPE_STRING:
        if f.name == "page_token":
            return (*TOKENS, *NASTY)
        if f.name.endswith("job_id"):
            return (*ctx.job_ids, *NASTY)
        if f.name.endswith("lease_id"):
            return (*ctx.lease_ids, *NASTY)
        if f.name in ("kind", "kinds"):
            return (*ctx.kinds, *NASTY)
        return NASTY
    if f.type == FieldDescriptor.TYPE_BYTES:
        return BYTES
    if f.type == FieldDescriptor.TYPE_BOOL:
        return (True, False)
    if f.type == FieldDescriptor.TYPE_ENUM:
        return ENUMS
    if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return DOUBLES
    if f.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
        return INT64
    return INT32


def _set(msg: Message, f: FieldDescriptor, value: Any) -> None:
    """Sets one field (one element of a repeated one) to ``value``."""
    wkt = f.message_type.full_name if f.message_type is not None else ""
    if f.is_repeated and not wkt:
        getattr(msg, f.name).append(value)
        return
    target = getattr(msg, f.name).add() if f.is_repeated else getattr(msg, f.name)
    if wkt in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
        target.seconds, target.nanos = value
    elif wkt == "google.protobuf.Struct":
        target.update(value)
    else:
        setattr(msg, f.name, value)


@dataclass(frozen=True)
class Case:
    """One hostile request: its field path, and the messages on the wire."""

    path: str
    messages: tuple[bytes, ...]


def field_cases(
    descriptor: Descriptor, ctx: Context, depth: int = 0
) -> Iterator[tuple[str, Callable[[Message], None], bytes | None]]:
    """(field path, setter, raw bytes to append) for every hostile value of
    every field of ``descriptor``, nested messages included."""
    for f in descriptor.fields:
        wkt = f.message_type is not None and f.message_type.full_name.startswith("google.protobuf.")
        if f.message_type is not None and _is_map(f):
            value_field = f.message_type.fields_by_name["value"]
            for value in scalar_values(value_field, ctx):
                yield f.name, _map_setter(f.name, {"k": value}), None
            for key in NASTY:
                yield f.name, _map_setter(f.name, {key: "v"}), None
            many = {f"k{i}": "v" for i in range(MANY_ENTRIES)}
            yield f.name, _map_setter(f.name, many), None
            continue
        if f.message_type is not None and not wkt:
            if f.is_repeated:
                yield f.name, _many_setter(f.name), None
            if depth < MAX_NESTING:
                for sub, setter, raw in field_cases(f.message_type, ctx, depth + 1):
                    yield (
                        f"{f.name}.{sub}",
                        _nested_setter(f, setter),
                        (None if raw is None else _wire(f.number, raw)),
                    )
            continue
        for value in scalar_values(f, ctx):
            yield f.name, _value_setter(f, value), None
        if f.is_repeated and not wkt:
            example = scalar_values(f, ctx)[0]
            yield f.name, _huge_setter(f.name, example), None
        if f.type == FieldDescriptor.TYPE_STRING:
            yield f.name, _noop, _wire(f.number, b"\xff\xfe not UTF-8")
        if f.message_type is not None and f.message_type.full_name == "google.protobuf.Struct":
            for levels in DECODER_DEPTHS:
                yield f.name, _noop, _wire(f.number, _deep_struct(levels))


def _noop(msg: Message) -> None:
    return None


def _value_setter(f: FieldDescriptor, value: Any) -> Callable[[Message], None]:
    return lambda msg: _set(msg, f, value)


def _map_setter(name: str, entries: dict[str, Any]) -> Callable[[Message], None]:
    def setter(msg: Message) -> None:
        target = getattr(msg, name)
        for k, v in entries.items():
            target[k] = v

    return setter


def _many_setter(name: str) -> Callable[[Message], None]:
    def setter(msg: Message) -> None:
        repeated = getattr(msg, name)
        first = repeated.add()
        repeated.extend([first] * (MANY_MESSAGES - 1))

    return setter


def _huge_setter(name: str, value: Any) -> Callable[[Message], None]:
    return lambda msg: getattr(msg, name).extend([value] * HUGE_REPEAT)


def _nested_setter(
    f: FieldDescriptor, setter: Callable[[Message], None]
) -> Callable[[Message], None]:
    def nested(msg: Message) -> None:
        setter(getattr(msg, f.name).add() if f.is_repeated else getattr(msg, f.name))

    return nested


PLAUSIBLE = {"worker_id": "faults", "name": "out.txt", "sha256": "0" * 64}
"""Values by field name that let a request get past its first checks."""


def baseline(descriptor: Descriptor, ctx: Context) -> Message:
    """A request that names the context's real job, lease and kind, so a
    hostile value in one field is checked by the code behind the first
    checks (a page token is only decoded for a job that exists)."""
    msg = message_class(descriptor)()
    for f in descriptor.fields:
        value: str | None = PLAUSIBLE.get(f.name)
        if f.name.endswith("job_id"):
            value = ctx.job_ids[0]
        elif f.name.endswith("lease_id"):
            value = ctx.lease_ids[0]
        elif f.name in ("kind", "kinds"):
            value = ctx.kinds[0]
        if f.type == FieldDescriptor.TYPE_STRING and value is not None:
            _set(msg, f, value)
        elif (
            f.message_type is not None
            and not f.is_repeated
            and not f.message_type.full_name.startswith("google.protobuf.")
        ):
            getattr(msg, f.name).CopyFrom(baseline(f.message_type, ctx))
    return msg


def systematic_cases(rpc: Rpc, ctx: Context) -> Iterator[Case]:
    """Every field of ``rpc``'s request with each hostile value, on top of
    a plausible request; then garbage, a cut-short request and, for request
    streams, a corrupt message after a good one."""
    good = baseline(rpc.request, ctx)
    for path, setter, raw in field_cases(rpc.request, ctx):
        msg = message_class(rpc.request)()
        msg.CopyFrom(good)
        try:
            setter(msg)
        except ValueError:
            continue  # not representable (e.g. an enum value proto3 rejects)
        data = msg.SerializeToString() + (raw or b"")
        yield Case(path, (data,))
    yield Case("request", (b"\xff\xff\xff\xff",))
    data = good.SerializeToString()
    if data:
        yield Case("request", (data[:-1],))
    if rpc.shape.startswith("stream"):
        yield Case("request", (data, b"\xff\xff\xff\xff"))


# ----------------------------------------------------------- the scenario


@dataclass
class Tally:
    """What the scenario saw."""

    calls: int = 0
    refused: int = 0
    bad: list[str] = field(default_factory=list)
    changed: int = 0
    fields: set[tuple[str, str]] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)


def _fingerprint(db_path: Any) -> tuple[Any, ...]:
    """Everything a refused call must leave alone, read from the file."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        jobs = conn.execute(
            "SELECT id, state, last_seq, update_time, cancel_requested FROM job ORDER BY id"
        ).fetchall()
        counts = tuple(
            conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("job_event", "job_label", "job_step", "job_artifact", "job_change")
        )
    finally:
        conn.close()
    return tuple(jobs), counts


def _call(channel: grpc.Channel, path: str, shape: str, messages: tuple[bytes, ...]) -> None:
    """Sends ``messages`` raw; reads the first answer of a stream."""
    t = CALL_TIMEOUT_S
    raw = Raw(channel)
    if shape == "unary_unary":
        raw.unary(path)(messages[0], timeout=t)
    elif shape == "stream_unary":
        raw.client_stream(path)(iter(messages), timeout=t)
    else:
        stream: Any
        if shape == "unary_stream":
            stream = raw.server_stream(path)(messages[0], timeout=t)
        else:
            stream = raw.bidi(path)(iter(messages), timeout=t)
        try:
            next(stream, None)
        finally:
            stream.cancel()


class Sender:
    """Sends cases and keeps the tally. The database's fingerprint after
    each call is the next call's "before": nothing else writes meanwhile."""

    def __init__(self, channel: grpc.Channel, db_path: Any) -> None:
        self.channel = channel
        self.db_path = db_path
        self.tally = Tally()
        self.last = _fingerprint(db_path)

    def send(self, rpc_name: str, path: str, shape: str, case: Case) -> None:
        """One call; a refused one must leave the fingerprint as it was."""
        tally = self.tally
        tally.calls += 1
        tally.methods.add(rpc_name)
        tally.fields.add((rpc_name, case.path))
        refusal: grpc.RpcError | None = None
        try:
            _call(self.channel, path, shape, case.messages)
        except grpc.RpcError as exc:
            refusal = exc
        after = _fingerprint(self.db_path)
        if refusal is not None:
            tally.refused += 1
            code = refusal.code()
            if code in FORBIDDEN:
                tally.bad.append(f"{rpc_name} {case.path}: {code.name} {refusal.details()}")
            if after != self.last:
                tally.changed += 1
                tally.bad.append(f"{rpc_name} {case.path}: refused ({code.name}) but changed data")
        self.last = after

    def reseed(self) -> Context:
        """Fresh seed jobs (see _seed); their writes are not a call's."""
        ctx = _seed(self.channel, f"s{self.tally.calls}")
        self.last = _fingerprint(self.db_path)
        return ctx


def _seed(channel: grpc.Channel, tag: str) -> Context:
    """A queued job and a leased one, for ids and a lease that exist (fresh
    for each RPC: the calls before may have cancelled, finished or deleted
    the previous ones)."""
    jobs = channel.unary_unary(
        "/jobstream.v1.JobService/SubmitJob",
        request_serializer=job_service_pb2.SubmitJobRequest.SerializeToString,
        response_deserializer=job_service_pb2.SubmitJobResponse.FromString,
    )
    acquire = channel.unary_unary(
        "/jobstream.v1.WorkerService/AcquireJob",
        request_serializer=worker_service_pb2.AcquireJobRequest.SerializeToString,
        response_deserializer=worker_service_pb2.AcquireJobResponse.FromString,
    )
    leased_kind = f"faults.leased.{tag}"
    queued = jobs(job_service_pb2.SubmitJobRequest(kind="faults.seed"), timeout=CALL_TIMEOUT_S)
    jobs(job_service_pb2.SubmitJobRequest(kind=leased_kind), timeout=CALL_TIMEOUT_S)
    lease = acquire(
        worker_service_pb2.AcquireJobRequest(worker_id="faults", kinds=[leased_kind]),
        timeout=CALL_TIMEOUT_S,
    )
    return Context(
        job_ids=[queued.job.id, lease.job.id],
        lease_ids=[lease.lease_id],
        kinds=["faults.seed", leased_kind],
    )


def _random_case(rpc: Rpc, ctx: Context) -> st.SearchStrategy[Case]:
    """Random combinations of the hostile values across all fields."""
    cls = message_class(rpc.request)
    options = list(field_cases(rpc.request, ctx))
    good = baseline(rpc.request, ctx)

    @st.composite
    def build(draw: st.DrawFn) -> Case:
        picks = draw(st.lists(st.sampled_from(options), min_size=1, max_size=6))
        msg = cls()
        if draw(st.booleans()):
            msg.CopyFrom(good)
        raw = b""
        for _, setter, extra in picks:
            try:
                setter(msg)
            except ValueError:
                continue
            raw += extra or b""
        text = draw(st.text(max_size=40))
        strings = [f for f in rpc.request.fields if f.type == FieldDescriptor.TYPE_STRING]
        use_text: bool = draw(st.booleans())
        if strings and use_text:
            _set(msg, draw(st.sampled_from(strings)), text)
        return Case("+".join(sorted({p for p, _, _ in picks})), (msg.SerializeToString() + raw,))

    return build()


def test_hostile_input_never_breaks_the_server(
    start_server: Callable[..., ServerProcess],
) -> None:
    # A lease that outlives the scenario: a lease expiring between a call
    # and its fingerprint would look like the call changed data.
    server = start_server(extra_args=("--lease-seconds", "3600"))
    started = time.monotonic()
    channel = grpc.insecure_channel(server.target)
    sender = Sender(channel, server.db_path)
    tally = sender.tally
    try:
        table = rpcs()
        for rpc in table:
            ctx = sender.reseed()
            for case in systematic_cases(rpc, ctx):
                sender.send(rpc.name, rpc.path, rpc.shape, case)
        for path, shape in OTHER_METHODS:
            sender.send(path, path, shape, Case("request", (b"\xff\xff\xff\xff",)))
        systematic = tally.calls
        ctx = sender.reseed()

        @settings(
            max_examples=size(100, 2000),
            deadline=None,
            database=None,
            # Reproducible in `make test`; new examples every `make faults`.
            derandomize=not FULL,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            st.sampled_from(table).flatmap(lambda r: st.tuples(st.just(r), _random_case(r, ctx)))
        )
        def check(drawn: tuple[Rpc, Case]) -> None:
            rpc, case = drawn
            sender.send(rpc.name, rpc.path, rpc.shape, case)

        check()
        # Still serving: a submit, a read and the health check all answer.
        submit = channel.unary_unary(
            "/jobstream.v1.JobService/SubmitJob",
            request_serializer=job_service_pb2.SubmitJobRequest.SerializeToString,
            response_deserializer=job_service_pb2.SubmitJobResponse.FromString,
        )
        after = submit(job_service_pb2.SubmitJobRequest(kind="faults.after"), timeout=10)
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="jobstream.v1.JobService"), timeout=10
        )
        serving = bool(after.job.id) and health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
    expected_fields = {
        (rpc.name, path) for rpc in table for path, _, _ in field_cases(rpc.request, ctx)
    }
    missing = expected_fields - tally.fields
    every_rpc = {rpc.name for rpc in table} <= tally.methods
    passed = not tally.bad and serving and not missing and every_rpc
    record(
        8,
        f"{len(table)} RPCs, {len({p for _, p in expected_fields})} field paths: "
        f"{tally.calls} calls ({systematic} systematic), {tally.refused} refused, "
        f"{len(tally.bad) - tally.changed} UNKNOWN/INTERNAL/UNAVAILABLE, "
        f"{tally.changed} refused calls changed data; serving after: {serving}; "
        f"{time.monotonic() - started:.0f} s",
        passed,
    )
    assert not tally.bad, "\n".join(tally.bad)
    assert missing == set()
    assert every_rpc and serving
