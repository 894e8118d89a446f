"""The D-Bus API, shaped like systemd's Manager, Unit and Job objects.

The names, the error table and the bus connection are the contract in
:mod:`ipacctd.daemon.contract`, which the CLI shares. Where a member has systemd's name it has
systemd 252's signature and meaning: ``ListUnits`` ``a(ssssssouso)``,
``StartTransientUnit(ssa(sv)a(sa(sv)))`` and ``StopUnit(ss)`` returning a job,
``ResetFailedUnit(s)``, ``SetUnitProperties(sba(sv))``, ``Unit.Stop(s)`` → job,
``Unit.ResetFailed()``, the ``JobNew``/``JobRemoved`` signals, ``Subscribe()``. ipacctd's
additions have names of their own (``GetCounters``, ``AttachUnit``, ``DetachUnit``,
``DescribeUnits``, ``InspectUnit``, ``CountersChanged``). The names of ipacctd 0.1
(``ResetUnit``, ``Unit.Reset``, ``Unit.Stop()`` without a mode, ``StartTransientUnit(sa(sv))``
returning the unit) still work until 0.3; they are not introspected.

Jobs, as systemd's: a start or stop returns the path of its job, the job object exists
while the job runs, and ``JobRemoved(id, job, unit, result)`` says it ended. A transient
unit is made — validated, programs loaded, cgroup armed — before the call returns, as
systemd loads a transient unit before it queues the start: a bad property is the call's
error and nothing is made. Its start job then has nothing left to do and ends at once
("done"). A stop job ends when the unit's processes are gone.

Counters are not announced with ``PropertiesChanged`` (systemd does not either; a poll
would make a stream of them): they are introspected with ``EmitsChangedSignal=false``, and
``CountersChanged`` carries every changed unit's counters, at most once per poll.

Objects are served from one message handler (no exported object per unit), so 10,000
units cost no more than their entries in the registry. Mutating calls check the caller's
uid with the bus before the engine runs; the engine calls run in a worker thread so a long
lock wait never stalls the bus.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dbus_fast import Message, MessageType, Variant

from ipacctd.daemon.contract import (
    DBUS,
    INTROSPECT_IFACE,
    JOB_IFACE,
    JOB_PREFIX,
    MANAGER_IFACE,
    PEER_IFACE,
    PROPS_IFACE,
    ROOT,
    UINT64_MAX,
    UNIT_IFACE,
    UNIT_PREFIX,
    NoSuchJob,
    error_body,
    error_name,
    escape_label,
    job_path,
    status_to_wire,
    unescape_label,
    unit_path,
)
from ipacctd.daemon.registry import Entry, Registry, counter_fields
from ipacctd.daemon.wire import counters_reply, row_counts, row_head, string_reply
from ipacctd.errors import AccessDenied, InvalidInput, NotFound, NotSupported
from ipacctd.manager.counters import EXTRA_COUNTERS, SYSTEMD_COUNTERS, Counters
from ipacctd.manager.store import canonical

log = logging.getLogger("ipacctd.bus")

#: ListUnits' row, systemd's: name, description, load, active and sub state, following,
#: unit path, job id, job type, job path.
UNIT_ROW = "(ssssssouso)"
#: ListJobs' row, systemd's: id, unit, job type, state, job path, unit path.
JOB_ROW = "(usssoo)"
#: systemd 252's job modes (job_mode_table). ipacctd's units have no dependencies, so all
#: but "isolate" mean the same here; "isolate" (stop everything else) is refused.
JOB_MODES = ("fail", "replace", "replace-irreversibly", "isolate", "flush",
             "ignore-dependencies", "ignore-requirements", "triggering")


#: (property, Counters attribute): systemd's four, then the eight ipacctd adds.
COUNTER_PROPS = tuple((c.prop, c.attr) for c in SYSTEMD_COUNTERS)
DROP_PROPS = tuple((c.prop, c.attr) for c in EXTRA_COUNTERS)
COUNTERS_SIG = "a(sat)"
#: StartTransientUnit property (b): the caller starts the command and records its exit.
CALLER_STARTS = "CallerStartsCommand"


def counter_values(c: Counters | None) -> list[int]:
    """The twelve counters in field order (UINT64_MAX each when unknown)."""
    if c is None:
        return [UINT64_MAX] * 12
    return list(counter_fields(c))


def _row_counts(c: Counters | None) -> bytes:
    """The counters' piece of a unit's ``GetCounters`` row, marshalled (made again only when
    its counters change: :meth:`Registry.counter_rows`)."""
    return row_counts(counter_values(c))


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


def counter_names() -> frozenset[str]:
    """The counter properties: read at each Get, never announced by PropertiesChanged."""
    return frozenset(k for k, _ in (*COUNTER_PROPS, *DROP_PROPS))


def _prop_xml(props: dict[str, Variant], quiet: frozenset[str] = frozenset()) -> str:
    out = []
    for k, v in props.items():
        if k in quiet:
            out.append(f'<property name="{k}" type="{v.signature}" access="read"><annotation '
                       'name="org.freedesktop.DBus.Property.EmitsChangedSignal" value="false"/>'
                       '</property>')
        else:
            out.append(f'<property name="{k}" type="{v.signature}" access="read"/>')
    return "".join(out)


def check_mode(mode: str) -> None:
    """A job mode as systemd accepts it (InvalidInput with systemd's words otherwise)."""
    if mode not in JOB_MODES:
        raise InvalidInput(f"Job mode {mode} invalid")
    if mode == "isolate":
        raise InvalidInput("job mode isolate is not supported: ipacctd units have no "
                           "dependencies to isolate")


@dataclass
class Job:
    """A start or stop in progress (systemd's Job object)."""

    id: int
    unit: str
    type: str  # "start" or "stop"
    state: str = "running"

    @property
    def path(self) -> str:
        return job_path(self.id)

    def properties(self) -> dict[str, Variant]:
        return {"Id": Variant("u", self.id),
                "Unit": Variant("(so)", [self.unit, unit_path(self.unit)]),
                "JobType": Variant("s", self.type), "State": Variant("s", self.state),
                "ActivationDetails": Variant("a(ss)", [])}

    def row(self) -> list[Any]:
        return [self.id, self.unit, self.type, self.state, self.path, unit_path(self.unit)]


MANAGER_METHODS = """
<method name="ListUnits"><arg name="units" type="a(ssssssouso)" direction="out"/></method>
<method name="ListUnitsFiltered"><arg name="states" type="as" direction="in"/>
 <arg name="units" type="a(ssssssouso)" direction="out"/></method>
<method name="ListUnitsByNames"><arg name="names" type="as" direction="in"/>
 <arg name="units" type="a(ssssssouso)" direction="out"/></method>
<method name="GetUnit"><arg name="name" type="s" direction="in"/>
 <arg name="unit" type="o" direction="out"/></method>
<method name="ListJobs"><arg name="jobs" type="a(usssoo)" direction="out"/></method>
<method name="GetJob"><arg name="id" type="u" direction="in"/>
 <arg name="job" type="o" direction="out"/></method>
<method name="StartTransientUnit"><arg name="name" type="s" direction="in"/>
 <arg name="mode" type="s" direction="in"/><arg name="properties" type="a(sv)" direction="in"/>
 <arg name="aux" type="a(sa(sv))" direction="in"/><arg name="job" type="o" direction="out"/>
</method>
<method name="StopUnit"><arg name="name" type="s" direction="in"/>
 <arg name="mode" type="s" direction="in"/><arg name="job" type="o" direction="out"/></method>
<method name="ResetFailedUnit"><arg name="name" type="s" direction="in"/></method>
<method name="SetUnitProperties"><arg name="name" type="s" direction="in"/>
 <arg name="runtime" type="b" direction="in"/><arg name="properties" type="a(sv)" direction="in"/>
</method>
<method name="Reload"/>
<method name="Subscribe"/>
<method name="Unsubscribe"/>
<method name="GetCounters"><arg name="counters" type="a(sat)" direction="out"/></method>
<method name="AttachUnit"><arg name="cgroup" type="s" direction="in"/>
 <arg name="name" type="s" direction="in"/><arg name="properties" type="a(sv)" direction="in"/>
 <arg name="unit" type="o" direction="out"/></method>
<method name="DetachUnit"><arg name="name" type="s" direction="in"/></method>
<method name="DescribeUnits"><arg name="names" type="as" direction="in"/>
 <arg name="denied" type="u" direction="in"/><arg name="json" type="s" direction="out"/></method>
<method name="InspectUnit"><arg name="name" type="s" direction="in"/>
 <arg name="instructions" type="b" direction="in"/><arg name="json" type="s" direction="out"/>
</method>
<signal name="UnitNew"><arg name="id" type="s"/><arg name="unit" type="o"/></signal>
<signal name="UnitRemoved"><arg name="id" type="s"/><arg name="unit" type="o"/></signal>
<signal name="JobNew"><arg name="id" type="u"/><arg name="job" type="o"/>
 <arg name="unit" type="s"/></signal>
<signal name="JobRemoved"><arg name="id" type="u"/><arg name="job" type="o"/>
 <arg name="unit" type="s"/><arg name="result" type="s"/></signal>
<signal name="CountersChanged"><arg name="counters" type="a(sat)"/></signal>
<property name="Version" type="s" access="read"/>
<property name="PollIntervalSec" type="d" access="read"/>
<property name="StateDirectory" type="s" access="read"/>
<property name="ControlGroupRoot" type="s" access="read"/>
"""

UNIT_METHODS = """
<method name="Stop"><arg name="mode" type="s" direction="in"/>
 <arg name="job" type="o" direction="out"/></method>
<method name="ResetFailed"/>
<method name="SetProperties"><arg name="runtime" type="b" direction="in"/>
 <arg name="properties" type="a(sv)" direction="in"/></method>
"""

JOB_METHODS = """
<method name="GetAfter"><arg name="jobs" type="a(usssoo)" direction="out"/></method>
<method name="GetBefore"><arg name="jobs" type="a(usssoo)" direction="out"/></method>
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
    """Serves the Manager, Unit and Job objects of a :class:`Registry` on a connected bus."""

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
        self.jobs: dict[int, Job] = {}
        self._job_ids = itertools.count(1)
        self.quiet = counter_names()
        bus.add_message_handler(self._handle)
        registry.listeners.append(self._on_registry)

    # -- signals -----------------------------------------------------------------------

    def _signal(self, path: str, iface: str, member: str, signature: str,
                body: list[Any]) -> None:
        self.bus.send(Message.new_signal(path, iface, member, signature, body))

    def _on_registry(self, event: str, name: str, entry: Entry | None) -> None:
        path = unit_path(name)
        if event == "new":
            self._signal(ROOT, MANAGER_IFACE, "UnitNew", "so", [name, path])
        elif event == "removed":
            self._signal(ROOT, MANAGER_IFACE, "UnitRemoved", "so", [name, path])
        elif event == "changed" and entry is not None:
            changed = {k: v for k, v in self._unit_props(entry).items() if k not in self.quiet}
            self._signal(path, PROPS_IFACE, "PropertiesChanged", "sa{sv}as",
                         [UNIT_IFACE, changed, []])
        # "counters": announced by counters_changed, once per poll for all units.

    def counters_changed(self, names: list[str]) -> None:
        """One signal per poll with every changed unit's counters."""
        if not names:
            return
        body = [(n, counter_values(self.registry.units[n].counters)) for n in names
                if n in self.registry.units]
        self._signal(ROOT, MANAGER_IFACE, "CountersChanged", COUNTERS_SIG, [body])

    # -- jobs ----------------------------------------------------------------------------

    def _new_job(self, unit: str, job_type: str) -> Job:
        job = Job(next(self._job_ids), unit, job_type)
        self.jobs[job.id] = job
        self._signal(ROOT, MANAGER_IFACE, "JobNew", "uos", [job.id, job.path, unit])
        return job

    def _end_job(self, job: Job, result: str) -> None:
        """Forget the job and say so (after its call's reply: signals keep their order)."""
        self.jobs.pop(job.id, None)
        self._signal(ROOT, MANAGER_IFACE, "JobRemoved", "uoss",
                     [job.id, job.path, job.unit, result])

    def _job_of(self, unit: str) -> Job | None:
        return next((j for j in self.jobs.values() if j.unit == unit), None)

    # -- dispatch ----------------------------------------------------------------------

    def _handle(self, msg: Message) -> Message | bool | None:
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        path = msg.path or ""
        if path not in ("/", "/org", ROOT, ROOT + "/unit", ROOT + "/job") \
                and not path.startswith((UNIT_PREFIX, JOB_PREFIX)):
            return None
        try:
            return self._dispatch(msg, path)
        except Exception as exc:  # map to a D-Bus error; never leak tracebacks
            return self._error(msg, exc)

    def _error(self, msg: Message, exc: Exception) -> Message:
        name = error_name(exc)
        if name is not None:
            if self.log_limit.allow(msg.sender):
                log.info("%s.%s from %s refused: %s", msg.interface, msg.member,
                         msg.sender, exc)
            signature, body = error_body(exc)
            return Message(message_type=MessageType.ERROR, reply_serial=msg.serial,
                           destination=msg.sender, error_name=name, signature=signature,
                           body=body)
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
        if path.startswith(JOB_PREFIX):
            return self._job_call(msg, iface, member, self._job(path))
        raise NotFound(f"no object at {path}")

    def _introspect(self, path: str) -> str:
        if path == ROOT:
            children = "".join(f'<node name="unit/{escape_label(n)}"/>'
                               for n in sorted(self.registry.units))
            children += "".join(f'<node name="job/{i}"/>' for i in sorted(self.jobs))
            return (f"{DOCTYPE}<node>{STD_IFACES}<interface name=\"{MANAGER_IFACE}\">"
                    f"{MANAGER_METHODS}</interface>{children}</node>")
        if path.startswith(UNIT_PREFIX):
            entry = self._entry(unescape_label(path[len(UNIT_PREFIX):]))
            props = _prop_xml(self._unit_props(entry), self.quiet)
            return (f"{DOCTYPE}<node>{STD_IFACES}<interface name=\"{UNIT_IFACE}\">"
                    f"{UNIT_METHODS}{props}</interface></node>")
        if path.startswith(JOB_PREFIX):
            props = _prop_xml(self._job(path).properties())
            return (f"{DOCTYPE}<node>{STD_IFACES}<interface name=\"{JOB_IFACE}\">"
                    f"{JOB_METHODS}{props}</interface></node>")
        if path in (ROOT + "/unit", ROOT + "/job"):
            names = ([escape_label(n) for n in sorted(self.registry.units)]
                     if path.endswith("unit") else [str(i) for i in sorted(self.jobs)])
            return DOCTYPE + "<node>" + "".join(f'<node name="{n}"/>' for n in names) + "</node>"
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

    def _job(self, path: str) -> Job:
        tail = path[len(JOB_PREFIX):]
        job = self.jobs.get(int(tail)) if tail.isdigit() else None
        if job is None:
            raise NoSuchJob(f"job {tail} does not exist (it ended, or never was)")
        return job

    def _unit_props(self, entry: Entry) -> dict[str, Variant]:
        props = unit_properties(entry)
        job = self._job_of(entry.status.unit.name)
        props["Job"] = Variant("(uo)", [job.id, job.path] if job else [0, "/"])
        return props

    def _unit_row(self, name: str, entry: Entry) -> list[Any]:
        st = entry.status
        job = self._job_of(name)
        return [name, st.unit.description, "error" if st.broken is not None else "loaded",
                st.active_state, st.sub_state, "", unit_path(name),
                job.id if job else 0, job.type if job else "", job.path if job else "/"]

    def _describe(self, names: list[str], denied: int) -> Iterator[bytes]:
        """What the CLI's views need of each unit (the engine's own status, read from the
        kernel now), as JSON: how ``status``/``show``/``list-units`` work for users who may
        not read the pins and metadata themselves. The text in UTF-8, a piece at a time."""
        # One unit at a time, each written out before the next is read: the statuses and
        # dicts of all units at once (10,000) took the daemon's peak RSS from 95 to 150 MB;
        # the pieces go into the reply's buffer as they come (wire.string_reply), where
        # holding them, joined, encoded and marshalled took it from 79 to 107 MB.
        # The registry's counters fds serve the units it knows (no open per unit).
        asked = [canonical(n) for n in names]
        known = self.registry.units
        lister = self.registry.lister
        sep = b"["
        for name in asked or self.manager.names():
            try:
                st = lister.read(name, keep=name in known)[0]
            except NotFound:
                if asked:
                    raise
                continue
            c = st.counters
            # The denied-address log is written on the drop and audit paths only: nothing
            # to read (a map opened and walked: 0.3 ms a unit) while those counted nothing.
            hits = c is not None and (c.ingress_dropped_packets or c.egress_dropped_packets
                                      or c.ingress_audit_packets or c.egress_audit_packets)
            log = self.manager.denied(st.name, min(denied, 100)) if hits else []
            yield sep + json.dumps({**status_to_wire(st), "denied": log}).encode()
            sep = b", "
        yield b"[]" if sep == b"[" else b"]"

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
        units = self.registry.units
        reads: dict[str, tuple[str, Callable[[], tuple[str, list[Any]]]]] = {
            "ListUnits": ("", lambda: ("a" + UNIT_ROW, [
                [self._unit_row(n, e) for n, e in sorted(units.items())]])),
            "ListUnitsFiltered": ("as", lambda: ("a" + UNIT_ROW, [
                [self._unit_row(n, e) for n, e in sorted(units.items())
                 if not body[0] or {e.status.active_state, e.status.sub_state,
                                    self._unit_row(n, e)[2]} & set(body[0])]])),
            "ListUnitsByNames": ("as", lambda: ("a" + UNIT_ROW, [
                [self._unit_row(e.status.unit.name, e) for e in map(self._entry_or_none, body[0])
                 if e is not None]])),
            "GetUnit": ("s", lambda: ("o", [unit_path(self._entry(body[0]).status.unit.name)])),
            "ListJobs": ("", lambda: ("a" + JOB_ROW, [
                [j.row() for _, j in sorted(self.jobs.items())]])),
            "GetJob": ("u", lambda: ("o", [self._job(job_path(body[0])).path])),
            "InspectUnit": ("sb", lambda: ("s", [self._inspect(body[0], body[1])])),
            # Signals go out to every listener always; systemd's clients call these first.
            "Subscribe": ("", lambda: ("", [])),
            "Unsubscribe": ("", lambda: ("", [])),
        }
        if member == "GetCounters":
            # Marshalled here from rows kept per unit (:mod:`.wire`); sent as replies are.
            self._check(msg, "")
            self.bus.send(counters_reply(msg, self.registry.counter_rows(row_head, _row_counts)))
            return True
        if member == "DescribeUnits":
            self._check(msg, "asu")
            self.bus.send(string_reply(msg, self._describe(body[0], body[1])))
            return True
        if member in reads:
            sig, fn = reads[member]
            self._check(msg, sig)
            out, values = fn()
            return Message.new_method_return(msg, out, values)
        if member == "StartTransientUnit" and msg.signature == "sa(sv)":
            # ipacctd 0.1 (until 0.3): no mode, no aux, the unit's path returned.
            self._spawn(self._as_root(msg, lambda: self._start_transient_unit(msg, body[0],
                                                                              body[1])))
            return True
        jobs: dict[str, tuple[str, Callable[[], Awaitable[Message | None]]]] = {
            "StartTransientUnit": ("ssa(sv)a(sa(sv))", lambda: self._start_job(msg)),
            "StopUnit": ("ss", lambda: self._stop_job(msg, body[0], body[1])),
            "ResetUnit": ("s", lambda: self._engine(msg, self.manager.reset, body[0],
                                                    unit=body[0])),
            "ResetFailedUnit": ("s", lambda: self._engine(msg, self.manager.reset, body[0],
                                                          unit=body[0])),
            "DetachUnit": ("s", lambda: self._engine(msg, self.manager.detach, body[0],
                                                     unit=body[0])),
            "SetUnitProperties": ("sba(sv)", lambda: self._engine(
                msg, self._set_properties, body[0], body[2], unit=body[0])),
            "AttachUnit": ("ssa(sv)", lambda: self._attach(msg, *body)),
            "Reload": ("", lambda: self._engine(msg, self.reload_cb)),
        }
        if member in jobs:
            sig, work = jobs[member]
            self._check(msg, sig)
            self._spawn(self._as_root(msg, work))
            return True
        raise InvalidInput(f"unknown method {member}")

    def _entry_or_none(self, name: str) -> Entry | None:
        try:
            return self._entry(name)
        except NotFound:
            return None

    def _inspect(self, name: str, instructions: bool) -> str:
        from ipacctd.manager.inspect import inspect_unit

        return json.dumps(inspect_unit(self.manager, canonical(name),
                                       instructions=bool(instructions)))

    def _unit_call(self, msg: Message, iface: str | None, member: str | None,
                   name: str) -> Message | bool:
        entry = self._entry(name)
        name = entry.status.unit.name
        if iface == PROPS_IFACE:
            return self._props_call(msg, member or "", UNIT_IFACE, self._unit_props(entry))
        if iface not in (UNIT_IFACE, None):
            raise InvalidInput(f"unknown interface {iface}")
        calls: dict[str, tuple[str, Callable[[], Awaitable[Message | None]]]] = {
            "Stop": ("s", lambda: self._stop_job(msg, name, msg.body[0])),
            "ResetFailed": ("", lambda: self._engine(msg, self.manager.reset, name, unit=name)),
            "Reset": ("", lambda: self._engine(msg, self.manager.reset, name, unit=name)),  # 0.1
            "SetProperties": ("ba(sv)", lambda: self._engine(
                msg, self._set_properties, name, msg.body[1], unit=name)),
        }
        if member == "Stop" and msg.signature == "":  # ipacctd 0.1 (until 0.3): no mode
            calls["Stop"] = ("", lambda: self._engine(msg, self.manager.stop, name, unit=name))
        if member in calls:
            sig, work = calls[member]
            self._check(msg, sig)
            self._spawn(self._as_root(msg, work))
            return True
        raise InvalidInput(f"unknown method {member}")

    def _job_call(self, msg: Message, iface: str | None, member: str | None,
                  job: Job) -> Message:
        if iface == PROPS_IFACE:
            return self._props_call(msg, member or "", JOB_IFACE, job.properties())
        if iface not in (JOB_IFACE, None):
            raise InvalidInput(f"unknown interface {iface}")
        if member in ("GetAfter", "GetBefore"):  # ipacctd's jobs never wait for each other
            self._check(msg, "")
            return Message.new_method_return(msg, "a" + JOB_ROW, [[]])
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
            destination=DBUS, path="/org/freedesktop/DBus", interface=DBUS,
            member="GetConnectionUnixUser", signature="s", body=[msg.sender]))
        if reply.message_type != MessageType.METHOD_RETURN:
            raise AccessDenied("cannot determine the caller's uid")
        return int(reply.body[0])

    async def caller_owner(self, msg: Message) -> tuple[int, int] | None:
        """(pid, start time) of the message's sender, asked of the bus daemon; None when
        the bus cannot say (the unit then has no owner, as one started by busctl)."""
        from ipacctd.manager import owner

        reply = await self.bus.call(Message(
            destination=DBUS, path="/org/freedesktop/DBus", interface=DBUS,
            member="GetConnectionUnixProcessID", signature="s", body=[msg.sender]))
        if reply.message_type != MessageType.METHOD_RETURN:
            return None
        return owner.identify(int(reply.body[0]))

    async def _as_root(self, msg: Message, work: Callable[[], Awaitable[Message | None]]) -> None:
        """Run ``work`` for a caller proven to be root; send its reply, or the error. Work
        that replied itself (a job's path goes out before the job ends) returns None."""
        try:
            uid = await self.caller_uid(msg)
            if uid != 0:
                raise AccessDenied(f"uid {uid} may not change units: only root may")
            reply = await work()
        except Exception as exc:
            reply = self._error(msg, exc)
        if reply is not None:
            self.bus.send(reply)

    async def _run(self, fn: Callable[..., Any], *args: Any, unit: str | None = None) -> Any:
        """The engine call in a worker thread; the registry then shows what it did.

        A call about one unit — ``unit`` (as the caller named it), or the unit the call
        returns — has that unit read again. A pass over every unit (:meth:`Registry.sync`:
        the state and pin directories listed, every record stat'ed) held each change's
        reply for ~60 ms at 10,000 units (bench/results-daemon.txt), and whatever else
        changed meanwhile reaches the registry through the state directory's events as any
        writer's change does. A call about no one unit (a reload), or one that failed
        before saying which, is followed by the full pass."""
        result = None
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, fn, *args)
            return result
        finally:
            name = None
            if unit is not None:
                try:
                    name = canonical(unit)
                except Exception:  # not a unit name: the engine refused it, nothing changed
                    name = None
            elif isinstance(getattr(result, "name", None), str):
                name = result.name
            if name is not None:
                self.registry.refresh(name)
            else:
                self.registry.sync()

    async def _engine(self, msg: Message, fn: Callable[..., Any], *args: Any,
                      unit: str | None = None) -> Message:
        await self._run(fn, *args, unit=unit)
        return Message.new_method_return(msg)

    async def _attach(self, msg: Message, cgroup_path: str, name: str,
                      props: list[Any]) -> Message:
        unit = await self._run(lambda: self.manager.attach(
            cgroup_path, name=name or None, dbus_items=_items(props)))
        return Message.new_method_return(msg, "o", [unit_path(unit.name)])

    async def _make_transient(self, msg: Message, name: str, props: list[Any]) -> Any:
        """The new unit (made, armed); the caller may be the one to start its command."""
        owned_by = await self.caller_owner(msg)
        return await self._run(self._start_transient, name, props, owned_by)

    async def _start_transient_unit(self, msg: Message, name: str, props: list[Any]) -> Message:
        unit = await self._make_transient(msg, name, props)
        return Message.new_method_return(msg, "o", [unit_path(unit.name)])

    async def _start_job(self, msg: Message) -> None:
        name, mode, props, aux = msg.body
        check_mode(mode)
        if aux:
            # systemd makes them (a socket or timer beside the service); ipacctd has one
            # kind of unit, and leaving them out silently would start a unit without the
            # companion its caller counts on.
            raise NotSupported(f"auxiliary units are not supported ({len(aux)} given: "
                               f"{', '.join(str(a[0]) for a in aux)})")
        unit = await self._make_transient(msg, name, props)
        job = self._new_job(unit.name, "start")
        self.bus.send(Message.new_method_return(msg, "o", [job.path]))
        self._end_job(job, "done")  # the unit is made and armed: nothing left to do
        return None

    async def _stop_job(self, msg: Message, name: str, mode: str) -> Message | None:
        check_mode(mode)
        name = self._entry(name).status.unit.name
        job = self._job_of(name)
        if job is not None and job.type == "stop":  # merged into the one running, as systemd
            return Message.new_method_return(msg, "o", [job.path])
        job = self._new_job(name, "stop")
        self.bus.send(Message.new_method_return(msg, "o", [job.path]))
        result = "failed"
        try:
            await self._run(self.manager.stop, name, unit=name)
            result = "done"
        except Exception as exc:
            log.error("stop job %d of %s failed: %s", job.id, name, exc)
        finally:
            self._end_job(job, result)
        return None

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

    def _set_properties(self, name: str, props: list[Any]) -> Any:
        return self.manager.set_properties_dbus(name, _items(props))


def _items(props: list[Any]) -> list[tuple[str, str, Any]]:
    items = []
    for entry in props:
        if not (isinstance(entry, list | tuple) and len(entry) == 2
                and isinstance(entry[1], Variant)):
            raise InvalidInput("properties must be an array of (name, variant)")
        items.append((str(entry[0]), entry[1].signature, entry[1].value))
    return items
