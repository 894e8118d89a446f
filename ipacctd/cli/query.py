"""Views: ``status``, ``list-units`` and ``show``, shaped like systemctl's."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ipacctd.cli.engine import manager_for
from ipacctd.cli.format import format_bytes, format_relative, format_timestamp, table
from ipacctd.manager.counters import EXTRA_COUNTERS, SYSTEMD_COUNTERS, Counters
from ipacctd.manager.systemd import dropin_path as armed_dropin
from ipacctd.manager.unit import UnitStatus, escape_command

DENIED_SHOWN = 5
DOTS = {"active": "●", "inactive": "○", "failed": "×"}  # noqa: RUF001 — systemctl's glyphs


def dispatch(args: argparse.Namespace) -> int:
    mgr = manager_for(args, write=False)
    if args.verb == "list-units":
        statuses = mgr.statuses()
        if not args.all:
            statuses = [s for s in statuses if s.active_state == "active"]
        _emit(args, [s.to_json() for s in statuses], lambda: list_units_text(statuses))
        return 0
    # A container's unit may also be named by the container's name or short id.
    names = [mgr.resolve(n) for n in args.units] or None
    statuses = mgr.statuses(names)
    if args.verb == "status":
        denied = {s.name: mgr.denied(s.name, DENIED_SHOWN) for s in statuses}
        color = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None
        _emit(args, [{**s.to_json(), "denied": denied[s.name]} for s in statuses],
              lambda: "\n\n".join(status_text(s, denied[s.name], color) for s in statuses))
        return 0 if names is None or all(s.active_state == "active" for s in statuses) else 3
    wanted = [p for group in args.property for p in group.split(",") if p]
    blocks = [show_properties(s, wanted) for s in statuses]
    if args.json:
        print(json.dumps(blocks if len(blocks) > 1 else blocks[0], indent=2))
        return 0
    out = []
    for props in blocks:
        out.append("\n".join(v if args.value else f"{k}={v}" for k, v in props.items()))
    print("\n\n".join(out))
    return 0


def _emit(args: argparse.Namespace, data: list[dict], text) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        out = text()
        if out:
            print(out)


# -- status -------------------------------------------------------------------------------


def status_text(st: UnitStatus, denied: list[dict] | None = None, color: bool = False) -> str:
    """The ``ipacctd status`` block of one unit, laid out like ``systemctl status``.

    ``denied``: the most denied remote addresses (from the unit's denied-addresses log).
    A unit whose policy is not in force on its live cgroup says so first: in its state
    (``active (running) — NOT ENFORCED``) and on the next line, with the cause (in red
    with ``color``).
    """
    u = st.unit
    enf = st.enforcement
    lines = [f"{DOTS.get(st.active_state, '●')} {u.name} - {u.description}"]
    kind = ("transient" if u.transient
            else f"bound to the systemd service {u.systemd_service}" if u.systemd_service
            else "attached to existing cgroup")
    loaded = f"{u.source}; {kind}" if u.source else kind
    if st.broken is not None:
        lines.append(f"     Loaded: error (broken: {st.broken})")
    else:
        lines.append(f"     Loaded: loaded ({loaded})")
    if u.container is not None:
        c = u.container
        pod = f", pod {c.pod}" if c.pod else ""
        lines.append(f"  Container: {c.name or '(no name)'} ({c.engine} {c.short_id}{pod})")
    if st.active_state == "active":
        since = u.started_at
    else:  # an attached unit whose cgroup vanished unseen has no known end: no time
        since = u.exited_at or (u.started_at if u.transient else None)
    active = f"{st.active_state} ({st.sub_state})"
    if enf.alarming:
        active += f" {NOT_ENFORCED}"
    if since:
        active += f" since {format_timestamp(since)}; {format_relative(since)}"
    lines.append(f"     Active: {_red(active, color) if enf.alarming else active}")
    if enf.alarming:
        lines.append(_red(f"   Firewall: NOT ENFORCED: {enf.problem}", color))
    if u.main_pid and st.active_state == "active":
        lines.append(f"   Main PID: {u.main_pid} ({_comm(u.main_pid)})")
    elif u.main_pid and u.exit_status is not None:
        how = (f"code=exited, status={u.exit_status}" if u.exit_status >= 0
               else f"code=killed, signal={-u.exit_status}")
        lines.append(f"    Process: {u.main_pid} ({how})")
    c = st.counters
    if c is not None and u.properties.ip_accounting:
        lines.append(f"         IP: {format_bytes(c.ingress_bytes)} in, "
                     f"{format_bytes(c.egress_bytes)} out")
    if c is not None and (u.properties.ip_address_deny or c.ingress_dropped_packets
                          or c.egress_dropped_packets):
        lines.append(f"    Dropped: {format_bytes(c.ingress_dropped_bytes)} in "
                     f"({_packets(c.ingress_dropped_packets)}), "
                     f"{format_bytes(c.egress_dropped_bytes)} out "
                     f"({_packets(c.egress_dropped_packets)})")
    if c is not None and (c.ingress_audit_packets or c.egress_audit_packets):
        lines.append(f"    Audited: {format_bytes(c.ingress_audit_bytes)} in "
                     f"({_packets(c.ingress_audit_packets)}), "
                     f"{format_bytes(c.egress_audit_bytes)} out "
                     f"({_packets(c.egress_audit_packets)}) would be denied")
    if denied:
        shown = ", ".join(f"{e['address']} ({e['direction']}, {_packets(e['packets'])})"
                          for e in denied)
        lines.append(f"     Denied: {shown}")
    if not enf.alarming:  # else said above
        lines.append(f"   Firewall: {_policy(st)}")
    else:
        lines.append(f"     Policy: {_policy(st)}")
    if u.systemd_service:
        lines.append(f"      Armed: by systemd at every start of {u.systemd_service} "
                     f"({armed_dropin(u.systemd_service)})")
    lines.append(f"     CGroup: {u.cgroup}")
    for i, pid in enumerate(st.pids[:50]):
        branch = "└─" if i == min(len(st.pids), 50) - 1 else "├─"
        lines.append(f"             {branch}{pid} {_cmdline(pid)}")
    if len(st.pids) > 50:
        lines.append(f"             … {len(st.pids) - 50} more")
    return "\n".join(lines)


def _policy(st: UnitStatus) -> str:
    if st.broken is not None:
        return f"unknown (NOT ENFORCED: {st.unit.not_enforced_reason})"
    p = st.unit.properties
    parts = []
    if p.ip_address_allow:
        parts.append(f"IPAddressAllow={p.ip_address_allow}")
    if p.ip_address_deny:
        parts.append(f"IPAddressDeny={p.ip_address_deny}")
        if p.ip_address_deny_mode != "enforce":
            parts.append(f"IPAddressDenyMode={p.ip_address_deny_mode}")
    for path in p.ip_ingress_filter_path:
        parts.append(f"IPIngressFilterPath={path}")
    for path in p.ip_egress_filter_path:
        parts.append(f"IPEgressFilterPath={path}")
    policy = "; ".join(parts) if parts else "none (all traffic allowed)"
    enf = st.enforcement
    if not st.unit.enforced:
        return f"{policy} (NOT ENFORCED: {st.unit.not_enforced_reason})"
    if enf.enforced:
        return f"{policy} (enforced)"
    if enf.policy_cut_off:
        return (f"{policy} (NOT IN FORCE YET: a change was cut off; the kernel enforces "
                f"policy generation {st.kernel_generation}, recorded "
                f"{st.unit.generation}; the next change or daemon start completes it)")
    if not enf.live and st.unit.systemd_service is not None:
        if enf.disarmed:
            return f"{policy} (NOT ARMED: {enf.problem.split(': ', 1)[1]})"
        return (f"{policy} (armed: in force from the first instruction of the next start "
                f"of {st.unit.systemd_service}; not running now)")
    if not enf.live:
        if st.counters is None:
            return f"{policy} (cgroup gone; pins lost)"
        return f"{policy} (cgroup gone; counters kept)"
    return f"{policy} (NOT ENFORCED, see above)"


NOT_ENFORCED = "— NOT ENFORCED"


def _red(text: str, color: bool) -> str:
    return f"\x1b[1;31m{text}\x1b[0m" if color else text


def _packets(n: int) -> str:
    return f"{n} packet" if n == 1 else f"{n} packets"


def _read_proc(pid: int, name: str) -> str:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    return _read_proc(pid, "comm").strip() or "?"


def _cmdline(pid: int) -> str:
    argv = _read_proc(pid, "cmdline").rstrip("\0").split("\0")
    return escape_command(argv) or f"[{_comm(pid)}]"


# -- list-units -----------------------------------------------------------------------------


def list_units_text(statuses: list[UnitStatus]) -> str:
    """The ``list-units`` table."""
    rows = []
    for s in statuses:
        c = s.counters
        counting = c is not None and s.unit.properties.ip_accounting
        rows.append([
            s.name, s.active_state, s.sub_state,
            format_bytes(c.ingress_bytes) if counting else "-",
            format_bytes(c.egress_bytes) if counting else "-",
            format_bytes(c.ingress_dropped_bytes + c.egress_dropped_bytes) if c else "-",
            s.unit.description,
        ])
    if not rows:
        return "0 units listed."
    text = table(["UNIT", "ACTIVE", "SUB", "IP IN", "IP OUT", "DROPPED", "DESCRIPTION"], rows,
                 right=frozenset({3, 4, 5}))
    text = f"{text}\n\n{len(rows)} unit{'s' if len(rows) != 1 else ''} listed."
    unenforced = [s.name for s in statuses if s.enforcement.alarming]
    if unenforced:
        text += (f"\nFIREWALL NOT ENFORCED on {len(unenforced)} live "
                 f"unit{'s' if len(unenforced) != 1 else ''}: {', '.join(unenforced)} "
                 "(see 'ipacctd status')")
    return text


# -- show -----------------------------------------------------------------------------------


def show_properties(st: UnitStatus, wanted: list[str] | None = None) -> dict[str, str]:
    """KEY=VALUE pairs like ``systemctl show`` (``[no data]`` where nothing is counted)."""
    u = st.unit
    props: dict[str, str] = {
        "Id": u.name,
        "Description": u.description,
        "LoadState": "error" if st.broken is not None else "loaded",
        "ActiveState": st.active_state,
        "SubState": st.sub_state,
        "Transient": "yes" if u.transient else "no",
        "MainPID": str(u.main_pid if u.main_pid and st.active_state == "active" else 0),
        "ExecMainStatus": str(u.exit_status if u.exit_status is not None else 0),
        "ControlGroup": u.cgroup,
    }
    for key, value in u.properties.to_show().items():
        if key != "Description":
            props[key] = value
    c: Counters | None = st.counters
    counting = c is not None and u.properties.ip_accounting
    for spec in SYSTEMD_COUNTERS:
        props[spec.prop] = str(getattr(c, spec.attr)) if counting else "[no data]"
    for spec in EXTRA_COUNTERS:
        props[spec.prop] = str(getattr(c, spec.attr)) if c is not None else "[no data]"
    props["SystemdDropIn"] = armed_dropin(u.systemd_service) if u.systemd_service else ""
    props["IPFirewallEnforced"] = "yes" if st.enforcement.enforced else "no"
    props["IPFirewallProblem"] = st.enforcement.problem
    if wanted:
        return {k: props.get(k, "") for k in wanted}
    return props

