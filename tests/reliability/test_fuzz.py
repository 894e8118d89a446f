"""Bad input: fuzzing of the property parser, the unit-file parser and the D-Bus arguments.

Every input either applies exactly or fails with a clear error (InvalidInput / D-Bus
InvalidArgs) and leaves the state unchanged (metadata bytes, kernel program ids). Unit
names and cgroup paths cannot escape their roots.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from e2e_helpers import PY, REPO, Installation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rel import count, meta_bytes, prog_ids, report

pytestmark = pytest.mark.kernel

EXAMPLES = count(200, 10_000)
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("IPACCTD_SOAK"),
    suppress_health_check=list(HealthCheck),
    database=None,
)

NAMES = [
    "IPAddressAllow",
    "IPAddressDeny",
    "IPAccounting",
    "IPAddressDenyMode",
    "Description",
    "IPIngressFilterPath",
    "IPEgressFilterPath",
]
WORDS = [
    "any",
    "localhost",
    "link-local",
    "multicast",
    "198.51.100.1",
    "198.51.100.0/24",
    "10.0.3.2/24",
    "2001:db8::1",
    "2001:db8::/32",
    "::ffff:198.51.100.1",
    "0.0.0.0/0",
    "::/0",
    "1.2.3.4/33",
    "2001:db8::/129",
    "300.1.1.1",
    "yes",
    "no",
    "audit",
    "enforce",
    "/sys/fs/bpf/x",
    "../x",
    "",
    " ",
    "\t",
    "\\",
    "#",
    ";",
    "=",
    "1.1.1.1/",
    "fe80::1%lo",
]
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
value = st.one_of(
    text,
    st.lists(st.one_of(st.sampled_from(WORDS), text), max_size=6).map(" ".join),
)
prop_name = st.one_of(st.sampled_from(NAMES), text)


def _one_line_error(exc: Exception) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg


def test_property_parser_fuzz() -> None:
    from ipacctd.errors import InvalidInput
    from ipacctd.policy.properties import PROPERTIES, Properties, parse_assignment

    tried = {"n": 0, "ok": 0}

    @SETTINGS
    @given(st.lists(st.tuples(prop_name, value), max_size=5), text)
    def check(pairs, line):
        tried["n"] += 1
        try:
            parse_assignment(line)
        except InvalidInput as exc:
            _one_line_error(exc)
        try:
            props = Properties().apply(pairs)
        except InvalidInput as exc:
            _one_line_error(exc)
            return
        tried["ok"] += 1
        # Exactly: one at a time gives the same; every value survives its own round trips.
        step = Properties()
        for p in pairs:
            step = step.apply([p])
        assert step == props
        assert Properties.from_json(props.to_json()) == props
        dbus = props.to_dbus()
        again = Properties().apply_dbus(
            [(n, sig, v) for n, (sig, v) in dbus.items() if n in PROPERTIES]
        )
        assert again == props
        for name, spec in PROPERTIES.items():
            value = getattr(props, spec.attr)
            if spec.signature == "as":  # paths: one assignment each (a path may hold spaces)
                texts = list(value)
            else:
                texts = [spec.format(value)] if spec.format(value).strip() else []
            if texts:
                again = Properties().apply([(name, t) for t in texts])
                assert getattr(again, spec.attr) == value, (name, texts)

    check()
    report("fuzz_properties", inputs_tried=tried["n"], inputs_applied=tried["ok"])


def test_unit_file_parser_fuzz() -> None:
    from ipacctd.errors import InvalidInput
    from ipacctd.policy.unitfile import parse_unit_file

    tried = {"n": 0, "ok": 0}
    line = st.one_of(
        st.sampled_from(
            [
                "[Unit]",
                "[Service]",
                "[Scope]",
                "[IPAccounting]",
                "[X-Foo]",
                "",
                "# comment",
                "; comment",
                "\\",
                "[",
                "]",
            ]
        ),
        st.tuples(
            st.one_of(st.sampled_from([*NAMES, "ControlGroup", "Slice"]), text),
            value,
            st.sampled_from(["", "\\"]),
        ).map(lambda t: f"{t[0]}={t[1]}{t[2]}"),
        text,
    )

    @SETTINGS
    @given(st.lists(line, max_size=12).map("\n".join))
    def check(body):
        tried["n"] += 1
        try:
            uf = parse_unit_file(body, path="/etc/ipacctd/units/f.service")
        except InvalidInput as exc:
            assert str(exc)
            assert "Traceback" not in str(exc)
            return
        tried["ok"] += 1
        uf.properties()

    check()
    report("fuzz_unit_files", inputs_tried=tried["n"], inputs_applied=tried["ok"])


def test_names_and_paths_cannot_escape() -> None:
    from ipacctd import cgroup
    from ipacctd.errors import InvalidInput
    from ipacctd.manager.config import Config
    from ipacctd.manager.store import Store
    from ipacctd.policy.names import validate_unit_name

    store = Store(Config(state_dir="/run/x", bpf_dir="/sys/fs/bpf/x"))
    mount = cgroup.mount_point()
    nasty = st.one_of(
        text,
        st.sampled_from(
            [
                "..",
                ".",
                "../x",
                "/etc/passwd",
                "a/../../b",
                "a\0b",
                "x" * 5000,
                "\udcff",
                "/\udcff",
                "a/b",
                "..service",
                "//",
                "/../..",
                "/a/./b",
                "/a//b/",
                "-x",
                ".x",
            ]
        ),
    )

    @SETTINGS
    @given(nasty)
    def check(s):
        try:
            name = validate_unit_name(s)
        except InvalidInput:
            pass
        else:
            assert "/" not in name and "\0" not in name and name not in (".", "..")
            assert os.path.dirname(store.meta_path(name)) == store.config.units_dir
            assert os.path.dirname(store.pin_dir(name)) == store.config.pins_dir
            assert "." not in os.path.basename(store.pin_dir(name))
        try:
            rel = cgroup.validate_path(s)
        except InvalidInput:
            return
        assert ".." not in rel.split("/") and "\0" not in rel
        fs = cgroup.fs_path(rel, mount)
        assert os.path.normpath(fs) == fs.rstrip("/") or fs == mount
        assert fs == mount or fs.startswith(mount.rstrip("/") + "/")

    check()


BAD_ARGV: list[list[str | bytes]] = [
    ["run", "--unit", "../../etc/ipacctd-x", "--", "true"],
    ["run", "--unit", "/etc/ipacctd-x", "--", "true"],
    ["run", "--unit", "x" * 5000, "--", "true"],
    ["run", "--unit", b"\xff\xfe.service", "--", "true"],
    ["run", "--unit", "..", "--", "true"],
    ["attach", "/../../etc", "-p", "IPAccounting=yes"],
    ["attach", "relative/path"],
    ["attach", b"/\xff\xfe"],
    ["attach", "/" + "a/" * 3000],
    ["status", "../x.service"],
    ["set-property", "../../x", "Description=a"],
    ["set-property", "x.service", b"Description=\xff"],
    ["reset", "/etc/passwd"],
    ["run", "-p", b"IPAddressDeny=\xff", "--", "true"],
    ["run", "-p", "IPAddressDeny=" + " ".join(["1.2.3.4/33"] * 3), "--", "true"],
]


@pytest.mark.parametrize("argv", BAD_ARGV, ids=range(len(BAD_ARGV)))
def test_bad_argv_refused_cleanly(inst: Installation, argv) -> None:
    before = set(os.listdir("/etc"))
    res = subprocess.run(
        [
            PY.encode(),
            b"-m",
            b"ipacctd",
            *[a if isinstance(a, bytes) else a.encode() for a in argv],
        ],
        env=inst.env,
        cwd=REPO,
        capture_output=True,
        timeout=30,
        check=False,
    )
    err = res.stderr.decode(errors="replace").strip()
    assert res.returncode != 0, err
    assert "Traceback" not in err and "\n" not in err and err.startswith("ipacctd: "), err
    assert inst.unit_names() == [] and inst.unit_cgroups() == [] and inst.pin_dirs() == []
    assert set(os.listdir("/etc")) == before


def test_nul_and_symlinks_at_the_api(inst: Installation, tmp_path) -> None:
    from ipacctd.errors import InvalidInput

    mgr = inst.manager()
    for call in (
        lambda: mgr.start_transient(name="a\0b"),
        lambda: mgr.attach("/a\0b"),
        lambda: mgr.start_transient([("Description", "a\0b")]),
    ):
        with pytest.raises(InvalidInput):
            call()
    # A symlink planted at the writer's temporary name is not written through.
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    mgr.store.ensure_dirs()
    tmp = os.path.join(mgr.config.units_dir, f".sl.service.{os.getpid()}.tmp")
    os.symlink(victim, tmp)
    try:
        unit = mgr.start_transient(name="sl")
        assert victim.read_text() == "untouched"
        assert not os.path.islink(mgr.store.meta_path(unit.name))
        mgr.reset(unit.name)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


# -- D-Bus -------------------------------------------------------------------------------------

SIGS = ["s", "b", "u", "i", "t", "y", "d", "as", "ay", "a(iayu)", "(ss)", "ai", "v"]


def _dbus_value(sig: str):
    basic = {
        "s": st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=30
        ),
        "b": st.booleans(),
        "u": st.integers(0, 2**32 - 1),
        "i": st.integers(-(2**31), 2**31 - 1),
        "t": st.integers(0, 2**64 - 1),
        "y": st.integers(0, 255),
        "d": st.floats(allow_nan=False, allow_infinity=False),
        "ay": st.binary(max_size=20),
    }
    if sig in basic:
        return basic[sig]
    if sig == "as":
        return st.lists(
            st.one_of(basic["s"], st.sampled_from(["/sys/fs/bpf/nope", "/", "rel"])), max_size=3
        )
    if sig == "ai":
        return st.lists(basic["i"], max_size=3)
    if sig == "(ss)":
        return st.tuples(basic["s"], basic["s"]).map(list)
    if sig == "v":
        from dbus_fast import Variant

        return basic["s"].map(lambda s: Variant("s", s))
    entry = st.one_of(
        st.tuples(st.just(2), st.binary(min_size=4, max_size=4), st.integers(0, 33)),
        st.tuples(st.just(10), st.binary(min_size=16, max_size=16), st.integers(0, 129)),
        st.tuples(
            st.integers(-(2**31), 2**31 - 1), st.binary(max_size=20), st.integers(0, 2**32 - 1)
        ),
    ).map(list)
    return st.lists(entry, max_size=4)


RIGHT_SIG = {
    "IPAddressAllow": "a(iayu)",
    "IPAddressDeny": "a(iayu)",
    "IPAccounting": "b",
    "IPAddressDenyMode": "s",
    "Description": "s",
    "IPIngressFilterPath": "as",
    "IPEgressFilterPath": "as",
    "ExecCommand": "as",
}


def _item():
    from dbus_fast import Variant

    right = st.sampled_from(sorted(RIGHT_SIG)).map(lambda n: (n, RIGHT_SIG[n]))
    anything = st.tuples(st.one_of(st.sampled_from(NAMES), _dbus_value("s")), st.sampled_from(SIGS))
    return st.one_of(right, right, anything).flatmap(
        lambda t: _dbus_value(t[1]).map(lambda v: [t[0], Variant(t[1], v)])
    )


def test_dbus_arguments_fuzz(denv) -> None:
    from dbus_fast import MessageType

    from ipacctd.errors import InvalidInput
    from ipacctd.manager.unit import Unit
    from ipacctd.policy.properties import Properties

    inst: Installation = denv.inst
    denv.start()
    c = denv.client
    ROOT, MANAGER = "/org/ipacctd1", "org.ipacctd1.Manager"
    c.manager(
        "StartTransientUnit",
        "sa(sv)",
        "fz.service",
        [["IPAddressDeny", _variant("a(iayu)", [[2, bytes([198, 51, 100, 2]), 32]])]],
    )
    keeper = subprocess.Popen(
        ["sleep", "600"],
        preexec_fn=lambda: open(  # noqa: SIM115
            os.path.join(inst.root_fs, "fz.service", "cgroup.procs"), "w"
        ).write(str(os.getpid())),
    )
    path = c.manager("GetUnit", "s", "fz.service")[0]
    known_errors = {
        "org.freedesktop.DBus.Error.InvalidArgs",
        "org.ipacctd1.Error.UnitExists",
        "org.ipacctd1.Error.NoSuchUnit",
        "org.ipacctd1.Error.NotSupported",
        "org.ipacctd1.Error.Failed",
    }
    stats = {"n": 0, "applied": 0, "refused": 0}
    try:

        @SETTINGS
        @given(
            st.sampled_from(["set", "unit-set", "start", "badsig"]),
            st.lists(_item(), max_size=4),
            st.one_of(st.just(""), _dbus_value("s"), st.just("fz.service")),
        )
        def check(kind, items, name):
            stats["n"] += 1
            meta = meta_bytes(inst.state_dir, "fz.service")
            progs = prog_ids(inst.bpf_dir, "fz.service")
            units = set(inst.unit_names())
            old = Unit.from_json(__import__("json").loads(meta)).properties
            triples = [(n, v.signature, v.value) for n, v in items]
            if kind == "set":
                reply = c.call(
                    ROOT, MANAGER, "SetUnitProperties", "sba(sv)", ["fz.service", True, items]
                )
            elif kind == "unit-set":
                reply = c.call(path, "org.ipacctd1.Unit", "SetProperties", "ba(sv)", [True, items])
            elif kind == "start":
                reply = c.call(ROOT, MANAGER, "StartTransientUnit", "sa(sv)", [name, items])
            else:
                reply = c.call(ROOT, MANAGER, "SetUnitProperties", "sa(sv)", ["fz.service", items])
            if kind in ("set", "unit-set"):
                try:
                    expected = old.apply_dbus(triples)
                except InvalidInput:
                    expected = None
            elif kind == "start":
                try:
                    expected = Properties().apply_dbus(
                        [t for t in triples if not (t[0] == "ExecCommand" and t[1] == "as")]
                    )
                except InvalidInput:
                    expected = None
            else:
                expected = None
            if reply.message_type == MessageType.ERROR:
                stats["refused"] += 1
                assert reply.error_name in known_errors, (reply.error_name, reply.body)
                msg = reply.body[0] if reply.body else ""
                assert msg and not msg.startswith("internal error"), msg
                if expected is None and kind != "start":
                    assert reply.error_name == "org.freedesktop.DBus.Error.InvalidArgs", msg
                assert meta_bytes(inst.state_dir, "fz.service") == meta
                assert prog_ids(inst.bpf_dir, "fz.service") == progs
                assert set(inst.unit_names()) == units
                return
            stats["applied"] += 1
            assert expected is not None, (kind, items)
            if kind == "start":
                (_new_path,) = reply.body
                new = [n for n in inst.unit_names() if n not in units]
                assert len(new) == 1, new
                got = Unit.from_json(
                    __import__("json").loads(meta_bytes(inst.state_dir, new[0]))
                ).properties
                assert got == expected
                c.manager("ResetUnit", "s", new[0])
                assert set(inst.unit_names()) == units
            else:
                got = Unit.from_json(
                    __import__("json").loads(meta_bytes(inst.state_dir, "fz.service"))
                ).properties
                assert got == expected
                # put the base policy back so every example starts alike
                c.manager(
                    "SetUnitProperties",
                    "sba(sv)",
                    "fz.service",
                    True,
                    [
                        [n, _variant(sig, v)]
                        for n, (sig, v) in old.to_dbus().items()
                        if n
                        not in (
                            "IPAddressAllow",
                            "IPAddressDeny",
                            "IPIngressFilterPath",
                            "IPEgressFilterPath",
                        )
                    ]
                    + [
                        [n, _variant(sig, [])]
                        for n, sig in (
                            ("IPAddressAllow", "a(iayu)"),
                            ("IPAddressDeny", "a(iayu)"),
                            ("IPIngressFilterPath", "as"),
                            ("IPEgressFilterPath", "as"),
                        )
                    ]
                    + [
                        [n, _variant(sig, v)]
                        for n, (sig, v) in old.to_dbus().items()
                        if n in ("IPAddressAllow", "IPAddressDeny") and v
                    ],
                )

        check()
    finally:
        keeper.kill()
        keeper.wait(timeout=10)
    assert "internal error" not in denv.log()
    assert "Traceback" not in denv.log()
    report(
        "fuzz_dbus",
        inputs_tried=stats["n"],
        inputs_applied=stats["applied"],
        inputs_refused=stats["refused"],
    )


def _variant(sig: str, value):
    from dbus_fast import Variant

    return Variant(sig, value)
