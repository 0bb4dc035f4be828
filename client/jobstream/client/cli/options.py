"""The ``jobstream`` command line: commands, flags and their environment fallbacks.

Every flag can also be set through a ``JOBSTREAM_*`` environment variable,
named in its ``--help`` line (see :mod:`jobstream.client.settings`). A flag
given on the command line wins over the variable, which wins over the
default; a default the library has is the library's constant, imported.
Options every command takes (``--target``, ``--timeout``, ``--json``) are
``JOBSTREAM_<OPTION>`` and may come before or after the command; a
command's own options are ``JOBSTREAM_<COMMAND>_<OPTION>`` so that, say,
the queue a worker serves does not silently filter ``ls``. Repeatable flags
read a comma-separated variable.

One function adds each group of commands: the long-running processes, the
commands on one job, the job lists, and the operators' commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

from jobstream.client.calls import DEFAULT_TIMEOUT
from jobstream.client.cli import values
from jobstream.client.connection import DEFAULT_TARGET
from jobstream.client.settings import EnvOptions
from jobstream.client.worker import DEFAULT_CONCURRENCY, DEFAULT_QUEUES

__all__ = ["DEFAULT_LIST_LIMIT", "build_parser", "parse_args"]

DEFAULT_LIST_LIMIT = 50
"""Jobs ``ls`` shows unless given ``--limit``."""

DEFAULT_LOG_LEVEL = "INFO"
"""Level of a ``jobstream worker``'s own log unless given ``--log-level``."""


class _Commands:
    """Adds commands to the ``jobstream`` parser, each taking the common options."""

    def __init__(
        self,
        subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
        common: argparse.ArgumentParser,
    ) -> None:
        self._subparsers = subparsers
        self._common = common

    def add(self, name: str, help: str) -> EnvOptions:
        """A command whose own flags read ``JOBSTREAM_<NAME>_<FLAG>``."""
        sub = self._subparsers.add_parser(name, help=help, description=help, parents=[self._common])
        options = EnvOptions(sub, f"JOBSTREAM_{name.upper()}")
        sub.set_defaults(_env_options=options)
        return options

    def passthrough(self, name: str, help: str, dest: str) -> None:
        """A command whose arguments go, untouched, to a parser of its own."""
        sub = self._subparsers.add_parser(name, help=help, add_help=False)
        sub.add_argument(dest, nargs=argparse.REMAINDER)


def _add_common(options: EnvOptions) -> None:
    """Options every command takes, before or after its name."""
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


def build_parser() -> tuple[argparse.ArgumentParser, EnvOptions]:
    """The parser, and the environment fallbacks of the options shared by all commands.

    Each command's own fallbacks travel in its namespace as ``_env_options``.
    """
    common_parser = argparse.ArgumentParser(add_help=False)
    common = EnvOptions(common_parser)
    _add_common(common)
    parser = argparse.ArgumentParser(
        prog="jobstream",
        description="Submit, watch, list, cancel and delete jobstream jobs; "
        "run a server or a worker.",
        parents=[common_parser],
        epilog="Exit codes: 0 ok (watch: job succeeded), 1 job failed or interrupted, "
        "2 usage or server error, 3 job cancelled, 130 Ctrl-C, 141 stdout closed (| head).",
    )
    parser.add_argument(
        "--version",
        action="store_true",
        help="print jobstream's version and exit (with --json: as a JSON object)",
    )
    commands = _Commands(parser.add_subparsers(dest="command", metavar="COMMAND"), common_parser)
    _add_process_commands(commands)
    _add_job_commands(commands)
    _add_list_commands(commands)
    _add_ops_commands(commands)
    completion = commands.add(
        "completion",
        "print a shell completion script: source <(jobstream completion bash) "
        "(or zsh, after compinit)",
    )
    completion.parser.add_argument("shell", choices=("bash", "zsh"), help="bash or zsh")
    return parser, common


