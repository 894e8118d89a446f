"""JSON for the unit records, without :mod:`json` and :mod:`re`: what ``ipacctd run`` writes
and ``status`` reads, through CPython's own C parts of :mod:`json` (``_json``).

Why not :mod:`json` itself: its package imports :mod:`re` (``json.decoder``,
``json.scanner`` and ``json.encoder`` compile patterns at import) — 3.0 ms of every
``ipacctd run`` in ``python3 -X importtime`` (json 1.5, re and its parts 1.5), a command whose
whole budget is ~40 ms (issue 13, bench/cli.py), and nothing else on that path needs
:mod:`re`. The work itself stays in the same code :mod:`json` uses:

* :func:`loads` is ``json.loads`` for a ``str`` (or UTF-8 ``bytes``): the C scanner
  ``_json.make_scanner`` with :mod:`json`'s defaults (strict strings, ``int``/``float``,
  ``NaN``/``Infinity`` accepted), whitespace skipped before and after the value as
  ``json.decoder`` does; anything else raises :class:`ValueError` (the scanner's own
  ``json.JSONDecodeError`` where it has one; it imports ``json.decoder`` only to raise it).
  Unlike ``json.loads`` it reads no UTF-16/32 ``bytes``: ipacctd writes ASCII.
* :func:`dumps` is ``json.dumps(obj, indent=1, sort_keys=True)`` to the byte — the
  records' format — for dicts (``str``, ``int``, ``float``, ``bool`` and ``None`` keys, as
  :mod:`json` converts them), lists, tuples, strings (``_json.encode_basestring_ascii``,
  :mod:`json`'s C escaper), ints, floats, booleans and None (subclasses as :mod:`json`
  writes them: an ``IntEnum`` as its number). Anything else is a :class:`TypeError`, as
  :mod:`json` says. It keeps no list of the containers it is inside: the records are
  trees (a cycle ends in :class:`RecursionError`, not :mod:`json`'s ``ValueError``).

``tests/unit/test_jsontext.py`` holds both to :mod:`json` on random documents and on the
error cases; ``tests/unit/test_startup_imports.py`` keeps :mod:`json` and :mod:`re` off the
run path.
"""

from __future__ import annotations

try:
    from _json import encode_basestring_ascii as _string
    from _json import make_scanner as _make_scanner
except ImportError:  # an interpreter without json's C parts: json's own, re and all
    from json.encoder import encode_basestring_ascii as _string  # type: ignore[assignment]
    from json.scanner import make_scanner as _make_scanner  # type: ignore[assignment]

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see ipacctd.record)
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"  # json.decoder.WHITESPACE: [ \t\n\r]*
_INFINITY = float("inf")
_CONSTANTS = {"-Infinity": -_INFINITY, "Infinity": _INFINITY, "NaN": float("nan")}


class _Context:
    """What ``_json.make_scanner`` reads off a ``json.JSONDecoder()``: its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__
    memo: dict = {}  # read by json's pure-Python scanner only (the fallback above)


_scan = _make_scanner(_Context())


def loads(data: str | bytes | bytearray) -> Any:
    """The value of one JSON document (see the module's docstring)."""
    if isinstance(data, (bytes, bytearray)):
        # json.loads reads a UTF-8 BOM in bytes as the encoding's mark (it decodes with
        # utf-8-sig: one BOM at the start dropped). Dropped here, then decoded as UTF-8: the
        # same, without looking up that codec (its module: ~0.3 ms of every `run`).
        # UnicodeDecodeError is a ValueError, as json's is.
        text = (data[3:] if data[:3] == b"\xef\xbb\xbf" else data).decode("utf-8")
    elif isinstance(data, str):
        text = data
    else:
        raise TypeError(
            f"the JSON object must be str, bytes or bytearray, not {type(data).__name__}"
        )
    if text.startswith("\ufeff"):
        raise ValueError("Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)")
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as err:
        raise ValueError(f"Expecting value: char {err.value}") from None
    if text[end:].strip(_WHITESPACE):
        extra = end + len(text[end:]) - len(text[end:].lstrip(_WHITESPACE))
        raise ValueError(f"Extra data: char {extra}")
    return value


def _float(o: float) -> str:
    """json.encoder's floatstr with allow_nan."""
    if o != o:
        return "NaN"
    if o == _INFINITY:
        return "Infinity"
    if o == -_INFINITY:
        return "-Infinity"
    return float.__repr__(o)


def _key(k: object) -> str:
    """A dict key as json.encoder writes it (before escaping): a string as it is, the
    other scalars as their values are written."""
    if isinstance(k, str):
        return k
    text = _scalar(k)
    if text is None:
        raise TypeError(f"keys must be str, int, float, bool or None, not {type(k).__name__}")
    return text


def _scalar(o: object) -> str | None:
    """A value that is not a container, as json.encoder writes it; None for containers."""
    if isinstance(o, str):
        return _string(o)
    if o is None:
        return "null"
    if o is True:
        return "true"
    if o is False:
        return "false"
    if isinstance(o, int):
        return int.__repr__(o)
    if isinstance(o, float):
        return _float(o)
    return None


def _encode(o: object, level: int, out: list[str]) -> None:
    text = _scalar(o)
    if text is not None:
        out.append(text)
        return
    if isinstance(o, (list, tuple)):
        brackets, items = "[]", (("", v) for v in o)
    elif isinstance(o, dict):
        brackets = "{}"
        items = ((_string(_key(k)) + ": ", v) for k, v in sorted(o.items()))
    else:
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")
    if not o:
        out.append(brackets)
        return
    inner = "\n" + " " * (level + 1)
    out.append(brackets[0])
    sep = inner
    for head, value in items:
        out.append(sep)
        out.append(head)
        sep = "," + inner
        _encode(value, level + 1, out)
    out.append("\n" + " " * level + brackets[1])


def dumps(obj: object) -> str:
    """``json.dumps(obj, indent=1, sort_keys=True)`` (see the module's docstring)."""
    out: list[str] = []
    _encode(obj, 0, out)
    return "".join(out)
