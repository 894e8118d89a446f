"""``ipacctd completion bash|zsh|fish``: shell completion generated from the argument parser.

The scripts are written by ``shtab`` from the same ``argparse`` parser the CLI runs, so a
verb or option added to :func:`ipacctd.cli.parser.build_parser` completes without anything
written by hand here. What the parser cannot know is filled in by walking it once:

* every positional whose metavar is ``UNIT`` completes the names of the units ipacctd
  knows, asked of ``ipacctd completion --list-units`` (the same binary as the one being
  completed, so ``IPACCTD_STATE_DIR`` and friends apply);
* options naming a directory or a file complete paths.
"""

from __future__ import annotations

import argparse
import sys

SHELLS = ("bash", "zsh", "fish")

#: Metavars whose values are unit names.
UNIT_METAVARS = ("UNIT",)
#: Option destinations that take a directory or a file.
DIRECTORY_DESTS = ("state_dir", "bpf_dir", "unit_dir")
FILE_DESTS = ("config",)

# Shell functions completing unit names. Each asks the ipacctd being completed (the first
# word of the command line) and stays silent when that fails (no permission, no state).
_UNITS = {
    "bash": "_ipacctd_units",
    "zsh": "_ipacctd_units",
    "fish": "(__ipacctd_units)",
}
_PREAMBLE = {
    "bash": """
# the unit names ipacctd knows, for the word being completed
_ipacctd_units() {
  compgen -W "$("${COMP_WORDS[0]}" completion --list-units 2>/dev/null)" -- "$1"
}
""",
    "zsh": """
# the unit names ipacctd knows
_ipacctd_units() {
  local -a units
  units=(${(f)"$(${words[1]} completion --list-units 2>/dev/null)"})
  compadd -a units
}
""",
    "fish": """
# the unit names ipacctd knows
function __ipacctd_units
  set -l ipacctd (commandline -opc)[1]
  $ipacctd completion --list-units 2>/dev/null
end
""",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or fish)",
        description="Print the completion script for SHELL on standard output, e.g. "
        "`ipacctd completion bash > /usr/share/bash-completion/completions/ipacctd`.",
    )
    c.add_argument("shell", nargs="?", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")
    c.add_argument(
        "--list-units",
        action="store_true",
        help="print the names of the units ipacctd knows, one a line (what the "
        "completion scripts call)",
    )


def annotate(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Mark the arguments of every (sub)parser whose values shtab cannot guess."""
    import shtab  # script() has checked that it is there

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                annotate(sub)
        elif not action.option_strings and action.metavar in UNIT_METAVARS:
            action.complete = _UNITS  # type: ignore[attr-defined]
        elif action.dest in DIRECTORY_DESTS:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
        elif action.dest in FILE_DESTS:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
    return parser


def script(shell: str) -> str:
    """The completion script of ``shell`` for the whole command line."""
    try:
        import shtab
    except ImportError as exc:
        from ipacctd.errors import NotSupported

        raise NotSupported(
            "completion scripts need the shtab package: python3 -m pip install shtab"
        ) from exc

    from ipacctd.cli.parser import build_parser

    parser = annotate(build_parser())
    return shtab.complete(parser, shell=shell, preamble=_PREAMBLE)


def dispatch(args: argparse.Namespace) -> int:
    if args.list_units:
        from ipacctd.manager.config import Config
        from ipacctd.manager.store import Store

        config = Config.from_env(
            state_dir=args.state_dir,
            bpf_dir=args.bpf_dir,
            cgroup_root=args.cgroup_root,
            unit_dir=args.unit_dir,
        )
        for name in Store(config).names():
            print(name)
        return 0
    if args.shell is None:
        from ipacctd.errors import InvalidInput

        raise InvalidInput("completion: name a shell (bash, zsh or fish), or --list-units")
    sys.stdout.write(script(args.shell))
    return 0
