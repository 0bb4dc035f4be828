"""A job's files: what a job owns, and removing it and nothing else.

A job owns exactly its own directory ``DATA/jobs/<id>/`` and, under each
operator-configured output root, ``ROOT/<id>/``. A path a worker records
for the job must lie strictly inside one of those; the same check runs when
the path is reported and again when it is removed, so a stored row that
says otherwise (written before the rule, or by a bug) is refused, never
obeyed. Whatever a row says, a removal never touches the database and its
side files, the data directory or an output root, nor a directory holding
any of them.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

JOBS_DIR = "jobs"
"""The folder of per-job directories under the data directory."""

ARTIFACTS_DIR = "artifacts"
"""The folder where versions before artifacts moved into the database kept
each job's artifact files (``artifacts/<id>/``); a job's leftover folder
there is still removed with it."""

DATABASE_SIDE_SUFFIXES = ("", "-wal", "-shm", "-journal")
"""A SQLite database is its file and these side files beside it: removing
any of them loses committed data."""

OWNERSHIP_RULE = (
    "is outside the job's own directories (jobs/{id}/ under the data directory, "
    "or <root>/{id}/ under an --output-root); a job may record only files it owns"
)
"""The rule, as a refusal states it after the path."""


@dataclass(frozen=True, kw_only=True, slots=True)
class FileRoots:
    """Where jobs' files live: the data directory, the operator's output
    roots (``--output-root``) and the SQLite database file, if any, which no
    removal may touch even when it was configured inside a job directory."""

    data_dir: Path
    output_roots: tuple[Path, ...] = ()
    database: Path | None = None
    _protected: tuple[Path, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_output_roots(self.data_dir, self.output_roots)
        protected = [self.data_dir.resolve(), *(r.resolve() for r in self.output_roots)]
        if self.database is not None:
            db = _resolve_parent(self.database)
            protected += [db.with_name(db.name + s) for s in DATABASE_SIDE_SUFFIXES]
        object.__setattr__(self, "_protected", tuple(protected))

    def job_dirs(self, job_id: str) -> tuple[Path, ...]:
        """The job's own directories, absolute: ``DATA/jobs/<id>`` first,
        then ``ROOT/<id>`` for each output root. Only their parents are
        resolved, so a symlink standing in for one is never followed."""
        if not _plain_name(job_id):
            return ()
        roots = (self.data_dir / JOBS_DIR, *self.output_roots)
        return tuple(root.resolve() / job_id for root in roots)

    def artifact_dir(self, job_id: str) -> Path:
        """Where older versions kept the job's artifact files."""
        return artifact_dir(self.data_dir, job_id)

    def shown(self, target: Path) -> str:
        """How a removed path is reported: relative to the data directory
        when inside it, else absolute (under an output root)."""
        data = self.data_dir.resolve()
        return str(target.relative_to(data)) if data in target.parents else str(target)

    def holds_protected(self, target: Path) -> bool:
        """Whether ``target`` is, or is a directory holding, the data
        directory, an output root, or the database or one of its side files."""
        return any(target == p or target in p.parents for p in self._protected)


@dataclass(frozen=True, kw_only=True, slots=True)
class Checked:
    """The verdict on one recorded path: where it points if the job owns
    it, else why it is refused."""

    target: Path | None
    refusal: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Removal:
    """What a removal did: paths removed (relative to the data directory, or
    absolute under an output root) and recorded paths refused."""

    removed: tuple[str, ...]
    refused: tuple[str, ...]


def check_output_roots(data_dir: Path, output_roots: Sequence[Path]) -> None:
    """Raises ValueError when output roots overlap each other or the data
    directory: a root inside another (or inside the data directory, or
    holding it) would make one job's ``ROOT/<id>/`` another root's or the
    data directory's folder."""
    named = [("the data directory", data_dir.resolve())]
    named += [(f"--output-root {str(r)!r}", r.resolve()) for r in output_roots]
    for i, (a_name, a) in enumerate(named):
        for b_name, b in named[i + 1 :]:
            if a == b or a in b.parents or b in a.parents:
                raise ValueError(
                    f"{b_name} overlaps {a_name}: output roots must be separate "
                    "directories, neither inside the data directory nor holding it"
                )


