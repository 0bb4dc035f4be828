"""Settings from flags and ``JOBSTREAM_*`` environment variables, read one way
everywhere: the server, ``jobstream db``, the CLI and the worker.

* A **boolean** is one of ``1/0``, ``true/false``, ``yes/no``, ``on/off``, in
  any case; anything else is an error that names the variable.
* A **duration** is seconds, or a number with one unit: ``90``, ``1.5s``,
  ``10m``, ``2h``, ``30d``.
* An **environment fallback** fills a flag that was not given from its
  variable, whose name the flag's ``--help`` line shows; a flag given on the
  command line wins over the variable, which wins over the default. An empty
  variable counts as unset (``JOBSTREAM_X= cmd`` clears a setting for one
  run); a repeatable flag reads a comma-separated variable.

Only the standard library: the client's base install reads settings too.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, Literal, TypeVar

__all__ = [
    "BOOLEAN_WORDS",
    "DURATION_UNITS",
    "ENV_PREFIX",
    "EnvOptions",
    "SettingError",
    "env_bool",
    "env_value",
    "parse_bool",
    "parse_duration",
    "parse_timedelta",
]

ENV_PREFIX = "JOBSTREAM"
"""What every environment variable of jobstream's starts with."""

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
"""Spellings of a true boolean (compared lowercased)."""

FALSE_WORDS = frozenset({"0", "false", "no", "off"})
"""Spellings of a false boolean (compared lowercased)."""

BOOLEAN_WORDS = "1/0, true/false, yes/no, on/off"
"""The boolean spellings, as error messages list them."""

DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
"""Seconds per unit of a duration; no unit means seconds."""

T = TypeVar("T")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
"""A duration: a non-negative decimal number and at most one unit."""


class SettingError(ValueError):
    """A setting's text cannot be read; the message names where it came from."""


def parse_bool(text: str) -> bool:
    """``text`` as a boolean (see the module docstring); ValueError otherwise."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected a boolean ({BOOLEAN_WORDS}), got {text!r}")


def parse_duration(text: str) -> float:
    """``text`` as seconds >= 0: ``90``, ``1.5s``, ``10m``, ``2h`` or ``30d``
    (the unit in any case); ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"expected a duration such as 90, 1.5s, 10m, 2h or 30d, got {text!r}")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def parse_timedelta(text: str) -> timedelta:
    """``text`` as a duration (see :func:`parse_duration`), as a timedelta."""
    return timedelta(seconds=parse_duration(text))


def env_value(
    name: str,
    convert: Callable[[str], T],
    default: T,
    environ: Mapping[str, str] | None = None,
) -> T:
    """The variable ``name`` converted, or ``default`` when it is unset or
    empty. Raises SettingError naming the variable when ``convert`` refuses
    its value."""
    raw = (os.environ if environ is None else environ).get(name, "")
    if not raw.strip():
        return default
    try:
        return convert(raw)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise SettingError(f"{name}={raw!r}: {exc}") from None


def env_bool(name: str, default: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    """The boolean variable ``name`` (``default`` when unset or empty)."""
    return env_value(name, parse_bool, default, environ)


Kind = Literal["value", "list", "flag"]
"""How a flag takes its value: one value, a repeatable one, or a switch."""


@dataclass(frozen=True, kw_only=True, slots=True)
class _Fallback:
    """One flag's environment variable and default, applied after parsing."""

    dest: str
    env: str
    kind: Kind
    default: Any
    convert: Callable[[str], Any]
    separator: str


class EnvOptions:
    """Adds flags to one argparse parser, each with an environment fallback.

    A flag ``--some-thing`` reads ``<prefix>_SOME_THING``. Parse, then call
    :meth:`apply`: it fills each flag that was not given from its variable,
    else from its default, and turns a bad variable into a usage error that
    names it. argparse sees no defaults, so "not given" stays visible.
    """

    def __init__(self, parser: argparse.ArgumentParser, prefix: str = ENV_PREFIX) -> None:
        self.parser = parser
        self.prefix = prefix
        self._fallbacks: list[_Fallback] = []

    def add(
        self,
        *flags: str,
        help: str,
        kind: Kind = "value",
        convert: Callable[[str], Any] = str,
        default: Any = None,
        metavar: str | None = None,
        env: str | None = None,
        separator: str = ",",
        suppress: bool = False,
    ) -> None:
        """Add a flag named ``flags`` with the variable ``env`` (default: the
        prefix and the long flag's name) as its fallback.

        ``suppress`` leaves the attribute off the namespace when the flag is
        not given, so a copy of the flag on a subcommand (options every
        command takes) does not hide one given before the command.
        """
        long_name = next(flag for flag in flags if flag.startswith("--"))
        dest = long_name[2:].replace("-", "_")
        env_name = env or f"{self.prefix}_{dest.upper()}"
        note = f"env {env_name}"
        if kind == "list":
            note += ", comma-separated" if separator == "," else f", {separator!r}-separated"
        if default not in (None, "", [], (), False):
            shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
            note += f"; default {shown}"
        absent: Any = argparse.SUPPRESS if suppress else None
        full_help = f"{help} [{note}]"
        if kind == "flag":
            self.parser.add_argument(
                *flags, dest=dest, action="store_true", default=absent, help=full_help
            )
        else:
            self.parser.add_argument(
                *flags,
                dest=dest,
                type=convert,
                action="append" if kind == "list" else "store",
                default=absent,
                metavar=metavar,
                help=full_help,
            )
        self._fallbacks.append(
            _Fallback(
                dest=dest,
                env=env_name,
                kind=kind,
                default=bool(default) if kind == "flag" else default,
                convert=parse_bool if kind == "flag" else convert,
                separator=separator,
            )
        )

    def apply(
        self,
        args: argparse.Namespace,
        environ: Mapping[str, str] | None = None,
        *,
        parser: argparse.ArgumentParser | None = None,
    ) -> None:
        """Fill every flag missing from ``args`` from ``environ`` (default
        ``os.environ``), then from its default. A variable that cannot be
        read exits with status 2 through ``parser`` (default: the one the
        flags were added to), naming the variable."""
        env = os.environ if environ is None else environ
        for spec in self._fallbacks:
            if getattr(args, spec.dest, None) is not None:
                continue
            try:
                value = env_value(spec.env, partial(_read, spec), spec.default, env)
            except SettingError as exc:
                (parser or self.parser).error(str(exc))
            if isinstance(value, list):
                value = list(value)  # never share a default list between runs
            setattr(args, spec.dest, value)


def _read(spec: _Fallback, raw: str) -> Any:
    if spec.kind == "list":
        parts = (part.strip() for part in raw.split(spec.separator))
        return [spec.convert(part) for part in parts if part]
    return spec.convert(raw)
