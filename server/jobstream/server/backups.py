"""``jobstream db backup`` and ``db restore``: the SQLite database with the
files of the data directory that go with it.

A backup is two things side by side: ``FILE``, a standalone SQLite database
(artifacts included: they are rows), and ``FILE.files/``, a copy of the data
directory's job directories (``jobs/<id>/``, the files handlers wrote and
recorded) and of the artifact files an older version left
(``artifacts/<id>/``). The database is one consistent snapshot (the online
backup API, one read transaction); the files are copied after it, while the
server may still write some, so a job running during the backup may have
more in its directory than the snapshot's events say, never less of what
ended before. Output roots (``--output-root``) are outside the data
directory and the operator's to back up.

A restore needs a stopped server: it replaces the database (and removes its
``-wal``/``-shm``, which belong to the replaced file) and, when the backup
has them, the job directories. Each part is written beside its place and
renamed into it, so an interrupted restore leaves either the old or the new
part, never half a file.
"""

from __future__ import annotations

import functools
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jobstream.server.db import SQLITE_BUSY_TIMEOUT_MS
from jobstream.server.files import ARTIFACTS_DIR, DATABASE_SIDE_SUFFIXES, JOBS_DIR

FILES_SUFFIX = ".files"
"""The folder beside a backup FILE holding its data-directory files."""

BACKED_UP_DIRS = (JOBS_DIR, ARTIFACTS_DIR)
"""The data directory's folders a backup copies: job directories, and the
artifact files of versions before artifacts moved into the database."""


class BackupError(Exception):
    """A backup or restore cannot run (wrong backend, missing source, a
    target in the way); the message says which."""


@dataclass(frozen=True, kw_only=True, slots=True)
class BackupReport:
    """What a backup wrote, or a restore put back."""

    database: str
    database_bytes: int
    files_dir: str
    files: int
    """Files copied from (or back into) the data directory."""


def sqlite_path(url: str) -> Path | None:
    """The SQLite file ``url`` names, or None for another backend."""
    if "://" not in url:
        return Path(url)
    for prefix in ("sqlite:///", "sqliteext:///"):
        if url.startswith(prefix):
            return Path(url[len(prefix) :])
    return None


def files_dir(backup: Path) -> Path:
    """Where the backup ``backup`` keeps its data-directory files."""
    return backup.with_name(backup.name + FILES_SUFFIX)


def backup(url: str, target: Path, data_dir: Path, *, overwrite: bool = False) -> BackupReport:
    """Copies the SQLite database to ``target`` with SQLite's online backup
    API, then the data directory's job and artifact folders to
    ``target.files/``.

    The database copy is made in one step, i.e. inside one read transaction,
    so it is a consistent snapshot of one moment even while the server
    commits (WAL lets the writer carry on meanwhile). Both parts are written
    beside their place and renamed into it only when complete (the database
    after it passes ``PRAGMA quick_check``), so neither is ever half-written.
    """
    path = _sqlite_file(url, "backup", "back PostgreSQL up with pg_dump")
    if not path.is_file():
        raise BackupError(f"no database at {path}")
    extra = files_dir(target)
    if not overwrite:
        for existing in (target, extra):
            if existing.exists():
                raise BackupError(f"{existing} exists (use --force to replace it)")
    if target.resolve() == path.resolve():
        raise BackupError("the backup cannot replace the database itself")
    partial = _beside(target)
    partial.unlink(missing_ok=True)
    source = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    try:
        dest = sqlite3.connect(partial)
        try:
            source.backup(dest)  # pages=-1: everything in one step, one snapshot
            # A backup file travels alone: no -wal beside it to depend on.
            dest.execute("PRAGMA journal_mode=DELETE")
            (verdict,) = dest.execute("PRAGMA quick_check").fetchone()
        finally:
            dest.close()
    finally:
        source.close()
    if verdict != "ok":
        partial.unlink(missing_ok=True)
        raise BackupError(f"the copy failed its check: {verdict}")
    copied = _replace_tree(extra, functools.partial(_copy_dirs, data_dir))
    os.replace(partial, target)
    return BackupReport(
        database=str(target),
        database_bytes=target.stat().st_size,
        files_dir=str(extra),
        files=copied,
    )


