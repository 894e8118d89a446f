"""ipacctd.enums: each of ipacctd's enumerations behaves as the enum the standard library's
:mod:`enum` makes from the same members (names, values, aliases, order, str, format, repr,
JSON, lookups, copy and pickle), without importing :mod:`enum` (issue 13 item 4: run
start-up; tests/unit/test_startup_imports.py keeps enum off the run path)."""

from __future__ import annotations

import copy
import enum
import json
import os
import pickle
import subprocess
import sys

import pytest

from ipacctd.bpf import asm, types
from ipacctd.datapath import counters
from ipacctd.enums import IntEnum, StrEnum
from ipacctd.policy import properties

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENUMS = [
    types.Cmd, types.MapType, types.ProgType, types.LinkType, types.StatsType, types.AttachType,
    asm.Alu, asm.Jmp, asm.Helper, asm.Reg,
    counters.Direction, counters.Field, counters.Kind, properties.DenyMode,
]  # fmt: skip


class Sample(IntEnum):
    """A docstring, members, an alias, a method and a private attribute."""

    FIRST = 3
    """A member's docstring (a bare string: not a member)."""
    SECOND = -1
    THIRD = 1 << 40
    AGAIN = 3  # an alias of FIRST
    _private = 9

    def twice(self) -> int:
        return 2 * self


class Words(StrEnum):
    ONE = "one"
    TWO = "two words"
    UNO = "one"


def _stdlib(made: type) -> type[enum.Enum]:
    base = enum.IntEnum if issubclass(made, int) else enum.StrEnum
    return base(made.__name__, [(name, m.value) for name, m in made._member_map_.items()])


@pytest.mark.parametrize("made", [*ENUMS, Sample, Words], ids=lambda e: e.__name__)
def test_members_behave_as_the_standard_librarys(made: type) -> None:
    usual = _stdlib(made)
    assert len(made) == len(usual) and repr(made) == repr(usual)
    assert [(m.name, m.value) for m in made] == [(m.name, m.value) for m in usual]
    assert list(reversed(made)) == list(reversed([made(m.value) for m in usual]))
    for name, theirs in usual.__members__.items():  # aliases too
        mine = made[name]
        assert getattr(made, name) is mine and mine.name == theirs.name
        assert mine.value == theirs.value and type(mine.value) is type(theirs.value)
        assert (str(mine), format(mine), f"{mine}", f"{mine:>12}") == (
            str(theirs), format(theirs), f"{theirs}", f"{theirs:>12}")
        assert repr(mine) == repr(theirs)
        assert json.dumps(mine) == json.dumps(theirs)
        assert json.dumps({mine: 1}) == json.dumps({theirs: 1})
        assert mine == theirs.value and hash(mine) == hash(theirs.value) and mine == theirs
        assert made(theirs.value) is mine and mine in made and theirs.value in made
        assert pickle.loads(pickle.dumps(mine)) is mine
        assert copy.copy(mine) is mine and copy.deepcopy(mine) is mine
        assert isinstance(mine, made) and isinstance(mine, int if issubclass(made, int) else str)
        assert bool(mine) == bool(theirs)
    assert made._member_map_.keys() == usual.__members__.keys()


def test_lookups_of_what_is_not_a_member_fail_as_enums_do() -> None:
    for made in (Sample, Words, counters.Direction):
        usual = _stdlib(made)
        for bad in (12345, "nope", None, 2.5):
            with pytest.raises(ValueError) as mine:
                made(bad)
            with pytest.raises(ValueError) as theirs:
                usual(bad)
            want = str(theirs.value).replace(usual.__qualname__, made.__qualname__)
            assert str(mine.value) == want
        with pytest.raises(KeyError):
            made["NOPE"]
        assert "NOPE" not in made and [] not in made  # unhashable: not a member


def test_aliases_methods_and_private_names() -> None:
    assert Sample.AGAIN is Sample.FIRST
    assert list(Sample) == [Sample.FIRST, Sample.SECOND, Sample.THIRD]
    assert Sample.FIRST.twice() == 6 and type(Sample.FIRST.twice()) is int
    assert Sample._private == 9 and type(Sample._private) is int  # not a member
    assert Sample.SECOND < Sample.FIRST < Sample.THIRD and Sample.FIRST + 1 == 4
    assert sorted([Sample.THIRD, Sample.SECOND]) == [Sample.SECOND, Sample.THIRD]
    assert Words.UNO is Words.ONE and Words.TWO.upper() == "TWO WORDS"


def test_members_cannot_be_reassigned_or_deleted() -> None:
    with pytest.raises(AttributeError):
        Sample.FIRST = 4  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del Sample.SECOND
    with pytest.raises(AttributeError):
        Sample.FIRST.name = "x"  # type: ignore[misc]
    assert Sample.FIRST == 3 and Sample.FIRST.name == "FIRST"


def test_ipacctds_enums_import_no_enum() -> None:
    code = (
        "import sys; import ipacctd.bpf.types, ipacctd.bpf.asm, ipacctd.datapath.counters, "
        "ipacctd.policy.properties; print('enum' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True, text=True, check=True, timeout=60, env={"PYTHONPATH": REPO},
    )
    assert out.stdout.strip() == "False"
