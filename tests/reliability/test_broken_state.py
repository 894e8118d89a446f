"""Corrupt or foreign state never stops the tool (issue 10 item 3).

One corrupt metadata file (``{"name": ``), a metadata file deleted by hand (its pins left
behind) and an unknown property in old metadata: every view works and reports the broken
unit with its cause, the daemon starts, ``reset`` removes what is left of the broken unit
(pins included), and the unknown property is kept, ignored and warned about once.
(Before: a JSONDecodeError traceback from list-units, status, show and reset; the daemon
did not start; an unknown property broke list-units; a deleted file orphaned its pins.)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from e2e_helpers import Installation
from rel import report

pytestmark = pytest.mark.kernel


def _meta(inst: Installation, name: str) -> str:
    return os.path.join(inst.state_dir, "units", f"{name}.service.json")


def test_corrupt_and_missing_metadata(denv) -> None:
    inst: Installation = denv.inst
    direct = {"IPACCTD_NO_DAEMON": "1"}
    for name in ("good", "corrupt", "orphan", "old"):
        inst.ok("run", "--unit", name, "-p", "IPAddressDeny=198.51.100.9", "--", "true", env=direct)
    with open(_meta(inst, "corrupt"), "w") as f:
        f.write('{"name": ')
    os.unlink(_meta(inst, "orphan"))  # by hand: its pins stay
    data = json.loads(Path(_meta(inst, "old")).read_text())
    data["properties"]["IPFutureSetting"] = "yes"
    with open(_meta(inst, "old"), "w") as f:
        json.dump(data, f)
    pins = inst.pin_dirs()
    assert any("orphan" in p for p in pins) and any("corrupt" in p for p in pins)

    # every view works, the broken units are listed with their cause
    res = inst.cli("list-units", "--all", "--json")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert set(rows) == {"good.service", "corrupt.service", "orphan.service", "old.service"}
    assert "not valid JSON" in rows["corrupt.service"]["broken"]
    assert "pins without metadata" in rows["orphan.service"]["broken"]
    assert rows["good.service"]["broken"] is None and rows["old.service"]["broken"] is None
    assert not rows["corrupt.service"]["enforced"]
    # one warning for the unknown property per process, not one per unit read
    assert res.stderr.count("IPFutureSetting") == 1, res.stderr
    res = inst.cli("status", "corrupt")
    assert res.returncode == 3 and "Traceback" not in res.stderr, res.stderr
    assert "Loaded: error (broken: metadata" in res.stdout and "NOT ENFORCED" in res.stdout
    res = inst.cli("status")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    show = inst.show("corrupt")
    assert show["LoadState"] == "error"
    assert inst.show("old")["IPAddressDeny"] == "198.51.100.9/32"

    # the daemon starts, serves the sound units and warns once about the unknown property
    denv.start()
    c = denv.client
    assert set(c.units()) == set(rows)
    assert c.props("corrupt.service")["LoadState"] == "error"
    time.sleep(1.5)  # several polls (0.2 s)
    log = denv.log()
    assert "Traceback" not in log, log[-3000:]
    assert log.count("IPFutureSetting") == 1, log

    # a write keeps the unknown property (another version's) untouched
    inst.manager().record_exit("old.service", 0)
    kept = json.loads(Path(_meta(inst, "old")).read_text())["properties"]
    assert kept["IPFutureSetting"] == "yes"

    # reset removes what is left of the broken units: pins, metadata, cgroup
    for name in ("corrupt", "orphan"):
        res = inst.cli("reset", name)
        assert res.returncode == 0, res.stderr
    assert inst.unit_names() == ["good.service", "old.service"]
    assert not any("corrupt" in p or "orphan" in p for p in inst.pin_dirs())
    assert not os.path.exists(_meta(inst, "corrupt"))
    # and the name is usable again
    inst.ok("run", "--unit", "corrupt", "--", "true")
    inst.ok("reset", "corrupt")
    report(
        "broken_state", inputs_tried=3, broken_units=2, warnings=1, leaks_found=0, objects_tracked=2
    )


def test_broken_name_is_not_reused_silently(inst: Installation) -> None:
    """``run`` on a broken unit's name is refused with the way out, not a traceback."""
    inst.ok("run", "--unit", "brk", "--", "true")
    os.unlink(_meta(inst, "brk"))
    res = inst.cli("run", "--unit", "brk", "--", "true")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "reset it first" in res.stderr, res.stderr
    inst.ok("reset", "brk")
    assert inst.pin_dirs() == []
