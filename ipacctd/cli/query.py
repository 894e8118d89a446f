"""Views: ``status``, ``list-units`` and ``show``, shaped like systemctl's."""

from __future__ import annotations

import argparse
import signal
import sys

from ipacctd.cli import selection, terminal
from ipacctd.cli.engine import manager_for
from ipacctd.cli.format import (
    dump_json,
    format_bytes,
    format_relative,
    format_timestamp,
    plural,
    table,
)
from ipacctd.cli.terminal import cescape
from ipacctd.manager.counters import EXTRA_COUNTERS, SYSTEMD_COUNTERS, Counters
from ipacctd.manager.engine import CLEAN_EXIT
from ipacctd.manager.systemd import dropin_path as armed_dropin
from ipacctd.manager.unit import UnitStatus, escape_command
from ipacctd.policy.properties import PROPERTIES

DENIED_SHOWN = 5
#: ``status`` names an address list of more prefixes than this by its length (the list
#: itself is ``show -p``'s): a 200k-prefix list is a 3 MB line nobody reads, and its text
#: is not read at all for the status of a unit that keeps it in a file (manager.store).
STATUS_LIST_MAX = 32
#: systemctl's glyph and colour of each active state.
DOTS = {"active": ("●", terminal.HIGHLIGHT_GREEN), "inactive": ("○", ""),
        "failed": ("×", terminal.HIGHLIGHT_RED)}  # noqa: RUF001 — systemctl's glyphs


def dispatch(args: argparse.Namespace) -> int:
    mgr = manager_for(args, write=False)
    mode = args.json or "off"
    states = selection.states(args.state)
    if states is None:
        print(selection.STATES_HELP)
        return 0
    if args.verb == "list-units":
        statuses = selection.filter_states(mgr.statuses(selection.matching(mgr, args.patterns)),
                                           states, args.all)
        if mode != "off":
            print(dump_json([s.to_json() for s in statuses], mode))
            return 0
        with terminal.pager(not args.no_pager):
            _print(list_units_text(statuses, legend=not args.no_legend,
                                   width=None if args.full else terminal.columns(),
                                   colors=terminal.colors_enabled(), all_=args.all or bool(states)))
        return 0
    # A container's unit may also be named by the container's name or short id; a glob
    # names the known units it matches (none: nothing shown, as systemctl).
    names = selection.expand(mgr, args.units) if args.units else None
    statuses = selection.filter_states(mgr.statuses(names), states, True)
    if args.verb == "status":
        denied = {s.name: mgr.denied(s.name, DENIED_SHOWN) for s in statuses}
        if mode != "off":
            print(dump_json([{**s.to_json(), "denied": denied[s.name]} for s in statuses], mode))
        else:
            with terminal.pager(not args.no_pager):
                colors = terminal.colors_enabled()
                _print("\n\n".join(status_text(s, denied[s.name], colors) for s in statuses))
        return 0 if names is None or all(s.active_state == "active" for s in statuses) else 3
    wanted = [p for group in args.property for p in group.split(",") if p]
    blocks = [show_properties(s, wanted) for s in statuses]
    if mode != "off":
        if blocks:
            print(dump_json(blocks if len(blocks) > 1 else blocks[0], mode))
        return 0
    out = []
    for props in blocks:
        # systemctl show: a value with control characters is "[unprintable]" (the JSON has
        # it as it is); a property that does not exist is left out (systemd 252).
        out.append("\n".join(v if args.value else f"{k}={v}" for k, v in
                             ((k, v if terminal.printable(v) else "[unprintable]")
                              for k, v in props.items())))
    with terminal.pager(not args.no_pager):
        _print("\n\n".join(out))
    return 0


def _print(text: str) -> None:
    if text:
        print(text)


# -- status -------------------------------------------------------------------------------


