"""The client installs with grpcio + protobuf (and googleapis-common-protos,
which the protos' HTTP annotations import) only: it must import and work
with peewee, aiohttp, the server package and the gateway unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED_IMPORT_PROBE = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = ("peewee", "playhouse", "jobstream.server", "aiohttp", "jobstream.gateway")

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"{name} is blocked in this test", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    for name in list(sys.modules):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            del sys.modules[name]

    try:
        import peewee  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker does not block peewee")

    import jobstream.client
    import jobstream.client.demo
    import jobstream.client.worker
    from jobstream.client import AsyncJobClient, JobClient, Worker

    client = JobClient("127.0.0.1:1")
    client.close()
    AsyncJobClient("127.0.0.1:1")
    worker = Worker("127.0.0.1:1", jobstream.client.demo.handlers)
    assert "demo.count" in worker.handlers

    leaked = sorted(n for n in sys.modules if n.split(".")[0] in ("peewee", "playhouse"))
    leaked += sorted(n for n in sys.modules if n.startswith("jobstream.server"))
    leaked += sorted(n for n in sys.modules if n.split(".")[0] == "aiohttp")
    if leaked:
        raise SystemExit(f"server-side modules imported: {leaked}")
    print("ok")
    """
)


def test_client_imports_without_peewee_or_server() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.strip() == "ok"
