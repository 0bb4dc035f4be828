"""Server settings: one frozen value, built from flags with JOBSTREAM_*
environment fallbacks (shown in --help)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobstream.client.settings import SettingError, env_bool, env_value, parse_duration
from jobstream.server import limits
from jobstream.server.files import check_output_roots
from jobstream.server.quotas import DEFAULT_MAX_WATCHERS, DEFAULT_MAX_WATCHERS_PER_PRINCIPAL

DEFAULT_PORT = 50051
"""The port ``make run`` serves on."""

DEFAULT_LEASE_S = 30.0
"""How long a lease lasts unless renewed; a dead worker's job waits this long."""

MAX_LEASE_S = 3600.0
"""The longest lease a worker may ask for."""

DEFAULT_SWEEP_S = 1.0
"""How often expired leases and dead uploads are looked for."""

DEFAULT_MAX_ATTEMPTS = 3
"""Attempts a job gets when its submit names none."""

DEFAULT_BACKOFF_S = 1.0
"""Delay before the second attempt; doubles each attempt, capped at 5 min."""

DEFAULT_POLL_S = 1.0
"""PostgreSQL: how often watchers re-read while the LISTEN connection is down
(and how often a quiet LISTEN connection is checked)."""

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Largest request message the server accepts (RESOURCE_EXHAUSTED beyond)."""

DEFAULT_METRICS_INTERVAL_S = 5.0
"""How often the job counts behind the jobs-by-state and queue-depth metrics
are re-read: a typical scrape interval, and one cheap query each time."""

DEFAULT_RETENTION_EVERY_S = 3600.0
"""How often --retention purges: hourly keeps old jobs from piling up while
costing one indexed query per hour when there is nothing to do."""

DEFAULT_GRACE_S = 10.0
"""How long a graceful shutdown lets in-flight calls finish."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerConfig:
    """Everything the server needs to start."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    port_file: Path | None = None
    data_dir: Path = Path("data")
    output_roots: tuple[Path, ...] = ()
    """Directories shared with workers where ``ROOT/<job id>/`` belongs to
    that job: recorded files may lie there too (see files.py)."""
    db_url: str = ""
    synchronous: str = "full"
    handlers: tuple[str, ...] = ()
    concurrency: int = 4
    lease_s: float = DEFAULT_LEASE_S
    max_lease_s: float = MAX_LEASE_S
    sweep_s: float = DEFAULT_SWEEP_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_s: float = DEFAULT_BACKOFF_S
    grace_s: float = DEFAULT_GRACE_S
    poll_s: float = DEFAULT_POLL_S
    log_level: str = "INFO"
    # Security and limits (issue 5): see auth.py, tls.py, quotas.py.
    tokens_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    max_watchers: int = DEFAULT_MAX_WATCHERS
    max_watchers_per_principal: int = DEFAULT_MAX_WATCHERS_PER_PRINCIPAL
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_params_bytes: int = limits.DEFAULT_MAX_PARAMS_BYTES
    max_artifact_bytes: int = limits.DEFAULT_MAX_ARTIFACT_BYTES
    max_artifacts_per_job: int = limits.DEFAULT_MAX_ARTIFACTS_PER_JOB
    max_json_depth: int = limits.DEFAULT_MAX_JSON_DEPTH
    max_labels: int = limits.DEFAULT_MAX_LABELS
    max_label_value_bytes: int = limits.DEFAULT_MAX_LABEL_VALUE_BYTES
    max_log_line_bytes: int = limits.DEFAULT_MAX_LOG_LINE_BYTES
    max_log_lines_per_job: int = limits.DEFAULT_MAX_LOG_LINES_PER_JOB
    # Operations (issue 6): see metrics.py and logs.py.
    metrics_port: int = 0
    metrics_interval_s: float = DEFAULT_METRICS_INTERVAL_S
    log_json: bool = False
    # The HTTP face (jobstream.gateway) in this process: off when None;
    # 0 picks a free port.
    http_port: int | None = None
    http_port_file: Path | None = None
    # Retention (issue 6): see purge.py. 0 keeps ended jobs forever.
    retention_s: float = 0.0
    retention_every_s: float = DEFAULT_RETENTION_EVERY_S

    @property
    def limits(self) -> limits.Limits:
        """The limits an operator set, as one value."""
        return limits.Limits(
            max_params_bytes=self.max_params_bytes,
            max_json_depth=self.max_json_depth,
            max_labels=self.max_labels,
            max_label_value_bytes=self.max_label_value_bytes,
            max_log_line_bytes=self.max_log_line_bytes,
            max_log_lines_per_job=self.max_log_lines_per_job,
            max_artifact_bytes=self.max_artifact_bytes,
            max_artifacts_per_job=self.max_artifacts_per_job,
        )

    @property
    def database_url(self) -> str:
        """The database to use: --db, else ``jobstream.db`` in the data dir."""
        return self.db_url or str(self.data_dir / "jobstream.db")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"JOBSTREAM_{name}", default)


def env_default(name: str, default: str) -> str:
    """``JOBSTREAM_<name>`` or ``default``: the fallback of every server flag
    (public for the other server commands, e.g. ``jobstream db``)."""
    return _env(name, default)


def parser() -> argparse.ArgumentParser:
    """The ``jobstream serve`` argument parser."""
    p = argparse.ArgumentParser(
        prog="jobstream serve",
        description="Serve the jobstream gRPC API (SQLite under --data-dir by default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add("--host", default=_env("HOST", "127.0.0.1"), help="address to listen on [JOBSTREAM_HOST]")
    add(
        "--port",
        type=int,
        default=int(_env("PORT", str(DEFAULT_PORT))),
        help="port to listen on; 0 picks a free one [JOBSTREAM_PORT]",
    )
    add(
        "--port-file",
        type=Path,
        default=None,
        help="write the bound port to this file once serving",
    )
    add(
        "--data-dir",
        type=Path,
        default=Path(_env("DATA_DIR", "data")),
        help="where the SQLite file and job files live [JOBSTREAM_DATA_DIR]",
    )
    add(
        "--output-root",
        dest="output_roots",
        action="append",
        type=Path,
        default=[Path(r) for r in _env("OUTPUT_ROOT", "").split(os.pathsep) if r],
        metavar="DIR",
        help="a directory dedicated to job outputs, shared with workers: ROOT/<job id>/ "
        "belongs to that job, may hold files it records and is removed with it; "
        f"repeatable [JOBSTREAM_OUTPUT_ROOT, {os.pathsep!r}-separated]",
    )
    add(
        "--db",
        default=_env("DB", ""),
        help="database URL (sqlite:///path or postgresql://...); default: "
        "DATA_DIR/jobstream.db [JOBSTREAM_DB]",
    )
    add(
        "--synchronous",
        choices=("full", "normal"),
        default=_env("SYNCHRONOUS", "full"),
        help="SQLite synchronous mode: full survives power loss, normal only a crash "
        "[JOBSTREAM_SYNCHRONOUS]",
    )
    add(
        "--handlers",
        action="append",
        default=[h for h in _env("HANDLERS", "").split(",") if h],
        help="module with a `handlers` registry to run in-process; repeatable "
        "[JOBSTREAM_HANDLERS, comma-separated]",
    )
    add(
        "--concurrency",
        type=int,
        default=int(_env("CONCURRENCY", "4")),
        help="jobs the in-process worker runs at once [JOBSTREAM_CONCURRENCY]",
    )
    add(
        "--lease-seconds",
        type=float,
        default=float(_env("LEASE_SECONDS", str(DEFAULT_LEASE_S))),
        help="default lease length [JOBSTREAM_LEASE_SECONDS]",
    )
    add(
        "--sweep-seconds",
        type=float,
        default=float(_env("SWEEP_SECONDS", str(DEFAULT_SWEEP_S))),
        help="how often expired leases are rescued and dead uploads' bytes removed "
        "[JOBSTREAM_SWEEP_SECONDS]",
    )
    add(
        "--max-attempts",
        type=int,
        default=int(_env("MAX_ATTEMPTS", str(DEFAULT_MAX_ATTEMPTS))),
        help="attempts for jobs that name none [JOBSTREAM_MAX_ATTEMPTS]",
    )
    add(
        "--backoff-seconds",
        type=float,
        default=float(_env("BACKOFF_SECONDS", str(DEFAULT_BACKOFF_S))),
        help="delay before the first retry; doubles per attempt [JOBSTREAM_BACKOFF_SECONDS]",
    )
    add(
        "--grace-seconds",
        type=float,
        default=float(_env("GRACE_SECONDS", str(DEFAULT_GRACE_S))),
        help="graceful shutdown period [JOBSTREAM_GRACE_SECONDS]",
    )
    add(
        "--poll-seconds",
        type=float,
        default=float(_env("POLL_SECONDS", str(DEFAULT_POLL_S))),
        help="PostgreSQL: watchers' polling interval while LISTEN is down [JOBSTREAM_POLL_SECONDS]",
    )
    add("--log-level", default=_env("LOG_LEVEL", "INFO"), help="[JOBSTREAM_LOG_LEVEL]")
    _add_security(add)
    _add_operations(add)
    _add_retention(add)
    return p


def duration_s(text: str) -> float:
    """A duration flag (``90``, ``1.5s``, ``10m``, ``2h``, ``30d``) as seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_retention(add: Any) -> None:
    """Periodic purge of old ended jobs."""
    add(
        "--retention",
        type=duration_s,
        default=env_value("JOBSTREAM_RETENTION", parse_duration, 0.0),
        help="delete ended jobs (and their files) this long after they end, e.g. 30d; "
        "0 = keep forever [JOBSTREAM_RETENTION]",
    )
    add(
        "--retention-every",
        type=duration_s,
        default=env_value("JOBSTREAM_RETENTION_EVERY", parse_duration, DEFAULT_RETENTION_EVERY_S),
        help="how often the retention purge runs [JOBSTREAM_RETENTION_EVERY]",
    )


