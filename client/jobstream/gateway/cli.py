"""``jobstream gateway``: the HTTP face as its own process, in front of one
server or a load balancer over several (e.g. servers sharing PostgreSQL)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from jobstream.client.connection import DEFAULT_TARGET
from jobstream.client.security import Security
from jobstream.gateway.app import Gateway, GatewayConfig

log = logging.getLogger(__name__)

DEFAULT_HTTP_PORT = 8080
"""The port the HTTP face listens on unless told otherwise."""

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})
"""Host names that always mean loopback."""


def _env(name: str, default: str) -> str:
    return os.environ.get(f"JOBSTREAM_{name}", default)


def _path(name: str) -> Path | None:
    value = _env(name, "")
    return Path(value) if value else None


def parser() -> argparse.ArgumentParser:
    """The ``jobstream gateway`` argument parser."""
    p = argparse.ArgumentParser(
        prog="jobstream gateway",
        description="Serve the JSON/SSE API and the dashboard over HTTP, in front of a "
        "jobstream server (or a load balancer over several) reached over gRPC.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add("--target", default=_env("TARGET", DEFAULT_TARGET), help="gRPC server [JOBSTREAM_TARGET]")
    add(
        "--http-host",
        default=_env("HTTP_HOST", "127.0.0.1"),
        help="address the HTTP face listens on [JOBSTREAM_HTTP_HOST]",
    )
    add(
        "--http-port",
        type=int,
        default=int(_env("HTTP_PORT", str(DEFAULT_HTTP_PORT))),
        help="0 picks a free port [JOBSTREAM_HTTP_PORT]",
    )
    add("--http-port-file", type=Path, default=None, help="write the bound port here")
    add(
        "--http-tls-cert",
        type=Path,
        default=_path("HTTP_TLS_CERT"),
        help="serve HTTPS with this PEM chain [JOBSTREAM_HTTP_TLS_CERT]",
    )
    add(
        "--http-tls-key",
        type=Path,
        default=_path("HTTP_TLS_KEY"),
        help="PEM key of --http-tls-cert [JOBSTREAM_HTTP_TLS_KEY]",
    )
    add(
        "--ca",
        type=Path,
        default=_path("CA"),
        help="PEM roots of the server's TLS certificate; enables TLS towards it [JOBSTREAM_CA]",
    )
    add(
        "--cert",
        type=Path,
        default=_path("CERT"),
        help="client certificate for mutual TLS [JOBSTREAM_CERT]",
    )
    add("--key", type=Path, default=_path("KEY"), help="key of --cert [JOBSTREAM_KEY]")
    add(
        "--insecure",
        action="store_true",
        default=_env("INSECURE", "") in ("1", "true", "yes"),
        help="allow plain HTTP beyond loopback (tokens then cross the network in the "
        "clear; e.g. behind a proxy that ends TLS) [JOBSTREAM_INSECURE]",
    )
    add(
        "--log-level", default=_env("LOG_LEVEL", "INFO"), help="logging level [JOBSTREAM_LOG_LEVEL]"
    )
    return p


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def from_args(argv: Sequence[str]) -> tuple[GatewayConfig, Path | None]:
    """The configuration and port file of ``jobstream gateway`` arguments."""
    p = parser()
    a = p.parse_args(list(argv))
    if (a.http_tls_cert is None) != (a.http_tls_key is None):
        p.error("--http-tls-cert and --http-tls-key go together")
    if not is_loopback(a.http_host) and a.http_tls_cert is None and not a.insecure:
        p.error(
            f"refusing to serve plain HTTP on {a.http_host!r} (beyond loopback): bearer "
            "tokens would cross the network in the clear; give --http-tls-cert/--http-tls-key "
            "or --insecure"
        )
    config = GatewayConfig(
        target=a.target,
        host=a.http_host,
        port=a.http_port,
        upstream=Security(ca=a.ca, cert=a.cert, key=a.key),
        tls_cert=a.http_tls_cert,
        tls_key=a.http_tls_key,
    )
    logging.basicConfig(
        level=a.log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    return config, a.http_port_file


async def serve(config: GatewayConfig, port_file: Path | None) -> None:
    """Serves until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(config)
    await gateway.start()
    log.info("HTTP API and dashboard on %s (server %s)", gateway.url, config.target)
    if port_file is not None:
        await asyncio.to_thread(port_file.write_text, str(gateway.port))
    try:
        await stop.wait()
    finally:
        await gateway.stop()


def main(argv: Sequence[str]) -> int:
    """``jobstream gateway``: runs until SIGINT/SIGTERM."""
    config, port_file = from_args(argv)
    try:
        asyncio.run(serve(config, port_file))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
