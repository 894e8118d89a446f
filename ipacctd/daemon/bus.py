"""The D-Bus API, shaped like systemd's Manager and Unit objects.

Objects are served from one message handler (no exported object per unit), so 10,000
units cost no more than their entries in the registry. Mutating calls check the
caller's uid with the bus before the engine runs; the engine calls run in a worker
thread so a long lock wait never stalls the bus.

Names::

    bus name   org.ipacctd1
    /org/ipacctd1                 org.ipacctd1.Manager
    /org/ipacctd1/unit/<label>    org.ipacctd1.Unit   (label: systemd's bus-label escape)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from dbus_fast import Message, MessageType, Variant

from ipacctd.daemon.registry import Entry, Registry, counter_fields
from ipacctd.errors import AlreadyExists, Error, InvalidInput, NotFound, NotSupported
from ipacctd.manager.counters import EXTRA_COUNTERS, SYSTEMD_COUNTERS, Counters
from ipacctd.manager.store import canonical
from ipacctd.manager.unit import Enforcement, Unit, UnitStatus

log = logging.getLogger("ipacctd.bus")

BUS_NAME = "org.ipacctd1"
ROOT = "/org/ipacctd1"
UNIT_PREFIX = ROOT + "/unit/"
MANAGER_IFACE = "org.ipacctd1.Manager"
UNIT_IFACE = "org.ipacctd1.Unit"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
INTROSPECT_IFACE = "org.freedesktop.DBus.Introspectable"
PEER_IFACE = "org.freedesktop.DBus.Peer"
UINT64_MAX = (1 << 64) - 1

#: (property, Counters attribute): systemd's four, then the eight ipacctd adds.
COUNTER_PROPS = tuple((c.prop, c.attr) for c in SYSTEMD_COUNTERS)
DROP_PROPS = tuple((c.prop, c.attr) for c in EXTRA_COUNTERS)
COUNTERS_SIG = "a(sat)"
#: StartTransientUnit property (b): the caller starts the command and records its exit.
CALLER_STARTS = "CallerStartsCommand"


def escape_label(name: str) -> str:
    """systemd's bus_label_escape: keep [A-Za-z0-9], others as _XX (hex)."""
    if not name:
        return "_"
    out = []
    for i, ch in enumerate(name.encode()):
        c = chr(ch)
        if c.isascii() and (c.isalpha() or (c.isdigit() and i > 0)):
            out.append(c)
        else:
            out.append(f"_{ch:02x}")
    return "".join(out)


def unescape_label(label: str) -> str:
    """Inverse of :func:`escape_label`."""
    if label == "_":
        return ""
    out = bytearray()
    i = 0
    while i < len(label):
        if label[i] == "_" and i + 3 <= len(label):
            try:
                out.append(int(label[i + 1:i + 3], 16))
                i += 3
                continue
            except ValueError:
                pass
        out.append(ord(label[i]))
        i += 1
    return out.decode(errors="replace")


def unit_path(name: str) -> str:
    """Object path of a unit."""
    return UNIT_PREFIX + escape_label(name)


def counter_values(c: Counters | None) -> list[int]:
    """The twelve counters in field order (UINT64_MAX each when unknown)."""
    if c is None:
        return [UINT64_MAX] * 12
    return list(counter_fields(c))


def unit_properties(entry: Entry) -> dict[str, Variant]:
    """All properties of a unit object."""
    st = entry.status
    u = st.unit
    p = u.properties
    c = entry.counters
    props: dict[str, Variant] = {
        "Id": Variant("s", u.name),
        "Description": Variant("s", u.description),
        "LoadState": Variant("s", "error" if st.broken is not None else "loaded"),
        "ActiveState": Variant("s", st.active_state),
        "SubState": Variant("s", st.sub_state),
        "ControlGroup": Variant("s", u.cgroup),
        "MainPID": Variant("u", u.main_pid if u.main_pid and st.active_state == "active" else 0),
        "Transient": Variant("b", u.transient),
        # Whether the recorded policy is in force on the live cgroup now at the unit's
        # path (asked of the kernel), and if not, why.
        "IPFirewallEnforced": Variant("b", st.enforcement.enforced),
        "IPFirewallProblem": Variant("s", st.enforcement.problem),
    }
    for name, (sig, value) in p.to_dbus().items():
        if name != "Description":
            props[name] = Variant(sig, value)
    counting = c is not None and p.ip_accounting
    for name, attr in COUNTER_PROPS:
        props[name] = Variant("t", getattr(c, attr) if counting else UINT64_MAX)
    for name, attr in DROP_PROPS:
        props[name] = Variant("t", getattr(c, attr) if c is not None else UINT64_MAX)
    return props


