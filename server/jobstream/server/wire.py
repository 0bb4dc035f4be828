"""Why a request's bytes did not parse: a walk over the protobuf wire
format, guided by the message's descriptor, that names the field at fault.

Protobuf's decoder only says that a message failed (too deep, corrupt, bad
UTF-8). A caller needs to know which field to fix, so when a request does
not parse the walk below finds the first field that is corrupt or not
UTF-8, or else the field that nests deepest, and says so in the field's
request path (``params``, ``steps[0].data``, ``header.name``).

The walk is iterative (a request nested a thousand levels deep is exactly
what it has to describe) and gives up after MAX_WALK_FIELDS fields: it only
runs for requests that are refused anyway, and must stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor

MAX_WALK_FIELDS = 200_000
"""Fields the walk reads before it stops looking: a 16 MiB message of tiny
fields takes about 0.2 s to walk in Python, on the event loop."""

JSON_TYPES = frozenset({"google.protobuf.Struct", "google.protobuf.ListValue"})
"""Messages that are one level of a JSON value (a ``Value`` between them is
not a level of its own)."""

UNDIAGNOSED = "request: cannot be parsed (malformed, or nested too deeply)"
"""The status message when no field can be blamed."""

_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = range(6)


class _Corrupt(Exception):
    """The bytes are not protobuf wire format."""


@dataclass(frozen=True, slots=True)
class _Frame:
    data: bytes
    start: int
    end: int
    descriptor: Descriptor | None
    path: str
    json_depth: int
    depth: int


def diagnose(data: bytes, descriptor: Descriptor, max_json_depth: int) -> str:
    """The status message for ``data``, which did not parse as
    ``descriptor``: ``<field>: <what is wrong>``, or ``request: ...`` when
    no field can be blamed; JSON values nested beyond ``max_json_depth``
    levels are named as such."""
    try:
        return _walk(data, descriptor, max_json_depth)
    except _Corrupt as exc:
        return f"{exc.args[0] or 'request'}: cannot be parsed (not protobuf wire format)"


def _walk(data: bytes, descriptor: Descriptor, max_json_depth: int) -> str:
    stack = [_Frame(data, 0, len(data), descriptor, "", 0, 1)]
    deepest: _Frame | None = None
    seen = 0
    while stack:
        frame = stack.pop()
        if deepest is None or frame.depth > deepest.depth:
            deepest = frame
        repeats: dict[int, int] = {}
        pos = frame.start
        while pos < frame.end:
            seen += 1
            if seen > MAX_WALK_FIELDS:
                return UNDIAGNOSED
            key, pos = _varint(frame.data, pos, frame.end, frame.path)
            number, wire_type = key >> 3, key & 7
            field = frame.descriptor.fields_by_number.get(number) if frame.descriptor else None
            name = _name(frame, field, number, repeats)
            if wire_type == _VARINT:
                _, pos = _varint(frame.data, pos, frame.end, name)
            elif wire_type == _I64:
                pos = _skip(pos, 8, frame.end, name)
            elif wire_type == _I32:
                pos = _skip(pos, 4, frame.end, name)
            elif wire_type == _LEN:
                size, pos = _varint(frame.data, pos, frame.end, name)
                end = _skip(pos, size, frame.end, name)
                if field is not None and field.type == FieldDescriptor.TYPE_STRING:
                    try:
                        frame.data[pos:end].decode()
                    except UnicodeDecodeError:
                        return f"{name}: is not valid UTF-8"
                elif field is not None and field.message_type is not None:
                    child = field.message_type
                    json_depth = frame.json_depth + (child.full_name in JSON_TYPES)
                    # Inside a JSON value (Struct, its map entries, Values)
                    # every level keeps the name of the field holding it:
                    # "params", not "params.fields.value.struct_value...".
                    path = name if frame.json_depth == 0 else frame.path
                    stack.append(
                        _Frame(frame.data, pos, end, child, path, json_depth, frame.depth + 1)
                    )
                pos = end
            else:
                # Groups are not used by any proto3 message; 6 and 7 do not exist.
                raise _Corrupt(name)
    if deepest is not None and deepest.json_depth > 0:
        if deepest.json_depth > max_json_depth:
            return f"{deepest.path}: nests deeper than the limit of {max_json_depth} levels"
        return (
            f"{deepest.path}: nests {deepest.json_depth} levels deep, "
            "deeper than protobuf's decoder accepts"
        )
    return UNDIAGNOSED


def _name(
    frame: _Frame, field: FieldDescriptor | None, number: int, repeats: dict[int, int]
) -> str:
    """The request path of a field occurrence: repeated fields get their
    index (``steps[2]``) in the order they appear."""
    if frame.json_depth > 0:
        return frame.path
    base = field.name if field is not None else f"#{number}"
    if field is not None and field.is_repeated:
        index = repeats.get(number, 0)
        repeats[number] = index + 1
        if not (field.message_type is not None and field.message_type.GetOptions().map_entry):
            base = f"{base}[{index}]"
    return f"{frame.path}.{base}" if frame.path else base


def _varint(data: bytes, pos: int, end: int, name: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Corrupt(name)
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _skip(pos: int, size: int, end: int, name: str) -> int:
    if pos + size > end:
        raise _Corrupt(name)
    return pos + size
