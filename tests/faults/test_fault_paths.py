"""Scenario 7: deleting jobs whose recorded paths point outside the data
directory (absolute, ``..``, a sibling directory sharing the prefix, a
symlink pointing out, a symlink swapped in during the delete) touches no
file outside it: checksummed canaries are unchanged."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from conftest import ServerProcess
from helpers import RawWorker

from faults.record import record, size
from jobstream.client import JobClient


def _checksums(root: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _canaries(base: Path) -> Path:
    outside = base / "outside"
    for sub in ("", "deep", "data-sibling"):
        d = outside / sub
        d.mkdir(parents=True, exist_ok=True)
        (d / "canary.txt").write_text(f"canary in {sub or 'outside'}\n")
    return outside


def test_delete_never_touches_files_outside_the_data_dir(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server(name="paths")
    data = server.data_dir
    outside = _canaries(tmp_path)
    # A directory beside the data dir whose name starts with the data dir's.
    sibling = data.parent / (data.name + "-evil")
    sibling.mkdir()
    (sibling / "canary.txt").write_text("sibling canary\n")
    watched = [outside, sibling]
    before = {str(w): _checksums(w) for w in watched}
    rounds = size(3, 30)
    refused = 0
    with JobClient(server.target) as client:
        for i in range(rounds):
            job = client.submit("faults.paths")
            job_dir = data / "jobs" / job.id
            job_dir.mkdir(parents=True)
            (job_dir / "out.txt").write_text("inside\n")
            (job_dir / "link-out").symlink_to(outside / "deep")
            (job_dir / "swap").mkdir()
            (job_dir / "swap" / "f.txt").write_text("inside\n")
            paths = [
                str(outside / "canary.txt"),
                "../../outside/canary.txt",
                f"../{data.name}-evil/canary.txt",
                str(sibling),
                f"jobs/{job.id}/link-out/canary.txt",
                f"jobs/{job.id}/link-out",
                f"jobs/{job.id}/swap",
            ]
            worker = RawWorker(server.target, worker_id=f"paths-{i}")
            try:
                lease = worker.acquire("faults.paths")
                worker.log(job.id, lease.lease_id, ["files"], files=paths)
                worker.finish(job.id, lease.lease_id)
            finally:
                worker.close()
            stop = threading.Event()

            def swapper(swap: Path = job_dir / "swap", stop: threading.Event = stop) -> None:
                # Keep replacing the directory with a symlink pointing out.
                while not stop.is_set():
                    try:
                        tmp = swap.with_name("swap-tmp")
                        tmp.symlink_to(outside)
                        os.replace(tmp, swap)
                    except OSError:
                        pass

            thread = threading.Thread(target=swapper)
            thread.start()
            try:
                outcome = client.delete(job.id, force=True)
            finally:
                stop.set()
                thread.join(10)
            refused += len(outcome.refused_paths)
    after = {str(w): _checksums(w) for w in watched}
    touched = sum(
        1 for w in before for path, digest in before[w].items() if after[w].get(path) != digest
    )
    record(
        7,
        f"{rounds} deletes, {refused} paths refused, {touched} files outside touched",
        touched == 0,
    )
    assert touched == 0
    assert refused >= 3 * rounds
