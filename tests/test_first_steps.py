"""The README's first steps as a new user takes them: ``make help``, and the
Python snippets, read from the README itself and run as written (as
scripts, in processes of their own, with ``JOBSTREAM_TARGET`` naming the
test server) against a real server with the demo handlers."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_runner import RUN_TIMEOUT_S, command_environ
from conftest import Server
from helpers import eventually, job_in

from jobstream.client import JobClient, JobState

ROOT = Path(__file__).resolve().parent.parent
"""The repository: where the README and the Makefile are."""

FALLBACK_LINE = re.compile(r"\d{4}-\d\d-\d\d \S+ [A-Z]+ jobstream\.")
"""A line in the format of the worker's own stderr handler."""

STOP_TIMEOUT_S = 20.0
"""How long a worker may take to stop after SIGTERM."""


def python_block(marker: str) -> str:
    """The README's Python code block that contains ``marker``."""
    readme = (ROOT / "README.md").read_text()
    blocks: list[str] = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    [block] = [b for b in blocks if marker in b]
    return block


def test_make_help_shows_the_settings_of_make_run() -> None:
    result = subprocess.run(
        ["make", "-s", "help", "PORT=50099", "DATA=/tmp/elsewhere"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=True,
    )
    assert "$(" not in result.stdout
    assert (
        "make run listens on HOST=127.0.0.1 PORT=50099 HTTP_PORT=8080, "
        "keeps its data in DATA=/tmp/elsewhere;" in result.stdout
    )
    assert "make run PORT=50052 DATA=/tmp/jobs" in result.stdout


def test_readme_client_snippet_runs_as_written(server: Server) -> None:
    code = python_block("JobClient(TARGET)")
    assert '"127.0.0.1:50051"' not in code.replace(
        'os.environ.get("JOBSTREAM_TARGET", "127.0.0.1:50051")', ""
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=command_environ({"JOBSTREAM_TARGET": server.target}),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "100 / 100" in result.stdout.splitlines()
    assert "item 100 of 100" in result.stdout


class WorkerProcess:
    """A worker script run by the tests; always killed at the end of the
    test, so a failing test leaves no worker taking later tests' jobs."""

    def __init__(self, server: Server, script: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=script.parent,
            env=command_environ({"JOBSTREAM_TARGET": server.target}),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> str:
        """SIGTERM the worker; its stderr once it has stopped."""
        self.proc.send_signal(signal.SIGTERM)
        _, stderr = self.proc.communicate(timeout=STOP_TIMEOUT_S)
        assert self.proc.returncode == 0, stderr
        return stderr

    def kill(self) -> None:
        """End it however it is (a no-op once it has stopped)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.fixture
def run_worker(server: Server) -> Iterator[Callable[[Path], WorkerProcess]]:
    """Starts worker scripts against the module's server; kills them after the test."""
    started: list[WorkerProcess] = []

    def start(script: Path) -> WorkerProcess:
        worker = WorkerProcess(server, script)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def _one_failed_one_succeeded(server: Server) -> tuple[str, str]:
    """A job the README's handler fails (no rows), and one it runs."""
    with JobClient(server.target) as client:
        failing = client.submit("enrich.companies", max_attempts=1)
        working = client.submit("enrich.companies", {"rows": ["a", "b"]})
        eventually(lambda: job_in(client, failing.id))
        eventually(lambda: job_in(client, working.id))
        assert client.get(failing.id).state is JobState.FAILED
        assert client.get(working.id).state is JobState.SUCCEEDED
    return failing.id, working.id


def test_readme_worker_snippet_logs_its_start_failures_and_stop(
    server: Server, tmp_path: Path, run_worker: Callable[[Path], WorkerProcess]
) -> None:
    code = python_block("Worker(TARGET")
    script = tmp_path / "readme_worker.py"
    script.write_text(code)
    worker = run_worker(script)
    failing, working = _one_failed_one_succeeded(server)
    lines = worker.stop().splitlines()
    assert re.fullmatch(
        r"\S+ \S+ INFO jobstream\.client\.worker: worker \S+: started: kinds enrich\.companies, "
        rf"queue\(s\) default, server {re.escape(server.target)}, concurrency 4",
        lines[0],
    ), lines
    line = r"(?m)^\S+ \S+ WARNING jobstream\.client\.attempt: "
    line += rf"job {failing} \(enrich\.companies\): "
    assert re.search(
        line + r"attempt 1 of 1 failed, no attempts left: "
        r"KeyError: 'rows' \(at readme_worker\.py:\d+ in enrich\)$",
        "\n".join(lines),
    ), lines
    assert any(f"job {working} (enrich.companies): succeeded" in x for x in lines), lines
    assert lines[-1].endswith(": stopped") and " INFO " in lines[-1]
    assert not any("Traceback" in x for x in lines)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (
            "import logging\n"
            "logging.basicConfig(level=logging.WARNING, format='APP %(levelname)s %(message)s')\n",
            "APP WARNING job",
        ),
        ("import logging\nlogging.getLogger('jobstream').addHandler(logging.NullHandler())\n", ""),
    ],
    ids=["basicConfig", "NullHandler"],
)
def test_a_worker_keeps_to_the_applications_logging(
    server: Server,
    tmp_path: Path,
    run_worker: Callable[[Path], WorkerProcess],
    setup: str,
    expected: str,
) -> None:
    script = tmp_path / "configured_worker.py"
    script.write_text(setup + python_block("Worker(TARGET"))
    worker = run_worker(script)
    _one_failed_one_succeeded(server)
    lines = worker.stop().splitlines()
    # Nothing in the worker's own format: its fallback stayed out of the way.
    assert not [line for line in lines if FALLBACK_LINE.match(line)], lines
    ours = [line for line in lines if "KeyError" in line or "SIGTERM" in line]
    if expected:
        # The application's handler and level, each line once: the failure,
        # and the worker's note on SIGTERM; nothing at INFO.
        assert all(line.startswith("APP WARNING ") for line in ours), lines
        [failure] = [line for line in ours if "KeyError: 'rows'" in line]
        assert failure.startswith(expected)
        assert len(ours) == 2 and not any(line.startswith("APP INFO") for line in lines), lines
    else:
        assert ours == [], lines
