"""Who is calling, and what they may do: bearer tokens from a tokens file
mapped to a principal and roles, checked for every JobService and
WorkerService call (unary and streaming alike) before the servicer runs.

The principal is computed once per call, by :meth:`Auth.authorize`, which
the server's interceptor (:mod:`jobstream.server.edge`) calls before the
servicer runs; it hands the principal to the call through a context
variable, and servicers read it with :func:`current_principal`.

Without a tokens file every caller is :data:`ANONYMOUS`, an admin owning
nothing in particular: the single-user, loopback-only default.

Tokens file (JSON)::

    {"tokens": [
      {"token": "s3cret", "principal": "growth", "roles": ["submitter"]},
      {"token_sha256": "9f86…", "principal": "growth-dash", "roles": ["reader"]},
      {"token": "w0rk", "principal": "pool-a", "roles": ["worker"]}
    ]}

Ownership is by principal name: a job belongs to the principal that
submitted it, so a read-only token for a team's jobs is a second token with
the same principal name and the ``reader`` role.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from jobstream.server.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
"""The metadata key that carries ``Bearer <token>``."""

BEARER = "bearer "
"""The scheme prefix, compared case-insensitively (RFC 6750)."""

GUARDED_PREFIX = "/jobstream."
"""Methods under this prefix need a token; health checking and reflection do
not (load balancers and grpcurl call them without credentials)."""


PRINCIPAL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
"""Principal names in a tokens file. A non-admin principal's client-chosen
job ids must start with ``<name>.``; a name is therefore itself an id
prefix (lowercase, digits, ``_``, ``-``), has no dot (else principal ``a``
could choose ``a.b.x`` inside principal ``a.b``'s namespace) and leaves at
least 30 of an id's 63 characters for the id itself."""


class Role(StrEnum):
    """What a token may do."""

    ADMIN = "admin"
    """Every call, on every principal's jobs."""
    SUBMITTER = "submitter"
    """Submit, read, cancel and delete its own jobs."""
    READER = "reader"
    """Read and watch its own jobs."""
    WORKER = "worker"
    """Acquire, report and finish jobs of any principal (a lease is the
    permission for one job)."""


_JOBS = "/jobstream.v1.JobService/"
_WORKERS = "/jobstream.v1.WorkerService/"
_READ = frozenset({Role.SUBMITTER, Role.READER})
_WRITE = frozenset({Role.SUBMITTER})

METHOD_ROLES: Mapping[str, frozenset[Role]] = {
    _JOBS + "SubmitJob": _WRITE,
    _JOBS + "SubmitJobs": _WRITE,
    _JOBS + "GetJob": _READ,
    _JOBS + "ListJobs": _READ,
    _JOBS + "WatchJob": _READ,
    _JOBS + "WatchJobs": _READ,
    _JOBS + "CancelJob": _WRITE,
    _JOBS + "DeleteJob": _WRITE,
    _JOBS + "ListJobLogs": _READ,
    _JOBS + "ListJobResults": _READ,
    _WORKERS + "AcquireJob": frozenset({Role.WORKER}),
    _WORKERS + "ReportJob": frozenset({Role.WORKER}),
    _WORKERS + "FinishJob": frozenset({Role.WORKER}),
    _WORKERS + "FinishJobs": frozenset({Role.WORKER}),
    _JOBS + "RetryJob": _WRITE,
    _JOBS + "GetStats": _READ,
    # Workers are not anyone's jobs: every reading role may see them (the
    # CLI asks before it warns that no worker serves a kind).
    _JOBS + "ListWorkers": _READ,
    _JOBS + "ListArtifacts": _READ,
    _JOBS + "DownloadArtifact": _READ,
    _WORKERS + "UploadArtifact": frozenset({Role.WORKER}),
    # PurgeJobs stays admin-only: it deletes in bulk.
}
"""Non-admin roles allowed to call each method. A guarded method missing
here (e.g. one added later) is admin-only until it is listed: new calls fail
closed, and must also apply owner isolation before they are opened up."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Principal:
    """An authenticated caller."""

    name: str
    roles: frozenset[Role]

    @property
    def is_admin(self) -> bool:
        """Whether it sees and changes every job."""
        return Role.ADMIN in self.roles

    def may_call(self, method: str) -> bool:
        """Whether its roles allow ``method`` (a full gRPC method name)."""
        return self.is_admin or bool(self.roles & METHOD_ROLES.get(method, frozenset()))

    @property
    def id_prefix(self) -> str | None:
        """What the job ids it chooses must start with: ``<name>.``, so
        that submitting an id can only ever collide with its own jobs and
        never tells it whether another principal's job exists. None (any
        id) for admins, and for the anonymous single user."""
        return None if self.is_admin else f"{self.name}."

    @property
    def owner_filter(self) -> str | None:
        """The owner whose jobs alone exist for it (its listings, and the
        jobs it may name); None for admins."""
        return None if self.is_admin else self.name


ANONYMOUS = Principal(name="", roles=frozenset({Role.ADMIN}))
"""Every caller when no tokens file is configured (owner ``""``, as before
authentication existed)."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """Token digests → principals. Lookups compare against every entry in
    constant time, so response timing says nothing about which bytes of a
    guessed token were right."""

    def __init__(self, entries: Iterable[tuple[bytes, Principal]] = ()) -> None:
        self._entries = list(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, token: str, principal: Principal) -> None:
        """Adds a token (the server's own embedded worker uses this)."""
        self._entries.append((_digest(token), principal))

    def lookup(self, token: str) -> Principal | None:
        """The principal of ``token``, or None."""
        presented = _digest(token)
        found: Principal | None = None
        for digest, principal in self._entries:
            if hmac.compare_digest(digest, presented) and found is None:
                found = principal
        return found

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        """Reads a tokens file; ValueError names what is wrong with it."""
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read tokens file {path}: {exc}") from exc
        rows = doc.get("tokens") if isinstance(doc, dict) else None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected {{'tokens': [...]}}")
        table = cls()
        for i, row in enumerate(rows):
            where = f"{path}: tokens[{i}]"
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected an object")
            name = row.get("principal")
            if not isinstance(name, str) or not PRINCIPAL_NAME.fullmatch(name):
                raise ValueError(
                    f"{where}: 'principal' must match {PRINCIPAL_NAME.pattern} (got {name!r}): "
                    "a principal's own job ids start with its name and a dot"
                )
            try:
                roles = frozenset(Role(r) for r in row.get("roles", []))
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}; roles are {[r.value for r in Role]}") from exc
            if not roles:
                raise ValueError(f"{where}: name at least one role")
            principal = Principal(name=name, roles=roles)
            if isinstance(row.get("token"), str) and row["token"]:
                table.add(row["token"], principal)
            elif isinstance(row.get("token_sha256"), str):
                try:
                    digest = bytes.fromhex(row["token_sha256"])
                except ValueError as exc:
                    raise ValueError(f"{where}: token_sha256 is not hex") from exc
                if len(digest) != hashlib.sha256().digest_size:
                    raise ValueError(f"{where}: token_sha256 must be 64 hex digits")
                table._entries.append((digest, principal))
            else:
                raise ValueError(f"{where}: needs 'token' or 'token_sha256'")
        return table


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer …`` entry, if any."""
    for key, value in metadata or ():
        if (
            key.lower() == AUTHORIZATION
            and isinstance(value, str)
            and value[: len(BEARER)].lower() == BEARER
        ):
            return value[len(BEARER) :].strip()
    return None


_principal: ContextVar[Principal | None] = ContextVar("jobstream_principal", default=None)
"""The caller of the call being handled (set by Auth.authorize)."""


def current_principal() -> Principal:
    """The caller of the call being handled, as :meth:`Auth.authorize`
    authenticated it once for the call."""
    found = _principal.get()
    if found is None:  # pragma: no cover - every served call passes the interceptor
        raise RuntimeError("no principal: the call was not authorized (Auth.authorize)")
    return found


class Auth:
    """Authentication of callers. Disabled (no table) means everyone is
    :data:`ANONYMOUS`."""

    def __init__(self, table: TokenTable | None) -> None:
        self.table = table

    @property
    def enabled(self) -> bool:
        """Whether callers must present a token."""
        return self.table is not None

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal | None:
        """The caller, or None when its token is missing or unknown."""
        if self.table is None:
            return ANONYMOUS
        token = bearer_token(metadata)
        return None if token is None else self.table.lookup(token)

    def authorize(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> Principal:
        """The caller of ``method`` (a guarded one, see :func:`guarded`),
        made the current principal; Unauthenticated without a valid token,
        PermissionDenied without a role that allows the method."""
        principal = self.authenticate(metadata)
        if principal is None:
            raise Unauthenticated(
                "send 'authorization: Bearer <token>' with a token from the server's tokens file"
            )
        if not principal.may_call(method):
            roles = ", ".join(sorted(r.value for r in principal.roles))
            name = method.rsplit("/", 1)[-1]
            raise PermissionDenied(
                f"{name} is not allowed for role(s) {roles}",
                metadata={"method": name, "roles": roles},
            )
        _principal.set(principal)
        return principal


def guarded(method: str) -> bool:
    """Whether calls of ``method`` need a token (jobstream's own services;
    not health checking or reflection)."""
    return method.startswith(GUARDED_PREFIX)