def _add_operations(add: Any) -> None:
    """Metrics and log format."""
    add(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", "0")),
        help="serve Prometheus metrics on http://HOST:PORT/metrics; 0 = off "
        "[JOBSTREAM_METRICS_PORT]",
    )
    add(
        "--metrics-interval",
        type=float,
        default=float(_env("METRICS_INTERVAL", str(DEFAULT_METRICS_INTERVAL_S))),
        help="seconds between the job counts behind jobstream_jobs and "
        "jobstream_queue_depth [JOBSTREAM_METRICS_INTERVAL]",
    )
    add(
        "--http-port",
        type=int,
        default=_optional_int("HTTP_PORT"),
        help="also serve the HTTP/JSON API and the dashboard on http://HOST:PORT/ "
        "(https with --tls-cert); 0 picks a free port; default off [JOBSTREAM_HTTP_PORT]",
    )
    add(
        "--http-port-file",
        type=Path,
        default=None,
        help="write the bound HTTP port to this file once serving",
    )
    add(
        "--log-json",
        action="store_true",
        default=env_bool("JOBSTREAM_LOG_JSON"),
        help="log JSON lines instead of text [JOBSTREAM_LOG_JSON]",
    )


def _optional_int(name: str) -> int | None:
    value = _env(name, "")
    return int(value) if value else None


