"""Every error is one ``ipacctd: ...`` line on stderr, a non-zero exit and no state left."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from e2e_helpers import Installation, one_line_error

AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
NOT_FOUND = 4
USAGE = 2
UNSUPPORTED = 69
NO_PERMISSION = 77

CASES = [
    # (argv, extra environment, exit status, words the message must contain)
    (["run", "-p", "Foo=1", "--", "true"], {}, USAGE, ["'Foo'", "unknown property"]),
    (["run", "-p", "IPAddressDeny=300.1.1.1", "--", "true"], {}, USAGE, ["'300.1.1.1'"]),
    (["run", "-p", "IPAddressDeny=198.51.100.1/33", "--", "true"], {}, USAGE, ["/33"]),
    (["run", "-p", "IPAddressDeny=198.51.100.1 bogus", "--", "true"], {}, USAGE, ["'bogus'"]),
    (["run", "-p", "IPAccounting=maybe", "--", "true"], {}, USAGE, ["'maybe'"]),
    (["run", "-p", "NoEquals", "--", "true"], {}, USAGE, ["NoEquals"]),
    (["run", "--unit", "../x", "--", "true"], {}, USAGE, ["invalid unit name", "'../x'"]),
    (["run", "--unit", "x.socket", "--", "true"], {}, USAGE, ["invalid unit name"]),
    (["run"], {}, USAGE, ["no command"]),
    (["run", "--"], {}, USAGE, ["no command"]),
    (["status", "nosuch.service"], {}, NOT_FOUND, ["nosuch.service", "not found"]),
    (["show", "nosuch.service"], {}, NOT_FOUND, ["nosuch.service", "not found"]),
    (
        ["set-property", "nosuch.service", "IPAddressDeny=198.51.100.1"],
        {},
        NOT_FOUND,
        ["nosuch.service", "not found"],
    ),
    (["stop", "nosuch.service"], {}, NOT_FOUND, ["nosuch.service", "not found"]),
    (["reset", "nosuch.service"], {}, NOT_FOUND, ["nosuch.service", "not found"]),
    (["detach", "nosuch.service"], {}, NOT_FOUND, ["nosuch.service", "not found"]),
    (
        ["attach", "/ipacctd-test-no-such-cgroup"],
        {},
        NOT_FOUND,
        ["/ipacctd-test-no-such-cgroup", "does not exist"],
    ),
    (["attach", "relative/cgroup"], {}, USAGE, ["must be absolute"]),
    (["attach", "/a/../b"], {}, USAGE, [".."]),
    # No cgroup v2: refused whether or not the unit has a firewall.
    (
        ["run", "-p", "IPAddressDeny=198.51.100.1", "--", "true"],
        {"IPACCTD_CGROUP2_MOUNT": "/nonexistent"},
        UNSUPPORTED,
        ["/nonexistent", "cgroup"],
    ),
    (
        ["run", "--", "true"],
        {"IPACCTD_CGROUP2_MOUNT": "/nonexistent"},
        UNSUPPORTED,
        ["/nonexistent is not a cgroup2 mount"],
    ),
    # Fail closed: a firewall that cannot be enforced refuses to start.
    (
        ["run", "-p", "IPAddressDeny=198.51.100.1", "--", "true"],
        {"IPACCTD_DISABLE_BPF": "1"},
        UNSUPPORTED,
        ["cannot enforce the firewall", "IPACCTD_DISABLE_BPF", "--allow-unenforced"],
    ),
    (
        ["run", "-p", "IPAddressDeny=any", "-p", "IPAddressAllow=localhost", "--", "true"],
        {"IPACCTD_DISABLE_BPF": "1"},
        UNSUPPORTED,
        ["cannot enforce the firewall"],
    ),
]


@pytest.mark.parametrize(
    ("argv", "env", "status", "words"),
    CASES,
    ids=[" ".join(c[0])[:50] + (" +env" if c[1] else "") for c in CASES],
)
def test_error_is_one_line_and_leaves_nothing(
    inst: Installation, argv: list[str], env: dict[str, str], status: int, words: list[str]
) -> None:
    res = inst.cli(*argv, env=env)
    one_line_error(res, *words)
    assert res.returncode == status, res.stderr
    assert res.stdout == ""
    inst.assert_empty()
    assert not os.path.exists(inst.bpf_dir) or inst.pin_dirs() == []


def test_not_root_is_a_permission_error(inst: Installation) -> None:
    # The state directory is root's: nobody cannot even take the lock.
    res = inst.cli("run", "-p", "IPAddressDeny=198.51.100.1", "--", "true", prefix=AS_NOBODY)
    one_line_error(res, "run as root")
    assert res.returncode == NO_PERMISSION
    inst.ok("run", "--", "true")  # root makes the state directory; nobody may not read it
    for argv in (
        ["list-units"],
        ["status", "run-u1.service"],
        ["show", "run-u1.service"],
        ["stop", "run-u1.service"],
    ):
        res = inst.cli(*argv, prefix=AS_NOBODY)
        one_line_error(res, "Permission denied", "run as root")
        assert res.returncode == NO_PERMISSION
    inst.ok("reset", "run-u1.service")

    # With a state directory nobody can write, the next wall is BPF and the cgroup.
    open_dir = tempfile.mkdtemp(prefix="ipacctd-e2e-", dir="/tmp")
    try:
        os.chmod(open_dir, 0o777)
        env = {
            "IPACCTD_STATE_DIR": os.path.join(open_dir, "state"),
            "IPACCTD_UNIT_DIR": os.path.join(open_dir, "units"),
        }
        res = inst.cli(
            "run", "-p", "IPAddressDeny=198.51.100.1", "--", "true", env=env, prefix=AS_NOBODY
        )
        one_line_error(res, "not running as root", "--allow-unenforced")
        res = inst.cli("run", "--allow-unenforced", "--", "true", env=env, prefix=AS_NOBODY)
        one_line_error(res, "cannot create cgroup", "run as root")
        assert res.returncode == NO_PERMISSION
        assert os.listdir(os.path.join(open_dir, "state", "units")) == []
    finally:
        shutil.rmtree(open_dir)
    inst.assert_empty()


SEND = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"x" * 100, ("198.51.100.1", 9))
    print("sent")
except OSError as e:
    print("errno", e.errno)
"""


