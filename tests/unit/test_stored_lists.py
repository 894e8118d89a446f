"""Address lists are parsed once: a stored list is read back unparsed (its canonical text,
checked against its digest), and values parsed on validation are applied without parsing
them again (issue 13 items 2 and 5). Each test makes parsing fail (or counts it) to show
what is, and is not, parsed."""

from __future__ import annotations

import json

import pytest

from ipacctd.errors import InvalidInput
from ipacctd.policy import addresses
from ipacctd.policy.addresses import AddressList
from ipacctd.policy.properties import Assignment, Properties
from ipacctd.policy.unitfile import parse_unit_file

WORDS = "192.0.2.7/24 198.51.100.7 2001:db8::/32 2001:db8:1::/48 203.0.113.9 ::ffff:192.0.2.1"
WORDS += " ::1.2.3.4"  # 2001:db8:1::/48 is covered: six networks


@pytest.fixture(autouse=True)
def _unshared() -> None:
    """Properties read from equal JSON are one shared object (properties._FROM_JSON), whose
    lists another test may have parsed already: each test here starts without them, to
    see what its own reads parse."""
    from ipacctd.policy import properties

    properties._FROM_JSON.clear()


def policy() -> Properties:
    return Properties().apply(
        [
            ("IPAddressDeny", WORDS),
            ("IPAddressAllow", "198.51.100.7 2001:db8::5"),
            ("Description", "web"),
        ]
    )


