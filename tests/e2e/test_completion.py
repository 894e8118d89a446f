"""``ipacctd completion bash|zsh|fish``: the scripts parse in their shells, and bash (and fish)
complete verbs, options and the names of the units a real installation holds.

Completion is driven the way the shells drive it: bash gets ``COMP_WORDS``/``COMP_CWORD``
and calls the function ``complete -p ipacctd`` names; fish answers ``complete -C``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import REPO, Installation

pytestmark = pytest.mark.kernel

VERBS = {"run", "status", "list-units", "show", "set-property", "stop", "reset", "inspect"}


def script(inst: Installation, shell: str) -> str:
    return inst.ok("completion", shell).stdout


@pytest.fixture
def shell_env(inst: Installation, tmp_path: Path) -> dict[str, str]:
    """An ``ipacctd`` on PATH running this checkout against the installation, and a unit."""
    inst.ok("run", "--unit", "web", "--", "true")
    inst.ok("run", "--unit", "worker", "--", "true")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ipacctd"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m ipacctd "$@"\n')
    wrapper.chmod(0o755)
    env = inst.environ({"PYTHONPATH": REPO, "HOME": str(tmp_path)})
    env["PATH"] = f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return env


BASH_DRIVER = r"""
source "$1"
spec=$(complete -p ipacctd) || exit 3
fn=$(sed -E 's/.* -F ([^ ]+) .*/\1/' <<<"$spec")
read -r -a COMP_WORDS <<<"$2"
[[ "$2" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="$2"
COMP_POINT=${#COMP_LINE}
"$fn" ipacctd "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def bash_complete(path: Path, line: str, env: dict[str, str]) -> set[str]:
    res = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", BASH_DRIVER, "driver", str(path), line],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, (line, res.stdout, res.stderr)
    return {w.strip() for w in res.stdout.splitlines() if w.strip()}


def test_scripts_parse(inst: Installation, tmp_path: Path) -> None:
    shells = {"bash": ["bash", "-n"], "zsh": ["zsh", "-n"], "fish": ["fish", "--no-execute"]}
    for shell, check in shells.items():
        if shutil.which(check[0]) is None:
            pytest.fail(f"{check[0]} is missing: apt-get install {check[0]}")
        path = tmp_path / f"ipacctd.{shell}"
        text = script(inst, shell)
        path.write_text(text)
        res = subprocess.run(
            [*check, str(path)], capture_output=True, text=True, timeout=30, check=False
        )
        assert res.returncode == 0 and not res.stderr, (shell, res.stderr)
        for verb in VERBS:  # generated from the parser: every verb is in every script
            assert verb in text, (shell, verb)


def test_bash_completes_verbs_options_and_units(
    inst: Installation, shell_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "ipacctd.bash"
    path.write_text(script(inst, "bash"))
    assert VERBS | {"completion", "daemon", "top"} <= bash_complete(path, "ipacctd ", shell_env)
    assert bash_complete(path, "ipacctd sta", shell_env) == {"status"}
    assert bash_complete(path, "ipacctd list-", shell_env) == {"list-units", "list-unit-files"}
    assert bash_complete(path, "ipacctd is-", shell_env) == {"is-active", "is-failed"}
    # unit names, from the installation (a name that is not there is never offered)
    assert bash_complete(path, "ipacctd status ", shell_env) == {"web.service", "worker.service"}
    assert bash_complete(path, "ipacctd show w", shell_env) == {"web.service", "worker.service"}
    assert bash_complete(path, "ipacctd stop wo", shell_env) == {"worker.service"}
    assert bash_complete(path, "ipacctd is-active wo", shell_env) == {"worker.service"}
    assert bash_complete(path, "ipacctd kill -s TERM we", shell_env) == {"web.service"}
    assert bash_complete(path, "ipacctd inspect x", shell_env) == set()
    # a verb's own options, and a positional's choices
    assert {"--property", "--value", "--json"} <= bash_complete(
        path, "ipacctd show web.service --", shell_env
    )
    assert bash_complete(path, "ipacctd completion ", shell_env) >= {"bash", "zsh", "fish"}
    # the unit list follows the installation
    inst.ok("reset", "worker.service")
    assert bash_complete(path, "ipacctd status ", shell_env) == {"web.service"}


def test_fish_completes_units(inst: Installation, shell_env: dict[str, str], tmp_path) -> None:
    if shutil.which("fish") is None:
        pytest.fail("fish is missing: apt-get install fish")
    path = tmp_path / "ipacctd.fish"
    path.write_text(script(inst, "fish"))

    def complete(line: str) -> set[str]:
        res = subprocess.run(
            ["fish", "--no-config", "-c", f"source {path}; complete -C '{line}'"],
            capture_output=True,
            text=True,
            env=shell_env,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, (line, res.stderr)
        return {w.split("\t")[0] for w in res.stdout.splitlines()}

    assert "status" in complete("ipacctd sta")
    assert complete("ipacctd status ") == {"web.service", "worker.service"}


def test_list_units_is_the_installations(inst: Installation) -> None:
    assert inst.ok("completion", "--list-units").stdout == ""
    inst.ok("run", "--unit", "web", "--", "true")
    assert inst.ok("completion", "--list-units").stdout == "web.service\n"
    res = inst.cli("completion")
    assert res.returncode == 2 and "name a shell" in res.stderr
