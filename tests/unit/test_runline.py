"""``run``'s own command-line reader against argparse: where it reads a line, it reads it as
argparse does; where argparse would complain or a form is unusual, it leaves the line to
argparse."""

from __future__ import annotations

import contextlib
import io
import itertools
import random

import pytest

from ipacctd.cli import main as cli_main
from ipacctd.cli.parser import build_parser
from ipacctd.cli.runline import GLOBAL_OPTIONS, RUN_OPTIONS, parse_run

#: Words a command line is made of: options in every spelling (right and wrong), values
#: (plain, empty, with "=", looking like options), commands and words only argparse knows.
WORDS = (
    "run", "--", "-", "true", "sh", "-c", "-q", "--quiet", "--wait", "--allow-unenforced",
    "-u", "--unit", "--unit=web", "-uweb", "-p", "--property", "--property=IPAccounting=yes",
    "-pIPAccounting=yes", "-p=IPAccounting=yes", "--description", "--description=",
    "--description=a b", "IPAddressDeny=198.51.100.1", "web.service", "x=y", "",
    "--state-dir", "--state-dir=/tmp/st", "--bpf-dir", "--cgroup-root=/c", "--unit-dir",
    "/tmp/st", "-h", "--help", "--version", "--un", "--qui", "-qu", "-qp", "--wait=1",
    "--state", "status", "runx", "-1", "--json",
)  # fmt: skip

PLAIN = (
    ["run", "--", "true"],
    ["run", "-q", "--", "true"],
    ["run", "-q", "-p", "IPAddressDeny=198.51.100.1", "--", "/bin/sh", "-c", "exit 3"],
    ["run", "--unit", "web", "--property=IPAccounting=yes", "--wait", "sleep", "1"],
    ["run", "--unit=web", "--description", "a b", "--allow-unenforced", "--", "-q"],
    ["--state-dir", "/tmp/st", "--bpf-dir=/sys/fs/bpf/x", "run", "-u", "x", "true", "-p", "y"],
    ["--cgroup-root", "/c", "--unit-dir", "/u", "run", "-p", "A=1", "-p", "B=2", "-", "x"],
    ["run", "--quiet", "--", "--", "true"],
)

#: Lines argparse must read (help, mistakes, abbreviations, bundles, no command).
LEFT_TO_ARGPARSE = (
    [], ["run"], ["run", "--"], ["run", "-h"], ["run", "--un", "x", "true"], ["run", "-qu", "x"],
    ["run", "-p"], ["run", "-p", "-q", "true"], ["run", "--wait=1", "true"], ["-h"],
    ["--version"], ["status"], ["--state", "/x", "run", "true"], ["run", "-uweb", "true"],
    ["run", "-p=A=1", "true"], ["run", "--bogus", "true"], ["runx", "true"],
)  # fmt: skip


def _argparse(parser, argv: list[str]) -> dict | None:
    """What argparse makes of ``argv``; None when it exits (a usage error, help)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return vars(parser.parse_args(argv))
        except SystemExit:
            return None


@pytest.fixture(scope="module")
def parsers():
    # main reads a line with the parser of its verb alone; the full one must agree too.
    return build_parser("run"), build_parser()


def _check(parsers, argv: list[str]) -> bool:
    fast = parse_run(argv)
    if fast is None:
        return False
    for parser in parsers:
        assert _argparse(parser, argv) == vars(fast), argv
    return True


def test_plain_lines_are_read_as_argparse_reads_them(parsers) -> None:
    for argv in PLAIN:
        assert _check(parsers, argv), argv


def test_everything_else_is_left_to_argparse() -> None:
    for argv in LEFT_TO_ARGPARSE:
        assert parse_run(argv) is None, argv


def test_generated_lines_agree_with_argparse(parsers) -> None:
    """Every line of up to three words, and 4,000 random ones of up to nine: where the
    reader reads one, argparse reads it the same. A good share must be read (else the
    reader would help nobody)."""
    lines = [["run", *rest] for n in range(3) for rest in itertools.product(WORDS, repeat=n)]
    rng = random.Random(13)
    for _ in range(4000):
        head = rng.choice(([], ["--state-dir", "/tmp/st"], ["--unit-dir=/u"]))
        lines.append([*head, "run", *rng.choices(WORDS, k=rng.randrange(9))])
    read = sum(_check(parsers, argv) for argv in lines)
    assert read > len(lines) // 5, (read, len(lines))


def test_the_parser_is_built_from_the_same_tables(parsers) -> None:
    """Each option in runline's tables is one the parser knows, with the same destination
    (a new option added to the parser alone would be refused by the reader, not misread)."""
    run_parser, _ = parsers
    run_sub = next(a for a in run_parser._subparsers._group_actions)
    sub = run_sub.choices["run"]
    known = {flag: a.dest for a in sub._actions for flag in a.option_strings}
    known.update({f: a.dest for a in run_parser._actions for f in a.option_strings})
    for option in (*GLOBAL_OPTIONS, *RUN_OPTIONS):
        for flag in option.flags:
            assert known[flag] == option.dest, flag
    assert set(known) - {"-h", "--help", "--version"} == {
        f for o in (*GLOBAL_OPTIONS, *RUN_OPTIONS) for f in o.flags
    }


def test_a_plain_run_does_not_import_argparse(tmp_path) -> None:
    """main reads a plain run without argparse; a mistake still gets argparse's message."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from ipacctd.cli import main, run\n"
        "seen = []\n"
        "run.dispatch = lambda args: seen.append(args.command) or 0\n"
        "rc = main.main(sys.argv[1:])\n"
        "print(rc, 'argparse' in sys.modules, seen)\n"
    )
    env_repo = cli_main.__file__.rsplit("/ipacctd/", 1)[0]
    res = subprocess.run(
        [sys.executable, "-c", probe, "run", "-q", "--", "true"],
        capture_output=True, text=True, cwd=env_repo, timeout=60,
    )  # fmt: skip
    assert res.stdout.split(None, 2) == ["0", "False", "[['--', 'true']]\n"], res.stderr
    res = subprocess.run(
        [sys.executable, "-c", probe, "run", "--bogus", "true"],
        capture_output=True, text=True, cwd=env_repo, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2 and "unrecognized arguments: --bogus" in res.stderr, res.stderr
