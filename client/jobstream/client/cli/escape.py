"""Terminal-safe text: what the CLI does to untrusted text before showing it.

A job's log line, phase, error or id comes from whoever submitted or ran
the job; printed raw, an escape sequence in it could retitle the terminal,
rewrite earlier lines or worse. :func:`sanitize` shows every such character
as a visible escape instead (ESC becomes the four characters ``\\x1b``).
Kept free of rich so errors can be reported even without the ``[cli]`` extra.
"""

from __future__ import annotations

import re

__all__ = ["sanitize"]

_UNSAFE_LINE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
"""What a one-line field may not print raw: C0 controls but tab (so also
newline and CR, which could forge or overwrite lines), DEL, C1 controls
(8-bit CSI and friends) and the bidi embeddings, overrides and isolates that
make text read differently from what it is."""

_UNSAFE_BLOCK = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
"""The same for multi-line blocks (tracebacks, results): newline may stay."""


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def sanitize(text: str, *, multiline: bool = False) -> str:
    """``text`` with every terminal-driving character replaced by its escape.

    With ``multiline`` newlines are kept; otherwise they are escaped too, so
    one log line always prints as one line.
    """
    pattern = _UNSAFE_BLOCK if multiline else _UNSAFE_LINE
    return pattern.sub(_escape_char, text)
