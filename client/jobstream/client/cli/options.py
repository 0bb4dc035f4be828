"""The ``jobstream`` command line: commands, flags and their environment fallbacks.

Every flag can also be set through a ``JOBSTREAM_*`` environment variable,
named in its ``--help`` line. A flag given on the command line wins over the
variable, which wins over the built-in default. Options every command takes
(``--target``, ``--timeout``, ``--json``) are ``JOBSTREAM_<OPTION>`` and may
come before or after the command; a command's own options are
``JOBSTREAM_<COMMAND>_<OPTION>`` so that, say, the queue a worker serves
does not silently filter ``ls``. Repeatable flags read a comma-separated
variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from jobstream.client.cli import values

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "EnvOption",
    "build_parser",
    "parse_args",
]

DEFAULT_TARGET = "127.0.0.1:50051"
"""Where the server listens unless told otherwise (loopback, the default port)."""

DEFAULT_TIMEOUT = 30.0
"""Seconds a unary call may take before it fails with DEADLINE_EXCEEDED."""

DEFAULT_LIST_LIMIT = 50
"""Jobs ``ls`` shows unless given ``--limit``."""

DEFAULT_CONCURRENCY = 4
"""Jobs a ``jobstream worker`` runs at once unless given ``--concurrency``."""

Kind = Literal["value", "list", "flag"]


@dataclass(frozen=True, kw_only=True)
class EnvOption:
    """One flag's environment fallback and default, applied after parsing."""

    dest: str
    env: str
    kind: Kind
    default: Any
    convert: Callable[[str], Any]


class _Options:
    """Adds flags to one parser and remembers their environment fallbacks."""

    def __init__(self, parser: argparse.ArgumentParser, env_prefix: str) -> None:
        self.parser = parser
        self.env_prefix = env_prefix
        self.specs: list[EnvOption] = []

    def add(
        self,
        *flags: str,
        help: str,
        kind: Kind = "value",
        convert: Callable[[str], Any] = str,
        default: Any = None,
        metavar: str | None = None,
        suppress: bool = False,
    ) -> None:
        """Add a flag named ``flags``, read from ``<prefix>_<NAME>`` when not given."""
        long_name = next(flag for flag in flags if flag.startswith("--"))
        dest = long_name[2:].replace("-", "_")
        env_name = f"{self.env_prefix}_{dest.upper()}"
        note = f"env {env_name}"
        if kind == "list":
            note += ", comma-separated"
        if default not in (None, "", [], False):
            shown = ",".join(default) if isinstance(default, list) else default
            note += f"; default {shown}"
        # None (or SUPPRESS) as the argparse default tells "not given" apart
        # from a given value, so the environment can fill the gap afterwards.
        absent: Any = argparse.SUPPRESS if suppress else None
        full_help = f"{help} [{note}]"
        if kind == "flag":
            self.parser.add_argument(
                *flags, dest=dest, action="store_true", default=absent, help=full_help
            )
        else:
            self.parser.add_argument(
                *flags,
                dest=dest,
                type=convert,
                action="append" if kind == "list" else "store",
                default=absent,
                metavar=metavar,
                help=full_help,
            )
        self.specs.append(
            EnvOption(
                dest=dest,
                env=env_name,
                kind=kind,
                default=bool(default) if kind == "flag" else default,
                convert=values.flag if kind == "flag" else convert,
            )
        )


def _add_common(options: _Options) -> None:
    options.add(
        "--target",
        help="server address host:port",
        default=DEFAULT_TARGET,
        metavar="HOST:PORT",
        suppress=True,
    )
    options.add(
        "--timeout",
        help="seconds a call may take, 0 for no limit (watches are not cut off)",
        convert=values.timeout,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        suppress=True,
    )
    options.add(
        "--json", help="print JSON for scripts instead of tables", kind="flag", suppress=True
    )
    # Security (see jobstream.client.security): TLS when --ca or --cert is given.
    options.add(
        "--token",
        help="bearer token from the server's tokens file (prefer the env variable: "
        "command lines are visible to other users)",
        metavar="TOKEN",
        suppress=True,
    )
    options.add(
        "--ca",
        help="PEM roots to verify the server's TLS certificate; enables TLS",
        metavar="FILE",
        suppress=True,
    )
    options.add(
        "--cert",
        help="PEM client certificate for mutual TLS; enables TLS",
        metavar="FILE",
        suppress=True,
    )
    options.add("--key", help="PEM private key of --cert", metavar="FILE", suppress=True)


