"""``ipacctd inspect UNIT``: a unit's programs, maps and links, as bpftool would show them."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ipacctd.cli.engine import manager_for
from ipacctd.cli.format import format_bytes, format_timespan
from ipacctd.cli.remote import DaemonManager
from ipacctd.manager.counters import Direction, Kind, counter
from ipacctd.manager.inspect import inspect_unit

#: (kind, then the Counters attributes of in packets, in bytes, out packets, out bytes).
COUNTER_ROWS = tuple(
    (kind.value, *(counter(d, kind, unit).attr for d in Direction for unit in ("packets", "bytes")))
    for kind in Kind
)


def dispatch(args: argparse.Namespace) -> int:
    mgr = manager_for(args, write=False)
    blocks = []
    for name in [mgr.resolve(n) for n in args.units]:
        if isinstance(mgr, DaemonManager) and mgr.remote_reads:  # the pins are root's
            data = mgr.inspect(name, instructions=args.instructions)
        else:
            data = inspect_unit(mgr, name, instructions=args.instructions)
        blocks.append(data)
    if args.json:
        print(json.dumps(blocks if len(blocks) > 1 else blocks[0], indent=2))
    else:
        print("\n\n".join(inspect_text(d) for d in blocks))
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts))


def inspect_text(d: dict[str, Any]) -> str:
    """Text layout close to ``bpftool cgroup show`` / ``prog show`` / ``map show``."""
    out = [f"Unit: {d['unit']}", f"  cgroup {d['cgroup']}"
           f"{'  id ' + str(d['cgroup_id']) if d.get('cgroup_id') else ''}",
           f"  pins   {d['pin_dir']}"]
    if d.get("firewall_problem") and d.get("cgroup_id"):
        out.append(f"  NOT ENFORCED: {d['firewall_problem']}")
    out += ["", "Links:"]
    for link in d["links"]:
        if "error" in link:
            out.append(f"  {link['pin']}: {link['error']}")
            continue
        if not link["attached"]:
            state = "detached (cgroup gone)"
        elif link.get("on_live_cgroup", True):
            state = "attached"
        else:
            state = "attached to another cgroup (not the one now at the path)"
        out.append(f"  {link['id']}: {link['attach_type']}  prog {link['prog_id']}  "
                   f"cgroup_id {link['cgroup_id']}  pin {link['pin']}  {state}")
    out += ["", "Programs:"]
    for p in d["programs"]:
        out.append(f"  {p['id']}: {p['type']}  name {p['name']}  tag {p['tag']}"
                   f"{'  gpl' if p['gpl'] else ''}")
        out.append(f"\tloaded_at {_when(p['loaded_at'])}  uid {p['uid']}")
        maps = ",".join(str(m) for m in p["map_ids"])
        out.append(f"\txlated {p['xlated_bytes']}B  jited {p['jited_bytes']}B  memlock "
                   f"{p['memlock']}B  verified_insns {p['verified_insns']}"
                   f"{'  map_ids ' + maps if maps else ''}")
        if p["run_cnt"]:
            out.append(f"\trun_cnt {p['run_cnt']}  run_time_ns {p['run_time_ns']}  "
                       f"({p['ns_per_run']} ns/run)")
        else:
            out.append("\trun_cnt 0 (runs are counted only while BPF stats are on: "
                       "'ipacctd top' or sysctl kernel.bpf_stats_enabled=1)")
        for line in p.get("instructions", []):
            out.append(f"\t{line}")
    out += ["", "Maps:"]
    for m in d["maps"]:
        out.append(f"  {m['id']}: {m['type']}  name {m['name']}  flags {m['flags']:#x}")
        out.append(f"\tkey {m['key_size']}B  value {m['value_size']}B  max_entries "
                   f"{m['max_entries']}  memlock {m['memlock']}B  ({m.get('role', 'other')})")
        if "counters" in m:
            c = m["counters"]
            out.append(f"\t{'':8} {'in packets':>12} {'in bytes':>14} {'out packets':>12} "
                       f"{'out bytes':>14}")
            for label, ip, ib, op, ob in COUNTER_ROWS:
                out.append(f"\t{label:8} {c[ip]:>12} {c[ib]:>14} {c[op]:>12} {c[ob]:>14}")
        if m.get("role", "").startswith("policy"):
            for e in m["entries"]:
                out.append(f"\t{e['prefix']:<43} {e['verdict']}")
            if m.get("truncated"):
                out.append("\t… (more entries)")
        if m.get("role") == "denied addresses":
            if not m["entries"]:
                out.append("\t(no denied traffic yet)")
            for e in m["entries"]:
                ago = (f"  last {format_timespan(e['last_seen_ago'])} ago"
                       if e["last_seen_ago"] is not None else "")
                out.append(f"\t{e['address']:<39} {e['direction']:<7} {e['packets']:>8} packets "
                           f"{format_bytes(e['bytes']):>8}{ago}")
    return "\n".join(out)
