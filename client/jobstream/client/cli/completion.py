"""``jobstream completion bash|zsh``: shell completion scripts, generated from
the argparse parser itself so they never fall behind the flags.

Both complete command names, each command's flags (and the common ones),
the values of ``--state`` and ``--status``, the actions of ``jobstream db``,
and, from the server, job ids (where a command takes one) and kinds (for
``submit`` and ``--kind``). For those the script runs ``jobstream __complete
ids|kinds`` with the connection flags typed on the line: one ListJobs of the
newest jobs with a short deadline, printing nothing when the server is down
or slow, so a TAB never hangs or prints errors into the line being typed.

The bash script is plain ``complete -F``; the zsh one is a native
``#compdef`` function built on ``_arguments`` (flags with their
descriptions, values per flag), loadable with ``source <(jobstream
completion zsh)`` or as a file named ``_jobstream`` in ``$fpath``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from jobstream.client.cli.options import build_parser, parse_args
from jobstream.client.models import JobState, ResultStatus

__all__ = [
    "COMPLETE_COMMAND",
    "SHELLS",
    "bash_script",
    "command_flags",
    "complete_values",
    "script",
    "zsh_script",
]

COMPLETE_COMMAND = "__complete"
"""The hidden command the scripts call for values only the server knows."""

SHELLS = ("bash", "zsh")
"""The shells ``jobstream completion`` writes a script for."""

DB_ACTIONS = ("migrate", "check", "backup", "vacuum")
"""What ``jobstream db`` takes (its parser lives in the server package,
which a client-only install does not have)."""

COMPLETION_TIMEOUT = 1.0
"""Seconds a completion may wait for the server: longer feels like a hung
TAB, and a server that slow is as good as down for this."""

COMPLETION_JOBS = 200
"""How many of the newest jobs give the ids and kinds offered."""

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


# ------------------------------------------------------------ the hidden query


def complete_values(argv: Sequence[str]) -> int:
    """``jobstream __complete ids|kinds [--state S]... [connection flags]``:
    print the newest jobs' ids (or their kinds, each once), one a line.

    Prints nothing on any failure (no server, a refused token, bad flags):
    its output becomes the shell's offers, and its status is ignored.
    """
    if not argv or argv[0] not in ("ids", "kinds"):
        return 0
    what, rest = argv[0], list(argv[1:])
    try:
        # ls parses the same filter and connection flags (and their
        # variables); its usage errors are not for the line being typed.
        with contextlib.redirect_stderr(io.StringIO()):
            args = parse_args(["ls", *rest])
        values = _query(what, args)
    except (Exception, SystemExit):
        # A completion must never print errors into the line being typed.
        return 0
    sys.stdout.write("".join(f"{value}\n" for value in values))
    return 0


def _query(what: str, args: argparse.Namespace) -> list[str]:
    from jobstream.client.client import JobClient
    from jobstream.client.security import cli_security

    with JobClient(
        args.target,
        timeout=COMPLETION_TIMEOUT,
        read_retry_timeout=0,
        security=cli_security(args),
    ) as client:
        found = client.list(states=tuple(args.state or ()), page_size=COMPLETION_JOBS)
        jobs = [job for _, job in zip(range(COMPLETION_JOBS), found, strict=False)]
    if what == "ids":
        return [job.id for job in jobs]
    return sorted({job.kind for job in jobs})


# ------------------------------------------------------- what the parser says


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    )


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {choice.dest: choice.help or "" for choice in action._choices_actions}


def command_flags() -> tuple[list[str], dict[str, list[str]]]:
    """The common flags, and each command's flags."""
    parser, _ = build_parser()
    commands = {name: _flags(sub) for name, sub in _subparsers(parser).items()}
    return _flags(parser), commands


def _takes_value(action: argparse.Action) -> bool:
    return bool(action.option_strings) and action.nargs != 0


def _value_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for sub in [parser, *_subparsers(parser).values()]
        for action in sub._actions
        if _takes_value(action)
        for option in action.option_strings
    }


@dataclass(frozen=True, slots=True)
class _Values:
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


def _option_values(command: str, action: argparse.Action) -> _Values:
    if action.dest == "state":
        return _Values(words=tuple(TERMINAL_STATES if command == "purge" else JobState))
    if action.dest == "status":
        return _Values(words=tuple(ResultStatus))
    if action.dest == "kind":
        return _Values(query="kinds")
    if action.dest in FILE_DESTS:
        return _Values(files=True)
    return _Values()


def _positional_values(command: str, action: argparse.Action) -> _Values:
    if action.dest in ("job_id", "job_ids"):
        states = ID_STATES.get(command, ())
        return _Values(query="ids", states=states, repeat=action.dest == "job_ids")
    if action.dest == "kind":
        return _Values(query="kinds")
    if action.dest == "db_argv":
        return _Values(words=DB_ACTIONS)
    if action.choices is not None:
        return _Values(words=tuple(str(choice) for choice in action.choices))
    if action.dest in ("server_argv", "gateway_argv"):
        return _Values(files=True, repeat=True)
    return _Values()


