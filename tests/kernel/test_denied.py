"""The denied-addresses log: which remote addresses were denied, per direction, how often."""

from __future__ import annotations

import ipaddress
import os

import pytest
from lookup_strategies import force
from model import ip_length, udp_frame

from ipacctd.datapath import counters, denied
from ipacctd.datapath.counters import Direction
from ipacctd.datapath.unit import Spec, build_programs


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


@pytest.mark.parametrize("strategy", ["inline", "lpm", "multibit-16-4", "lenhash-12"])
@pytest.mark.parametrize("audit", [False, True])
@pytest.mark.parametrize(
    "deny",
    [("198.51.100.0/24", "2001:db8::/64"), ("0.0.0.0/0", "::/0")],  # lookup and constant verdicts
)
def test_denied_addresses_are_logged_per_direction(
    monkeypatch, deny: tuple[str, ...], audit: bool, strategy: str
) -> None:
    force(monkeypatch, strategy)
    spec = Spec(allow=(net("198.51.100.7"),), deny=tuple(net(d) for d in deny), audit=audit)
    with counters.create_map() as cmap, denied.create_map() as dmap:
        progs = build_programs(spec, cmap, dmap)
        try:
            sends = [
                # (program, frame, times)
                (progs.egress, udp_frame("203.0.113.1", "198.51.100.9"), 3),  # denied dst
                (progs.egress, udp_frame("203.0.113.1", "198.51.100.7"), 2),  # allowed hole
                (progs.ingress, udp_frame("198.51.100.10", "203.0.113.1"), 1),  # denied src
                (progs.egress, udp_frame("2001:db8::1", "2001:db8::9"), 2),  # denied v6 dst
            ]
            for prog, frame, times in sends:
                for _ in range(times):
                    prog.test_run(frame)
        finally:
            progs.close()
        entries = {(e["address"], e["direction"]): e for e in denied.decode(dmap)}
        v4 = ip_length(udp_frame("203.0.113.1", "198.51.100.9"))
        v6 = ip_length(udp_frame("2001:db8::1", "2001:db8::9"))
        assert set(entries) == {
            ("198.51.100.9", "egress"),
            ("198.51.100.10", "ingress"),
            ("2001:db8::9", "egress"),
        }
        assert entries["198.51.100.9", "egress"]["packets"] == 3
        assert entries["198.51.100.9", "egress"]["bytes"] == 3 * v4
        assert entries["198.51.100.10", "ingress"]["packets"] == 1
        assert entries["2001:db8::9", "egress"]["bytes"] == 2 * v6
        assert all(
            e["last_seen_ago"] is not None and e["last_seen_ago"] < 60 for e in entries.values()
        )
        # most packets first
        assert denied.decode(dmap)[0]["address"] == "198.51.100.9"
        c = counters.read(cmap)
        kind = "audit" if audit else "dropped"
        assert getattr(c, f"egress_{kind}_packets") == 5
        assert getattr(c, f"ingress_{kind}_packets") == 1


def test_log_is_bounded_by_lru() -> None:
    spec = Spec(deny=(net("198.51.100.0/24"), net("203.0.113.0/24")))
    with counters.create_map() as cmap, denied.create_map() as dmap:
        progs = build_programs(spec, cmap, dmap)
        try:
            for _ in range(2):
                for host in range(256):
                    progs.egress.test_run(udp_frame("192.0.2.1", f"198.51.100.{host}"))
                    progs.egress.test_run(udp_frame("192.0.2.1", f"203.0.113.{host}"))
        finally:
            progs.close()
        entries = denied.decode(dmap)
        assert 0 < len(entries) <= denied.MAX_ENTRIES
        assert counters.read(cmap).egress_dropped_packets == 2 * 512
        assert Direction.EGRESS.name.lower() == entries[0]["direction"]


def test_inspect_shows_a_multibit_table(monkeypatch) -> None:
    """inspect names the multibit table's role and size instead of listing entries."""
    from ipacctd.bpf.maps import open_map_id
    from ipacctd.manager import inspect

    force(monkeypatch, "multibit-16-4")
    spec = Spec(deny=(net("198.51.100.0/24"), net("203.0.113.7"), net("10.0.0.0/8")))
    with counters.create_map() as cmap:
        progs = build_programs(spec, cmap)
        try:
            assert progs.strategy(4) == "multibit"
            shown = []
            for map_id in progs.egress.info().map_ids:
                with open_map_id(map_id) as m:
                    shown.append(inspect._map(m))
        finally:
            progs.close()
    (table,) = [m for m in shown if m["role"].startswith("policy")]
    assert table["type"] == "array" and table["entries"] == []
    assert table["count"] == 3
    # the /24 needs a chunk at levels 1 and 2, the /32 one at each of the four levels
    assert table["multibit"] == {"prefixes": 3, "chunks": 2 + 4, "strides": [16, 4, 4, 4, 4]}
    assert "multibit table: 3 prefixes, strides 16-4-4-4-4" in table["role"]


