"""Containers on real podman + runc: the OCI hook puts a unit file's policy in force before
a container's first instruction, with no daemon running, across restarts and crash loops,
for many containers at once, and while the daemon is killed; the daemon catches up.

Every container's command sends one UDP datagram to a denied address (198.51.100.9) and
one to an allowed address (198.51.100.2) as its first instructions; a receiver in the
test's network namespace counts what arrives where. Asserted each time: 0 denied datagrams
delivered, 0 allowed ones lost, and ipacctd's counters equal to what was sent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from podman_support import (
    ALLOWED,
    DENIED,
    IMAGE,
    PARENT,
    TFTP_ERROR,
    UDP4,
    Podman,
    TftpReceiver,
    remove_v1_cgroups,
    send_both,
)
from support import wait_for

pytestmark = pytest.mark.kernel

REQUIRED_TOOLS = ("podman", "runc", "busybox", "conmon")
UNIT_FILE = f"""[Unit]
Description=Containers: no way to {DENIED}

[Match]
ControlGroup={PARENT}/libpod-*

[Service]
IPAddressDeny={DENIED}
"""
NAME = re.compile(r"podman-(?P<name>.+)-(?P<short>[0-9a-f]{12})\.service")


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        problem = f"needs {', '.join(missing)} (apt-get install podman runc busybox-static)"
        if os.environ.get("IPACCTD_REQUIRE_KERNEL") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    p = Podman()
    try:
        yield p
    finally:
        p.close()


class Scene:
    """An installation with the container unit file, the hook installed for it, a network
    namespace with the test addresses and a receiver there."""

    def __init__(self, inst, podman: Podman) -> None:
        self.inst = inst
        self.podman = podman
        Path(inst.unit_dir, "ctr.unit").write_text(UNIT_FILE)
        podman.install_hook(inst)
        self.ns = inst.netns([DENIED, ALLOWED])
        self.rx = TftpReceiver(self.ns)

    def run(self, name: str, *extra: str, detach: bool = False, command=None):
        args = self.podman.run_args(self.ns, "--name", name, *extra)
        if detach:
            args.append("-d")
        return self.podman(*args, IMAGE, *(command or send_both()), check=False)

    def units(self) -> dict[str, dict]:
        """Every unit's metadata-and-kernel view (``status --json`` of the real CLI)."""
        out = self.inst.ok("status", "--json").stdout
        return {u["name"]: u for u in json.loads(out)}

    def counters(self, name: str) -> dict:
        return self.inst.manager().counters(name).to_dict()

    def assert_exact(self, unit: str, runs: int, rrq: int) -> None:
        """One denied and one allowed datagram (``rrq`` payload bytes) per run, one answer
        to each allowed one: passed, dropped and received counters exactly so."""
        c = self.counters(unit)
        assert c["egress_packets"] == runs, (unit, c)
        assert c["egress_bytes"] == runs * (rrq + UDP4), (unit, c)
        assert c["egress_dropped_packets"] == runs, (unit, c)
        assert c["egress_dropped_bytes"] == runs * (rrq + UDP4), (unit, c)
        assert c["ingress_packets"] == runs, (unit, c)
        assert c["ingress_bytes"] == runs * (len(TFTP_ERROR) + UDP4), (unit, c)
        assert c["ingress_dropped_packets"] == 0, (unit, c)

    def close(self) -> None:
        self.podman.remove_containers()
        self.podman.install_hook(None)


@pytest.fixture
def scene(inst, podman: Podman) -> Iterator[Scene]:
    s = Scene(inst, podman)
    try:
        yield s
    finally:
        s.close()


def _rrq(sizes: list[int]) -> int:
    assert sizes and len(set(sizes)) == 1, sizes
    return sizes[0]