def status_text(st: UnitStatus, denied: list[dict] | None = None, color: bool = False) -> str:
    """The ``ipacctd status`` block of one unit, laid out like systemd 252's ``systemctl
    status`` for the same states (dot, ``Active: failed (Result: exit-code) since …``,
    ``Process: PID ExecStart=… (code=exited, status=1/FAILURE)``, ``IP: 84B in, 84B out``).

    ``denied``: the most denied remote addresses (from the unit's denied-addresses log).
    A unit whose policy is not in force on its live cgroup says so first: in its state
    (``active (running) — NOT ENFORCED``) and on the next line, with the cause (in red
    with ``color``).
    """
    u = st.unit
    enf = st.enforcement
    dot, dot_color = DOTS.get(st.active_state, ("●", ""))
    lines = [f"{terminal.color(dot, dot_color, color)} {u.name} - {cescape(u.description)}"]
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
    state = st.active_state
    detail = f"Result: {_result(st)}" if state == "failed" else st.sub_state
    if enf.alarming:
        active = _red(f"{state} ({detail}) {NOT_ENFORCED}", color)
    else:  # systemd colours the state word of a failed unit, all of "active (running)"
        active = (f"{terminal.color(state, terminal.HIGHLIGHT_RED, color)} ({detail})"
                  if state == "failed" else
                  terminal.color(f"{state} ({detail})", terminal.HIGHLIGHT_GREEN, color)
                  if state == "active" else f"{state} ({detail})")
    if since:
        active += f" since {format_timestamp(since)}; {format_relative(since)}"
    lines.append(f"     Active: {active}")
    if enf.alarming:
        lines.append(_red(f"   Firewall: NOT ENFORCED: {enf.problem}", color))
    if u.main_pid and st.active_state == "active":
        lines.append(f"   Main PID: {u.main_pid} ({_comm(u.main_pid)})")
    elif u.main_pid and u.exit_status is not None:
        how = exit_description(u.exit_status)
        red = "" if u.exit_status in CLEAN_EXIT else terminal.HIGHLIGHT_RED
        shown = terminal.color(how, red, color)
        exec_start = f" ExecStart={escape_command(u.command)}" if u.command else ""
        lines.append(f"    Process: {u.main_pid}{exec_start} {shown}")
        lines.append(f"   Main PID: {u.main_pid} {how}")
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
        shown_denied = ", ".join(f"{e['address']} ({e['direction']}, {_packets(e['packets'])})"
                                 for e in denied)
        lines.append(f"     Denied: {shown_denied}")
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
        lines.append(f"             {branch}"
                     f"{terminal.color(f'{pid} {_cmdline(pid)}', terminal.GREY, color)}")
    if len(st.pids) > 50:
        lines.append(f"             … {len(st.pids) - 50} more")
    return "\n".join(lines)


def _result(st: UnitStatus) -> str:
    """systemd's Result= of a failed unit: how its main process ended."""
    if st.broken is not None:
        return "resources"
    status = st.unit.exit_status
    return "signal" if status is not None and status < 0 else "exit-code"


def exit_description(status: int) -> str:
    """``(code=exited, status=1/FAILURE)`` / ``(code=killed, signal=KILL)`` as systemctl:
    the status named for the C library's two (0 SUCCESS, 1 FAILURE), the signal by name."""
    if status >= 0:
        name = {0: "/SUCCESS", 1: "/FAILURE"}.get(status, "")
        return f"(code=exited, status={status}{name})"
    try:
        sig = signal.Signals(-status).name.removeprefix("SIG")
    except ValueError:
        sig = str(-status)
    return f"(code=killed, signal={sig})"


def _policy(st: UnitStatus) -> str:
    if st.broken is not None:
        return f"unknown (NOT ENFORCED: {st.unit.not_enforced_reason})"
    p = st.unit.properties
    parts = []
    if p.ip_address_allow:
        parts.append(f"IPAddressAllow={_address_list(st, 'IPAddressAllow', p.ip_address_allow)}")
    if p.ip_address_deny:
        parts.append(f"IPAddressDeny={_address_list(st, 'IPAddressDeny', p.ip_address_deny)}")
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


def _address_list(st: UnitStatus, prop: str, value: object) -> str:
    """A list as ``status`` shows it: in full, or by its length when long."""
    n = len(value)  # type: ignore[arg-type]
    if n <= STATUS_LIST_MAX:
        return str(value)
    return f"({n} prefixes; 'ipacctd show {st.name} -p {prop}' lists them)"


NOT_ENFORCED = "— NOT ENFORCED"


def _red(text: str, color: bool) -> str:
    return terminal.color(text, terminal.HIGHLIGHT_RED, color)


def _packets(n: int) -> str:
    return plural(n, "packet")


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


