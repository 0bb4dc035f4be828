"""The ``jobstream`` command against a real server.

Most runs call the command in this process (``cli_runner``: its own
environment, output captured as bytes, a deadline); what only a process
has — a closed pipe, Ctrl-C, a terminal, ``serve`` and ``worker`` — runs
as a real subprocess. Output is read as bytes so a raw escape byte that
should not be there cannot hide behind decoding.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pexpect
import pytest
from cli_runner import RUN_TIMEOUT_S, CliRun, command_environ, run_cli
from conftest import Server
from helpers import eventually, job_in
from rich.console import Console

from jobstream.client import JobClient
from jobstream.client.calls import DEFAULT_TIMEOUT
from jobstream.client.cli.escape import sanitize
from jobstream.client.cli.jsonout import dumps, to_jsonable
from jobstream.client.cli.keys import parse_keys
from jobstream.client.cli.options import parse_args
from jobstream.client.cli.render import format_duration, log_line, step_line
from jobstream.client.cli.watchview import WatchView
from jobstream.client.connection import DEFAULT_TARGET
from jobstream.client.models import (
    Counters,
    EventKind,
    Job,
    JobError,
    JobEvent,
    JobState,
    LogLevel,
    LogLine,
    Progress,
    ResultItem,
    ResultStatus,
    Step,
    StepState,
)
from jobstream.client.worker import DEFAULT_CONCURRENCY, DEFAULT_QUEUES, Worker

HOSTILE_TEXT = "before \x1b]0;pwned\x07 [bold]x[/bold] \x9b31m after\rover"
"""A log line that would retitle the terminal, inject rich markup, use an
8-bit CSI and overwrite itself if printed raw."""

JOB_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")

ANSI_SGR = re.compile(r"\x1b\[[0-9;]*m")
"""Colour and style codes a terminal gets, to read its text without them."""

CLI = (sys.executable, "-m", "jobstream.client.cli")
"""How the subprocess tests start ``jobstream``: this interpreter, so the venv's packages."""


Run = CliRun | subprocess.CompletedProcess[bytes]
"""A finished run of the command, in this process or as a subprocess."""


def jobstream(
    *args: str,
    target: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = RUN_TIMEOUT_S,
) -> CliRun:
    """Run ``jobstream ARGS`` (``--target`` first when given) to completion."""
    argv = [*(("--target", target) if target else ()), *args]
    return run_cli(argv, env=env, cwd=cwd, timeout=timeout)


