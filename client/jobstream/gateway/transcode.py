"""HTTP request -> protobuf request, protobuf -> JSON: the canonical proto3
JSON mapping (``google.protobuf.json_format``), with path variables, body
and query parameters placed as ``google.api.HttpRule`` says.

Query parameters name fields by path (``filter.kinds=demo.count``; a
repeated field takes the parameter again; a map entry is
``filter.labels[team]=growth``); their text is read by the field's type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from jobstream.gateway.routes import Route

SYSTEM_PARAMETERS = frozenset({"alt"})
"""Query parameters the gateway itself reads (``alt=jsonl``), never fields."""

_MAP_KEY = re.compile(r"^(?P<field>[A-Za-z_][A-Za-z0-9_.]*)\[(?P<key>[^\]]*)\]$")

_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


class BadRequest(ValueError):
    """The HTTP request cannot become the RPC's request; ``field`` names the
    parameter or body field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.description = message


def request_class(route: Route) -> type[Message]:
    """The generated request class of the route's RPC."""
    return GetMessageClass(route.method.input_type)


def _field(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    return descriptor.fields_by_name.get(name) or descriptor.fields_by_camelcase_name.get(name)


def _resolve(descriptor: Descriptor, path: str) -> list[FieldDescriptor]:
    """The fields along a dotted path (proto or JSON names)."""
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for part in path.split("."):
        found = _field(current, part) if current is not None else None
        if found is None:
            raise BadRequest(path, "no such field in the request")
        fields.append(found)
        current = found.message_type if found.type == FieldDescriptor.TYPE_MESSAGE else None
    return fields


def _scalar(field: FieldDescriptor, text: str, name: str) -> Any:
    """``text`` as the JSON value the field's type takes."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_BOOL:
        lowered = text.lower()
        if lowered in ("true", "1", ""):
            return True
        if lowered in ("false", "0"):
            return False
        raise BadRequest(name, f"expected true or false, got {text!r}")
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        try:
            return float(text)
        except ValueError:
            raise BadRequest(name, f"expected a number, got {text!r}") from None
    if kind in _INTEGER_TYPES:
        try:
            return int(text)
        except ValueError:
            raise BadRequest(name, f"expected an integer, got {text!r}") from None
    if kind == FieldDescriptor.TYPE_ENUM:
        # By name or by number; json_format names the field when it refuses.
        return int(text) if text.isdigit() else text
    return text  # strings, bytes (base64), and well-known types in their JSON form


def _place(
    target: dict[str, Any], fields: list[FieldDescriptor], value: Any, *, append: bool
) -> None:
    node = target
    for field in fields[:-1]:
        node = node.setdefault(field.json_name, {})
        if not isinstance(node, dict):
            raise BadRequest(field.name, "given both as a value and as a message")
    last = fields[-1]
    if append:
        node.setdefault(last.json_name, []).append(value)
    else:
        node[last.json_name] = value


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def parameters_dict(
    descriptor: Descriptor, params: Iterable[tuple[str, str]], *, skip: Iterable[str] = ()
) -> dict[str, Any]:
    """Query parameters as the JSON object of ``descriptor``'s message."""
    result: dict[str, Any] = {}
    skipped = set(skip)
    for name, text in params:
        if name in SYSTEM_PARAMETERS:
            continue
        key: str | None = None
        path = name
        found = _MAP_KEY.match(name)
        if found is not None:
            path, key = found.group("field"), found.group("key")
        fields = _resolve(descriptor, path)
        if fields[0].name in skipped or fields[0].json_name in skipped:
            raise BadRequest(name, "is set by the path or the body, not by a query parameter")
        last = fields[-1]
        if last.message_type is not None and last.message_type.GetOptions().map_entry:
            if key is None:
                raise BadRequest(name, f"a map field: give entries as {path}[KEY]=VALUE")
            value_field = last.message_type.fields_by_name["value"]
            node = result
            for field in fields:
                node = node.setdefault(field.json_name, {})
            node[key] = _scalar(value_field, text, name)
            continue
        if key is not None:
            raise BadRequest(name, "is not a map field")
        if last.type == FieldDescriptor.TYPE_MESSAGE and not _well_known(last):
            raise BadRequest(name, "is a message: set its fields, e.g. name.field=value")
        _place(result, fields, _scalar(last, text, name), append=_is_repeated(last))
    return result


def _well_known(field: FieldDescriptor) -> bool:
    """Message fields with a JSON string form (Timestamp, Duration, …)."""
    message = field.message_type
    return message is not None and message.full_name.startswith("google.protobuf.")


def path_dict(descriptor: Descriptor, variables: Mapping[str, str]) -> dict[str, Any]:
    """Path variables as the JSON object of ``descriptor``'s message."""
    result: dict[str, Any] = {}
    for path, text in variables.items():
        fields = _resolve(descriptor, path)
        _place(result, fields, _scalar(fields[-1], text, path), append=False)
    return result


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def parse_body(raw: bytes) -> Any:
    """The JSON body; an empty body is an empty object."""
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadRequest("body", "JSON nests too deeply") from None
    except ValueError as exc:
        raise BadRequest("body", f"is not valid JSON: {exc}") from None


def build_request(
    route: Route,
    variables: Mapping[str, str],
    query: Iterable[tuple[str, str]],
    body: Any,
) -> Message:
    """The RPC request for an HTTP request: body as the rule says, then path
    variables (which win), and query parameters for the fields neither set."""
    descriptor = route.method.input_type
    merged: dict[str, Any] = {}
    taken: list[str] = [path.split(".")[0] for path in variables]
    if route.body == "*":
        if not isinstance(body, dict):
            raise BadRequest("body", "must be a JSON object")
        merged.update(body)
        taken = [f.name for f in descriptor.fields]
    elif route.body:
        merged[_resolve(descriptor, route.body)[0].json_name] = body
        taken.append(route.body)
    elif body not in ({}, None):
        raise BadRequest("body", f"{route.http_method} {route.template} takes no body")
    _merge(merged, parameters_dict(descriptor, query, skip=taken))
    _merge(merged, path_dict(descriptor, variables))
    message = request_class(route)()
    try:
        json_format.ParseDict(merged, message)
    except json_format.ParseError as exc:
        raise _parse_error(str(exc)) from None
    except RecursionError:
        raise BadRequest("body", "JSON nests too deeply") from None
    return message


_PARSE_PREFIX = re.compile(r"^(?:Failed to parse \w+ field: )+")
_PARSE_NAMES = re.compile(r"Failed to parse (\w+) field: ")
_PARSE_AT = re.compile(r"^(?P<what>.*?) at \w+\.(?P<field>[\w.\[\]]+?)\.*$", re.DOTALL)
_NO_FIELD = re.compile(
    r'^Message type "[\w.]+" has no field named "(?P<name>[^"]+)" at "(?P<at>[^"]+)"'
)


def _parse_error(text: str) -> BadRequest:
    """json_format's message, reworded to name the field first as the
    server's own messages do."""
    prefix = _PARSE_PREFIX.match(text)
    names = _PARSE_NAMES.findall(prefix.group(0)) if prefix else []
    rest = text[prefix.end() :] if prefix else text
    unknown = _NO_FIELD.match(rest)
    if unknown is not None:
        where = unknown.group("at").partition(".")[2]
        name = unknown.group("name")
        return BadRequest(f"{where}.{name}" if where else name, "no such field in the request")
    found = _PARSE_AT.match(rest)
    if found is not None:
        return BadRequest(found.group("field"), found.group("what"))
    return BadRequest(".".join(names), rest.rstrip("."))


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
