"""Reading counters and state costs what it reads (issue 13 item 5), checked without root
and without a clock.

* The read verbs (``show``, ``status``, ``list-units``, ``is-active``) of root load only
  what a read needs: run in a fresh interpreter, none of the modules listed in
  :data:`NOT_ON_THE_READ_PATH` may be among those loaded — not the D-Bus client (root reads
  the kernel and the metadata directly), not the unit file parser, not the program
  builder (rules, lookup tables, emitter, assembler), not hashlib (no digest is checked,
  for no list is read), not crash recovery or logging.
* They never read a long address list: the store keeps it in a file of its own
  (manager/store.py), and every file the store reads is recorded — the list file is not
  among them, while ``show -p IPAddressDeny`` (which prints the list) does read it, so
  the check can fail.

A unit whose cgroup does not exist is enough for all of that: its status is read from
its metadata and the (absent) kernel state, as root's would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ipacctd.errors import Corrupt
from ipacctd.manager import store as store_mod
from ipacctd.manager.config import Config
from ipacctd.manager.store import INLINE_LIST_BYTES, LIST_GRACE, Store, StoredList
from ipacctd.manager.unit import Unit
from ipacctd.policy.properties import Properties

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Modules the read verbs must not load (as root, no daemon serving the installation).
NOT_ON_THE_READ_PATH = (
    "dbus_fast",
    "asyncio",
    "ipacctd.cli.remote",
    "ipacctd.daemon.contract",
    "ipacctd.policy.unitfile",
    "hashlib",
    "ipacctd.manager.recovery",
    "ipacctd.manager.stats",
    "logging",
    "subprocess",
    "dataclasses",  # and with it inspect: ~5 ms (ipacctd.record's classes stand in)
    "inspect",
    # the program builder: rules, lookup tables, the emitter and its assembler
    "ipacctd.datapath.rules",
    "ipacctd.datapath.lookup",
    "ipacctd.datapath.program",
    "ipacctd.bpf.asm",
    "ipacctd.datapath.denied",
)

#: What ``status`` needs beyond the other views: the denied-addresses log (it shows the
#: most denied addresses), whose module holds the log's part of the programs too.
STATUS_NEEDS = frozenset({"ipacctd.datapath.denied", "ipacctd.bpf.asm"})

#: A long list (about 2,000 prefixes): kept in a file of its own.
LONG = " ".join(f"2001:db8:{i:x}::/48" for i in range(1, 2001))

PROBE = """
import sys
before = set(sys.modules)
import json, os
os.geteuid = lambda: 0  # root's choice of engine (the local one), without root
from ipacctd.manager import config as config_mod
config_mod.DEFAULT_FILE = os.environ.pop("PROBE_NO_CONFIG")  # none of the host's
from ipacctd.manager import store
reads = []
read_file = store._read_file
def recorded(path, *args, **kwargs):
    reads.append(path)
    return read_file(path, *args, **kwargs)
store._read_file = recorded
from ipacctd.cli.main import main
import io, contextlib
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "out": out.getvalue(), "reads": reads,
                  "modules": sorted(set(sys.modules) - before)}))
