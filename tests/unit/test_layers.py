"""The front doors keep to the layers the README draws (read from the source, as
``test_import_graph.py`` reads it; imports inside functions count: a deferred import is
still a dependency).

* Front doors (``cli/``, ``daemon/``) talk to the engine: they import ``manager``,
  ``policy`` and ``errors`` (and the leaf helpers ``cgroup``, ``containers``, ``journal``,
  ``jsontext``, ``libc``, ``record``, ``uapi``), never ``bpf/`` or ``datapath/``; what they
  need from below is re-exported by ``manager/`` (``manager.counters``, ``manager.stats``).
* Nothing in ``manager/`` or below imports ``cli/`` or ``daemon/``.

(``bpf/`` importing nothing above it is ``test_import_graph.py``'s.)
"""

from __future__ import annotations

import pytest
from test_import_graph import MODULES, imports

FRONT_DOORS = ("cli", "daemon")
#: What a front door may import of ipacctd: the first component after ``ipacctd.``
#: (``""``: the package itself, for ``__version__``).
FRONT_DOOR_MAY_IMPORT = {
    "", *FRONT_DOORS, "manager", "policy", "errors",
    "cgroup", "containers", "journal", "jsontext", "libc", "record", "uapi",
}  # fmt: skip
BELOW_FRONT_DOORS = ("manager", "datapath", "policy", "bpf")


def part_of(module: str) -> str:
    """``ipacctd.manager.stats`` → ``manager``; ``ipacctd`` → ``""``."""
    return module.split(".")[1] if "." in module else ""


def violations(graph: dict[str, set[str]], parts: tuple[str, ...], allowed: set[str]) -> list[str]:
    """``module imports dependency`` for every module of ``parts`` importing outside
    ``allowed``."""
    return sorted(
        f"{m} imports {dep}"
        for m, deps in graph.items()
        if part_of(m) in parts
        for dep in deps
        if part_of(dep) not in allowed
    )


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {m: imports(m, deferred=True) for m in MODULES}


def test_front_doors_import_only_the_manager_policy_errors_and_leaves(graph) -> None:
    assert {part_of(m) for m in graph} >= {*FRONT_DOORS, *BELOW_FRONT_DOORS}
    assert violations(graph, FRONT_DOORS, FRONT_DOOR_MAY_IMPORT) == []


def test_nothing_below_the_front_doors_imports_them(graph) -> None:
    everything = {part_of(m) for m in graph}
    assert violations(graph, BELOW_FRONT_DOORS, everything - set(FRONT_DOORS)) == []


def test_the_rule_flags_a_front_door_reaching_below_the_manager() -> None:
    graph = {
        "ipacctd.cli.top": {"ipacctd.bpf.links", "ipacctd.manager.stats", "ipacctd"},
        "ipacctd.daemon.metrics": {"ipacctd.datapath.unit", "ipacctd.cgroup"},
        "ipacctd.manager.engine": {"ipacctd.bpf.links", "ipacctd.daemon.bus"},
    }
    assert violations(graph, FRONT_DOORS, FRONT_DOOR_MAY_IMPORT) == [
        "ipacctd.cli.top imports ipacctd.bpf.links",
        "ipacctd.daemon.metrics imports ipacctd.datapath.unit",
    ]
    assert violations(graph, BELOW_FRONT_DOORS, {"bpf", "manager"}) == [
        "ipacctd.manager.engine imports ipacctd.daemon.bus"
    ]
