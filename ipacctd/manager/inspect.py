"""What bpftool would show about a unit, decoded: links, programs, maps and their contents."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from ipacctd.bpf import asm
from ipacctd.bpf.errors import BPFError
from ipacctd.bpf.links import CgroupLink
from ipacctd.bpf.maps import LPMTrieMap, Map, PerCPUArrayMap, open_map_id
from ipacctd.bpf.programs import Program
from ipacctd.bpf.types import AttachType, MapType
from ipacctd.datapath import counters as counters_mod
from ipacctd.datapath import denied as denied_mod
from ipacctd.datapath import lookup
from ipacctd.datapath.rules import DENY
from ipacctd.datapath.unit import COUNTERS
from ipacctd.errors import NotFound
from ipacctd.manager.engine import Manager

# As bpftool prints them: cgroup_inet_ingress, cgroup_inet_egress.
ATTACH_NAMES = {t.value: t.name.lower() for t in AttachType}
MAX_ENTRIES_SHOWN = 1000


def boot_to_wall(ns_since_boot: int) -> float:
    """Wall-clock time of a CLOCK_BOOTTIME timestamp (prog load_time)."""
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - ns_since_boot / 1e9)


def fdinfo(fd: int) -> dict[str, str]:
    """The kernel's /proc/self/fdinfo of a BPF object fd (memlock, frozen, ...)."""
    out = {}
    with contextlib.suppress(OSError), open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


def inspect_unit(mgr: Manager, name: str, instructions: bool = False) -> dict[str, Any]:
    """Everything the kernel holds for a unit, as plain data (for text and JSON)."""
    unit = mgr.unit(name)
    pin_dir = mgr.store.pin_dir(name)
    if not os.path.exists(os.path.join(pin_dir, COUNTERS)):
        raise NotFound(f"unit {name} has no programs or maps pinned at {pin_dir}")
    enf = mgr.enforcement(name, unit)
    out: dict[str, Any] = {"unit": name, "cgroup": unit.cgroup, "pin_dir": pin_dir,
                           "cgroup_id": enf.cgroup_id, "firewall_enforced": enf.enforced,
                           "firewall_problem": enf.problem,
                           "links": [], "programs": [], "maps": []}
    map_ids: list[int] = []
    with Map.open_pinned(os.path.join(pin_dir, COUNTERS)) as cmap:
        map_ids.append(cmap.info().id)
    for entry in sorted(os.listdir(pin_dir)):
        if not entry.startswith(("link_", "filter_")):
            continue
        try:
            with CgroupLink.open_pinned(os.path.join(pin_dir, entry)) as link:
                li = link.info()
        except BPFError as exc:
            out["links"].append({"pin": entry, "error": str(exc)})
            continue
        out["links"].append({"pin": entry, "id": li.id, "prog_id": li.prog_id,
                             "cgroup_id": li.cgroup_id,
                             "attach_type": ATTACH_NAMES.get(li.attach_type, li.attach_type),
                             "attached": li.cgroup_id != 0,
                             # on the cgroup now at the unit's path (not a removed one)
                             "on_live_cgroup": li.cgroup_id == enf.cgroup_id})
        try:
            prog = Program.from_id(li.prog_id)
        except BPFError:
            continue
        with prog:
            out["programs"].append(_program(prog, entry, instructions))
            map_ids += [m for m in prog.info().map_ids if m not in map_ids]
    for entry in sorted(os.listdir(pin_dir)):
        # Programs pinned for systemd to attach (a unit systemd arms: no links of ours).
        if not entry.startswith("prog_") or entry.endswith("_new"):
            continue
        try:
            prog = Program.open_pinned(os.path.join(pin_dir, entry))
        except BPFError:
            continue
        with prog:
            out["programs"].append(_program(prog, entry, instructions))
            map_ids += [m for m in prog.info().map_ids if m not in map_ids]
    # The denied-addresses log is its hash plus the per-CPU slots in front of it.
    slots_path = os.path.join(pin_dir, denied_mod.SLOTS_PIN)
    slots = PerCPUArrayMap.open_pinned(slots_path) if os.path.exists(slots_path) else None
    try:
        for mid in map_ids:
            with contextlib.suppress(BPFError):
                with open_map_id(mid) as m:
                    out["maps"].append(_map(m, slots))
    finally:
        if slots is not None:
            slots.close()
    return out