def build_parser() -> tuple[argparse.ArgumentParser, list[EnvOption]]:
    """The parser, and the environment fallbacks of the options shared by all commands.

    Each command's own fallbacks travel in its namespace as ``_env_options``.
    """
    common_parser = argparse.ArgumentParser(add_help=False)
    common = _Options(common_parser, "JOBSTREAM")
    _add_common(common)
    parser = argparse.ArgumentParser(
        prog="jobstream",
        description="Submit, watch, list, cancel and delete jobstream jobs; "
        "run a server or a worker.",
        parents=[common_parser],
        epilog="Exit codes: 0 ok (watch: job succeeded), 1 job failed or interrupted, "
        "2 usage or server error, 3 job cancelled, 130 Ctrl-C, 141 stdout closed (| head).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str) -> _Options:
        sub = commands.add_parser(name, help=help, description=help, parents=[common_parser])
        options = _Options(sub, f"JOBSTREAM_{name.upper()}")
        sub.set_defaults(_env_options=options.specs)
        return options

    # `jobstream serve ...` never gets here: main hands everything after it
    # to the server untouched, --help included. This entry lists it in the
    # help, and catches `jobstream --json serve ...`, which has nothing to
    # pass the common options to.
    serve = commands.add_parser(
        "serve",
        help="run the server (needs the [server] extra; `jobstream serve --help` for its flags)",
        add_help=False,
    )
    serve.add_argument("server_argv", nargs=argparse.REMAINDER)

    # `jobstream gateway ...` goes to the gateway's own parser, like serve.
    gateway = commands.add_parser(
        "gateway",
        help="serve the HTTP/JSON API and the dashboard in front of a server (needs the "
        "[gateway] extra; `jobstream gateway --help` for its flags)",
        add_help=False,
    )
    gateway.add_argument("gateway_argv", nargs=argparse.REMAINDER)

    # Likewise `jobstream db ...` goes to the server's admin parser; this
    # entry catches `jobstream --json db check`.
    db = commands.add_parser(
        "db",
        help="database maintenance: migrate, check, backup FILE, vacuum "
        "(needs the [server] extra; `jobstream db --help`)",
        add_help=False,
    )
    db.add_argument("db_argv", nargs=argparse.REMAINDER)

    worker = command("worker", "run handlers for jobs from the server")
    worker.add(
        "--handlers",
        help="module whose module-level `handlers` to run (repeatable)",
        kind="list",
        metavar="MODULE",
    )
    worker.add(
        "--concurrency",
        help="jobs run at once",
        convert=values.positive_int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
    )
    worker.add(
        "--queue", help="queue to take jobs from (repeatable)", kind="list", default=["default"]
    )
    worker.add("--worker-id", help="this worker's id (default: host and pid)", metavar="ID")
    worker.add(
        "--files-root",
        help="a directory the server shares at the same path as one of its --output-root: "
        "handlers get ctx.job_dir = DIR/<job id>",
        metavar="DIR",
    )
    worker.add(
        "--log-level",
        help="logging level of the worker's own log",
        convert=str.upper,
        default="INFO",
        metavar="LEVEL",
    )

    submit = command("submit", "submit a job and print its id")
    submit.parser.add_argument("kind", metavar="KIND", help="job kind, e.g. demo.count")
    submit.add(
        "-p",
        "--param",
        help="parameter k=v, v read as JSON when it is (n=200 is a number; repeatable)",
        kind="list",
        convert=values.param,
        metavar="K=V",
    )
    submit.add(
        "--params-json",
        help="parameters as a JSON object (--param entries override its keys)",
        convert=values.json_object,
        metavar="JSON",
    )
    submit.add(
        "--label",
        help="label k=v (repeatable)",
        kind="list",
        convert=values.key_value,
        metavar="K=V",
    )
    submit.add("--queue", help="queue (default: the server's default queue)", default="")
    submit.add(
        "--priority", help="higher runs first", convert=values.integer, default=0, metavar="N"
    )
    submit.add(
        "--max-attempts",
        help="attempts allowed (default: the server's)",
        convert=values.non_negative_int,
        default=0,
        metavar="N",
    )
    submit.add(
        "--not-before",
        help="do not start before this ISO 8601 time or +N[smhd] from now",
        convert=values.timestamp,
        metavar="TIME",
    )
    submit.add(
        "--in",
        help="do not start before this long from now, e.g. 10m, 2h, 1d (instead of --not-before)",
        convert=values.delay,
        metavar="DURATION",
    )
    submit.add(
        "--id", help="choose the job id instead of letting the server make one", metavar="JOB_ID"
    )
    submit.add(
        "--request-id", help="idempotency key: a repeat returns the first job", metavar="KEY"
    )
    submit.add(
        "--watch",
        help="then watch the job, exit status as for watch (with --json: only the watch lines)",
        kind="flag",
    )

    watch = command("watch", "follow a job live until it ends")
    watch.parser.add_argument("job_id", metavar="ID")
    watch.add(
        "--after-seq",
        help="start after this event seq",
        convert=values.non_negative_int,
        default=0,
        metavar="N",
    )

    ls = command("ls", "list jobs, newest first")
    ls.add("--state", help="only these states (repeatable)", kind="list", convert=values.state)
    ls.add("--kind", help="only these kinds (repeatable)", kind="list")
    ls.add(
        "--label",
        help="only jobs with label k=v (repeatable)",
        kind="list",
        convert=values.key_value,
        metavar="K=V",
    )
    ls.add("--queue", help="only these queues (repeatable)", kind="list")
    ls.add(
        "--limit",
        help="show at most N jobs",
        convert=values.positive_int,
        default=DEFAULT_LIST_LIMIT,
        metavar="N",
    )

    completion = command(
        "completion", "print a shell completion script: source <(jobstream completion bash)"
    )
    completion.parser.add_argument("shell", choices=("bash",), help="bash (zsh: via bashcompinit)")

    top = command("top", "live full-screen table of jobs with progress bars (Ctrl-C ends)")
    top.add("--state", help="only these states (repeatable)", kind="list", convert=values.state)
    top.add("--kind", help="only these kinds (repeatable)", kind="list")
    top.add(
        "--label",
        help="only jobs with label k=v (repeatable)",
        kind="list",
        convert=values.key_value,
        metavar="K=V",
    )
    top.add("--queue", help="only these queues (repeatable)", kind="list")

    get = command("get", "show one job in detail")
    get.parser.add_argument("job_id", metavar="ID")

    logs = command("logs", "print a job's log lines")
    logs.parser.add_argument("job_id", metavar="ID")
    logs.add("-f", "--follow", help="keep printing new lines until the job ends", kind="flag")

    cancel = command("cancel", "cancel a job")
    cancel.parser.add_argument("job_id", metavar="ID")
    cancel.add("--reason", help="why, recorded in the job's events", default="")

    rm = command("rm", "delete a job, its events and its files")
    rm.parser.add_argument("job_id", metavar="ID")
    rm.add("--force", help="also delete a running job (cancelling it first)", kind="flag")
    rm.add("--allow-missing", help="succeed when the job does not exist", kind="flag")

    _add_ops_commands(command)

    return parser, common.specs


def _filter_options(options: _Options, *, states: str = "only these states") -> None:
    """--state/--kind/--label/--queue, as ``ls`` has them."""
    options.add("--state", help=f"{states} (repeatable)", kind="list", convert=values.state)
    options.add("--kind", help="only these kinds (repeatable)", kind="list")
    options.add(
        "--label",
        help="only jobs with label k=v (repeatable)",
        kind="list",
        convert=values.key_value,
        metavar="K=V",
    )
    options.add("--queue", help="only these queues (repeatable)", kind="list")


def _add_ops_commands(command: Callable[[str, str], _Options]) -> None:
    """retry, results, artifacts, download, purge, stats (see cli/ops.py)."""
    retry = command("retry", "run a failed, interrupted or cancelled job again")
    retry.parser.add_argument("job_id", metavar="ID")
    retry.add("--reason", help="why, recorded in the job's events", default="")
    retry.add(
        "--attempts",
        help="attempts allowed from now (default 1)",
        convert=values.non_negative_int,
        default=0,
        metavar="N",
    )

    results = command("results", "print a job's per-item results (each key's latest)")
    results.parser.add_argument("job_id", metavar="ID")
    results.add(
        "--jsonl",
        help="one JSON object per line, streamed (same as --json), e.g. > out.jsonl",
        kind="flag",
    )

    artifacts = command("artifacts", "list a job's output files")
    artifacts.parser.add_argument("job_id", metavar="ID")

    download = command("download", "download one of a job's output files")
    download.parser.add_argument("job_id", metavar="ID")
    download.parser.add_argument("name", metavar="NAME")
    download.add("-o", "--output", help="file to write (default: ./NAME)", metavar="FILE")
    download.add(
        "-c",
        "--resume",
        help="continue a partial download in FILE from its size",
        kind="flag",
    )

    purge = command("purge", "delete old ended jobs with their events and files")
    purge.add(
        "--older-than",
        help="only jobs that ended at least this long ago, e.g. 30d (0 = all ended jobs)",
        convert=values.duration,
        metavar="DURATION",
    )
    purge.add("--dry-run", help="only show what would be deleted", kind="flag")
    _filter_options(purge, states="only these ended states")

    stats = command("stats", "job counts by state and kind, success rate, run times, throughput")
    stats.add(
        "--window",
        help="recent window for rates and run times, e.g. 1h, 1d (default: the server's, 1h)",
        convert=values.duration,
        metavar="DURATION",
    )
    _filter_options(stats)


def _apply_env(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    specs: Sequence[EnvOption],
    environ: Mapping[str, str],
) -> None:
    for spec in specs:
        if getattr(args, spec.dest, None) is not None:
            continue
        raw = environ.get(spec.env)
        value: Any = spec.default
        if raw is not None and (raw.strip() or spec.kind == "flag"):
            try:
                if spec.kind == "list":
                    value = [spec.convert(part.strip()) for part in raw.split(",") if part.strip()]
                else:
                    value = spec.convert(raw)
            except (argparse.ArgumentTypeError, ValueError) as exc:
                parser.error(f"{spec.env}={raw!r}: {exc}")
        if isinstance(value, list):
            value = list(value)  # never share the default list between runs
        setattr(args, spec.dest, value)


def parse_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` and fill every flag not given from ``environ`` (default
    ``os.environ``), then from the defaults.

    Usage errors exit with status 2 through argparse.
    """
    parser, common_specs = build_parser()
    args = parser.parse_args(argv)
    env = os.environ if environ is None else environ
    _apply_env(parser, args, common_specs, env)
    _apply_env(parser, args, getattr(args, "_env_options", ()), env)
    if args.command is None:
        parser.print_help()
        parser.exit(2)
    return args
