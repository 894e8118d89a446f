"""The layout of a unit's counters map and how to read it.

One per-CPU array with a single element of twelve u64 fields, shared by the unit's
ingress and egress programs and kept across policy changes. Per-CPU slots keep the hot
path free of cache-line bouncing; the programs still add with ``lock add`` so that a
softirq interrupting a process-context update on the same CPU cannot lose a count.
"""

from __future__ import annotations

import operator

from ipacctd.bpf.maps import PerCPUArrayMap
from ipacctd.enums import IntEnum, StrEnum
from ipacctd.record import Record


class Direction(IntEnum):
    """Traffic direction as seen from the unit."""

    INGRESS = 0
    EGRESS = 1


class Field(IntEnum):
    """Index of each u64 in the counters value."""

    IN_PACKETS = 0
    IN_BYTES = 1
    OUT_PACKETS = 2
    OUT_BYTES = 3
    IN_DROPPED_PACKETS = 4
    IN_DROPPED_BYTES = 5
    OUT_DROPPED_PACKETS = 6
    OUT_DROPPED_BYTES = 7
    IN_AUDIT_PACKETS = 8
    IN_AUDIT_BYTES = 9
    OUT_AUDIT_PACKETS = 10
    OUT_AUDIT_BYTES = 11


VALUE_SIZE = len(Field) * 8
MAP_NAME = "ipacctd_cnt"


class Kind(StrEnum):
    """What the programs did with a counted packet."""

    PASSED = "passed"
    """Let through (systemd's IPIngress*/IPEgress*; shown only with ``IPAccounting=yes``)."""
    DROPPED = "dropped"
    """Dropped by the unit's firewall."""
    AUDIT = "audit"
    """Let through, but ``IPAddressDeny=`` would have dropped it (``IPAddressDenyMode=audit``)."""


class CounterSpec(Record):
    """One of the twelve counters: where it lives and what every front door calls it."""

    _fields = ("field", "attr", "prop", "metric", "direction", "kind", "unit")
    __slots__ = _fields
    field: Field
    """Index of its u64 in the map value (and position in :class:`Counters`)."""
    attr: str
    """The :class:`Counters` attribute."""
    prop: str
    """The ``systemctl show`` / D-Bus property (systemd has only the four passed ones)."""
    metric: str
    """The Prometheus counter family; :attr:`label` is its ``direction`` label."""
    direction: Direction
    kind: Kind
    unit: str
    """``packets`` or ``bytes``."""

    def __init__(
        self,
        field: Field,
        attr: str,
        prop: str,
        metric: str,
        direction: Direction,
        kind: Kind,
        unit: str,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "field", field)
        set_(self, "attr", attr)
        set_(self, "prop", prop)
        set_(self, "metric", metric)
        set_(self, "direction", direction)
        set_(self, "kind", kind)
        set_(self, "unit", unit)

    @property
    def label(self) -> str:
        """The direction as front doors spell it: ``ingress`` or ``egress``."""
        return self.direction.name.lower()

    @property
    def help(self) -> str:
        """The Prometheus help text of :attr:`metric`."""
        return METRIC_HELP[self.metric]


_I, _E = Direction.INGRESS, Direction.EGRESS
_P, _D, _A = Kind.PASSED, Kind.DROPPED, Kind.AUDIT

#: The Prometheus families, in exposition order, and their help texts. Each family has one
#: series per unit and direction.
METRIC_HELP: dict[str, str] = {
    "ipacctd_unit_ip_bytes": "IP bytes passed (systemd's IPIngressBytes/IPEgressBytes)",
    "ipacctd_unit_ip_packets": "IP packets passed",
    "ipacctd_unit_ip_dropped_bytes": "IP bytes dropped by the unit's firewall",
    "ipacctd_unit_ip_dropped_packets": "IP packets dropped by the unit's firewall",
    "ipacctd_unit_ip_audit_bytes": "IP bytes the deny list would drop (audit mode)",
    "ipacctd_unit_ip_audit_packets": "IP packets the deny list would drop (audit mode)",
}

