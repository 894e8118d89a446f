"""ipacctd.jsontext is json.dumps(indent=1, sort_keys=True) and json.loads, without json's
package (and re): held to :mod:`json` itself on random documents, on every single-character
damage of them, and on the error cases."""

from __future__ import annotations

import enum
import json
import math
import random

import pytest

from ipacctd import jsontext

STRINGS = [
    "",
    "a",
    "run-u1.service",
    'q"uote',
    "back\\slash",
    "tab\there",
    "nl\n",
    "\x00\x1f",
    "é",
    "日本",
    "\U0001f600",
    "\ud800",
    "/sys/fs/cgroup/unified/x.scope",
    " ",
]
FLOATS = [0.0, -0.0, 1.5, -2.25, 1e300, 5e-324, 1796062678.3173404, math.inf, -math.inf, math.nan]
INTS = [0, 1, -1, 2**63 - 1, -(2**63), 2**64 + 5, 10**30]


class Kind(enum.IntEnum):
    A = 3


def _value(rng: random.Random, depth: int) -> object:
    roll = rng.random()
    if depth >= 4 or roll < 0.45:
        pick = rng.randrange(7)
        if pick == 0:
            return rng.choice(STRINGS) + rng.choice(STRINGS)
        if pick == 1:
            return rng.choice(INTS) if rng.random() < 0.5 else rng.randrange(-1000, 1000)
        if pick == 2:
            return rng.choice(FLOATS) if rng.random() < 0.5 else rng.uniform(-1e6, 1e6)
        return [None, True, False, Kind.A][pick - 3]
    n = rng.randrange(0, 5)
    if roll < 0.7:
        seq = [_value(rng, depth + 1) for _ in range(n)]
        return tuple(seq) if rng.random() < 0.2 else seq
    return {rng.choice(STRINGS) + str(rng.randrange(50)): _value(rng, depth + 1) for _ in range(n)}


def _documents(count: int, seed: int) -> list[object]:
    rng = random.Random(seed)
    return [_value(rng, 0) for _ in range(count)]


def _same(a: object, b: object) -> bool:
    """Equal as JSON values (NaN equal to NaN), by json's own text of them."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_dumps_writes_what_json_writes() -> None:
    for doc in _documents(3000, 13):
        assert jsontext.dumps(doc) == json.dumps(doc, indent=1, sort_keys=True)


def test_dumps_converts_keys_as_json_does() -> None:
    doc = {7: "int", 2.5: "float", True: "t", None: "n", Kind.A: "enum", -math.inf: "inf"}
    with pytest.raises(TypeError):
        json.dumps(doc, indent=1, sort_keys=True)  # mixed key types do not sort
    with pytest.raises(TypeError):
        jsontext.dumps(doc)
    for key in (7, 2.5, True, False, None, Kind.A, math.nan):
        assert jsontext.dumps({key: [key]}) == json.dumps({key: [key]}, indent=1, sort_keys=True)


@pytest.mark.parametrize("bad", [{1, 2}, b"bytes", object(), {"k": {1}}, [complex(1, 2)]])
def test_dumps_refuses_what_json_refuses(bad: object) -> None:
    with pytest.raises(TypeError):
        json.dumps(bad, indent=1, sort_keys=True)
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsontext.dumps(bad)
    with pytest.raises(TypeError):
        jsontext.dumps({("tuple", "key"): 1})


def test_loads_reads_what_json_reads() -> None:
    for i, doc in enumerate(_documents(1500, 17)):
        for text in (
            json.dumps(doc),
            json.dumps(doc, indent=i % 3, sort_keys=True),
            json.dumps(doc, ensure_ascii=False),
            " \n\t" + json.dumps(doc, separators=(",", ":")) + "\r\n ",
        ):
            assert _same(jsontext.loads(text), json.loads(text)), text
            raw = text.encode("utf-8", "surrogatepass") if "\ud800" in text else text.encode()
            if "\ud800" not in text:  # a lone surrogate is no UTF-8: both refuse (below)
                assert _same(jsontext.loads(raw), json.loads(raw))


def test_loads_agrees_with_json_on_every_damaged_document() -> None:
    """Each document's text with one character replaced, removed or doubled: both accept
    it with the same value, or both refuse it with a ValueError."""
    rng = random.Random(29)
    alphabet = list('{}[]",:0123456789.eE+-tfnrulsaNI \\/bu\n\x01é')
    checked = refused = 0
    for doc in _documents(150, 31):
        text = json.dumps(doc, indent=1, sort_keys=True)
        for _ in range(40):
            i = rng.randrange(len(text))
            how = rng.randrange(3)
            if how == 0:
                damaged = text[:i] + rng.choice(alphabet) + text[i + 1 :]
            elif how == 1:
                damaged = text[:i] + text[i + 1 :]
            else:
                damaged = text[:i] + text[i] + text[i:]
            try:
                expected = json.loads(damaged)
            except ValueError:
                with pytest.raises(ValueError):
                    jsontext.loads(damaged)
                refused += 1
            else:
                assert _same(jsontext.loads(damaged), expected), damaged
            checked += 1
    assert checked == 6000 and refused > 1000  # the damage reached the parser


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "{",
        "[1,]",
        '{"a" 1}',
        "01",
        "1 2",
        '{"a": 1} x',
        "nul",
        "'a'",
        '"\x01"',
        '"\\x"',
        "[1e]",
        "-",
        "\ufeff{}",
        "NaNa",
        '{"a":1,}',
        "[" * 3 + "]" * 2,
    ],
)
def test_loads_refuses_what_json_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        jsontext.loads(text)


def test_loads_bytes_as_json_does() -> None:
    assert jsontext.loads(b'\xef\xbb\xbf{"a": 1}') == json.loads(b'\xef\xbb\xbf{"a": 1}')
    with pytest.raises(ValueError):
        jsontext.loads(b'{"a": "\xff"}')  # not UTF-8
    with pytest.raises(TypeError):
        jsontext.loads(5)  # type: ignore[arg-type]
    assert math.isnan(jsontext.loads("NaN")) and jsontext.loads("-Infinity") == -math.inf
    big = "[" + ",".join(str(10**40 + i) for i in range(3)) + "]"
    assert jsontext.loads(big) == json.loads(big)
