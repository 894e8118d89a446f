"""Unit files in the unit directory: applied by ``run --unit``, ``-p`` on top; bad files refused."""

from __future__ import annotations

import os

import pytest
from e2e_helpers import UDP4, UDP6, Installation, one_line_error

WEB_UNIT = """\
# Policy of the e2e web unit.
[Unit]
Description=E2E web from a unit file

[Service]
; systemd's comment styles both work
IPAccounting=yes
IPAddressDeny=198.51.100.1 \\
# a comment inside a continuation is skipped
              2001:db8::1
X-Ignored=whatever
"""

SEND_ALL = r"""
import socket, sys
for addr in sys.argv[1:]:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x" * 100, (addr, 9))
        print(addr, "ok")
    except OSError as e:
        print(addr, "errno", e.errno)
    finally:
        s.close()
"""

TARGETS = ["198.51.100.1", "2001:db8::1", "203.0.113.9", "198.51.100.2", "2001:db8::2"]


def test_unit_file_applies_and_p_appends(inst: Installation) -> None:
    path = os.path.join(inst.unit_dir, "web.unit")
    with open(path, "w") as f:
        f.write(WEB_UNIT)
    ns = inst.netns(TARGETS)

    res = inst.cli(
        "run", "--wait", "--unit", "web", "--", "python3", "-c", SEND_ALL, *TARGETS, ns=ns
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "198.51.100.1 errno 1",
        "2001:db8::1 errno 1",
        "203.0.113.9 ok",
        "198.51.100.2 ok",
        "2001:db8::2 ok",
    ]
    assert f"IP traffic sent: {2 * (100 + UDP4) + 100 + UDP6}B" in res.stderr.splitlines()
    props = inst.show("web.service")
    assert props["Description"] == "E2E web from a unit file"
    assert props["IPAddressDeny"] == "198.51.100.1/32 2001:db8::1/128"
    st = inst.cli("status", "web.service").stdout.splitlines()
    assert st[0] == "○ web.service - E2E web from a unit file"
    assert st[1] == f"     Loaded: loaded ({path}; transient)"

    # The inactive unit keeps its name (and counters) until reset, as systemd-run refuses a
    # loaded unit; then -p appends to the file's list.
    res = inst.cli("run", "--unit", "web", "--", "true")
    assert res.returncode != 0 and "reset it first" in res.stderr, res.stderr
    inst.ok("reset", "web")
    res = inst.cli(
        "run",
        "--wait",
        "--unit",
        "web",
        "-p",
        "IPAddressDeny=203.0.113.9",
        "--",
        "python3",
        "-c",
        SEND_ALL,
        *TARGETS,
        ns=ns,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "198.51.100.1 errno 1",
        "2001:db8::1 errno 1",
        "203.0.113.9 errno 1",
        "198.51.100.2 ok",
        "2001:db8::2 ok",
    ]
    assert f"IP traffic sent: {100 + UDP4 + 100 + UDP6}B" in res.stderr.splitlines()
    assert (
        f"IP traffic dropped: 0B received (0 packets), {2 * (100 + UDP4) + 100 + UDP6}B "
        "sent (3 packets)"
    ) in res.stderr.splitlines()
    props = inst.show("web.service")
    assert props["IPAddressDeny"] == "198.51.100.1/32 203.0.113.9/32 2001:db8::1/128"
    assert props["IPEgressPackets"] == "2"  # fresh counters for the new run

    # -p with an empty value resets the file's list.
    inst.ok("reset", "web")
    res = inst.cli(
        "run",
        "--wait",
        "--unit",
        "web",
        "-p",
        "IPAddressDeny=",
        "--",
        "python3",
        "-c",
        SEND_ALL,
        *TARGETS,
        ns=ns,
    )
    assert res.returncode == 0, res.stderr
    assert all(line.endswith(" ok") for line in res.stdout.splitlines()), res.stdout

    inst.ok("reset", "web.service")
    inst.assert_empty()


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("[Unit]\nDescription=x\n\n[Service]\nIPAddressDeny\n", 5, "missing '='"),
        ("[Service]\n# fine\nIPAddressDeny=198.51.100.1\nFoo=1\n", 4, "unknown key 'Foo'"),
        ("[Service]\nIPAddressDeny=198.51.100.1 \\\n  nonsense\n", 2, "nonsense"),
        ("IPAddressDeny=198.51.100.1\n", 1, "outside of a section"),
    ],
)
def test_malformed_unit_file_refuses_the_run_and_creates_nothing(
    inst: Installation, text: str, line: int, problem: str
) -> None:
    path = os.path.join(inst.unit_dir, "bad.service")
    with open(path, "w") as f:
        f.write(text)
    ns = inst.netns([])
    res = inst.cli("run", "--unit", "bad", "--", "true", ns=ns)
    err = one_line_error(res, problem)
    assert err.startswith(f"ipacctd: {path}:{line}: "), err
    assert res.returncode == 2
    assert not os.path.exists(os.path.join(inst.root_fs, "bad.service"))
    inst.assert_empty()
    # Another unit is not held hostage by the broken file.
    assert inst.cli("run", "--unit", "good", "--", "true", ns=ns).returncode == 0
    inst.ok("reset", "good.service")
