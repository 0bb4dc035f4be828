"""Server settings: one frozen value, built from flags with JOBSTREAM_*
environment fallbacks (shown in --help), read the one way every jobstream
command reads them (jobstream.client.settings): a bad variable is a usage
error naming it."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from jobstream.client.settings import EnvOptions, parse_duration
from jobstream.server.files import check_output_roots
from jobstream.server.limits import (
    DEFAULT_MAX_ARTIFACT_BYTES,
    DEFAULT_MAX_ARTIFACTS_PER_JOB,
    DEFAULT_MAX_CHECKPOINT_BYTES,
    DEFAULT_MAX_JSON_DEPTH,
    DEFAULT_MAX_LABEL_VALUE_BYTES,
    DEFAULT_MAX_LABELS,
    DEFAULT_MAX_LOG_LINE_BYTES,
    DEFAULT_MAX_LOG_LINES_PER_JOB,
    DEFAULT_MAX_PARAMS_BYTES,
    Limits,
)
from jobstream.server.quotas import (
    DEFAULT_MAX_WATCHERS,
    DEFAULT_MAX_WATCHERS_PER_PRINCIPAL,
    DEFAULT_WATCH_MEMORY_BUDGET,
    WATCH_RESERVE_BYTES,
)

DEFAULT_PORT = 50051
"""The port ``make run`` serves on."""

DEFAULT_DATA_DIR = "data"
"""Where the SQLite file and job files live unless --data-dir says otherwise."""

DEFAULT_CONCURRENCY = 4
"""Jobs the in-process worker runs at once."""

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
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    output_roots: tuple[Path, ...] = ()
    """Directories shared with workers where ``ROOT/<job id>/`` belongs to
    that job: recorded files may lie there too (see files.py)."""
    db_url: str = ""
    synchronous: str = "full"
    handlers: tuple[str, ...] = ()
    concurrency: int = DEFAULT_CONCURRENCY
    lease_s: float = DEFAULT_LEASE_S
    max_lease_s: float = MAX_LEASE_S
    sweep_s: float = DEFAULT_SWEEP_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_s: float = DEFAULT_BACKOFF_S
    grace_s: float = DEFAULT_GRACE_S
    poll_s: float = DEFAULT_POLL_S
    log_level: str = "INFO"
    # Security: see auth.py, tls.py and quotas.py.
    tokens_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    max_watchers: int = DEFAULT_MAX_WATCHERS
    max_watchers_per_principal: int = DEFAULT_MAX_WATCHERS_PER_PRINCIPAL
    watch_memory_budget: int = DEFAULT_WATCH_MEMORY_BUDGET
    """Bytes the open watches may hold together (see quotas.py)."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    limits: Limits = field(default_factory=Limits)
    """The input limits an operator set (--max-params-bytes and the like)."""
    # Operations: see metrics.py and logs.py.
    metrics_port: int = 0
    metrics_interval_s: float = DEFAULT_METRICS_INTERVAL_S
    log_json: bool = False
    # The HTTP face (jobstream.gateway) in this process: off when None;
    # 0 picks a free port.
    http_port: int | None = None
    http_port_file: Path | None = None
    # Retention: see purge.py. 0 keeps ended jobs forever.
    retention_s: float = 0.0
    retention_every_s: float = DEFAULT_RETENTION_EVERY_S
    refuse_unserved: bool = False
    """Refuse submits of a kind no live worker serves (see presence.py)."""

    @property
    def database_url(self) -> str:
        """The database to use: --db, else ``jobstream.db`` in the data dir."""
        return self.db_url or str(self.data_dir / "jobstream.db")


LIMIT_FLAGS: tuple[tuple[str, int, str], ...] = (
    ("--max-params-bytes", DEFAULT_MAX_PARAMS_BYTES, "bytes of a job's params as JSON"),
    ("--max-json-depth", DEFAULT_MAX_JSON_DEPTH, "nesting depth of params and results"),
    ("--max-labels", DEFAULT_MAX_LABELS, "labels per job"),
    ("--max-label-value-bytes", DEFAULT_MAX_LABEL_VALUE_BYTES, "bytes of a label value"),
    (
        "--max-log-line-bytes",
        DEFAULT_MAX_LOG_LINE_BYTES,
        "bytes of a log line; longer ones are cut and flagged truncated",
    ),
    (
        "--max-log-lines-per-job",
        DEFAULT_MAX_LOG_LINES_PER_JOB,
        "log lines per job; then one 'truncated' line, and refusal",
    ),
    ("--max-artifact-bytes", DEFAULT_MAX_ARTIFACT_BYTES, "bytes of one uploaded artifact"),
    ("--max-artifacts-per-job", DEFAULT_MAX_ARTIFACTS_PER_JOB, "artifacts one job may hold"),
    ("--max-checkpoint-bytes", DEFAULT_MAX_CHECKPOINT_BYTES, "bytes of a job's checkpoint"),
)
"""The flags of the fields of Limits (``--max-labels`` sets ``max_labels``):
default and what each bounds."""