#: The one table of counters, in property order (the order ``systemctl show`` and D-Bus list
#: them: per kind, per direction, bytes before packets, as systemd lists its four).
# fmt: off
COUNTERS: tuple[CounterSpec, ...] = tuple(CounterSpec(*row) for row in (
    # field                     Counters attribute         property / D-Bus name
    #                           metric family                       direction kind unit
    (Field.IN_BYTES,            "ingress_bytes",           "IPIngressBytes",
                                "ipacctd_unit_ip_bytes",            _I, _P, "bytes"),
    (Field.IN_PACKETS,          "ingress_packets",         "IPIngressPackets",
                                "ipacctd_unit_ip_packets",          _I, _P, "packets"),
    (Field.OUT_BYTES,           "egress_bytes",            "IPEgressBytes",
                                "ipacctd_unit_ip_bytes",            _E, _P, "bytes"),
    (Field.OUT_PACKETS,         "egress_packets",          "IPEgressPackets",
                                "ipacctd_unit_ip_packets",          _E, _P, "packets"),
    (Field.IN_DROPPED_BYTES,    "ingress_dropped_bytes",   "IPIngressDroppedBytes",
                                "ipacctd_unit_ip_dropped_bytes",    _I, _D, "bytes"),
    (Field.IN_DROPPED_PACKETS,  "ingress_dropped_packets", "IPIngressDroppedPackets",
                                "ipacctd_unit_ip_dropped_packets",  _I, _D, "packets"),
    (Field.OUT_DROPPED_BYTES,   "egress_dropped_bytes",    "IPEgressDroppedBytes",
                                "ipacctd_unit_ip_dropped_bytes",    _E, _D, "bytes"),
    (Field.OUT_DROPPED_PACKETS, "egress_dropped_packets",  "IPEgressDroppedPackets",
                                "ipacctd_unit_ip_dropped_packets",  _E, _D, "packets"),
    (Field.IN_AUDIT_BYTES,      "ingress_audit_bytes",     "IPIngressAuditBytes",
                                "ipacctd_unit_ip_audit_bytes",      _I, _A, "bytes"),
    (Field.IN_AUDIT_PACKETS,    "ingress_audit_packets",   "IPIngressAuditPackets",
                                "ipacctd_unit_ip_audit_packets",    _I, _A, "packets"),
    (Field.OUT_AUDIT_BYTES,     "egress_audit_bytes",      "IPEgressAuditBytes",
                                "ipacctd_unit_ip_audit_bytes",      _E, _A, "bytes"),
    (Field.OUT_AUDIT_PACKETS,   "egress_audit_packets",    "IPEgressAuditPackets",
                                "ipacctd_unit_ip_audit_packets",    _E, _A, "packets"),
))
# fmt: on

#: systemd's four (``IPIngressBytes`` …): counted and shown only with ``IPAccounting=yes``.
SYSTEMD_COUNTERS = tuple(c for c in COUNTERS if c.kind is Kind.PASSED)
#: ipacctd's eight (dropped and audit): shown whenever the unit's counters are known.
EXTRA_COUNTERS = tuple(c for c in COUNTERS if c.kind is not Kind.PASSED)


def counter(direction: Direction, kind: Kind | str, unit: str) -> CounterSpec:
    """The row of one counter, e.g. ``counter(Direction.EGRESS, "dropped", "bytes")``."""
    return _BY_KEY[direction, Kind(kind), unit]


_BY_KEY = {(c.direction, c.kind, c.unit): c for c in COUNTERS}


def offsets(direction: Direction, kind: Kind | str) -> tuple[int, int]:
    """Byte offsets of (packets, bytes) for a direction and kind: passed, dropped, audit."""
    return (
        counter(direction, kind, "packets").field * 8,
        counter(direction, kind, "bytes").field * 8,
    )


class Counters(Record):
    """A unit's traffic totals. Passed counters match systemd's IPIngress*/IPEgress*."""

    _fields = (
        "ingress_packets",
        "ingress_bytes",
        "egress_packets",
        "egress_bytes",
        "ingress_dropped_packets",
        "ingress_dropped_bytes",
        "egress_dropped_packets",
        "egress_dropped_bytes",
        "ingress_audit_packets",
        "ingress_audit_bytes",
        "egress_audit_packets",
        "egress_audit_bytes",
    )
    __slots__ = _fields
    ingress_packets: int
    ingress_bytes: int
    egress_packets: int
    egress_bytes: int
    ingress_dropped_packets: int
    ingress_dropped_bytes: int
    egress_dropped_packets: int
    egress_dropped_bytes: int
    ingress_audit_packets: int
    ingress_audit_bytes: int
    egress_audit_packets: int
    egress_audit_bytes: int

    def __init__(
        self,
        ingress_packets: int = 0,
        ingress_bytes: int = 0,
        egress_packets: int = 0,
        egress_bytes: int = 0,
        ingress_dropped_packets: int = 0,
        ingress_dropped_bytes: int = 0,
        egress_dropped_packets: int = 0,
        egress_dropped_bytes: int = 0,
        ingress_audit_packets: int = 0,
        ingress_audit_bytes: int = 0,
        egress_audit_packets: int = 0,
        egress_audit_bytes: int = 0,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "ingress_packets", ingress_packets)
        set_(self, "ingress_bytes", ingress_bytes)
        set_(self, "egress_packets", egress_packets)
        set_(self, "egress_bytes", egress_bytes)
        set_(self, "ingress_dropped_packets", ingress_dropped_packets)
        set_(self, "ingress_dropped_bytes", ingress_dropped_bytes)
        set_(self, "egress_dropped_packets", egress_dropped_packets)
        set_(self, "egress_dropped_bytes", egress_dropped_bytes)
        set_(self, "ingress_audit_packets", ingress_audit_packets)
        set_(self, "ingress_audit_bytes", ingress_audit_bytes)
        set_(self, "egress_audit_packets", egress_audit_packets)
        set_(self, "egress_audit_bytes", egress_audit_bytes)

    def to_dict(self) -> dict[str, int]:
        """Field name → value."""
        return dict(zip(self._fields, self._values(self), strict=True))

    def __add__(self, other: Counters) -> Counters:
        return Counters(*map(operator.add, self._values(self), other._values(other)))

    def __sub__(self, other: Counters) -> Counters:
        return Counters(*map(operator.sub, self._values(self), other._values(other)))


def create_map() -> PerCPUArrayMap:
    """A new, zeroed counters map."""
    return PerCPUArrayMap.new(VALUE_SIZE, 1, MAP_NAME)


def read(counters: PerCPUArrayMap) -> Counters:
    """Sum the per-CPU slots into totals."""
    return Counters(*counters.sum_u64(0))
