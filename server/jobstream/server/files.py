"""Removing a job's files, and only files inside the data directory."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class Removal:
    """What a removal did: paths removed (relative to the data directory) and
    recorded paths refused because they resolve outside it."""

    removed: tuple[str, ...]
    refused: tuple[str, ...]


def job_dir(data_dir: Path, job_id: str) -> Path:
    """The per-job directory under the data directory."""
    return data_dir / "jobs" / job_id


def remove_files(data_dir: Path, job_id: str, recorded: Iterable[str]) -> Removal:
    """Removes the job's directory and its recorded files (artifacts are
    database rows, deleted with the job's).

    Only the parent of each path is resolved: a symlink is removed itself and
    never followed, so a link pointing out of the data directory cannot lead
    the removal there. ``shutil.rmtree`` works through directory descriptors
    on Linux, so a symlink swapped in during the walk is not followed either.
    """
    root = data_dir.resolve()
    removed: list[str] = []
    refused: list[str] = []
    # Absolute, so a relative data directory is not joined onto itself below.
    owned = str(job_dir(data_dir, job_id).absolute())
    for raw in (owned, *recorded):
        path = Path(raw) if Path(raw).is_absolute() else data_dir / raw
        target = path.parent.resolve() / path.name
        if path.name in ("", ".", "..") or root not in target.parents:
            log.warning("job %s: refusing to remove %s: outside %s", job_id, raw, root)
            refused.append(raw)
            continue
        try:
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
            else:
                continue
        except OSError as exc:
            log.warning("job %s: could not remove %s: %s", job_id, target, exc)
            continue
        removed.append(str(target.relative_to(root)))
    return Removal(removed=tuple(removed), refused=tuple(refused))