def _path(name: str) -> Path | None:
    value = _env(name, "")
    return Path(value) if value else None


def _add_security(add: Any) -> None:
    """TLS, tokens, exposure and the limits on watchers and message size."""
    add(
        "--tokens-file",
        type=Path,
        default=_path("TOKENS_FILE"),
        help="JSON file of bearer tokens -> principal + roles; enables auth "
        "[JOBSTREAM_TOKENS_FILE]",
    )
    add(
        "--tls-cert",
        type=Path,
        default=_path("TLS_CERT"),
        help="PEM certificate chain; enables TLS [JOBSTREAM_TLS_CERT]",
    )
    add(
        "--tls-key",
        type=Path,
        default=_path("TLS_KEY"),
        help="PEM private key of --tls-cert [JOBSTREAM_TLS_KEY]",
    )
    add(
        "--tls-client-ca",
        type=Path,
        default=_path("TLS_CLIENT_CA"),
        help="PEM CA bundle; clients must present a certificate it signed (mutual TLS) "
        "[JOBSTREAM_TLS_CLIENT_CA]",
    )
    add(
        "--insecure",
        action="store_true",
        default=env_bool("JOBSTREAM_INSECURE"),
        help="allow listening beyond loopback without TLS or tokens [JOBSTREAM_INSECURE]",
    )
    add(
        "--max-watchers",
        type=int,
        default=int(_env("MAX_WATCHERS", str(DEFAULT_MAX_WATCHERS))),
        help="open watch streams per server [JOBSTREAM_MAX_WATCHERS]",
    )
    add(
        "--max-watchers-per-principal",
        type=int,
        default=int(_env("MAX_WATCHERS_PER_PRINCIPAL", str(DEFAULT_MAX_WATCHERS_PER_PRINCIPAL))),
        help="open watch streams per principal [JOBSTREAM_MAX_WATCHERS_PER_PRINCIPAL]",
    )
    add(
        "--max-message-bytes",
        type=int,
        default=int(_env("MAX_MESSAGE_BYTES", str(DEFAULT_MAX_MESSAGE_BYTES))),
        help="largest request message [JOBSTREAM_MAX_MESSAGE_BYTES]",
    )
    for flag, default, what in (
        ("--max-params-bytes", limits.DEFAULT_MAX_PARAMS_BYTES, "bytes of a job's params as JSON"),
        ("--max-json-depth", limits.DEFAULT_MAX_JSON_DEPTH, "nesting depth of params and results"),
        ("--max-labels", limits.DEFAULT_MAX_LABELS, "labels per job"),
        ("--max-label-value-bytes", limits.DEFAULT_MAX_LABEL_VALUE_BYTES, "bytes of a label value"),
        (
            "--max-log-line-bytes",
            limits.DEFAULT_MAX_LOG_LINE_BYTES,
            "bytes of a log line; longer ones are cut and flagged truncated",
        ),
        (
            "--max-log-lines-per-job",
            limits.DEFAULT_MAX_LOG_LINES_PER_JOB,
            "log lines per job; then one 'truncated' line, and refusal",
        ),
        (
            "--max-artifact-bytes",
            limits.DEFAULT_MAX_ARTIFACT_BYTES,
            "bytes of one uploaded artifact",
        ),
        (
            "--max-artifacts-per-job",
            limits.DEFAULT_MAX_ARTIFACTS_PER_JOB,
            "artifacts one job may hold",
        ),
    ):
        env = flag[2:].upper().replace("-", "_")
        add(flag, type=int, default=int(_env(env, str(default))), help=f"{what} [JOBSTREAM_{env}]")


