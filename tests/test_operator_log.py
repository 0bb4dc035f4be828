"""The server's INFO log lets an operator reconstruct what happened to a
job: each delete (who asked, with force or not), purge (who, which jobs),
and each job taken from a worker that stopped reporting (rescued into the
queue, or interrupted once out of attempts) is one line naming the job."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

import pytest
from conftest import InProcessServer
from helpers import RawWorker, eventually

from jobstream.client import JobClient, JobState


def _lines(caplog: pytest.LogCaptureFixture, job_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if job_id in r.getMessage()]


def _line(caplog: pytest.LogCaptureFixture, job_id: str, start: str) -> str | None:
    """The first log line about ``job_id`` starting with ``start``."""
    return next((m for m in _lines(caplog, job_id) if m.startswith(start)), None)


def test_deletes_purges_rescues_and_interrupts_are_logged(
    start_inprocess_server: Callable[..., InProcessServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobstream.server")
    server = start_inprocess_server()
    worker = RawWorker(server.target)
    try:
        with JobClient(server.target) as client:
            plain = client.submit("audit.plain")
            client.cancel(plain.id)
            client.delete(plain.id)
            line = eventually(lambda: _line(caplog, plain.id, "deleted job"))
            assert "(by anonymous;" in line and "force" not in line

            forced = client.submit("audit.forced")
            worker.acquire("audit.forced")
            client.delete(forced.id, force=True)
            line = eventually(lambda: _line(caplog, forced.id, "deleted job"))
            assert "with force: it was running" in line

            old = client.submit("audit.old")
            client.cancel(old.id)
            purged = client.purge(older_than=timedelta(0), kinds=["audit.old"])
            assert purged.job_ids == (old.id,)
            line = eventually(lambda: _line(caplog, old.id, "purged 1 jobs"))
            assert "(by anonymous)" in line

            lost = client.submit("audit.lost", max_attempts=2)
            worker.acquire("audit.lost", lease_s=1)
            line = eventually(lambda: _line(caplog, lost.id, "rescued job"))
            assert "lease expired: worker raw-worker stopped reporting; retrying" in line
            eventually(lambda: worker.acquire("audit.lost", wait=1, lease_s=1).HasField("job"))
            line = eventually(lambda: _line(caplog, lost.id, "interrupted job"))
            assert client.get(lost.id).state is JobState.INTERRUPTED
    finally:
        worker.close()
