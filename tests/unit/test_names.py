"""Unit name validation and transient names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipacctd.errors import InvalidInput
from ipacctd.policy.names import (
    MAX_NAME_LENGTH,
    MAX_PIN_NAME_LENGTH,
    pin_name,
    tmp_pin_name,
    tmp_pin_pid,
    transient_name,
    unpin_name,
    validate_unit_name,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("nginx", "nginx.service"),
        ("nginx.service", "nginx.service"),
        ("session-1.scope", "session-1.scope"),
        ("org.example.web", "org.example.web.service"),
        ("getty@tty1.service", "getty@tty1.service"),
        ("getty@tty1", "getty@tty1.service"),
        ("a:b_c\\x2d.service", "a:b_c\\x2d.service"),
        ("run-u7", "run-u7.service"),
        ("x" * (MAX_NAME_LENGTH - len(".service")), "x" * (MAX_NAME_LENGTH - 8) + ".service"),
    ],
)
def test_valid(name: str, expected: str) -> None:
    assert validate_unit_name(name) == expected


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "must not be empty"),
        (".", "must not be '.' or '..'"),
        ("..", "must not be '.' or '..'"),
        (".hidden", "must not start with '.'"),
        ("-dash", "must not start with '-'"),
        ("a/b", "must not contain '/'"),
        ("a\x00b", "must not contain NUL"),
        ("a b", "character ' ' is not allowed"),
        ("nginx!", "character '!' is not allowed"),
        ("café", "character 'é' is not allowed"),
        ("sshd.socket", "unit type is not supported"),
        ("system.slice", "unit type is not supported"),
        (".service", "must not start with '.'"),
        ("getty@.service", "is a template"),
        ("@x.service", "must not start with '@'"),
        ("a@b@c.service", "at most one '@'"),
        ("x" * (MAX_NAME_LENGTH - 7), f"longer than {MAX_NAME_LENGTH}"),
    ],
)
def test_invalid(name: str, rule: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_unit_name(name)
    message = str(info.value)
    assert repr(name) in message
    assert rule in message


def test_not_a_string() -> None:
    with pytest.raises(InvalidInput):
        validate_unit_name(None)  # type: ignore[arg-type]


def test_transient_name() -> None:
    assert transient_name([]) == "run-u1.service"
    assert transient_name(["run-u1.service", "run-u2.service"]) == "run-u3.service"
    assert transient_name(["run-u2.service", "nginx.service"]) == "run-u1.service"
    taken = [f"run-u{n}.service" for n in range(1, 500)]
    assert transient_name(taken) == "run-u500.service"
    assert transient_name(iter(taken)) == "run-u500.service"


@given(st.sets(st.integers(1, 60)))
def test_transient_name_is_first_free(used: set[int]) -> None:
    name = transient_name(f"run-u{n}.service" for n in used)
    n = int(name.removeprefix("run-u").removesuffix(".service"))
    assert n not in used
    assert all(k in used for k in range(1, n))
    assert validate_unit_name(name) == name


@given(st.text(max_size=30))
def test_random_names_validate_or_raise(name: str) -> None:
    try:
        result = validate_unit_name(name)
    except InvalidInput:
        return
    assert result.endswith((".service", ".scope"))
    assert validate_unit_name(result) == result
    assert len(result) <= MAX_NAME_LENGTH


def test_tmp_pin_name_and_its_pid_round_trip() -> None:
    name = tmp_pin_name(pin_name("web.service"), 4194304)
    assert name == "~tmp-web_dservice-4194304"
    assert tmp_pin_pid(name) == 4194304
    assert len(tmp_pin_name("x" * MAX_PIN_NAME_LENGTH, 4194304)) == 255
    assert tmp_pin_pid(pin_name("web.service")) is None  # a unit's own pin directory
    assert tmp_pin_pid("~tmp-web_dservice-") is None


def _unpin_by_scan(pin: str) -> str | None:
    """The escapes read one character at a time (what unpin_name must agree with)."""
    out, i = [], 0
    while i < len(pin):
        if pin[i] == "_":
            nxt = pin[i + 1 : i + 2]
            if nxt not in ("_", "d"):
                return None
            out.append("_" if nxt == "_" else ".")
            i += 2
        else:
            out.append(pin[i])
            i += 1
    return "".join(out)


def test_unpin_name_inverts_pin_name_and_refuses_other_names() -> None:
    import itertools

    for n in range(7):  # every string of up to 6 characters over the escapes' alphabet
        for chars in itertools.product("_d.x", repeat=n):
            s = "".join(chars)
            if "." not in s:  # a bpffs name (pin_name's output never holds a dot)
                assert unpin_name(s) == _unpin_by_scan(s), s
            assert unpin_name(pin_name(s)) == s, s
    assert unpin_name("web_dservice") == "web.service"
    assert unpin_name("a_b") is None
    assert unpin_name("a_") is None