def test_run_sends_at_once_20_times_without_a_daemon(scene: Scene) -> None:
    # Control: the same container with the hook but no unit file matching it reaches the
    # denied address (the receiver sees leaks; the hook lets unmatched containers be).
    (Path(scene.inst.unit_dir) / "ctr.unit").write_text(
        UNIT_FILE.replace(f"{PARENT}/libpod-*", "/elsewhere/libpod-*")
    )
    res = scene.run("control", "--rm")
    assert res.returncode == 0, res.stderr
    assert scene.rx.count(DENIED) == 1
    assert scene.inst.unit_names() == []
    (Path(scene.inst.unit_dir) / "ctr.unit").write_text(UNIT_FILE)

    names = [f"web{i}" for i in range(20)]
    for name in names:
        res = scene.run(name, "--rm")
        assert res.returncode == 0, res.stderr
        assert "Operation not permitted" in res.stdout + res.stderr  # the denied sendto
    sizes = scene.rx.sizes()
    assert len(sizes[DENIED]) == 1  # the control's only: 0 denied datagrams from the 20
    assert len(sizes[ALLOWED]) == 21  # the control's + 20: none lost
    rrq = _rrq(sizes[ALLOWED])
    units = scene.units()
    assert len(units) == 20
    by_name = {}
    for unit, st in units.items():
        m = NAME.fullmatch(unit)
        assert m, unit
        c = st["container"]
        assert c["engine"] == "podman" and c["name"] == m["name"]
        assert c["id"].startswith(m["short"]) and st["cgroup"] == f"{PARENT}/libpod-{c['id']}"
        assert st["properties"]["IPAddressDeny"] == f"{DENIED}/32"
        by_name[m["name"]] = (unit, c["id"])
        scene.assert_exact(unit, 1, rrq)
    assert sorted(by_name) == sorted(names)
    # Findable by the container's name and by its short id.
    unit, cid = by_name["web7"]
    for query in ("web7", cid[:12]):
        res = scene.inst.ok("show", query, "-p", "Id,IPEgressDroppedPackets")
        assert res.stdout.split() == [f"Id={unit}", "IPEgressDroppedPackets=1"], res.stdout
    status = scene.inst.cli("status", cid[:12]).stdout
    assert f"Container: web7 (podman {cid[:12]})" in status, status


def test_podman_restart_20_times(scene: Scene) -> None:
    res = scene.run("rs")
    assert res.returncode == 0, res.stderr
    for _ in range(20):
        scene.podman("restart", "rs")
        scene.podman("wait", "rs", timeout=30)
    sizes = scene.rx.sizes()
    assert sizes[DENIED] == []
    assert len(sizes[ALLOWED]) == 21
    (unit,) = scene.units()
    assert NAME.fullmatch(unit)["name"] == "rs"
    # One unit across the 21 runs; its counters carried on from run to run.
    scene.assert_exact(unit, 21, _rrq(sizes[ALLOWED]))


def test_restart_always_crash_loop(scene: Scene) -> None:
    res = scene.run("crash", "--restart=always", detach=True, command=send_both("exit 3"))
    assert res.returncode == 0, res.stderr
    wait_for(lambda: scene.rx.count(ALLOWED) >= 6, 60, "six runs of the crash loop", step=0.2)
    # Removing a crash-looping container can meet it between two states ("container state
    # improper"): try again, bounded.
    wait_for(
        lambda: scene.podman("rm", "--force", "--time", "0", "crash", check=False).returncode == 0,
        30,
        "podman rm of the crash loop",
        step=0.2,
    )
    assert scene.podman("container", "exists", "crash", check=False).returncode == 1
    sizes = scene.rx.sizes()
    assert sizes[DENIED] == []
    (unit,) = scene.units()
    runs = len(sizes[ALLOWED])
    c = scene.counters(unit)
    # Exact: every allowed datagram that arrived was counted once, none more.
    assert c["egress_packets"] == runs, c
    assert c["egress_bytes"] == runs * (_rrq(sizes[ALLOWED]) + UDP4), c
    # Each run tried the denied address first (the last one may have been killed after).
    assert c["egress_dropped_packets"] in (runs, runs + 1), c