"""


def make_unit(tmp_path, name: str = "big.service", deny: str = LONG) -> tuple[Config, Unit]:
    config = Config(
        state_dir=str(tmp_path / "state"),
        bpf_dir=str(tmp_path / "pins"),
        cgroup_root="/ipacctd-read-path-test",
        unit_dir=str(tmp_path / "unit-files"),
    )
    props = Properties().apply([("IPAddressDeny", deny), ("Description", "web")])
    unit = Unit(name, f"/ipacctd-read-path-test/{name}", properties=props, transient=False)
    Store(config).write(name, unit.to_json())
    return config, unit


def probe(config: Config, *argv: str) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": REPO,
        "IPACCTD_STATE_DIR": config.state_dir,
        "IPACCTD_BPF_DIR": config.bpf_dir,
        "IPACCTD_CGROUP_ROOT": config.cgroup_root,
        "IPACCTD_UNIT_DIR": config.unit_dir,
        "PROBE_NO_CONFIG": os.path.join(config.state_dir, "no-such.conf"),
    }
    env.pop("IPACCTD_CONFIG", None)
    res = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return {**json.loads(res.stdout), "err": res.stderr}


def list_file(config: Config, name: str = "big.service") -> str:
    directory = Store(config).lists_dir(name)
    (entry,) = os.listdir(directory)
    return os.path.join(directory, entry)


@pytest.mark.parametrize(
    "argv",
    [
        ["show", "big", "-p", "IPEgressBytes", "--value"],
        ["show", "big", "-p", "Description", "-p", "ActiveState"],
        ["status", "big"],
        ["list-units", "--all"],
        ["is-active", "big"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_a_read_loads_no_module_it_does_not_need_and_never_the_list(tmp_path, argv) -> None:
    config, _ = make_unit(tmp_path)
    path = list_file(config)
    found = probe(config, *argv)
    modules = set(found["modules"])
    assert "ipacctd.manager.engine" in modules  # the verb ran, through the engine
    assert found["reads"] and found["rc"] in (0, 3), found  # read the metadata (recorded)
    allowed = STATUS_NEEDS if argv[0] == "status" else frozenset()
    loaded = sorted(m for m in NOT_ON_THE_READ_PATH if m in modules and m not in allowed)
    assert loaded == [], f"{' '.join(argv)} loads {loaded}"
    assert path not in found["reads"], found["reads"]
    if argv[0] == "status":
        assert "IPAddressDeny=(2000 prefixes; 'ipacctd show big.service" in found["out"]
    if argv[0] == "list-units":
        assert "big.service" in found["out"] and "web" in found["out"]


def test_showing_the_list_reads_it(tmp_path) -> None:
    """The counterpart: a view of the list itself reads (and checks) the file."""
    config, unit = make_unit(tmp_path)
    path = list_file(config)
    found = probe(config, "show", "big", "-p", "IPAddressDeny", "--value")
    assert path in found["reads"]
    assert "hashlib" in found["modules"]  # checked against its digest
    assert found["out"].strip() == str(unit.properties.ip_address_deny)


# -- the store's list files ------------------------------------------------------------------


def test_a_long_list_is_kept_in_a_file_and_read_only_when_needed(tmp_path) -> None:
    config, unit = make_unit(tmp_path)
    store = Store(config)
    with open(store.meta_path("big.service")) as f:
        meta = json.load(f)
    entry = meta["properties"]["IPAddressDeny"]
    assert set(entry) == {"sha256", "count"} and entry["count"] == 2000
    assert os.path.getsize(store.meta_path("big.service")) < 2048  # no list text in it
    path = list_file(config)
    assert os.path.basename(path) == entry["sha256"]
    # root's alone, as the metadata
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    assert os.stat(os.path.dirname(os.path.dirname(path))).st_mode & 0o777 == 0o700
    with open(path) as f:
        assert f.read() == str(unit.properties.ip_address_deny)

    deny = Unit.from_json(store.read("big.service")).properties.ip_address_deny
    assert isinstance(deny, StoredList) and not deny.loaded
    assert len(deny) == 2000 and bool(deny) and not deny.loaded  # from the metadata
    again = Unit.from_json(store.read("big.service")).properties
    assert again.ip_address_deny == deny and again.ip_address_deny is not deny
    assert not (deny.loaded or again.ip_address_deny.loaded)  # compared by their digests
    shorter = Unit.from_json(
        Store(make_unit(tmp_path / "other", deny=LONG.rsplit(" ", 1)[0])[0]).read("big.service")
    ).properties.ip_address_deny
    assert isinstance(shorter, StoredList) and shorter != deny
    assert str(deny) == str(unit.properties.ip_address_deny) and deny.loaded
    assert deny.networks == unit.properties.ip_address_deny.networks


def test_a_short_list_stays_inline_as_0_2_1_wrote_it(tmp_path) -> None:
    config, unit = make_unit(tmp_path, deny="192.0.2.1 2001:db8::/32")
    store = Store(config)
    with open(store.meta_path("big.service")) as f:
        entry = json.load(f)["properties"]["IPAddressDeny"]
    assert entry["canonical"] == "192.0.2.1/32 2001:db8::/32" and "sha256" in entry
    assert not os.path.exists(store.lists_dir("big.service"))
    assert Unit.from_json(store.read("big.service")) == unit
    assert len(str(Properties().apply([("IPAddressDeny", LONG)]).ip_address_deny)) > (
        INLINE_LIST_BYTES
    )


def test_a_long_list_of_0_2_1_is_read_and_moved_to_a_file_on_the_next_write(tmp_path) -> None:
    config, unit = make_unit(tmp_path)
    store = Store(config)
    # What 0.2.1 wrote: every list inline, text and digest.
    old = unit.to_json()
    old["properties"]["IPAddressDeny"] = unit.properties.to_store()["IPAddressDeny"]
    import shutil

    shutil.rmtree(store.lists_dir("big.service"))
    with open(store.meta_path("big.service"), "w") as f:
        json.dump(old, f)
    assert "canonical" in old["properties"]["IPAddressDeny"]
    read = Unit.from_json(store.read("big.service"))
    assert read == unit and not isinstance(read.properties.ip_address_deny, StoredList)
    store.write("big.service", read.to_json())
    assert os.path.exists(list_file(config))
    with open(store.meta_path("big.service")) as f:
        assert "canonical" not in json.load(f)["properties"]["IPAddressDeny"]


def test_a_rewrite_names_the_list_again_without_reading_it(tmp_path, monkeypatch) -> None:
    config, _ = make_unit(tmp_path)
    store = Store(config)
    path = list_file(config)
    mtime = os.stat(path).st_mtime_ns
    unit = Unit.from_json(store.read("big.service"))
    reads: list[str] = []
    real = store_mod._read_file
    monkeypatch.setattr(
        store_mod, "_read_file", lambda p, *a, **k: reads.append(p) or real(p, *a, **k)
    )
    renamed = Unit(
        unit.name,
        unit.cgroup,
        properties=unit.properties.apply([("Description", "renamed")]),
        transient=False,
    )
    store.write("big.service", renamed.to_json())
    assert path not in reads and os.stat(path).st_mtime_ns == mtime  # not read or rewritten
    again = Unit.from_json(store.read("big.service"))
    assert again.properties.description == "renamed"
    assert again.properties.ip_address_deny == renamed.properties.ip_address_deny


def test_a_damaged_or_missing_list_file_is_never_taken_for_the_list(tmp_path) -> None:
    config, _ = make_unit(tmp_path)
    store = Store(config)
    path = list_file(config)
    with open(path, "a") as f:
        f.write(" 192.0.2.0/24")
    deny = Unit.from_json(store.read("big.service")).properties.ip_address_deny
    assert len(deny) == 2000  # the state reads on
    with pytest.raises(Corrupt, match="does not match its sha256"):
        str(deny)
    with pytest.raises(Corrupt, match="does not match its sha256"):
        _ = deny.networks
    os.unlink(path)
    with pytest.raises(Corrupt, match="is missing"):  # the unit reads as broken
        store.read("big.service")


def test_a_replaced_list_stays_for_its_grace_then_goes(tmp_path) -> None:
    config, unit = make_unit(tmp_path)
    store = Store(config)
    old_path = list_file(config)
    other = unit.properties.apply([("IPAddressDeny", "192.0.2.1")])
    changed = Unit(unit.name, unit.cgroup, properties=other, transient=False)
    store.write("big.service", changed.to_json())
    # A reader of the previous metadata may still load it: kept, its grace from now.
    assert os.path.exists(old_path)
    old = StoredList.at(old_path, os.path.basename(old_path), 2000, "IPAddressDeny")
    assert len(old.load().split()) == 2000
    store.write("big.service", changed.to_json())
    assert os.path.exists(old_path)
    past = os.stat(old_path).st_mtime - LIST_GRACE - 1
    os.utime(old_path, (past, past))
    store.write("big.service", changed.to_json())
    assert not os.path.exists(old_path)
    assert sorted(os.listdir(store.lists_dir("big.service"))) == [
        changed.to_json()["properties"]["IPAddressDeny"]["sha256"]
    ]
    store.delete("big.service")
    assert not os.path.exists(store.lists_dir("big.service"))


def test_a_status_sent_by_the_daemon_carries_the_list_itself(tmp_path) -> None:
    """DescribeUnits (users who may not read the state) sends a unit's metadata: a list
    kept in a file goes as its text and digest, and reads back as the same list."""
    from ipacctd.daemon.contract import status_from_wire, status_to_wire
    from ipacctd.manager.unit import UnitStatus

    config, unit = make_unit(tmp_path)
    read = Unit.from_json(Store(config).read("big.service"))
    assert isinstance(read.properties.ip_address_deny, StoredList)
    wire = json.loads(
        json.dumps(status_to_wire(UnitStatus(read, "active", "running", (), None, True)))
    )
    entry = wire["unit"]["properties"]["IPAddressDeny"]
    assert entry["canonical"] == str(unit.properties.ip_address_deny) and "path" not in entry
    back = status_from_wire(wire).unit
    assert back == unit and str(back.properties.ip_address_deny) == entry["canonical"]


def test_list_files_of_units_without_metadata_are_swept(tmp_path) -> None:
    """A creator killed between a list file and the metadata naming it leaves the list:
    the next sweep (lock held, at every creation) removes it; a unit's own stays."""
    config, _ = make_unit(tmp_path)
    store = Store(config)
    make_unit(tmp_path, name="gone.service")
    os.unlink(store.meta_path("gone.service"))
    assert os.path.isdir(store.lists_dir("gone.service"))
    assert store.sweep_tmp() == [store.lists_dir("gone.service")]
    assert not os.path.exists(store.lists_dir("gone.service"))
    assert os.path.isdir(store.lists_dir("big.service"))
    assert str(Unit.from_json(store.read("big.service")).properties.ip_address_deny)


def _escape_as_before(name: str) -> str:
    """systemd's bus_label_escape, character by character (the table's reference)."""
    if not name:
        return "_"
    out = []
    for i, ch in enumerate(name.encode()):
        c = chr(ch)
        if c.isascii() and (c.isalpha() or (c.isdigit() and i > 0)):
            out.append(c)
        else:
            out.append(f"_{ch:02x}")
    return "".join(out)


def test_escape_label_is_systemds_for_every_byte_first_and_later() -> None:
    from ipacctd.daemon.contract import escape_label, unescape_label

    names = ["", "a", "0", "9x", "x9", "gb@gb-00001.scope", "web.service", "ü-ß.service", "_"]
    names += [chr(c) for c in range(1, 256)] + [f"a{chr(c)}b" for c in range(1, 256)]
    for name in names:
        got = escape_label(name)
        assert got == _escape_as_before(name), name
        assert unescape_label(got) == name, name