def test_allow_unenforced_runs_with_a_warning_and_says_so(inst: Installation) -> None:
    ns = inst.netns(["198.51.100.1"])
    env = {"IPACCTD_DISABLE_BPF": "1"}
    res = inst.cli(
        "run",
        "--wait",
        "--allow-unenforced",
        "-p",
        "IPAddressDeny=198.51.100.1",
        "--",
        "python3",
        "-c",
        SEND,
        ns=ns,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "sent\n"  # not enforced, as the warning says
    err = res.stderr.splitlines()
    assert err[0] == "Running as unit: run-u1.service"
    assert err[1] == (
        "ipacctd: warning: unit run-u1.service is not counting or filtering: "
        "BPF disabled by $IPACCTD_DISABLE_BPF=1"
    )
    assert "IP traffic: [not counted]" in err
    props = inst.show("run-u1.service")
    assert props["IPFirewallEnforced"] == "no"
    assert props["IPAddressDeny"] == "198.51.100.1/32"
    assert props["IPEgressBytes"] == "[no data]"
    assert props["IPEgressDroppedPackets"] == "[no data]"
    st = inst.cli("status", "run-u1.service").stdout
    assert (
        "   Firewall: IPAddressDeny=198.51.100.1/32 (NOT ENFORCED: BPF disabled by "
        "$IPACCTD_DISABLE_BPF=1)"
    ) in st.splitlines()
    assert inst.pin_dirs() == []  # nothing was loaded
    # Its firewall cannot be changed later either, even with BPF back.
    res = inst.cli("set-property", "run-u1.service", "IPAddressDeny=198.51.100.2")
    one_line_error(res, "cannot be changed")
    inst.ok("reset", "run-u1.service")
    inst.assert_empty()


def test_name_clash_and_wrong_verb_leave_the_running_unit_alone(inst: Installation) -> None:
    ns = inst.netns(["198.51.100.1", "198.51.100.2"])
    web = inst.start_unit(ns, "web", "IPAddressDeny=198.51.100.1")
    before = inst.show("web.service")

    res = inst.cli("run", "--unit", "web", "--", "true", ns=ns)
    one_line_error(res, "web.service", "active already")
    assert res.returncode == 1
    res = inst.cli("run", "--unit", "web.service", "-p", "IPAddressDeny=", "--", "true", ns=ns)
    one_line_error(res, "active already")
    one_line_error(inst.cli("detach", "web.service"), "not attached", "ipacctd stop")
    one_line_error(inst.cli("attach", f"/ipacctd-test-{inst.id}/web.service"), "exists already")

    assert inst.show("web.service") == before
    assert web.send("198.51.100.1", 10) == "err 1"
    assert web.send("198.51.100.2", 10) == "ok 10"
    inst.ok("stop", "web.service")
    web.wait()
    inst.ok("reset", "web.service")
    inst.assert_empty()
