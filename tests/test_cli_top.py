"""``jobstream top`` in a real terminal: tmux runs it in a pseudo-terminal
against a server with live jobs, and the tests read the screen tmux shows.

Each test has its own tmux server (``-L`` socket name), killed afterwards.
"""

from __future__ import annotations

import json
import queue
import re
import shlex
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_runner import command_environ
from conftest import Server
from helpers import RawWorker, eventually
from test_cli import CLI, jobstream, ok

from jobstream.client import JobClient
from jobstream.v1 import job_pb2, worker_service_pb2

SCREEN = (160, 30)
"""Columns and lines of the terminal top runs in."""

TMUX_TIMEOUT_S = 10.0
"""Longest one tmux command may take."""

SLOW_COUNT = {"n": 100_000, "delay": 0.01}
"""demo.count params for a job that runs until it is cancelled."""

READ_TIMEOUT_S = 20.0
"""Deadline of each JSON line read from ``top --json``."""

PERCENT = re.compile(r"(\d+\.\d)%")


class Tmux:
    """One private tmux server running one command in a detached session."""

    def __init__(self, command: str, status_file: Path) -> None:
        self.socket = f"jobstream-test-{uuid.uuid4().hex[:8]}"
        self.status_file = status_file
        # sh records the exit status once the command ends (tmux would
        # close the pane and forget it). `trap : INT` keeps sh alive through
        # Ctrl-C; a trap (unlike an ignore) is not inherited, so the command
        # still gets SIGINT as usual.
        shell = f"trap : INT; {command}; echo $? > {shlex.quote(str(status_file))}"
        cols, lines = SCREEN
        self._tmux(
            "new-session", "-d", "-s", "top", "-x", str(cols), "-y", str(lines), "sh", "-c", shell
        )

    def _tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=TMUX_TIMEOUT_S,
            env=command_environ({"TERM": "xterm-256color"}),
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def screen(self, *, styles: bool = False) -> str:
        """The visible screen as text (with ``styles``, with the escape
        codes of its colours and attributes)."""
        return self._tmux("capture-pane", "-p", *(["-e"] if styles else []), "-t", "top")

    def keys(self, *keys: str) -> None:
        """Type ``keys`` (tmux key names, e.g. ``C-c``)."""
        self._tmux("send-keys", "-t", "top", *keys)

    def kill(self) -> None:
        """Ends the tmux server and whatever still runs in it."""
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"],
            capture_output=True,
            timeout=TMUX_TIMEOUT_S,
            check=False,
        )


@pytest.fixture
def label() -> str:
    """A label value only this test's jobs carry."""
    return uuid.uuid4().hex


@pytest.fixture
def top(server: Server, label: str, tmp_path: Path) -> Iterator[Tmux]:
    """``jobstream top --label run=LABEL`` in a tmux pseudo-terminal."""
    command = shlex.join([*CLI, "--target", server.target, "top", "--label", f"run={label}"])
    tmux = Tmux(command, tmp_path / "status")
    yield tmux
    tmux.kill()


def _row(screen: str, job_id: str) -> str | None:
    """The screen line of ``job_id``, if shown."""
    return next((line for line in screen.splitlines() if job_id in line), None)


def _percent(screen: str, job_id: str) -> float | None:
    row = _row(screen, job_id)
    match = PERCENT.search(row) if row else None
    return float(match.group(1)) if match else None


def test_top_shows_jobs_and_their_progress_changing(server: Server, label: str, top: Tmux) -> None:
    with JobClient(server.target) as client:
        running = client.submit("demo.count", SLOW_COUNT, labels={"run": label})
        waiting = client.submit("top.nobody", labels={"run": label})
        other = client.submit("top.nobody", labels={"run": "someone-else"})

        def both_shown() -> str | None:
            screen = top.screen()
            row = _row(screen, running.id)
            if row and "running" in row and _row(screen, waiting.id) and PERCENT.search(row):
                return screen
            return None

        screen = eventually(both_shown)
        assert "jobstream top" in screen
        assert "queued" in (_row(screen, waiting.id) or "")
        assert "demo.count" in (_row(screen, running.id) or "")
        assert other.id not in screen  # filtered out by label
        first = _percent(screen, running.id)
        assert first is not None

        # The bar moves as the worker reports, with no input from us.
        def moved() -> float | None:
            now = _percent(top.screen(), running.id)
            return now if now is not None and now > first else None

        eventually(moved)

        client.cancel(running.id)
        eventually(lambda: "cancelled" in (_row(top.screen(), running.id) or ""))
        client.delete(waiting.id)
        eventually(lambda: _row(top.screen(), waiting.id) is None)

    top.keys("C-c")
    status = eventually(lambda: top.status_file.exists() and top.status_file.read_text().strip())
    assert status == "130"


def test_top_in_a_pipe_prints_the_table_once(server: Server, label: str) -> None:
    with JobClient(server.target) as client:
        job = client.submit("top.nobody", labels={"run": label})
    printed = ok(jobstream("top", "--label", f"run={label}", target=server.target))
    row = _row(printed, job.id)
    assert row is not None and "queued" in row and "top.nobody" in row
    # No worker serves the kind: its message column says so.
    assert "no live worker serves kind" in row, printed
    assert "1 jobs" in printed
    assert "\x1b" not in printed


