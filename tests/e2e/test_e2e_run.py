"""``ipacctd run --wait``: the seed's scenario, exact counters, exit status passed through."""

from __future__ import annotations

import re

from e2e_helpers import ECHO, UDP4, Installation

# Sends 3 datagrams to the denied 1.1.1.1 and 2 to 198.51.100.2, then pings both.
SEED_SCRIPT = r"""
import socket, subprocess

def send(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x" * 100, (addr, 9))
        print(addr, "sent", flush=True)
    except OSError as e:
        print(addr, "errno", e.errno, e.strerror, flush=True)
    finally:
        s.close()

for addr in ["1.1.1.1"] * 3 + ["198.51.100.2"] * 2:
    send(addr)
for addr in ("1.1.1.1", "198.51.100.2"):
    r = subprocess.run(["ping", "-c1", "-W1", addr], capture_output=True, timeout=10)
    print(addr, "ping", r.returncode, flush=True)
"""


def test_seed_scenario_counts_exactly_and_denies_with_eperm(inst: Installation) -> None:
    ns = inst.netns(["1.1.1.1", "198.51.100.2"])
    res = inst.cli(
        "run", "--wait", "-p", "IPAddressDeny=1.1.1.1", "--", "python3", "-c", SEED_SCRIPT, ns=ns
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert out[:5] == ["1.1.1.1 errno 1 Operation not permitted"] * 3 + ["198.51.100.2 sent"] * 2, (
        res.stdout
    )
    assert out[5].startswith("1.1.1.1 ping ") and out[5] != "1.1.1.1 ping 0", res.stdout
    assert out[6] == "198.51.100.2 ping 0", res.stdout

    allowed_out = 2 * (100 + UDP4) + ECHO  # two datagrams and one echo request
    denied_out = 3 * (100 + UDP4) + ECHO  # three datagrams and one echo request
    err = res.stderr.splitlines()
    assert err[0] == "Running as unit: run-u1.service", res.stderr
    assert "Finished with result: success" in err
    assert "Main processes terminated with: code=exited/status=0" in err
    assert f"IP traffic received: {ECHO}B" in err, res.stderr  # the one echo reply
    assert f"IP traffic sent: {allowed_out}B" in err, res.stderr
    assert f"IP traffic dropped: 0B received (0 packets), {denied_out}B sent (4 packets)" in err, (
        res.stderr
    )
    assert any(re.fullmatch(r"Service runtime: \d+(ms|\.\d{3}s)", ln) for ln in err), err

    # The counters outlive the command and agree with the summary.
    props = inst.show("run-u1.service")
    assert props["IPEgressBytes"] == str(allowed_out)
    assert props["IPEgressPackets"] == "3"
    assert props["IPIngressBytes"] == str(ECHO)
    assert props["IPIngressPackets"] == "1"
    assert props["IPEgressDroppedBytes"] == str(denied_out)
    assert props["IPEgressDroppedPackets"] == "4"
    assert props["IPIngressDroppedPackets"] == "0"
    assert props["ActiveState"] == "inactive"
    assert props["IPAddressDeny"] == "1.1.1.1/32"
    # The description is the command on one line, so the Key=Value output stays parseable.
    assert props["Description"].startswith("python3 -c \\nimport socket")

    # A second run gets the next name; its counters start from zero.
    res = inst.cli("run", "--wait", "--", "true", ns=ns)
    assert res.returncode == 0, res.stderr
    assert "Running as unit: run-u2.service" in res.stderr
    assert "IP traffic sent: 0B" in res.stderr.splitlines()

    inst.ok("reset", "run-u1.service", "run-u2.service")
    inst.assert_empty()


def test_exit_status_passes_through(inst: Installation) -> None:
    ns = inst.netns([])
    res = inst.cli("run", "--wait", "--", "sh", "-c", "exit 7", ns=ns)
    assert res.returncode == 7, res.stderr
    assert "Finished with result: exit-code" in res.stderr.splitlines()
    assert "Main processes terminated with: code=exited/status=7" in res.stderr.splitlines()
    st = inst.cli("status", "run-u1.service")
    assert st.returncode == 3  # like systemctl status of a unit that is not active
    assert st.stdout.startswith("× run-u1.service - sh -c exit 7\n"), st.stdout  # noqa: RUF001
    assert "    Process: " in st.stdout and "(code=exited, status=7)" in st.stdout

    res = inst.cli("run", "--wait", "--", "sh", "-c", "kill -KILL $$", ns=ns)
    assert res.returncode == 128 + 9, res.stderr
    assert "Finished with result: signal" in res.stderr.splitlines()
    assert "Main processes terminated with: code=killed/status=KILL" in res.stderr.splitlines()
    assert inst.show("run-u2.service")["ActiveState"] == "failed"

    # Without --wait there is no summary, and the status still passes through.
    res = inst.cli("run", "-q", "--", "sh", "-c", "exit 3", ns=ns)
    assert res.returncode == 3
    assert res.stderr == ""

    # A command that cannot be started: 127 as from a shell, an error line, a failed unit.
    res = inst.cli("run", "--", "/nonexistent/ipacctd-e2e", ns=ns)
    assert res.returncode == 127, res.stderr
    assert res.stderr.splitlines() == [
        "Running as unit: run-u4.service",
        "ipacctd: cannot run /nonexistent/ipacctd-e2e: No such file or directory",
    ]
    assert inst.show("run-u4.service")["ExecMainStatus"] == "127"

    inst.ok("reset", "run-u1.service", "run-u2.service", "run-u3.service", "run-u4.service")
    inst.assert_empty()