def test_20_containers_at_once(scene: Scene) -> None:
    procs = [
        scene.podman.popen(
            *scene.podman.run_args(scene.ns, "--rm", "--name", f"par{i}"), IMAGE, *send_both()
        )
        for i in range(20)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    sizes = scene.rx.sizes()
    assert sizes[DENIED] == []
    assert len(sizes[ALLOWED]) == 20
    units = scene.units()
    assert sorted(NAME.fullmatch(u)["name"] for u in units) == sorted(f"par{i}" for i in range(20))
    for unit in units:
        scene.assert_exact(unit, 1, _rrq(sizes[ALLOWED]))


def test_fail_closed_when_the_policy_cannot_be_enforced(scene: Scene) -> None:
    # A filter program that does not exist: the unit cannot be put in force.
    Path(scene.inst.unit_dir, "ctr.unit").write_text(
        UNIT_FILE + "IPEgressFilterPath=/sys/fs/bpf/ipacctd-no-such-program\n"
    )
    res = scene.run("refused", "--rm")
    assert res.returncode != 0
    assert "ipacctd oci-hook" in res.stderr and "refusing to start it" in res.stderr, res.stderr
    assert scene.rx.sizes() == {DENIED: [], ALLOWED: []}  # its command never ran
    assert scene.inst.unit_names() == []  # and nothing was half made
    # A broken unit file: nobody can tell whether it would match, so nothing starts.
    Path(scene.inst.unit_dir, "ctr.unit").write_text(UNIT_FILE + "IPAddressDeny=not-an-ip\n")
    res = scene.run("refused2", "--rm")
    assert res.returncode != 0 and "ctr.unit" in res.stderr, res.stderr
    assert scene.rx.sizes() == {DENIED: [], ALLOWED: []}


def test_daemon_killed_while_containers_restart(tmp_path: Path, podman: Podman) -> None:
    from daemon_support import DaemonEnv

    with DaemonEnv(tmp_path) as env:
        scene = Scene(env.inst, podman)
        try:
            env.start()
            res = scene.run("k0")
            assert res.returncode == 0, res.stderr
            env.client.wait(lambda: len(env.client.units()) == 1, 10, "the daemon to see k0")
            env.kill9()
            # Meanwhile: k0 restarted five times, five new containers, one restarted twice.
            for _ in range(5):
                scene.podman("restart", "k0")
                scene.podman("wait", "k0", timeout=30)
            for i in range(1, 6):
                assert scene.run(f"k{i}").returncode == 0
            for _ in range(2):
                scene.podman("restart", "k1")
                scene.podman("wait", "k1", timeout=30)
            sizes = scene.rx.sizes()
            assert sizes[DENIED] == []  # enforcement held without the daemon
            assert len(sizes[ALLOWED]) == 6 + 5 + 2
            rrq = _rrq(sizes[ALLOWED])
            env.start()
            # Accounting catches up: the daemon serves every unit with exact counters.
            env.client.wait(lambda: len(env.client.units()) == 6, 15, "the daemon's units")
            runs = {"k0": 6, "k1": 3, "k2": 1, "k3": 1, "k4": 1, "k5": 1}
            scraped = env.scrape()
            names = {}
            for (metric, labels), _ in scraped.items():
                if metric == "ipacctd_unit_container_info":
                    lab = dict(labels)
                    names[lab["container_name"]] = lab["unit"]
            assert sorted(names) == sorted(runs)
            for cname, n in runs.items():
                unit = names[cname]
                scene.assert_exact(unit, n, rrq)
                egress = frozenset({("unit", unit), ("direction", "egress")})
                assert scraped[("ipacctd_unit_ip_packets_total", egress)] == n
                assert scraped[("ipacctd_unit_ip_dropped_packets_total", egress)] == n
            # The daemon bound nothing twice: one unit per container, no binding errors.
            assert len(env.client.units()) == 6
            assert "cannot bind" not in env.log(), env.log()
            # With the daemon back: a new container, and k2 restarted three times while the
            # daemon's binder follows the same cgroups: one unit each, counters exact.
            assert scene.run("k6").returncode == 0
            for _ in range(3):
                scene.podman("restart", "k2")
                scene.podman("wait", "k2", timeout=30)
            env.client.wait(lambda: len(env.client.units()) == 7, 15, "the daemon to see k6")
            time.sleep(1.0)  # give the binder time to react to the new cgroups (no 8th unit)
            assert len(env.client.units()) == 7
            assert "cannot bind" not in env.log(), env.log()
            sizes = scene.rx.sizes()
            assert sizes[DENIED] == []
            assert len(sizes[ALLOWED]) == 6 + 5 + 2 + 1 + 3
            scene.assert_exact(names["k2"], 4, rrq)
        finally:
            scene.close()


def test_the_daemon_alone_names_container_units_alike(tmp_path: Path, podman: Podman) -> None:
    """Without the hook the daemon binds containers as they appear (after a window: the
    hook is what closes it) and names their units the way the hook would."""
    from daemon_support import DaemonEnv

    with DaemonEnv(tmp_path) as env:
        scene = Scene(env.inst, podman)
        podman.install_hook(None)
        try:
            env.start()
            res = scene.run("solo", detach=True, command=["sleep", "30"])
            assert res.returncode == 0, res.stderr
            cid = podman.container_id("solo")
            want = f"podman-solo-{cid[:12]}.service"
            env.client.wait(lambda: want in env.client.units(), 15, "the daemon to bind solo")
            units = scene.units()
            assert list(units) == [want]
            assert units[want]["container"] == {
                "engine": "podman",
                "id": cid,
                "name": "solo",
                "pod": None,
            }
        finally:
            scene.close()


def test_armed_cgroup_parent_without_hook_or_daemon(scene: Scene, podman: Podman) -> None:
    """The recipe for engines that run no hooks (docker): ``attach`` a policy to the
    ``--cgroup-parent``; programs on a parent run for every child from its creation."""
    podman.install_hook(None)
    parent = f"/ipacctd-armed-{scene.inst.id}"
    scene.inst.make_cgroup(parent)
    try:
        scene.inst.ok("attach", parent, "--unit", "armed", "-p", f"IPAddressDeny={DENIED}")
        for i in range(3):
            res = scene.run(f"armed{i}", "--rm", f"--cgroup-parent={parent}")
            assert res.returncode == 0, res.stderr
    finally:
        podman.remove_containers()
        remove_v1_cgroups(parent)
    sizes = scene.rx.sizes()
    assert sizes[DENIED] == []
    assert len(sizes[ALLOWED]) == 3
    # The parent's unit counts its children's traffic together, exactly.
    scene.assert_exact("armed.service", 3, _rrq(sizes[ALLOWED]))


def test_overlapping_unit_files_merge_as_the_daemon_merges_them(scene: Scene) -> None:
    Path(scene.inst.unit_dir, "zz-more.unit").write_text(
        f"[Match]\nControlGroup={PARENT}/libpod-*\n[Service]\nIPAddressDeny={ALLOWED}\n"
    )
    res = scene.run("both", "--rm")
    assert res.returncode == 0, res.stderr
    assert scene.rx.sizes() == {DENIED: [], ALLOWED: []}  # both lists in force
    (unit,) = scene.units().values()
    assert unit["name"].startswith("podman-both-")
    assert unit["properties"]["IPAddressDeny"] == f"{ALLOWED}/32 {DENIED}/32"
    c = scene.counters(unit["name"])
    assert (c["egress_dropped_packets"], c["egress_packets"]) == (2, 0), c