def status_to_wire(st: UnitStatus) -> dict[str, Any]:
    """A :class:`UnitStatus` as plain data (inverse: :func:`status_from_wire`)."""
    return {"unit": st.unit.to_json(), "active_state": st.active_state,
            "sub_state": st.sub_state, "pids": list(st.pids),
            "counters": st.counters.to_dict() if st.counters is not None else None,
            "attached": st.attached, "kernel_generation": st.kernel_generation,
            "broken": st.broken,
            "enforcement": {"enforced": st.enforcement.enforced,
                            "problem": st.enforcement.problem, "live": st.enforcement.live,
                            "cgroup_id": st.enforcement.cgroup_id}}


def status_from_wire(d: dict[str, Any]) -> UnitStatus:
    c = d.get("counters")
    return UnitStatus(Unit.from_json(d["unit"]), str(d["active_state"]), str(d["sub_state"]),
                      tuple(int(p) for p in d.get("pids", ())),
                      Counters(**c) if c is not None else None, bool(d.get("attached")),
                      d.get("kernel_generation"),
                      broken=str(d["broken"]) if d.get("broken") is not None else None,
                      enforcement=_enforcement_from_wire(d.get("enforcement")))


def _enforcement_from_wire(e: Any) -> Enforcement:
    # Never fail open: a reply without the field (an older daemon) is "not known to be
    # in force", not "enforced".
    if not isinstance(e, dict):
        return Enforcement(False, "unknown: the daemon did not say")
    cid = e.get("cgroup_id")
    return Enforcement(bool(e.get("enforced")), str(e.get("problem", "")),
                       live=bool(e.get("live", True)),
                       cgroup_id=cid if isinstance(cid, int) else None)


def counter_properties(entry: Entry) -> dict[str, Variant]:
    """Only the counter properties (what a poll announces)."""
    all_props = unit_properties(entry)
    return {k: all_props[k] for k, _ in (*COUNTER_PROPS, *DROP_PROPS)}


def _prop_xml(props: dict[str, Variant]) -> str:
    return "".join(f'<property name="{k}" type="{v.signature}" access="read"/>'
                   for k, v in props.items())


MANAGER_METHODS = """
<method name="ListUnits"><arg name="units" type="a(ssssso)" direction="out"/></method>
<method name="GetUnit"><arg name="name" type="s" direction="in"/>
 <arg name="unit" type="o" direction="out"/></method>
<method name="GetCounters"><arg name="counters" type="a(sat)" direction="out"/></method>
<method name="StartTransientUnit"><arg name="name" type="s" direction="in"/>
 <arg name="properties" type="a(sv)" direction="in"/><arg name="unit" type="o" direction="out"/>
</method>
<method name="AttachUnit"><arg name="cgroup" type="s" direction="in"/>
 <arg name="name" type="s" direction="in"/><arg name="properties" type="a(sv)" direction="in"/>
 <arg name="unit" type="o" direction="out"/></method>
<method name="SetUnitProperties"><arg name="name" type="s" direction="in"/>
 <arg name="runtime" type="b" direction="in"/><arg name="properties" type="a(sv)" direction="in"/>
</method>
<method name="StopUnit"><arg name="name" type="s" direction="in"/>
 <arg name="mode" type="s" direction="in"/></method>
<method name="ResetUnit"><arg name="name" type="s" direction="in"/></method>
<method name="DetachUnit"><arg name="name" type="s" direction="in"/></method>
<method name="Reload"/>
<method name="DescribeUnits"><arg name="names" type="as" direction="in"/>
 <arg name="denied" type="u" direction="in"/><arg name="json" type="s" direction="out"/></method>
<method name="InspectUnit"><arg name="name" type="s" direction="in"/>
 <arg name="instructions" type="b" direction="in"/><arg name="json" type="s" direction="out"/>
</method>
<signal name="UnitNew"><arg name="id" type="s"/><arg name="unit" type="o"/></signal>
<signal name="UnitRemoved"><arg name="id" type="s"/><arg name="unit" type="o"/></signal>
<signal name="CountersChanged"><arg name="counters" type="a(sat)"/></signal>
<property name="Version" type="s" access="read"/>
<property name="PollIntervalSec" type="d" access="read"/>
<property name="StateDirectory" type="s" access="read"/>
<property name="ControlGroupRoot" type="s" access="read"/>
"""