def _positionals(command: str, parser: argparse.ArgumentParser) -> list[_Values]:
    return [_positional_values(command, a) for a in parser._actions if not a.option_strings]


# ------------------------------------------------------------------------ bash


def _bash_query(values: _Values) -> str:
    states = "".join(f" --state {state.value}" for state in values.states)
    return f'_jobstream_reply "$(_jobstream_query {values.query}{states})"'


def _bash_reply(values: _Values) -> str:
    """The bash statement offering ``values`` ("" for none: bash falls back
    to file names)."""
    if values.words:
        return f"_jobstream_reply {shlex.quote(' '.join(values.words))}"
    if values.query:
        return _bash_query(values)
    return ""


def _bash_option_cases(parser: argparse.ArgumentParser) -> str:
    cases: dict[str, str] = {}
    for name, sub in _subparsers(parser).items():
        for action in sub._actions:
            if not _takes_value(action):
                continue
            reply = _bash_reply(_option_values(name, action))
            for option in action.option_strings:
                cases.setdefault(f"{name} {option}", reply or "return")
    lines = [f"        {shlex.quote(key)}) {reply}; return ;;" for key, reply in cases.items()]
    return "\n".join(lines)


def _bash_positional_cases(parser: argparse.ArgumentParser) -> str:
    lines = []
    for name, sub in _subparsers(parser).items():
        positionals = _positionals(name, sub)
        branches = []
        for index, values in enumerate(positionals):
            reply = _bash_reply(values)
            if not reply:
                continue
            pattern = "*" if values.repeat else str(index)
            branches.append(f"{pattern}) {reply} ;;")
        if branches:
            lines.append(
                f"        {shlex.quote(name)}) case $positional in {' '.join(branches)} esac ;;"
            )
    return "\n".join(lines)


def bash_script() -> str:
    """The bash script; ``source <(jobstream completion bash)``."""
    parser, _ = build_parser()
    common, commands = command_flags()
    names = " ".join(commands)
    flag_cases = []
    for name, flags in commands.items():
        flag_cases.append(f"        {shlex.quote(name)}) words={shlex.quote(' '.join(flags))} ;;")
    value_flags = " ".join(sorted(_value_flags(parser)))
    connection = "|".join(CONNECTION_FLAGS)
    connection_eq = "|".join(f"{flag}=*" for flag in CONNECTION_FLAGS)
    return f"""# bash completion for jobstream (generated by `jobstream completion bash`)
_jobstream_query() {{
    # Values only the server knows; the connection flags on the line are
    # passed on. Prints nothing when the server is down.
    local i args=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            {connection}) args+=("${{COMP_WORDS[i]}}" "${{COMP_WORDS[i+1]}}") ;;
            {connection_eq}) args+=("${{COMP_WORDS[i]}}") ;;
        esac
    done
    jobstream {COMPLETE_COMMAND} "$@" "${{args[@]}}" 2>/dev/null
}}
_jobstream_reply() {{
    COMPREPLY=($(compgen -W "$1" -- "$cur"))
}}
_jobstream() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" command="" word words i
    local positional=0 skip=0 value_flags={shlex.quote(f" {value_flags} ")}
    ((COMP_CWORD > 0)) && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        if ((skip)); then
            skip=0  # a flag's value (--target HOST) is neither a command nor an argument
        elif [[ "$word" == -* ]]; then
            [[ "$value_flags" == *" $word "* ]] && skip=1
        elif [[ -z "$command" ]]; then
            [[ " {names} " == *" $word "* ]] && command="$word"
        else
            positional=$((positional + 1))
        fi
    done
    if [[ "$value_flags" == *" $prev "* ]]; then
        case "$command $prev" in
{_bash_option_cases(parser)}
        esac
        return  # a value with nothing to offer: bash's default, file names
    fi
    if [[ -z "$command" ]]; then
        if [[ "$cur" == -* ]]; then
            words={shlex.quote(" ".join(common))}
        else
            words={shlex.quote(names)}
        fi
        _jobstream_reply "$words"
        return
    fi
    if [[ "$cur" == -* ]]; then
        case "$command" in
{chr(10).join(flag_cases)}
            *) words="" ;;
        esac
        _jobstream_reply "$words {" ".join(common)}"
        return
    fi
    case "$command" in
{_bash_positional_cases(parser)}
    esac
}}
complete -o default -F _jobstream jobstream
"""


# ------------------------------------------------------------------------- zsh

_ENV_NOTE = re.compile(r"\s*\[env [^\]]*\]$")
"""The ``[env JOBSTREAM_…]`` note at the end of every flag's help."""


def _zsh_quote(text: str) -> str:
    """``text`` as one single-quoted zsh word."""
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_help(text: str | None) -> str:
    """A description for an ``_arguments`` spec: one line, without the
    environment note, and with the characters that end a spec part escaped."""
    plain = _ENV_NOTE.sub("", " ".join((text or "").split()))
    return re.sub(r"([\[\]:\\])", r"\\\1", plain)


def _zsh_action(values: _Values) -> str:
    if values.words:
        return "(" + " ".join(values.words) + ")"
    if values.query == "kinds":
        return "_jobstream_kinds"
    if values.query == "ids":
        # The {…} form: _arguments adds no compadd options to its words,
        # which name the states.
        return "{_jobstream_ids" + "".join(f" {s.value}" for s in values.states) + "}"
    if values.files:
        return "_files"
    return " "


