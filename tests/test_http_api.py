"""The HTTP face, as curl sees it: every route of the annotations against a
real server serving ``--http-port``, the JSON mapping, event streams that
resume across a restart, downloads with Range and sha256, errors as
google.rpc.Status, tokens and ownership, and the cross-site check.

The gateway speaks gRPC to the server like any client, so these run on
SQLite, with the job-list stream (which the server reads from its change
log) once on PostgreSQL too; the server's storage suites cover the rest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.client
import json
import re
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from authmatrix import TOKENS, write_tokens
from conftest import ServerProcess
from helpers import RawWorker, eventually, submit_batches
from httpclient import Answer, call, events
from test_metrics import free_port

from jobstream.gateway.routes import markdown_table, routes
from jobstream.v1 import job_service_pb2, job_service_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
"""The checkout, for the README."""


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the demo handlers and the HTTP face, shared by the module."""
    data = tmp_path_factory.mktemp("web") / "data"
    data.mkdir()
    proc = ServerProcess(data, handlers=("jobstream.client.demo",), http=True)
    yield proc.start()
    proc.kill()


def submit(base: str, kind: str, **fields: object) -> dict[str, object]:
    answer = call("POST", f"{base}/v1/jobs", {"kind": kind, **fields})
    assert answer.status == 200, answer.body
    job: dict[str, object] = answer.json()["job"]
    return job


def wait_state(base: str, job_id: str, *states: str) -> dict[str, object]:
    def probe() -> dict[str, object] | None:
        job: dict[str, object] = call("GET", f"{base}/v1/jobs/{job_id}").json()["job"]
        return job if job["state"] in states else None

    return eventually(probe, timeout=30)


TERMINAL = (
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLED",
    "JOB_STATE_INTERRUPTED",
)


def test_readme_route_table_lists_every_annotated_route() -> None:
    readme = (REPO / "README.md").read_text()
    table = markdown_table(routes())
    for line in table.splitlines()[2:]:
        assert line in readme, f"README's route table lacks: {line}"


def test_submit_get_list_in_canonical_json(web: ServerProcess) -> None:
    base = web.http_url
    job = submit(base, "demo.count", params={"n": 3}, labels={"suite": "http-list"})
    assert re.fullmatch(r"job_[0-9a-z]{26}", str(job["id"]))
    assert job["state"] == "JOB_STATE_QUEUED"
    assert job["lastSeq"] == "1"  # int64 as a string: the proto3 JSON mapping
    done = wait_state(base, str(job["id"]), *TERMINAL)
    assert done["state"] == "JOB_STATE_SUCCEEDED"
    assert done["result"] == {"total": 3}
    assert [s["name"] for s in done["steps"]] == ["count", "summarise"]  # type: ignore[attr-defined]
    listed = call("GET", f"{base}/v1/jobs?filter.labels[suite]=http-list&pageSize=10").json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    by_kind = call(
        "GET",
        f"{base}/v1/jobs?filter.kinds=demo.count&filter.states=JOB_STATE_SUCCEEDED"
        "&filter.labels[suite]=http-list",
    ).json()
    assert [j["id"] for j in by_kind["jobs"]] == [job["id"]]


def test_list_pages_with_tokens(web: ServerProcess) -> None:
    base = web.http_url
    answer = call(
        "POST",
        f"{base}/v1/jobs:batchSubmit",
        {"requests": [{"kind": "nobody.runs", "labels": {"suite": "pages"}} for _ in range(5)]},
    )
    assert answer.status == 200, answer.body
    made = [r["job"]["id"] for r in answer.json()["responses"]]
    seen: list[str] = []
    token = ""
    while True:
        page = call(
            "GET", f"{base}/v1/jobs?filter.labels[suite]=pages&pageSize=2&pageToken={token}"
        ).json()
        seen += [j["id"] for j in page["jobs"]]
        token = page.get("nextPageToken", "")
        if not token:
            break
    # One batch shares one create time; pages still hold each job once.
    assert sorted(seen) == sorted(made) and len(seen) == len(set(seen)) == 5


def _read_watch(url: str, timeout: float = 60, **headers: str) -> list[tuple[str, str | None]]:
    got: list[tuple[str, str | None]] = []
    with events(url, timeout, **headers) as stream:
        assert stream.status == 200, stream.body
        assert stream.response_headers is not None
        assert stream.response_headers["Content-Type"].startswith("text/event-stream")
        for event in stream:
            got.append((event.event, event.id))
            if event.event == "end":
                break
    return got


