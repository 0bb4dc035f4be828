"""Transport security: TLS / mutual TLS credentials, the rule that the
server does not listen beyond loopback unprotected, and how the in-process
worker reaches a protected server."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc

from jobstream.server.auth import Auth, Principal, Role, TokenTable
from jobstream.server.config import ServerConfig

EMBEDDED_PRINCIPAL = Principal(name="embedded-worker", roles=frozenset({Role.WORKER}))
"""Who the in-process worker is when tokens are on."""

EMBEDDED_SOCKET_DIR = ".run"
"""Directory (mode 0700) under the data dir holding the Unix socket the
in-process worker uses when the TCP port speaks TLS."""

UNIX_SOCKET_PATH_MAX = 107
"""Longest Unix socket path Linux binds (sun_path holds 108 bytes with the
terminating NUL)."""

TEMP_SOCKET_PREFIX = "jobstream-embedded-"
"""Prefix of the private temporary folder used when the data directory is
too deep for a socket path."""

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})
"""Host names that always mean loopback."""


class ConfigError(ValueError):
    """The configuration would expose the API beyond loopback unprotected,
    names TLS files inconsistently, or has an unreadable tokens file."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a DNS name (or "" = every interface): assume exposed


def check(config: ServerConfig) -> None:
    """Refuses inconsistent TLS flags, and a non-loopback listen address
    without TLS or tokens unless ``--insecure``."""
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if config.tls_client_ca is not None and config.tls_cert is None:
        raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    protected = config.tls_cert is not None or config.tokens_file is not None
    if not is_loopback(config.host) and not protected and not config.insecure:
        raise ConfigError(
            f"refusing to listen on {config.host!r} (beyond loopback) without TLS "
            "(--tls-cert/--tls-key) or tokens (--tokens-file); pass --insecure to do it anyway"
        )


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from the config, or None for plaintext."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class EmbeddedAccess:
    """How the in-process worker reaches its own server."""

    socket_path: Path | None
    """A private Unix socket when the TCP port speaks TLS (the worker then
    needs no certificate of its own), else None: loopback TCP."""
    token: str | None
    """A random worker token added to the table for this process only, when
    tokens are on."""


def embedded_access(config: ServerConfig, auth_enabled: bool) -> EmbeddedAccess:
    """Makes the private socket directory and the worker token as needed."""
    socket_path = None
    if config.tls_cert is not None:
        run_dir = config.data_dir / EMBEDDED_SOCKET_DIR
        socket_path = (run_dir / f"embedded-{os.getpid()}.sock").resolve()
        if len(os.fsencode(socket_path)) > UNIX_SOCKET_PATH_MAX:
            # A deep data directory: bind in a private directory of the
            # system's temporary folder instead (mkdtemp makes it 0700).
            run_dir = Path(tempfile.mkdtemp(prefix=TEMP_SOCKET_PREFIX))
            socket_path = run_dir / "embedded.sock"
        run_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(run_dir, 0o700)  # mkdir's mode is masked by the umask
        socket_path.unlink(missing_ok=True)
    token = secrets.token_urlsafe(32) if auth_enabled else None
    return EmbeddedAccess(socket_path=socket_path, token=token)


def remove_socket(access: EmbeddedAccess) -> None:
    """Removes the private socket at shutdown (and its folder when it was a
    temporary one), so restarts do not leave one behind per process."""
    if access.socket_path is None:
        return
    access.socket_path.unlink(missing_ok=True)
    if access.socket_path.parent.name.startswith(TEMP_SOCKET_PREFIX):
        with contextlib.suppress(OSError):
            access.socket_path.parent.rmdir()


def prepare(config: ServerConfig) -> tuple[Auth, EmbeddedAccess]:
    """Checks the exposure rule, loads the tokens file and sets up the
    in-process worker's access; ConfigError says what is wrong."""
    check(config)
    table = None
    if config.tokens_file is not None:
        try:
            table = TokenTable.load(config.tokens_file)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    access = embedded_access(config, table is not None)
    if table is not None and access.token is not None:
        table.add(access.token, EMBEDDED_PRINCIPAL)
    return Auth(table), access
