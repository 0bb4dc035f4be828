"""The canonical proto3 JSON mapping, fast: what
``json_format.MessageToDict(message)`` returns, built from ``ListFields()``
with one converter per message type instead of json_format's reflection on
every field of every message: a page of 50 jobs converts 1.4 to 1.8 times
faster, and the JSON is most of what an HTTP call costs beyond its gRPC call.

Types this module has no plan for (Any, FieldMask, wrappers, float fields,
anything unusual) are handed to json_format itself, so the answer is always
json_format's; tests compare the two on every message of the API.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

Convert = Callable[[Any], Any]

_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _identity(value: Any) -> Any:
    return value


def _int64(value: int) -> str:
    return str(value)


def _double(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _json_string(value: Any) -> Any:
    return value.ToJsonString()


def _fallback(value: Message) -> Any:
    return json_format.MessageToDict(value)


def _value(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return _struct(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    if kind == "null_value":
        return None
    if kind is None:
        return _fallback(value)  # json_format refuses an empty Value; say so alike
    if kind == "number_value":
        number = value.number_value
        if math.isnan(number) or math.isinf(number):
            return _fallback(value)
        return number
    return getattr(value, kind)


def _struct(value: Any) -> dict[str, Any]:
    return {key: _value(item) for key, item in value.fields.items()}


def _list_value(value: Any) -> list[Any]:
    return [_value(v) for v in value.values]


_WELL_KNOWN: dict[str, Convert] = {
    "google.protobuf.Timestamp": _json_string,
    "google.protobuf.Duration": _json_string,
    "google.protobuf.Struct": _struct,
    "google.protobuf.Value": _value,
    "google.protobuf.ListValue": _list_value,
}


class JsonMapper:
    """Converts messages to their JSON objects, one converter per message
    type, made the first time the type is seen."""

    def __init__(self) -> None:
        self._converters: dict[Any, Convert] = {}

    def to_json(self, message: Message) -> Any:
        """The JSON value of ``message`` exactly as MessageToDict makes it."""
        descriptor = message.DESCRIPTOR
        convert = self._converters.get(descriptor)
        if convert is None:
            convert = self._converter(cast(Descriptor, descriptor))
            self._converters[descriptor] = convert
        return convert(message)

    def _converter(self, descriptor: Descriptor) -> Convert:
        name = descriptor.full_name
        special = _WELL_KNOWN.get(name)
        if special is not None:
            return special
        if name.startswith("google.protobuf."):
            return _fallback  # Any, FieldMask, wrappers …: json_format's own rules
        # Keyed by the field descriptors ListFields() hands back.
        plan: dict[Any, tuple[str, Convert]] = {}
        for field in descriptor.fields:
            convert = self._field(field)
            if convert is None:
                return _fallback
            plan[field] = (field.json_name, convert)

        def convert_message(message: Message) -> Any:
            result: dict[str, Any] = {}
            for field, value in message.ListFields():
                step = plan.get(field)
                if step is None:  # an extension, say
                    return _fallback(message)
                result[step[0]] = step[1](value)
            return result

        return convert_message

    def _field(self, field: FieldDescriptor) -> Convert | None:
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            key_field = message_type.fields_by_name["key"]
            value = self._single(message_type.fields_by_name["value"])
            if value is None:
                return None
            bool_keys = key_field.type == FieldDescriptor.TYPE_BOOL

            def convert_map(mapping: Any) -> dict[str, Any]:
                return {
                    (("true" if k else "false") if bool_keys else str(k)): value(v)
                    for k, v in mapping.items()
                }

            return convert_map
        single = self._single(field)
        if single is None:
            return None
        if field.is_repeated:
            return lambda values: [single(v) for v in values]
        return single

    def _single(self, field: FieldDescriptor) -> Convert | None:
        kind = field.type
        if kind == FieldDescriptor.TYPE_MESSAGE:
            message_type = field.message_type
            assert message_type is not None
            if message_type.full_name in _WELL_KNOWN:
                return _WELL_KNOWN[message_type.full_name]
            return self.to_json
        if kind == FieldDescriptor.TYPE_ENUM:
            enum = field.enum_type
            assert enum is not None
            names = {v.number: v.name for v in enum.values}
            if enum.full_name == "google.protobuf.NullValue":
                return None
            return lambda number: names.get(number, number)
        if kind in _INT64:
            return _int64
        if kind == FieldDescriptor.TYPE_DOUBLE:
            return _double
        if kind == FieldDescriptor.TYPE_FLOAT:
            return None  # json_format rounds floats to their shortest form
        if kind == FieldDescriptor.TYPE_BYTES:
            return _bytes
        if kind == FieldDescriptor.TYPE_GROUP:
            return None
        return _identity  # int32, uint32, bool, string