def test_watch_streams_every_event_with_its_seq_as_id(web: ServerProcess) -> None:
    base = web.http_url
    job = submit(base, "demo.count", params={"n": 50, "delay": 0.005})
    got = _read_watch(f"{base}/v1/jobs/{job['id']}:watch")
    assert got[0] == ("snapshot", "0")
    assert got[-1] == ("end", None)
    ids = [int(i) for kind, i in got if kind == "event" and i is not None]
    final = call("GET", f"{base}/v1/jobs/{job['id']}").json()["job"]
    assert ids == list(range(1, int(final["lastSeq"]) + 1))
    # Last-Event-ID resumes after it, and a query parameter does on a first connect.
    resumed = _read_watch(f"{base}/v1/jobs/{job['id']}:watch", Last_Event_ID="40")
    assert resumed[0] == ("snapshot", "40")
    assert [int(i) for k, i in resumed if k == "event" and i] == list(range(41, ids[-1] + 1))
    first = _read_watch(f"{base}/v1/jobs/{job['id']}:watch?afterSeq={ids[-1] - 2}")
    assert [int(i) for k, i in first if k == "event" and i] == ids[-2:]


def test_watch_skip_history_starts_after_the_snapshot(web: ServerProcess) -> None:
    base = web.http_url
    job = submit(base, "demo.count", params={"n": 400, "delay": 0.005})
    url = f"{base}/v1/jobs/{job['id']}:watch?skipHistory=true"

    def twenty_events() -> bool:
        now: dict[str, str] = call("GET", f"{base}/v1/jobs/{job['id']}").json()["job"]
        return int(now["lastSeq"]) >= 20

    eventually(twenty_events, timeout=30)
    got = _read_watch(url)
    kind, snapshot_id = got[0]
    assert kind == "snapshot" and snapshot_id is not None and int(snapshot_id) >= 20
    ids = [int(i) for k, i in got if k == "event" and i is not None]
    assert ids == list(range(int(snapshot_id) + 1, ids[-1] + 1)) and got[-1] == ("end", None)
    # A job that has ended: its snapshot, no history, the end.
    assert [k for k, _ in _read_watch(url)] == ["snapshot", "end"]


def test_watch_final_snapshot_is_refused_over_http(web: ServerProcess) -> None:
    base = web.http_url
    job = submit(base, "nobody.runs")
    answer = call("GET", f"{base}/v1/jobs/{job['id']}:watch?finalSnapshot=true")
    assert answer.status == 400, answer.body
    assert b"finalSnapshot" in answer.body


