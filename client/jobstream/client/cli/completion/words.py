"""What the completion scripts complete, read from the ``jobstream`` parser:
commands, their flags, which flags take a value, and what each value or
argument completes to."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

from jobstream.client.cli.options import build_parser
from jobstream.client.models import JobState, ResultStatus

__all__ = [
    "COMPLETE_COMMAND",
    "CONNECTION_FLAGS",
    "Values",
    "command_flags",
    "command_helps",
    "commands_of",
    "flags_taking_values",
    "long_flags",
    "option_values",
    "positional_values",
    "positionals_of",
    "takes_value",
]

COMPLETE_COMMAND = "__complete"
"""The hidden command the scripts call for values only the server knows."""

DB_ACTIONS = ("migrate", "check", "backup", "restore", "vacuum")
"""What ``jobstream db`` takes (its parser lives in the server package,
which a client-only install does not have)."""

CONNECTION_FLAGS = ("--target", "--token", "--ca", "--cert", "--key")
"""Flags on the line being completed that the query passes on, so it asks
the server the command will talk to."""

ID_STATES: Mapping[str, tuple[JobState, ...]] = {
    "cancel": (JobState.QUEUED, JobState.RUNNING),
    "retry": (JobState.FAILED, JobState.INTERRUPTED, JobState.CANCELLED),
}
"""Commands that only make sense for jobs in some states: only those ids
are offered."""

TERMINAL_STATES = tuple(state for state in JobState if state.terminal)
"""The states ``purge --state`` accepts."""

FILE_DESTS = frozenset({"output", "ca", "cert", "key", "files_root"})
"""Flags whose value is a file or directory."""


def long_flags(parser: argparse.ArgumentParser) -> list[str]:
    """The ``--long`` flags ``parser`` takes, sorted."""
    return sorted(
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    )


def commands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's parser, by name, in the order of ``--help``."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def command_helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each command's one-line help, by name."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {choice.dest: choice.help or "" for choice in action._choices_actions}


def command_flags() -> tuple[list[str], dict[str, list[str]]]:
    """The common flags, and each command's flags."""
    parser, _ = build_parser()
    commands = {name: long_flags(sub) for name, sub in commands_of(parser).items()}
    return long_flags(parser), commands


def takes_value(action: argparse.Action) -> bool:
    """Whether ``action`` is a flag followed by a value."""
    return bool(action.option_strings) and action.nargs != 0


def flags_taking_values(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag, of any command, that is followed by a value."""
    return {
        option
        for sub in [parser, *commands_of(parser).values()]
        for action in sub._actions
        if takes_value(action)
        for option in action.option_strings
    }


@dataclass(frozen=True, slots=True)
class Values:
    """What a flag's value or a positional argument completes to: fixed
    words, the server's job ids (of some states) or kinds, files, or nothing."""

    words: tuple[str, ...] = ()
    query: str = ""
    """``ids`` or ``kinds``: asked of the server."""
    states: tuple[JobState, ...] = ()
    """For ``ids``: only jobs in these states."""
    files: bool = False
    repeat: bool = False
    """A positional taking any number of values (``rm ID...``)."""


def option_values(command: str, action: argparse.Action) -> Values:
    """What the value of flag ``action`` of ``command`` completes to."""
    if action.dest == "state":
        return Values(words=tuple(TERMINAL_STATES if command == "purge" else JobState))
    if action.dest == "status":
        return Values(words=tuple(ResultStatus))
    if action.dest == "kind":
        return Values(query="kinds")
    if action.dest in FILE_DESTS:
        return Values(files=True)
    return Values()


def positional_values(command: str, action: argparse.Action) -> Values:
    """What positional argument ``action`` of ``command`` completes to."""
    if action.dest in ("job_id", "job_ids"):
        states = ID_STATES.get(command, ())
        return Values(query="ids", states=states, repeat=action.dest == "job_ids")
    if action.dest == "kind":
        return Values(query="kinds")
    if action.dest == "db_argv":
        return Values(words=DB_ACTIONS)
    if action.choices is not None:
        return Values(words=tuple(str(choice) for choice in action.choices))
    if action.dest in ("server_argv", "gateway_argv"):
        return Values(files=True, repeat=True)
    return Values()


def positionals_of(command: str, parser: argparse.ArgumentParser) -> list[Values]:
    """What each positional argument of ``command`` completes to, in order."""
    return [positional_values(command, a) for a in parser._actions if not a.option_strings]