def list_units_text(statuses: list[UnitStatus], legend: bool = True, width: int | None = None,
                    colors: bool = False, all_: bool = True) -> str:
    """The ``list-units`` table, laid out as systemctl's: a column for the dot of failed
    units, the row of a failed unit in red, ``--no-legend`` without header and footer.
    Units whose firewall is not in force are named first, in red, before the table (on
    standard error with ``--no-legend``, whose output scripts read)."""
    rows, styles = [], []
    for s in statuses:
        c = s.counters
        counting = c is not None and s.unit.properties.ip_accounting
        failed = s.active_state == "failed"
        rows.append([
            "●" if failed else " ", s.name, s.active_state, s.sub_state,
            format_bytes(c.ingress_bytes) if counting else "-",
            format_bytes(c.egress_bytes) if counting else "-",
            format_bytes(c.ingress_dropped_bytes + c.egress_dropped_bytes) if c else "-",
            s.unit.description,
        ])
        red = terminal.HIGHLIGHT_RED if failed else ""
        styles.append([red, red, red, red, "", "", "", ""])
    unenforced = [s.name for s in statuses if s.enforcement.alarming]
    alarm = ""
    if unenforced:
        alarm = _red(f"FIREWALL NOT ENFORCED on {plural(len(unenforced), 'live unit')}: "
                     f"{', '.join(unenforced)} (see 'ipacctd status')", colors)
        if not legend:
            print(alarm, file=sys.stderr)
    text = table([" ", "UNIT", "ACTIVE", "SUB", "IP IN", "IP OUT", "DROPPED", "DESCRIPTION"],
                 rows, right=frozenset({4, 5, 6}), width=width, styles=styles, legend=legend,
                 colors=colors) if rows or legend else ""
    if legend:
        footer = f"{plural(len(rows), 'unit')} listed."
        if not rows and not all_:
            footer += " Pass --all to see inactive units, too."
        gap = "\n\n" if rows else "\n"  # systemd: a blank line after rows only
        text = text + gap + terminal.color(footer, terminal.HIGHLIGHT, colors)
        if alarm:
            text = f"{alarm}\n{text}"
    return text


# -- show -----------------------------------------------------------------------------------


def show_properties(st: UnitStatus, wanted: list[str] | None = None) -> dict[str, str]:
    """KEY=VALUE pairs like ``systemctl show`` (``[no data]`` where nothing is counted).

    With ``wanted`` (``-p``), only those are made: ``show -p IPEgressBytes`` of a unit with
    a 200k-prefix list never reads or formats the list."""
    u = st.unit
    c: Counters | None = st.counters
    counting = c is not None and u.properties.ip_accounting
    p = u.properties
    # name → how its value is made; systemctl show's order: the service's D-Bus properties
    # (the counters before IPAccounting=), then the unit's (Id, Description, states);
    # ipacctd's own after them.
    makers: dict[str, object] = {
        "MainPID": lambda: str(u.main_pid if u.main_pid and st.active_state == "active"
                               else 0),
        "ExecMainStatus": lambda: str(u.exit_status if u.exit_status is not None else 0),
        "ControlGroup": lambda: u.cgroup,
    }
    for spec in SYSTEMD_COUNTERS:
        makers[spec.prop] = (lambda a=spec.attr: str(getattr(c, a))) if counting else \
            (lambda: "[no data]")
    for key, prop in PROPERTIES.items():
        if key != "Description":
            makers[key] = lambda prop=prop: prop.format(getattr(p, prop.attr))
    makers |= {
        "Id": lambda: u.name,
        "Description": lambda: u.description,
        "LoadState": lambda: "error" if st.broken is not None else "loaded",
        "ActiveState": lambda: st.active_state,
        "SubState": lambda: st.sub_state,
        "Transient": lambda: "yes" if u.transient else "no",
    }
    for spec in EXTRA_COUNTERS:
        makers[spec.prop] = (lambda a=spec.attr: str(getattr(c, a))) if c is not None else \
            (lambda: "[no data]")
    makers |= {
        "SystemdDropIn": lambda: armed_dropin(u.systemd_service) if u.systemd_service else "",
        "IPFirewallEnforced": lambda: "yes" if st.enforcement.enforced else "no",
        "IPFirewallProblem": lambda: st.enforcement.problem,
    }
    # -p: in that order, as systemctl; an unknown name is left out (systemd 252)
    return {k: make() for k, make in makers.items()  # type: ignore[operator]
            if not wanted or k in wanted}
