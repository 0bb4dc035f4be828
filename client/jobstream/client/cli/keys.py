"""Keys typed at the terminal, read one at a time for full-screen views
(``jobstream top``).

The terminal is put in cbreak mode while keys are read: each key arrives at
once, unechoed, and Ctrl-C still sends SIGINT, so the command ends with
status 130 as everywhere else. Escape sequences become key names (``up``,
``down`` …); a lone Esc is ``escape``.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import tty
from types import TracebackType
from typing import Any, Self, TextIO

__all__ = ["ESCAPE_WAIT", "KeyReader", "parse_keys"]

ESCAPE_WAIT = 0.05
"""Seconds to wait after a lone Esc byte for the rest of an escape sequence
(an arrow key sent in two reads) before calling it the Esc key."""

READ_BYTES = 64
"""Bytes read at a time: a burst of typed keys or one escape sequence."""

_CSI_KEYS = {
    "A": "up",
    "B": "down",
    "C": "right",
    "D": "left",
    "H": "home",
    "F": "end",
    "5~": "pageup",
    "6~": "pagedown",
}
"""Final parts of the escape sequences of the keys a view may use (after
``ESC [`` or ``ESC O``)."""


def parse_keys(text: str) -> list[str]:
    """The keys in what the terminal sent: ``up``, ``down``, ``left``,
    ``right``, ``home``, ``end``, ``pageup``, ``pagedown``, ``enter``,
    ``escape``, or the character typed. Unknown sequences are dropped."""
    keys: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\x1b" and i + 1 < len(text) and text[i + 1] in "[O":
            end = i + 2
            # Parameters, then one final byte in @..~ ends the sequence.
            while end < len(text) and not "@" <= text[end] <= "~":
                end += 1
            body = text[i + 2 : end + 1]
            if body in _CSI_KEYS:
                keys.append(_CSI_KEYS[body])
            i = end + 1
        elif char == "\x1b":
            keys.append("escape")
            i += 1
        elif char in "\r\n":
            keys.append("enter")
            i += 1
        else:
            keys.append(char)
            i += 1
    return keys


class KeyReader:
    """Reads keys from a terminal ``stream`` (default stdin) in cbreak mode,
    restoring its settings on exit."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdin
        self._fd = self._stream.fileno()
        self._saved: list[Any] | None = None

    def __enter__(self) -> Self:
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)

    def _ready(self, timeout: float) -> bool:
        readable, _, _ = select.select([self._fd], [], [], timeout)
        return bool(readable)

    def read(self, timeout: float) -> list[str]:
        """The keys typed within ``timeout`` seconds (empty if none)."""
        if not self._ready(timeout):
            return []
        data = os.read(self._fd, READ_BYTES)
        if data.endswith(b"\x1b") and self._ready(ESCAPE_WAIT):
            data += os.read(self._fd, READ_BYTES)
        return parse_keys(data.decode(errors="replace"))