def jobstream_process(*args: str, target: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``jobstream ARGS`` as a subprocess to completion."""
    argv = [*CLI, *(("--target", target) if target else ()), *args]
    return subprocess.run(
        argv, capture_output=True, env=command_environ(), timeout=RUN_TIMEOUT_S, check=False
    )


def out(result: Run) -> str:
    """stdout as text."""
    return result.stdout.decode()


def err(result: Run) -> str:
    """stderr as text."""
    return result.stderr.decode()


def ok(result: Run) -> str:
    """stdout of a run that must have succeeded."""
    assert result.returncode == 0, (result.returncode, err(result), out(result))
    assert b"Traceback" not in result.stderr
    return out(result)


def submit(server: Server, kind: str, *args: str) -> str:
    """Submit through the CLI and return the printed job id."""
    printed = ok(jobstream("submit", kind, *args, target=server.target)).strip()
    assert JOB_ID.fullmatch(printed), printed
    return printed


def get_json(server: Server, job_id: str) -> dict[str, Any]:
    """``get --json`` parsed."""
    data: dict[str, Any] = json.loads(ok(jobstream("get", job_id, "--json", target=server.target)))
    return data


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` parsed as one JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[JobClient]:
    """The library's client, for waiting on a job's state between commands."""
    with JobClient(server.target) as c:
        yield c


def wait_running(client: JobClient, job_id: str) -> None:
    """Waits until the job runs."""
    eventually(lambda: job_in(client, job_id, JobState.RUNNING))


@pytest.fixture
def label() -> str:
    """A label unique to the test, so tests sharing a server keep apart."""
    return f"t={uuid.uuid4().hex[:12]}"


# ----------------------------------------------------------------- submit


def test_submit_prints_the_id_and_parses_params(server: Server, label: str) -> None:
    job_id = submit(
        server,
        "demo.count",
        "--param",
        "n=50",
        "--param",
        "flag=true",
        "--param",
        "name=plain text",
        "--params-json",
        '{"delay": 0.001, "n": 1}',
        "--label",
        label,
    )
    job = get_json(server, job_id)
    assert job["id"] == job_id
    assert job["kind"] == "demo.count"
    # --param values are JSON when they parse, strings otherwise, and they
    # override --params-json keys.
    assert job["params"] == {"n": 50, "flag": True, "name": "plain text", "delay": 0.001}
    key, value = label.split("=")
    assert job["labels"] == {key: value}


def test_submit_json_prints_the_job(server: Server, label: str) -> None:
    job = json.loads(
        ok(
            jobstream(
                "submit",
                "demo.count",
                "--param",
                "n=3",
                "--label",
                label,
                "--json",
                target=server.target,
            )
        )
    )
    assert JOB_ID.fullmatch(job["id"])
    assert job["state"] in ("queued", "running", "succeeded")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", job["create_time"])


def test_submit_with_a_chosen_id_and_request_id(server: Server) -> None:
    job_id = f"cli-{uuid.uuid4().hex[:8]}"
    args = ("demo.count", "--param", "n=1", "--id", job_id, "--request-id", job_id)
    assert submit(server, *args) == job_id
    # The same request again is the same job, not an error.
    assert submit(server, *args) == job_id


def test_submit_watch_follows_to_the_end(server: Server) -> None:
    result = jobstream("submit", "demo.count", "--param", "n=5", "--watch", target=server.target)
    lines = ok(result).splitlines()
    assert JOB_ID.fullmatch(lines[0].strip())
    assert "succeeded" in out(result)


# ------------------------------------------------------------------ watch


def test_watch_exits_0_and_shows_progress_and_logs(server: Server) -> None:
    job_id = submit(server, "demo.count", "--param", "n=50")
    result = jobstream("watch", job_id, target=server.target)
    text = ok(result)
    assert job_id in text
    assert "succeeded" in text
    assert "100.0%" in text
    assert "50/50" in text
    logs = [
        json.loads(line)
        for line in out(jobstream("logs", job_id, "--json", target=server.target)).splitlines()
    ]
    assert logs, "demo.count logs a line per item"
    for event in logs:
        assert event["log"]["text"] in text


def test_watch_json_is_a_snapshot_then_contiguous_events(server: Server) -> None:
    job_id = submit(server, "demo.count", "--param", "n=20")
    result = jobstream("watch", job_id, "--json", target=server.target)
    lines = json_lines(ok(result))
    assert lines[0]["snapshot"]["id"] == job_id
    events = [line["event"] for line in lines[1:]]
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert all(event["job_id"] == job_id for event in events)
    assert events[-1]["kind"] == "state_change"
    assert events[-1]["state_change"]["state"] == "succeeded"
    logged = [event["log"]["text"] for event in events if event["kind"] == "log"]
    assert len(logged) >= 20


def test_watch_after_seq_resumes_after_that_event(server: Server) -> None:
    job_id = submit(server, "demo.count", "--param", "n=10")
    ok(jobstream("watch", job_id, "--json", target=server.target))
    last_seq = get_json(server, job_id)["last_seq"]
    lines = json_lines(
        ok(jobstream("watch", job_id, "--json", "--after-seq", "3", target=server.target))
    )
    assert [line["event"]["seq"] for line in lines[1:]] == list(range(4, last_seq + 1))


def test_watch_of_a_failed_job_exits_1(server: Server) -> None:
    job_id = submit(server, "demo.fail", "--max-attempts", "1")
    result = jobstream("watch", job_id, target=server.target)
    assert result.returncode == 1, (err(result), out(result))
    assert "failed" in out(result)
    result = jobstream("watch", job_id, "--json", target=server.target)
    assert result.returncode == 1
    assert json_lines(out(result))[-1]["event"]["state_change"]["state"] == "failed"


def test_cancel_a_running_job_then_watch_exits_3(server: Server, client: JobClient) -> None:
    job_id = submit(server, "demo.sleep", "--param", "seconds=30")
    wait_running(client, job_id)
    result = jobstream("cancel", job_id, "--reason", "test says stop", target=server.target)
    assert job_id in ok(result)
    # The deadline: a watch that went on until the 30 s sleep ended fails.
    result = jobstream("watch", job_id, target=server.target, timeout=20)
    assert result.returncode == 3, (err(result), out(result))
    assert "cancelled" in out(result)
    assert get_json(server, job_id)["state"] == "cancelled"


def test_cancel_a_queued_job_json(server: Server) -> None:
    job_id = submit(server, "demo.count", "--not-before", "+1h")
    job = json.loads(ok(jobstream("cancel", job_id, "--json", target=server.target)))
    assert job["id"] == job_id
    assert job["state"] == "cancelled"
    result = jobstream("watch", job_id, "--json", target=server.target)
    assert result.returncode == 3


# --------------------------------------------------------------------- ls


def test_ls_shows_and_filters_jobs(server: Server, label: str) -> None:
    done = submit(server, "demo.count", "--param", "n=2", "--label", label)
    waiting = submit(server, "demo.sleep", "--not-before", "+1h", "--label", label)
    ok(jobstream("watch", done, target=server.target))

    table = ok(jobstream("ls", "--label", label, target=server.target))
    assert done in table
    assert waiting in table
    header = table.splitlines()[0].split()
    assert header == [
        "id",
        "kind",
        "state",
        "progress",
        "items",
        "duration",
        "attempt",
        "phase",
        "created",
        "ended",
    ]
    done_row = next(line for line in table.splitlines() if done in line)
    # Two items counted, a run time in a unit people read, an end time.
    assert "2 ok" in done_row
    assert re.search(r"\d+(\.\d)? (ms|s)\b", done_row), done_row
    waiting_row = next(line for line in table.splitlines() if waiting in line)
    assert waiting_row.split()[4:6] == ["-", "-"]  # no items, never ran
    assert "more" not in table

    listed = json.loads(ok(jobstream("ls", "--label", label, "--json", target=server.target)))
    assert isinstance(listed, list)
    assert {job["id"] for job in listed} == {done, waiting}

    def ids(*args: str) -> list[str]:
        found = json.loads(
            ok(jobstream("ls", "--label", label, "--json", *args, target=server.target))
        )
        return [job["id"] for job in found]

    assert ids("--state", "succeeded") == [done]
    assert ids("--state", "QUEUED") == [waiting]
    assert set(ids("--state", "succeeded", "--state", "queued")) == {done, waiting}
    assert ids("--kind", "demo.sleep") == [waiting]
    assert ids("--kind", "demo.count", "--state", "queued") == []
    assert len(ids("--limit", "1")) == 1
    assert ids("--label", "t=nobody-has-this") == []
    ok(jobstream("cancel", waiting, target=server.target))


def test_ls_says_how_many_more_match_beyond_the_limit(server: Server, label: str) -> None:
    ids = [submit(server, "demo.sleep", "--in", "1h", "--label", label) for _ in range(4)]
    table = ok(jobstream("ls", "--label", label, "--limit", "3", target=server.target))
    rows = [line.split() for line in table.splitlines()]
    shown = [words[0] for words in rows if words and words[0] in ids]
    assert shown == ids[:0:-1]  # the newest three, newest first
    assert table.splitlines()[-1] == "… 1 more; --limit to see more"
    assert "more" not in ok(jobstream("ls", "--label", label, "--limit", "4", target=server.target))
    # --json stays a plain array for scripts.
    listed = json.loads(
        ok(jobstream("ls", "--label", label, "--limit", "3", "--json", target=server.target))
    )
    assert [job["id"] for job in listed] == ids[:0:-1]
    for job_id in ids:
        ok(jobstream("cancel", job_id, target=server.target))


def test_ls_without_matches_says_so(server: Server) -> None:
    result = jobstream("ls", "--label", "t=nothing-matches", target=server.target)
    assert "no jobs" in ok(result)
    assert (
        json.loads(
            ok(jobstream("ls", "--label", "t=nothing-matches", "--json", target=server.target))
        )
        == []
    )


# -------------------------------------------------------------------- get


def test_get_shows_the_job_in_detail(server: Server) -> None:
    job_id = submit(server, "demo.count", "--param", "n=5")
    ok(jobstream("watch", job_id, target=server.target))
    text = ok(jobstream("get", job_id, target=server.target))
    for expected in (job_id, "demo.count", "succeeded", "progress", "result", "total"):
        assert expected in text
    job = get_json(server, job_id)
    assert job["state"] == "succeeded"
    assert job["result"] == {"total": 5}
    assert job["counters"]["succeeded"] == 5
    assert job["last_seq"] > 0
    if job["steps"]:
        assert job["steps"][0]["name"] in text


# ------------------------------------------------------------------- logs


def test_logs_prints_lines_and_json(server: Server) -> None:
    job_id = submit(server, "demo.count", "--param", "n=10")
    ok(jobstream("watch", job_id, target=server.target))
    events = json_lines(ok(jobstream("logs", job_id, "--json", target=server.target)))
    assert len(events) >= 10
    assert all(event["kind"] == "log" for event in events)
    seqs = [event["seq"] for event in events]
    assert seqs == sorted(seqs)
    text = ok(jobstream("logs", job_id, target=server.target))
    lines = text.splitlines()
    assert len(lines) == len(events)
    for line, event in zip(lines, events, strict=True):
        assert event["log"]["text"] in line
        assert event["log"]["level"] in line


def test_logs_follow_prints_every_line_until_the_job_ends(server: Server) -> None:
    job_id = submit(server, "demo.count", "--param", "n=30", "--param", "delay=0.03")
    followed = jobstream("logs", job_id, "-f", "--json", target=server.target)
    lines = json_lines(ok(followed))
    stored = json_lines(ok(jobstream("logs", job_id, "--json", target=server.target)))
    assert [line["seq"] for line in lines] == [event["seq"] for event in stored]
    human = ok(jobstream("logs", job_id, "--follow", target=server.target))
    assert len(human.splitlines()) == len(stored)


# ------------------------------------------------------------------ rm


def test_rm_then_get_is_not_found(server: Server) -> None:
    job_id = submit(server, "demo.count", "--param", "n=2")
    ok(jobstream("watch", job_id, target=server.target))
    assert "deleted" in ok(jobstream("rm", job_id, target=server.target))

    result = jobstream("get", job_id, target=server.target)
    assert result.returncode == 2
    assert result.stdout == b""
    assert err(result) == f"error: NOT_FOUND: job_id: no job '{job_id}'\n"

    again = jobstream("rm", job_id, target=server.target)
    assert again.returncode == 2
    assert err(again).startswith("error: NOT_FOUND: ")

    missing = json.loads(
        ok(jobstream("rm", job_id, "--allow-missing", "--json", target=server.target))
    )
    assert missing == {"job_id": job_id, "deleted": False, "removed_paths": [], "refused_paths": []}


def test_rm_of_a_running_job_needs_force(server: Server, client: JobClient) -> None:
    job_id = submit(server, "demo.sleep", "--param", "seconds=30")
    wait_running(client, job_id)
    refused = jobstream("rm", job_id, target=server.target)
    assert refused.returncode == 2
    assert err(refused).startswith("error: FAILED_PRECONDITION: ")
    assert "Traceback" not in err(refused)
    result = json.loads(ok(jobstream("rm", job_id, "--force", "--json", target=server.target)))
    assert result["deleted"] is True
    assert jobstream("get", job_id, target=server.target).returncode == 2


def test_rm_of_several_jobs_needs_yes_without_a_terminal(server: Server, label: str) -> None:
    ids = [submit(server, "demo.sleep", "--in", "1h", "--label", label) for _ in range(3)]
    refused = jobstream("rm", *ids, target=server.target)
    assert refused.returncode == 2 and refused.stdout == b""
    assert err(refused) == (
        "error: deleting 3 jobs needs --yes here: nobody can be asked "
        "(stdin or stdout is not a terminal, or --json)\n"
    )
    assert (
        len(json.loads(ok(jobstream("ls", "--label", label, "--json", target=server.target)))) == 3
    )

    text = ok(jobstream("rm", *ids[:2], "--yes", target=server.target))
    assert text.splitlines() == [f"{ids[0]} deleted", f"{ids[1]} deleted"]
    # With --json: an array, one answer per id; a refused one does not stop
    # the others, and makes the status 2.
    result = jobstream("rm", "no-such-rm-job", ids[2], "--yes", "--json", target=server.target)
    assert result.returncode == 2
    answers = json.loads(out(result))
    assert answers[0]["job_id"] == "no-such-rm-job"
    assert answers[0]["error"]["code"] == "NOT_FOUND"
    assert answers[1] == {
        "job_id": ids[2],
        "deleted": True,
        "removed_paths": [],
        "refused_paths": [],
    }
    assert json.loads(ok(jobstream("ls", "--label", label, "--json", target=server.target))) == []


def test_rm_on_a_terminal_names_the_jobs_and_asks(server: Server, label: str) -> None:
    ids = [submit(server, "demo.sleep", "--in", "1h", "--label", label) for _ in range(2)]

    def rm(answer: str, *extra: str) -> tuple[str, int]:
        child = pexpect.spawn(
            CLI[0],
            [*CLI[1:], "--target", server.target, "rm", *ids, *extra],
            env=command_environ({"TERM": "xterm-256color"}),
            dimensions=(40, 160),
            timeout=RUN_TIMEOUT_S,
            encoding="utf-8",
        )
        child.expect_exact("delete them? [y/N] ")
        asked: str = child.before
        child.sendline(answer)
        child.expect(pexpect.EOF)
        child.close()
        return ANSI_SGR.sub("", asked + child.before), child.exitstatus

    said, status = rm("n")
    assert status == 0 and "nothing deleted" in said
    assert "about to delete 2 job(s)" in said
    for job_id in ids:
        row = next(line for line in said.splitlines() if job_id in line)
        assert "demo.sleep" in row and "queued" in row
    listed = json.loads(ok(jobstream("ls", "--label", label, "--json", target=server.target)))
    assert len(listed) == 2  # nothing deleted
    said, status = rm("y")
    assert status == 0 and f"{ids[0]} deleted" in said and f"{ids[1]} deleted" in said
    assert json.loads(ok(jobstream("ls", "--label", label, "--json", target=server.target))) == []


def test_a_closed_stdout_is_status_141_without_a_traceback(server: Server) -> None:
    # Enough lines that the output cannot all fit in the pipe's buffer.
    job_id = submit(server, "demo.count", "--param", "n=3000", "--param", "delay=0")
    ok(jobstream("watch", job_id, "--json", target=server.target))
    for extra in ((), ("--json",)):
        proc = subprocess.Popen(
            [*CLI, "--target", server.target, "logs", job_id, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=command_environ(),
        )
        assert proc.stdout is not None
        assert proc.stdout.readline()
        proc.stdout.close()
        _, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
        assert proc.returncode == 141, stderr
        assert stderr == b""


# -------------------------------------------------------- errors, env, usage


def test_unknown_job_errors_are_one_line(server: Server) -> None:
    for command in ("get", "watch", "logs", "cancel"):
        result = jobstream(command, "no-such-job", target=server.target)
        assert result.returncode == 2, command
        assert err(result) == "error: NOT_FOUND: job_id: no job 'no-such-job'\n", command


UNREACHABLE = (
    "error: cannot reach the jobstream server at 127.0.0.1:1 (connection refused). "
    "Is it running? Start it with `make run` or `jobstream serve`, "
    "or point --target / JOBSTREAM_TARGET at it.\n"
)
"""What every client command says when nothing listens at its target."""


@pytest.mark.parametrize(
    "args",
    [("get", "x"), ("ls",), ("watch", "x"), ("logs", "x", "-f"), ("stats",), ("rm", "x")],
)
def test_unreachable_server_says_what_is_wrong_and_what_to_do(args: tuple[str, ...]) -> None:
    result = jobstream(*args, "--timeout", "5", target="127.0.0.1:1")
    assert result.returncode == 2
    assert result.stdout == b""
    assert err(result) == UNREACHABLE


def test_unreachable_server_with_json_is_a_json_error_on_stderr() -> None:
    result = jobstream("get", "x", "--json", target="127.0.0.1:1", env={})
    assert result.returncode == 2
    assert result.stdout == b""
    [line] = json_lines(err(result))
    error = line["error"]
    assert error["code"] == "UNAVAILABLE"
    assert (
        error["message"] == "cannot reach the jobstream server at 127.0.0.1:1 (connection refused)."
    )
    assert error["target"] == "127.0.0.1:1" and error["reason"] == "connection refused"
    assert "make run" in error["hint"] and "Connection refused" in error["detail"]
    # The variable names the target just as --target does.
    by_env = jobstream("ls", env={"JOBSTREAM_TARGET": "127.0.0.1:1"})
    assert by_env.returncode == 2 and "server at 127.0.0.1:1 (connection refused)" in err(by_env)


def test_server_errors_with_json_are_json_objects(server: Server) -> None:
    result = jobstream("get", "no-such-job", "--json", target=server.target)
    assert result.returncode == 2 and result.stdout == b""
    [line] = json_lines(err(result))
    assert line["error"]["code"] == "NOT_FOUND"
    assert line["error"]["message"] == "job_id: no job 'no-such-job'"
    assert line["error"]["field"] == "job_id"
    assert line["error"]["reason"] == "JOB_NOT_FOUND"
    assert line["error"]["metadata"] == {"jobId": "no-such-job", "field": "job_id"}


def test_version_is_the_installed_packages() -> None:
    version = importlib.metadata.version("jobstream")
    assert ok(jobstream("--version")) == f"jobstream {version}\n"
    assert json.loads(ok(jobstream("--version", "--json"))) == {"version": version}
    assert json.loads(ok(jobstream("--json", "--version"))) == {"version": version}


@pytest.mark.parametrize(
    "args",
    [
        ("submit", "demo.count", "--param", "no-equals-sign"),
        ("submit", "demo.count", "--params-json", "[1, 2]"),
        ("submit", "demo.count", "--priority", "high"),
        ("ls", "--state", "bogus"),
        ("ls", "--limit", "0"),
        ("watch",),
        ("frobnicate",),
        (),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = jobstream(*args, target="127.0.0.1:1")
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr


def test_environment_fallbacks(server: Server, label: str) -> None:
    env = {
        "JOBSTREAM_TARGET": server.target,
        "JOBSTREAM_JSON": "1",
        "JOBSTREAM_SUBMIT_LABEL": label,
    }
    job = json.loads(ok(jobstream("submit", "demo.count", "--param", "n=1", env=env)))
    listed = json.loads(ok(jobstream("ls", "--label", label, env=env)))
    assert [found["id"] for found in listed] == [job["id"]]
    # A flag beats its variable.
    text = ok(jobstream("ls", "--label", label, env={**env, "JOBSTREAM_JSON": "0"}))
    assert job["id"] in text
    assert not text.lstrip().startswith("[")
    bad = jobstream("ls", env={**env, "JOBSTREAM_LS_LIMIT": "many"})
    assert bad.returncode == 2
    assert "JOBSTREAM_LS_LIMIT" in err(bad)


def test_help_names_the_environment_variables() -> None:
    text = ok(jobstream("--help"))
    assert "JOBSTREAM_TARGET" in text
    assert "127.0.0.1:50051" in text
    assert "JOBSTREAM_SUBMIT_PRIORITY" in ok(jobstream("submit", "--help"))
    assert "JOBSTREAM_WORKER_CONCURRENCY" in ok(jobstream("worker", "--help"))
    assert "JOBSTREAM_WORKER_PREFETCH" in ok(jobstream("worker", "--help"))


def test_serve_passes_its_arguments_to_the_server() -> None:
    result = jobstream_process("serve", "--help")
    assert "--data-dir" in ok(result)
    assert result.stderr == b""
    # A value only the server's own parser checks.
    refused = jobstream_process("serve", "--lease-seconds", "0")
    assert refused.returncode == 2
    assert "--lease-seconds must be at least 1" in err(refused)


def test_serve_without_the_server_extra_names_it() -> None:
    # peewee made unimportable, as in an install without [server].
    code = (
        "import sys; sys.modules['peewee'] = None; "
        "from jobstream.client.cli import main; sys.exit(main(['serve', '--help']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        env=command_environ(),
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 2
    first_line = err(result).splitlines()[0]
    assert first_line == "the server needs the [server] extra: pip install 'jobstream[server]'"
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--handlers", "no_such_module_here"), "cannot import handlers module"),
        (("--handlers", "json"), "has no module-level `handlers`"),
        ((), "worker needs --handlers"),
    ],
)
def test_worker_refuses_bad_handler_modules(args: tuple[str, ...], message: str) -> None:
    # A process: the worker command changes sys.path and logging for good.
    result = jobstream_process("worker", *args, target="127.0.0.1:1")
    assert result.returncode == 2
    assert message in err(result)
    assert b"Traceback" not in result.stderr


FAILING_HANDLERS = textwrap.dedent(
    """
    from jobstream.client.worker import Handlers

    handlers = Handlers()


    @handlers.handler("clitest.boom")
    def boom(ctx):
        raise ValueError("no " + ctx.params["what"])
    """
)


def test_worker_json_logs_its_start_jobs_failures_and_stop(
    server: Server, client: JobClient, tmp_path: Path
) -> None:
    (tmp_path / "cli_boom_handlers.py").write_text(FAILING_HANDLERS)
    argv = [*CLI, "worker", "--handlers", "cli_boom_handlers", "--worker-id", "boom-1"]
    argv += ["--json", "--log-level", "debug"]
    env = command_environ({"JOBSTREAM_TARGET": server.target})
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    try:
        job = client.submit("clitest.boom", {"what": "luck"}, max_attempts=1)
        eventually(lambda: job_in(client, job.id))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, stderr
    lines = json_lines(stderr.decode())
    ours = [line for line in lines if line["logger"].startswith("jobstream.client")]
    messages = [(line["level"], line["message"]) for line in ours]
    assert messages[0] == (
        "INFO",
        f"worker boom-1: started: kinds clitest.boom, queue(s) default, server {server.target}, "
        "concurrency 4",
    )
    assert ("DEBUG", f"job {job.id} (clitest.boom): acquired, attempt 1") in messages
    [failure] = [m for level, m in messages if level == "WARNING" and job.id in m]
    assert re.fullmatch(
        rf"job {job.id} \(clitest\.boom\): attempt 1 of 1 failed, no attempts left: "
        r"ValueError: no luck \(at cli_boom_handlers\.py:\d+ in boom\)",
        failure,
    ), failure
    assert messages[-1] == ("INFO", "worker boom-1: stopped")
    assert all(set(line) >= {"time", "level", "logger", "message"} for line in lines)


def test_ctrl_c_stops_a_watch_with_130(server: Server, client: JobClient) -> None:
    job_id = submit(server, "demo.sleep", "--param", "seconds=30")
    wait_running(client, job_id)
    child = pexpect.spawn(
        CLI[0],
        [*CLI[1:], "--target", server.target, "watch", job_id],
        env=command_environ({"TERM": "xterm-256color"}),
        dimensions=(40, 160),
        timeout=RUN_TIMEOUT_S,
    )
    child.expect("sleeping")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    assert b"Traceback" not in child.before
    ok(jobstream("cancel", job_id, target=server.target))


# ------------------------------------------------- hostile text, and worker


HANDLERS_MODULE = textwrap.dedent(
    """
    from jobstream.client.worker import Handlers

    handlers = Handlers()


    @handlers.handler("clitest.echo")
    def echo(ctx):
        ctx.phase(ctx.params["text"])
        ctx.log(ctx.params["text"], level="warning")
        return {"echo": ctx.params["text"]}
    """
)


@pytest.fixture(scope="module")
def echo_worker(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``jobstream worker`` running a handler module from its working directory."""
    tmp_path = tmp_path_factory.mktemp("echo")
    (tmp_path / "cli_echo_handlers.py").write_text(HANDLERS_MODULE)
    argv = [
        *CLI,
        "worker",
        "--handlers",
        "cli_echo_handlers",
        "--target",
        server.target,
        "--concurrency",
        "2",
        "--prefetch",
        "0",
        "--worker-id",
        "cli-test-worker",
    ]
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=command_environ(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    yield
    proc.terminate()
    try:
        output, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    assert b"Traceback" not in output, output.decode(errors="replace")


def _submit_hostile(server: Server) -> str:
    params = json.dumps({"text": HOSTILE_TEXT})
    job_id = submit(server, "clitest.echo", "--params-json", params, "--max-attempts", "1")
    result = jobstream("watch", job_id, target=server.target)
    assert result.returncode == 0, (err(result), out(result))
    return job_id


def _assert_escaped(output: bytes) -> None:
    assert b"\x1b" not in output
    assert b"\x07" not in output
    assert b"\r" not in output
    assert "\x9b".encode() not in output
    text = output.decode()
    assert "\\x1b]0;pwned\\x07" in text
    assert "[bold]x[/bold]" in text
    assert "\\x9b31m" in text


@pytest.mark.usefixtures("echo_worker")
def test_hostile_log_text_is_escaped_on_the_terminal_and_raw_in_json(
    server: Server,
) -> None:
    job_id = _submit_hostile(server)
    for args in (("watch", job_id), ("logs", job_id), ("logs", job_id, "-f"), ("get", job_id)):
        result = jobstream(*args, target=server.target)
        assert result.returncode == 0, args
        _assert_escaped(result.stdout)

    logged = json_lines(ok(jobstream("logs", job_id, "--json", target=server.target)))
    assert [event["log"]["text"] for event in logged] == [HOSTILE_TEXT]
    assert logged[0]["log"]["level"] == "warning"
    watched = json_lines(ok(jobstream("watch", job_id, "--json", target=server.target)))
    assert any(
        line.get("event", {}).get("log", {}) and line["event"]["log"]["text"] == HOSTILE_TEXT
        for line in watched
    )
    job = get_json(server, job_id)
    assert job["result"] == {"echo": HOSTILE_TEXT}
    assert job["progress"]["phase"] == HOSTILE_TEXT


@pytest.mark.usefixtures("echo_worker")
def test_live_watch_on_a_terminal_emits_no_hostile_sequences(server: Server) -> None:
    job_id = _submit_hostile(server)
    child = pexpect.spawn(
        CLI[0],
        [*CLI[1:], "--target", server.target, "watch", job_id],
        env=command_environ({"TERM": "xterm-256color"}),
        dimensions=(40, 160),
        timeout=RUN_TIMEOUT_S,
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    output: bytes = child.before
    assert b"\x1b[" in output, "a terminal gets colours and cursor movement"
    assert b"\x1b]" not in output  # no OSC: nothing retitles the terminal
    assert b"\x07" not in output
    assert b"pwned" in output
    assert b"[bold]x[/bold]" in output


# ---------------------------------------------------------- in-process units


def test_sanitize_escapes_controls_but_tab() -> None:
    assert sanitize("a\tb") == "a\tb"
    assert sanitize("\x1b[2J\x00\x7f\x85") == "\\x1b[2J\\x00\\x7f\\x85"
    assert sanitize("one\ntwo\r") == "one\\x0atwo\\x0d"
    assert sanitize("one\ntwo", multiline=True) == "one\ntwo"
    assert sanitize("abc\u202edcba") == "abc\\u202edcba"
    assert sanitize("plain ünïcode ✓") == "plain ünïcode ✓"


def test_log_line_is_never_markup_even_with_colour() -> None:
    console = Console(force_terminal=True, color_system="truecolor", width=200, record=True)
    event = JobEvent(
        job_id="j",
        seq=1,
        kind=EventKind.LOG,
        log=LogLine(text=HOSTILE_TEXT, level=LogLevel.ERROR, stream="[red]err"),
    )
    with console.capture() as capture:
        console.print(log_line(event))
    rendered = capture.get()
    assert "\x1b]" not in rendered
    assert "\x07" not in rendered
    assert "[bold]x[/bold]" in rendered
    assert "[[red]err]" in rendered


def test_to_jsonable_turns_models_into_json_data() -> None:
    from datetime import UTC, datetime

    job = Job(
        id="j1",
        kind="k",
        state=JobState.FAILED,
        progress=Progress(fraction=0.5, done=1, total=2),
        error=JobError(code="boom", details={"n": float("nan")}),
        create_time=datetime(2025, 1, 2, 3, 4, 5, 6000, tzinfo=UTC),
        labels={"a": "b"},
    )
    data = to_jsonable(job)
    assert data["state"] == "failed"
    assert data["create_time"] == "2025-01-02T03:04:05.006000Z"
    assert data["start_time"] is None
    assert data["progress"] == {"fraction": 0.5, "done": 1, "total": 2, "phase": "", "message": ""}
    assert data["error"] == {"code": "boom", "message": "", "details": {"n": None}}
    assert data["steps"] == []
    assert json.loads(dumps(job)) == data
    assert "\x1b" not in dumps({"t": "\x1b\x9b"})


def test_watch_view_counts_each_key_once() -> None:
    # The snapshot counted a (succeeded) and b (failed); the rerun reports
    # b again, now succeeded, and a new key c.
    job = Job(id="j", kind="k", state=JobState.RUNNING, counters=Counters(succeeded=1, failed=1))
    view = WatchView(job)
    for seq, item in enumerate(
        [
            ResultItem(key="b", status=ResultStatus.SUCCEEDED, replaced_status=ResultStatus.FAILED),
            ResultItem(key="c", status=ResultStatus.SUCCEEDED),
        ],
        start=1,
    ):
        view.apply(JobEvent(job_id="j", seq=seq, kind=EventKind.RESULT_ITEM, result_item=item))
    assert view.counters == Counters(succeeded=3)


@pytest.mark.parametrize(
    ("state", "mark"), [(StepState.CANCELLED, "⊘"), (StepState.INTERRUPTED, "↯")]
)
def test_steps_that_ended_with_their_attempt_have_marks(state: StepState, mark: str) -> None:
    assert step_line(Step(name="fetch", state=state)).plain.startswith(mark)


def test_param_values_are_json_when_they_parse() -> None:
    args = parse_args(
        [
            "submit",
            "k",
            "--param",
            "n=200",
            "--param",
            "flag=true",
            "--param",
            "s=abc",
            "--param",
            "e=",
            "--param",
            "eq=a=b",
            "--param",
            "list=[1,2]",
        ],
        environ={},
    )
    assert dict(args.param) == {
        "n": 200,
        "flag": True,
        "s": "abc",
        "e": "",
        "eq": "a=b",
        "list": [1, 2],
    }


def test_defaults_are_the_librarys_own() -> None:
    # The CLI mirrors the library's defaults by importing them, so a change
    # to one is a change to both.
    args = parse_args(["worker"], environ={})
    assert (args.target, args.timeout) == (DEFAULT_TARGET, DEFAULT_TIMEOUT)
    assert args.concurrency == DEFAULT_CONCURRENCY
    assert tuple(args.queue) == DEFAULT_QUEUES == Worker().queues


def test_flags_beat_environment_beats_defaults() -> None:
    args = parse_args(["ls"], environ={})
    assert (args.target, args.timeout, args.json, args.limit) == (
        "127.0.0.1:50051",
        30.0,
        False,
        50,
    )
    env = {"JOBSTREAM_TARGET": "h:1", "JOBSTREAM_LS_LIMIT": "7", "JOBSTREAM_LS_KIND": "a, b"}
    args = parse_args(["ls"], environ=env)
    assert (args.target, args.limit, args.kind) == ("h:1", 7, ["a", "b"])
    args = parse_args(["--target", "x:2", "ls", "--limit", "3", "--kind", "c"], environ=env)
    assert (args.target, args.limit, args.kind) == ("x:2", 3, ["c"])
    args = parse_args(["ls", "--target", "y:3", "--timeout", "0"], environ=env)
    assert (args.target, args.timeout) == ("y:3", 0.0)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.35, "350 ms"),
        (1.0, "1 s"),
        (1.5, "1.5 s"),
        (42.4, "42 s"),
        (150, "2.5 min"),
        (3600, "1 h"),
        (86_400, "24 h"),
        (3 * 86_400, "3 d"),
        (45 * 86_400, "45 d"),
    ],
)
def test_durations_read_as_people_say_them(seconds: float, shown: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == shown


def test_keys_from_escape_sequences() -> None:
    assert parse_keys("\x1b[A\x1b[Bjk\r\x1b") == ["up", "down", "j", "k", "enter", "escape"]
    assert parse_keys("\x1bOA\x1b[5~q") == ["up", "pageup", "q"]
    assert parse_keys("\x1b[99x") == []  # an unknown sequence is dropped, not typed
