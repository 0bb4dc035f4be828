"""The operations commands of ``jobstream`` (retry, results, artifacts,
download, purge, stats, submit --in), called in this process (``cli_runner``)
against a real server with the demo handlers."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_runner import RUN_TIMEOUT_S, CliRun, run_cli
from conftest import Server
from helpers import RawWorker, eventually, job_in

from jobstream.client import JobClient, JobState
from jobstream.v1 import job_pb2, worker_service_pb2


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[JobClient]:
    with JobClient(server.target) as c:
        yield c


def run(server: Server, *args: str, cwd: Path | None = None) -> CliRun:
    """``jobstream --target SERVER ARGS`` to completion."""
    return run_cli(["--target", server.target, *args], cwd=cwd)


def ok(result: CliRun) -> str:
    """stdout of a run that must have succeeded."""
    assert result.returncode == 0, (result.returncode, result.err, result.out)
    assert "Traceback" not in result.err
    return result.out


def usage_error(result: CliRun) -> str:
    """stderr of a run that must have failed with status 2 and no traceback."""
    assert result.returncode == 2, (result.returncode, result.err, result.out)
    assert "Traceback" not in result.err
    return result.err


def test_submit_in_sets_schedule_time(server: Server, client: JobClient) -> None:
    before = datetime.now(UTC)
    job = json.loads(ok(run(server, "submit", "demo.sleep", "--in", "10m", "--json")))
    stored = client.get(job["id"])
    assert stored.state is JobState.QUEUED and stored.schedule_time is not None
    assert before + timedelta(minutes=9) < stored.schedule_time < before + timedelta(minutes=11)
    client.cancel(job["id"])
    assert "not both" in usage_error(
        run(server, "submit", "demo.sleep", "--in", "1m", "--not-before", "+1m")
    )
    assert "duration" in usage_error(run(server, "submit", "demo.sleep", "--in", "soon"))


def test_retry_runs_a_failed_job_again(server: Server, client: JobClient) -> None:
    job_id = ok(run(server, "submit", "demo.fatal")).strip()
    eventually(lambda: job_in(client, job_id, JobState.FAILED))
    text = ok(run(server, "retry", job_id, "--reason", "try again"))
    assert job_id in text and "attempt 2 of 2" in text
    eventually(lambda: _failed_again(client, job_id))
    retried = json.loads(ok(run(server, "retry", job_id, "--attempts", "3", "--json")))
    assert retried["state"] == "queued" and retried["max_attempts"] == 5
    assert "NOT_FOUND" in usage_error(run(server, "retry", "no-such-job-x"))
    running = ok(run(server, "submit", "demo.sleep", "-p", "seconds=30")).strip()
    assert "FAILED_PRECONDITION" in usage_error(run(server, "retry", running))
    client.cancel(running)


def _failed_again(client: JobClient, job_id: str) -> bool:
    job = client.get(job_id)
    return job.state is JobState.FAILED and job.attempt == 2


def test_results_jsonl_streams_every_item(server: Server, client: JobClient) -> None:
    job_id = ok(run(server, "submit", "demo.count", "-p", "n=30", "-p", "delay=0")).strip()
    eventually(lambda: job_in(client, job_id, JobState.SUCCEEDED))
    lines = [
        json.loads(line) for line in ok(run(server, "results", job_id, "--jsonl")).splitlines()
    ]
    assert [line["key"] for line in lines] == [f"item-{i}" for i in range(1, 31)]
    assert lines[3]["status"] == "succeeded" and lines[3]["data"] == {"i": 4, "square": 16}
    assert all(isinstance(line["seq"], int) for line in lines)
    plain = ok(run(server, "results", job_id))
    assert plain.splitlines()[3] == 'item-4  succeeded  {"i":4,"square":16}'
    assert "NOT_FOUND" in usage_error(run(server, "results", "no-such-job-r"))


def test_results_filter_by_status_and_cut_data_to_the_width(
    server: Server, client: JobClient
) -> None:
    kind = f"cli.res.{uuid.uuid4().hex[:8]}"
    job = client.submit(kind)
    raw = RawWorker(server.target)
    try:
        lease = raw.acquire(kind)
        statuses = [job_pb2.RESULT_STATUS_SUCCEEDED, job_pb2.RESULT_STATUS_FAILED]
        statuses.append(job_pb2.RESULT_STATUS_SKIPPED)
        raw.report(
            job.id, lease.lease_id, results=list(zip(["a", "b", "c"], statuses, strict=True))
        )
        raw.finish(job.id, lease.lease_id)
    finally:
        raw.close()
    assert ok(run(server, "results", job.id, "--status", "failed")).splitlines() == ["b  failed"]
    both = ok(run(server, "results", job.id, "--status", "FAILED", "--status", "skipped"))
    assert both.splitlines() == ["b  failed", "c  skipped"]
    lines = [
        json.loads(x)
        for x in ok(run(server, "results", job.id, "--jsonl", "--status", "skipped")).splitlines()
    ]
    assert [(x["key"], x["status"]) for x in lines] == [("c", "skipped")]
    assert "unknown status 'bogus'" in usage_error(
        run(server, "results", job.id, "--status", "bogus")
    )

    # Data wider than the terminal is cut to it, on one line.
    done = ok(run(server, "submit", "demo.count", "-p", "n=3", "-p", "delay=0")).strip()
    eventually(lambda: job_in(client, done, JobState.SUCCEEDED))
    narrow = run_cli(["--target", server.target, "results", done], env={"COLUMNS": "28"})
    assert ok(narrow).splitlines()[0] == 'item-1  succeeded  {"i":1,"…'


def _upload(raw: RawWorker, job_id: str, lease_id: str, name: str, data: bytes) -> None:
    header = worker_service_pb2.ArtifactHeader(
        job_id=job_id,
        lease_id=lease_id,
        name=name,
        content_type="text/plain",
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    messages = [
        worker_service_pb2.UploadArtifactRequest(header=header),
        worker_service_pb2.UploadArtifactRequest(chunk=data),
    ]
    raw.stub.UploadArtifact(iter(messages), timeout=RUN_TIMEOUT_S)


def test_artifacts_and_download(server: Server, client: JobClient, tmp_path: Path) -> None:
    kind = f"cli.art.{uuid.uuid4().hex[:8]}"
    job = client.submit(kind)
    data = b"hello artifact\n" * 1000
    raw = RawWorker(server.target)
    try:
        lease = raw.acquire(kind)
        _upload(raw, job.id, lease.lease_id, "hello.txt", data)
        raw.finish(job.id, lease.lease_id)
    finally:
        raw.close()

    assert "→ artifact hello.txt  15000 bytes" in ok(run(server, "watch", job.id))
    table = ok(run(server, "artifacts", job.id))
    assert "hello.txt" in table and "14.6 KiB" in table and "text/plain" in table
    [listed] = json.loads(ok(run(server, "artifacts", job.id, "--json")))
    assert listed["sha256"] == hashlib.sha256(data).hexdigest()

    target = tmp_path / "copy.txt"
    said = ok(run(server, "download", job.id, "hello.txt", "-o", str(target)))
    assert "sha256 verified" in said and target.read_bytes() == data
    ok(run(server, "download", job.id, "hello.txt", cwd=tmp_path))
    assert (tmp_path / "hello.txt").read_bytes() == data
    target.write_bytes(data[:100])
    ok(run(server, "download", job.id, "hello.txt", "-o", str(target), "--resume"))
    assert target.read_bytes() == data
    missing = run(server, "download", job.id, "missing.txt", cwd=tmp_path)
    # Said at once, in one line: no progress bar was drawn first.
    assert usage_error(missing) == (
        f"error: NOT_FOUND: job '{job.id}' has no artifact 'missing.txt' (it has: hello.txt)\n"
    )
    assert not (tmp_path / "missing.txt").exists()  # a refused download makes no file
    unknown = run(server, "download", "no-such-job-d", "x.txt", "--json", cwd=tmp_path)
    assert json.loads(usage_error(unknown))["error"]["field"] == "job_id"

    # An existing file is kept unless --force (or --resume).
    target.write_bytes(b"mine")
    kept = usage_error(run(server, "download", job.id, "hello.txt", "-o", str(target)))
    assert kept == (
        f"error: {target} exists; --force replaces it, --resume continues a partial download\n"
    )
    assert target.read_bytes() == b"mine"
    refused = run(server, "download", job.id, "hello.txt", "-o", str(target), "--json")
    assert json.loads(usage_error(refused))["error"]["code"] == "USAGE"
    ok(run(server, "download", job.id, "hello.txt", "-o", str(target), "--force"))
    assert target.read_bytes() == data
    empty = f"cli.none.{uuid.uuid4().hex[:6]}"
    other = client.submit(empty)
    assert "no artifacts" in ok(run(server, "artifacts", other.id))
    client.cancel(other.id)


def test_demo_report_uploads_a_csv_to_download(
    server: Server, client: JobClient, tmp_path: Path
) -> None:
    job_id = ok(run(server, "submit", "demo.report", "-p", "n=1500")).strip()
    done = eventually(lambda: job_in(client, job_id))
    assert done.state is JobState.SUCCEEDED, done.error
    [listed] = json.loads(ok(run(server, "artifacts", job_id, "--json")))
    assert done.result == {"rows": 1500, "artifact": "report.csv", "bytes": listed["size_bytes"]}
    assert listed["name"] == "report.csv" and listed["content_type"] == "text/csv"
    said = ok(run(server, "download", job_id, "report.csv", cwd=tmp_path))
    assert "sha256 verified" in said
    lines = (tmp_path / "report.csv").read_text().splitlines()
    assert lines[0] == "row,square,label" and lines[-1] == "1500,2250000,row 1500"
    assert len(lines) == 1501 and listed["size_bytes"] == (tmp_path / "report.csv").stat().st_size


def test_purge_dry_run_then_purge(server: Server, client: JobClient) -> None:
    label = f"t={uuid.uuid4().hex[:10]}"
    ids = [
        ok(run(server, "submit", "demo.sleep", "--in", "1h", "--label", label)).strip()
        for _ in range(2)
    ]
    for job_id in ids:
        client.cancel(job_id)
    dry = ok(run(server, "purge", "--older-than", "0", "--label", label, "--dry-run"))
    assert "would delete 2 job(s)" in dry and all(i in dry for i in ids)
    assert len(list(client.list(labels=dict([label.split("=")])))) == 2
    done = json.loads(ok(run(server, "purge", "--older-than", "0s", "--label", label, "--json")))
    assert done["purged_count"] == 2 and sorted(done["job_ids"]) == sorted(ids)
    assert list(client.list(labels=dict([label.split("=")]))) == []
    assert "--older-than" in usage_error(run(server, "purge"))
    refused = usage_error(run(server, "purge", "--older-than", "30d", "--state", "running"))
    assert "INVALID_ARGUMENT" in refused and "filter.states" in refused


def test_stats_table_and_json(server: Server, client: JobClient) -> None:
    label = f"t={uuid.uuid4().hex[:10]}"
    job_id = ok(
        run(server, "submit", "demo.count", "-p", "n=3", "-p", "delay=0", "--label", label)
    ).strip()
    eventually(lambda: job_in(client, job_id, JobState.SUCCEEDED))
    text = ok(run(server, "stats", "--label", label, "--window", "1d"))
    assert "demo.count" in text and "SUCCEEDED" in text
    assert "success rate 100.0%" in text
    assert "last 24 h: 1 job ended\n" in text
    assert re.search(r"run time p50 \d+(\.\d)? (ms|s), p95 \d+(\.\d)? (ms|s) ", text), text
    assert "last 1.5 h: 1 job ended" in ok(
        run(server, "stats", "--label", label, "--window", "90m")
    )
    data = json.loads(ok(run(server, "stats", "--label", label, "--json")))
    assert data["by_state"] == {"succeeded": 1} and data["ended_count"] == 1
    assert data["window"] == 3600 and data["success_rate"] == 1.0
    assert "window" in usage_error(run(server, "stats", "--window", "0"))


def test_help_names_the_new_environment_variables(server: Server) -> None:
    for command, variable in [
        ("purge", "JOBSTREAM_PURGE_OLDER_THAN"),
        ("submit", "JOBSTREAM_SUBMIT_IN"),
        ("download", "JOBSTREAM_DOWNLOAD_OUTPUT"),
        ("stats", "JOBSTREAM_STATS_WINDOW"),
        ("results", "JOBSTREAM_RESULTS_JSONL"),
        ("retry", "JOBSTREAM_RETRY_ATTEMPTS"),
    ]:
        assert variable in ok(run(server, command, "--help")).replace("\n", " "), command
