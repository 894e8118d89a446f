"""The drop path's busy flag, deposits and legacy slots (see ipacctd/datapath/denied.py), and
exact counts under a flood of denied packets from both CPUs at once."""

from __future__ import annotations

import ipaddress
import json
import os
import struct
import sys

import model
import pytest
from lookup_strategies import force
from model import ip_length, udp_frame

from ipacctd.bpf.maps import possible_cpus
from ipacctd.datapath import counters, denied
from ipacctd.datapath.counters import Direction
from ipacctd.datapath.unit import Spec, UnitDatapath, build_programs

net = ipaddress.ip_network
SPEC = Spec(deny=(net("198.51.100.0/24"), net("2001:db8::/64")))
A = udp_frame("192.0.2.1", "198.51.100.9")  # egress: a denied destination
B = udp_frame("192.0.2.1", "198.51.100.10")


def _slot_values(log: denied.Log, direction: Direction) -> list[bytearray]:
    """Each CPU's slot for ``direction``, as raw bytes."""
    assert log.slots is not None
    raw = log.slots.lookup_raw(struct.pack("=I", int(direction)))
    assert raw is not None
    stride = (log.slots.value_size + 7) & ~7
    return [bytearray(raw[i * stride : (i + 1) * stride]) for i in range(possible_cpus())]


def _set_slots(log: denied.Log, direction: Direction, slots: list[bytearray]) -> None:
    assert log.slots is not None
    log.slots.update_raw(struct.pack("=I", int(direction)), b"".join(slots))


def _busy(log: denied.Log, value: int) -> None:
    """Mark the egress slot of every CPU taken (1) or free (0), as a program would."""
    slots = _slot_values(log, Direction.EGRESS)
    for s in slots:
        struct.pack_into("=I", s, denied.SLOT_BUSY, value)
    _set_slots(log, Direction.EGRESS, slots)


def _deposits(log: denied.Log) -> tuple[int, ...]:
    """(signal, dropped packets, bytes, audit packets, bytes) summed over CPUs (egress)."""
    sums = [0] * 5
    for s in _slot_values(log, Direction.EGRESS):
        for i, v in enumerate(struct.unpack_from("=5Q", s, denied.SLOT_DEPOSITS)):
            sums[i] += v
    return tuple(sums)


@pytest.mark.parametrize("audit", [False, True], ids=["enforce", "audit"])
def test_a_busy_slot_sends_counts_to_the_hash_and_deposits_then_the_owner_folds_them(
    audit: bool,
) -> None:
    """A packet that finds the slot taken (it interrupted the owner) logs its address in
    the hash directly and deposits its counts; the next packet's program, owning the slot,
    moves the deposits into the counters: nothing lost, nothing twice."""
    spec = Spec(deny=SPEC.deny, audit=audit)
    kind = "audit" if audit else "dropped"
    with counters.create_map() as cmap, denied.create_map(guarded=True) as log:
        assert denied.guarded(log)
        progs = build_programs(spec, cmap, log)
        try:
            want = 1 if audit else 0
            assert progs.egress.test_run(A, 1).retval == want  # the slot holds A now
            _busy(log, 1)
            assert progs.egress.test_run(A, 5).retval == want  # all five find it busy
            assert progs.egress.test_run(B, 2).retval == want
            c = counters.read(cmap)
            assert getattr(c, f"egress_{kind}_packets") == 1  # the five and two deposited
            dep = (5 + 2) * ip_length(A)
            assert _deposits(log) == ((7, 7, dep, 0, 0) if not audit else (7, 0, 0, 7, dep))
            in_hash = {e["address"]: e["packets"] for e in denied.decode(log.table)}
            assert in_hash == {"198.51.100.9": 5, "198.51.100.10": 2}
            # The log shows hash and slot merged: 1 + 5 for A.
            got = {e["address"]: e["packets"] for e in denied.decode(log)}
            assert got == {"198.51.100.9": 6, "198.51.100.10": 2}
            _busy(log, 0)  # the owner released the slot
            assert progs.egress.test_run(A, 1).retval == want  # owns it, then folds
            c = counters.read(cmap)
            assert getattr(c, f"egress_{kind}_packets") == 1 + 7 + 1
            assert getattr(c, f"egress_{kind}_bytes") == (1 + 7 + 1) * ip_length(A)
            assert _deposits(log) == (0,) * 5
            if audit:  # and passed, counted with lock add
                assert c.egress_packets == 1 + 7 + 1
            got = {e["address"]: e["packets"] for e in denied.decode(log)}
            assert got == {"198.51.100.9": 7, "198.51.100.10": 2}
            assert all(s[denied.SLOT_BUSY] == 0 for s in _slot_values(log, Direction.EGRESS))
        finally:
            progs.close()


