"""The parts a glob's binding of thousands of cgroups is made of, without a kernel:
the binder's listing of a glob's cgroups (as ``glob.glob`` matched them before, at the cost
of a directory listing), the store's batched durability, and the state directory's
change queue the engine reads between batches."""

from __future__ import annotations

import fnmatch
import glob
import os
from pathlib import Path

import pytest
from support import temp_store

from ipacctd.daemon.binder import glob_cgroups
from ipacctd.manager import store as store_mod
from ipacctd.manager.dirwatch import DirChanges
from ipacctd.policy.unitfile import cgroup_leads_to, cgroup_matches

TREE = [
    "a/x.scope",
    "a/y.scope",
    "a/.hidden.scope",
    "a/sub/x.scope",
    "b/x.scope",
    "b/z.service",
    "c/gb-1.scope",
    "c/gb-22.scope",
    "c/gb-3.service",
    "c/gb-[x].scope",
    ".dot/x.scope",
]


def _cgroup_tree(root: Path) -> str:
    """A directory tree shaped like cgroup2: every directory holds a ``cgroup.procs``."""
    for rel in TREE:
        (root / rel).mkdir(parents=True, exist_ok=True)
    for d, _, _ in os.walk(root):
        Path(d, "cgroup.procs").write_text("")
    (root / "a" / "file.scope").write_text("")  # a file matching a glob: not a cgroup
    return str(root)


def _as_before(mount: str, pattern: str) -> list[str]:
    """What the binder listed before: glob.glob, cgroups only, relative, fnmatch'ed."""
    out = []
    for fs in sorted(glob.glob(os.path.join(mount, pattern.lstrip("/")))):
        if not os.path.isfile(os.path.join(fs, "cgroup.procs")):
            continue
        rel = fs[len(mount.rstrip("/")) :] or "/"
        if fnmatch.fnmatchcase(rel, pattern):
            out.append(rel)
    return out


PATTERNS = [
    "/a/*",
    "/a/*.scope",
    "/*/x.scope",
    "/*/*",
    "/a/*/x.scope",
    "/c/gb-?.scope",
    "/c/gb-*.scope",
    "/c/gb-[12]*",
    "/c/gb-[[]x].scope",
    "/a/.h*",
    "/.*/x.scope",
    "/missing/*",
    "/a/sub/*",
    "/*/sub",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_glob_cgroups_lists_what_glob_matched(tmp_path: Path, pattern: str) -> None:
    mount = _cgroup_tree(tmp_path)
    ids: dict[str, int] = {}
    got = glob_cgroups(mount, pattern, ids)
    assert got == _as_before(mount, pattern)
    assert set(ids) <= set(got)
    for rel in ids:  # a listed cgroup's id is its directory's inode, as stat gives it
        assert ids[rel] == os.stat(mount + rel).st_ino


def _cgroups(mount: str) -> list[str]:
    return sorted(d[len(mount.rstrip("/")):] or "/" for d, _, files in os.walk(mount)
                  if "cgroup.procs" in files)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_cgroup_matches_by_its_path_as_the_listing_found_it(tmp_path: Path,
                                                             pattern: str) -> None:
    """The daemon's pass over the cgroups just made and the OCI hook match a cgroup by its
    path alone: they agree with the listing on every cgroup of the tree, and a cgroup with
    matches below it is known as such (its level is then watched and listed)."""
    mount = _cgroup_tree(tmp_path)
    listed = glob_cgroups(mount, pattern)
    everything = _cgroups(mount)
    assert [rel for rel in everything if cgroup_matches(pattern, rel)] == listed
    for rel in everything:
        below = [m for m in listed if m.startswith(rel.rstrip("/") + "/")]
        if below:
            assert cgroup_leads_to(pattern, rel), (rel, below)
        if cgroup_leads_to(pattern, rel):
            assert rel not in listed


def test_a_dot_name_is_matched_only_by_a_dot_component() -> None:
    assert not cgroup_matches("/a/*", "/a/.hidden.scope")
    assert cgroup_matches("/a/.h*", "/a/.hidden.scope")
    assert not cgroup_leads_to("/*/x.scope", "/.dot")
    assert cgroup_leads_to("/.*/x.scope", "/.dot")
    assert not cgroup_leads_to("/a/*", "/a/x")  # a match itself: nothing below it


def test_glob_cgroups_of_a_glob_with_matches_is_not_empty(tmp_path: Path) -> None:
    mount = _cgroup_tree(tmp_path)
    assert glob_cgroups(mount, "/c/gb-*.scope") == [
        "/c/gb-1.scope",
        "/c/gb-22.scope",
        "/c/gb-[x].scope",
    ]


def test_store_batch_syncs_once_at_its_end(tmp_path: Path, monkeypatch) -> None:
    """Inside a batch no record is fsynced; one syncfs at the end covers them (also when
    the block raises); a write that is not durable asks for none; outside, fsync as ever."""
    s = temp_store(tmp_path)
    calls: list[str] = []
    real_fsync, real_syncfs = os.fsync, store_mod._syncfs
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        store_mod, "_syncfs", lambda fd: (calls.append("syncfs"), real_syncfs(fd))[1]
    )
    with s.batch():
        for i in range(5):
            s.write(f"u{i}", {"name": f"u{i}.service"})
        assert calls == []
        assert s.read("u3")["name"] == "u3.service"  # visible before the sync
    assert calls == ["syncfs"]
    calls.clear()
    with s.batch():
        s.write("t", {"name": "t.service"}, durable=False)
    assert calls == []
    with pytest.raises(RuntimeError), s.batch():
        s.write("v", {"name": "v.service"})
        raise RuntimeError("boom")
    assert calls == ["syncfs"]
    calls.clear()
    s.write("w", {"name": "w.service"})
    assert calls == ["fsync"]