UNIT_METHODS = """
<method name="Stop"/>
<method name="Reset"/>
<method name="SetProperties"><arg name="runtime" type="b" direction="in"/>
 <arg name="properties" type="a(sv)" direction="in"/></method>
"""

STD_IFACES = f"""
<interface name="{INTROSPECT_IFACE}"><method name="Introspect">
 <arg name="xml" type="s" direction="out"/></method></interface>
<interface name="{PEER_IFACE}"><method name="Ping"/>
 <method name="GetMachineId"><arg name="id" type="s" direction="out"/></method></interface>
<interface name="{PROPS_IFACE}">
 <method name="Get"><arg name="interface" type="s" direction="in"/>
  <arg name="property" type="s" direction="in"/><arg name="value" type="v" direction="out"/>
 </method>
 <method name="GetAll"><arg name="interface" type="s" direction="in"/>
  <arg name="properties" type="a{{sv}}" direction="out"/></method>
 <method name="Set"><arg name="interface" type="s" direction="in"/>
  <arg name="property" type="s" direction="in"/><arg name="value" type="v" direction="in"/>
 </method>
 <signal name="PropertiesChanged"><arg name="interface" type="s"/>
  <arg name="changed" type="a{{sv}}"/><arg name="invalidated" type="as"/></signal>
</interface>
"""

DOCTYPE = ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN" '
           '"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n')

ERRORS: list[tuple[type[Exception], str]] = [
    (InvalidInput, "org.freedesktop.DBus.Error.InvalidArgs"),
    (NotFound, "org.ipacctd1.Error.NoSuchUnit"),
    (AlreadyExists, "org.ipacctd1.Error.UnitExists"),
    (NotSupported, "org.ipacctd1.Error.NotSupported"),
    (PermissionError, "org.freedesktop.DBus.Error.AccessDenied"),
    (Error, "org.ipacctd1.Error.Failed"),
]


class AccessDenied(Error, PermissionError):
    """The caller may not change units."""


class LogLimit:
    """How many refused or failed calls of one sender are logged: ``burst`` at once, then
    one per ``interval`` seconds, with the count of those left out; a caller looping on bad
    calls cannot fill the log. At most ``senders`` senders are tracked (oldest dropped)."""

    def __init__(self, burst: int = 5, interval: float = 60.0, senders: int = 1024) -> None:
        self.burst, self.interval, self.senders = burst, interval, senders
        self.state: dict[str, list[float]] = {}  # sender -> [tokens, last refill, dropped]
        # Every connection is a new sender: a caller reconnecting for each call shares one
        # bucket with all the others, ten times one sender's.
        self.everyone: LogLimit | None = (
            LogLimit(burst * 10, interval / 10, 1) if senders > 1 else None)

    def allow(self, sender: str | None, now: float | None = None) -> bool:
        import time

        now = time.monotonic() if now is None else now
        if self.everyone is not None and not self.everyone.allow("*", now):
            return False
        key = sender or "?"
        st = self.state.pop(key, None)
        if st is None:
            st = [float(self.burst), now, 0.0]
        st[0] = min(float(self.burst), st[0] + (now - st[1]) / self.interval)
        st[1] = now
        self.state[key] = st  # most recent last
        while len(self.state) > self.senders:
            del self.state[next(iter(self.state))]
        if st[0] >= 1.0:
            st[0] -= 1.0
            if st[2]:
                log.info("%d more refused calls from %s were not logged", int(st[2]), key)
                st[2] = 0.0
            return True
        st[2] += 1
        return False


