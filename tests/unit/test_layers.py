"""The layers the README draws, kept: every ``import`` of the package, read from its source.

* Front doors (``cli/``, ``daemon/``) talk to the engine: they import ``manager``,
  ``policy`` and ``errors`` (and the host helpers ``cgroup``, ``containers``, ``journal``),
  never ``bpf/`` or ``datapath/``; what they need from below is re-exported by ``manager/``
  (``manager.counters``, ``manager.stats``).
* Nothing in ``manager/`` or below imports ``cli/`` or ``daemon/``.
* ``bpf/`` imports nothing of ipacctd's above it (only itself and ``errors``).

Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ipacctd

PACKAGE = Path(ipacctd.__file__).resolve().parent

#: What each part may import of ipacctd (the first component after ``ipacctd.``; ``""`` is
#: the package itself, for ``__version__``).
HOST_HELPERS = {"cgroup", "containers", "journal"}
FRONT_DOOR = {"", "cli", "daemon", "manager", "policy", "errors", *HOST_HELPERS}
ALLOWED = {
    "cli": FRONT_DOOR,
    "daemon": FRONT_DOOR,
    "bpf": {"bpf", "errors"},
}
BELOW_FRONT_DOORS = ("manager", "datapath", "policy", "bpf")


def ipacctd_imports(source: str, module: str) -> list[tuple[int, str]]:
    """(line, imported module or ``ipacctd.<name>``) of every import of ipacctd in ``source``.

    ``module`` is the dotted name of the file (for relative imports); ``from ipacctd import
    x`` yields ``ipacctd.x`` unless ``x`` is ``__version__``.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: -node.level]
                base = ".".join([*parts, base] if base else parts)
            if base == "ipacctd":
                found += [
                    (node.lineno, "ipacctd" if a.name == "__version__" else f"ipacctd.{a.name}")
                    for a in node.names
                ]
            else:
                found.append((node.lineno, base))
    return [
        (line, name) for line, name in found if name == "ipacctd" or name.startswith("ipacctd.")
    ]


def part_of(name: str) -> str:
    """``ipacctd.manager.stats`` → ``manager``; ``ipacctd`` → ``""``."""
    return name.split(".")[1] if "." in name else ""


def modules(part: str) -> list[tuple[str, Path]]:
    return [
        (".".join(("ipacctd", *p.relative_to(PACKAGE).with_suffix("").parts)), p)
        for p in sorted((PACKAGE / part).rglob("*.py"))
    ]


def violations(part: str, allowed: set[str]) -> list[str]:
    bad = []
    for module, path in modules(part):
        for line, name in ipacctd_imports(path.read_text(), module):
            if part_of(name) not in allowed:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {name}")
    return bad


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_part_imports_only_what_its_layer_may(part: str) -> None:
    assert modules(part), f"no modules under ipacctd/{part}"
    assert violations(part, ALLOWED[part]) == []


@pytest.mark.parametrize("part", BELOW_FRONT_DOORS)
def test_nothing_below_the_front_doors_imports_them(part: str) -> None:
    assert modules(part), f"no modules under ipacctd/{part}"
    everything = {"", *(p.name.removesuffix(".py") for p in PACKAGE.iterdir())}
    assert violations(part, everything - {"cli", "daemon"}) == []


def test_the_check_sees_every_form_of_import() -> None:
    src = (
        "import ipacctd.bpf.maps\n"
        "from ipacctd.datapath.unit import LINK\n"
        "from ipacctd import __version__, cgroup\n"
        "def f():\n"
        "    from ..bpf import stats\n"
        "    from . import remote\n"
    )
    found = sorted(ipacctd_imports(src, "ipacctd.cli.top"))
    assert found == [
        (1, "ipacctd.bpf.maps"),
        (2, "ipacctd.datapath.unit"),
        (3, "ipacctd"),
        (3, "ipacctd.cgroup"),
        (5, "ipacctd.bpf"),
        (6, "ipacctd.cli"),
    ]
    assert [part_of(n) for _, n in found if part_of(n) not in FRONT_DOOR] == [
        "bpf",
        "datapath",
        "bpf",
    ]
