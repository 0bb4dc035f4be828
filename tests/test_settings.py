"""Settings read one way everywhere: booleans, durations and JOBSTREAM_*
fallbacks (jobstream.client.settings), used by the server's ``serve`` flags
and the CLI alike; and one JSON log line format for server and worker."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import eventually

from jobstream.client.cli.options import parse_args
from jobstream.client.settings import (
    EnvOptions,
    SettingError,
    env_bool,
    parse_bool,
    parse_duration,
)
from jobstream.server import admin
from jobstream.server.config import from_args

WORKER_LOG_TIMEOUT_S = 20.0
"""How long a worker may take to start and log its first line."""


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" On ", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("OFF", False),
    ],
)
def test_one_set_of_boolean_words_in_any_case(text: str, value: bool) -> None:
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["", "maybe", "2", "enabled", "y"])
def test_other_boolean_words_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected a boolean"):
        parse_bool(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("1.5s", 1.5), ("10m", 600.0), ("2h", 7200.0), ("30d", 2_592_000.0)],
)
def test_one_duration_grammar(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(text.upper()) == seconds


@pytest.mark.parametrize("text", ["", "-1", "1e3", "10x", "1h30m", "inf", "s"])
def test_other_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_env_bool_names_the_variable_and_reads_empty_as_unset() -> None:
    assert env_bool("JOBSTREAM_X", environ={"JOBSTREAM_X": "on"}) is True
    assert env_bool("JOBSTREAM_X", True, environ={"JOBSTREAM_X": " "}) is True
    assert env_bool("JOBSTREAM_X", environ={}) is False
    with pytest.raises(SettingError, match="JOBSTREAM_X='sure': expected a boolean"):
        env_bool("JOBSTREAM_X", environ={"JOBSTREAM_X": "sure"})


def test_env_options_flag_beats_variable_beats_default(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="t")
    options = EnvOptions(parser, "T")
    options.add("--every", help="how often", convert=parse_duration, default=5.0)
    options.add("--loud", help="shout", kind="flag")
    options.add("--tag", help="tags", kind="list")
    assert "[env T_EVERY; default 5.0]" in parser.format_help()
    assert "[env T_TAG, comma-separated]" in parser.format_help()

    def parsed(argv: list[str], environ: dict[str, str]) -> tuple[Any, ...]:
        args = parser.parse_args(argv)
        options.apply(args, environ)
        return args.every, args.loud, args.tag

    assert parsed([], {}) == (5.0, False, None)
    env = {"T_EVERY": "2m", "T_LOUD": "ON", "T_TAG": "a, b,"}
    assert parsed([], env) == (120.0, True, ["a", "b"])
    assert parsed(["--every", "1", "--tag", "c"], env) == (1.0, True, ["c"])
    with pytest.raises(SystemExit) as exited:
        parsed([], {"T_LOUD": "loudly"})
    assert exited.value.code == 2
    assert "T_LOUD='loudly': expected a boolean" in capsys.readouterr().err


@pytest.mark.parametrize("word", ["on", "ON", "yes", "1", "true"])
def test_server_booleans_read_like_the_cli(monkeypatch: pytest.MonkeyPatch, word: str) -> None:
    monkeypatch.setenv("JOBSTREAM_INSECURE", word)
    monkeypatch.setenv("JOBSTREAM_LOG_JSON", word)
    config = from_args([])
    assert config.insecure and config.log_json
    assert parse_args(["ls"], environ={"JOBSTREAM_JSON": word}).json


@pytest.mark.parametrize(("word", "value"), [("off", False), ("No", False), ("on", True)])
def test_db_commands_read_booleans_like_the_cli(
    monkeypatch: pytest.MonkeyPatch, word: str, value: bool
) -> None:
    monkeypatch.setenv("JOBSTREAM_JSON", word)
    assert admin.parse_args(["check"]).json is value


def test_a_bad_server_boolean_is_a_usage_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOBSTREAM_INSECURE", "sometimes")
    with pytest.raises(SystemExit) as exited:
        from_args([])
    assert exited.value.code == 2
    assert "JOBSTREAM_INSECURE='sometimes': expected a boolean" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variable", "text", "expected"),
    [
        ("JOBSTREAM_PORT", "fifty", "invalid literal for int()"),
        ("JOBSTREAM_LEASE_SECONDS", "long", "could not convert string to float"),
        ("JOBSTREAM_MAX_LABELS", "3.5", "invalid literal for int()"),
        ("JOBSTREAM_SYNCHRONOUS", "off", "expected one of full, normal"),
    ],
)
def test_a_bad_server_variable_is_a_usage_error_naming_it(
    variable: str, text: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        from_args([], environ={variable: text})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"{variable}={text!r}: {expected}" in err and "Traceback" not in err


def test_a_bad_db_command_variable_is_a_usage_error_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        admin.parse_args(["check"], environ={"JOBSTREAM_JSON": "maybe"})
    assert exited.value.code == 2
    assert "JOBSTREAM_JSON='maybe': expected a boolean" in capsys.readouterr().err


def test_server_flags_beat_variables_beat_defaults() -> None:
    environ = {"JOBSTREAM_PORT": "6000", "JOBSTREAM_MAX_LABELS": "4", "JOBSTREAM_HANDLERS": "a,b"}
    config = from_args([], environ=environ)
    assert (config.port, config.limits.max_labels, config.handlers) == (6000, 4, ("a", "b"))
    config = from_args(["--port", "7000", "--handlers", "c"], environ=environ)
    assert (config.port, config.limits.max_labels, config.handlers) == (7000, 4, ("c",))
    assert from_args([], environ={}).port == 50051


def test_poll_seconds_reach_the_server_config() -> None:
    assert from_args(["--poll-seconds", "0.5"]).poll_s == 0.5
    assert from_args([], environ={"JOBSTREAM_POLL_SECONDS": "2"}).poll_s == 2.0


def test_server_durations_use_the_one_grammar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBSTREAM_RETENTION", "1.5D")
    assert from_args(["--retention-every", "10m"]).retention_s == 1.5 * 86400
    assert from_args(["--retention-every", "10m"]).retention_every_s == 600.0
    assert from_args([]).retention_every_s == 3600.0


def test_worker_json_log_lines_have_the_server_format(tmp_path: Path) -> None:
    stderr = tmp_path / "worker.log"
    # Nothing listens on port 1: the worker logs its start, then keeps
    # retrying, which is all this needs.
    argv = [sys.executable, "-m", "jobstream.client.cli", "worker", "--json"]
    argv += ["--handlers", "jobstream.client.demo", "--target", "127.0.0.1:1"]
    with stderr.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=sink)
    try:

        def first_line() -> dict[str, Any] | None:
            lines = stderr.read_text().splitlines()
            return json.loads(lines[0]) if lines else None

        line = eventually(first_line, timeout=WORKER_LOG_TIMEOUT_S)
    finally:
        proc.terminate()
        proc.wait(10)
    assert set(line) == {"time", "level", "logger", "message"}
    assert line["level"] == "INFO" and line["logger"] == "jobstream.client.worker"
    assert line["time"].endswith("+00:00")  # UTC, as the server writes it
    assert "started: kinds demo.count" in line["message"]
