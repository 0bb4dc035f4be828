"""The HTTP face: one aiohttp application serving the JSON/SSE API (routes
from the protos' annotations), the dashboard's static files, sign-in and
health, in front of a jobstream server reached over gRPC.

It runs on the caller's event loop (``jobstream serve --http-port`` starts
it beside grpc.aio in the server process) or alone (``jobstream gateway``),
and talks to the server only through the public gRPC API, so it works the
same in front of one server or a load balancer over several.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jobstream.client.connection import CHANNEL_OPTIONS
from jobstream.client.security import PLAINTEXT, Security
from jobstream.gateway import downloads, errors, session, streams
from jobstream.gateway.hub import Hubs
from jobstream.gateway.jsonmap import JsonMapper
from jobstream.gateway.routes import Route, Router, routes
from jobstream.gateway.transcode import BadRequest, build_request, dumps, parse_body
from jobstream.v1 import errors_pb2
from jobstream.v1 import job_service_pb2 as js

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
"""The dashboard: committed HTML, JavaScript and CSS, no build step."""

MAX_BODY_BYTES = 16 * 1024 * 1024
"""Largest request body: the server's default largest message."""

CALL_TIMEOUT_S = 60.0
"""Deadline of each unary call the gateway makes."""

SHUTDOWN_S = 5.0
"""How long open requests may take to end when the gateway stops (event
streams are ended at once; their clients resume elsewhere)."""

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
"""No inline script or style, nothing from elsewhere: text a job wrote can
never become code on the dashboard, even if some of it reached the DOM."""

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
"""Headers on every answer (a download sets its own stricter policy)."""

SIGNIN_MESSAGES = {
    "": "",
    "rejected": "The server did not accept this token.",
    "denied": "This token may not read jobs (a worker token?).",
    "unavailable": "The server is not reachable; try again.",
}
"""What the sign-in page may say; fixed texts, never anything a request sent."""


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewayConfig:
    """Where the gateway listens and which server it calls."""

    target: str
    """The jobstream server (``host:port``, or ``unix:PATH``)."""
    host: str = "127.0.0.1"
    port: int = 8080
    """0 picks a free port (see :attr:`Gateway.port`)."""
    upstream: Security = PLAINTEXT
    """TLS towards the server; never a token (callers bring their own)."""
    tls_cert: Path | None = None
    """PEM certificate chain: serve HTTPS (and mark the cookie Secure)."""
    tls_key: Path | None = None
    """PEM key of ``tls_cert``."""

    @property
    def https(self) -> bool:
        """Whether the gateway serves HTTPS."""
        return self.tls_cert is not None


