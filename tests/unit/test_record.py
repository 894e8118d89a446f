"""ipacctd.record: value classes made cheaply at import behave as the dataclasses they
replace (issue 13 item 4: run start-up). The enums: tests/unit/test_enums.py."""

from __future__ import annotations

import copy
import pickle

import pytest

from ipacctd.bpf import asm
from ipacctd.datapath import lookup
from ipacctd.datapath.counters import Counters
from ipacctd.datapath.unit import Spec
from ipacctd.manager.config import Config
from ipacctd.manager.unit import Enforcement, Unit, UnitStatus
from ipacctd.policy.properties import Properties
from ipacctd.record import FrozenError, Record, asdict, fields, replace


def test_equality_hash_and_repr_follow_the_fields() -> None:
    a = Unit("a.service", "/x/a.service", command=("sleep", "1"))
    b = Unit("a.service", "/x/a.service", command=("sleep", "1"))
    assert a == b and hash(a) == hash(b) and a is not b
    assert a != replace(a, main_pid=7) and a != "a.service"
    assert {a: 1}[b] == 1
    assert repr(Config()).startswith("Config(state_dir='/run/ipacctd', bpf_dir=")
    assert fields(Enforcement) == ("enforced", "problem", "live", "cgroup_id")
    assert asdict(Enforcement(False, "x")) == {
        "enforced": False, "problem": "x", "live": True, "cgroup_id": None,
    }  # fmt: skip


def test_fields_left_out_of_comparison_and_repr() -> None:
    one, two = asm.Insn(0x85, imm=1, map_ref=object()), asm.Insn(0x85, imm=1, map_ref=None)
    assert one == two and hash(one) == hash(two)  # map_ref: compare=False, as before
    assert "map_ref" in repr(one)


def test_frozen_records_refuse_assignment_and_mutable_ones_are_unhashable() -> None:
    c = Counters(1, 2)
    with pytest.raises(FrozenError):
        c.ingress_packets = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del c.ingress_bytes
    with pytest.raises(AttributeError):
        c.new_field = 1  # type: ignore[attr-defined]  # slots: no other attributes
    table = lookup.Table(None, lookup.INLINE)  # type: ignore[arg-type]
    table.strategy = lookup.LPM  # a mutable record (was @dataclass without frozen)
    assert table.hashes == {} and table.hashes is not lookup.Table(None, "x").hashes  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hash(table)


def test_replace_runs_the_constructor_and_refuses_unknown_fields() -> None:
    p = Properties().apply([("IPAddressDeny", "198.51.100.1")])
    q = replace(p, description="x")
    assert q.description == "x" and q.ip_address_deny == p.ip_address_deny
    with pytest.raises(TypeError):
        replace(p, no_such_field=1)


@pytest.mark.parametrize(
    "value",
    [
        Unit("a.service", "/x/a.service", Properties(description="d"), main_pid=3),
        UnitStatus(Unit("b.service", "/b"), "active", "running", (1,), Counters(1), True),
        Counters(*range(12)),
        Spec(deny=("198.51.100.0/24",), audit=True),
        asm.Label("x"),
    ],
)
def test_copies_and_pickles_are_equal(value: Record) -> None:
    assert copy.copy(value) == value
    assert copy.deepcopy(value) == value
    assert pickle.loads(pickle.dumps(value)) == value


def test_counters_arithmetic_and_dict() -> None:
    a, b = Counters(*range(12)), Counters(*([1] * 12))
    assert (a + b) - b == a
    assert list(a.to_dict()) == list(fields(Counters))
    assert a.to_dict()["egress_audit_bytes"] == 11
