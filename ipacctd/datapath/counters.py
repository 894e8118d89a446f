"""The layout of a unit's counters map and how to read it.

One per-CPU array with a single element of twelve u64 fields, shared by the unit's
ingress and egress programs and kept across policy changes. Per-CPU slots keep the hot
path free of cache-line bouncing; the programs still add with ``lock add`` so that a
softirq interrupting a process-context update on the same CPU cannot lose a count.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass

from ipacctd.bpf.maps import PerCPUArrayMap


class Direction(enum.IntEnum):
    """Traffic direction as seen from the unit."""

    INGRESS = 0
    EGRESS = 1


class Field(enum.IntEnum):
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


def offsets(direction: Direction, kind: str) -> tuple[int, int]:
    """Byte offsets of (packets, bytes) for a direction and kind: passed, dropped, audit."""
    base = {
        "passed": Field.IN_PACKETS,
        "dropped": Field.IN_DROPPED_PACKETS,
        "audit": Field.IN_AUDIT_PACKETS,
    }[kind]
    first = base + 2 * direction
    return first * 8, (first + 1) * 8


@dataclass(frozen=True)
class Counters:
    """A unit's traffic totals. Passed counters match systemd's IPIngress*/IPEgress*."""

    ingress_packets: int = 0
    ingress_bytes: int = 0
    egress_packets: int = 0
    egress_bytes: int = 0
    ingress_dropped_packets: int = 0
    ingress_dropped_bytes: int = 0
    egress_dropped_packets: int = 0
    egress_dropped_bytes: int = 0
    ingress_audit_packets: int = 0
    ingress_audit_bytes: int = 0
    egress_audit_packets: int = 0
    egress_audit_bytes: int = 0

    def to_dict(self) -> dict[str, int]:
        """Field name → value."""
        return asdict(self)

    def __add__(self, other: Counters) -> Counters:
        return Counters(
            *(a + b for a, b in zip(self.to_dict().values(), other.to_dict().values(), strict=True))
        )

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            *(a - b for a, b in zip(self.to_dict().values(), other.to_dict().values(), strict=True))
        )


def create_map() -> PerCPUArrayMap:
    """A new, zeroed counters map."""
    return PerCPUArrayMap.new(VALUE_SIZE, 1, MAP_NAME)


def read(counters: PerCPUArrayMap) -> Counters:
    """Sum the per-CPU slots into totals."""
    return Counters(*counters.sum_u64(0))
