"""systemctl habits, checked against systemctl itself.

The same three units are made on both sides — in a real systemd 252 (systemd-ref) and in an
isolated ipacctd installation, the ipacctd ones inside a private network namespace:

* ``ux-a``: IPAddressDeny=198.51.100.1, pings 127.0.0.1 once (84B each way), then sleeps;
* ``ux-f``: ``/bin/false`` (failed, Result: exit-code);
* ``ux-s``: ``/bin/sleep 600`` killed with ``kill -s KILL`` (failed, Result: signal) — on
  systemd's side with ``systemctl kill``, on ipacctd's with ``ipacctd kill``.

Then every case of :data:`CASES` runs as ``systemctl ARGS`` inside systemd-ref and as
``ipacctd ARGS``, and what systemctl printed and returned is the expected result: nothing
of systemd's output is written into this file. Each case names how the two are compared:
byte for byte, or — where ipacctd's view has other columns (list-units) or systemd prints
what ipacctd has no notion of (``CPU:``, the journal) — on the lines both have, with PIDs and
times made equal.

The cases systemd 252 does not have (``--json=MODE``, which its systemctl refuses; the
pager and colours on a terminal) are checked in :mod:`test_terminal`.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import sdref
from e2e_helpers import Installation
from support import wait_for

SH_A = "ping -c1 -W1 127.0.0.1 >/dev/null; exec /bin/sleep 600"


@dataclass
class Side:
    """How one side runs a command: ``(argv, env) -> CompletedProcess``."""

    run: Callable[[list[str], dict[str, str]], subprocess.CompletedProcess]


@dataclass
class Both:
    systemd: Side
    ipacctd: Side
    inst: Installation


def _sd_wait(ref: sdref.Ref, unit: str, predicate: Callable[[dict[str, str]], bool]) -> None:
    def props() -> dict[str, str]:
        out = ref.run(["systemctl", "show", "-p", "ActiveState,MainPID", unit]).stdout
        return dict(ln.split("=", 1) for ln in out.splitlines() if "=" in ln)

    wait_for(lambda: predicate(props()), 30, f"{unit} in systemd-ref")


def _comm(ref: sdref.Ref | None, pid: str) -> str:
    argv = ["cat", f"/proc/{pid}/comm"]
    if ref is None:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
    return ref.run(argv).stdout.strip()


def _make_systemd_units(ref: sdref.Ref) -> None:
    run = ["systemd-run", "-q", "-p", "IPAccounting=yes"]
    for argv in (
        [*run, "--unit=ux-a", "-p", "IPAddressDeny=198.51.100.1", "--", "/bin/sh", "-c", SH_A],
        [*run, "--unit=ux-f", "--", "/bin/false"],
        [*run, "--unit=ux-s", "--", "/bin/sleep", "600"],
    ):
        res = ref.run(argv)
        assert res.returncode == 0, res
    _sd_wait(
        ref, "ux-a", lambda p: p.get("MainPID", "0") != "0" and _comm(ref, p["MainPID"]) == "sleep"
    )
    _sd_wait(ref, "ux-s", lambda p: p.get("MainPID", "0") != "0")
    assert ref.run(["systemctl", "kill", "-s", "KILL", "ux-s"]).returncode == 0
    _sd_wait(ref, "ux-s", lambda p: p.get("ActiveState") == "failed")
    _sd_wait(ref, "ux-f", lambda p: p.get("ActiveState") == "failed")


def _make_ipacctd_units(inst: Installation) -> None:
    ns = inst.netns([])
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    ns.popen(
        inst.argv(
            "run",
            "-q",
            "--unit",
            "ux-a",
            "-p",
            "IPAddressDeny=198.51.100.1",
            "--",
            "/bin/sh",
            "-c",
            SH_A,
        ),
        env=inst.env,
        **quiet,
    )
    ns.popen(
        inst.argv("run", "-q", "--unit", "ux-s", "--", "/bin/sleep", "600"), env=inst.env, **quiet
    )
    assert inst.cli("run", "-q", "--unit", "ux-f", "--", "/bin/false", ns=ns).returncode == 1

    def main_pid(unit: str) -> str:
        return inst.cli("show", "-P", "MainPID", unit).stdout.strip() or "0"

    wait_for(
        lambda: main_pid("ux-a") != "0" and _comm(None, main_pid("ux-a")) == "sleep",
        30,
        "ux-a to sleep",
    )
    wait_for(lambda: main_pid("ux-s") != "0", 30, "ux-s to run")
    inst.ok("kill", "-s", "KILL", "ux-s")
    wait_for(
        lambda: inst.cli("show", "-P", "ActiveState", "ux-s").stdout.strip() == "failed",
        30,
        "ux-s to fail",
    )


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> Iterator[Both]:
    script = sdref.script("nsenter", "ping")
    with Installation(tmp_path_factory.mktemp("habits")) as inst:
        _make_ipacctd_units(inst)
        with sdref.scratch("habits") as root, sdref.locked(), sdref.running(script):
            ref = sdref.Ref(script, root)
            _make_systemd_units(ref)

            def systemctl(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
                pre = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
                return ref.run([*pre, "systemctl", *argv])

            def ipacctd(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
                return inst.cli(*argv, env=env)

            yield Both(Side(systemctl), Side(ipacctd), inst)
        for unit in ("ux-a", "ux-s"):
            inst.cli("stop", unit)


# -- comparisons: what of the output must be equal -------------------------------------------


def exact(res: subprocess.CompletedProcess) -> tuple:
    return res.returncode, res.stdout, res.stderr


def sorted_lines(res: subprocess.CompletedProcess) -> tuple:
    return res.returncode, sorted(res.stdout.splitlines()), res.stderr


def show_blocks(res: subprocess.CompletedProcess) -> tuple:
    return res.returncode, sorted(res.stdout.rstrip("\n").split("\n\n")), res.stderr


STATUS_KEYS = ("     Active: ", "    Process: ", "   Main PID: ", "         IP: ")
ESC = re.compile(r"\x1b\[[0-9;]*m")


def status_shape(res: subprocess.CompletedProcess) -> tuple:
    """The status lines both have (head, Active, Process, Main PID, IP) of each unit, with
    PIDs and times made equal; units in name order."""
    blocks = []
    for block in res.stdout.split("\n\n"):
        lines = block.splitlines()
        if not lines or ".service - " not in lines[0]:
            continue  # systemd's journal excerpt
        kept = [lines[0]] + [ln for ln in lines[1:] if ESC.sub("", ln).startswith(STATUS_KEYS)]
        text = "\n".join(kept)
        text = re.sub(r"(Process: |Main PID: )\d+", r"\1PID", text)
        text = re.sub(r" since [^;\n]+; [^\n]+ ago", " since TIME", text)
        text = re.sub(r"(Main PID: PID) \((sleep|sh)\)", r"\1 (COMM)", text)
        blocks.append(text)
    return res.returncode, sorted(blocks, key=lambda b: ESC.sub("", b).split()[1])


def listing(res: subprocess.CompletedProcess) -> tuple:
    """list-units: (dot, UNIT, ACTIVE, SUB) of each row, whether a header and a footer
    were printed. systemd has a LOAD column after UNIT that ipacctd does not."""
    rows, header, footer = [], False, False
    for ln in res.stdout.splitlines():
        words = ln.split()
        if not words:
            continue
        if words[0] == "UNIT":
            header = True
        elif ln.endswith(" listed.") or "units listed." in ln:
            footer = True
        elif re.fullmatch(r"[● ] ux-\S+\.service .*", ln):
            w = ln[2:].split()
            state = w[2:4] if w[1] == "loaded" else w[1:3]
            rows.append((ln[0], w[0], *state))
    return res.returncode, sorted(rows), header, footer


def code_and_unit(res: subprocess.CompletedProcess) -> tuple:
    return res.returncode, "nosuch" in res.stderr, res.stdout


def cat_values(res: subprocess.CompletedProcess) -> tuple:
    """cat of a transient unit: its Description= and the last IPAddressDeny=/IPAccounting=."""
    values: dict[str, str] = {}
    for ln in res.stdout.splitlines():
        key, sep, value = ln.partition("=")
        if sep and key in ("Description", "IPAccounting", "IPAddressDeny") and value:
            values[key] = value
    return res.returncode, values


@dataclass
class Case:
    argv: list[str]
    compare: Callable[[subprocess.CompletedProcess], tuple] = exact
    env: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        return f"{env} {' '.join(self.argv)}".strip()


CASES = [
    # is-active / is-failed: the state per unit, exit status 0 if any is in the state
    Case(["is-active", "ux-a"]),
    Case(["is-active", "ux-f"]),
    Case(["is-active", "nosuch"]),
    Case(["is-active", "ux-f", "ux-a"]),
    Case(["is-active", "ux-a", "ux-f", "nosuch"]),
    Case(["is-active", "--quiet", "ux-a"]),
    Case(["is-active", "-q", "ux-f"]),
    Case(["is-active", "ux-*"], sorted_lines),
    Case(["is-active", "nomatch*"]),
    Case(["is-failed", "ux-f"]),
    Case(["is-failed", "ux-a"]),
    Case(["is-failed", "nosuch"]),
    Case(["is-failed", "ux-a", "ux-s"]),
    Case(["is-failed", "--quiet", "ux-s"]),
    Case(["is-failed", "nomatch*"]),
    # show: -p lists, unknown names left out, -P, names after options, globs, the order
    Case(["show", "-p", "Bogus", "ux-a"]),
    Case(["show", "-P", "Bogus", "ux-a"]),
    Case(["show", "-p", "ActiveState,Bogus", "ux-a"]),
    Case(["show", "-P", "ActiveState", "ux-a"]),
    Case(["show", "ux-a", "-p", "ActiveState", "--value", "ux-f"]),
    Case(["show", "ux-a", "ux-f", "ux-s", "-p", "ActiveState,SubState", "--no-pager"]),
    Case(["show", "ux-*", "-p", "Id,ActiveState"], show_blocks),
    Case(["show", "nomatch*", "-p", "Id"]),
    Case(["show", "-p", "IPEgressPackets,IPIngressBytes,IPAddressDeny,IPEgressBytes", "ux-a"]),
    Case(["show", "--value", "-p", "IPEgressPackets", "-p", "IPIngressPackets", "ux-a"]),
    # status: systemd 252's lines for running, exit-code and signal failures; exit status
    Case(["status", "--no-pager", "ux-a"], status_shape),
    Case(["status", "--no-pager", "ux-f"], status_shape),
    Case(["status", "--no-pager", "ux-s"], status_shape),
    Case(["status", "ux-*", "--no-pager"], status_shape),
    Case(["status", "--no-pager", "nomatch*"], status_shape),
    Case(["status", "--no-pager", "nosuch"], code_and_unit),
    Case(["status", "--no-pager", "ux-f", "ux-a", "ux-s"], status_shape, {"SYSTEMD_COLORS": "1"}),
    Case(["status", "--no-pager", "ux-f"], status_shape, {"SYSTEMD_COLORS": "0"}),
    # list-units: globs, --state (comma lists), --all, --no-legend
    Case(["list-units", "--no-pager", "--all", "ux-*"], listing),
    Case(["list-units", "--no-pager", "ux-*"], listing),
    Case(["list-units", "--no-pager", "--no-legend", "--all", "ux-*"], listing),
    Case(["list-units", "--no-pager", "--state=failed"], listing),
    Case(["list-units", "--no-pager", "--state=failed,running", "ux-*"], listing),
    Case(["list-units", "--no-pager", "--state=failed", "--state=active", "ux-*"], listing),
    Case(["list-units", "--no-pager", "--state=bogus"], listing),
    Case(["list-units", "--no-pager", "--no-legend", "nomatch*"]),
    # cat, kill, list-unit-files: output and exit status of systemctl's errors
    Case(["cat", "ux-a"], cat_values),
    Case(["cat", "ux-f"], cat_values),
    Case(["cat", "nosuch"]),
    Case(["kill", "-s", "BOGUS", "ux-a"]),
    Case(["kill", "nosuch"]),
    Case(["kill", "--kill-whom=main", "ux-f"]),
    Case(["kill", "ux-a", "--kill-whom=bogus"]),
    Case(["kill", "-s", "0", "ux-a"]),
    Case(["list-unit-files", "--no-pager", "nomatch*"], lambda r: (r.returncode,)),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_same_as_systemctl(both: Both, case: Case) -> None:
    want = both.systemd.run(case.argv, case.env)
    got = both.ipacctd.run(case.argv, case.env)
    assert case.compare(got) == case.compare(want), (
        f"\n--- systemctl {case} (exit {want.returncode}):\n{want.stdout}{want.stderr}"
        f"\n--- ipacctd {case} (exit {got.returncode}):\n{got.stdout}{got.stderr}"
    )


def test_the_comparisons_can_fail(both: Both) -> None:
    """Each comparison tells different results apart (a failed unit is not a running one)."""
    for compare, argv in (
        (exact, ["is-active", "ux-a"]),
        (status_shape, ["status", "ux-a"]),
        (listing, ["list-units", "--all", "ux-a*"]),
        (show_blocks, ["show", "ux-a", "-p", "ActiveState"]),
        (cat_values, ["cat", "ux-a"]),
    ):
        other = [w.replace("ux-a", "ux-f") for w in argv]
        assert compare(both.ipacctd.run(argv, {})) != compare(both.ipacctd.run(other, {})), argv


def test_json_modes_carry_what_systemctl_show_prints(both: Both) -> None:
    """systemd 252's systemctl has no --json (v256 has); ipacctd's three modes carry the
    values systemctl show prints for the same properties."""
    props = ["-p", "Id,ActiveState,SubState,IPIngressBytes"]
    text = both.systemd.run(["show", "ux-a", *props], {}).stdout
    want = dict(ln.split("=", 1) for ln in text.splitlines())
    pretty = both.ipacctd.run(["show", "ux-a", *props, "--json=pretty"], {})
    short = both.ipacctd.run(["show", "--json=short", *props, "ux-a"], {})
    bare = both.ipacctd.run(["show", "--json", "ux-a", *props], {})  # ipacctd's older form
    off = both.ipacctd.run(["show", "ux-a", *props, "--json=off"], {})
    assert json.loads(pretty.stdout) == json.loads(short.stdout) == want
    assert json.loads(bare.stdout) == want
    assert short.stdout.count("\n") == 1 and pretty.stdout.count("\n") == len(want) + 2
    assert off.stdout == text
    listed = json.loads(
        both.ipacctd.run(["list-units", "--all", "--json=short", "ux-*"], {}).stdout
    )
    assert sorted(u["name"] for u in listed) == ["ux-a.service", "ux-f.service", "ux-s.service"]
    bad = both.ipacctd.run(["show", "ux-a", "--json=bogus"], {})
    assert bad.returncode == 2 and "usage: ipacctd show" in bad.stderr, bad.stderr


def test_errors_name_the_verbs_usage(both: Both) -> None:
    """A mistake in a verb's words is reported with that verb's usage, not the top level's."""
    for argv, verb in (
        (["show", "ux-a", "--bogus"], "show"),
        (["status", "ux-a", "-x"], "status"),
        (["list-units", "--all", "--nope"], "list-units"),
        (["is-active"], "is-active"),
        (["kill", "-s"], "kill"),
    ):
        res = both.ipacctd.run(argv, {})
        assert res.returncode == 2, (argv, res)
        assert res.stderr.startswith(f"usage: ipacctd {verb} "), (argv, res.stderr)
        assert "COMMAND" not in res.stderr, res.stderr


def test_daemon_reload_is_reload(both: Both) -> None:
    """``daemon-reload`` is ``reload``: without a daemon both say so, the same way."""
    a = both.ipacctd.run(["reload"], {})
    b = both.ipacctd.run(["daemon-reload"], {})
    assert (a.returncode, a.stderr) == (b.returncode, b.stderr) and a.returncode != 0
    assert "no ipacctd daemon is running" in b.stderr