def test_slots_hold_a_flood_and_hand_it_to_the_hash_exactly() -> None:
    """A run of packets to one address is counted in the CPU's slot, not the hash; the log
    shows it all the same, and the next address moves it into the hash without loss."""
    spec = Spec(deny=(net("198.51.100.0/24"), net("2001:db8::/64")))
    first = udp_frame("192.0.2.1", "198.51.100.9")
    second = udp_frame("2001:db8::1", "2001:db8::9")
    with counters.create_map() as cmap, denied.create_map() as log:
        progs = build_programs(spec, cmap, log)
        try:
            progs.egress.test_run(first, 50)  # one run of 50 packets on one CPU
            assert list(log.table.items_raw()) == []  # all in the slot
            (entry,) = denied.decode(log)
            assert (entry["address"], entry["packets"]) == ("198.51.100.9", 50)
            assert entry["bytes"] == 50 * ip_length(first)
            progs.egress.test_run(second, 7)  # takes the slot over: the 50 go to the hash
            in_hash = denied.decode(log.table)
            assert [(e["address"], e["packets"]) for e in in_hash] == [("198.51.100.9", 50)]
            got = {e["address"]: (e["packets"], e["bytes"]) for e in denied.decode(log)}
            assert got == {
                "198.51.100.9": (50, 50 * ip_length(first)),
                "2001:db8::9": (7, 7 * ip_length(second)),
            }
            progs.egress.test_run(first, 3)  # back again: added to the hash's entry
            progs.egress.test_run(second, 1)
            got = {e["address"]: e["packets"] for e in denied.decode(log)}
            assert got == {"198.51.100.9": 53, "2001:db8::9": 8}
        finally:
            progs.close()
        assert counters.read(cmap).egress_dropped_packets == 50 + 7 + 3 + 1


def test_a_log_pinned_without_slots_gets_them() -> None:
    """A unit pinned before the slots existed: opening its log to build programs adds and
    pins them; opening it to read does not."""
    from ipacctd.bpf import bpffs
    from ipacctd.bpf.maps import LRUHashMap

    pin_dir = os.path.join(bpffs.ensure_mounted(), f"ipacctd-test-denied-{os.getpid()}")
    bpffs.make_dir(pin_dir)
    try:
        path = os.path.join(pin_dir, denied.PIN)
        with LRUHashMap.new(denied.KEY_SIZE, denied.VALUE_SIZE, 8, denied.MAP_NAME) as old:
            old.pin(path)
        with denied.open_pinned(path) as log:
            assert log.slots is None
            assert denied.decode(log) == []
        assert not os.path.exists(os.path.join(pin_dir, denied.SLOTS_PIN))
        with denied.open_pinned(path, create=True) as log:
            assert log.slots is not None
        assert os.path.exists(os.path.join(pin_dir, denied.SLOTS_PIN))
    finally:
        bpffs.remove_tree(pin_dir)


def test_inspect_shows_a_lenhash_table(monkeypatch) -> None:
    """inspect names the lenhash root's role and shape, and its hashes' role."""
    from ipacctd.bpf.maps import open_map_id
    from ipacctd.manager import inspect

    force(monkeypatch, "lenhash-12")
    spec = Spec(allow=(net("2001:db8:1::/48"),), deny=(net("2001:db8::/32"), net("2001:db9::7")))
    with counters.create_map() as cmap:
        progs = build_programs(spec, cmap)
        try:
            assert progs.strategy(6) == "lenhash"
            shown = []
            for map_id in progs.egress.info().map_ids:
                with open_map_id(map_id) as m:
                    shown.append(inspect._map(m))
        finally:
            progs.close()
    roles = sorted(m["role"] for m in shown if m["role"].startswith("policy"))
    assert roles == [
        "policy (IPv6, lenhash root: 3 prefixes, 12 root bits, hashed lengths 128,48,32)",
        "policy (IPv6, lenhash: prefixes by length, one hash per key size)",
        "policy (IPv6, lenhash: prefixes by length, one hash per key size)",
        "policy (IPv6, lenhash: prefixes by length, one hash per key size)",
    ]