@dataclass
class Gateway:
    """The running HTTP face; :meth:`start` it inside a running event loop."""

    config: GatewayConfig
    router: Router = field(default_factory=lambda: Router.of(routes()))
    port: int = 0
    _channel: grpc.aio.Channel | None = None
    _runner: web.AppRunner | None = None
    _streams: set[asyncio.Task[Any]] = field(default_factory=set)
    _json: JsonMapper = field(default_factory=JsonMapper)
    _events: streams.EventJson = field(init=False)
    _hubs: Hubs = field(init=False)
    _calls: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._events = streams.EventJson(self._json)
        self._hubs = Hubs(self._events)

    @property
    def url(self) -> str:
        """The base URL it serves."""
        scheme = "https" if self.config.https else "http"
        host = self.config.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}/"

    async def start(self) -> None:
        """Opens the channel and starts listening."""
        self._channel = self.config.upstream.aio_channel(self.config.target, CHANNEL_OPTIONS)
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._guard])
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/", self._index)
        app.router.add_get("/signin", self._signin_page)
        app.router.add_post("/signin", self._signin)
        app.router.add_post("/signout", self._signout)
        app.router.add_static("/ui/", STATIC_DIR, follow_symlinks=False)
        app.router.add_route("*", "/v1/{tail:.*}", self._api)
        # A client that hangs up cancels its handler, and with it the
        # upstream call (a watch the server would otherwise keep counting).
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_S
        )
        await self._runner.setup()
        context = None
        if self.config.tls_cert is not None and self.config.tls_key is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        site = web.TCPSite(self._runner, self.config.host, self.config.port, ssl_context=context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Ends event streams, stops listening, closes the channel."""
        self._hubs.close()
        for task in list(self._streams):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._channel is not None:
            await self._channel.close()

    # ------------------------------------------------------------ plumbing

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Security headers on every answer, the cross-site check on every
        state-changing request, and no traceback ever on the wire."""
        refusal = session.cross_site_refusal(request)
        if refusal is not None:
            response: web.StreamResponse = _status_response(
                errors.refusal(
                    grpc.StatusCode.PERMISSION_DENIED, refusal, errors_pb2.CROSS_SITE_REQUEST
                )
            )
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                exc.headers.update(SECURITY_HEADERS)
                raise
            except BadRequest as exc:
                response = _status_response(errors.bad_request(exc.field, exc.description))
            except grpc.aio.AioRpcError as exc:
                response = _status_response(errors.status_of(exc))
            except (asyncio.CancelledError, ConnectionResetError):
                raise
            except Exception:
                log.exception("%s %s failed", request.method, request.path)
                response = _status_response(
                    errors.refusal(
                        grpc.StatusCode.INTERNAL,
                        "the gateway failed; see its log",
                        errors_pb2.INTERNAL_ERROR,
                    )
                )
        if not response.prepared:
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
        return response

    def _unary(self, route: Route) -> Callable[..., Awaitable[Any]]:
        """The route's unary RPC on the channel (made once)."""
        found: Callable[..., Awaitable[Any]] | None = self._calls.get(route.rpc)
        if found is None:
            assert self._channel is not None
            found = self._channel.unary_unary(
                route.rpc,
                request_serializer=_serialize,
                response_deserializer=GetMessageClass(route.method.output_type).FromString,
            )
            self._calls[route.rpc] = found
        return found

    def _stream(self, route: Route) -> Callable[..., Any]:
        """The route's server-streaming RPC on the channel (made once)."""
        found: Callable[..., Any] | None = self._calls.get(route.rpc)
        if found is None:
            assert self._channel is not None
            found = self._channel.unary_stream(
                route.rpc,
                request_serializer=_serialize,
                response_deserializer=GetMessageClass(route.method.output_type).FromString,
            )
            self._calls[route.rpc] = found
        return found

    # ------------------------------------------------------------ the API

    async def _api(self, request: web.Request) -> web.StreamResponse:
        """Any ``/v1/…`` request: the route of the annotations, its request
        message, then the answer its RPC's shape calls for."""
        found = self.router.find(request.method, request.path)
        if found is None:
            return self._no_route(request)
        route, variables = found
        raw = await request.read()
        if not route.body and raw.strip():
            raise BadRequest("body", f"{route.http_method} {route.template} takes no body")
        body = parse_body(raw) if route.body else {}
        message = build_request(route, variables, request.query.items(), body)
        metadata = session.metadata(request)
        alt = request.query.get("alt", "json")
        if alt not in ("json", "jsonl"):
            raise BadRequest("alt", f"must be json or jsonl, not {alt!r}")
        if route.method.full_name == downloads.DOWNLOAD_METHOD:
            download_call = self._stream(route)
            assert isinstance(message, js.DownloadArtifactRequest)
            return await downloads.download(
                request, message, lambda m: download_call(m, metadata=metadata)
            )
        if route.server_streaming:
            return await self._event_stream(request, route, message, metadata)
        unary = self._unary(route)

        async def call(m: Message) -> Any:
            return await unary(m, metadata=metadata, timeout=CALL_TIMEOUT_S)

        if alt == "jsonl":
            item_field = downloads.paged_item_field(route.method.output_type)
            if item_field is None:
                raise BadRequest("alt", f"{route.method.name} is not a paged list")
            what = route.template.rsplit("/", 1)[-1]  # jobs, logs, results
            job_id = variables.get("job_id", "")
            return await downloads.jsonl(
                request,
                message=message,
                item_field=item_field,
                call=call,
                filename=f"{job_id}-{what}.jsonl" if job_id else f"{what}.jsonl",
                to_json=self._json.to_json,
            )
        response = await call(message)
        return web.Response(
            body=dumps(self._json.to_json(response)), content_type="application/json"
        )

    def _no_route(self, request: web.Request) -> web.Response:
        allowed = self.router.allowed(request.path)
        if allowed:
            return _status_response(
                errors.refusal(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"{request.method} is not served at {request.path}; try {', '.join(allowed)}",
                    errors_pb2.METHOD_NOT_ALLOWED,
                    allowed=", ".join(allowed),
                ),
                http_status=405,
                headers={"Allow": ", ".join(allowed)},
            )
        return _status_response(
            errors.refusal(
                grpc.StatusCode.NOT_FOUND,
                f"no route {request.path}",
                errors_pb2.ROUTE_NOT_FOUND,
                path=request.path,
            )
        )

    async def _event_stream(
        self,
        request: web.Request,
        route: Route,
        message: Message,
        metadata: tuple[tuple[str, str], ...],
    ) -> web.StreamResponse:
        """A watch as Server-Sent Events, resumed from ``Last-Event-ID``;
        WatchJob through the job's shared hub."""
        spec = streams.RESUMABLE.get(route.method.full_name)
        if spec is None:
            raise BadRequest("", f"{route.method.name} is not served over HTTP")
        if isinstance(message, js.WatchJobRequest) and message.final_snapshot:
            # An event stream ends with `event: end` after the terminal
            # event; the job as it ended is one GET /v1/jobs/{job_id} away.
            raise BadRequest(
                "finalSnapshot",
                "not served over HTTP: read GET /v1/jobs/{job_id} after the stream's end event",
            )
        streams.resume_point(request, message, spec)
        stream_call = self._stream(route)
        # Tracked so that stop() can end them: they never end by themselves.
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            if isinstance(message, js.WatchJobRequest):
                get_job = self._unary_by_name("GetJob", js.GetJobResponse)
                return await self._hubs.serve(
                    request,
                    message,
                    metadata,
                    lambda m, md: stream_call(m, metadata=md),
                    lambda m, md: get_job(m, metadata=md, timeout=CALL_TIMEOUT_S),
                )
            return await streams.EventStream(
                spec, message, lambda m: stream_call(m, metadata=metadata), self._events
            ).serve(request)
        finally:
            self._streams.discard(task)

    # ------------------------------------------------------------ the rest

    async def _health(self, request: web.Request) -> web.Response:
        assert self._channel is not None
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        except grpc.aio.AioRpcError as exc:
            status = f"UNREACHABLE ({exc.code().name})"
        ok = status == "SERVING"
        return web.json_response({"status": status}, status=200 if ok else 503)

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def _signin_page(self, request: web.Request) -> web.Response:
        note = SIGNIN_MESSAGES.get(request.query.get("error", ""), "")
        page = (STATIC_DIR / "signin.html").read_text()
        # Only one of the fixed texts above is put in the page.
        return web.Response(
            text=page.replace("{{note}}", note),
            content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )

    async def _signin(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        token = str(form.get("token", "")).strip()
        assert self._channel is not None
        stub = self._unary_by_name("ListJobs", js.ListJobsResponse)
        try:
            await stub(
                js.ListJobsRequest(page_size=1),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=CALL_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            reason = {
                grpc.StatusCode.UNAUTHENTICATED: "rejected",
                grpc.StatusCode.PERMISSION_DENIED: "denied",
            }.get(exc.code(), "unavailable")
            return _see_other(f"/signin?error={reason}")
        response = _see_other("/")
        session.set_token(response, token, secure=self.config.https)
        return response

    async def _signout(self, request: web.Request) -> web.StreamResponse:
        response = _see_other("/signin")
        session.clear_token(response, secure=self.config.https)
        return response

    def _unary_by_name(self, name: str, answer: type[Message]) -> Callable[..., Awaitable[Any]]:
        assert self._channel is not None
        return self._channel.unary_unary(
            f"/jobstream.v1.JobService/{name}",
            request_serializer=_serialize,
            response_deserializer=answer.FromString,
        )


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _status_response(
    status: Any, *, http_status: int | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=http_status or errors.http_status(status.code),
        body=dumps(errors.status_json(status)),
        content_type="application/json",
        headers=headers,
    )


@contextlib.asynccontextmanager
async def running(config: GatewayConfig) -> Any:
    """A started gateway, stopped on the way out."""
    gateway = Gateway(config)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()
