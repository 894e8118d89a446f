"""Forcing each lookup strategy (ipacctd.datapath.lookup) on the small tables tests use.

A module of its own, not conftest.py: several test directories have a conftest.py, and
``from conftest import ...`` picks whichever pytest imported last.
"""

from __future__ import annotations

import pytest

from ipacctd.datapath import lookup

# name -> module constants to set; None keeps the real thresholds ("auto").
STRATEGIES: dict[str, dict[str, object] | None] = {
    "auto": None,
    "inline": {"INLINE_MAX": 10**9, "MULTIBIT_MIN": 10**9, "LENHASH_MIN": 10**9},
    "lpm": {"INLINE_MAX": 0, "MULTIBIT_MIN": 10**9, "LENHASH_MIN": 10**9},
    "multibit-16-4": {"INLINE_MAX": 0, "MULTIBIT_MIN": 1, "STRIDES": ((16, 4, 4, 4, 4),)},
    "multibit-20-4": {"INLINE_MAX": 0, "MULTIBIT_MIN": 1, "STRIDES": ((20, 4, 4, 4),)},
    "multibit-16-8": {"INLINE_MAX": 0, "MULTIBIT_MIN": 1, "STRIDES": ((16, 8, 8),)},
    # lenhash with its smallest root (most lengths share a slot) and its largest (short
    # prefixes paint many slots)
    "lenhash-12": {"INLINE_MAX": 0, "LENHASH_MIN": 1, "LENHASH_ROOT": 12},
    "lenhash-20": {"INLINE_MAX": 0, "LENHASH_MIN": 1, "LENHASH_ROOT": 20},
}


def force(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make every table with a lookup use strategy ``name`` (multibit: IPv4 only, lenhash:
    IPv6 only; the other family then uses the trie)."""
    setting = STRATEGIES[name]
    if setting is None:
        return
    defaults = {"MULTIBIT_MIN": 10**9, "LENHASH_MIN": 10**9}
    for attr, value in {**defaults, **setting}.items():
        monkeypatch.setattr(lookup, attr, value)


def expected(name: str, version: int) -> str:
    """The strategy a non-constant table of ``version`` gets when ``name`` is forced."""
    if name.startswith("multibit"):
        return lookup.MULTIBIT if version == 4 else lookup.LPM
    if name.startswith("lenhash"):
        return lookup.LENHASH if version == 6 else lookup.LPM
    return name
