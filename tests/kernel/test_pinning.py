"""A pinned datapath is kernel state: it outlives its creator, any process can open it, and
removing the pins detaches it."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import model
import pytest

from ipacctd.bpf.links import open_cgroup, prog_query
from ipacctd.bpf.maps import PerCPUArrayMap
from ipacctd.bpf.programs import Program
from ipacctd.datapath import denied
from ipacctd.datapath.counters import Counters, Direction
from ipacctd.datapath.unit import ATTACH, COUNTERS, LINK, Spec, UnitDatapath

net = ipaddress.ip_network
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ADDRS = ["192.0.2.1", "198.51.100.1"]
ALLOWED, DENIED = ADDRS

CREATE = r"""
import ipaddress, sys
from ipacctd.datapath.unit import Spec, UnitDatapath
pin_dir, cgroup_path, denied = sys.argv[1:4]
dp = UnitDatapath.create(pin_dir, cgroup_path,
                         Spec(deny=(ipaddress.ip_network(denied),), accounting=True))
dp.close()
print("created")
"""

# One UDP datagram per destination to a receiver in the same process; ok, lost or errno name.
UDP = r"""
import errno, json, socket, sys
out = []
for dst, size in json.loads(sys.argv[1]):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        r.bind((dst, 0))
        r.settimeout(0.5)
        try:
            s.sendto(b"p" * size, (dst, r.getsockname()[1]))
        except OSError as e:
            out.append(errno.errorcode.get(e.errno, str(e.errno)))
            continue
        try:
            out.append("ok" if len(r.recv(65536)) == size else "short")
        except socket.timeout:
            out.append("lost")
print(json.dumps(out))
"""


def udp(ns, sends: list[tuple[str, int]], cgroup_fs: str | None) -> list[str]:
    res = ns.python(UDP, cgroup_fs=cgroup_fs, args=[json.dumps(sends)], timeout=30)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def attached(cgroup_path: str) -> dict[Direction, tuple[int, ...]]:
    """Program ids on each hook of the cgroup itself (PROG_QUERY)."""
    fd = open_cgroup(cgroup_path)
    try:
        return {d: prog_query(fd, ATTACH[d]).prog_ids for d in Direction}
    finally:
        os.close(fd)


def create_in_subprocess(pin_dir: str, cgroup_path: str, denied: str) -> None:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, "-c", CREATE, pin_dir, cgroup_path, denied],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "created"


@pytest.fixture
def pin_dir(pin_root):
    path = os.path.join(pin_root, "unit")
    yield path
    if os.path.exists(path):  # detach what a failed test left attached
        UnitDatapath.open(path).remove()


def test_datapath_outlives_its_creator(netns_factory, cgroup_dir, pin_dir) -> None:
    ns = netns_factory(ADDRS)
    create_in_subprocess(pin_dir, cgroup_dir, f"{DENIED}/32")
    # The creator has exited: only the pins hold the maps, programs and links.
    # counters and links; with a deny list also the denied-addresses log
    assert sorted(os.listdir(pin_dir)) == sorted(
        [COUNTERS, denied.PIN, denied.SLOTS_PIN, *LINK.values()]
    )
    hooks = attached(cgroup_dir)
    with UnitDatapath.open(pin_dir) as dp:
        assert dp.attached()
        for d in Direction:
            with dp.link(d) as link:
                info = link.info()
            assert hooks[d] == (info.prog_id,)
            assert info.attach_type == ATTACH[d]
        assert dp.read() == Counters()
        assert udp(ns, [(DENIED, 30), (ALLOWED, 40), (ALLOWED, 50)], cgroup_dir) == [
            "EPERM",
            "ok",
            "ok",
        ]
        ok = model.udp_ip_bytes(40, 4) + model.udp_ip_bytes(50, 4)
        bad = model.udp_ip_bytes(30, 4)
        assert dp.read() == Counters(
            ingress_packets=2,
            ingress_bytes=ok,
            egress_packets=2,
            egress_bytes=ok,
            egress_dropped_packets=1,
            egress_dropped_bytes=bad,
        )
    # A second, independent opener sees the same counters (they live in the kernel).
    with PerCPUArrayMap.open_pinned(os.path.join(pin_dir, COUNTERS)) as m:
        assert m.sum_u64(0)[:4] == [2, ok, 2, ok]

    dp = UnitDatapath.open(pin_dir)
    dp.remove()
    assert not os.path.exists(pin_dir)
    assert attached(cgroup_dir) == {d: () for d in Direction}
    # Enforcement is gone: the formerly denied address is reachable from the cgroup.
    assert udp(ns, [(DENIED, 30)], cgroup_dir) == ["ok"]


def test_apply_keeps_the_counters_map_and_links_and_swaps_programs(
    netns_factory, cgroup_dir, pin_dir
) -> None:
    ns = netns_factory(ADDRS)
    create_in_subprocess(pin_dir, cgroup_dir, f"{DENIED}/32")
    dp = UnitDatapath.open(pin_dir)
    try:
        map_id = dp.counters_map.info().id
        before = {}
        for d in Direction:
            with dp.link(d) as link:
                info = link.info()
                before[d] = (info.id, info.prog_id)
        assert udp(ns, [(ALLOWED, 10), (DENIED, 10)], cgroup_dir) == ["ok", "EPERM"]
        counted = dp.read()

        dp.apply(Spec(deny=(net(f"{ALLOWED}/32"),)))

        assert dp.counters_map.info().id == map_id
        with UnitDatapath.open(pin_dir) as again:
            assert again.counters_map.info().id == map_id
        hooks = attached(cgroup_dir)
        for d in Direction:
            with dp.link(d) as link:
                info = link.info()
            old_link, old_prog = before[d]
            assert info.id == old_link, "the same link carries the new program"
            assert info.prog_id != old_prog, "the program was swapped"
            assert hooks[d] == (info.prog_id,)
            with Program.from_id(info.prog_id) as prog:
                assert map_id in prog.info().map_ids
        # counters carried over, new policy enforced
        assert dp.read() == counted
        assert udp(ns, [(ALLOWED, 10), (DENIED, 10)], cgroup_dir) == ["EPERM", "ok"]
        n = model.udp_ip_bytes(10, 4)
        assert dp.read() - counted == Counters(
            ingress_packets=1,
            ingress_bytes=n,
            egress_packets=1,
            egress_bytes=n,
            egress_dropped_packets=1,
            egress_dropped_bytes=n,
        )
    finally:
        dp.close()


def test_open_without_pins_is_not_found(pin_root) -> None:
    from ipacctd.errors import NotFound

    with pytest.raises(NotFound):
        UnitDatapath.open(os.path.join(pin_root, "missing"))


def test_create_refuses_existing_pins(cgroup_dir, pin_dir) -> None:
    from ipacctd.errors import AlreadyExists

    dp = UnitDatapath.create(pin_dir, cgroup_dir, Spec())
    try:
        with pytest.raises(AlreadyExists):
            UnitDatapath.create(pin_dir, cgroup_dir, Spec())
        # the refused second create attached nothing more
        assert all(len(ids) == 1 for ids in attached(cgroup_dir).values())
    finally:
        dp.remove()
