"""``jobstream serve`` and ``jobstream worker``: the long-running commands.

Neither needs rich, so they live apart from the commands that render jobs;
a worker host can run with the base install.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from jobstream.client.cli.exits import EXIT_USAGE
from jobstream.client.logformat import TEXT_FORMAT, JsonLogFormatter
from jobstream.client.security import cli_security
from jobstream.client.worker import Handlers, Worker

__all__ = ["db", "load_handlers", "run_worker", "serve"]

SERVER_EXTRA_MESSAGE = "the server needs the [server] extra: pip install 'jobstream[server]'"
"""What ``jobstream serve`` says when the server cannot be imported."""


class HandlersLoadError(Exception):
    """A ``--handlers`` module cannot be imported or has no ``handlers``."""


def _is_missing_dependency(exc: ImportError) -> bool:
    """Whether importing the server failed for want of the extra, not a bug.

    A missing third-party module (peewee, grpc_health …) or the server
    package itself means the extra is not installed; the server's own
    ``__init__`` raises a bare ImportError naming the extra. A missing
    ``jobstream.server.<something>`` module inside an installed server is a
    bug and should show as one.
    """
    name = exc.name
    if name is None:
        return True
    return name in (
        "jobstream.server",
        "jobstream.server.app",
        "jobstream.server.admin",
    ) or not name.startswith("jobstream")


def serve(argv: Sequence[str]) -> int:
    """Run ``jobstream.server.app.main`` with ``argv`` exactly as given."""
    try:
        from jobstream.server.app import main as server_main
    except ImportError as exc:
        if not _is_missing_dependency(exc):
            raise
        print(SERVER_EXTRA_MESSAGE, file=sys.stderr)
        print(f"({exc})", file=sys.stderr)
        return EXIT_USAGE
    return server_main(list(argv))


def db(argv: Sequence[str]) -> int:
    """Run ``jobstream.server.admin.main`` (``jobstream db ...``) with ``argv``
    exactly as given: it works on the database, so it needs the server extra."""
    try:
        from jobstream.server.admin import main as admin_main
    except ImportError as exc:
        if not _is_missing_dependency(exc):
            raise
        print(SERVER_EXTRA_MESSAGE, file=sys.stderr)
        print(f"({exc})", file=sys.stderr)
        return EXIT_USAGE
    return admin_main(list(argv))


def load_handlers(modules: Sequence[str]) -> Handlers:
    """Import each module and merge their module-level ``handlers`` into one."""
    # A console script does not have the working directory on sys.path the
    # way ``python -m`` does; handler modules usually live in the project
    # the worker is started from (rq and celery do the same).
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    merged = Handlers()
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Only the named module (or its package) missing is a usage
            # error; a missing import inside it is the module's bug.
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                raise
            raise HandlersLoadError(f"cannot import handlers module {name!r}: {exc}") from None
        handlers = getattr(module, "handlers", None)
        if not isinstance(handlers, Handlers):
            raise HandlersLoadError(
                f"handlers module {name!r} has no module-level `handlers` (a Handlers)"
            )
        merged.update(handlers)
    return merged


def _configure_logging(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)


def run_worker(args: argparse.Namespace) -> int:
    """``jobstream worker``: run the merged handlers until SIGINT/SIGTERM."""
    modules: list[str] = args.handlers or []
    if not modules:
        print(
            "error: worker needs --handlers MODULE (or JOBSTREAM_WORKER_HANDLERS)", file=sys.stderr
        )
        return EXIT_USAGE
    level: str = args.log_level
    if level not in logging.getLevelNamesMapping():
        print(f"error: unknown --log-level {level!r}", file=sys.stderr)
        return EXIT_USAGE
    try:
        handlers = load_handlers(modules)
    except HandlersLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(level, bool(args.json))
    worker = Worker(
        args.target,
        handlers,
        worker_id=args.worker_id,
        queues=tuple(args.queue),
        concurrency=args.concurrency,
        prefetch=args.prefetch,
        security=cli_security(args),
        files_root=args.files_root,
    )
    worker.run()
    return 0
