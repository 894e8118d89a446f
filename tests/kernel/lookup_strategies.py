"""Forcing each lookup strategy (ipacctd.datapath.lookup) on the small tables tests use.

A module of its own, not conftest.py: several test directories have a conftest.py, and
``from conftest import ...`` picks whichever pytest imported last.
"""

from __future__ import annotations

import pytest

from ipacctd.datapath import lookup

# name -> (INLINE_MAX, MULTIBIT_MIN, STRIDES); "auto" keeps the real thresholds.
STRATEGIES: dict[str, tuple[int, int, tuple] | None] = {
    "auto": None,
    "inline": (10**9, 10**9, lookup.STRIDES),
    "lpm": (0, 10**9, lookup.STRIDES),
    "multibit-16-4": (0, 1, ((16, 4, 4, 4, 4),)),
    "multibit-20-4": (0, 1, ((20, 4, 4, 4),)),
    "multibit-16-8": (0, 1, ((16, 8, 8),)),
}


def force(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make every table with a lookup use strategy ``name`` (multibit: IPv4 only; IPv6
    tables then use the trie)."""
    setting = STRATEGIES[name]
    if setting is None:
        return
    inline_max, multibit_min, strides = setting
    monkeypatch.setattr(lookup, "INLINE_MAX", inline_max)
    monkeypatch.setattr(lookup, "MULTIBIT_MIN", multibit_min)
    monkeypatch.setattr(lookup, "STRIDES", strides)


def expected(name: str, version: int) -> str:
    """The strategy a non-constant table of ``version`` gets when ``name`` is forced."""
    if name.startswith("multibit"):
        return lookup.MULTIBIT if version == 4 else lookup.LPM
    return name
