"""The name of a new transient unit (``ipacctd run`` without ``--unit``) is the first
``run-u<N>.service`` taken in no way — no metadata, no pins left without it — found by
looking at the candidates in turn (Manager._free_transient_name) rather than by listing
every unit: the same name as ``transient_name(Manager.names())``, on random states."""

from __future__ import annotations

import os
import random

import pytest

from ipacctd.manager import engine as engine_mod
from ipacctd.manager.config import Config
from ipacctd.manager.engine import Manager
from ipacctd.policy.names import pin_name, transient_name


@pytest.mark.parametrize("probe", [256, 3])
def test_the_probed_name_is_the_listings(tmp_path, monkeypatch, probe: int) -> None:
    monkeypatch.setattr(engine_mod, "PROBE_NAMES", probe)  # 3: the listing answers too
    rng = random.Random(probe)
    for case in range(60):
        root = tmp_path / f"c{case}"
        cfg = Config(state_dir=str(root / "state"), bpf_dir=str(root / "bpf"),
                     cgroup_root="/x", unit_dir=str(root / "units"))
        mgr = Manager(cfg)
        os.makedirs(cfg.units_dir)
        os.makedirs(cfg.pins_dir)
        for n in range(1, rng.randrange(1, 12)):
            name = f"run-u{n}.service"
            kind = rng.choice(["free", "record", "pins", "both"])
            if kind in ("record", "both"):
                (root / "state" / "units" / f"{name}.json").write_text("{}")
            if kind in ("pins", "both"):
                os.mkdir(os.path.join(cfg.pins_dir, pin_name(name)))
        (root / "state" / "units" / "web.service.json").write_text("{}")  # not a run unit
        (root / "state" / "units" / ".run-u1.service.99.tmp").write_text("")  # a writer's
        os.mkdir(os.path.join(cfg.pins_dir, "~" + pin_name("run-u1.service") + "-99"))
        assert mgr._free_transient_name() == transient_name(mgr.names()), case