def from_args(argv: Sequence[str]) -> ServerConfig:
    """Parses ``jobstream serve`` arguments."""
    try:
        p = parser()
    except SettingError as exc:  # a JOBSTREAM_* variable it reads as a default
        argparse.ArgumentParser(prog="jobstream serve").error(str(exc))
    a = p.parse_args(list(argv))
    if a.lease_seconds < 1:
        p.error("--lease-seconds must be at least 1")
    try:
        check_output_roots(a.data_dir, a.output_roots)
    except ValueError as exc:
        p.error(str(exc))
    return ServerConfig(
        host=a.host,
        port=a.port,
        port_file=a.port_file,
        data_dir=a.data_dir,
        output_roots=tuple(a.output_roots),
        db_url=a.db,
        synchronous=a.synchronous,
        handlers=tuple(a.handlers),
        concurrency=a.concurrency,
        lease_s=a.lease_seconds,
        sweep_s=a.sweep_seconds,
        max_attempts=a.max_attempts,
        backoff_s=a.backoff_seconds,
        grace_s=a.grace_seconds,
        log_level=a.log_level.upper(),
        tokens_file=a.tokens_file,
        tls_cert=a.tls_cert,
        tls_key=a.tls_key,
        tls_client_ca=a.tls_client_ca,
        insecure=a.insecure,
        max_watchers=a.max_watchers,
        max_watchers_per_principal=a.max_watchers_per_principal,
        max_message_bytes=a.max_message_bytes,
        max_params_bytes=a.max_params_bytes,
        max_artifact_bytes=a.max_artifact_bytes,
        max_artifacts_per_job=a.max_artifacts_per_job,
        max_json_depth=a.max_json_depth,
        max_labels=a.max_labels,
        max_label_value_bytes=a.max_label_value_bytes,
        max_log_line_bytes=a.max_log_line_bytes,
        max_log_lines_per_job=a.max_log_lines_per_job,
        metrics_port=a.metrics_port,
        metrics_interval_s=a.metrics_interval,
        log_json=a.log_json,
        http_port=a.http_port,
        http_port_file=a.http_port_file,
        retention_s=a.retention,
        retention_every_s=a.retention_every,
    )