def test_deposits_of_the_other_kind_go_to_their_own_counters() -> None:
    """An audit-mode program's deposits (a policy change raced it) are folded into the audit
    counters by an enforcing owner, and the other way round."""
    with counters.create_map() as cmap, denied.create_map(guarded=True) as log:
        audit = build_programs(Spec(deny=SPEC.deny, audit=True), cmap, log)
        enforce = build_programs(SPEC, cmap, log)
        try:
            _busy(log, 1)
            audit.egress.test_run(A, 3)
            enforce.egress.test_run(A, 2)
            _busy(log, 0)
            enforce.egress.test_run(A, 1)
            c = counters.read(cmap)
            assert (c.egress_audit_packets, c.egress_dropped_packets) == (3, 2 + 1)
            assert c.egress_audit_bytes == 3 * ip_length(A)
            assert {e["address"]: e["packets"] for e in denied.decode(log)} == {"198.51.100.9": 6}
        finally:
            audit.close()
            enforce.close()


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "legacy"])
@pytest.mark.parametrize("audit", [False, True], ids=["enforce", "audit"])
@pytest.mark.parametrize("accounting", [False, True], ids=["noacct", "acct"])
@pytest.mark.parametrize("deny", ["v4", "v6", "both", "any"])
@pytest.mark.parametrize("strategy", ["inline", "lpm", "multibit-16-4", "lenhash-12"])
def test_every_shape_verifies_with_either_slot_layout(
    monkeypatch, strategy: str, deny: str, accounting: bool, audit: bool, guarded: bool
) -> None:
    """The verifier accepts the guarded and the legacy drop and pass paths for each lookup
    strategy, with an allow hole, in enforce and audit mode; a denied packet gets its
    verdict and is counted once."""
    force(monkeypatch, strategy)
    lists = {
        "v4": (net("198.51.100.0/24"), net("10.0.0.0/8")),
        "v6": (net("2001:db8::/64"), net("2001:db8:2::1/128")),
        "both": (net("198.51.100.0/24"), net("2001:db8::/64")),
        "any": (net("0.0.0.0/0"), net("::/0")),
    }
    spec = Spec(
        allow=(net("198.51.100.7/32"), net("2001:db8::7/128")),
        deny=lists[deny],
        accounting=accounting,
        audit=audit,
    )
    if deny == "v6":
        frame = udp_frame("2001:db8:1::1", "2001:db8::9")
    else:
        frame = udp_frame("192.0.2.1", "198.51.100.9")
    with counters.create_map() as cmap, denied.create_map(guarded=guarded) as log:
        progs = build_programs(spec, cmap, log)
        try:
            assert progs.egress.test_run(frame, 3).retval == (1 if audit else 0)
        finally:
            progs.close()
        c = counters.read(cmap)
        assert getattr(c, f"egress_{'audit' if audit else 'dropped'}_packets") == 3
        assert c.egress_packets == (3 if audit and accounting else 0)


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "legacy"])
@pytest.mark.parametrize("strategy", ["inline", "lpm", "multibit-16-4", "lenhash-12"])
def test_both_slot_layouts_log_and_count_exactly(monkeypatch, strategy: str, guarded: bool) -> None:
    """Runs of packets to alternating addresses, both families and directions: the log and
    the counters agree exactly, with the busy-flag slots and with legacy ones."""
    force(monkeypatch, strategy)
    sends = [  # (direction, source, destination, packets)
        ("egress", "192.0.2.1", "198.51.100.9", 40),
        ("egress", "192.0.2.1", "198.51.100.10", 3),
        ("egress", "2001:db8:1::1", "2001:db8::9", 5),
        ("ingress", "198.51.100.11", "192.0.2.1", 4),
        ("egress", "192.0.2.1", "198.51.100.9", 1),
        ("ingress", "2001:db8::12", "2001:db8:1::1", 6),
    ]
    with counters.create_map() as cmap, denied.create_map(guarded=guarded) as log:
        assert denied.guarded(log) == guarded
        progs = build_programs(SPEC, cmap, log)
        try:
            for direction, src, dst, times in sends:
                prog = progs.egress if direction == "egress" else progs.ingress
                assert prog.test_run(udp_frame(src, dst), times).retval == 0
        finally:
            progs.close()
        got = {
            (e["address"], e["direction"]): (e["packets"], e["bytes"]) for e in denied.decode(log)
        }
        c = counters.read(cmap)
    want: dict[tuple[str, str], tuple[int, int]] = {}
    for direction, src, dst, times in sends:
        key = (dst if direction == "egress" else src, direction)
        p, b = want.get(key, (0, 0))
        want[key] = (p + times, b + times * ip_length(udp_frame(src, dst)))
    assert got == want
    for direction in ("egress", "ingress"):
        mine = [v for (_, d), v in want.items() if d == direction]
        assert getattr(c, f"{direction}_dropped_packets") == sum(p for p, _ in mine)
        assert getattr(c, f"{direction}_dropped_bytes") == sum(b for _, b in mine)