def _add_process_commands(commands: _Commands) -> None:
    """serve, db and worker: the long-running processes and maintenance."""
    # `jobstream serve ...` never gets here: main hands everything after it
    # to the server untouched, --help included. This entry lists it in the
    # help, and catches `jobstream --json serve ...`, which has nothing to
    # pass the common options to.
    commands.passthrough(
        "serve",
        "run the server (needs the [server] extra; `jobstream serve --help` for its flags)",
        "server_argv",
    )
    # `jobstream gateway ...` goes to the gateway's own parser, like serve.
    commands.passthrough(
        "gateway",
        "serve the HTTP/JSON API and the dashboard in front of a server (needs the "
        "[gateway] extra; `jobstream gateway --help` for its flags)",
        "gateway_argv",
    )
    # Likewise `jobstream db ...` goes to the server's admin parser; this
    # entry catches `jobstream --json db check`.
    commands.passthrough(
        "db",
        "database maintenance: migrate, check, backup FILE, restore FILE, vacuum "
        "(needs the [server] extra; `jobstream db --help`)",
        "db_argv",
    )

    worker = commands.add("worker", "run handlers for jobs from the server")
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
        "--prefetch",
        help="most jobs leased ahead of the free slots while jobs are short "
        "(default: 32 per slot, at most 256; 0: never)",
        convert=values.non_negative_int,
        metavar="N",
    )
    worker.add(
        "--queue",
        help="queue to take jobs from (repeatable)",
        kind="list",
        default=list(DEFAULT_QUEUES),
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
        default=DEFAULT_LOG_LEVEL,
        metavar="LEVEL",
    )


def _add_job_commands(commands: _Commands) -> None:
    """submit, watch, get, logs, cancel and rm: one job each."""
    submit = commands.add("submit", "submit a job and print its id")
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
        help="do not start before this ISO 8601 time or +DURATION from now (+10m)",
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

    watch = commands.add("watch", "follow a job live until it ends")
    watch.parser.add_argument("job_id", metavar="ID")
    watch.add(
        "--after-seq",
        help="start after this event seq",
        convert=values.non_negative_int,
        default=0,
        metavar="N",
    )

    get = commands.add("get", "show one job in detail")
    get.parser.add_argument("job_id", metavar="ID")

    logs = commands.add("logs", "print a job's log lines")
    logs.parser.add_argument("job_id", metavar="ID")
    logs.add("-f", "--follow", help="keep printing new lines until the job ends", kind="flag")
    logs.add(
        "--level",
        help="only lines of this level or worse: debug, info, warn, error",
        convert=values.log_level,
        metavar="LEVEL",
    )
    logs.add("--grep", help="only lines holding TEXT, in any case", default="", metavar="TEXT")
    logs.add(
        "--since",
        help="only lines logged since a duration ago (10m) or an ISO 8601 time",
        convert=values.since,
        metavar="WHEN",
    )
    logs.add(
        "--tail",
        help="only the last N lines (of those selected; at most 5000)",
        convert=values.positive_int,
        metavar="N",
    )

    cancel = commands.add("cancel", "cancel a job")
    cancel.parser.add_argument("job_id", metavar="ID")
    cancel.add("--reason", help="why, recorded in the job's events", default="")

    rm = commands.add(
        "rm",
        "delete jobs, their events and their files (asks first on a terminal; "
        "several ids elsewhere need --yes)",
    )
    rm.parser.add_argument("job_ids", metavar="ID", nargs="+")
    rm.add("--force", help="also delete a running job (cancelling it first)", kind="flag")
    rm.add("--allow-missing", help="succeed when a job does not exist", kind="flag")
    rm.add(
        "-y",
        "--yes",
        help="do not ask: delete at once (needed for several ids when stdin is not a "
        "terminal, and with --json)",
        kind="flag",
    )


