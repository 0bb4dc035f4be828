"""Plain HTTP downloads: an artifact with Content-Length, Range (RFC 9110:
206 with Content-Range, resume) and its sha256 (RFC 9530 ``Repr-Digest``
and a hex ``X-Content-SHA256``); and any paged list (``ListJobResults``,
``ListJobLogs``, ``ListJobs``) as JSON lines, every page in one response."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from jobstream.gateway.transcode import dumps
from jobstream.v1 import job_service_pb2 as js

DOWNLOAD_METHOD = "jobstream.v1.JobService.DownloadArtifact"
"""The streaming RPC answered as a file download instead of events."""

JSONL_TYPE = "application/jsonl"
"""Media type of JSON-lines answers (``alt=jsonl``)."""

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(Exception):
    """The Range asks for bytes the artifact does not have."""


def parse_range(header: str) -> tuple[int | None, int | None] | None:
    """``bytes=A-B`` / ``bytes=A-`` / ``bytes=-N`` as (first, last) or
    (None, N) for a suffix; None for anything else (several ranges, other
    units), which is answered with the whole file as RFC 9110 allows."""
    found = _RANGE.match(header.strip())
    if found is None or found.group(0) == "bytes=-":
        return None
    first, last = found.group(1), found.group(2)
    if not first:
        return None, int(last)
    return int(first), int(last) if last else None


def _span(wanted: tuple[int | None, int | None], size: int) -> tuple[int, int]:
    """The satisfiable [start, end] of a parsed range within ``size`` bytes."""
    first, last = wanted
    if first is None:
        suffix = last or 0
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    if first >= size or (last is not None and last < first):
        raise RangeNotSatisfiable
    return first, size - 1 if last is None or last >= size else last


def artifact_headers(artifact: Any) -> dict[str, str]:
    """Headers describing the whole artifact."""
    digest = base64.b64encode(bytes.fromhex(artifact.sha256)).decode()
    return {
        "Accept-Ranges": "bytes",
        "ETag": f'"{artifact.sha256}"',
        "Repr-Digest": f"sha-256=:{digest}:",
        "X-Content-SHA256": artifact.sha256,
        "Content-Type": artifact.content_type or "application/octet-stream",
        # Always a download, never rendered: an HTML artifact must not run
        # as a page of the dashboard's origin.
        "Content-Disposition": f'attachment; filename="{artifact.name}"',
        "Content-Security-Policy": "sandbox; default-src 'none'",
    }


Start = Callable[[Message], Any]
"""Starts the upstream DownloadArtifact call."""


async def download(
    request: web.Request, message: js.DownloadArtifactRequest, start: Start
) -> web.StreamResponse:
    """Streams the artifact; raises grpc.aio.AioRpcError when the server
    refuses before any byte was sent."""
    wanted = parse_range(request.headers.get("Range", ""))
    if_range = request.headers.get("If-Range")
    message.offset = wanted[0] if wanted is not None and wanted[0] is not None else 0
    call = start(message)
    try:
        try:
            first = await anext(aiter(call))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.OUT_OF_RANGE or wanted is None:
                raise
            # Past the end: say how big the file is, as RFC 9110 asks.
            call.cancel()
            message.offset = 0
            call = start(message)
            first = await anext(aiter(call))
            size = first.artifact.size_bytes
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        artifact = first.artifact
        headers = artifact_headers(artifact)
        size = artifact.size_bytes
        if wanted is not None and if_range is not None and if_range != headers["ETag"]:
            wanted = None  # changed since the client's partial copy: send it all
        if wanted is None:
            start_at, end = 0, size - 1
            status = 200
        else:
            try:
                start_at, end = _span(wanted, size)
            except RangeNotSatisfiable:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start_at}-{end}/{size}"
        if start_at != message.offset:
            call.cancel()
            message.offset = start_at
            call = start(message)
            await anext(aiter(call))  # the metadata again
        length = max(0, end - start_at + 1)
        headers["Content-Length"] = str(length)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        remaining = length
        try:
            async for item in call:
                chunk = item.chunk[:remaining]
                remaining -= len(chunk)
                await response.write(chunk)
                if remaining <= 0:
                    break
        except grpc.aio.AioRpcError:
            # Replaced or deleted mid-way (ABORTED), or the server went: the
            # headers are gone, so cut the connection; the short body tells
            # the client (Content-Length) to resume.
            remaining = -1
        if remaining != 0:
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response
    finally:
        call.cancel()


def paged_item_field(descriptor: Descriptor) -> FieldDescriptor | None:
    """The repeated item field of a paged list response (one with a
    ``next_page_token`` and exactly one repeated message field)."""
    if "next_page_token" not in descriptor.fields_by_name:
        return None
    repeated = [f for f in descriptor.fields if f.is_repeated and f.message_type is not None]
    return repeated[0] if len(repeated) == 1 else None


async def jsonl(
    request: web.Request,
    *,
    message: Message,
    item_field: FieldDescriptor,
    call: Callable[[Message], Any],
    filename: str,
    to_json: Callable[[Message], Any],
) -> web.StreamResponse:
    """Every page of a list as JSON lines; raises grpc.aio.AioRpcError when
    the first page is refused (answered as an error), and cuts the
    connection when a later one is (the body is then visibly short)."""
    page = await call(message)
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": f"{JSONL_TYPE}; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )
    await response.prepare(request)
    while True:
        items = getattr(page, item_field.name)
        if items:
            await response.write(b"".join(dumps(to_json(item)) + b"\n" for item in items))
        token = page.next_page_token
        if not token:
            break
        message.page_token = token  # type: ignore[attr-defined]
        try:
            page = await call(message)
        except grpc.aio.AioRpcError:
            if request.transport is not None:
                request.transport.close()
            return response
    await response.write_eof()
    return response