def test_dir_changes_names_what_changed_and_gives_up_when_the_dir_goes(tmp_path: Path) -> None:
    d = tmp_path / "units"
    d.mkdir()
    (d / "old.json").write_text("{}")
    changes = DirChanges(str(d))
    try:
        assert changes.take() == set()
        (d / ".new.1.tmp").write_text("{}")
        os.rename(d / ".new.1.tmp", d / "new.json")
        os.unlink(d / "old.json")
        assert changes.take() == {".new.1.tmp", "new.json", "old.json"}
        assert changes.take() == set()
        (d / "new.json").unlink()
        d.rmdir()
        assert changes.take() is None  # the directory is gone: nothing is known
    finally:
        changes.close()


def test_a_reader_seeing_a_unit_re_made_for_another_cgroup_frees_the_old_one(
    tmp_path: Path,
) -> None:
    """The status reader tells the engine's cgroup-owner cache what it read (so the daemon's
    first binding pass parses no file twice); when a unit's name was re-made for another
    cgroup, the cgroup it left must not stay "bound" — the binder would never bind it."""
    from ipacctd.manager.engine import Manager
    from ipacctd.manager.unit import Unit

    mgr = Manager(temp_store(tmp_path).config)

    def write(cg: str) -> tuple[int, int, int]:
        mgr.store.write("a.service", Unit("a.service", cg, transient=False).to_json())
        st = os.stat(mgr.store.meta_path("a.service"))
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    write("/x/one")
    assert mgr._cgroup_owners() == {"/x/one": "a.service"}
    key = write("/x/two")
    mgr.remember_owner("a.service", key, "/x/two")  # as StatusReader does when it reads it
    assert mgr._cgroup_owners() == {"/x/two": "a.service"}


def test_is_glob_is_glob_chars() -> None:
    """is_glob spells GLOB_CHARS out (for speed): the two must stay the same set."""
    import string

    from ipacctd.policy.names import GLOB_CHARS, is_glob

    for c in string.printable:
        assert is_glob(f"web{c}x.service") == (c in GLOB_CHARS), repr(c)
    assert not is_glob("") and is_glob("[ab]")


def test_store_batch_tells_which_files_it_wrote(tmp_path: Path) -> None:
    """After a batch, :attr:`Store.written` holds the key (inode, size, mtime) of each
    durable record it wrote, as a stat of the file in place gives it (the rename keeps it);
    a later write of the file gives another key; a record not durable is not listed; the
    keys are set when the batch ends, and a new batch starts from none."""
    s = temp_store(tmp_path)
    with s.batch():
        s.write("a", {"name": "a.service"})
        s.write("b", {"name": "b.service", "x": 1})
        s.write("t", {"name": "t.service"}, durable=False)
        assert s.written == {}
    path = s.meta_path

    def key(unit: str) -> tuple[int, int, int]:
        st = os.stat(path(unit))
        return st.st_ino, st.st_size, st.st_mtime_ns

    assert s.written == {"a.service": key("a"), "b.service": key("b")}
    old = s.written["a.service"]
    s.write("a", {"name": "a.service", "y": 2})  # outside a batch: fsynced, not listed
    assert key("a") != old and s.written["a.service"] == old
    with s.batch():
        s.write("c", {"name": "c.service"})
    assert s.written == {"c.service": key("c")}