def _zsh_option_specs(command: str, parser: argparse.ArgumentParser) -> list[str]:
    specs = []
    for action in parser._actions:
        options = action.option_strings
        if not options:
            continue
        description = _zsh_help(action.help)
        repeat = "*" if isinstance(action, argparse._AppendAction) else ""
        value = ""
        if _takes_value(action):
            metavar = _zsh_help(str(action.metavar or action.dest.upper()))
            value = f":{metavar}:{_zsh_action(_option_values(command, action))}"
        if len(options) == 1:
            specs.append(_zsh_quote(f"{repeat}{options[0]}[{description}]{value}"))
        else:
            # (-p --param)-style exclusion unless the flag repeats.
            group = "" if repeat else "(" + " ".join(options) + ")"
            names = "{" + ",".join(options) + "}"
            specs.append(
                _zsh_quote(f"{group}{repeat}") + names + _zsh_quote(f"[{description}]{value}")
            )
    return specs


def _zsh_positional_specs(command: str, parser: argparse.ArgumentParser) -> list[str]:
    specs = []
    for index, (action, values) in enumerate(
        (a, _positional_values(command, a)) for a in parser._actions if not a.option_strings
    ):
        label = _zsh_help(str(action.metavar or action.dest))
        position = "*" if values.repeat else str(index + 1)
        specs.append(_zsh_quote(f"{position}:{label}:{_zsh_action(values)}"))
    return specs


def zsh_script() -> str:
    """The zsh script: ``source <(jobstream completion zsh)`` after
    ``compinit``, or saved as ``_jobstream`` in a directory of ``$fpath``."""
    parser, _ = build_parser()
    subparsers = _subparsers(parser)
    helps = _helps(parser)
    # The top-level parser's own flags: the common ones and --version, --help.
    top = " \\\n        ".join(_zsh_option_specs("", parser))
    described = "\n".join(
        "        " + _zsh_quote(name + ":" + helps.get(name, "").replace(":", "\\:"))
        for name in subparsers
    )
    cases = []
    for name, sub in subparsers.items():
        specs = [*_zsh_option_specs(name, sub), *_zsh_positional_specs(name, sub)]
        body = " \\\n                    ".join(specs)
        cases.append(
            f"            {name})\n"
            f"                _arguments -s -S \\\n                    {body} && ret=0 ;;"
        )
    connection = "|".join(CONNECTION_FLAGS)
    connection_eq = "|".join(f"{flag}=*" for flag in CONNECTION_FLAGS)
    return f"""#compdef jobstream
# zsh completion for jobstream (generated by `jobstream completion zsh`)

_jobstream_query() {{
    # Values only the server knows, for the server the line's connection
    # flags name. Prints nothing when the server is down.
    local i
    local -a args
    for (( i = 1; i <= $#_jobstream_line; i++ )); do
        case $_jobstream_line[i] in
            {connection}) args+=($_jobstream_line[i] $_jobstream_line[i+1]) ;;
            {connection_eq}) args+=($_jobstream_line[i]) ;;
        esac
    done
    _call_program jobstream-query jobstream {COMPLETE_COMMAND} "$@" "${{(@)args}}" 2>/dev/null
}}

_jobstream_ids() {{
    # Arguments: the states the jobs offered must be in (none: any).
    local -a ids query expl
    local state
    for state in "$@"; do
        query+=(--state $state)
    done
    ids=(${{(f)"$(_jobstream_query ids $query)"}})
    _wanted job-ids expl 'job id' compadd -a ids
}}

_jobstream_kinds() {{
    local -a kinds expl
    kinds=(${{(f)"$(_jobstream_query kinds)"}})
    _wanted kinds expl 'job kind' compadd "$@" -a kinds
}}

_jobstream_commands() {{
    local -a commands
    commands=(
{described}
    )
    _describe -t commands 'jobstream command' commands
}}

_jobstream() {{
    local curcontext="$curcontext" state state_descr line ret=1
    local -a _jobstream_line
    typeset -A opt_args
    _jobstream_line=("${{(@)words}}")
    _arguments -C \\
        {top} \\
        '1: :_jobstream_commands' \\
        '*:: :->command' && ret=0
    if [[ $state == command ]]; then
        curcontext="${{curcontext%:*:*}}:jobstream-$words[1]:"
        case $words[1] in
{chr(10).join(cases)}
        esac
    fi
    return ret
}}

if [[ $funcstack[1] == _jobstream ]]; then
    # Autoloaded from $fpath as _jobstream: this file is the function.
    _jobstream "$@"
else
    # Sourced (source <(jobstream completion zsh)): register the function.
    compdef _jobstream jobstream
fi
"""


SCRIPTS: Mapping[str, Callable[[], str]] = {"bash": bash_script, "zsh": zsh_script}
"""Each shell's script."""


def script(shell: str) -> str:
    """The completion script for ``shell`` (one of SHELLS)."""
    return SCRIPTS[shell]()
