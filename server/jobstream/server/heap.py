"""Giving freed heap memory back to the operating system after watchers go.

glibc's malloc keeps what a thread frees in that thread's arena and gives
it back to the system only from the top of a heap. Watchers whose clients
stall leave their buffers scattered across the arenas of gRPC's and the
event loop's threads; once they were gone, a server measured 233 MiB RSS
of which 177 MiB sat free inside malloc, and ``malloc_trim(0)``, which
releases the free pages inside every arena too, brought it to 150 MiB.
So after watches end the server calls it, off the event loop, at most
every TRIM_EVERY_S. Where the C library has no ``malloc_trim`` (musl,
macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_EVERY_S = 5.0
"""How often the server looks whether watches ended and trims if so: soon
enough that memory comes back within seconds of a crowd of watchers going,
rare enough that its cost (tens of milliseconds holding malloc's locks on
a large heap) never matters."""


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _malloc_trim()


def trim() -> bool:
    """Gives the heap's free pages back to the system; False where it cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


async def trim_loop(ended: Callable[[], int], every_s: float = TRIM_EVERY_S) -> None:
    """Forever: every ``every_s``, trims the heap if ``ended()`` (a count of
    watches ended so far) moved since the last trim."""
    if _TRIM is None:
        log.debug("no malloc_trim in this C library: freed memory stays with the allocator")
        return
    seen = ended()
    while True:
        await asyncio.sleep(every_s)
        now = ended()
        if now != seen:
            seen = now
            await asyncio.to_thread(trim)
