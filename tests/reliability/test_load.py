"""Load: concurrent ``ipacctd run`` and many units created and removed while the daemon
serves scrapes and D-Bus calls: no error, no corrupted state, nothing leaked (the kernel
objects this installation made are all gone, no link stays on its cgroups)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest
from e2e_helpers import REPO, Installation
from rel import (
    alive,
    bpf_fds,
    cgroup_id,
    count,
    fd_count,
    kernel_ids,
    links_on,
    merge,
    report,
    unit_objects,
)
from support import wait_for

pytestmark = pytest.mark.kernel

D = "198.51.100.2"


class Background:
    """Scrapes /metrics, calls ListUnits/GetCounters and re-reads every metadata file in a
    loop (bounded), counting what went wrong."""

    def __init__(self, denv) -> None:
        self.denv = denv
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.counts = {"scrapes": 0, "calls": 0, "reads": 0}
        self.threads = [
            threading.Thread(target=f, daemon=True) for f in (self._scrape, self._dbus, self._files)
        ]

    def __enter__(self) -> Background:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def _loop(self, body, key: str) -> None:
        deadline = time.monotonic() + 600
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                body()
                self.counts[key] += 1
            except Exception as exc:
                self.errors.append(f"{key}: {exc!r}")
            time.sleep(0.01)

    def _scrape(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        self._loop(lambda: list(text_string_to_metric_families(self.denv.scrape_text())), "scrapes")

    def _dbus(self) -> None:
        client = self.denv.new_client()

        def body() -> None:
            client.manager("ListUnits")
            client.manager("GetCounters")

        self._loop(body, "calls")

    def _files(self) -> None:
        units = os.path.join(self.denv.inst.state_dir, "units")

        def body() -> None:
            for n in os.listdir(units):
                if n.endswith(".json") and not n.startswith("."):
                    try:
                        with open(os.path.join(units, n)) as f:
                            data = json.load(f)  # never a torn file
                    except FileNotFoundError:
                        continue
                    assert data["name"] + ".json" == n

        self._loop(body, "reads")


def test_concurrent_runs_and_many_units(denv) -> None:
    from dbus_fast import Variant

    runs, units = count(20, 50), count(200, 1000)
    inst: Installation = denv.inst
    before = kernel_ids()
    denv.start()
    pid = denv.proc.pid
    ours: dict[str, set[int]] = {}
    cgroups: set[int] = set()
    mgr = inst.manager()
    fds0 = fd_count(pid)
    t0 = time.monotonic()
    with Background(denv) as bg:
        # 1. concurrent runs (through the daemon: the CLI sees it and uses D-Bus)
        procs = [
            subprocess.Popen(
                inst.argv(
                    "run",
                    "--unit",
                    f"ld{i}",
                    "-p",
                    f"IPAddressDeny={D}",
                    "--",
                    "sh",
                    "-c",
                    "sleep 0.5",
                ),
                env=inst.env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for i in range(runs)
        ]
        wait_for(lambda: len(inst.unit_names()) == runs, 60, "every run's unit")
        for name in inst.unit_names():
            merge(ours, unit_objects(mgr.store.pin_dir(name)))
            fs = os.path.join(inst.root_fs, name)
            if os.path.isdir(fs):
                cgroups.add(cgroup_id(fs))
        for p in procs:
            _out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
        for name in inst.unit_names():
            inst.ok("reset", name)
        # 2. many units created and removed: half over D-Bus, half by the engine directly
        client = denv.new_client()
        deny = [["IPAddressDeny", Variant("a(iayu)", [[2, bytes([198, 51, 100, 2]), 32]])]]
        failures: list[str] = []

        def direct() -> None:
            for i in range(units // 2):
                try:
                    u = mgr.start_transient([("IPAddressDeny", D)], name=f"lde{i}")
                    merge(ours, unit_objects(mgr.store.pin_dir(u.name)))
                    cgroups.add(cgroup_id(mgr.cgroup_fs(u)))
                    mgr.reset(u.name)
                except Exception as exc:
                    failures.append(repr(exc))

        t = threading.Thread(target=direct)
        t.start()
        for i in range(units - units // 2):
            name = f"ldb{i}.service"
            try:
                client.manager("StartTransientUnit", "sa(sv)", name, deny)
                merge(ours, unit_objects(mgr.store.pin_dir(name)))
                cgroups.add(cgroup_id(os.path.join(inst.root_fs, name)))
                client.manager("ResetUnit", "s", name)
            except Exception as exc:
                failures.append(repr(exc))
        t.join(timeout=600)
        time.sleep(0.3)
    elapsed = time.monotonic() - t0
    assert not failures, failures[:5]
    assert not bg.errors, bg.errors[:5]
    assert min(bg.counts.values()) > 0, bg.counts
    wait_for(lambda: not denv.client.units(), 10, "the daemon to see every unit go")
    assert inst.unit_names() == [] and inst.pin_dirs() == [] and inst.unit_cgroups() == []
    assert ours["prog"] and ours["map"] and ours["link"]
    left = alive(ours)
    assert not any(left.values()), left
    assert not links_on(cgroups)
    time.sleep(0.5)
    held = [k for k in bpf_fds(pid) if "map" in k or "link" in k]
    assert not held, held
    assert fd_count(pid) <= fds0 + 1
    after = kernel_ids()
    new_alive = {k: len(after[k] - before[k]) for k in after}
    report(
        "load",
        runs=runs + units,
        units_created=runs + units,
        objects_tracked=sum(len(v) for v in ours.values()),
        leaks_found=sum(len(v) for v in left.values()),
        other_new_kernel_objects=new_alive,
        **bg.counts,
        seconds=round(elapsed, 1),
    )