def restore(url: str, source: Path, data_dir: Path, *, overwrite: bool = False) -> BackupReport:
    """Puts the backup ``source`` back as the server's database and, when
    the backup holds them, its job and artifact folders into ``data_dir``.
    The server must be stopped. An existing database is replaced only with
    ``overwrite``."""
    path = _sqlite_file(url, "restore", "restore PostgreSQL with pg_restore or psql")
    if not source.is_file():
        raise BackupError(f"no backup at {source}")
    _check_backup(source)
    if path.exists() and not overwrite:
        raise BackupError(
            f"{path} exists: stop the server, then use --force to replace it with the backup"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = _beside(path)
    shutil.copyfile(source, partial)
    # The old database's side files hold its own pages: left beside the new
    # file, SQLite would apply them to it.
    for suffix in DATABASE_SIDE_SUFFIXES[1:]:
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    os.replace(partial, path)
    extra = files_dir(source)
    restored = 0
    if extra.is_dir():
        for name in BACKED_UP_DIRS:
            backed_up = extra / name
            restored += _replace_tree(data_dir / name, functools.partial(_copy_tree, backed_up))
    return BackupReport(
        database=str(path),
        database_bytes=path.stat().st_size,
        files_dir=str(extra) if extra.is_dir() else "",
        files=restored,
    )


def _sqlite_file(url: str, action: str, otherwise: str) -> Path:
    path = sqlite_path(url)
    if path is None:
        raise BackupError(f"{action} is for SQLite; {otherwise}")
    return path


def _check_backup(source: Path) -> None:
    """Refuses a file that is not a sound jobstream database."""
    try:
        conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            (verdict,) = conn.execute("PRAGMA quick_check").fetchone()
            has_jobs = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'job'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{source} is not a jobstream backup: {exc}") from exc
    if verdict != "ok":
        raise BackupError(f"{source} failed its check: {verdict}")
    if not has_jobs:
        raise BackupError(f"{source} is not a jobstream backup: it has no job table")


def _beside(path: Path) -> Path:
    """The hidden name a part is written under before it is renamed into place."""
    return path.with_name(f".{path.name}.partial")


def _replace_tree(target: Path, fill: Callable[[Path], int]) -> int:
    """Fills a fresh folder beside ``target``, then puts it in ``target``'s
    place; returns what ``fill`` returned (files copied)."""
    partial = _beside(target)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    count = fill(partial)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(partial, target)
    shutil.rmtree(old, ignore_errors=True)
    return count


def _copy_dirs(data_dir: Path, into: Path) -> int:
    """Copies the data directory's backed-up folders into ``into``."""
    return sum(_copy_tree(data_dir / name, into / name) for name in BACKED_UP_DIRS)


def _copy_tree(source: Path, into: Path) -> int:
    """Copies ``source`` into ``into`` (symbolic links as links, never
    followed); returns the files copied. A file or folder removed while it
    is copied (its job deleted meanwhile) is left out, not an error."""
    copied = 0
    into.mkdir(parents=True, exist_ok=True)
    if not source.is_dir():
        return copied
    for folder, dirs, names in os.walk(source):
        here = Path(folder)
        there = into / here.relative_to(source)
        for name in [*dirs, *names]:
            src, dst = here / name, there / name
            try:
                if src.is_symlink():
                    os.symlink(os.readlink(src), dst)
                elif src.is_dir():
                    dst.mkdir(exist_ok=True)
                else:
                    shutil.copy2(src, dst)
                    copied += 1
            except FileNotFoundError:
                continue
    return copied