def refuse_parsing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From here on, any parse of an address list fails the test; returns the attempts."""
    attempts: list[str] = []

    def refuse(value: str, prop: str = "IPAddressAllow") -> list:
        attempts.append(value)
        raise AssertionError(f"an address list was parsed: {value[:60]!r}")

    monkeypatch.setattr(addresses, "parse_words", refuse)
    return attempts


def test_stored_lists_are_read_back_without_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    p = policy()
    stored = json.loads(json.dumps(p.to_store()))
    assert stored["IPAddressDeny"]["canonical"] == str(p.ip_address_deny)
    attempts = refuse_parsing(monkeypatch)
    q = Properties.from_json(stored)
    deny = q.ip_address_deny
    assert not deny.parsed
    # everything a view asks of a list, from its text
    assert str(deny) == str(p.ip_address_deny)
    assert len(deny) == len(p.ip_address_deny) == 6
    assert bool(deny) and not Properties.from_json({"IPAddressDeny": []}).ip_address_deny
    assert q.to_show() == p.to_show()
    assert q.to_dbus() == p.to_dbus()  # word by word, no networks made
    assert q == p and q.ip_address_deny == AddressList.from_canonical(str(deny))
    assert q.to_store() == stored
    assert not deny.parsed and attempts == []
    monkeypatch.undo()
    # and the networks, when the policy itself is needed
    assert deny.networks == p.ip_address_deny.networks
    assert deny.parsed


def test_a_stored_list_edited_by_hand_is_refused() -> None:
    stored = policy().to_store()
    stored["IPAddressDeny"] = {**stored["IPAddressDeny"], "canonical": "192.0.2.0/24"}
    with pytest.raises(InvalidInput, match="does not match its sha256"):
        Properties.from_json(stored)
    with pytest.raises(InvalidInput, match="expected a list of strings or an object"):
        Properties.from_json({"IPAddressDeny": {"canonical": "192.0.2.0/24"}})


def test_lists_of_words_of_earlier_metadata_are_still_read() -> None:
    p = policy()
    old = p.to_json()  # the words form: what metadata held before
    assert old["IPAddressDeny"] == str(p.ip_address_deny).split()
    q = Properties.from_json(old)
    assert q == p and q.ip_address_deny.networks == p.ip_address_deny.networks
    assert Properties.from_json(json.loads(json.dumps(q.to_store()))) == p


def test_parsed_assignments_are_applied_without_parsing_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pairs = [
        Assignment.parse("IPAddressDeny", WORDS),
        Assignment.parse("Description", "x"),
        Assignment.parse("IPAddressDeny", "203.0.113.0/24"),
    ]
    assert pairs[0] == ("IPAddressDeny", WORDS)  # still the pair as given
    expected = Properties().apply([tuple(a) for a in pairs])
    attempts = refuse_parsing(monkeypatch)
    got = Properties().apply(pairs)
    assert attempts == []
    assert got == expected and got.description == "x"
    assert "203.0.113.0/24" in str(got.ip_address_deny)


def test_a_description_change_keeps_the_lists_read_from_metadata_unparsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ipacctd.manager.unit import policy_changed

    q = Properties.from_json(json.loads(json.dumps(policy().to_store())))
    attempts = refuse_parsing(monkeypatch)
    described = q.apply([("Description", "other")])
    assert not policy_changed(q, described)
    assert policy_changed(q, q.apply([("IPAccounting", "no")]))
    assert policy_changed(q, q.apply([("IPAddressDeny", "")]))  # a reset: nothing to parse
    assert attempts == [] and not described.ip_address_deny.parsed


def test_a_unit_file_parses_each_value_once(monkeypatch: pytest.MonkeyPatch) -> None:
    real = addresses.parse_words
    parsed: list[str] = []

    def counting(value: str, prop: str = "IPAddressAllow") -> list:
        parsed.append(value)
        return real(value, prop)

    monkeypatch.setattr(addresses, "parse_words", counting)
    lines = ["192.0.2.0/24 198.51.100.7", "2001:db8::/32", "203.0.113.9"]
    text = "[Service]\n" + "".join(f"IPAddressDeny={v}\n" for v in lines)
    text += "IPAddressAllow=198.51.100.7\n"
    uf = parse_unit_file(text, "/x/once.unit")
    assert sorted(parsed) == sorted([*lines, "198.51.100.7"])
    props = uf.properties()
    assert str(props.ip_address_deny) == "192.0.2.0/24 198.51.100.7/32 203.0.113.9/32 2001:db8::/32"
    assert len(parsed) == 4  # merging and reducing parsed nothing again
    # a bad value is still refused with its line, as before
    with pytest.raises(InvalidInput, match=r"^/x/once.unit:3: invalid address 'bogus'"):
        parse_unit_file("[Service]\nIPAddressDeny=192.0.2.1\nIPAddressDeny=bogus\n", "/x/once.unit")


def test_canonical_text_equality_is_list_equality() -> None:
    a = AddressList.parse("192.0.2.0/24 192.0.2.7 2001:db8::/32")
    b = AddressList.parse("2001:db8::/32 192.0.2.0/24")  # .7 is covered: the same list
    c = AddressList.parse("192.0.2.0/25 2001:db8::/32")
    lazy = AddressList.from_canonical(str(b))
    assert a == b == lazy and hash(a) == hash(lazy)
    assert lazy != c and c != lazy
    assert a.extend(c) == AddressList.from_canonical(str(a)).extend(c)


def test_a_unit_directory_is_checked_without_making_networks(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipacctd.policy.unitfile import load_unit_dir

    (tmp_path / "web.unit").write_text(
        "[Match]\nControlGroup=/x/web\n[Service]\n"
        f"IPAddressDeny={WORDS}\nIPAddressDeny=203.0.113.0/24\nIPAddressAllow=198.51.100.7\n"
    )
    bad = "[Service]\nIPAddressDeny=192.0.2.1\nIPAddressDeny=192.0.2.0/33 bogus\n"
    (tmp_path / "bad.unit").write_text(bad)
    attempts = refuse_parsing(monkeypatch)
    files, errors = load_unit_dir(tmp_path)
    # the bad file's error is the one a full parse gives
    assert [str(e) for e in errors] == [
        f"{tmp_path}/bad.unit:3: invalid address '192.0.2.0/33' in IPAddressDeny=: "
        "prefix length 33 is out of range 0..32"
    ]
    (web,) = files
    deny = web.properties().ip_address_deny
    assert web.cgroups == ("/x/web",) and bool(deny) and not deny.parsed
    assert attempts == []
    monkeypatch.undo()
    full = parse_unit_file((tmp_path / "web.unit").read_text(), str(tmp_path / "web.unit"))
    assert web.properties() == full.properties()
    assert deny.networks == full.properties().ip_address_deny.networks
    with pytest.raises(InvalidInput) as exc:
        parse_unit_file(bad, f"{tmp_path}/bad.unit")
    assert str(exc.value) == str(errors[0])
