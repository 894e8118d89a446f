"""The one counters table agrees with the map layout and the Counters value type."""

from ipacctd.datapath.counters import (
    COUNTERS,
    EXTRA_COUNTERS,
    METRIC_HELP,
    SYSTEMD_COUNTERS,
    Counters,
    Direction,
    Field,
    Kind,
    counter,
    offsets,
)
from ipacctd.record import fields


def test_one_row_per_field_in_counters_order() -> None:
    by_field = sorted(COUNTERS, key=lambda c: c.field)
    assert [c.field for c in by_field] == list(Field)
    assert [c.attr for c in by_field] == list(fields(Counters))


def test_names_follow_field_direction_kind_and_unit() -> None:
    for c in COUNTERS:
        assert c.field.name.startswith("IN_" if c.direction is Direction.INGRESS else "OUT_")
        assert c.field.name.endswith(c.unit.upper())
        assert c.attr.startswith(c.label + "_") and c.attr.endswith("_" + c.unit)
        infix = "" if c.kind is Kind.PASSED else c.kind.value.capitalize()
        assert c.prop == f"IP{c.label.capitalize()}{infix}{c.unit.capitalize()}"
        assert c.metric in METRIC_HELP and c.help == METRIC_HELP[c.metric]


def test_systemd_has_the_four_passed_counters_bytes_first() -> None:
    assert [c.prop for c in SYSTEMD_COUNTERS] == [
        "IPIngressBytes",
        "IPIngressPackets",
        "IPEgressBytes",
        "IPEgressPackets",
    ]
    assert len(EXTRA_COUNTERS) == 8 and not set(SYSTEMD_COUNTERS) & set(EXTRA_COUNTERS)


def test_every_family_has_one_series_per_direction() -> None:
    for metric in METRIC_HELP:
        assert sorted(c.direction for c in COUNTERS if c.metric == metric) == list(Direction)


def test_offsets_are_the_fields_of_packets_and_bytes() -> None:
    assert offsets(Direction.INGRESS, "passed") == (0, 8)
    assert offsets(Direction.EGRESS, "dropped") == (48, 56)
    assert offsets(Direction.EGRESS, Kind.AUDIT) == (80, 88)
    assert counter(Direction.INGRESS, "audit", "bytes").field is Field.IN_AUDIT_BYTES
