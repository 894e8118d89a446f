"""The terminal as systemctl treats it: colours, the pager and the width in a real
pseudo-terminal (tmux), plain text into a pipe.

A private tmux server (its own socket) runs a bash in a 120x12 window with an isolated
installation's environment; commands are typed into it and the screen is read back with
``capture-pane`` (``-e``: with the colour sequences as the terminal received them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from e2e_helpers import Installation
from support import wait_for

WIDTH, HEIGHT = 120, 12
#: A command whose description (its command line) has a newline and a tab in it.
LONG = [
    "/bin/sh",
    "-c",
    "exec /bin/sleep 600 # line one\nline two\tand a long long long "
    "long long long long long long long tail",
]
PAGER_VARS = (
    "PAGER",
    "SYSTEMD_PAGER",
    "SYSTEMD_LESS",
    "LESS",
    "NO_COLOR",
    "SYSTEMD_COLORS",
    "COLUMNS",
    "LINES",
)


class Tmux:
    def __init__(self, env: dict[str, str]) -> None:
        if shutil.which("tmux") is None or shutil.which("less") is None:
            pytest.fail("tmux and less are needed: apt-get install tmux less")
        self.sock = f"ipacctd-test-{uuid.uuid4().hex[:8]}"
        self.env = {k: v for k, v in env.items() if k not in PAGER_VARS}
        self.env.update(TERM="xterm-256color", HOME=os.environ.get("HOME", "/root"))
        self.n = 0
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        self.tmux(
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            str(WIDTH),
            "-y",
            str(HEIGHT),
            "bash --norc --noprofile",
        )
        self.tmux("set-option", "-g", "status", "off")
        wait_for(lambda: self.screen().strip(), 15, "the shell's prompt")
        self.keys("PS1='$ '; clear", "Enter")  # bash takes no PS1 from the environment
        wait_for(lambda: self.screen().strip() == "$", 15, "the shell's own prompt")

    def tmux(self, *args: str) -> str:
        res = subprocess.run(
            ["tmux", "-L", self.sock, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert res.returncode == 0, (args, res.stderr)
        return res.stdout

    def screen(self, escapes: bool = False) -> str:
        # -J: a line the terminal wrapped comes back as the one line that was printed
        return self.tmux("capture-pane", "-p", "-J", "-t", "t", *(["-e"] if escapes else []))

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def run(self, line: str, escapes: bool = False) -> str:
        """Type ``line``, wait for it to finish; what it printed on the screen."""
        self.tmux("send-keys", "-t", "t", "clear", "Enter")
        wait_for(lambda: self.screen().strip() == "$", 15, "a clear screen")
        self.n += 1
        mark = f"END-{self.n}"
        self.keys(f"{line}; echo {mark}", "Enter")
        wait_for(lambda: f"\n{mark}" in self.screen(), 30, f"{line!r} to finish")
        _typed, _, shown = self.screen(escapes).split(f"\n{mark}")[0].partition("\n")
        return shown

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.sock, "kill-server"],
            env=self.env,
            capture_output=True,
            timeout=30,
            check=False,
        )


@pytest.fixture(scope="module")
def term(tmp_path_factory) -> Iterator[tuple[Tmux, Installation]]:
    with Installation(tmp_path_factory.mktemp("term")) as inst:
        ns = inst.netns([])
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        for unit, argv in (("ux-a", ["/bin/sleep", "600"]), ("ux-long", LONG)):
            ns.popen(
                inst.argv("run", "-q", "--unit", unit, "--", *argv),
                env=inst.env,
                **quiet,
            )
        assert inst.cli("run", "-q", "--unit", "ux-f", "--", "/bin/false", ns=ns).returncode == 1
        for unit in ("ux-a", "ux-long"):
            wait_for(lambda u=unit: inst.cli("is-active", u).returncode == 0, 30, unit)
        env = {**inst.env, "PATH": os.environ["PATH"]}
        tmux = Tmux(env)
        try:
            # the ipacctd of this tree, by its short name, in the shell
            tmux.run(f'ipacctd() {{ {" ".join(inst.argv())} "$@"; }}')
            yield tmux, inst
        finally:
            tmux.close()
            for unit in ("ux-a", "ux-long"):
                inst.cli("stop", unit)


def test_list_units_on_a_terminal_is_cut_to_its_width_and_coloured(term) -> None:
    tmux, _ = term
    shown = tmux.run("ipacctd list-units --all --no-pager")
    rows = shown.splitlines()
    assert rows[0].split()[:3] == ["UNIT", "ACTIVE", "SUB"], shown
    assert all(len(r) <= WIDTH for r in rows), shown
    (long_row,) = [r for r in rows if "ux-long.service" in r]
    assert long_row.endswith("…") and "line one\\nline two\\tand" in long_row, shown
    assert not any(r.startswith("line two") for r in rows), shown  # no row broken in two
    assert any(r.split()[:4] == ["●", "ux-f.service", "failed", "failed"] for r in rows), shown
    coloured = tmux.run("ipacctd list-units --all --no-pager", escapes=True)
    (failed,) = [r for r in coloured.splitlines() if "ux-f.service" in r]
    assert "\x1b[1m\x1b[31m" in failed or "\x1b[1;31m" in failed, repr(failed)
    # -l/--full: not cut (the terminal wraps the long row instead)
    full = tmux.run("ipacctd list-units --all --no-pager --full")
    assert "…" not in full and "long tail" in full.replace("\n", ""), full


def test_status_on_a_terminal_is_coloured_and_the_switches_turn_colour_off(term) -> None:
    tmux, _ = term
    on = tmux.run("ipacctd status --no-pager ux-a", escapes=True)
    assert "\x1b[" in on and "active (running)" in on, repr(on)
    for switch in ("NO_COLOR=1", "SYSTEMD_COLORS=0", "TERM=dumb"):
        off = tmux.run(f"{switch} ipacctd status --no-pager ux-a", escapes=True)
        assert "\x1b[" not in off and "active (running)" in off, (switch, repr(off))
    forced = tmux.run("SYSTEMD_COLORS=1 ipacctd status ux-f | cat -v")
    assert "^[[0;1;31m" in forced and "failed^[[0m (Result: exit-code)" in forced, forced


def test_a_long_view_goes_through_less_as_systemctl_starts_it(term) -> None:
    tmux, _ = term
    tmux.tmux("send-keys", "-t", "t", "clear", "Enter")
    wait_for(lambda: tmux.screen().strip() == "$", 15, "a clear screen")
    tmux.keys("ipacctd status ux-a ux-f ux-long; echo PAGED-DONE", "Enter")
    # less -M's long prompt names the lines shown: the pager holds the screen
    wait_for(lambda: "lines 1-" in tmux.screen(), 30, "less and its prompt")
    assert "PAGED-DONE" not in tmux.screen()
    tmux.keys("q")
    wait_for(lambda: "\nPAGED-DONE" in tmux.screen(), 30, "less to quit")
    # the environment less got: LESS=$SYSTEMD_LESS, default FRSXMK
    seen = tmux.run("SYSTEMD_PAGER='printenv LESS; cat >/dev/null' ipacctd status ux-a")
    assert seen.strip() == "FRSXMK", seen
    seen = tmux.run(
        "SYSTEMD_LESS=FR SYSTEMD_PAGER='printenv LESS; cat >/dev/null' ipacctd list-units"
    )
    assert seen.strip() == "FR", seen
    seen = tmux.run("PAGER='echo VIA-PAGER; cat >/dev/null' ipacctd show ux-a")
    assert seen.strip() == "VIA-PAGER", seen


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", "--no-pager"),
        ("SYSTEMD_PAGER=cat", ""),
        ("SYSTEMD_PAGER=", ""),
        ("PAGER=cat", ""),
        ("TERM=dumb", ""),
        ("unset TERM;", ""),
    ],
)
def test_no_pager(term, before: str, after: str) -> None:
    """Also none on a dumb terminal (TERM unset or dumb, as systemd's terminal_is_dumb()):
    a script on a pty, an editor's shell — ``more`` would stop there at ``--More--``."""
    tmux, _ = term
    line = f"{before} ipacctd status ux-a ux-f ux-long {after}".strip()
    if before.startswith("unset"):
        line = f"({line})"  # the shell's own TERM stays
    shown = tmux.run(line)
    assert "lines 1-" not in shown and "--More--" not in shown, shown
    assert "ux-long.service" in shown, shown


def test_a_pipe_gets_plain_whole_lines(term) -> None:
    _, inst = term
    for argv in (["list-units", "--all"], ["status", "ux-f", "ux-long"]):
        res = inst.cli(*argv)  # stdout is a pipe
        assert "\x1b" not in res.stdout and "…" not in res.stdout, res.stdout
    listed = inst.cli("list-units", "--all").stdout
    (row,) = [r for r in listed.splitlines() if "ux-long.service" in r]
    assert row.endswith(
        "line one\\nline two\\tand a long long long long long long long long long long tail"
    ), row


#: An editor that writes an invalid file the first time and a valid one after.
TWO_TRIES = """#!/bin/sh
n=$(cat "$0.count" 2>/dev/null || echo 0); echo $((n + 1)) > "$0.count"
if [ "$n" = 0 ]; then deny=198.51.100.300; else deny=198.51.100.3; fi
printf '[Unit]\\nDescription=tries\\n[Service]\\nIPAddressDeny=%s\\n' "$deny" > "$1"
"""


@pytest.mark.parametrize("answer", ["y", "n"])
def test_edit_offers_to_edit_again_on_a_terminal(term, tmp_path, answer: str) -> None:
    tmux, inst = term
    editor = tmp_path / "two-tries.sh"
    editor.write_text(TWO_TRIES)
    editor.chmod(0o755)
    name = f"tries-{answer}"
    unit_file = os.path.join(inst.unit_dir, f"{name}.unit")
    tmux.tmux("send-keys", "-t", "t", "clear", "Enter")
    wait_for(lambda: tmux.screen().strip() == "$", 15, "a clear screen")
    tmux.keys(f"EDITOR={editor} ipacctd edit --force {name}; echo EDIT-DONE-$?", "Enter")
    wait_for(lambda: "Edit again? [Y/n]" in tmux.screen(), 30, "the offer to edit again")
    assert "invalid address '198.51.100.300'" in tmux.screen()
    assert not os.path.exists(unit_file)  # nothing saved yet
    tmux.keys(answer, "Enter")
    wait_for(lambda: "\nEDIT-DONE-" in tmux.screen(), 30, "edit to end")
    if answer == "y":
        assert "\nEDIT-DONE-0" in tmux.screen(), tmux.screen()
        with open(unit_file) as f:
            assert "IPAddressDeny=198.51.100.3\n" in f.read()
        os.unlink(unit_file)
    else:
        assert "\nEDIT-DONE-1" in tmux.screen() and not os.path.exists(unit_file), tmux.screen()
    assert not [p for p in os.listdir(inst.unit_dir) if p.startswith(".#")]