def _line_reader(
    proc: subprocess.Popen[str],
) -> tuple[Callable[[], dict[str, Any]], threading.Thread]:
    """Reads the process's JSON lines on a thread, so each read can have a
    deadline; returns the reader and the thread (it ends at EOF)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()

    def next_line() -> dict[str, Any]:
        value: dict[str, Any] = json.loads(lines.get(timeout=READ_TIMEOUT_S))
        return value

    return next_line, thread


def test_top_json_streams_changes(server: Server, label: str) -> None:
    with JobClient(server.target) as client:
        job = client.submit("top.nobody", labels={"run": label})
        argv = [*CLI, "--target", server.target, "--json", "top", "--label", f"run={label}"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=command_environ(), text=True)
        try:
            next_line, pump = _line_reader(proc)
            first = next_line()
            assert first["job"]["id"] == job.id and first["job"]["state"] == "queued"
            assert next_line()["caught_up"] is True
            client.cancel(job.id)
            change = next_line()
            assert change["job"]["id"] == job.id and change["job"]["state"] == "cancelled"
            assert change["position"] > first["position"]
        finally:
            proc.kill()
            proc.wait(10)
            pump.join(10)  # EOF after the kill; then the pipe is safe to close
            assert proc.stdout is not None
            proc.stdout.close()


def _status(top: Tmux) -> str:
    """top's exit status, once it has ended."""

    def written() -> str | None:
        return top.status_file.read_text().strip() if top.status_file.exists() else None

    return eventually(written)


REVERSE = "\x1b[7m"
"""How a selected row starts in tmux's capture of the styled screen."""


def _selected(top: Tmux, job_id: str) -> bool:
    row = _row(top.screen(styles=True), job_id)
    return row is not None and REVERSE in row


def test_q_quits_top(server: Server, label: str, top: Tmux) -> None:
    with JobClient(server.target) as client:
        job = client.submit("top.nobody", labels={"run": label})
        eventually(lambda: _row(top.screen(), job.id))
        top.keys("q")
        assert _status(top) == "0"
        client.cancel(job.id)


def test_enter_shows_the_selected_job_live_and_esc_returns(
    server: Server, label: str, top: Tmux
) -> None:
    with JobClient(server.target) as client:
        running = client.submit("demo.count", SLOW_COUNT, labels={"run": label})
        waiting = client.submit("top.nobody", labels={"run": label})
        try:
            eventually(lambda: "running" in (_row(top.screen(), running.id) or ""))
            eventually(lambda: _row(top.screen(), waiting.id))
            screen = top.screen()
            assert "↑↓ select  enter watch  q quit" in screen
            # Running jobs come first: the first row is selected.
            eventually(lambda: _selected(top, running.id))
            top.keys("j")
            eventually(lambda: _selected(top, waiting.id) and not _selected(top, running.id))
            top.keys("Up")
            eventually(lambda: _selected(top, running.id))

            top.keys("Enter")

            def items_shown() -> list[int]:
                found = re.findall(r"item (\d+) of 100000", top.screen())
                return [int(n) for n in found]

            first = eventually(items_shown)
            screen = top.screen()
            assert "esc/q back to the list" in screen
            header = next(line for line in screen.splitlines() if line.startswith(running.id))
            assert "demo.count" in header and "running" in header
            # Live: later items arrive without a key.
            eventually(lambda: max(items_shown() or [0]) > max(first))

            top.keys("Escape")
            eventually(lambda: "jobstream top" in top.screen())
            assert "esc/q back" not in top.screen()
            top.keys("Down", "Enter")
            eventually(lambda: "esc/q back to the list" in top.screen())
            shown = top.screen()
            assert any(
                line.startswith(waiting.id) and "queued" in line for line in shown.splitlines()
            )
            # Deleted while shown: the view says so and waits for a key.
            client.delete(waiting.id)
            eventually(lambda: "watch ended: " in top.screen())
            top.keys("q")  # back to the table …
            eventually(lambda: "jobstream top" in top.screen())
            eventually(lambda: _row(top.screen(), waiting.id) is None)
            top.keys("q")  # … and out
            assert _status(top) == "0"
        finally:
            client.delete(running.id, force=True)
            client.delete(waiting.id, allow_missing=True)


LONG_MESSAGE = "M" * 150 + "-END"
"""A progress message wider than any column a fixed cut would leave."""


def _running_with_message(server: Server, label: str, message: str) -> str:
    """A job held RUNNING by a raw worker that reported ``message``."""
    kind = f"top.long.{uuid.uuid4().hex[:6]}"
    with JobClient(server.target) as client:
        job = client.submit(kind, labels={"run": label})
    raw = RawWorker(server.target)
    try:
        lease = raw.acquire(kind, lease_s=600)
        raw.stub.ReportJob(
            worker_service_pb2.ReportJobRequest(
                job_id=job.id,
                lease_id=lease.lease_id,
                progress=job_pb2.Progress(done=1, total=10, message=message),
            ),
            timeout=READ_TIMEOUT_S,
        )
    finally:
        raw.close()
    return job.id


def test_the_message_column_takes_the_width_left(server: Server, label: str, top: Tmux) -> None:
    job_id = _running_with_message(server, label, LONG_MESSAGE)
    row = eventually(lambda: _row(top.screen(), job_id))
    cols, _ = SCREEN
    assert "top.long" in row and "running" in row
    assert row.rstrip().endswith("M…") and len(row.rstrip()) == cols
    # Without a terminal (200 columns) the other columns keep their room too.
    printed = ok(jobstream("top", "--label", f"run={label}", target=server.target))
    piped = _row(printed, job_id)
    assert piped is not None and "top.long" in piped and "running" in piped and "10.0%" in piped
    assert len(piped.rstrip()) == 200 and piped.rstrip().endswith("…")
    top.keys("q")
    assert _status(top) == "0"
    with JobClient(server.target) as client:
        client.delete(job_id, force=True)
