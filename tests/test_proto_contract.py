"""The released contract: protos/released.binpb is committed, make lint runs
`buf breaking` against it, and an incompatible change fails that check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUF = Path(sys.executable).parent / "buf"
RELEASED = REPO / "protos" / "released.binpb"


def breaking(workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "breaking", "--against", str(RELEASED)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_released_state_is_committed_and_checked_by_make_lint() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", "protos/released.binpb"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    assert tracked.returncode == 0, "protos/released.binpb must be committed"
    makefile = (REPO / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "buf breaking --against $(RELEASED)" in lint
    assert "RELEASED := protos/released.binpb" in makefile


def test_the_protos_are_compatible_with_the_released_state() -> None:
    result = breaking(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_incompatible_change_fails(tmp_path: Path) -> None:
    shutil.copytree(REPO / "protos", tmp_path / "protos")
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    service = tmp_path / "protos" / "jobstream" / "v1" / "job_service.proto"
    text = service.read_text()
    # Renumbering a field changes the wire format for every client.
    assert "  string listing_token = 5;" in text
    service.write_text(text.replace("  string listing_token = 5;", "  string listing_token = 6;"))
    result = breaking(tmp_path)
    assert result.returncode != 0
    assert "listing_token" in result.stdout + result.stderr
