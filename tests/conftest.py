"""Shared fixtures. Kernel tests need root, cgroup v2, bpffs and BPF.

Elsewhere they skip with the reason; under CI a missing prerequisite is an error and no test
may skip, so CI cannot pass with kernel tests skipped. "Under CI" is ``IPACCTD_REQUIRE_KERNEL=1``
or ``CI=true``: .ci/run runs the README's test command on a fresh Debian root, which gets
``CI`` from the CI runner (every CI system sets it) and nothing else of its environment.

``tests/host/`` holds tests that drive a whole machine from the outside (a fresh Debian root
made with shared/tools/fresh-debian): they cannot run inside that root, so only a run that asks
for them with ``IPACCTD_HOST_TESTS=1`` collects them (.ci/run does, on the host).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

# The helpers several suites share (support.py, daemon_support.py, e2e_helpers.py, model.py,
# netns.py, sdref.py) live in tests/, which pyproject.toml's ``pythonpath = ["tests"]`` puts
# on the import path; a suite's own helpers (reliability/rel.py,
# containers/podman_support.py, ...) sit beside its tests, whose directory pytest puts there
# for them.

_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REQUIRE = os.environ.get("IPACCTD_REQUIRE_KERNEL") == "1" or _CI

collect_ignore = [] if os.environ.get("IPACCTD_HOST_TESTS") == "1" else ["host"]


def _kernel_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        from ipacctd import cgroup
        from ipacctd.bpf import bpffs
        from ipacctd.bpf.maps import probe_map_type
        from ipacctd.bpf.types import MapType

        cgroup.mount_point()
        bpffs.ensure_mounted()
        probe_map_type(MapType.LPM_TRIE)
    except Exception as exc:  # any failure means: no usable BPF here
        return f"no usable BPF/cgroup v2: {exc}"
    return None


_PROBLEM: str | bool | None = False


def kernel_problem() -> str | None:
    """Why kernel tests cannot run here (None when they can); probed once."""
    global _PROBLEM
    if _PROBLEM is False:
        _PROBLEM = _kernel_problem()
    return _PROBLEM  # type: ignore[return-value]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/kernel/" in str(item.fspath) or "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is None:
        return
    problem = kernel_problem()
    if problem is None:
        return
    if REQUIRE:
        pytest.fail(f"kernel test cannot run under IPACCTD_REQUIRE_KERNEL=1: {problem}")
    pytest.skip(problem)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Under CI a skip of any kind (a missing tool, a missing reference file) is a failure."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every test must run: {reason}"


@pytest.fixture
def test_id() -> str:
    """A short unique id for names of cgroups and pins this test makes."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def cgroup_dir(test_id: str) -> Iterator[str]:
    """A fresh cgroup under the cgroup2 mount; removed (processes killed) afterwards."""
    import signal

    from ipacctd import cgroup

    path = os.path.join(cgroup.mount_point(), f"ipacctd-test-{test_id}")
    cgroup.create(path)
    try:
        yield path
    finally:
        cgroup.kill_all(path, signal.SIGKILL)
        cgroup.remove(path)


@pytest.fixture
def pin_root(test_id: str) -> Iterator[str]:
    """A fresh bpffs directory for this test's pins; removed afterwards."""
    from ipacctd.bpf import bpffs

    bpffs.ensure_mounted()
    path = os.path.join(bpffs.DEFAULT_MOUNT, f"ipacctd-test-{test_id}")
    bpffs.make_dir(path)
    try:
        yield path
    finally:
        bpffs.remove_tree(path)


@pytest.fixture
def netns_factory() -> Iterator:
    """Make private network namespaces (test addresses on lo); all closed afterwards."""
    from netns import NetNS

    made: list[NetNS] = []

    def make(addresses: list[str] | tuple[str, ...] = ()) -> NetNS:
        ns = NetNS(addresses)
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.close()


@pytest.fixture
def inst(tmp_path) -> Iterator:
    """One isolated ipacctd installation (:class:`e2e_helpers.Installation`).

    Its state, pins, cgroup root and unit directory are its own
    (``IPACCTD_STATE_DIR=<tmp>/state``, ``IPACCTD_BPF_DIR=/sys/fs/bpf/ipacctd-test-<id>``,
    ``IPACCTD_CGROUP_ROOT=/ipacctd-test-<id>``, ``IPACCTD_UNIT_DIR=<tmp>/units``). Teardown
    ends the processes the test started (by PID, through their namespaces), kills what is
    left in the cgroup root, resets every unit and removes the cgroup root and the bpffs
    directory, also when the test failed.
    """
    from e2e_helpers import Installation

    with Installation(tmp_path) as installation:
        yield installation
