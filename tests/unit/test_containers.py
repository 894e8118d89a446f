"""Container identity and unit names (pure Python: no kernel, no podman)."""

from __future__ import annotations

import pytest

from ipacctd import containers
from ipacctd.containers import ContainerInfo, conmon_argv_name, from_cgroup, from_state
from ipacctd.errors import InvalidInput, NotFound
from ipacctd.manager.config import Config
from ipacctd.manager.engine import Manager
from ipacctd.manager.unit import Unit
from ipacctd.policy.unitfile import cgroup_matches, parse_unit_file

CID = "5522d0d1ae87" + "0123456789abcdef" * 3 + "0123"
assert len(CID) == 64


@pytest.mark.parametrize(
    ("rel", "engine"),
    [
        (f"/libpod_parent/libpod-{CID}", "podman"),
        (f"/machine.slice/libpod-{CID}.scope", "podman"),
        (f"/system.slice/docker-{CID}.scope", "docker"),
        (f"/docker/{CID}", "docker"),
        (f"/kubepods.slice/kubepods-pod1.slice/crio-{CID}.scope", "crio"),
        (f"/k8s.io/cri-containerd-{CID}.scope", "containerd"),
        (f"/somewhere/{CID}", "container"),
    ],
)
def test_container_cgroups_are_recognised(rel: str, engine: str) -> None:
    assert from_cgroup(rel) == ContainerInfo(engine, CID)


@pytest.mark.parametrize(
    "rel",
    [
        "/",
        "/system.slice/nginx.service",
        f"/libpod_parent/libpod-{CID[:-1]}",  # 63 hex digits
        f"/libpod_parent/libpod-{CID.upper()}",
        f"/libpod_parent/conmon-{CID}",
        f"/libpod_parent/libpod-{CID}/sub",
    ],
)
def test_other_cgroups_are_not_containers(rel: str) -> None:
    assert from_cgroup(rel) is None


def test_unit_names() -> None:
    assert ContainerInfo("podman", CID, "web").unit_name() == "podman-web-5522d0d1ae87.service"
    assert ContainerInfo("docker", CID).unit_name() == "docker-5522d0d1ae87.service"
    # Characters a unit name cannot hold become "_"; "@" would make it a template instance.
    odd = ContainerInfo("podman", CID, "a@b c/d\\e").unit_name()
    assert odd == "podman-a_b_c_d_e-5522d0d1ae87.service"
    # Long names are cut, the short id always kept.
    long = ContainerInfo("crio", CID, "x" * 500).unit_name()
    assert long.endswith("-5522d0d1ae87.service") and len(long) < 200
    assert ContainerInfo("podman", CID, "...").unit_name() == "podman-_-5522d0d1ae87.service"


def test_json_round_trip_and_old_metadata() -> None:
    info = ContainerInfo("crio", CID, "web", "frontend-1")
    assert ContainerInfo.from_json(info.to_json()) == info
    assert ContainerInfo.from_json(None) is None
    unit = Unit("x.service", "/a", container=info)
    assert Unit.from_json(unit.to_json()).container == info
    old = unit.to_json()
    del old["container"]  # metadata written before containers were known
    assert Unit.from_json(old).container is None


def test_names_from_annotations() -> None:
    rel = f"/kubepods/crio-{CID}.scope"
    state = {
        "id": CID,
        "pid": 1,
        "annotations": {
            "io.kubernetes.container.name": "web",
            "io.kubernetes.pod.name": "frontend-1",
        },
    }
    assert from_state(state, rel) == ContainerInfo("crio", CID, "web", "frontend-1")
    # The user's own annotation wins.
    state["annotations"]["org.ipacctd.container.name"] = "mine"
    assert from_state(state, rel).name == "mine"
    # No annotations, not podman: only the id.
    assert from_state({"id": CID, "pid": 1}, f"/docker/{CID}") == ContainerInfo("docker", CID)


def test_state_of_a_runtime_whose_id_is_not_in_the_cgroup() -> None:
    state = {"id": "myctr", "pid": 1, "annotations": {"io.container.manager": "libpod"}}
    info = from_state(state, "/custom/parent")
    assert (info.engine, info.id) == ("podman", "myctr")


def test_conmon_command_lines() -> None:
    argv = ["/usr/bin/conmon", "--api-version", "1", "-c", CID, "-u", CID, "-n", "web"]
    assert conmon_argv_name(argv, CID) == "web"
    assert conmon_argv_name(argv, "f" * 64) is None  # another container's conmon
    assert conmon_argv_name(["/usr/bin/conmon", "-c", CID], CID) == ""  # no name
    assert conmon_argv_name(["/usr/bin/sleep", "-c", CID, "-n", "web"], CID) is None
    assert conmon_argv_name(["conmon", f"--cid={CID}", "--name=db"], CID) == "db"


def test_conmon_lookup_finds_nothing_for_an_unknown_container() -> None:
    assert containers.conmon_name("e" * 64) is None


