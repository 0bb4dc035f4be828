"""The HTTP routes, read from the ``google.api.http`` annotations of the
services' descriptors: the protos declare each route once, and an RPC given
an annotation gets its route here without a line of gateway code.

Path templates follow ``google.api.HttpRule``: literal segments, variables
``{field}`` / ``{field.sub}`` (one segment) and ``{field=**}`` (the rest of
the path), and a ``:verb`` suffix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from jobstream.v1 import job_service_pb2

SERVICES: tuple[ServiceDescriptor, ...] = (
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"],
)
"""The services the gateway exposes. WorkerService stays gRPC-only: workers
hold leases and stream uploads, which a browser has no use for."""

HTTP_METHODS = ("get", "put", "post", "delete", "patch")
"""The HttpRule pattern fields, each named for its HTTP method."""

_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_.]*)(?:=([^}]*))?\}")


class TemplateError(ValueError):
    """A path template the gateway cannot serve."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Route:
    """One HTTP binding of one RPC."""

    http_method: str
    """Upper-case HTTP method."""
    template: str
    """The path template as written in the proto."""
    body: str
    """``*`` (the whole request is the body), a field name, or empty (no body)."""
    method: MethodDescriptor
    """The RPC it calls."""
    regex: re.Pattern[str]
    """Matches a request path; one named group per variable."""
    variables: tuple[str, ...]
    """Field paths of the variables, in group order (``g0``, ``g1`` …)."""

    @property
    def rpc(self) -> str:
        """The full gRPC method path, ``/package.Service/Method``."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def server_streaming(self) -> bool:
        """Whether the RPC answers with a stream."""
        return bool(self.method.server_streaming)

    def match(self, path: str) -> dict[str, str] | None:
        """The variables' values (percent-decoded) when ``path`` matches."""
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        return {field: unquote(found.group(f"g{i}")) for i, field in enumerate(self.variables)}


def compile_template(template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """The regex and variable field paths of an HttpRule path template."""
    if not template.startswith("/"):
        raise TemplateError(f"{template!r}: a path template starts with '/'")
    pattern: list[str] = []
    variables: list[str] = []
    position = 0
    for found in _VARIABLE.finditer(template):
        pattern.append(re.escape(template[position : found.start()]))
        sub = found.group(2) or "*"
        if sub == "*":
            # One segment; a ':' is allowed inside, so the verb is matched
            # from the end by the literal that follows.
            pattern.append(f"(?P<g{len(variables)}>[^/]+?)")
        elif sub == "**":
            pattern.append(f"(?P<g{len(variables)}>.+?)")
        else:
            raise TemplateError(f"{template!r}: variable pattern {sub!r} is not supported")
        variables.append(found.group(1))
        position = found.end()
    pattern.append(re.escape(template[position:]))
    return re.compile("".join(pattern)), tuple(variables)


def _rules(method: MethodDescriptor) -> Iterator[http_pb2.HttpRule]:
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    yield rule
    yield from rule.additional_bindings


def routes(services: Iterable[ServiceDescriptor] = SERVICES) -> list[Route]:
    """Every binding of every annotated RPC, in declaration order."""
    found: list[Route] = []
    for service in services:
        for method in service.methods:
            for rule in _rules(method):
                kind = rule.WhichOneof("pattern")
                if kind not in HTTP_METHODS:
                    raise TemplateError(f"{method.full_name}: unsupported pattern {kind!r}")
                template = getattr(rule, kind)
                regex, variables = compile_template(template)
                found.append(
                    Route(
                        http_method=kind.upper(),
                        template=template,
                        body=rule.body,
                        method=method,
                        regex=regex,
                        variables=variables,
                    )
                )
    return found


def _specificity(route: Route) -> tuple[bool, int]:
    """Sort key: a template ending in a ``:verb`` and with more literal text
    first, so ``/v1/jobs/{job_id}:watch`` wins over ``/v1/jobs/{job_id}``
    (whose one-segment variable would also take ``abc:watch``)."""
    literal = _VARIABLE.sub("", route.template)
    has_verb = ":" in route.template.rsplit("/", 1)[-1].rsplit("}", 1)[-1]
    return (not has_verb, -len(literal))


@dataclass(frozen=True, slots=True)
class Router:
    """Finds the route of a request: the most specific binding whose method
    and path match."""

    table: tuple[Route, ...]

    @classmethod
    def of(cls, table: Iterable[Route]) -> Router:
        """A router over ``table``, most specific templates first."""
        return cls(tuple(sorted(table, key=_specificity)))

    def find(self, http_method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route and its variables, or None when no route matches."""
        method = "GET" if http_method == "HEAD" else http_method
        for route in self.table:
            if route.http_method != method:
                continue
            values = route.match(path)
            if values is not None:
                return route, values
        return None

    def allowed(self, path: str) -> list[str]:
        """The methods some route serves at ``path`` (for 405 answers)."""
        return sorted({r.http_method for r in self.table if r.match(path) is not None})


def markdown_table(table: Iterable[Route]) -> str:
    """The route table as the README shows it: method, path, RPC."""
    lines = ["| method | path | RPC |", "|---|---|---|"]
    for route in table:
        lines.append(f"| {route.http_method} | `{route.template}` | {route.method.name} |")
    return "\n".join(lines)
