"""The property table and the immutable Properties object."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipacctd.errors import InvalidInput
from ipacctd.policy.addresses import AddressList
from ipacctd.policy.properties import (
    PROPERTIES,
    DenyMode,
    Properties,
    parse_assignment,
    parse_boolean,
)

EXPECTED_NAMES = {
    "IPAccounting",
    "IPAddressAllow",
    "IPAddressDeny",
    "IPIngressFilterPath",
    "IPEgressFilterPath",
    "IPAddressDenyMode",
    "Description",
}


def apply(*texts: str, base: Properties | None = None) -> Properties:
    return (base or Properties()).apply(parse_assignment(t) for t in texts)


def test_table() -> None:
    assert set(PROPERTIES) == EXPECTED_NAMES
    signatures = {name: spec.signature for name, spec in PROPERTIES.items()}
    assert signatures == {
        "IPAccounting": "b",
        "IPAddressAllow": "a(iayu)",
        "IPAddressDeny": "a(iayu)",
        "IPIngressFilterPath": "as",
        "IPEgressFilterPath": "as",
        "IPAddressDenyMode": "s",
        "Description": "s",
    }
    appends = {name for name, spec in PROPERTIES.items() if spec.appends}
    assert appends == {
        "IPAddressAllow",
        "IPAddressDeny",
        "IPIngressFilterPath",
        "IPEgressFilterPath",
    }
    for spec in PROPERTIES.values():
        assert spec.doc
        assert getattr(Properties(), spec.attr) == spec.default


def test_defaults() -> None:
    p = Properties()
    assert p.ip_accounting is True
    assert p.ip_address_allow == AddressList()
    assert p.ip_address_deny == AddressList()
    assert p.ip_address_deny_mode == DenyMode.ENFORCE == "enforce"
    assert p.ip_ingress_filter_path == ()
    assert p.ip_egress_filter_path == ()
    assert p.description == ""
    assert not p.has_firewall()
    assert p.to_show() == {
        "Description": "",
        "IPAccounting": "yes",
        "IPAddressAllow": "",
        "IPAddressDeny": "",
        "IPAddressDenyMode": "enforce",
        "IPIngressFilterPath": "",
        "IPEgressFilterPath": "",
    }


@pytest.mark.parametrize("word", ["yes", "YES", "true", "True", "on", "1", "y", "t", " Yes "])
def test_boolean_true(word: str) -> None:
    assert parse_boolean(word) is True
    assert apply("IPAccounting=no", f"IPAccounting={word}").ip_accounting is True


@pytest.mark.parametrize("word", ["no", "NO", "false", "off", "0", "n", "f", "F"])
def test_boolean_false(word: str) -> None:
    assert parse_boolean(word) is False
    p = apply(f"IPAccounting={word}")
    assert p.ip_accounting is False
    assert p.to_show()["IPAccounting"] == "no"


@pytest.mark.parametrize("word", ["2", "yess", "nope", "enabled", "-1"])
def test_boolean_invalid(word: str) -> None:
    with pytest.raises(InvalidInput, match=rf"invalid boolean '{word}' in IPAccounting="):
        apply(f"IPAccounting={word}")


def test_systemd_example_show() -> None:
    p = apply("IPAccounting=yes", "IPAddressDeny=198.51.100.1")
    assert p.to_show()["IPAddressDeny"] == "198.51.100.1/32"
    assert p.to_show()["IPAccounting"] == "yes"
    assert p.has_firewall()


def test_address_append_and_reset() -> None:
    p = apply("IPAddressDeny=10.0.0.1", "IPAddressDeny=10.0.0.2", "IPAddressAllow=localhost")
    assert str(p.ip_address_deny) == "10.0.0.1/32 10.0.0.2/32"
    assert str(p.ip_address_allow) == "127.0.0.0/8 ::1/128"
    q = apply("IPAddressDeny=", "IPAddressDeny=any", base=p)
    assert str(q.ip_address_deny) == "0.0.0.0/0 ::/0"
    assert str(q.ip_address_allow) == "127.0.0.0/8 ::1/128"
    assert not apply("IPAddressDeny=  ", base=p).ip_address_deny


def test_replace_semantics() -> None:
    p = apply("IPAddressDenyMode=audit", "Description=a", "Description=b")
    assert p.ip_address_deny_mode is DenyMode.AUDIT
    assert p.description == "b"
    assert apply("IPAddressDenyMode=enforce", base=p).ip_address_deny_mode is DenyMode.ENFORCE
    assert apply("IPAddressDenyMode=", base=p).ip_address_deny_mode is DenyMode.ENFORCE
    assert apply("IPAccounting=no", "IPAccounting=").ip_accounting is True


def test_filter_paths() -> None:
    p = apply(
        "IPIngressFilterPath=/sys/fs/bpf/a",
        "IPIngressFilterPath=/sys/fs/bpf//b/",
        "IPIngressFilterPath=/sys/fs/bpf/./a",
        "IPEgressFilterPath=/sys/fs/bpf/c",
    )
    assert p.ip_ingress_filter_path == ("/sys/fs/bpf/a", "/sys/fs/bpf/b")
    assert p.ip_egress_filter_path == ("/sys/fs/bpf/c",)
    assert p.to_show()["IPIngressFilterPath"] == "/sys/fs/bpf/a /sys/fs/bpf/b"
    assert p.has_firewall()
    q = apply("IPIngressFilterPath=", base=p)
    assert q.ip_ingress_filter_path == ()
    assert q.has_firewall()  # egress path still set
    assert not apply("IPEgressFilterPath=", base=q).has_firewall()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("sys/fs/bpf/x", "must be absolute"),
        ("/sys/fs/bpf/../x", "must not contain '..'"),
        ("/sys/fs/bpf/x\x00y", "must not contain NUL"),
    ],
)
def test_filter_path_invalid(value: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match="IPEgressFilterPath=") as info:
        apply(f"IPEgressFilterPath={value}")
    assert reason in str(info.value)


def test_allow_alone_is_no_firewall() -> None:
    assert not apply("IPAddressAllow=any").has_firewall()
    assert apply("IPAddressDeny=any", "IPAddressDenyMode=audit").has_firewall()


def test_deny_mode_invalid() -> None:
    with pytest.raises(InvalidInput, match="invalid mode 'Audit' in IPAddressDenyMode="):
        apply("IPAddressDenyMode=Audit")


def test_description_rules() -> None:
    assert apply("Description=  Web server  ").description == "Web server"
    assert apply("Description=" + "x" * 256).description == "x" * 256
    with pytest.raises(InvalidInput, match="longer than 256"):
        apply("Description=" + "x" * 257)
    with pytest.raises(InvalidInput, match="single line"):
        apply("Description=a\nb")
    with pytest.raises(InvalidInput, match="single line"):
        apply("Description=a\x00b")


def test_apply_is_all_or_nothing() -> None:
    base = apply("IPAddressDeny=192.0.2.1", "Description=keep")
    with pytest.raises(InvalidInput, match="'bogus'"):
        base.apply(
            [
                ("IPAddressDeny", ""),
                ("Description", "changed"),
                ("IPAccounting", "no"),
                ("IPAddressDeny", "10.0.0.1 bogus"),
            ]
        )
    assert str(base.ip_address_deny) == "192.0.2.1/32"
    assert base.description == "keep"
    assert base.ip_accounting is True


def test_apply_returns_new_object() -> None:
    base = Properties()
    new = base.apply([("IPAddressDeny", "any")])
    assert new is not base
    assert base == Properties()
    assert base.apply([]) == base


def test_parse_assignment() -> None:
    assert parse_assignment("IPAddressDeny=1.2.3.4 any") == ("IPAddressDeny", "1.2.3.4 any")
    assert parse_assignment(" IPAccounting =yes") == ("IPAccounting", "yes")
    assert parse_assignment("Description=a=b") == ("Description", "a=b")
    assert parse_assignment("IPAddressDeny=") == ("IPAddressDeny", "")
    with pytest.raises(InvalidInput, match="expected NAME=VALUE"):
        parse_assignment("IPAddressDeny")
    with pytest.raises(InvalidInput, match="missing property name"):
        parse_assignment("=yes")


def test_unknown_property_suggests() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_assignment("IPAdressDeny=any")
    message = str(info.value)
    assert "'IPAdressDeny'" in message
    assert "did you mean IPAddressDeny?" in message
    for name in EXPECTED_NAMES:
        assert name in message
    with pytest.raises(InvalidInput, match="unknown property 'CPUQuota'"):
        Properties().apply([("CPUQuota", "5%")])


def full() -> Properties:
    return apply(
        "Description=Web",
        "IPAccounting=no",
        "IPAddressAllow=localhost 10.1.2.3/24",
        "IPAddressDeny=any",
        "IPAddressDenyMode=audit",
        "IPIngressFilterPath=/sys/fs/bpf/in",
        "IPEgressFilterPath=/sys/fs/bpf/out1",
        "IPEgressFilterPath=/sys/fs/bpf/out2",
    )


def test_json_round_trip() -> None:
    p = full()
    d = p.to_json()
    assert d == {
        "Description": "Web",
        "IPAccounting": False,
        "IPAddressAllow": ["10.1.2.0/24", "127.0.0.0/8", "::1/128"],
        "IPAddressDeny": ["0.0.0.0/0", "::/0"],
        "IPAddressDenyMode": "audit",
        "IPIngressFilterPath": ["/sys/fs/bpf/in"],
        "IPEgressFilterPath": ["/sys/fs/bpf/out1", "/sys/fs/bpf/out2"],
    }
    assert Properties.from_json(json.loads(json.dumps(d))) == p
    assert Properties.from_json(Properties().to_json()) == Properties()
    assert Properties.from_json({}) == Properties()


@pytest.mark.parametrize(
    "d",
    [
        {"IPAccounting": "yes"},
        {"IPAddressDeny": "any"},
        {"IPAddressDeny": ["bogus"]},
        {"IPAddressDenyMode": "drop"},
        {"IPIngressFilterPath": ["relative"]},
        {"IPIngressFilterPath": "/abs"},
        {"Description": 5},
        {"Unknown": 1},
    ],
)
def test_from_json_rejects(d: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        Properties.from_json(d)


def test_from_json_rejects_non_object() -> None:
    with pytest.raises(InvalidInput, match="expected an object"):
        Properties.from_json([])  # type: ignore[arg-type]


def test_to_dbus() -> None:
    d = full().to_dbus()
    assert d["IPAccounting"] == ("b", False)
    assert d["IPAddressDeny"] == ("a(iayu)", [(2, bytes(4), 0), (10, bytes(16), 0)])
    assert d["IPAddressDenyMode"] == ("s", "audit")
    assert d["IPEgressFilterPath"] == ("as", ["/sys/fs/bpf/out1", "/sys/fs/bpf/out2"])
    assert d["Description"] == ("s", "Web")
    assert set(d) == EXPECTED_NAMES


def test_apply_dbus_round_trip() -> None:
    p = full()
    items = [(name, sig, value) for name, (sig, value) in p.to_dbus().items()]
    assert Properties().apply_dbus(items) == p


def test_apply_dbus_append_and_reset() -> None:
    base = apply("IPAddressDeny=10.0.0.1", "IPIngressFilterPath=/sys/fs/bpf/a")
    p = base.apply_dbus(
        [
            ("IPAddressDeny", "a(iayu)", [(2, b"\x0a\x00\x00\x02", 32)]),
            ("IPIngressFilterPath", "as", ["/sys/fs/bpf/b"]),
        ]
    )
    assert str(p.ip_address_deny) == "10.0.0.1/32 10.0.0.2/32"
    assert p.ip_ingress_filter_path == ("/sys/fs/bpf/a", "/sys/fs/bpf/b")
    q = p.apply_dbus([("IPAddressDeny", "a(iayu)", []), ("IPIngressFilterPath", "as", [])])
    assert not q.ip_address_deny
    assert q.ip_ingress_filter_path == ()


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (("IPAccounting", "s", "yes"), "signature 's'"),
        (("IPAccounting", "b", "yes"), "expected a boolean"),
        (("IPAccounting", "b", 1), "expected a boolean"),
        (("IPAddressDeny", "as", ["any"]), "signature 'as'"),
        (("IPAddressDeny", "a(iayu)", [(2, b"\0", 8)]), "has 1 bytes"),
        (("IPAddressDenyMode", "s", "drop"), "invalid mode 'drop'"),
        (("IPAddressDenyMode", "s", 1), "expected a string"),
        (("IPIngressFilterPath", "as", "/x"), "expected an array of strings"),
        (("IPIngressFilterPath", "as", ["x"]), "must be absolute"),
        (("Description", "s", b"x"), "expected a string"),
        (("Nope", "s", "x"), "unknown property 'Nope'"),
        (("IPAccounting", "b"), "expected (name, signature, value)"),
        ((1, "b", True), "must be strings"),
    ],
)
def test_apply_dbus_rejects(item: tuple[object, ...], reason: str) -> None:
    base = apply("Description=keep")
    with pytest.raises(InvalidInput) as info:
        base.apply_dbus([("Description", "s", "changed"), item])  # type: ignore[list-item]
    assert reason in str(info.value)
    assert base.description == "keep"


def test_get() -> None:
    p = full()
    assert p.get("IPAccounting") is False
    assert p.get("IPAddressDeny") == AddressList.parse("any")
    with pytest.raises(InvalidInput):
        p.get("Nope")


names = st.sampled_from(sorted(EXPECTED_NAMES))


@given(st.lists(st.tuples(names, st.text(max_size=20)), max_size=8))
def test_random_assignments_apply_or_raise(assignments: list[tuple[str, str]]) -> None:
    base = Properties()
    try:
        p = base.apply(assignments)
    except InvalidInput:
        return
    assert Properties.from_json(json.loads(json.dumps(p.to_json()))) == p
    items = [(n, sig, v) for n, (sig, v) in p.to_dbus().items()]
    assert Properties().apply_dbus(items) == p
    assert base == Properties()


def test_equal_json_gives_one_shared_properties_object() -> None:
    """Units of one policy share their Properties (the daemon keeps every unit): equal JSON,
    read twice, is one object, equal to one built without the cache; other JSON is not it."""
    from ipacctd.policy import properties as mod

    p = apply("IPAddressDeny=198.51.100.0/24 2001:db8::/32", "IPAddressDenyMode=audit")
    stored = json.loads(json.dumps(p.to_store()))
    first = Properties.from_json(stored)
    second = Properties.from_json(json.loads(json.dumps(p.to_store())))
    assert first is second and first == p
    mod._FROM_JSON.clear()
    assert Properties.from_json(stored) == first  # rebuilt, not remembered: the same value
    other = apply("IPAddressDeny=198.51.100.0/25")
    assert Properties.from_json(json.loads(json.dumps(other.to_store()))) == other != first
    # True is not 1: a value's type is part of the key (1 is refused as IPAccounting).
    assert Properties.from_json({"IPAccounting": True}) == Properties()
    with pytest.raises(InvalidInput):
        Properties.from_json({"IPAccounting": 1})


def test_damaged_json_is_refused_on_every_read_and_the_cache_stays_bounded() -> None:
    from ipacctd.policy import properties as mod

    good = json.loads(json.dumps(apply("IPAddressDeny=198.51.100.1").to_store()))
    Properties.from_json(good)
    bad = {"IPAddressDeny": {**good["IPAddressDeny"], "canonical": "198.51.100.2/32"}}
    for _ in range(2):  # a refusal is never remembered as a result
        with pytest.raises(InvalidInput, match="does not match its sha256"):
            Properties.from_json(bad)
    for i in range(mod._FROM_JSON_MAX + 10):
        Properties.from_json({"Description": f"unit {i}"})
        assert len(mod._FROM_JSON) <= mod._FROM_JSON_MAX
