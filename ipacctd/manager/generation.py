"""Policy generations: which recorded policy the kernel enforces now.

A unit's metadata records the generation of its policy (1 at creation, +1 per change);
the kernel holds the generation it enforces in a one-element array map pinned beside
the counters (``<pin dir>/generation``). A change writes its intent first (metadata with
the new policy, the next generation and the policy to roll back to), then swaps the
programs, then stores the new generation in the kernel, then drops the rollback from the
metadata. So a crash at any point leaves one of two visible states:

* kernel generation == recorded generation: the kernel enforces the recorded policy;
* kernel generation < recorded generation (or no generation pin): a change was cut off;
  :meth:`ipacctd.manager.engine.Manager.reconcile` re-applies the recorded policy (or,
  if that fails, returns to the recorded rollback policy).

The kernel generation is only ever written after the programs of that generation are in
place, so "equal" always means "enforced".
"""

from __future__ import annotations

import os
import struct

from ipacctd.bpf.errors import BPFError
from ipacctd.bpf.maps import ArrayMap

PIN = "generation"


def path(pin_dir: str) -> str:
    return os.path.join(pin_dir, PIN)


def read(pin_dir: str) -> int | None:
    """The generation the kernel enforces; None when no generation is pinned."""
    p = path(pin_dir)
    try:
        with ArrayMap.open_pinned(p) as m:
            return struct.unpack("=Q", m[0][:8])[0]
    except (BPFError, OSError, IndexError, ValueError):
        return None


def write(pin_dir: str, generation: int) -> None:
    """Record in the kernel that ``generation`` is enforced (pin the map when missing)."""
    p = path(pin_dir)
    value = struct.pack("=Q", generation)
    if os.path.exists(p):
        with ArrayMap.open_pinned(p) as m:
            m[0] = value
        return
    with ArrayMap.new(8, 1, "ipacctd_gen") as m:
        m[0] = value
        m.pin(p)
