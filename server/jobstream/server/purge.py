"""Purge and retention: deleting old terminal jobs with their files.

A purge deletes in batches of PURGE_BATCH jobs, each its own writer
operation, so submits, reports and watchers' writes queued meanwhile commit
between (or alongside) the batches instead of waiting for one huge
transaction. Artifact bytes are not deleted in the batch: it marks them for
the sweep, which it wakes, and which removes them a few MiB per operation.
The cutoff is fixed when the purge starts: jobs that end while it runs are
left for the next one, so a purge always terminates. Files are removed
after each batch commits, as DeleteJob does, and only what each job owns
(files.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from jobstream.server.domain import JobFilter, now_us
from jobstream.server.files import FileRoots, remove_job_files
from jobstream.server.readers import Readers
from jobstream.server.service import who
from jobstream.server.store.deletion import Deletions
from jobstream.server.writer import Writer

log = logging.getLogger(__name__)

PURGE_BATCH = 200
"""Jobs deleted per writer operation: small enough that one batch (rows,
cascaded events, change-log entries; artifact bytes are only marked)
commits in milliseconds."""

MIN_RETENTION_EVERY_S = 0.1
"""Floor of the retention interval, so a typo cannot make it spin."""

RETENTION_ACTOR = "retention"
"""Who the log lines of the retention's purges name."""

MAX_LISTED = 1_000
"""Job ids and paths a purge reports back; the count is always complete."""


@dataclass(kw_only=True, slots=True)
class PurgeOutcome:
    """What a purge deleted (or, dry, would delete)."""

    count: int = 0
    job_ids: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


class Purges:
    """Purges of old ended jobs: the store's deletions, run through the
    writer in batches, then the jobs' files."""

    def __init__(
        self,
        *,
        deletions: Deletions,
        writer: Writer,
        readers: Readers,
        roots: FileRoots,
        sweep_wanted: asyncio.Event,
    ) -> None:
        self.deletions = deletions
        self.writer = writer
        self.readers = readers
        self.roots = roots
        self.sweep_wanted = sweep_wanted
        """Set when a batch left artifact chunks for the sweep."""

    async def purge(
        self, flt: JobFilter, *, older_than_us: int, dry_run: bool, actor: str = ""
    ) -> PurgeOutcome:
        """Deletes the terminal jobs matching ``flt`` that ended at least
        ``older_than_us`` ago; with ``dry_run`` only counts and lists them.
        Each batch logs the ids it deleted and ``actor``, who asked."""
        deletions = self.deletions
        cutoff = now_us() - older_than_us
        if dry_run:
            count, ids = await self.readers.run(
                deletions.purge_preview, flt, ended_before=cutoff, list_limit=MAX_LISTED
            )
            return PurgeOutcome(count=count, job_ids=ids)
        outcome = PurgeOutcome()
        while True:
            batch = await self.writer.run(
                lambda c: deletions.purge_batch(
                    c, flt, ended_before=cutoff, limit=PURGE_BATCH, now=now_us()
                )
            )
            if any(d.garbage for d in batch):
                self.sweep_wanted.set()
            if batch:
                log.info(
                    "purged %d jobs that ended over %gs ago (by %s): %s",
                    len(batch),
                    older_than_us / 1e6,
                    who(actor),
                    " ".join(d.job_id for d in batch),
                )
            for deletion in batch:
                removal = await remove_job_files(self.roots, deletion.job_id, deletion.files)
                _extend(outcome.removed, removal.removed)
                _extend(outcome.refused, removal.refused)
            outcome.count += len(batch)
            _extend(outcome.job_ids, [d.job_id for d in batch])
            if len(batch) < PURGE_BATCH:
                return outcome
            # Let the event loop run the RPCs that arrived during the batch, so
            # their writes queue up behind ours rather than after the whole purge.
            await asyncio.sleep(0)


async def retention_loop(purges: Purges, *, keep_us: int, every_s: float) -> None:
    """Purges jobs that ended more than ``keep_us`` ago, now and then every
    ``every_s`` seconds, forever."""
    while True:
        try:
            outcome = await purges.purge(
                JobFilter(), older_than_us=keep_us, dry_run=False, actor=RETENTION_ACTOR
            )
            if outcome.count:
                log.info("retention: purged %d ended jobs", outcome.count)
        except Exception:
            log.exception("retention purge failed; will retry")
        await asyncio.sleep(every_s)


def _extend(listed: list[str], more: list[str] | tuple[str, ...]) -> None:
    listed.extend(more[: max(0, MAX_LISTED - len(listed))])