def test_watch_resumes_across_a_server_restart_without_gap_or_repeat(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(handlers=("jobstream.client.demo",), http=True)
    base = server.http_url
    job = submit(base, "demo.count", params={"n": 400, "delay": 0.005})
    seen: list[int] = []
    texts: list[str] = []
    with events(f"{base}/v1/jobs/{job['id']}:watch", 60) as stream:
        for event in stream:
            if event.event == "event" and event.id:
                seen.append(int(event.id))
                if "log" in event.json():
                    texts.append(event.json()["log"]["text"])
            if len(texts) >= 50:
                break
    server.kill()
    server.restart()  # same gRPC and HTTP ports, same data
    with events(f"{base}/v1/jobs/{job['id']}:watch", 90, Last_Event_ID=str(seen[-1])) as stream:
        assert stream.status == 200, stream.body
        for event in stream:
            if event.event == "event" and event.id:
                seen.append(int(event.id))
                if "log" in event.json():
                    texts.append(event.json()["log"]["text"])
            if event.event == "end":
                break
    assert seen == list(range(1, seen[-1] + 1)), "a gap or a repeat in the seqs"
    # The killed attempt was rescued and ran again: its lines repeat only as
    # new events of the new attempt, in order within each attempt.
    assert texts[-1] == "counted 400 items"


def test_watch_jobs_skip_listing_then_changes_with_positions(web: ServerProcess) -> None:
    base = web.http_url
    url = f"{base}/v1/jobs:watch?skipListing=true&filter.labels[suite]=watch-list"
    with events(url, 30) as stream:
        it = iter(stream)
        first = next(it)
        assert first.event == "caught_up" and first.id is not None
        head = int(first.id)
        job = submit(base, "nobody.runs", labels={"suite": "watch-list"})
        change = next(it)
        assert change.event == "job" and change.json()["id"] == job["id"]
        assert change.id is not None and int(change.id) > head
    call("DELETE", f"{base}/v1/jobs/{job['id']}")
    with events(url, 30, Last_Event_ID=change.id) as stream:
        deleted = next(e for e in stream if e.event == "deleted")
    assert deleted.json() == {"jobId": job["id"]}


def test_a_listing_resumes_from_its_last_event_id(web: ServerProcess) -> None:
    suite = uuid.uuid4().hex
    with grpc.insecure_channel(web.target) as channel:
        made = submit_batches(job_service_pb2_grpc.JobServiceStub(channel), 300, suite)
    url = f"{web.http_url}/v1/jobs:watch?filter.labels[suite]={suite}"
    listed: list[str] = []
    with events(url, 30) as stream:
        for event in stream:
            assert event.event == "job" and event.id  # a listing token
            listed.append(event.json()["id"])
            last_id = event.id
            if len(listed) == 100:
                break  # the browser goes away in the middle of the listing
    with events(url, 30, Last_Event_ID=last_id) as stream:
        for event in stream:
            if event.event == "caught_up":
                break
            listed.append(event.json()["id"])
    assert len(listed) == len(set(listed)) and set(listed) == set(made)
    with events(url, 30, Last_Event_ID="not-a-token") as refused:
        assert refused.status == 400 and b"PAGE_TOKEN_INVALID" in refused.body


def test_skip_listing_over_grpc_sends_only_the_marker(web: ServerProcess) -> None:
    submit(web.http_url, "nobody.runs", labels={"suite": "skip-grpc"})
    with grpc.insecure_channel(web.target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        request = job_service_pb2.WatchJobsRequest(skip_listing=True)
        request.filter.labels["suite"] = "skip-grpc"
        stream = stub.WatchJobs(request, timeout=10)
        first = next(stream)
        stream.cancel()
    assert first.WhichOneof("change") == "caught_up"
    assert first.position > 0


def test_cancel_retry_delete_logs_results_stats(web: ServerProcess) -> None:
    base = web.http_url
    job = submit(base, "demo.sleep", params={"seconds": 30})
    job_id = job["id"]
    wait_state(base, str(job_id), "JOB_STATE_RUNNING")
    cancelled = call("POST", f"{base}/v1/jobs/{job_id}:cancel", {"reason": "from curl"})
    assert cancelled.status == 200, cancelled.body
    wait_state(base, str(job_id), "JOB_STATE_CANCELLED")
    retried = call("POST", f"{base}/v1/jobs/{job_id}:retry", {"reason": "again"})
    assert retried.json()["job"]["state"] == "JOB_STATE_QUEUED"
    busy = call("DELETE", f"{base}/v1/jobs/{job_id}")
    assert busy.status in (200, 400)  # queued or already running again
    gone = call("DELETE", f"{base}/v1/jobs/{job_id}?force=true&allowMissing=true")
    assert gone.status == 200
    assert call("GET", f"{base}/v1/jobs/{job_id}").status == 404
    again = call("DELETE", f"{base}/v1/jobs/{job_id}?allowMissing=true").json()
    assert again.get("deleted", False) is False

    counted = submit(base, "demo.count", params={"n": 7, "delay": 0})
    wait_state(base, str(counted["id"]), "JOB_STATE_SUCCEEDED")
    logs = call("GET", f"{base}/v1/jobs/{counted['id']}/logs?pageSize=3").json()
    assert [e["log"]["text"] for e in logs["events"]] == [f"item {i} of 7" for i in (1, 2, 3)]
    assert logs["nextPageToken"]
    lines = call("GET", f"{base}/v1/jobs/{counted['id']}/logs?alt=jsonl")
    assert lines.headers["Content-Type"].startswith("application/jsonl")
    texts = [json.loads(line)["log"]["text"] for line in lines.body.splitlines()]
    assert texts == [f"item {i} of 7" for i in range(1, 8)] + ["counted 7 items"]
    results = call("GET", f"{base}/v1/jobs/{counted['id']}/results?alt=jsonl&pageSize=2")
    assert results.status == 200
    assert 'filename="' in results.headers["Content-Disposition"]
    items = [json.loads(line)["resultItem"] for line in results.body.splitlines()]
    assert [i["key"] for i in items] == [f"item-{i}" for i in range(1, 8)]
    assert items[2]["data"] == {"i": 3, "square": 9}
    stats = call("GET", f"{base}/v1/stats?window=3600s").json()
    assert any(c["state"] == "JOB_STATE_SUCCEEDED" for c in stats["stateCounts"])
    purge = call("POST", f"{base}/v1/jobs:purge", {"olderThan": "0s", "dryRun": True}).json()
    assert int(purge["purgedCount"]) >= 1
    health = call("GET", f"{base}/healthz")
    assert (health.status, health.json()) == (200, {"status": "SERVING"})


def _status(answer: Answer) -> dict[str, object]:
    body: dict[str, object] = answer.json()
    assert set(body) <= {"code", "message", "details"}, body
    return body


def test_errors_are_http_statuses_with_google_rpc_status_bodies(web: ServerProcess) -> None:
    base = web.http_url
    bad = call("POST", f"{base}/v1/jobs", {"kind": "Not A Kind"})
    assert bad.status == 400
    body = _status(bad)
    assert body["code"] == 3
    assert body["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [
                {
                    "field": "kind",
                    "description": "'Not A Kind' must match [a-z0-9][a-z0-9._-]{0,127}",
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "INVALID_FIELD",
            "domain": "jobstream",
            "metadata": {"field": "kind"},
        },
    ]
    missing = call("GET", f"{base}/v1/jobs/no-such-job")
    assert (missing.status, _status(missing)["code"]) == (404, 5)
    assert _status(missing)["details"][-1]["reason"] == "JOB_NOT_FOUND"  # type: ignore[index]
    done = submit(base, "demo.count", params={"n": 1, "delay": 0})
    wait_state(base, str(done["id"]), "JOB_STATE_SUCCEEDED")
    precondition = call("POST", f"{base}/v1/jobs/{done['id']}:retry", {})
    assert (precondition.status, _status(precondition)["code"]) == (400, 9)
    beyond = call("GET", f"{base}/v1/jobs/{done['id']}:watch?afterSeq=999999")
    assert (beyond.status, _status(beyond)["code"]) == (400, 11)
    again = call(
        "POST", f"{base}/v1/jobs", {"kind": "demo.count", "requestId": "r1", "params": {"n": 1}}
    )
    assert again.status == 200
    clash = call(
        "POST", f"{base}/v1/jobs", {"kind": "demo.count", "requestId": "r1", "params": {"n": 2}}
    )
    assert (clash.status, _status(clash)["code"]) == (409, 6)
    unknown = call("GET", f"{base}/v1/jobs?pageSise=3")
    assert unknown.status == 400
    assert _status(unknown)["details"][0]["fieldViolations"][0]["field"] == "pageSise"  # type: ignore[index]
    wrong_type = call("GET", f"{base}/v1/jobs?pageSize=many")
    assert wrong_type.status == 400 and "pageSize" in str(_status(wrong_type)["message"])
    cases: list[tuple[dict[str, object], str]] = [
        ({"knd": "demo.count"}, "knd"),
        ({"kind": "demo.count", "scheduleTime": "yesterday"}, "scheduleTime"),
        ({"kind": "demo.count", "labels": {"a": 1}}, "labels"),
        ({"kind": "demo.count", "params": [1]}, "params"),
    ]
    for body, field in cases:
        refused = call("POST", f"{base}/v1/jobs", body)
        assert refused.status == 400, body
        violation = _status(refused)["details"][0]["fieldViolations"][0]  # type: ignore[index]
        assert violation["field"] == field, (body, violation)
    not_json = call("POST", f"{base}/v1/jobs", raw=b"{kind:")
    assert (not_json.status, _status(not_json)["code"]) == (400, 3)
    negative = call("GET", f"{base}/v1/jobs?pageSize=-1")
    assert negative.status == 400 and "page_size" in str(_status(negative)["message"])
    method = call("PUT", f"{base}/v1/jobs")
    assert method.status == 405 and "GET" in method.headers["Allow"]
    assert call("GET", f"{base}/v1/nothing/here").status == 404


def _artifact_job(server: ServerProcess, data: bytes) -> str:
    base = server.http_url
    job = submit(base, "http.artifact")
    worker = RawWorker(server.target)
    try:
        lease = worker.acquire("http.artifact")
        worker.upload(lease.job.id, lease.lease_id, "out.bin", data)
        worker.finish(lease.job.id, lease.lease_id)
    finally:
        worker.close()
    return str(job["id"])


def test_artifact_download_with_range_and_sha256(web: ServerProcess) -> None:
    data = bytes(range(256)) * 2400 + b"tail"  # 600 KiB and 4 bytes: several chunks down
    job_id = _artifact_job(web, data)
    base = web.http_url
    listed = call("GET", f"{base}/v1/jobs/{job_id}/artifacts").json()["artifacts"]
    assert [(a["name"], int(a["sizeBytes"])) for a in listed] == [("out.bin", len(data))]
    url = f"{base}/v1/jobs/{job_id}/artifacts/out.bin"
    whole = call("GET", url)
    digest = hashlib.sha256(data).digest()
    assert whole.status == 200 and whole.body == data
    assert int(whole.headers["Content-Length"]) == len(data)
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert whole.headers["Repr-Digest"] == f"sha-256=:{base64.b64encode(digest).decode()}:"
    assert whole.headers["X-Content-SHA256"] == digest.hex()
    assert whole.headers["Content-Disposition"] == 'attachment; filename="out.bin"'
    # Resume from a partial copy, as curl -C - does.
    part = call("GET", url, headers={"Range": "bytes=500000-"})
    assert part.status == 206 and part.body == data[500000:]
    assert part.headers["Content-Range"] == f"bytes 500000-{len(data) - 1}/{len(data)}"
    assert int(part.headers["Content-Length"]) == len(data) - 500000
    middle = call("GET", url, headers={"Range": "bytes=10-19"})
    assert (middle.status, middle.body) == (206, data[10:20])
    suffix = call("GET", url, headers={"Range": "bytes=-4"})
    assert (suffix.status, suffix.body) == (206, b"tail")
    changed = call("GET", url, headers={"Range": "bytes=10-19", "If-Range": '"0000"'})
    assert (changed.status, len(changed.body)) == (200, len(data))
    beyond = call("GET", url, headers={"Range": f"bytes={len(data) + 5}-"})
    assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"
    assert call("GET", f"{base}/v1/jobs/{job_id}/artifacts/nope.bin").status == 404


def test_curl_resumes_a_download(web: ServerProcess, tmp_path: Path) -> None:
    data = b"0123456789" * 50_000
    job_id = _artifact_job(web, data)
    out = tmp_path / "out.bin"
    out.write_bytes(data[:123_456])
    result = subprocess.run(
        [
            "curl",
            "-sf",
            "-C",
            "-",
            "-o",
            str(out),
            f"{web.http_url}/v1/jobs/{job_id}/artifacts/out.bin",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if result.returncode == 127 or (result.returncode != 0 and b"not found" in result.stderr):
        pytest.skip("curl is not installed")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == data


def _tokens_web(start_server: Callable[..., ServerProcess], tmp_path: Path) -> ServerProcess:
    tokens = write_tokens(tmp_path / "tokens.json")
    return start_server(extra_args=("--tokens-file", str(tokens)), http=True)


def bearer(caller: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[caller][0]}"}


def test_tokens_and_ownership(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = _tokens_web(start_server, tmp_path)
    base = server.http_url
    anonymous = call("GET", f"{base}/v1/jobs")
    assert (anonymous.status, _status(anonymous)["code"]) == (401, 16)
    forged = call("GET", f"{base}/v1/jobs", headers={"Authorization": "Bearer forged"})
    assert forged.status == 401
    mine = call("POST", f"{base}/v1/jobs", {"kind": "nobody.runs"}, headers=bearer("alice"))
    assert mine.status == 200, mine.body
    job_id = mine.json()["job"]["id"]
    assert call("GET", f"{base}/v1/jobs/{job_id}", headers=bearer("alice-reader")).status == 200
    other = call("GET", f"{base}/v1/jobs/{job_id}", headers=bearer("bob"))
    missing = call("GET", f"{base}/v1/jobs/job_00000000000000000000000000", headers=bearer("bob"))
    assert (other.status, missing.status) == (404, 404)
    assert other.json()["message"] == missing.json()["message"].replace(
        "job_00000000000000000000000000", job_id
    )
    listed = call("GET", f"{base}/v1/jobs", headers=bearer("bob")).json()
    assert job_id not in [j["id"] for j in listed.get("jobs", [])]
    reader = call("POST", f"{base}/v1/jobs/{job_id}:cancel", {}, headers=bearer("alice-reader"))
    assert (reader.status, _status(reader)["code"]) == (403, 7)
    with events(f"{base}/v1/jobs/{job_id}:watch", 10, Authorization="Bearer forged") as stream:
        assert stream.status == 401
    assert call("GET", f"{base}/healthz").status == 200


def test_cookie_sign_in_and_cross_site_refusal(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = _tokens_web(start_server, tmp_path)
    base = server.http_url
    host = base.removeprefix("http://")
    form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": base}
    refused = call("POST", f"{base}/signin", raw=b"token=wrong", headers=form)
    assert (refused.status, refused.headers["Location"]) == (303, "/signin?error=rejected")
    assert "Set-Cookie" not in refused.headers
    signed = call(
        "POST", f"{base}/signin", raw=f"token={TOKENS['alice'][0]}".encode(), headers=form
    )
    assert signed.status == 303
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; Secure over HTTPS
    pair = cookie.split(";")[0]
    jar = {"Cookie": pair}
    assert call("GET", f"{base}/v1/jobs", headers=jar).status == 200
    same_site = {**jar, "Origin": base, "Sec-Fetch-Site": "same-origin"}
    made = call("POST", f"{base}/v1/jobs", {"kind": "nobody.runs"}, headers=same_site)
    assert made.status == 200, made.body
    job_id = made.json()["job"]["id"]
    # A page elsewhere posting with the browser's cookie (were SameSite not there):
    for headers in (
        {**jar, "Origin": "http://evil.example"},
        {**jar, "Origin": base, "Sec-Fetch-Site": "cross-site"},
        jar,  # no Origin at all with a cookie
    ):
        answer = call("DELETE", f"{base}/v1/jobs/{job_id}", headers=headers)
        assert (answer.status, _status(answer)["code"]) == (403, 7), headers
        assert "cross-site" in str(answer.json()["message"])
    assert call("GET", f"{base}/v1/jobs/{job_id}", headers=jar).status == 200  # still there
    # Without tokens too: a form on another site must not drive a loopback server.
    plain = call(
        "POST", f"{base}/v1/jobs", {"kind": "x"}, headers={"Origin": "http://evil.example"}
    )
    assert plain.status == 403
    ok = call("DELETE", f"{base}/v1/jobs/{job_id}", headers={**jar, "Origin": f"http://{host}"})
    assert ok.status == 200, ok.body
    out = call("POST", f"{base}/signout", headers={**jar, "Origin": base})
    assert out.status == 303 and "jobstream_token=" in out.headers["Set-Cookie"]


def test_pages_carry_a_strict_content_security_policy(web: ServerProcess) -> None:
    page = call("GET", f"{web.http_url}/")
    assert page.status == 200 and b"/ui/app.js" in page.body
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert call("GET", f"{web.http_url}/ui/app.js").status == 200
    assert b"innerHTML" not in call("GET", f"{web.http_url}/ui/app.js").body


def test_standalone_gateway_in_front_of_a_restarting_server(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server(handlers=("jobstream.client.demo",))
    port_file = tmp_path / "gateway.port"
    with (tmp_path / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobstream.client.cli",
                "gateway",
                "--target",
                server.target,
                "--http-port",
                "0",
                "--http-port-file",
                str(port_file),
                "--log-level",
                "WARNING",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        port = int(eventually(lambda: (port_file.exists() and port_file.read_text()) or None))
        base = f"http://127.0.0.1:{port}"
        # The server is killed 30 events in: the job only has to outlast that.
        job = submit(base, "demo.count", params={"n": 300, "delay": 0.005})
        seen: list[int] = []
        kinds: list[str] = []
        with events(f"{base}/v1/jobs/{job['id']}:watch", 90) as stream:
            for event in stream:
                kinds.append(event.event)
                if event.event == "event" and event.id:
                    seen.append(int(event.id))
                if len(seen) == 30:
                    server.kill()
                    server.restart()
                if event.event == "end":
                    break
        assert "reconnecting" in kinds
        assert seen == list(range(1, seen[-1] + 1)), "a gap or a repeat in the seqs"
        assert kinds[-1] == "end"
        assert call("GET", f"{base}/healthz").json() == {"status": "SERVING"}
    finally:
        proc.terminate()
        proc.wait(20)


def _watchers(metrics_port: int) -> float:
    text = call("GET", f"http://127.0.0.1:{metrics_port}/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith("jobstream_watchers "):
            return float(line.split()[1])
    raise AssertionError("no jobstream_watchers in /metrics")


def test_browsers_following_one_live_job_share_one_upstream_watch(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    metrics_port = free_port()
    tokens = write_tokens(tmp_path / "tokens.json")
    server = start_server(
        extra_args=("--tokens-file", str(tokens), "--metrics-port", str(metrics_port)),
        http=True,
    )
    base = server.http_url
    made = call("POST", f"{base}/v1/jobs", {"kind": "ui.shared"}, headers=bearer("alice"))
    job_id = made.json()["job"]["id"]
    url = f"{base}/v1/jobs/{job_id}:watch"
    auth = {"Authorization": bearer("alice")["Authorization"]}
    streams = [events(url, 60, **auth) for _ in range(5)]
    worker = RawWorker(server.target, token=TOKENS["worker"][0])
    try:
        for stream in streams:
            stream.__enter__()
            assert stream.status == 200, stream.body
        firsts = [next(iter(stream)) for stream in streams]
        assert {(e.event, e.id) for e in firsts} == {("snapshot", "0")}
        assert eventually(lambda: _watchers(metrics_port) == 1), "not one shared watch"
        # Another principal gets no share of it: the same 404 as ever.
        with events(url, 10, Authorization=bearer("bob")["Authorization"]) as other:
            assert other.status == 404
        lease = worker.acquire("ui.shared")
        worker.log(job_id, lease.lease_id, [f"line {i}" for i in range(20)])
        worker.finish(job_id, lease.lease_id)
        got = []
        for stream in streams:
            ids = []
            for event in stream:
                if event.event == "end":
                    break
                ids.append(int(event.id or 0))
            got.append(ids)
        last = int(
            call("GET", f"{base}/v1/jobs/{job_id}", headers=bearer("alice")).json()["job"][
                "lastSeq"
            ]
        )
        assert got == [list(range(1, last + 1))] * 5
        # A late reader resuming from the middle gets exactly the rest.
        with events(url, 30, Last_Event_ID="10", **auth) as late:
            assert [int(e.id or 0) for e in late if e.event == "event"] == list(range(11, last + 1))
    finally:
        worker.close()
        for stream in streams:
            stream.__exit__(None, None, None)


def test_https_with_the_servers_certificate(
    start_server: Callable[..., ServerProcess], pki: Path, tmp_path: Path
) -> None:
    tokens = write_tokens(tmp_path / "tokens.json")
    server = start_server(
        extra_args=(
            "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
            "--tokens-file", str(tokens),
        ),
        handlers=("jobstream.client.demo",),
        http=True,
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    conn = http.client.HTTPSConnection("127.0.0.1", server.http_port, context=context, timeout=15)
    try:
        # The HTTP face reaches its TLS server through the private socket.
        conn.request("POST", "/v1/jobs", body=b'{"kind": "demo.count", "params": {"n": 2}}',
                     headers={**bearer("alice"), "Content-Type": "application/json"})  # fmt: skip
        made = conn.getresponse()
        assert made.status == 200, made.read()
        job_id = json.loads(made.read())["job"]["id"]
        origin = f"https://127.0.0.1:{server.http_port}"
        conn.request(
            "POST", "/signin", body=f"token={TOKENS['alice'][0]}".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": origin},
        )  # fmt: skip
        signed = conn.getresponse()
        signed.read()
        assert signed.status == 303
        cookie = signed.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie
        conn.request("GET", f"/v1/jobs/{job_id}", headers={"Cookie": cookie.split(";")[0]})
        got = conn.getresponse()
        assert got.status == 200 and json.loads(got.read())["job"]["id"] == job_id
    finally:
        conn.close()
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        call("GET", f"http://127.0.0.1:{server.http_port}/healthz")


def test_idle_streams_get_heartbeats_and_stop_ends_them(
    start_server: Callable[..., ServerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An in-process gateway (the Gateway API) in front of a bare server: a
    stream with nothing to say still sends comments, and stopping the
    gateway ends its streams instead of waiting for them."""
    import aiohttp

    from jobstream.gateway import GatewayConfig, running
    from jobstream.gateway import streams as gateway_streams

    monkeypatch.setattr(gateway_streams, "HEARTBEAT_S", 0.2)
    server = start_server()

    async def scenario() -> tuple[list[bytes], float]:
        async with (
            running(GatewayConfig(target=server.target, port=0)) as gateway,
            aiohttp.ClientSession() as http,
        ):
            base = gateway.url.rstrip("/")
            async with http.post(f"{base}/v1/jobs", json={"kind": "nobody.runs"}) as made:
                job_id = (await made.json())["job"]["id"]
            lines: list[bytes] = []
            async with http.get(f"{base}/v1/jobs/{job_id}:watch") as response:
                async with asyncio.timeout(10):
                    async for line in response.content:
                        lines.append(line.rstrip(b"\n"))
                        if lines.count(b": keep-alive") >= 2:
                            break
                stopping = asyncio.get_running_loop().time()
                stop = asyncio.create_task(gateway.stop())
                # Cut, not closed: the client (EventSource) reconnects either way.
                with contextlib.suppress(aiohttp.ClientPayloadError):
                    async with asyncio.timeout(10):
                        async for _line in response.content:
                            pass  # until the gateway ends the stream
                await stop
                return lines, asyncio.get_running_loop().time() - stopping

    lines, stop_s = asyncio.run(scenario())
    assert lines[:2] == [b"retry: 1000", b""]
    assert b"event: snapshot" in lines
    assert lines.count(b": keep-alive") == 2
    assert stop_s < 5


def test_job_list_stream_on_postgresql(
    start_server: Callable[..., ServerProcess], postgres_url: str
) -> None:
    """skipListing and resumable positions on the cluster backend too."""
    server = start_server(extra_args=("--db", postgres_url), http=True)
    base = server.http_url
    submit(base, "nobody.runs", labels={"suite": "pg"})
    url = f"{base}/v1/jobs:watch?skipListing=true&filter.labels[suite]=pg"
    with events(url, 30) as stream:
        it = iter(stream)
        first = next(it)
        assert first.event == "caught_up" and first.id is not None
        job = submit(base, "nobody.runs", labels={"suite": "pg"})
        change = next(it)
    assert (change.event, change.json()["id"]) == ("job", job["id"])
    assert int(change.id or 0) > int(first.id)
    listed = call("GET", f"{base}/v1/jobs?filter.labels[suite]=pg").json()["jobs"]
    assert len(listed) == 2


def test_a_reader_from_before_the_hubs_window_gets_exactly_the_rest(
    start_server: Callable[..., ServerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a hub window of 20 events, a reader resuming from event 5 of a
    live job that has 100 is served by a call of its own, and a reader that
    was there from the start by the hub: both see every event once."""
    import aiohttp

    from jobstream.gateway import GatewayConfig, hub, running

    monkeypatch.setattr(hub, "HUB_WINDOW", 20)
    server = start_server()

    async def ids(
        http: aiohttp.ClientSession, url: str, headers: dict[str, str], upto: int
    ) -> list[int]:
        seen: list[int] = []
        async with http.get(url, headers=headers) as response:
            assert response.status == 200
            event = b""
            async with asyncio.timeout(30):
                async for raw in response.content:
                    line = raw.rstrip(b"\n")
                    if line.startswith(b"event: "):
                        event = line[7:]
                    elif line.startswith(b"id: ") and event == b"event":
                        seen.append(int(line[4:]))
                        if seen[-1] >= upto:
                            return seen
        return seen

    async def scenario() -> tuple[list[int], list[int], int]:
        async with (
            running(GatewayConfig(target=server.target, port=0)) as gateway,
            aiohttp.ClientSession() as http,
        ):
            base = gateway.url.rstrip("/")
            async with http.post(f"{base}/v1/jobs", json={"kind": "hub.window"}) as made:
                job_id = (await made.json())["job"]["id"]
            url = f"{base}/v1/jobs/{job_id}:watch"
            worker = RawWorker(server.target)
            try:
                lease = await asyncio.to_thread(worker.acquire, "hub.window")
                last = 2 + 100  # queued, running, then the lines
                early = asyncio.create_task(ids(http, url, {}, last))
                await asyncio.sleep(0.5)  # the hub is up and following
                lines = [f"line {i}" for i in range(100)]
                await asyncio.to_thread(worker.log, job_id, lease.lease_id, lines)
                late = await ids(http, url, {"Last-Event-ID": "5"}, last)
                return await early, late, last
            finally:
                worker.close()

    early, late, last = asyncio.run(scenario())
    assert early == list(range(1, last + 1))
    assert late == list(range(6, last + 1))
