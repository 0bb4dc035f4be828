"""``jobstream db``: schema migrations, integrity check, online backup and
restore (backups.py), and vacuum of the server's database.

The operations are plain functions returning values; :func:`main` is the
command line around them (like ``app.main`` for ``serve``), the only part
that prints. Every operation but restore is safe while a server is serving
the same database: SQLite runs in WAL mode, so the backup's read transaction never
blocks the server's writer, and VACUUM waits its turn through the busy
timeout.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import peewee as pw

from jobstream.client.settings import EnvOptions
from jobstream.server.backups import BackupError, BackupReport, backup, restore, sqlite_path
from jobstream.server.config import DEFAULT_DATA_DIR, ServerConfig
from jobstream.server.db import (
    apply_migrations,
    execute,
    is_sqlite,
    open_database,
    schema_status,
)

__all__ = [
    "CheckReport",
    "backup",
    "check",
    "main",
    "migrate",
    "parse_args",
    "restore",
    "vacuum",
]

EXIT_OK = 0
EXIT_PROBLEMS = 1
"""``db check`` found pending migrations or corruption."""
EXIT_USAGE = 2
"""Bad arguments, a missing database, or an operation the backend lacks."""

INTEGRITY_MAX_ERRORS = 100
"""Most problems ``PRAGMA integrity_check`` reports before stopping; enough to
diagnose, bounded so a wrecked file does not flood the terminal."""


class AdminError(Exception):
    """An operation cannot run (no database there, wrong backend, target exists)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckReport:
    """What ``db check`` found."""

    database: str
    applied: tuple[str, ...]
    pending: tuple[str, ...]
    integrity: tuple[str, ...]
    """Problems ``PRAGMA integrity_check`` reported; empty when it said ok
    (and on PostgreSQL, which checks its own pages)."""

    @property
    def ok(self) -> bool:
        """No pending migrations and no integrity problems."""
        return not self.pending and not self.integrity


@dataclass(frozen=True, kw_only=True, slots=True)
class VacuumReport:
    """Database file size before and after a vacuum (SQLite; 0 elsewhere)."""

    before_bytes: int
    after_bytes: int


def _open_existing(url: str) -> pw.Database:
    """Opens the database without migrating it; refuses to create an SQLite
    file that is not there (a typo in --data-dir must not look healthy)."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise AdminError(f"no database at {path}")
    return open_database(url, migrate=False)


def migrate(url: str) -> list[str]:
    """Applies pending migrations (creating the database if need be); returns
    the names applied."""
    db = open_database(url, migrate=False)
    try:
        return apply_migrations(db)
    finally:
        db.close()


def check(url: str) -> CheckReport:
    """Pending migrations, and on SQLite ``PRAGMA integrity_check``."""
    db = _open_existing(url)
    try:
        status = schema_status(db)
        problems: tuple[str, ...] = ()
        if is_sqlite(db):
            with db.connection_context():
                rows = execute(db, f"PRAGMA integrity_check({INTEGRITY_MAX_ERRORS})").fetchall()
            found = tuple(str(row[0]) for row in rows)
            problems = () if found == ("ok",) else found
    finally:
        db.close()
    return CheckReport(
        database=url, applied=status.applied, pending=status.pending, integrity=problems
    )


def vacuum(url: str) -> VacuumReport:
    """Rebuilds the database to return the space of deleted jobs.

    SQLite: VACUUM, then a WAL checkpoint that truncates the log, so the
    file sizes reflect the result. PostgreSQL: ``VACUUM ANALYZE``.
    """
    db = _open_existing(url)
    path = sqlite_path(url)
    try:
        with db.connection_context():
            before = _size(path)
            if is_sqlite(db):
                execute(db, "VACUUM")
                execute(db, "PRAGMA wal_checkpoint(TRUNCATE)")
            else:
                execute(db, "VACUUM ANALYZE")
            after = _size(path)
    finally:
        db.close()
    return VacuumReport(before_bytes=before, after_bytes=after)


def _size(path: Path | None) -> int:
    """An SQLite database's bytes on disk, its WAL included."""
    if path is None:
        return 0
    wal = path.with_name(path.name + "-wal")
    return sum(p.stat().st_size for p in (path, wal) if p.exists())


