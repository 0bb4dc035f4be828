"""The HTTP face of jobstream: every JobService call as HTTP + JSON, the
watches as Server-Sent Events, artifact downloads, and a live dashboard, in
front of one or many servers reached over gRPC.

Needs the ``[gateway]`` extra (aiohttp); the ``[server]`` extra includes it.
"""

from __future__ import annotations

try:
    import aiohttp  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "the HTTP gateway needs the [gateway] extra: pip install 'jobstream[gateway]'",
        name=exc.name,
    ) from exc

from jobstream.gateway.app import Gateway, GatewayConfig, running

__all__ = ["Gateway", "GatewayConfig", "running"]