SYNCHRONOUS_MODES = ("full", "normal")
"""SQLite's synchronous modes the server offers."""


def synchronous_mode(text: str) -> str:
    """``--synchronous``: one of SYNCHRONOUS_MODES."""
    if text not in SYNCHRONOUS_MODES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(SYNCHRONOUS_MODES)}")
    return text


SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2}
SIZE_UNITS |= {"g": 1024**3, "gib": 1024**3}
"""Bytes per unit of a size flag (binary units; no unit means bytes)."""

_SIZE = re.compile(r"(\d+)\s*([a-z]*)")
"""A size: a whole number and at most one unit."""


def size_bytes(text: str) -> int:
    """A size flag (``268435456``, ``256MiB``, ``256m``, ``1GiB``) as bytes."""
    match = _SIZE.fullmatch(text.strip().lower())
    if match is None or match.group(2) not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 268435456, 256MiB or 1GiB, got {text!r}"
        )
    return int(match.group(1)) * SIZE_UNITS[match.group(2)]


def duration_s(text: str) -> float:
    """A duration flag (``90``, ``1.5s``, ``10m``, ``2h``, ``30d``) as seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _build() -> tuple[argparse.ArgumentParser, EnvOptions]:
    """The ``jobstream serve`` parser and its environment fallbacks."""
    p = argparse.ArgumentParser(
        prog="jobstream serve",
        description="Serve the jobstream gRPC API (SQLite under --data-dir by default).",
    )
    options = EnvOptions(p)
    add = options.add
    add("--host", help="address to listen on", default="127.0.0.1")
    add("--port", help="port to listen on; 0 picks a free one", convert=int, default=DEFAULT_PORT)
    p.add_argument("--port-file", type=Path, help="write the bound port to this file once serving")
    add(
        "--data-dir",
        help="where the SQLite file and job files live",
        convert=Path,
        default=Path(DEFAULT_DATA_DIR),
    )
    add(
        "--output-root",
        kind="list",
        separator=os.pathsep,
        convert=Path,
        metavar="DIR",
        help="a directory dedicated to job outputs, shared with workers: ROOT/<job id>/ "
        "belongs to that job, may hold files it records and is removed with it; repeatable",
    )
    add(
        "--db",
        help="database URL (sqlite:///path or postgresql://...); default: DATA_DIR/jobstream.db",
        default="",
    )
    add(
        "--synchronous",
        help="SQLite synchronous mode: full survives power loss, normal only a crash",
        convert=synchronous_mode,
        default="full",
    )
    add(
        "--handlers",
        kind="list",
        help="module with a `handlers` registry to run in-process; repeatable",
    )
    add(
        "--concurrency",
        help="jobs the in-process worker runs at once",
        convert=int,
        default=DEFAULT_CONCURRENCY,
    )
    add("--lease-seconds", help="default lease length", convert=float, default=DEFAULT_LEASE_S)
    add(
        "--sweep-seconds",
        help="how often expired leases are rescued and dead uploads' bytes removed",
        convert=float,
        default=DEFAULT_SWEEP_S,
    )
    add(
        "--max-attempts",
        help="attempts for jobs that name none",
        convert=int,
        default=DEFAULT_MAX_ATTEMPTS,
    )
    add(
        "--backoff-seconds",
        help="delay before the first retry; doubles per attempt",
        convert=float,
        default=DEFAULT_BACKOFF_S,
    )
    add(
        "--refuse-unserved",
        kind="flag",
        help="refuse submits (FAILED_PRECONDITION) of a kind no live worker serves on its queue",
    )
    add(
        "--grace-seconds",
        help="graceful shutdown period",
        convert=float,
        default=DEFAULT_GRACE_S,
    )
    add(
        "--poll-seconds",
        help="PostgreSQL: watchers' polling interval while LISTEN is down",
        convert=float,
        default=DEFAULT_POLL_S,
    )
    add("--log-level", help="log level (DEBUG, INFO, WARNING, ERROR)", default="INFO")
    _add_security(add)
    _add_limits(add)
    _add_operations(p, add)
    _add_retention(add)
    return p, options


def parser() -> argparse.ArgumentParser:
    """The ``jobstream serve`` argument parser (for its help)."""
    return _build()[0]


def _add_security(add: Any) -> None:
    """TLS, tokens, exposure and the limits on watchers and message size."""
    add(
        "--tokens-file",
        help="JSON file of bearer tokens -> principal + roles; enables auth",
        convert=Path,
    )
    add("--tls-cert", help="PEM certificate chain; enables TLS", convert=Path)
    add("--tls-key", help="PEM private key of --tls-cert", convert=Path)
    add(
        "--tls-client-ca",
        help="PEM CA bundle; clients must present a certificate it signed (mutual TLS)",
        convert=Path,
    )
    add(
        "--insecure",
        kind="flag",
        help="allow listening beyond loopback without TLS or tokens",
    )
    add(
        "--max-watchers",
        help="open watch streams per server",
        convert=int,
        default=DEFAULT_MAX_WATCHERS,
    )
    add(
        "--max-watchers-per-principal",
        help="open watch streams per principal",
        convert=int,
        default=DEFAULT_MAX_WATCHERS_PER_PRINCIPAL,
    )
    add(
        "--watch-memory-budget",
        help="memory the open watch streams may hold together, e.g. 256MiB; each "
        f"reserves {WATCH_RESERVE_BYTES // 1024} KiB and one past the budget is refused",
        convert=size_bytes,
        default=DEFAULT_WATCH_MEMORY_BUDGET,
        metavar="SIZE",
    )
    add(
        "--max-message-bytes",
        help="largest request message",
        convert=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
    )


def _add_limits(add: Any) -> None:
    """The input limits (the fields of Limits)."""
    for flag, default, what in LIMIT_FLAGS:
        add(flag, help=what, convert=int, default=default)


def _add_operations(p: argparse.ArgumentParser, add: Any) -> None:
    """Metrics, the HTTP face and the log format."""
    add(
        "--metrics-port",
        help="serve Prometheus metrics on http://HOST:PORT/metrics; 0 = off",
        convert=int,
        default=0,
    )
    add(
        "--metrics-interval",
        help="seconds between the job counts behind jobstream_jobs and jobstream_queue_depth",
        convert=float,
        default=DEFAULT_METRICS_INTERVAL_S,
    )
    add(
        "--http-port",
        help="also serve the HTTP/JSON API and the dashboard on http://HOST:PORT/ "
        "(https with --tls-cert); 0 picks a free port; default off",
        convert=int,
    )
    p.add_argument(
        "--http-port-file", type=Path, help="write the bound HTTP port to this file once serving"
    )
    add("--log-json", kind="flag", help="log JSON lines instead of text")


def _add_retention(add: Any) -> None:
    """Periodic purge of old ended jobs."""
    add(
        "--retention",
        help="delete ended jobs (and their files) this long after they end, e.g. 30d; "
        "0 = keep forever",
        convert=duration_s,
        default=0.0,
    )
    add(
        "--retention-every",
        help="how often the retention purge runs",
        convert=duration_s,
        default=DEFAULT_RETENTION_EVERY_S,
    )


def from_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Parses ``jobstream serve`` arguments, with the ``JOBSTREAM_*``
    fallbacks of ``environ`` (default: this process's environment)."""
    p, options = _build()
    a = p.parse_args(list(argv))
    options.apply(a, environ)
    if a.lease_seconds < 1:
        p.error("--lease-seconds must be at least 1")
    if a.watch_memory_budget < WATCH_RESERVE_BYTES:
        p.error(
            f"--watch-memory-budget must be at least {WATCH_RESERVE_BYTES} bytes "
            "(one watch's reservation)"
        )
    output_roots = tuple(a.output_root or ())
    try:
        check_output_roots(a.data_dir, output_roots)
    except ValueError as exc:
        p.error(str(exc))
    return ServerConfig(
        host=a.host,
        port=a.port,
        port_file=a.port_file,
        data_dir=a.data_dir,
        output_roots=output_roots,
        db_url=a.db,
        synchronous=a.synchronous,
        handlers=tuple(a.handlers or ()),
        concurrency=a.concurrency,
        lease_s=a.lease_seconds,
        sweep_s=a.sweep_seconds,
        max_attempts=a.max_attempts,
        backoff_s=a.backoff_seconds,
        grace_s=a.grace_seconds,
        poll_s=a.poll_seconds,
        log_level=a.log_level.upper(),
        tokens_file=a.tokens_file,
        tls_cert=a.tls_cert,
        tls_key=a.tls_key,
        tls_client_ca=a.tls_client_ca,
        insecure=a.insecure,
        max_watchers=a.max_watchers,
        max_watchers_per_principal=a.max_watchers_per_principal,
        watch_memory_budget=a.watch_memory_budget,
        max_message_bytes=a.max_message_bytes,
        # Each field of Limits is set by its flag (see LIMIT_FLAGS).
        limits=Limits(**{f.name: getattr(a, f.name) for f in fields(Limits)}),
        metrics_port=a.metrics_port,
        metrics_interval_s=a.metrics_interval,
        log_json=a.log_json,
        http_port=a.http_port,
        http_port_file=a.http_port_file,
        retention_s=a.retention,
        retention_every_s=a.retention_every,
        refuse_unserved=a.refuse_unserved,
    )