def _build() -> tuple[argparse.ArgumentParser, EnvOptions]:
    """The ``jobstream db`` parser and the environment fallbacks of the
    options every action takes."""
    common = argparse.ArgumentParser(add_help=False)
    options = EnvOptions(common)
    options.add(
        "--data-dir",
        help="the server's data directory",
        convert=Path,
        default=Path(DEFAULT_DATA_DIR),
    )
    options.add("--db", help="database URL; default: DATA_DIR/jobstream.db", default="")
    options.add("--json", kind="flag", help="print JSON for scripts")
    p = argparse.ArgumentParser(
        prog="jobstream db",
        description="Maintain the server's database; safe while a server is serving it.",
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("migrate", parents=[common], help="apply pending schema migrations")
    sub.add_parser(
        "check",
        parents=[common],
        help="report pending migrations and SQLite integrity problems; exit 1 if any",
    )
    b = sub.add_parser(
        "backup",
        parents=[common],
        help="copy the SQLite database to FILE, online and consistent, and the job "
        "directories to FILE.files/",
    )
    b.add_argument("file", type=Path, metavar="FILE")
    b.add_argument("--force", action="store_true", help="replace FILE if it exists")
    r = sub.add_parser(
        "restore",
        parents=[common],
        help="put a backup FILE (and its FILE.files/) back; the server must be stopped",
    )
    r.add_argument("file", type=Path, metavar="FILE")
    r.add_argument("--force", action="store_true", help="replace the database if it exists")
    sub.add_parser("vacuum", parents=[common], help="give deleted jobs' space back")
    return p, options


def parser() -> argparse.ArgumentParser:
    """The ``jobstream db`` argument parser (for its help)."""
    return _build()[0]


def parse_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """Parses ``jobstream db`` arguments, with the ``JOBSTREAM_*`` fallbacks
    of ``environ`` (default: this process's environment); a bad variable
    exits with status 2, naming it."""
    p, options = _build()
    args = p.parse_args(list(argv))
    options.apply(args, environ, parser=p)
    return args


def main(argv: Sequence[str]) -> int:
    """``jobstream db ACTION``; returns the exit status."""
    args = parse_args(argv)
    url = ServerConfig(data_dir=args.data_dir, db_url=args.db).database_url
    try:
        return _run(args, url)
    except (AdminError, BackupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (pw.DatabaseError, sqlite3.Error) as exc:
        print(f"error: database: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace, url: str) -> int:
    as_json: bool = args.json
    if args.action == "migrate":
        applied = migrate(url)
        if as_json:
            _print_json({"applied": applied})
        else:
            print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
        return EXIT_OK
    if args.action == "check":
        report = check(url)
        if as_json:
            _print_json({**asdict(report), "ok": report.ok})
        else:
            print(f"migrations applied: {len(report.applied)}")
            for name in report.pending:
                print(f"pending migration: {name} (run `jobstream db migrate`)")
            for problem in report.integrity:
                print(f"integrity: {problem}")
            print("ok" if report.ok else "problems found")
        return EXIT_OK if report.ok else EXIT_PROBLEMS
    if args.action == "backup":
        report_b = backup(url, args.file, args.data_dir, overwrite=args.force)
        _print_backup(report_b, as_json, f"backed up to {args.file}")
        return EXIT_OK
    if args.action == "restore":
        report_b = restore(url, args.file, args.data_dir, overwrite=args.force)
        _print_backup(report_b, as_json, f"restored {args.file} to {report_b.database}")
        return EXIT_OK
    report_v = vacuum(url)
    if as_json:
        _print_json(asdict(report_v))
    else:
        print(f"vacuumed: {report_v.before_bytes} -> {report_v.after_bytes} bytes")
    return EXIT_OK


def _print_backup(report: BackupReport, as_json: bool, done: str) -> None:
    if as_json:
        _print_json({**asdict(report), "file": report.database, "bytes": report.database_bytes})
    else:
        print(f"{done} ({report.database_bytes} bytes, {report.files} job files)")


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))
