"""The manual pages in man/: what ipacctd.cli.manpage writes from the parser and the property
table now, rendered by groff and man without a warning, naming every command, option and
property."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ipacctd.cli.manpage import pages
from ipacctd.cli.parser import build_parser
from ipacctd.policy.properties import PROPERTIES

MAN = Path(__file__).resolve().parents[2] / "man"


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is missing: apt-get install groff-base man-db")


def render(path: Path) -> str:
    need("man")
    res = subprocess.run(
        ["man", "--warnings", "-l", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "100", "MANPAGER": "cat", "LC_ALL": "C.UTF-8"},
        timeout=30,
        check=False,
    )
    assert res.returncode == 0 and not res.stderr, (path, res.stderr)
    return res.stdout


def test_pages_are_up_to_date() -> None:
    for name, text in pages().items():
        assert (MAN / name).read_text() == text, (
            f"man/{name} is stale: run `python3 -m ipacctd.cli.manpage man/`"
        )


def test_groff_finds_nothing_to_warn_about() -> None:
    need("groff")
    for name in pages():
        res = subprocess.run(
            ["groff", "-ww", "-man", "-z", str(MAN / name)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert res.returncode == 0 and not res.stderr, (name, res.stderr)


def test_ipacctd_1_names_every_command_and_option() -> None:
    text = render(MAN / "ipacctd.1")
    assert text.startswith("IPACCTD(1)")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for verb, vp in sub.choices.items():
        assert re.search(rf"^ {{7}}{re.escape(verb)}\b", text, re.M), verb
        for action in vp._actions:
            for opt in action.option_strings:
                if opt not in ("-h", "--help"):
                    assert opt in text, (verb, opt)
    for name in PROPERTIES:
        assert f"{name}=" in text, name
    for section in ("SYNOPSIS", "COMMANDS", "GLOBAL OPTIONS", "ENVIRONMENT", "EXIT STATUS"):
        assert f"\n{section}\n" in text, section
    assert "IPACCTD_STATE_DIR" in text and "ipacctd.unit(5)" in text


def test_ipacctd_unit_5_describes_the_file_format() -> None:
    text = render(MAN / "ipacctd.unit.5")
    assert text.startswith("IPACCTD.UNIT(5)")
    for section in ("[UNIT] SECTION", "[MATCH] SECTION", "[SERVICE] SECTION"):
        assert f"\n{section}\n" in text, section
    assert "ControlGroup=" in text and "Description=" in text
    service = text.split("[SERVICE] SECTION")[1]
    for name in PROPERTIES:
        if name != "Description":
            assert f"{name}=" in service, name
    # The example parses as a unit file, with the properties it shows.
    from ipacctd.policy.unitfile import parse_unit_file

    example = text.split("\nEXAMPLE\n")[1].split("\nSEE ALSO\n")[0]
    example = "\n".join(line[7:] for line in example.splitlines())
    unit = parse_unit_file(example, name="web")
    assert unit.cgroups == ("/system.slice/nginx.service",)
    assert str(unit.properties().ip_address_allow) == "203.0.113.7/32"
