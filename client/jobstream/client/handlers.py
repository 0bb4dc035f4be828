"""What a handler module writes: the registry of handlers by job kind, and
the exceptions a handler raises to end its job.

A handler is a function of one ``JobContext`` registered for a job kind::

    handlers = Handlers()

    @handlers.handler("enrich.companies")
    def enrich(ctx: JobContext) -> dict[str, Any]:
        for i, row in enumerate(rows):
            ctx.check_cancelled()
            ctx.log(f"row {i}")
            ctx.progress(i + 1, len(rows))
        return {"rows": len(rows)}
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from jobstream.client.models import JsonObject

if TYPE_CHECKING:
    from jobstream.client.context import JobContext

__all__ = ["FatalJobError", "Handler", "HandlerResult", "Handlers", "JobCancelled", "JobReleased"]

_KIND = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
"""A valid job kind (as the server checks it)."""


class JobCancelled(Exception):
    """Raised by ``JobContext.check_cancelled`` (or by a handler) to stop a
    job that was asked to stop; the attempt ends CANCELLED."""


class JobReleased(Exception):
    """Raise from a handler that saw ``ctx.stopping`` (its worker is
    stopping) to give the job back now, after a ``ctx.checkpoint``: it is
    queued again at once, the attempt does not count, and the next run
    starts from ``ctx.checkpoint_data``."""


class FatalJobError(Exception):
    """Raise from a handler to fail the job without retrying it.

    ``code`` defaults to the exception's class name; ``details`` is a JSON
    object stored with the error.
    """

    def __init__(
        self, message: str = "", *, code: str | None = None, details: JsonObject | None = None
    ) -> None:
        super().__init__(message)
        self.code = code or type(self).__name__
        self.details = dict(details or {})


HandlerResult = JsonObject | None
"""What a handler returns: the job's result, or None."""

Handler = Callable[["JobContext"], HandlerResult | Awaitable[HandlerResult]]
"""A job handler: ``def f(ctx) -> dict | None`` or ``async def f(ctx) -> dict | None``."""

H = TypeVar("H", bound=Handler)


class Handlers:
    """A registry of handlers by job kind.

    A handlers module exposes one as a module-level ``handlers`` for
    ``jobstream worker --handlers`` and ``jobstream serve --handlers``.
    """

    def __init__(self) -> None:
        self._by_kind: dict[str, Handler] = {}

    def handler(self, kind: str) -> Callable[[H], H]:
        """Decorator: register the function as the handler of ``kind``."""

        def register(fn: H) -> H:
            self.register(kind, fn)
            return fn

        return register

    def register(self, kind: str, fn: Handler) -> None:
        """Register ``fn`` for ``kind``; a kind has one handler."""
        if not _KIND.fullmatch(kind):
            raise ValueError(
                f"kind {kind!r} is not a valid job kind ([a-z0-9][a-z0-9._-]{{0,127}})"
            )
        existing = self._by_kind.get(kind)
        if existing is not None and existing is not fn:
            raise ValueError(f"kind {kind!r} already has a handler: {existing!r}")
        self._by_kind[kind] = fn

    def update(self, other: Handlers) -> None:
        """Add every handler of ``other`` (a kind already here must be the same handler)."""
        for kind, fn in other._by_kind.items():
            self.register(kind, fn)

    def get(self, kind: str) -> Handler | None:
        """The handler for ``kind``, or None."""
        return self._by_kind.get(kind)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The registered kinds, sorted."""
        return tuple(sorted(self._by_kind))

    def __contains__(self, kind: object) -> bool:
        return kind in self._by_kind

    def __len__(self) -> int:
        return len(self._by_kind)

    def __repr__(self) -> str:
        return f"Handlers({', '.join(self.kinds)})"
