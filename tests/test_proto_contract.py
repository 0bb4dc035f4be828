"""The contract as written: each RPC's comment lists the codes and reasons
it can return; protos/released.binpb is committed, make lint runs `buf
breaking` against it, and an incompatible change fails that check."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from jobstream.v1 import errors_pb2, job_service_pb2, worker_service_pb2

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


def rpc_comments() -> dict[str, str]:
    """Each RPC's leading comment in the protos, by name; the services'
    own comments under "service <Name>"."""
    found: dict[str, str] = {}
    for path in (REPO / "protos" / "jobstream" / "v1").glob("*_service.proto"):
        comment: list[str] = []
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("//"):
                comment.append(stripped[2:].strip())
                continue
            match = re.match(r"(rpc|service) (\w+)", stripped)
            if match:
                key = match[2] if match[1] == "rpc" else f"service {match[2]}"
                found[key] = " ".join(comment)
            comment = []
    return found


GATEWAY_ONLY = {"ROUTE_NOT_FOUND", "CROSS_SITE_REQUEST", "METHOD_NOT_ALLOWED"}
"""Reasons only the HTTP gateway gives (the README's table says so)."""


def test_each_rpc_comment_lists_its_errors() -> None:
    comments = rpc_comments()
    methods = [
        m.name
        for module in (job_service_pb2, worker_service_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    ]
    reasons = {
        errors_pb2.ErrorReason.Name(v)
        for v in errors_pb2.ErrorReason.values()
        if v != errors_pb2.ERROR_REASON_UNSPECIFIED
    }
    named: set[str] = set()
    for method in methods:
        assert "Errors:" in comments[method], f"{method}'s comment lists no errors"
    for text in comments.values():
        named |= {word for word in re.findall(r"\b[A-Z][A-Z_]+[A-Z]\b", text) if word in reasons}
    assert reasons - GATEWAY_ONLY <= named, reasons - GATEWAY_ONLY - named