def _add_list_commands(commands: _Commands) -> None:
    """ls and top: the jobs that match a filter."""
    ls = commands.add("ls", "list jobs, newest first")
    _add_filter(ls)
    ls.add(
        "--since",
        help="only jobs created since a duration ago (1d) or an ISO 8601 time",
        convert=values.since,
        metavar="WHEN",
    )
    ls.add(
        "--until",
        help="only jobs created before a duration ago or an ISO 8601 time",
        convert=values.since,
        metavar="WHEN",
    )
    ls.add(
        "--ended-since",
        help="only jobs that ended since a duration ago or an ISO 8601 time",
        convert=values.since,
        metavar="WHEN",
    )
    ls.add(
        "--grep",
        help="only jobs whose id, kind, labels or error hold TEXT, in any case",
        default="",
        metavar="TEXT",
    )
    ls.add(
        "--param",
        help="only jobs whose params member K (a.b for nested) equals V, V read as JSON "
        "when it is (repeatable)",
        kind="list",
        convert=values.param,
        metavar="K=V",
    )
    ls.add(
        "--limit",
        help="show at most N jobs",
        convert=values.positive_int,
        default=DEFAULT_LIST_LIMIT,
        metavar="N",
    )
    top = commands.add("top", "live full-screen table of jobs with progress bars (Ctrl-C ends)")
    _add_filter(top)


def _add_filter(options: EnvOptions, *, states: str = "only these states") -> None:
    """--state/--kind/--label/--queue: the job filter of ls, top, purge and stats."""
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


def _add_ops_commands(commands: _Commands) -> None:
    """retry, results, artifacts, download, purge and stats (see cli/ops.py)."""
    retry = commands.add("retry", "run a failed, interrupted or cancelled job again")
    retry.parser.add_argument("job_id", metavar="ID")
    retry.add("--reason", help="why, recorded in the job's events", default="")
    retry.add(
        "--attempts",
        help="attempts allowed from now (default 1)",
        convert=values.non_negative_int,
        default=0,
        metavar="N",
    )

    results = commands.add("results", "print a job's per-item results (each key's latest)")
    results.parser.add_argument("job_id", metavar="ID")
    results.add(
        "--status",
        help="only results of this status: succeeded, failed or skipped (repeatable)",
        kind="list",
        convert=values.result_status,
        metavar="STATUS",
    )
    results.add(
        "--jsonl",
        help="one JSON object per line, streamed (same as --json), e.g. > out.jsonl",
        kind="flag",
    )

    artifacts = commands.add("artifacts", "list a job's output files")
    artifacts.parser.add_argument("job_id", metavar="ID")

    download = commands.add("download", "download one of a job's output files")
    download.parser.add_argument("job_id", metavar="ID")
    download.parser.add_argument("name", metavar="NAME")
    download.add("-o", "--output", help="file to write (default: ./NAME)", metavar="FILE")
    download.add(
        "-c",
        "--resume",
        help="continue a partial download in FILE from its size",
        kind="flag",
    )
    download.add("-f", "--force", help="replace FILE when it exists", kind="flag")

    purge = commands.add("purge", "delete old ended jobs with their events and files")
    purge.add(
        "--older-than",
        help="only jobs that ended at least this long ago, e.g. 30d (0 = all ended jobs)",
        convert=values.duration,
        metavar="DURATION",
    )
    purge.add("--dry-run", help="only show what would be deleted", kind="flag")
    _add_filter(purge, states="only these ended states")

    stats = commands.add(
        "stats", "job counts by state and kind, success rate, run times, throughput"
    )
    stats.add(
        "--window",
        help="recent window for rates and run times, e.g. 1h, 1d (default: the server's, 1h)",
        convert=values.duration,
        metavar="DURATION",
    )
    _add_filter(stats)

    commands.add(
        "workers",
        "the workers seen in the last hour: kinds, queues, jobs held, last seen, live",
    )


def parse_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` and fill every flag not given from ``environ`` (default
    ``os.environ``), then from the defaults.

    Usage errors exit with status 2 through argparse.
    """
    parser, common = build_parser()
    args = parser.parse_args(argv)
    common.apply(args, environ, parser=parser)
    command: EnvOptions | None = getattr(args, "_env_options", None)
    if command is not None:
        command.apply(args, environ, parser=parser)
    if args.command is None and not args.version:
        parser.print_help()
        parser.exit(2)
    return args