def _program(prog: Program, pin: str, instructions: bool) -> dict[str, Any]:
    info = prog.info()
    data: dict[str, Any] = {
        "link": pin, "id": info.id, "type": info.type_name, "name": info.name,
        "tag": info.tag, "gpl": info.gpl, "loaded_at": boot_to_wall(info.load_time_ns),
        "uid": info.created_by_uid, "xlated_bytes": info.xlated_len,
        "jited_bytes": info.jited_len, "verified_insns": info.verified_insns,
        "map_ids": list(info.map_ids), "run_cnt": info.run_cnt,
        "run_time_ns": info.run_time_ns,
        "ns_per_run": round(info.run_time_ns / info.run_cnt, 1) if info.run_cnt else None,
        "memlock": int(fdinfo(prog.fd).get("memlock", "0") or 0),
    }
    if instructions:
        data["instructions"] = asm.dump(asm.disassemble(prog.xlated()), xlated=True)
    return data


def _map(m: Map, denied_slots: PerCPUArrayMap | None = None) -> dict[str, Any]:
    info = m.info()
    data: dict[str, Any] = {
        "id": info.id, "type": info.type_name, "name": info.name, "key_size": info.key_size,
        "value_size": info.value_size, "max_entries": info.max_entries, "flags": info.flags,
        "memlock": int(fdinfo(m.fd).get("memlock", "0") or 0),
    }
    if info.type == MapType.PERCPU_ARRAY and info.name == counters_mod.MAP_NAME:
        data["role"] = "counters"
        data["counters"] = counters_mod.read(m).to_dict()  # type: ignore[arg-type]
    elif isinstance(m, LPMTrieMap):
        data["role"] = f"policy (IPv{m.version})"
        entries = []
        for i, (net, value) in enumerate(m.items()):
            if i >= MAX_ENTRIES_SHOWN:
                data["truncated"] = True
                break
            entries.append({"prefix": str(net),
                            "verdict": "deny" if value[:1] == bytes([DENY]) else "allow"})
        data["entries"] = entries
        data["count"] = len(entries) if not data.get("truncated") else None
    elif info.type == MapType.ARRAY and info.name == lookup.MULTIBIT_NAME:
        # A multibit table holds its prefixes pushed into slots: show its shape, not entries.
        data["entries"] = []
        value = m.lookup_raw(b"\0\0\0\0")
        meta = lookup.parse_trailer(value) if value is not None else None
        if meta is None:
            data["role"] = "policy (IPv4, multibit table)"
        else:
            strides = "-".join(str(s) for s in meta["strides"])  # type: ignore[attr-defined]
            data["role"] = (f"policy (IPv4, multibit table: {meta['prefixes']} prefixes, "
                            f"strides {strides}, {meta['chunks']} chunks, "
                            f"{info.value_size} bytes)")
            data["multibit"] = meta
        data["count"] = meta["prefixes"] if meta is not None else None
    elif info.type == MapType.ARRAY and info.name == lookup.LENHASH_NAME:
        # A lenhash root holds slots (verdicts and length bits): show its shape.
        data["entries"] = []
        value = m.lookup_raw(b"\0\0\0\0")
        lh = lookup.parse_lenhash_trailer(value) if value is not None else None
        if lh is None:
            data["role"] = "policy (IPv6, lenhash root)"
        else:
            lengths = ",".join(str(n) for n in lh["lengths"])  # type: ignore[attr-defined]
            data["role"] = (
                f"policy (IPv6, lenhash root: {lh['prefixes']} prefixes, "
                f"{lh['root_bits']} root bits, hashed lengths {lengths or '-'})"
            )
            data["lenhash"] = lh
        data["count"] = lh["prefixes"] if lh is not None else None
    elif info.type == MapType.HASH and info.name.startswith("ipacctd_lh_k"):
        data["role"] = "policy (IPv6, lenhash: prefixes by length, one hash per key size)"
        data["entries"] = []
    elif info.type == MapType.LRU_HASH and info.name == DENIED_MAP_NAME:
        data["role"] = "denied addresses"
        data["entries"] = denied_entries(m, denied_slots)
    elif info.type == MapType.PERCPU_ARRAY and info.name == denied_mod.SLOTS_NAME:
        data["role"] = "denied addresses: per-CPU slots (counted in the log's entries)"
    return data


DENIED_MAP_NAME = "ipacctd_denied"


def denied_entries(m: Map, slots: PerCPUArrayMap | None = None) -> list[dict[str, Any]]:
    """Decode the denied-addresses map, merged with its per-CPU slots when given."""
    return denied_mod.decode(denied_mod.Log(m, slots) if slots is not None else m)

