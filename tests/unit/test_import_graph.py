"""The package's import graph, read from the source (no import, no root): no cycles, and the
BPF layer imports nothing of ipacctd above it.

Module level means what runs when a module is imported: imports at the top and inside
top-level ``if``/``try`` blocks, but not inside functions (a deferred import is how a module
keeps a dependency off the start-up path) nor under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "ipacctd"

# What the BPF layer may import of ipacctd besides itself: the shared exception hierarchy,
# the C library handle, the kernel structs and the value-class base (the last three are
# leaves).
BPF_MAY_IMPORT = {
    "ipacctd", "ipacctd.errors", "ipacctd.libc", "ipacctd.uapi", "ipacctd.record", "ipacctd.enums"
}
# Leaves: modules that import nothing of ipacctd (but ipacctd.enums, which imports nothing),
# so that anything may import them.
LEAVES = ("ipacctd.bpf.types", "ipacctd.libc", "ipacctd.uapi", "ipacctd.record", "ipacctd.enums")


def _modules() -> dict[str, str]:
    """Module name → source path of every module of the package."""
    mods = {}
    for dirpath, _, files in os.walk(os.path.join(REPO, PACKAGE)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                mods[name.removesuffix(".__init__")] = path
    return mods


MODULES = _modules()


def _is_type_checking(node: ast.stmt) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(body: Iterable[ast.stmt], deferred: bool) -> Iterable[ast.stmt]:
    """The import statements that run at import time (and inside functions if ``deferred``)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                yield from _statements(node.body + node.orelse, deferred)
        elif isinstance(node, ast.Try):
            handlers = [s for h in node.handlers for s in h.body]
            yield from _statements(node.body + handlers + node.orelse + node.finalbody, deferred)
        elif isinstance(node, ast.With):
            yield from _statements(node.body, deferred)
        elif deferred and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield from _statements(ast.walk(node), deferred=False)  # every nested statement


def _resolve(name: str) -> str | None:
    """The package module an imported dotted name belongs to (None: outside the package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, deferred: bool = False) -> set[str]:
    """Modules of the package that ``module`` imports (at import time, or ever if
    ``deferred``). ``from a import b`` counts ``a.b`` when that is a module, else ``a``."""
    with open(MODULES[module]) as f:
        tree = ast.parse(f.read())
    out = set()
    is_package = MODULES[module].endswith("__init__.py")
    for node in _statements(tree.body, deferred):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        for target in targets:
            resolved = _resolve(target)
            if resolved is not None and resolved != module:
                out.add(resolved)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_reader_sees_module_level_and_deferred_imports() -> None:
    # bpf.maps imports bpf.syscall at the top and bpf.info only inside functions.
    assert "ipacctd.bpf.syscall" in imports("ipacctd.bpf.maps")
    assert "ipacctd.bpf.info" not in imports("ipacctd.bpf.maps")
    assert "ipacctd.bpf.info" in imports("ipacctd.bpf.maps", deferred=True)


def test_no_import_cycle_in_the_package() -> None:
    graph = {m: imports(m) for m in MODULES}
    assert cycles(graph) == []


def test_no_import_cycle_in_the_bpf_layer_even_deferred() -> None:
    graph = {m: imports(m, deferred=True) for m in MODULES if m.startswith("ipacctd.bpf")}
    assert cycles(graph) == []


def test_the_bpf_layer_imports_nothing_above_it() -> None:
    above = {(m, dep) for m in MODULES if m.startswith("ipacctd.bpf")
             for dep in imports(m, deferred=True)
             if not dep.startswith("ipacctd.bpf") and dep not in BPF_MAY_IMPORT}
    assert above == set()


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_nothing_of_the_package(leaf: str) -> None:
    allowed = {"ipacctd"} if leaf == "ipacctd.enums" else {"ipacctd", "ipacctd.enums"}
    assert imports(leaf, deferred=True) - allowed == set()
