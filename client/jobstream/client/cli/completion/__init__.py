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

from collections.abc import Callable, Mapping

from jobstream.client.cli.completion.bash import bash_script
from jobstream.client.cli.completion.query import complete_values
from jobstream.client.cli.completion.words import COMPLETE_COMMAND, command_flags
from jobstream.client.cli.completion.zsh import zsh_script

__all__ = [
    "COMPLETE_COMMAND",
    "SCRIPTS",
    "SHELLS",
    "bash_script",
    "command_flags",
    "complete_values",
    "script",
    "zsh_script",
]

SCRIPTS: Mapping[str, Callable[[], str]] = {"bash": bash_script, "zsh": zsh_script}
"""Each shell's script."""


def script(shell: str) -> str:
    """The completion script for ``shell`` (one of SHELLS)."""
    return SCRIPTS[shell]()


SHELLS = tuple(SCRIPTS)
"""The shells ``jobstream completion`` writes a script for."""
