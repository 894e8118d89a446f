"""Seeing it: denied addresses, audit mode, ``inspect`` against bpftool, ``top`` in a terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import threading
import time

import pytest
from e2e_helpers import PY, REPO, UDP4, Installation

from ipacctd import cgroup


def test_denied_addresses_are_listed_after_real_denied_traffic(inst: Installation) -> None:
    ns = inst.netns(["198.51.100.1", "198.51.100.2", "198.51.100.3"])
    web = inst.start_unit(ns, "web", "IPAddressDeny=198.51.100.1 198.51.100.3")
    for _ in range(3):
        assert web.send("198.51.100.1", 100) == "err 1"
    assert web.send("198.51.100.3", 50) == "err 1"
    assert web.send("198.51.100.2", 10).startswith("ok")

    status = inst.ok("status", "web.service").stdout
    assert re.search(
        r"^     Denied: 198\.51\.100\.1 \(egress, 3 packets\), "
        r"198\.51\.100\.3 \(egress, 1 packet\)$",
        status,
        re.M,
    ), status
    data = json.loads(inst.ok("status", "--json", "web.service").stdout)[0]
    assert [(d["address"], d["direction"], d["packets"], d["bytes"]) for d in data["denied"]] == [
        ("198.51.100.1", "egress", 3, 3 * (100 + UDP4)),
        ("198.51.100.3", "egress", 1, 50 + UDP4),
    ]
    maps = json.loads(inst.ok("inspect", "--json", "web.service").stdout)["maps"]
    log = [m for m in maps if m.get("role") == "denied addresses"]
    assert len(log) == 1
    assert {e["address"]: e["packets"] for e in log[0]["entries"]} == {
        "198.51.100.1": 3,
        "198.51.100.3": 1,
    }
    web.proc.stdin.close()
    web.wait()


def test_audit_mode_counts_then_enforce_blocks(inst: Installation) -> None:
    ns = inst.netns(["198.51.100.1"])
    web = inst.start_unit(ns, "web", "IPAddressDeny=198.51.100.1", "IPAddressDenyMode=audit")
    assert web.send("198.51.100.1", 100) == f"ok {100}"  # would be denied: passes
    props = inst.show("web.service")
    assert props["IPAddressDenyMode"] == "audit"
    assert props["IPEgressAuditPackets"] == "1"
    assert props["IPEgressAuditBytes"] == str(100 + UDP4)
    assert props["IPEgressDroppedPackets"] == "0"
    assert props["IPEgressBytes"] == str(100 + UDP4)  # it did pass
    status = inst.ok("status", "web.service").stdout
    # The datagram also came back in from 198.51.100.1: audited on ingress too.
    assert "Audited: 128B in (1 packet), 128B out (1 packet) would be denied" in status
    assert "198.51.100.1 (egress, 1 packet)" in status  # listed as if denied
    assert "198.51.100.1 (ingress, 1 packet)" in status

    inst.ok("set-property", "web.service", "IPAddressDenyMode=enforce")
    assert web.send("198.51.100.1", 100) == "err 1"
    props = inst.show("web.service")
    assert props["IPEgressDroppedPackets"] == "1"
    assert props["IPEgressAuditPackets"] == "1"  # carried on, not reset
    web.proc.stdin.close()
    web.wait()


def _bpftool(*args: str) -> object:
    res = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool is not installed")
def test_inspect_agrees_with_bpftool(inst: Installation) -> None:
    ns = inst.netns(["198.51.100.1"])
    web = inst.start_unit(ns, "web", "IPAddressDeny=198.51.100.1 2001:db8::/64")
    assert web.send("198.51.100.1", 10) == "err 1"
    ours = json.loads(inst.ok("inspect", "--json", "-i", "web.service").stdout)
    fs = cgroup.fs_path(f"{inst.cgroup_root}/web.service")
    theirs = {p["id"]: p for p in _bpftool("cgroup", "show", fs)}
    assert {p["id"] for p in ours["programs"]} == set(theirs)
    for p in ours["programs"]:
        bt = _bpftool("prog", "show", "id", str(p["id"]))
        assert theirs[p["id"]]["attach_type"] == (
            "cgroup_inet_ingress" if p["name"].endswith("ingress") else "cgroup_inet_egress"
        )
        assert bt["name"] == p["name"]
        assert bt["tag"] == p["tag"]
        assert bt["bytes_xlated"] == p["xlated_bytes"]
        assert bt["bytes_jited"] == p["jited_bytes"]
        assert sorted(bt.get("map_ids", [])) == sorted(p["map_ids"])
        assert len(p["instructions"]) > 5
    for m in ours["maps"]:
        bt = _bpftool("map", "show", "id", str(m["id"]))
        assert (bt["type"], bt["name"], bt["bytes_key"], bt["bytes_value"], bt["max_entries"]) == (
            m["type"],
            m["name"],
            m["key_size"],
            m["value_size"],
            m["max_entries"],
        )
    links = {li["id"]: li for li in _bpftool("link", "show")}
    for li in ours["links"]:
        assert links[li["id"]]["prog_id"] == li["prog_id"]
    tries = {m["role"]: m for m in ours["maps"] if m.get("role", "").startswith("policy")}
    if "policy (IPv4)" in tries:  # small lists may be compiled into the program itself
        assert tries["policy (IPv4)"]["entries"] == [
            {"prefix": "198.51.100.1/32", "verdict": "deny"}
        ]
    web.proc.stdin.close()
    web.wait()


def _read_until(fd: int, pred, timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not pred(buf):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def _last_frame(raw: bytes) -> list[str]:
    text = raw.decode(errors="replace").split("\x1b[H\x1b[2J")[-1]
    return [ln for ln in text.replace("\r", "").split("\n") if ln.strip()]


def test_top_in_a_terminal_shows_the_busiest_unit_first(inst: Installation) -> None:
    ns = inst.netns(["198.51.100.2"])
    busy = inst.start_unit(ns, "busy", port=7001)
    idle = inst.start_unit(ns, "idle", port=7002)
    assert idle.send("198.51.100.2", 10).startswith("ok")
    stop = threading.Event()

    def blast() -> None:
        for _ in range(20000):  # bounded in count and time
            if stop.is_set():
                break
            busy.send("198.51.100.2", 1000)

    sender = threading.Thread(target=blast)
    sender.start()
    pid, fd = pty.fork()
    if pid == 0:  # child: the real CLI on a terminal
        os.chdir(REPO)
        os.execve(PY, [PY, "-m", "ipacctd", "top", "-d", "0.3"], inst.environ())
    try:
        raw = _read_until(
            fd,
            lambda b: _last_frame(b)[3:4] and b"busy.service" in b.split(b"\x1b[2J")[-1],
            timeout=15,
        )
        frame = _last_frame(raw)
        assert frame[0].startswith("ipacctd top"), frame
        assert "BPF stats on" in frame[0]
        assert "(q to quit)" in frame[0]
        header = next(i for i, ln in enumerate(frame) if ln.startswith("UNIT"))
        rows = frame[header + 1 :]
        assert rows[0].startswith("busy.service"), frame
        assert any(r.startswith("idle.service") for r in rows[1:]), frame
        assert raw.startswith(b"\x1b[?1049h")  # alternate screen
        os.write(fd, b"q")
        rest = _read_until(fd, lambda b: b"\x1b[?1049l" in b, timeout=10)
        assert rest.endswith(b"\x1b[?25h\x1b[?1049l") or b"\x1b[?25h\x1b[?1049l" in rest
        _, wstatus = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wstatus) == 0
        pid = 0
    finally:
        stop.set()
        sender.join(timeout=30)
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    for agent in (busy, idle):
        agent.proc.stdin.close()
        agent.wait()


def test_top_batch_mode(inst: Installation) -> None:
    ns = inst.netns(["198.51.100.2"])
    web = inst.start_unit(ns, "web")
    res = inst.cli("top", "-n", "2", "-d", "0.2")
    assert res.returncode == 0, res.stderr
    frames = re.split(r"\n+(?=ipacctd top)", res.stdout.strip())
    assert len(frames) == 2
    for frame in frames:
        assert frame.startswith("ipacctd top")
        assert re.search(r"^web\.service\s", frame, re.M), frame
        assert "\x1b" not in frame  # plain text for scripts
        assert "q to quit" not in frame
    web.proc.stdin.close()
    web.wait()