class BusService:
    """Serves the Manager and Unit objects of a :class:`Registry` on a connected bus."""

    def __init__(self, bus: Any, registry: Registry, version: str, poll_interval: float,
                 reload: Callable[[], None]) -> None:
        self.bus = bus
        self.registry = registry
        self.version = version
        self.poll_interval = poll_interval
        self.reload_cb = reload
        self.manager = registry.manager
        self.tasks: set[asyncio.Task] = set()
        self.log_limit = LogLimit()
        bus.add_message_handler(self._handle)
        registry.listeners.append(self._on_registry)

    # -- signals -----------------------------------------------------------------------

    def _on_registry(self, event: str, name: str, entry: Entry | None) -> None:
        path = unit_path(name)
        if event == "new":
            self.bus.send(Message.new_signal(ROOT, MANAGER_IFACE, "UnitNew", "so", [name, path]))
        elif event == "removed":
            self.bus.send(Message.new_signal(ROOT, MANAGER_IFACE, "UnitRemoved", "so",
                                             [name, path]))
        elif event == "changed" and entry is not None:
            self._properties_changed(path, unit_properties(entry))
        elif event == "counters" and entry is not None:
            self._properties_changed(path, counter_properties(entry))

    def _properties_changed(self, path: str, props: dict[str, Variant]) -> None:
        self.bus.send(Message.new_signal(path, PROPS_IFACE, "PropertiesChanged", "sa{sv}as",
                                         [UNIT_IFACE, props, []]))

    def counters_changed(self, names: list[str]) -> None:
        """One signal per poll with every changed unit's counters."""
        if not names:
            return
        body = [(n, counter_values(self.registry.units[n].counters)) for n in names
                if n in self.registry.units]
        self.bus.send(Message.new_signal(ROOT, MANAGER_IFACE, "CountersChanged", COUNTERS_SIG,
                                         [body]))

    # -- dispatch ----------------------------------------------------------------------

    def _handle(self, msg: Message) -> Message | bool | None:
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        path = msg.path or ""
        if path != ROOT and not path.startswith(UNIT_PREFIX) and path not in ("/", "/org",
                                                                              ROOT + "/unit"):
            return None
        try:
            return self._dispatch(msg, path)
        except Exception as exc:  # map to a D-Bus error; never leak tracebacks
            return self._error(msg, exc)

    def _error(self, msg: Message, exc: Exception) -> Message:
        for cls, name in ERRORS:
            if isinstance(exc, cls):
                if self.log_limit.allow(msg.sender):
                    log.info("%s.%s from %s refused: %s", msg.interface, msg.member,
                             msg.sender, exc)
                return Message.new_error(msg, name, str(exc))
        if isinstance(exc, OSError):  # the system said no (no space, no fds): no bug of ours
            if self.log_limit.allow(msg.sender):
                log.error("%s.%s from %s failed: %s", msg.interface, msg.member, msg.sender,
                          exc)
            return Message.new_error(msg, "org.ipacctd1.Error.Failed",
                                     exc.strerror or str(exc))
        if self.log_limit.allow(msg.sender):
            log.exception("internal error in %s.%s", msg.interface, msg.member)
        return Message.new_error(msg, "org.freedesktop.DBus.Error.Failed",
                                 f"internal error: {type(exc).__name__}")

    def _dispatch(self, msg: Message, path: str) -> Message | bool:
        iface, member = msg.interface, msg.member
        if iface == INTROSPECT_IFACE and member == "Introspect":
            self._check(msg, "")
            return Message.new_method_return(msg, "s", [self._introspect(path)])
        if iface == PEER_IFACE:
            self._check(msg, "")
            if member == "Ping":
                return Message.new_method_return(msg)
            if member != "GetMachineId":
                raise InvalidInput(f"unknown method {member}")
            with open("/etc/machine-id") as f:
                return Message.new_method_return(msg, "s", [f.read().strip()])
        if path == ROOT:
            return self._manager_call(msg, iface, member)
        if path.startswith(UNIT_PREFIX):
            return self._unit_call(msg, iface, member, unescape_label(path[len(UNIT_PREFIX):]))
        raise NotFound(f"no object at {path}")

    def _introspect(self, path: str) -> str:
        if path == ROOT:
            children = "".join(f'<node name="unit/{escape_label(n)}"/>'
                               for n in sorted(self.registry.units))
            return (f"{DOCTYPE}<node>{STD_IFACES}<interface name=\"{MANAGER_IFACE}\">"
                    f"{MANAGER_METHODS}</interface>{children}</node>")
        if path.startswith(UNIT_PREFIX):
            entry = self._entry(unescape_label(path[len(UNIT_PREFIX):]))
            return (f"{DOCTYPE}<node>{STD_IFACES}<interface name=\"{UNIT_IFACE}\">"
                    f"{UNIT_METHODS}{_prop_xml(unit_properties(entry))}</interface></node>")
        if path == ROOT + "/unit":
            children = "".join(f'<node name="{escape_label(n)}"/>'
                               for n in sorted(self.registry.units))
            return f"{DOCTYPE}<node>{children}</node>"
        child = "org" if path == "/" else "ipacctd1"
        return f'{DOCTYPE}<node><node name="{child}"/></node>'

    def _entry(self, name: str) -> Entry:
        name = canonical(name)  # "web" means web.service, as for systemctl
        entry = self.registry.units.get(name)
        if entry is None:
            entry = self.registry.refresh(name)
        if entry is None:
            raise NotFound(f"unit {name} not found")
        return entry

    def _describe(self, names: list[str], denied: int) -> str:
        """What the CLI's views need of each unit (the engine's own status, read from the
        kernel now), as JSON: how ``status``/``show``/``list-units`` work for users who may
        not read the pins and metadata themselves."""
        statuses = self.manager.statuses([canonical(n) for n in names] or None)
        return json.dumps([{**status_to_wire(st),
                            "denied": self.manager.denied(st.name, min(denied, 100))}
                           for st in statuses])

    def _manager_props(self) -> dict[str, Variant]:
        cfg = self.manager.config
        return {"Version": Variant("s", self.version),
                "PollIntervalSec": Variant("d", float(self.poll_interval)),
                "StateDirectory": Variant("s", cfg.state_dir),
                "ControlGroupRoot": Variant("s", cfg.cgroup_root)}

    def _props_call(self, msg: Message, member: str, iface_name: str,
                    props: dict[str, Variant]) -> Message:
        signatures = {"Get": "ss", "GetAll": "s", "Set": "ssv"}
        if member not in signatures:
            raise InvalidInput(f"unknown method {member}")
        self._check(msg, signatures[member])
        want = msg.body[0]
        if member == "GetAll":
            return Message.new_method_return(msg, "a{sv}", [props if want in ("", iface_name)
                                                            else {}])
        if member == "Get":
            if want not in ("", iface_name):
                raise InvalidInput(f"unknown interface {want!r} (properties are on "
                                   f"{iface_name})")
            if msg.body[1] not in props:
                raise InvalidInput(f"unknown property {msg.body[1]!r} of {iface_name}")
            return Message.new_method_return(msg, "v", [props[msg.body[1]]])
        raise InvalidInput("properties are read-only here; use SetUnitProperties")

    def _manager_call(self, msg: Message, iface: str | None, member: str | None) -> Message | bool:
        if iface == PROPS_IFACE:
            return self._props_call(msg, member or "", MANAGER_IFACE, self._manager_props())
        if iface not in (MANAGER_IFACE, None):
            raise InvalidInput(f"unknown interface {iface}")
        body = msg.body
        if member == "ListUnits":
            rows = [[n, e.status.unit.description, "loaded", e.status.active_state,
                     e.status.sub_state, unit_path(n)]
                    for n, e in sorted(self.registry.units.items())]
            return Message.new_method_return(msg, "a(ssssso)", [rows])
        if member == "GetUnit":
            self._check(msg, "s")
            entry = self._entry(body[0])
            return Message.new_method_return(msg, "o", [unit_path(entry.status.unit.name)])
        if member == "GetCounters":
            rows = self.registry.counter_rows(counter_values)
            return Message.new_method_return(msg, COUNTERS_SIG, [rows])
        if member == "DescribeUnits":
            self._check(msg, "asu")
            return Message.new_method_return(msg, "s", [self._describe(body[0], body[1])])
        if member == "InspectUnit":
            self._check(msg, "sb")
            from ipacctd.manager.inspect import inspect_unit

            data = inspect_unit(self.manager, canonical(body[0]), instructions=bool(body[1]))
            return Message.new_method_return(msg, "s", [json.dumps(data)])
        mutations: dict[str, tuple[str, Callable[..., Any], str]] = {
            "StartTransientUnit": ("sa(sv)", self._start_transient, "o"),
            "AttachUnit": ("ssa(sv)", self._attach, "o"),
            "SetUnitProperties": ("sba(sv)", self._set_properties, ""),
            "StopUnit": ("ss", lambda name, _mode: self.manager.stop(name), ""),
            "ResetUnit": ("s", self.manager.reset, ""),
            "DetachUnit": ("s", self.manager.detach, ""),
            "Reload": ("", lambda: self.reload_cb(), ""),
        }
        if member in mutations:
            sig, fn, out = mutations[member]
            self._check(msg, sig)
            # The caller starts the command in the new unit: the name is reserved for it.
            self._spawn(self._mutate(msg, fn, body, out,
                                     with_owner=member == "StartTransientUnit"))
            return True
        raise InvalidInput(f"unknown method {member}")

    def _unit_call(self, msg: Message, iface: str | None, member: str | None,
                   name: str) -> Message | bool:
        entry = self._entry(name)
        if iface == PROPS_IFACE:
            return self._props_call(msg, member or "", UNIT_IFACE, unit_properties(entry))
        if iface not in (UNIT_IFACE, None):
            raise InvalidInput(f"unknown interface {iface}")
        calls: dict[str, tuple[str, Callable[..., Any]]] = {
            "Stop": ("", lambda: self.manager.stop(name)),
            "Reset": ("", lambda: self.manager.reset(name)),
            "SetProperties": ("ba(sv)", lambda rt, props: self._set_properties(name, rt, props)),
        }
        if member in calls:
            sig, fn = calls[member]
            self._check(msg, sig)
            self._spawn(self._mutate(msg, fn, msg.body, ""))
            return True
        raise InvalidInput(f"unknown method {member}")

    @staticmethod
    def _check(msg: Message, signature: str) -> None:
        if msg.signature != signature:
            raise InvalidInput(f"{msg.member} takes ({signature}), got ({msg.signature})")

    # -- mutations ---------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def caller_uid(self, msg: Message) -> int:
        """The Unix uid of the message's sender, asked of the bus daemon."""
        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="GetConnectionUnixUser", signature="s",
            body=[msg.sender]))
        if reply.message_type != MessageType.METHOD_RETURN:
            raise AccessDenied("cannot determine the caller's uid")
        return int(reply.body[0])

    async def caller_owner(self, msg: Message) -> tuple[int, int] | None:
        """(pid, start time) of the message's sender, asked of the bus daemon; None when
        the bus cannot say (the unit then has no owner, as one started by busctl)."""
        from ipacctd.manager import owner

        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="GetConnectionUnixProcessID",
            signature="s", body=[msg.sender]))
        if reply.message_type != MessageType.METHOD_RETURN:
            return None
        return owner.identify(int(reply.body[0]))

    async def _mutate(self, msg: Message, fn: Callable[..., Any], args: list[Any],
                      out: str, with_owner: bool = False) -> None:
        try:
            uid = await self.caller_uid(msg)
            if uid != 0:
                raise AccessDenied(f"uid {uid} may not change units: only root may")
            if with_owner:
                args = [*args, await self.caller_owner(msg)]
            result = await asyncio.get_running_loop().run_in_executor(None, fn, *args)
            self.registry.sync()
            if out == "o":
                reply = Message.new_method_return(msg, "o", [unit_path(result.name)])
            else:
                reply = Message.new_method_return(msg)
        except Exception as exc:
            reply = self._error(msg, exc)
        self.bus.send(reply)

    def _start_transient(self, name: str, props: list[Any],
                         owned_by: tuple[int, int] | None = None) -> Any:
        command: tuple[str, ...] = ()
        reserve = False
        items = []
        for pname, sig, value in _items(props):
            if pname == "ExecCommand" and sig == "as":
                command = tuple(value)  # recorded as the unit's description/command
            elif pname == CALLER_STARTS and sig == "b":
                reserve = bool(value)
            else:
                items.append((pname, sig, value))
        # CallerStartsCommand=true: the caller starts the command itself (as ``ipacctd run``
        # does) and records its exit; the name is reserved for it until then. Otherwise
        # the caller puts processes in the cgroup as it likes, and nobody holds the name.
        return self.manager.start_transient(name=name or None, command=command,
                                            dbus_items=items,
                                            owned_by=owned_by if reserve else None)

    def _attach(self, cgroup_path: str, name: str, props: list[Any]) -> Any:
        return self.manager.attach(cgroup_path, name=name or None, dbus_items=_items(props))

    def _set_properties(self, name: str, _runtime: bool, props: list[Any]) -> Any:
        return self.manager.set_properties_dbus(name, _items(props))


def _items(props: list[Any]) -> list[tuple[str, str, Any]]:
    items = []
    for entry in props:
        if not (isinstance(entry, list | tuple) and len(entry) == 2
                and isinstance(entry[1], Variant)):
            raise InvalidInput("properties must be an array of (name, variant)")
        items.append((str(entry[0]), entry[1].signature, entry[1].value))
    return items
