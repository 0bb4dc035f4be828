"""The gRPC layer: validate the request, call the service, convert the answer.
Errors become statuses through :mod:`jobstream.server.status`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message

from jobstream.server import convert, fields, tokens, validation
from jobstream.server.artifacts import Artifacts
from jobstream.server.auth import current_principal
from jobstream.server.domain import EventKind, LogSearch, NewJob, WorkerInfo
from jobstream.server.errors import InvalidArgument, ServiceError
from jobstream.server.limits import (
    DEFAULT_EVENT_PAGE,
    DEFAULT_JOB_PAGE,
    DEFAULT_WORKER_PAGE,
    EVENT_MESSAGE_CACHE_BYTES,
    MAX_ARTIFACT_CHUNK_BYTES,
    MAX_ARTIFACT_PAGE,
    MAX_EVENT_PAGE,
    MAX_JOB_PAGE,
    MAX_RESPONSE_BYTES,
    MAX_WORKER_PAGE,
    WATCH_BATCH_BYTES,
    Limits,
)
from jobstream.server.presence import Presence
from jobstream.server.purge import Purges
from jobstream.server.quotas import (
    DEFAULT_MAX_WATCHERS,
    DEFAULT_MAX_WATCHERS_PER_PRINCIPAL,
    WatcherQuota,
)
from jobstream.server.service import JobService, ListingResume
from jobstream.server.status import Context, streaming, unary
from jobstream.server.tokens import PageTokens
from jobstream.v1 import (
    job_service_pb2 as js,
)
from jobstream.v1 import (
    job_service_pb2_grpc,
    worker_service_pb2_grpc,
)
from jobstream.v1 import (
    worker_service_pb2 as ws,
)

M = TypeVar("M", bound=Message)
T = TypeVar("T")


UPLOAD_DRAIN_S = 1.0
"""Most seconds a refused upload reads (and drops) what the client still
sends before the refusal goes out."""

REPEATED_OVERHEAD_BYTES = 6
"""Bytes a repeated message field adds per item on the wire (tag and
length) beyond the item itself, counted generously."""


def _fit(messages: list[M]) -> list[M]:
    """The first of ``messages`` that fit in MAX_RESPONSE_BYTES, and
    always at least one: a page cut here hands out a token for the rest, so
    it never outgrows what a client can receive."""
    room = MAX_RESPONSE_BYTES
    for i, message in enumerate(messages):
        room -= message.ByteSize() + REPEATED_OVERHEAD_BYTES
        if room < 0 and i > 0:
            return messages[:i]
    return messages


class JobServiceServicer(job_service_pb2_grpc.JobServiceServicer):
    """JobService over gRPC."""

    def __init__(
        self,
        service: JobService,
        *,
        artifacts: Artifacts,
        purges: Purges,
        limits: Limits,
        page_tokens: PageTokens,
        presence: Presence,
        quota: WatcherQuota | None = None,
        refuse_unserved: bool = False,
    ) -> None:
        self.service = service
        self.page_tokens = page_tokens
        self.limits = limits
        self.presence = presence
        self.refuse_unserved = refuse_unserved
        """Submits of a kind no live worker serves are FAILED_PRECONDITION."""
        self.artifacts = artifacts
        self.purges = purges
        self.quota = quota or WatcherQuota(DEFAULT_MAX_WATCHERS, DEFAULT_MAX_WATCHERS_PER_PRINCIPAL)
        self.event_messages = convert.EventMessages(EVENT_MESSAGE_CACHE_BYTES)

    @unary
    async def SubmitJob(
        self, request: js.SubmitJobRequest, context: Context
    ) -> js.SubmitJobResponse:
        principal = current_principal()
        spec = validation.new_job(
            request, self.limits, owner=principal.name, id_prefix=principal.id_prefix
        )
        await self._check_served([spec], batch=False)
        [answer] = convert.submitted(await self.service.submit([spec])).responses
        return answer

    @unary
    async def SubmitJobs(
        self, request: js.SubmitJobsRequest, context: Context
    ) -> js.SubmitJobsResponse:
        principal = current_principal()
        specs = validation.new_jobs(
            request, self.limits, owner=principal.name, id_prefix=principal.id_prefix
        )
        await self._check_served(specs, batch=True)
        return convert.submitted(await self.service.submit(specs, batch=True))

    async def _check_served(self, specs: Sequence[NewJob], *, batch: bool) -> None:
        """With --refuse-unserved, FAILED_PRECONDITION naming the first kind
        no live worker serves on its queue."""
        if self.refuse_unserved:
            for i, spec in enumerate(specs):
                field = f"requests[{i}].kind" if batch else "kind"
                await self.presence.require_served(spec.kind, spec.queue, field)

    @unary
    async def ListWorkers(
        self, request: js.ListWorkersRequest, context: Context
    ) -> js.ListWorkersResponse:
        workers, token = await self._paged(
            request,
            default=DEFAULT_WORKER_PAGE,
            maximum=MAX_WORKER_PAGE,
            read=self._workers_after,
            message=convert.worker,
            cursor=lambda worker: worker.id,
        )
        return js.ListWorkersResponse(workers=workers, next_page_token=token)

    async def _workers_after(self, after: Any, limit: int) -> list[WorkerInfo]:
        """Up to ``limit`` workers by id, after the id ``after`` (None: from
        the first)."""
        workers = await self.presence.workers()
        return [w for w in workers if after is None or w.id > str(after)][:limit]

    @unary
    async def GetJob(self, request: js.GetJobRequest, context: Context) -> js.GetJobResponse:
        job = await self.service.get(
            fields.job_id(request.job_id), owner=current_principal().owner_filter
        )
        return js.GetJobResponse(job=convert.job(job))

    async def _paged(
        self,
        request: Message,
        *,
        default: int,
        maximum: int,
        read: Callable[[Any, int], Awaitable[Sequence[T]]],
        message: Callable[[T], M],
        cursor: Callable[[T], Any],
    ) -> tuple[list[M], str]:
        """The one paging rule of every list RPC (AIP-158): a page of
        ``read(after, limit)``'s items as messages, and a next-page token
        only when items remain. One item more than the page is read to know
        that, so the last page never hands out a token to an empty one; a
        page cut short to fit (see _fit) hands one out for the rest."""
        page = self.page_tokens.page(
            request, current_principal().name, default=default, maximum=maximum
        )
        items = await read(page.after, page.size + 1)
        shown = _fit([message(item) for item in items[: page.size]])
        if len(shown) == len(items):
            return shown, ""
        return shown, self.page_tokens.seal(page.binding, cursor(items[len(shown) - 1]))

    @unary
    async def ListJobs(self, request: js.ListJobsRequest, context: Context) -> js.ListJobsResponse:
        flt = dataclasses.replace(
            validation.job_filter(request.filter, self.limits),
            owner=current_principal().owner_filter,
        )
        jobs, token = await self._paged(
            request,
            default=DEFAULT_JOB_PAGE,
            maximum=MAX_JOB_PAGE,
            read=lambda after, limit: self.service.list_jobs(
                flt, limit, None if after is None else (after[0], after[1])
            ),
            message=convert.job,
            cursor=lambda job: [job.create_time, job.id],
        )
        return js.ListJobsResponse(jobs=jobs, next_page_token=token)

    @streaming
    async def WatchJob(
        self, request: js.WatchJobRequest, context: Context
    ) -> AsyncIterator[js.WatchJobResponse]:
        job_id = fields.job_id(request.job_id)
        after = fields.seq(request.after_seq, "after_seq")
        principal = current_principal()
        with self.quota.hold(principal.name):
            async for item in self.service.watch(
                job_id,
                after,
                owner=principal.owner_filter,
                skip_history=request.skip_history,
                final=request.final_snapshot,
            ):
                if item.snapshot is not None:
                    yield js.WatchJobResponse(snapshot=convert.job(item.snapshot))
                    continue
                # Each batch goes once the next is made: the last one, which
                # holds the terminal event, carries the final job.
                held: js.JobEventBatch | None = None
                for batch in self.event_messages.batches(item.events, WATCH_BATCH_BYTES):
                    if held is not None:
                        yield js.WatchJobResponse(events=held)
                    held = batch
                if held is not None:
                    final = None if item.final is None else convert.job(item.final)
                    yield js.WatchJobResponse(events=held, final_snapshot=final)

    @streaming
    async def WatchJobs(
        self, request: js.WatchJobsRequest, context: Context
    ) -> AsyncIterator[js.WatchJobsResponse]:
        principal = current_principal()
        flt = dataclasses.replace(
            validation.job_filter(request.filter, self.limits), owner=principal.owner_filter
        )
        after = fields.seq(request.after_position, "after_position")
        # A listing token is sealed like a page token, bound to the filter
        # and the caller: [position, create_time, id] of a listed job.
        binding = tokens.bind(request, principal.name, ("after_position", "listing_token"))
        resume: ListingResume | None = None
        if request.listing_token:
            position, ctime, job_id = self.page_tokens.open(
                request.listing_token, binding, "listing_token"
            )
            resume = ListingResume(position, (ctime, job_id))
        with self.quota.hold(principal.name):
            async for change in self.service.watch_list(
                flt, after, skip_listing=request.skip_listing, resume=resume
            ):
                if change.job is not None and change.listed:
                    job = change.job
                    token = self.page_tokens.seal(
                        binding, [change.position, job.create_time, job.id]
                    )
                    yield js.WatchJobsResponse(
                        position=change.position, job=convert.job(job), listing_token=token
                    )
                elif change.job is not None:
                    yield js.WatchJobsResponse(
                        position=change.position, job=convert.job(change.job)
                    )
                elif change.deleted_job_id is not None:
                    yield js.WatchJobsResponse(
                        position=change.position, deleted_job_id=change.deleted_job_id
                    )
                else:
                    yield js.WatchJobsResponse(position=change.position, caught_up=True)

    @unary
    async def CancelJob(
        self, request: js.CancelJobRequest, context: Context
    ) -> js.CancelJobResponse:
        job_id = fields.job_id(request.job_id)
        reason = fields.text(request.reason, "reason")
        job = await self.service.cancel(job_id, reason, owner=current_principal().owner_filter)
        return js.CancelJobResponse(job=convert.job(job))

    @unary
    async def DeleteJob(
        self, request: js.DeleteJobRequest, context: Context
    ) -> js.DeleteJobResponse:
        # Another principal's job is missing as far as the caller is
        # concerned: NotFound, or with allow_missing "nothing deleted".
        outcome = await self.service.delete(
            fields.job_id(request.job_id),
            force=request.force,
            allow_missing=request.allow_missing,
            owner=current_principal().owner_filter,
            actor=current_principal().name,
        )
        return js.DeleteJobResponse(
            deleted=outcome.deleted,
            removed_paths=outcome.removal.removed,
            refused_paths=outcome.removal.refused,
        )

    @unary
    async def ListJobLogs(
        self, request: js.ListJobLogsRequest, context: Context
    ) -> js.ListJobLogsResponse:
        size = fields.page_size(request.page_size, DEFAULT_EVENT_PAGE, MAX_EVENT_PAGE)
        search = validation.log_search(request, size)
        # With a tail the lines come in one page (tail <= page size).
        events, token = await self._events(request, EventKind.LOG, search)
        return js.ListJobLogsResponse(events=events, next_page_token=token)

    @unary
    async def ListJobResults(
        self, request: js.ListJobResultsRequest, context: Context
    ) -> js.ListJobResultsResponse:
        events, token = await self._events(request, EventKind.RESULT_ITEM)
        return js.ListJobResultsResponse(events=events, next_page_token=token)

    async def _events(
        self,
        request: js.ListJobLogsRequest | js.ListJobResultsRequest,
        kind: EventKind,
        search: LogSearch | None = None,
    ) -> tuple[list[Any], str]:
        job_id = fields.job_id(request.job_id)
        owner = current_principal().owner_filter
        return await self._paged(
            request,
            default=DEFAULT_EVENT_PAGE,
            maximum=MAX_EVENT_PAGE,
            read=lambda after, limit: self.service.events_page(
                job_id, kind, after or 0, limit, owner=owner, search=search
            ),
            message=convert.event,
            cursor=lambda event: event.seq,
        )

    @unary
    async def RetryJob(self, request: js.RetryJobRequest, context: Context) -> js.RetryJobResponse:
        job_id = fields.job_id(request.job_id)
        reason = fields.text(request.reason, "reason")
        attempts = validation.retry_attempts(request.additional_attempts)
        principal = current_principal()
        answer = await self.service.retry(
            job_id,
            reason,
            attempts,
            answer=lambda job: js.RetryJobResponse(job=convert.job(job)).SerializeToString(),
            key=validation.request_key(request, "RetryJob", principal.name),
            owner=principal.owner_filter,
        )
        return js.RetryJobResponse.FromString(answer)

    @unary
    async def PurgeJobs(
        self, request: js.PurgeJobsRequest, context: Context
    ) -> js.PurgeJobsResponse:
        principal = current_principal()
        flt = dataclasses.replace(
            validation.purge_filter(request.filter, self.limits), owner=principal.owner_filter
        )
        older_than_us = validation.purge_age_us(request)
        key = validation.request_key(request, "PurgeJobs", principal.name)
        # A purge runs in many transactions, so its answer is recorded once
        # it completed: a purge cut short has none, and its repeat runs again
        # (deleting what is left is what the first would have done).
        if key is not None and (first := await self.service.first_answer(key)) is not None:
            return js.PurgeJobsResponse.FromString(first)
        outcome = await self.purges.purge(
            flt, older_than_us=older_than_us, dry_run=request.dry_run, actor=principal.name
        )
        response = js.PurgeJobsResponse(
            purged_count=outcome.count,
            job_ids=outcome.job_ids,
            removed_paths=outcome.removed,
            refused_paths=outcome.refused,
        )
        if key is None:
            return response
        return js.PurgeJobsResponse.FromString(
            await self.service.record_answer(key, response.SerializeToString())
        )

    @unary
    async def GetStats(self, request: js.GetStatsRequest, context: Context) -> js.GetStatsResponse:
        flt = dataclasses.replace(
            validation.job_filter(request.filter, self.limits),
            owner=current_principal().owner_filter,
        )
        stats = await self.service.stats(flt, validation.stats_window_us(request))
        return convert.stats(stats)

    @unary
    async def ListArtifacts(
        self, request: js.ListArtifactsRequest, context: Context
    ) -> js.ListArtifactsResponse:
        job_id = fields.job_id(request.job_id)
        owner = current_principal().owner_filter
        found, token = await self._paged(
            request,
            default=MAX_ARTIFACT_PAGE,
            maximum=MAX_ARTIFACT_PAGE,
            read=lambda after, limit: self.artifacts.list(
                job_id, owner, after=after or "", limit=limit
            ),
            message=convert.artifact,
            cursor=lambda artifact: artifact.name,
        )
        return js.ListArtifactsResponse(artifacts=found, next_page_token=token)

    @streaming
    async def DownloadArtifact(
        self, request: js.DownloadArtifactRequest, context: Context
    ) -> AsyncIterator[js.DownloadArtifactResponse]:
        job_id = fields.job_id(request.job_id)
        name = fields.artifact_name(request.name)
        offset = validation.download_offset(request.offset, self.limits)
        items = self.artifacts.download(
            job_id, name, offset, owner=current_principal().owner_filter
        )
        async for item in items:
            if isinstance(item, bytes):
                yield js.DownloadArtifactResponse(chunk=item)
            else:
                yield js.DownloadArtifactResponse(artifact=convert.artifact(item))


class WorkerServiceServicer(worker_service_pb2_grpc.WorkerServiceServicer):
    """WorkerService over gRPC."""

    def __init__(
        self, service: JobService, *, artifacts: Artifacts, limits: Limits, presence: Presence
    ) -> None:
        self.service = service
        self.artifacts = artifacts
        self.limits = limits
        self.presence = presence

    @unary
    async def AcquireJob(
        self, request: ws.AcquireJobRequest, context: Context
    ) -> ws.AcquireJobResponse:
        spec = validation.acquire(request)
        with self.presence.polling(spec):
            leases = await self.service.acquire(
                worker_id=spec.worker_id,
                kinds=spec.kinds,
                queues=spec.queues,
                wait_s=spec.wait_s,
                lease_us=spec.lease_us,
                max_jobs=spec.max_jobs,
            )
        return convert.leases(leases)

    @unary
    async def ReportJob(
        self, request: ws.ReportJobRequest, context: Context
    ) -> ws.ReportJobResponse:
        ack = await self.service.report(
            fields.job_id(request.job_id),
            fields.lease_id(request.lease_id),
            validation.report(request, self.limits),
        )
        return ws.ReportJobResponse(
            cancel_requested=ack.cancel_requested,
            lease_expire_time=convert.timestamp(ack.lease_expire_time),
            last_seq=ack.last_seq,
        )

    @unary
    async def FinishJob(
        self, request: ws.FinishJobRequest, context: Context
    ) -> ws.FinishJobResponse:
        acquire_next = validation.acquire_next(request)
        if acquire_next is not None:
            self.presence.seen(acquire_next)
        job, leases = await self.service.finish(
            fields.job_id(request.job_id),
            fields.lease_id(request.lease_id),
            validation.finish(request, self.limits),
            acquire_next=acquire_next,
        )
        response = ws.FinishJobResponse(job=convert.job(job))
        if acquire_next is not None:
            response.next.CopyFrom(convert.leases(leases))
        return response

    @unary
    async def FinishJobs(
        self, request: ws.FinishJobsRequest, context: Context
    ) -> ws.FinishJobsResponse:
        items = validation.finishes(request, self.limits)
        acquire_next = validation.acquire_next(request)
        if acquire_next is not None:
            self.presence.seen(acquire_next)
        answers, leases = await self.service.finish_many(items, acquire_next=acquire_next)
        response = ws.FinishJobsResponse(results=[convert.finish_result(a) for a in answers])
        if acquire_next is not None:
            response.next.CopyFrom(convert.leases(leases))
        return response

    @unary
    async def UploadArtifact(
        self, request: AsyncIterator[ws.UploadArtifactRequest], context: Context
    ) -> ws.UploadArtifactResponse:
        messages = aiter(request)
        try:
            return await self._upload(messages)
        except ServiceError:
            await _drain(messages)
            raise

    async def _upload(
        self, messages: AsyncIterator[ws.UploadArtifactRequest]
    ) -> ws.UploadArtifactResponse:
        first = await anext(messages, None)
        if first is None or first.WhichOneof("item") != "header":
            raise InvalidArgument("the first message must carry the header", field="header")
        spec = validation.artifact_header(first.header, self.limits)

        async def chunks() -> AsyncIterator[bytes]:
            async for message in messages:
                if message.WhichOneof("item") != "chunk":
                    raise InvalidArgument("only the first message may carry it", field="header")
                if len(message.chunk) > MAX_ARTIFACT_CHUNK_BYTES:
                    raise InvalidArgument(
                        f"is {len(message.chunk)} bytes; the limit is {MAX_ARTIFACT_CHUNK_BYTES}",
                        field="chunk",
                    )
                yield message.chunk

        artifact, seq = await self.artifacts.upload(spec, chunks())
        return ws.UploadArtifactResponse(artifact=convert.artifact(artifact), seq=seq)


async def _drain(messages: AsyncIterator[Any]) -> None:
    """Reads the rest of a refused client stream, for at most
    UPLOAD_DRAIN_S: grpc's client, still writing when the call ends, may
    report INTERNAL ("Internal error from Core") instead of the refusal (1
    upload in 200 with a bad name, before this)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(UPLOAD_DRAIN_S):
            async for _ in messages:
                pass