def test_a_log_added_to_a_unit_later_gets_legacy_slots(cgroup_dir, pin_root) -> None:
    """A unit made without a deny list gets its log with its first one: legacy slots, as
    its counters may have been written by programs without the busy flag; a unit made with
    a deny list has the busy-flag slots."""
    later = UnitDatapath.create(os.path.join(pin_root, "later"), None, Spec())
    first = UnitDatapath.create(os.path.join(pin_root, "first"), None, SPEC)
    try:
        later.apply(SPEC)
        for dp, want in ((later, False), (first, True)):
            log = dp.denied_map()
            assert log is not None
            with log:
                assert denied.guarded(log) == want
    finally:
        later.remove()
        first.remove()


# Sends ``count`` datagrams to each destination in turn (runs of ``run``) from a process
# bound to one CPU; prints the number of sends refused with EPERM per destination.
FLOOD = r"""
import errno, json, os, socket, sys
cpu, plan, run = int(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
os.sched_setaffinity(0, {cpu})
socks = {}
refused = {dst: 0 for dst, _, _ in plan}
left = {dst: count for dst, count, _ in plan}
while any(left.values()):
    for dst, _, size in plan:
        fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
        s = socks.setdefault(dst, socket.socket(fam, socket.SOCK_DGRAM))
        for _ in range(min(run, left[dst])):
            left[dst] -= 1
            try:
                s.sendto(b"f" * size, (dst, 9))
            except OSError as e:
                if e.errno != errno.EPERM:
                    raise
                refused[dst] += 1
print(json.dumps(refused))
"""


def test_a_flood_from_both_cpus_is_counted_and_logged_exactly(
    netns_factory, cgroup_dir, pin_root
) -> None:
    """Two senders in the unit, one per CPU, flood denied addresses (runs of one address,
    then the next: slot take-overs on both CPUs): every refused datagram is in the dropped
    counters and in the log, exactly, and no slot is left taken."""
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        pytest.fail("this test needs two CPUs")
    ns = netns_factory(
        ["198.51.100.9", "198.51.100.10", "198.51.100.11", "2001:db8::9", "2001:db8::7"]
    )
    dp = UnitDatapath.create(os.path.join(pin_root, "flood"), cgroup_dir, SPEC)
    try:
        plans = [
            [("198.51.100.9", 20000, 10), ("198.51.100.10", 5000, 30), ("2001:db8::9", 7000, 5)],
            [("198.51.100.9", 15000, 20), ("2001:db8::7", 9000, 1), ("198.51.100.11", 3000, 0)],
        ]
        procs = [
            ns.popen(
                [sys.executable, "-c", FLOOD, str(cpu), json.dumps(plan), str(run)],
                cgroup_dir,
                stdout=-1,
                stderr=-1,
            )
            for cpu, plan, run in ((0, plans[0], 700), (1, plans[1], 300))
        ]
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            results.append(json.loads(out))
        want: dict[str, tuple[int, int]] = {}
        for plan, refused in zip(plans, results, strict=True):
            for dst, count, size in plan:
                assert refused[dst] == count  # every one refused
                p, b = want.get(dst, (0, 0))
                want[dst] = (p + count, b + count * model.udp_ip_bytes(size, _version(dst)))
        c = dp.read()
        assert c.egress_dropped_packets == sum(p for p, _ in want.values())
        assert c.egress_dropped_bytes == sum(b for _, b in want.values())
        log = dp.denied_map()
        assert log is not None
        with log:
            assert denied.guarded(log)
            got = {e["address"]: (e["packets"], e["bytes"]) for e in denied.decode(log)}
        assert got == want
        assert set(_busy_flags(dp)) == {0}
    finally:
        dp.remove()


def _version(address: str) -> int:
    return ipaddress.ip_address(address).version


def _busy_flags(dp: UnitDatapath) -> list[int]:
    """Each CPU's busy flag, both directions: all free once the programs are done."""
    log = dp.denied_map()
    assert log is not None
    with log:
        return [
            struct.unpack_from("=I", s, denied.SLOT_BUSY)[0]
            for d in Direction
            for s in _slot_values(log, d)
        ]
