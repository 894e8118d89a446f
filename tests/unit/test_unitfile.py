"""Policy files in systemd INI syntax."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipacctd.errors import InvalidInput
from ipacctd.policy.properties import DenyMode, Properties
from ipacctd.policy.unitfile import (
    UnitFile,
    load_unit_dir,
    load_unit_file,
    parse_unit_file,
    unit_name_for_path,
    validate_cgroup_pattern,
)

EXAMPLE = """\
# Policy for the web server.
; another comment style

[Unit]
Description = Web server

[Match]
ControlGroup=/system.slice/nginx.service
ControlGroup=/system.slice/nginx-*.service

[Service]
IPAccounting=yes
IPAddressDeny=any
IPAddressAllow=localhost \\
# a comment inside the continuation is skipped
    10.0.0.0/8 \\
    192.168.1.7
IPAddressDenyMode=audit
IPIngressFilterPath=/sys/fs/bpf/ingress
"""


def parse(text: str, path: str = "/etc/ipacctd/units/web.unit") -> UnitFile:
    return parse_unit_file(text, path)


def test_example() -> None:
    u = parse(EXAMPLE)
    assert u.name == "web.service"
    assert u.path == "/etc/ipacctd/units/web.unit"
    assert u.description == "Web server"
    assert u.cgroups == ("/system.slice/nginx.service", "/system.slice/nginx-*.service")
    assert u.has_glob()
    assert u.assignments[0] == ("Description", "Web server")
    assert ("IPAccounting", "yes") in u.assignments
    p = u.properties()
    assert p.description == "Web server"
    assert str(p.ip_address_allow) == "10.0.0.0/8 127.0.0.0/8 192.168.1.7/32 ::1/128"
    assert str(p.ip_address_deny) == "0.0.0.0/0 ::/0"
    assert p.ip_address_deny_mode is DenyMode.AUDIT
    assert p.ip_ingress_filter_path == ("/sys/fs/bpf/ingress",)
    assert p.ip_accounting is True


def test_empty_file_gives_defaults() -> None:
    u = parse("")
    assert u.cgroups == ()
    assert u.assignments == ()
    assert u.description == ""
    assert u.properties() == Properties()
    assert not u.has_glob()


def test_continuation_joins_with_space() -> None:
    u = parse("[Unit]\nDescription=a\\\nb\n")
    assert u.description == "a b"
    u = parse("[Service]\nIPAddressDeny=10.0.0.1\\\n10.0.0.2\n")
    assert str(u.properties().ip_address_deny) == "10.0.0.1/32 10.0.0.2/32"


def test_double_backslash_is_not_a_continuation() -> None:
    with pytest.raises(InvalidInput, match=r"web.unit:3: missing '='"):
        parse("[Unit]\nDescription=a\\\\\nb\n")


def test_trailing_whitespace_after_backslash_ends_line() -> None:
    # Like systemd: the backslash must be the last character.
    with pytest.raises(InvalidInput, match=r":3: missing '='"):
        parse("[Unit]\nDescription=a\\ \nb\n")


def test_continuation_at_eof_is_accepted() -> None:
    u = parse("[Service]\nIPAddressDeny=10.0.0.1 \\")
    assert str(u.properties().ip_address_deny) == "10.0.0.1/32"


def test_comments_and_blank_lines() -> None:
    u = parse("\n   # x=y\n\t; [Nope]\n\n[Service]\n  # IPAddressDeny=bogus\nIPAccounting=no\n")
    assert u.assignments == (("IPAccounting", "no"),)


def test_repeated_keys_append_and_empty_resets() -> None:
    u = parse(
        "[Service]\n"
        "IPAddressDeny=10.0.0.1\n"
        "IPAddressDeny=10.0.0.2\n"
        "IPAddressAllow=10.0.0.9\n"
        "IPAddressAllow=\n"
        "IPAddressAllow=::1\n"
        "IPAccounting=no\n"
        "IPAccounting=yes\n"
        "[Match]\n"
        "ControlGroup=/a\n"
        "ControlGroup=\n"
        "ControlGroup=/b\n"
        "ControlGroup=/c\n"
        "ControlGroup=/b\n"
    )
    p = u.properties()
    assert str(p.ip_address_deny) == "10.0.0.1/32 10.0.0.2/32"
    assert str(p.ip_address_allow) == "::1/128"
    assert p.ip_accounting is True
    assert u.cgroups == ("/b", "/c")
    assert len(u.assignments) == 7


def test_sections_may_repeat() -> None:
    u = parse("[Service]\nIPAddressDeny=10.0.0.1\n[Unit]\nDescription=x\n[Service]\nIPAccounting=0")
    assert u.description == "x"
    assert u.properties().ip_accounting is False


def test_x_sections_and_keys_are_ignored() -> None:
    u = parse("[X-Vendor]\nAnything=goes\n[Service]\nX-Note=hello\nIPAccounting=no\n")
    assert u.assignments == (("IPAccounting", "no"),)


def test_whitespace_around_key_and_value() -> None:
    u = parse("  [Service]  \n  IPAddressDeny   =   10.0.0.1   \n")
    assert u.assignments == (("IPAddressDeny", "10.0.0.1"),)


def test_bom_is_skipped() -> None:
    assert parse("\ufeff[Unit]\nDescription=x\n").description == "x"


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("IPAccounting=yes\n", 1, "assignment outside of a section"),
        ("# c\n\n[Service]\nIPAccounting\n", 4, "missing '='"),
        ("[Service]\n=yes\n", 2, "missing key name"),
        ("[Install]\n", 1, "unknown section [Install]"),
        ("[Service\n", 1, "invalid section header"),
        ("[]\n", 1, "invalid section header"),
        ("[Service]\nCPUQuota=5%\n", 2, "unknown key 'CPUQuota' in section [Service]"),
        ("[Service]\nDescription=x\n", 2, "(it belongs in [Unit])"),
        ("[Unit]\nIPAccounting=yes\n", 2, "(it belongs in [Service])"),
        ("[Match]\nIPAddressDeny=any\n", 2, "unknown key 'IPAddressDeny' in section [Match]"),
        ("[Service]\nIPAddressDeny=10.0.0.1 bogus\n", 2, "invalid address 'bogus'"),
        ("[Service]\n\nIPAccounting=maybe\n", 3, "invalid boolean 'maybe'"),
        ("[Service]\nIPAddressDenyMode=drop\n", 2, "invalid mode 'drop'"),
        ("[Service]\nIPIngressFilterPath=x\n", 2, "must be absolute"),
        ("[Match]\nControlGroup=system.slice/x\n", 2, "must be absolute"),
        ("[Match]\nControlGroup=/a/../b\n", 2, "must not contain '..'"),
        ("[Match]\nControlGroup=/a\x00b\n", 2, "must not contain NUL"),
        ("[Unit]\nDescription=" + "x" * 300 + "\n", 2, "longer than 256"),
        # The error names the first line of a continued line.
        ("[Service]\nIPAddressDeny=10.0.0.1 \\\n  bogus\n", 2, "invalid address 'bogus'"),
    ],
)
def test_errors(text: str, line: int, problem: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse(text)
    message = str(info.value)
    assert message.startswith(f"/etc/ipacctd/units/web.unit:{line}: ")
    assert problem in message


def test_unknown_key_lists_known_keys() -> None:
    with pytest.raises(InvalidInput) as info:
        parse("[Service]\nIPAdressDeny=any\n")
    assert "IPAddressDeny" in str(info.value)
    assert "IPIngressFilterPath" in str(info.value)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/etc/ipacctd/units/web.unit", "web.service"),
        ("web.service", "web.service"),
        ("/x/session-3.scope", "session-3.scope"),
        ("/x/org.example.app.unit", "org.example.app.service"),
        ("/x/getty@tty1.unit", "getty@tty1.service"),
    ],
)
def test_unit_name_for_path(path: str, name: str) -> None:
    assert unit_name_for_path(path) == name
    assert parse("", path).name == name


def test_bad_file_name() -> None:
    with pytest.raises(InvalidInput, match=r"^/x/bad name\.unit: invalid unit name"):
        parse("", "/x/bad name.unit")


def test_default_path_and_explicit_name() -> None:
    assert parse_unit_file("").name == "unnamed.service"
    with pytest.raises(InvalidInput, match=r"^<string>:1: "):
        parse_unit_file("x")
    assert parse_unit_file("", name="db").name == "db.service"


def test_cgroup_pattern_normalised() -> None:
    assert validate_cgroup_pattern("//system.slice//x.service/") == "/system.slice/x.service"
    assert validate_cgroup_pattern("/a/./b") == "/a/b"
    assert validate_cgroup_pattern("/machine.slice/*/[ab]?") == "/machine.slice/*/[ab]?"
    assert validate_cgroup_pattern("/") == "/"


def test_load_unit_file(tmp_path: Path) -> None:
    f = tmp_path / "web.unit"
    f.write_text(EXAMPLE)
    u = load_unit_file(f)
    assert u.path == str(f)
    assert u == parse(EXAMPLE, str(f))


def test_load_unit_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read"):
        load_unit_file(tmp_path / "missing.unit")
    f = tmp_path / "bin.unit"
    f.write_bytes(b"[Unit]\nDescription=\xff\n")
    with pytest.raises(InvalidInput, match="not valid UTF-8"):
        load_unit_file(f)


def test_load_unit_dir(tmp_path: Path) -> None:
    (tmp_path / "b.unit").write_text("[Service]\nIPAddressDeny=any\n")
    (tmp_path / "a.service").write_text("[Unit]\nDescription=A\n")
    (tmp_path / "c.scope").write_text("[Match]\nControlGroup=/c\n")
    (tmp_path / "bad.unit").write_text("[Service]\nIPAddressDeny=nope\n")
    (tmp_path / "a.unit").write_text("")  # same unit name as a.service
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.unit").write_text("garbage")
    (tmp_path / "dir.unit").mkdir()
    units, errors = load_unit_dir(tmp_path)
    assert [u.name for u in units] == ["a.service", "b.service", "c.scope"]
    assert units[0].description == "A"
    assert [os.path.basename(u.path) for u in units] == ["a.service", "b.unit", "c.scope"]
    messages = sorted(str(e) for e in errors)
    assert len(messages) == 3
    assert messages[0].startswith(f"{tmp_path / 'a.unit'}: unit a.service is already defined")
    assert messages[1].startswith(f"{tmp_path / 'bad.unit'}:2: invalid address 'nope'")
    assert messages[2].startswith(f"{tmp_path / 'dir.unit'}: not a regular file")


def test_load_missing_dir(tmp_path: Path) -> None:
    assert load_unit_dir(tmp_path / "nope") == ([], [])


def test_load_dir_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(InvalidInput, match="cannot list directory"):
        load_unit_dir(f)


@given(st.text(alphabet=st.sampled_from("[]=#;\\\n \tabcServiceUnitMatchIP0./"), max_size=80))
def test_garbage_parses_or_raises_invalid_input(text: str) -> None:
    try:
        u = parse_unit_file(text, "/x/g.unit")
    except InvalidInput as e:
        assert str(e).startswith("/x/g.unit:")
    else:
        u.properties()


def test_comment_with_trailing_backslash_does_not_continue() -> None:
    # systemd skips comment lines before looking for continuations.
    with pytest.raises(InvalidInput, match=r"<string>:3: .*but allow"):
        parse_unit_file("[Service]\n# comment \\\n  but allow\nIPAddressDeny=1.2.3.4\n")