def check_recorded(roots: FileRoots, job_id: str, raw: str) -> Checked:
    """Whether the job owns the recorded path ``raw`` (absolute, or
    relative to the data directory): after resolving its parent it must lie
    strictly inside one of the job's own directories, and be neither the
    database nor hold it. The last component is never resolved: a symlink
    is the job's own file, removed itself and never followed."""
    outside = Checked(target=None, refusal=f"{raw!r} {OWNERSHIP_RULE.format(id=job_id)}")
    try:
        path = Path(raw) if Path(raw).is_absolute() else roots.data_dir / raw
        if path.name in ("", ".", "..") or "\0" in raw:
            return outside
        target = _resolve_parent(path)
    except (OSError, RuntimeError, TypeError, ValueError):
        # A symlink loop, a NUL byte, a stored row holding no string:
        # nothing a job could own.
        return outside
    if not any(own in target.parents for own in roots.job_dirs(job_id)):
        return outside
    if roots.holds_protected(target):
        return Checked(
            target=None,
            refusal=f"{raw!r} is or holds the server's database (or the data directory, or "
            "an output root); no job may record it",
        )
    return Checked(target=target)


def artifact_dir(data_dir: Path, job_id: str) -> Path:
    """Where older versions kept a job's artifact files."""
    return data_dir / ARTIFACTS_DIR / job_id


async def remove_job_files(roots: FileRoots, job_id: str, recorded: Sequence[str]) -> Removal:
    """:func:`remove_files` on a thread of its own, off the event loop (and
    off the reader threads, which are the database's)."""
    return await asyncio.to_thread(remove_files, roots, job_id, recorded)


def remove_files(roots: FileRoots, job_id: str, recorded: Iterable[str]) -> Removal:
    """Removes the job's own directories, its artifacts and the recorded
    paths it owns (see check_recorded); every other recorded path is
    refused and reported, never touched.

    ``shutil.rmtree`` works through directory descriptors on Linux, so a
    symlink swapped in during the walk is not followed.
    """
    removed: list[str] = []
    refused: list[str] = []
    # Judged before anything is removed: a path through a symlink inside the
    # job's directory is refused for where it leads, not waved through
    # because the link went with the directory.
    accepted: list[Path] = []
    for raw in recorded:
        checked = check_recorded(roots, job_id, raw)
        if checked.target is None:
            log.warning("job %s: refusing to remove %r: %s", job_id, raw, checked.refusal)
            refused.append(str(raw))
        else:
            accepted.append(checked.target)
    owned = [*roots.job_dirs(job_id)]
    if owned:
        owned.append(_resolve_parent(roots.artifact_dir(job_id)))
    for target in owned:
        if roots.holds_protected(target):
            log.warning(
                "job %s: not removing %s: it holds the database, the data directory "
                "or an output root",
                job_id,
                target,
            )
        elif _remove(job_id, target):
            removed.append(roots.shown(target))
    for target in accepted:
        if _remove(job_id, target):
            removed.append(roots.shown(target))
    return Removal(removed=tuple(removed), refused=tuple(refused))


def _remove(job_id: str, target: Path) -> bool:
    """Removes a file, symlink (itself) or directory tree; False when there
    was nothing to remove or it could not be removed."""
    try:
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        else:
            return False
    except (OSError, ValueError) as exc:
        log.warning("job %s: could not remove %s: %s", job_id, target, exc)
        return False
    return True


def _resolve_parent(path: Path) -> Path:
    """``path`` made absolute with its parent resolved and its last
    component kept as it is (a symlink there is not followed)."""
    return path.absolute().parent.resolve() / path.name


def _plain_name(job_id: str) -> bool:
    """Whether ``job_id`` names one directory entry: ids are checked when a
    job is submitted, this guards rows from anywhere else."""
    return job_id not in ("", ".", "..") and "/" not in job_id and "\0" not in job_id
