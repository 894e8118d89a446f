"""Costs that follow what changed (issue 13 item 5), shown by behaviour, not by timing:

* a change that does not touch the policy (``Description=``) swaps no programs: the
  programs on the unit's cgroup are the same ones, and still enforce;
* reading a unit's counters and state, and such a change, never parse the unit's stored
  address list: they work while that list's text would not parse at all;
* a long list lives in a file of its own beside the metadata (manager/store.py), and those
  same reads and changes do not even read it: they work while the file is damaged (any
  read would find it does not match its digest), and a change of the policy, which needs
  it, is refused for that very reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

from e2e_helpers import PY, REPO, Installation, one_line_error

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


def _start_big(inst: Installation):
    """A running unit whose unit file holds a list of some size (the claims do not depend
    on its size), its agent, the stored list's canonical text and the metadata's entry."""
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
        entry = json.load(f)["properties"]["IPAddressDeny"]
    # Long: kept in a file of its own, named by its digest (the metadata holds no text).
    assert set(entry) == {"sha256", "count"} and entry["count"] == len(nets), entry
    with open(_list_path(inst, "big.service", entry["sha256"])) as f:
        text = f.read()
    assert text.split() == sorted(nets[-1:]) + nets[:-1]  # IPv4 first
    assert hashlib.sha256(text.encode()).hexdigest() == entry["sha256"]
    return agent, text, entry


def _list_path(inst: Installation, unit: str, digest: str) -> str:
    return os.path.join(inst.state_dir, "lists", unit, digest)


def _reads_and_a_description_change(inst: Installation, agent, before, count: int) -> None:
    assert inst.ok("show", "big", "-p", "IPEgressBytes", "--value").stdout.strip() == str(10 + 28)
    assert "big.service" in inst.ok("list-units").stdout
    assert inst.ok("show", "big", "-p", "IPFirewallEnforced", "--value").stdout == "yes\n"
    status = inst.ok("status", "big").stdout
    assert f"IPAddressDeny=({count} prefixes; 'ipacctd show big.service -p IPAddress" in status
    assert inst.ok("is-active", "big").stdout == "active\n"
    inst.ok("set-property", "big", "Description=renamed")
    assert programs_on(inst, "big.service") == before
    assert agent.send(DENIED, 10) == "err 1"


def test_reads_and_a_description_change_never_read_the_list_file(inst: Installation) -> None:
    agent, text, entry = _start_big(inst)
    before = programs_on(inst, "big.service")
    # From here on the list file does not match its digest: anything that read it fails.
    path = _list_path(inst, "big.service", entry["sha256"])
    with open(path, "w") as f:
        f.write("198.51.100.3/32 " + text)
    _reads_and_a_description_change(inst, agent, before, 601)
    with open(_meta_path(inst, "big.service")) as f:
        assert json.load(f)["properties"]["IPAddressDeny"] == entry  # named, not rewritten

    # A change of the policy needs the list itself: read now, refused as damaged, and
    # nothing changes.
    res = inst.cli("set-property", "big", f"IPAddressDeny={LATER}")
    one_line_error(res, path, "does not match its sha256")
    assert programs_on(inst, "big.service") == before
    assert inst.ok("show", "big", "-p", "Description", "--value").stdout == "renamed\n"
    assert agent.send(LATER, 10) == "ok 10"
    # show -p of the list itself reads it (so the reads above could have failed).
    one_line_error(inst.cli("show", "big", "-p", "IPAddressDeny"), "does not match its sha256")

    # Put back what ipacctd wrote: a change goes through, and the new list is a new file.
    with open(path, "w") as f:
        f.write(text)
    inst.ok("set-property", "big", f"IPAddressDeny={LATER}")
    assert agent.send(LATER, 10) == "err 1"
    with open(_meta_path(inst, "big.service")) as f:
        new = json.load(f)["properties"]["IPAddressDeny"]
    assert new["count"] == 602 and os.path.exists(_list_path(inst, "big.service", new["sha256"]))
    assert os.path.exists(path)  # the replaced one stays for a while (readers of the old)
    inst.ok("stop", "big")
    inst.ok("reset", "big")
    assert not os.path.exists(os.path.join(inst.state_dir, "lists", "big.service"))


def test_reads_and_a_description_change_never_parse_a_list_of_0_2_1(inst: Installation) -> None:
    """Metadata of 0.2.1 (every list inline, text and digest) is read as before, without
    parsing its lists; the next write moves a long one to a file of its own."""
    agent, text, _ = _start_big(inst)
    before = programs_on(inst, "big.service")
    # From here on the stored list does not parse: anything that parsed it would fail.
    _store_list(inst, "big.service", "not-an-address " + text)
    _reads_and_a_description_change(inst, agent, before, 602)

    # A change of the policy needs the list itself: parsed now, refused with the word that
    # does not parse, and nothing changes.
    res = inst.cli("set-property", "big", f"IPAddressDeny={LATER}")
    one_line_error(res, "not-an-address", "IPAddressDeny")
    assert programs_on(inst, "big.service") == before
    assert inst.ok("show", "big", "-p", "Description", "--value").stdout == "renamed\n"
    assert agent.send(LATER, 10) == "ok 10"

    # Put back what ipacctd wrote: the list parses again and a change goes through.
    _store_list(inst, "big.service", text)
    inst.ok("set-property", "big", f"IPAddressDeny={LATER}")
    assert agent.send(LATER, 10) == "err 1"
    with open(_meta_path(inst, "big.service")) as f:
        assert set(json.load(f)["properties"]["IPAddressDeny"]) == {"sha256", "count"}


#: Imported by none of the read verbs nor by a Description= change, on a live unit whose
#: programs are checked in the kernel (PROG_QUERY, link info): dataclasses (and inspect,
#: ~5 ms of start-up) and logging (~3-5 ms: only failure and recovery paths log).
HEAVY = ("dataclasses", "inspect", "logging")

MODULES_PROBE = """
import contextlib, io, json, sys
from ipacctd.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "modules": sorted(sys.modules)}))
"""


def test_reads_of_a_live_unit_import_no_heavy_modules(inst: Installation) -> None:
    ns = inst.netns(["198.51.100.1"])
    inst.start_unit(ns, "light", "IPAddressDeny=198.51.100.1")
    assert "(enforced)" in inst.ok("status", "light").stdout  # programs found in the kernel
    for argv in (
        ("status", "light"),
        ("show", "light"),
        ("list-units",),
        ("is-active", "light"),
        ("set-property", "light", "Description=lighter"),
    ):
        res = subprocess.run(
            [PY, "-c", MODULES_PROBE, *argv],
            env={**inst.environ(), "IPACCTD_NO_DAEMON": "1"},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, (argv, res.stderr)
        out = json.loads(res.stdout.splitlines()[-1])
        assert out["rc"] == 0, (argv, out)
        assert not set(HEAVY) & set(out["modules"]), (argv, set(HEAVY) & set(out["modules"]))
    assert inst.ok("show", "-P", "Description", "light").stdout == "lighter\n"
