"""Costs that follow what changed (issue 13 item 5), shown by behaviour, not by timing:

* a change that does not touch the policy (``Description=``) swaps no programs: the
  programs on the unit's cgroup are the same ones, and still enforce;
* reading a unit's counters and state, and such a change, never parse the unit's stored
  address list: they work while that list's text would not parse at all.
"""

from __future__ import annotations

import hashlib
import json
import os

from e2e_helpers import Installation, one_line_error

from ipacctd.bpf.links import open_cgroup, prog_query
from ipacctd.datapath.counters import Direction
from ipacctd.datapath.unit import ATTACH

ADDRS = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
DENIED, ALLOWED, LATER = ADDRS


def programs_on(inst: Installation, unit: str) -> tuple[tuple[int, ...], ...]:
    """Ids of the programs on the unit's cgroup, ingress and egress."""
    fd = open_cgroup(os.path.join(inst.root_fs, unit))
    try:
        return tuple(prog_query(fd, ATTACH[d]).prog_ids for d in Direction)
    finally:
        os.close(fd)


def test_a_description_change_swaps_no_programs(inst: Installation) -> None:
    ns = inst.netns(ADDRS)
    agent = inst.start_unit(ns, "keep", f"IPAddressDeny={DENIED} {LATER}/32")
    before = programs_on(inst, "keep.service")
    assert all(before), before

    inst.ok("set-property", "keep", "Description=renamed")
    assert programs_on(inst, "keep.service") == before  # the very same programs
    props = inst.show("keep.service")
    assert props["Description"] == "renamed" and props["IPFirewallEnforced"] == "yes"
    assert agent.send(DENIED, 10) == "err 1"  # still enforced: EPERM
    assert agent.send(ALLOWED, 10) == "ok 10"

    # A change of the policy does swap them (so the comparison above can fail).
    inst.ok("set-property", "keep", "IPAddressDeny=", f"IPAddressDeny={DENIED}")
    after = programs_on(inst, "keep.service")
    assert all(after) and set(after[1]).isdisjoint(before[1]), (before, after)
    assert agent.send(LATER, 10) == "ok 10"
    assert agent.send(DENIED, 10) == "err 1"


def _meta_path(inst: Installation, unit: str) -> str:
    return os.path.join(inst.state_dir, "units", f"{unit}.json")


def _store_list(inst: Installation, unit: str, text: str) -> None:
    """Put ``text`` in the unit's metadata as its deny list, with a matching digest (as
    only root, who owns the state directory, could)."""
    path = _meta_path(inst, unit)
    with open(path) as f:
        meta = json.load(f)
    digest = hashlib.sha256(text.encode()).hexdigest()
    meta["properties"]["IPAddressDeny"] = {"canonical": text, "sha256": digest}
    with open(path, "w") as f:
        json.dump(meta, f)


def test_reads_and_a_description_change_never_parse_the_stored_list(inst: Installation) -> None:
    # A unit file with a list of some size; the claim does not depend on its size.
    nets = [f"2001:db8:{i:x}::/48" for i in range(1, 601)] + [f"{DENIED}/32"]
    with open(os.path.join(inst.unit_dir, "big.unit"), "w") as f:
        f.write("[Service]\n")
        for i in range(0, len(nets), 200):
            f.write(f"IPAddressDeny={' '.join(nets[i : i + 200])}\n")
    ns = inst.netns(ADDRS)
    agent = inst.start_unit(ns, "big")
    assert agent.send(DENIED, 10) == "err 1"
    assert agent.send(ALLOWED, 10) == "ok 10"
    with open(_meta_path(inst, "big.service")) as f:
        stored = json.load(f)["properties"]["IPAddressDeny"]
    assert stored["canonical"].split() == sorted(nets[-1:]) + nets[:-1]  # IPv4 first
    before = programs_on(inst, "big.service")

    # From here on the stored list does not parse: anything that parsed it would fail.
    _store_list(inst, "big.service", "not-an-address " + stored["canonical"])
    assert inst.ok("show", "big", "-p", "IPEgressBytes", "--value").stdout.strip() == str(10 + 28)
    assert "big.service" in inst.ok("list-units").stdout
    assert inst.ok("show", "big", "-p", "IPFirewallEnforced", "--value").stdout == "yes\n"
    inst.ok("status", "big")
    inst.ok("set-property", "big", "Description=renamed")
    assert programs_on(inst, "big.service") == before
    assert agent.send(DENIED, 10) == "err 1"

    # A change of the policy needs the list itself: parsed now, refused with the word that
    # does not parse, and nothing changes.
    res = inst.cli("set-property", "big", f"IPAddressDeny={LATER}")
    one_line_error(res, "not-an-address", "IPAddressDeny")
    assert programs_on(inst, "big.service") == before
    assert inst.ok("show", "big", "-p", "Description", "--value").stdout == "renamed\n"
    assert agent.send(LATER, 10) == "ok 10"

    # Put back what ipacctd wrote: the list parses again and a change goes through.
    _store_list(inst, "big.service", stored["canonical"])
    inst.ok("set-property", "big", f"IPAddressDeny={LATER}")
    assert agent.send(LATER, 10) == "err 1"
