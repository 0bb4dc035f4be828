"""The jobstream server: storage, the group-commit writer, the broker and the gRPC services.

Needs the ``[server]`` extra (peewee, health checking, reflection).
"""

from __future__ import annotations

try:
    import peewee  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "jobstream.server needs the [server] extra: pip install 'jobstream[server]'"
    ) from exc
