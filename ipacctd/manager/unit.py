"""A unit: a named cgroup with properties, and its state as seen now."""

from __future__ import annotations

from ipacctd.datapath.unit import Spec
from ipacctd.errors import Corrupt, Error
from ipacctd.policy.properties import PROPERTIES, DenyMode, Properties
from ipacctd.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

    from ipacctd.containers import ContainerInfo
    from ipacctd.datapath.counters import Counters

#: The default properties (immutable, so one instance serves every unit).
_DEFAULT_PROPERTIES = Properties()

META_VERSION = 1

#: (unit, property) pairs already warned about in this process: one warning each, not one
#: per poll.
_WARNED: set[tuple[str, str]] = set()


class Unit(Record):
    """What ipacctd records about a unit (its metadata file); immutable.

    Fields (in order, as the constructor takes them):

    * ``name``; ``cgroup``: relative to the cgroup2 mount, e.g. /ipacctd/run-u1.service;
      ``properties``;
    * ``transient``: ipacctd made the cgroup (run) rather than attaching to one;
    * ``enforced``: False only when started with the override and BPF unusable;
      ``not_enforced_reason``;
    * ``command``; ``main_pid``; ``started_at``, ``exited_at``: wall clock, seconds;
      ``exit_status``: exit code, or -signal number;
    * ``source``: the unit file applied, if any;
    * ``generation``: the policy generation (see ipacctd.manager.generation);
      ``rollback``: set while a policy change is in flight; ``removing``: set while the
      unit is being removed (finished on reconcile);
    * ``owner``: (pid, start time) of the process that starts the command and records its
      exit: while it lives and no exit is recorded, the name is taken (see
      ipacctd.manager.owner);
    * ``unknown_properties``: properties this version does not know (metadata of another
      version): written back unchanged, never applied;
    * ``systemd_service``: NAME.service when systemd attaches the unit's pinned programs
      at every start of that service (a runtime drop-in; see ipacctd.manager.systemd);
      None: ipacctd's own links;
    * ``cgroup_id``: id (inode) of the cgroup the unit's links were made for; None in
      metadata older than this field (the next rebind or repair records it);
    * ``container``: a container's unit (bound by the OCI hook or a unit file's glob).
    """

    _fields = (
        "name",
        "cgroup",
        "properties",
        "transient",
        "enforced",
        "not_enforced_reason",
        "command",
        "main_pid",
        "started_at",
        "exited_at",
        "exit_status",
        "source",
        "generation",
        "rollback",
        "removing",
        "owner",
        "unknown_properties",
        "systemd_service",
        "cgroup_id",
        "container",
    )
    __slots__ = _fields
    name: str
    cgroup: str
    properties: Properties
    transient: bool
    enforced: bool
    not_enforced_reason: str
    command: tuple[str, ...]
    main_pid: int | None
    started_at: float | None
    exited_at: float | None
    exit_status: int | None
    source: str | None
    generation: int
    rollback: Properties | None
    removing: bool
    owner: tuple[int, int] | None
    unknown_properties: tuple[tuple[str, Any], ...]
    systemd_service: str | None
    cgroup_id: int | None
    container: ContainerInfo | None

    def __init__(
        self,
        name: str,
        cgroup: str,
        properties: Properties = _DEFAULT_PROPERTIES,
        transient: bool = True,
        enforced: bool = True,
        not_enforced_reason: str = "",
        command: tuple[str, ...] = (),
        main_pid: int | None = None,
        started_at: float | None = None,
        exited_at: float | None = None,
        exit_status: int | None = None,
        source: str | None = None,
        generation: int = 1,
        rollback: Properties | None = None,
        removing: bool = False,
        owner: tuple[int, int] | None = None,
        unknown_properties: tuple[tuple[str, Any], ...] = (),
        systemd_service: str | None = None,
        cgroup_id: int | None = None,
        container: ContainerInfo | None = None,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "name", name)
        set_(self, "cgroup", cgroup)
        set_(self, "properties", properties)
        set_(self, "transient", transient)
        set_(self, "enforced", enforced)
        set_(self, "not_enforced_reason", not_enforced_reason)
        set_(self, "command", command)
        set_(self, "main_pid", main_pid)
        set_(self, "started_at", started_at)
        set_(self, "exited_at", exited_at)
        set_(self, "exit_status", exit_status)
        set_(self, "source", source)
        set_(self, "generation", generation)
        set_(self, "rollback", rollback)
        set_(self, "removing", removing)
        set_(self, "owner", owner)
        set_(self, "unknown_properties", unknown_properties)
        set_(self, "systemd_service", systemd_service)
        set_(self, "cgroup_id", cgroup_id)
        set_(self, "container", container)

    @property
    def description(self) -> str:
        return self.properties.description or escape_command(self.command) or self.name

    def to_json(self) -> dict[str, Any]:
        """The metadata file's content."""
        return {
            "version": META_VERSION,
            "name": self.name,
            "cgroup": self.cgroup,
            "cgroup_id": self.cgroup_id,
            "properties": {**dict(self.unknown_properties), **self.properties.to_store()},
            "transient": self.transient,
            "enforced": self.enforced,
            "not_enforced_reason": self.not_enforced_reason,
            "command": list(self.command),
            "main_pid": self.main_pid,
            "started_at": self.started_at,
            "exited_at": self.exited_at,
            "exit_status": self.exit_status,
            "source": self.source,
            "generation": self.generation,
            "rollback": self.rollback.to_store() if self.rollback is not None else None,
            "removing": self.removing,
            "owner": list(self.owner) if self.owner is not None else None,
            "container": self.container.to_json() if self.container else None,
            "systemd_service": self.systemd_service,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Unit:
        """Rebuild from a metadata file.

        Raises:
            Corrupt: for metadata that does not describe a unit (missing or mistyped
                fields, bad property values). Unknown properties are kept and ignored.
        """
        try:
            return cls._from_json(d)
        except (Error, KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise Corrupt(f"metadata of unit {d.get('name', '?')!s:.100} is invalid: "
                          f"{what:.200}") from None

    @classmethod
    def _from_json(cls, d: dict[str, Any]) -> Unit:
        props = d.get("properties", {})
        if not isinstance(props, dict):
            raise TypeError("properties: expected an object")
        unknown = tuple(sorted((k, v) for k, v in props.items() if k not in PROPERTIES))
        for key, _ in unknown:
            if (d["name"], key) not in _WARNED:
                _WARNED.add((d["name"], key))
                import logging  # rare: kept off the CLI's start-up path

                logging.getLogger("ipacctd.engine").warning(
                    "unit %s: ignoring property %s unknown to this version (kept)",
                    d["name"], key[:100])
        return cls(
            name=str(d["name"]),
            cgroup=str(d["cgroup"]),
            cgroup_id=_opt_int(d.get("cgroup_id"), "cgroup_id"),
            properties=Properties.from_json({k: v for k, v in props.items()
                                             if k in PROPERTIES}),
            unknown_properties=unknown,
            transient=bool(d.get("transient", True)),
            enforced=bool(d.get("enforced", True)),
            not_enforced_reason=d.get("not_enforced_reason", ""),
            command=tuple(d.get("command", ())),
            main_pid=d.get("main_pid"),
            started_at=d.get("started_at"),
            exited_at=d.get("exited_at"),
            exit_status=d.get("exit_status"),
            source=d.get("source"),
            generation=int(d.get("generation", 0)),
            rollback=(Properties.from_json(d["rollback"]) if d.get("rollback") is not None
                      else None),
            removing=bool(d.get("removing", False)),
            owner=_owner(d.get("owner")),
            container=_container(d.get("container")),
            systemd_service=(str(d["systemd_service"]) if d.get("systemd_service") is not None
                             else None),
        )


def _container(value: Any) -> ContainerInfo | None:
    if not value:
        return None
    from ipacctd.containers import ContainerInfo  # only a container's unit needs it

    return ContainerInfo.from_json(value)


def _owner(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    pid, started = value
    return int(pid), int(started)


def _opt_int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what}: expected an integer")
    return value


def escape_command(argv: tuple[str, ...] | list[str]) -> str:
    """A command line on one line: arguments joined by spaces, control characters escaped
    (``\\n``, ``\\t``, ``\\xNN``), so a ``python3 -c`` script cannot break a status line."""
    out = []
    for c in " ".join(argv):
        if c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return "".join(out)


def spec_for(props: Properties) -> Spec:
    """The datapath part of a unit's properties (its address lists unparsed until programs
    are built from it)."""
    return Spec(
        allow=props.ip_address_allow,
        deny=props.ip_address_deny,
        accounting=props.ip_accounting,
        audit=props.ip_address_deny_mode == DenyMode.AUDIT,
        ingress_filters=props.ip_ingress_filter_path,
        egress_filters=props.ip_egress_filter_path,
    )


def policy_changed(old: Properties, new: Properties) -> bool:
    """Whether going from ``old`` to ``new`` changes what the kernel enforces or counts (a
    new ``Description=`` does not: no programs are rebuilt for it). Lists read from the
    metadata compare by their canonical text, unparsed."""
    return spec_for(old) != spec_for(new)


#: Start of the problem an :class:`Enforcement` names when a policy change was cut off
#: (the programs run on the cgroup, but not those of the recorded policy yet).
POLICY_CUT_OFF = "policy change cut off"


#: Start of the problem an :class:`Enforcement` names when a unit systemd arms is not armed
#: while its service is not running: its next start would run without the firewall.
NOT_ARMED = "not armed"


class Enforcement(Record):
    """Whether a unit's recorded policy is in force on the live cgroup now at its path."""

    _fields = ("enforced", "problem", "live", "cgroup_id")
    __slots__ = _fields
    enforced: bool
    problem: str  # the cause when not: "cgroup re-created: ...", "pins lost: ..."
    live: bool  # a cgroup exists at the unit's path
    cgroup_id: int | None  # of that cgroup

    def __init__(
        self, enforced: bool, problem: str = "", live: bool = True, cgroup_id: int | None = None
    ) -> None:
        set_ = object.__setattr__
        set_(self, "enforced", enforced)
        set_(self, "problem", problem)
        set_(self, "live", live)
        set_(self, "cgroup_id", cgroup_id)

    @property
    def policy_cut_off(self) -> bool:
        """The unit's programs run on its cgroup, but not those of the recorded policy."""
        return self.problem.startswith(POLICY_CUT_OFF)

    @property
    def disarmed(self) -> bool:
        """No cgroup now, but the next start of the systemd service would be unenforced."""
        return not self.live and self.problem.startswith(NOT_ARMED)

    @property
    def alarming(self) -> bool:
        """Not in force on a live cgroup: processes there may send unfiltered."""
        return self.live and not self.enforced


_ENFORCED = Enforcement(True)


class UnitStatus(Record):
    """A unit and what the kernel says about it now."""

    _fields = ("unit", "active_state", "sub_state", "pids", "counters", "attached",
               "kernel_generation", "enforcement", "broken")
    __slots__ = _fields
    unit: Unit
    active_state: str  # active | inactive | failed
    sub_state: str  # running | exited | dead | failed
    pids: tuple[int, ...]
    counters: Counters | None  # None when nothing is pinned (not enforced / broken)
    attached: bool  # the unit's programs run on the live cgroup now at its path
    kernel_generation: int | None  # policy generation the kernel enforces
    enforcement: Enforcement
    broken: str | None  # why the unit's state cannot be read (None: it can)

    def __init__(
        self,
        unit: Unit,
        active_state: str,
        sub_state: str,
        pids: tuple[int, ...],
        counters: Counters | None,
        attached: bool,
        kernel_generation: int | None = None,
        enforcement: Enforcement = _ENFORCED,
        broken: str | None = None,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "unit", unit)
        set_(self, "active_state", active_state)
        set_(self, "sub_state", sub_state)
        set_(self, "pids", pids)
        set_(self, "counters", counters)
        set_(self, "attached", attached)
        set_(self, "kernel_generation", kernel_generation)
        set_(self, "enforcement", enforcement)
        set_(self, "broken", broken)

    @property
    def policy_in_force(self) -> bool:
        """True when the kernel enforces the recorded policy (no change cut off midway)."""
        u = self.unit
        return u.enforced and self.attached and self.kernel_generation == u.generation

    @property
    def name(self) -> str:
        return self.unit.name

    @property
    def counting(self) -> bool:
        return self.counters is not None and self.unit.properties.ip_accounting

    def to_json(self) -> dict[str, Any]:
        """Everything a script may want, for ``--json`` and the D-Bus/metrics views."""
        u = self.unit
        return {
            "name": u.name,
            "description": u.description,
            "load_state": "error" if self.broken is not None else "loaded",
            "broken": self.broken,
            "active_state": self.active_state,
            "sub_state": self.sub_state,
            "cgroup": u.cgroup,
            "transient": u.transient,
            "systemd_service": u.systemd_service,
            "enforced": u.enforced and self.attached,
            "policy_in_force": self.policy_in_force,
            "firewall_enforced": self.enforcement.enforced,
            "firewall_problem": self.enforcement.problem,
            "cgroup_id": u.cgroup_id,
            "live_cgroup_id": self.enforcement.cgroup_id,
            "policy_generation": u.generation,
            "kernel_policy_generation": self.kernel_generation,
            "main_pid": u.main_pid,
            "pids": list(self.pids),
            "command": list(u.command),
            "started_at": u.started_at,
            "exited_at": u.exited_at,
            "exit_status": u.exit_status,
            "properties": u.properties.to_show(),
            "counters": self.counters.to_dict() if self.counters else None,
            "container": u.container.to_json() if u.container else None,
        }