def test_cgroup_patterns() -> None:
    assert cgroup_matches("/libpod_parent/libpod-*", f"/libpod_parent/libpod-{CID}")
    assert not cgroup_matches("/libpod_parent/libpod-*", f"/libpod_parent/x/libpod-{CID}")
    assert not cgroup_matches("/libpod_parent/*", "/libpod_parent/a/b")  # * stays in one level
    assert cgroup_matches("/*/docker-*.scope", f"/system.slice/docker-{CID}.scope")
    assert cgroup_matches("/a/b", "/a/b") and not cgroup_matches("/a/b", "/a/b/c")
    assert not cgroup_matches("/a/[bc]", "/a/d") and cgroup_matches("/a/[bc]", "/a/c")


def test_unit_names_of_unit_file_matches() -> None:
    glob = parse_unit_file("[Match]\nControlGroup=/libpod_parent/libpod-*\n", "/u/ctr.unit")
    rel = f"/libpod_parent/libpod-{CID}"
    assert glob.matches(rel) == "/libpod_parent/libpod-*"
    assert glob.matches("/system.slice/a.service") is None
    info = ContainerInfo("podman", CID, "web")
    assert glob.unit_name_for(glob.cgroups[0], rel, info) == "podman-web-5522d0d1ae87.service"
    assert glob.unit_name_for(glob.cgroups[0], "/libpod_parent/x") == "ctr@x.service"
    exact = parse_unit_file(f"[Match]\nControlGroup={rel}\n", "/u/one.unit")
    assert exact.unit_name_for(rel, rel, info) == "one.service"  # the file's own name


def _manager(tmp_path) -> Manager:
    return Manager(
        Config(
            state_dir=str(tmp_path / "state"),
            bpf_dir=str(tmp_path / "bpf"),
            cgroup_root="/ipacctd-unit-test",
            unit_dir=str(tmp_path / "units"),
        )
    )


def test_resolve_by_container_name_and_short_id(tmp_path) -> None:
    mgr = _manager(tmp_path)
    web = ContainerInfo("podman", CID, "web")
    db = ContainerInfo("podman", "a" * 64, "db")
    for info in (web, db):
        unit = Unit(info.unit_name(), f"/libpod_parent/libpod-{info.id}", container=info)
        mgr.store.write(unit.name, unit.to_json())
    assert mgr.resolve("web") == "podman-web-5522d0d1ae87.service"
    assert mgr.resolve("5522d0d1ae87") == "podman-web-5522d0d1ae87.service"
    assert mgr.resolve(CID) == "podman-web-5522d0d1ae87.service"
    assert mgr.resolve("aaaa") == "podman-db-aaaaaaaaaaaa.service"
    assert mgr.resolve("podman-db-aaaaaaaaaaaa") == "podman-db-aaaaaaaaaaaa.service"
    with pytest.raises(NotFound):
        mgr.resolve("aaa")  # too short to be an id prefix
    with pytest.raises(NotFound):
        mgr.resolve("nginx")
    with pytest.raises(InvalidInput):
        mgr.resolve("a/b")


def test_resolve_refuses_an_ambiguous_name(tmp_path, monkeypatch) -> None:
    mgr = _manager(tmp_path)
    for cid in ("b" * 64, "c" * 64):  # the name "web" reused by a second container
        info = ContainerInfo("podman", cid, "web")
        unit = Unit(info.unit_name(), f"/libpod_parent/libpod-{cid}", container=info)
        mgr.store.write(unit.name, unit.to_json())

    class St:
        def __init__(self, state: str) -> None:
            self.active_state = state

    live = {"podman-web-cccccccccccc.service"}
    monkeypatch.setattr(mgr, "status", lambda n: St("active" if n in live else "inactive"))
    assert mgr.resolve("web") == "podman-web-cccccccccccc.service"  # the running one
    live.clear()
    with pytest.raises(InvalidInput, match="several container units"):
        mgr.resolve("web")


def test_merge_order_of_overlapping_files() -> None:
    from ipacctd.policy.unitfile import merge_order, merged_properties

    rel = f"/libpod_parent/libpod-{CID}"
    b = parse_unit_file(
        "[Match]\nControlGroup=/libpod_parent/*\n[Service]\nIPAddressDeny=1.1.1.1\n", "/u/b.unit"
    )
    a = parse_unit_file(
        f"[Match]\nControlGroup={rel}\n[Service]\nIPAddressDeny=\nIPAddressDeny=2.2.2.2\n",
        "/u/a.unit",
    )
    c = parse_unit_file(
        "[Match]\nControlGroup=/libpod_parent/libpod-*\n[Service]\nIPAddressDeny=3.3.3.3\n",
        "/u/c.unit",
    )
    files, (last, pattern) = merge_order([(a, rel), (c, c.cgroups[0]), (b, b.cgroups[0])])
    # Globs first (by file name), then exact paths: the exact file's reset comes last.
    assert [f.path for f in files] == ["/u/b.unit", "/u/c.unit", "/u/a.unit"]
    assert (last, pattern) == (a, rel)
    assert [str(n) for n in merged_properties(files).ip_address_deny] == ["2.2.2.2/32"]
