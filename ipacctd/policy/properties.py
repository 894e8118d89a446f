"""The one table of unit properties ipacctd knows, and the immutable :class:`Properties`.

Every property has a parser (``str`` → value), a formatter (value → ``systemctl show``
string), a D-Bus signature, a default, a flag saying whether repeated assignments append
(address lists and filter paths) or replace (everything else) and a one-line doc.

Assignment semantics, for text (``NAME=VALUE``) and D-Bus alike:

* an empty (whitespace-only) value resets the property to its default; for D-Bus, an empty
  array resets an appending property;
* otherwise an appending property appends, the others replace.

Everything is validated before anything is applied: :meth:`Properties.apply` and
:meth:`Properties.apply_dbus` return a new object or raise
:class:`~ipacctd.errors.InvalidInput`, never a half-applied one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

from ipacctd.enums import StrEnum
from ipacctd.errors import InvalidInput
from ipacctd.policy.addresses import EMPTY, AddressList
from ipacctd.record import Record, replace

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

MAX_DESCRIPTION_LENGTH = 256

_TRUE_WORDS = frozenset({"1", "yes", "y", "true", "t", "on"})
_FALSE_WORDS = frozenset({"0", "no", "n", "false", "f", "off"})


class DenyMode(StrEnum):
    """What a match of ``IPAddressDeny=`` does."""

    ENFORCE = "enforce"
    """Drop the packet."""
    AUDIT = "audit"
    """Let the packet pass but count it as would-be-denied."""


def parse_boolean(value: str, prop: str = "IPAccounting") -> bool:
    """Parse a systemd boolean word (yes/no/true/false/on/off/1/0/y/n/t/f, any case).

    Raises:
        InvalidInput: naming the word and the property.
    """
    word = value.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise InvalidInput(
        f"invalid boolean {value.strip()!r} in {prop}=: expected yes/no, true/false, on/off or 1/0"
    )


def format_boolean(value: bool) -> str:
    """Format a boolean as ``systemctl show`` does (``yes``/``no``)."""
    return "yes" if value else "no"


def parse_deny_mode(value: str, prop: str = "IPAddressDenyMode") -> DenyMode:
    """Parse ``enforce`` or ``audit``.

    Raises:
        InvalidInput: naming the word and the property.
    """
    word = value.strip()
    try:
        return DenyMode(word)
    except ValueError:
        allowed = ", ".join(m.value for m in DenyMode)
        raise InvalidInput(f"invalid mode {word!r} in {prop}=: expected one of {allowed}") from None


def normalize_absolute_path(value: str, what: str) -> str:
    """Validate and normalise an absolute path (collapse ``//`` and ``/./``, strip a final ``/``).

    ``what`` names the setting in error messages (e.g. ``"IPIngressFilterPath="``).

    Raises:
        InvalidInput: for a relative path, a ``..`` component or a NUL character.
    """
    path = value.strip()
    if "\0" in path:
        raise InvalidInput(f"invalid path {path!r} in {what}: must not contain NUL")
    if not path.startswith("/"):
        raise InvalidInput(f"invalid path {path!r} in {what}: must be absolute")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidInput(f"invalid path {path!r} in {what}: must not contain '..'")
    return "/" + "/".join(parts)


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _parse_filter_path(prop: str) -> Callable[[str], tuple[str, ...]]:
    def parse(value: str) -> tuple[str, ...]:
        return (normalize_absolute_path(value, prop + "="),)

    return parse


def parse_description(value: str, prop: str = "Description") -> str:
    """Validate a description: one line, no control characters, at most 256 characters.

    Leading and trailing whitespace is stripped.

    Raises:
        InvalidInput: naming the problem and the property.
    """
    text = value.strip()
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InvalidInput(
            f"invalid {prop}= {text[:40]!r}: must be a single line without control characters"
        )
    if len(text) > MAX_DESCRIPTION_LENGTH:
        raise InvalidInput(
            f"invalid {prop}= {text[:40]!r}...: longer than {MAX_DESCRIPTION_LENGTH} characters"
        )
    return text


def _expect(prop: str, ok: bool, expected: str, value: Any) -> None:
    if not ok:
        raise InvalidInput(
            f"invalid D-Bus value for {prop}: expected {expected}, got {type(value).__name__} "
            f"{value!r:.60}"
        )


def _replace_value(_old: Any, new: Any) -> Any:
    return new


class PropertySpec(Record):
    """One row of the property table.

    ``parse`` turns a non-empty text value into the value of *this* assignment (for an
    appending property: the items to append); ``combine`` merges it into the old value
    (default: the new value replaces the old). ``to_store`` is the value as the unit's
    metadata stores it, when not ``to_json``'s (``from_json`` reads both); ``combine_all``
    is ``combine`` of many new values at once (when faster than one at a time).
    """

    _fields = ("name", "attr", "parse", "format", "signature", "default", "appends", "doc",
               "to_dbus", "from_dbus", "to_json", "from_json", "combine", "to_store",
               "combine_all")
    __slots__ = _fields
    name: str
    attr: str
    parse: Callable[[str], Any]
    format: Callable[[Any], str]
    signature: str
    default: Any
    appends: bool
    doc: str
    to_dbus: Callable[[Any], Any]
    from_dbus: Callable[[Any], Any]
    to_json: Callable[[Any], Any]
    from_json: Callable[[Any], Any]
    combine: Callable[[Any, Any], Any]
    to_store: Callable[[Any], Any] | None
    combine_all: Callable[[Any, list[Any]], Any] | None

    def __init__(
        self,
        name: str,
        attr: str,
        parse: Callable[[str], Any],
        format: Callable[[Any], str],
        signature: str,
        default: Any,
        appends: bool,
        doc: str,
        to_dbus: Callable[[Any], Any],
        from_dbus: Callable[[Any], Any],
        to_json: Callable[[Any], Any],
        from_json: Callable[[Any], Any],
        combine: Callable[[Any, Any], Any] = _replace_value,
        to_store: Callable[[Any], Any] | None = None,
        combine_all: Callable[[Any, list[Any]], Any] | None = None,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "name", name)
        set_(self, "attr", attr)
        set_(self, "parse", parse)
        set_(self, "format", format)
        set_(self, "signature", signature)
        set_(self, "default", default)
        set_(self, "appends", appends)
        set_(self, "doc", doc)
        set_(self, "to_dbus", to_dbus)
        set_(self, "from_dbus", from_dbus)
        set_(self, "to_json", to_json)
        set_(self, "from_json", from_json)
        set_(self, "combine", combine)
        set_(self, "to_store", to_store)
        set_(self, "combine_all", combine_all)

    def assign_dbus(self, old: Any, signature: str, value: Any) -> Any:
        """Apply one D-Bus assignment to ``old`` after checking signature and value type."""
        if signature != self.signature:
            raise InvalidInput(
                f"invalid D-Bus signature {signature!r} for {self.name}: "
                f"expected {self.signature!r}"
            )
        new = self.from_dbus(value)
        if self.appends:
            return self.combine(old, new) if new else self.default
        return new


def _digest(text: str) -> str:
    """The SHA-256 of an address list's text (for non-empty lists only)."""
    return _sha256()(text.encode()).hexdigest()


def _sha256() -> Any:
    """SHA-256 from the interpreter's own module (built in: ~0.1 ms to import), not through
    :mod:`hashlib`, which loads OpenSSL first (~4-12 ms of a run with a deny list). The
    same digest; hashlib where there is no such module."""
    try:
        from _sha256 import sha256  # Python 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[no-redef]  # Python 3.12 and later
        except ImportError:
            from hashlib import sha256  # type: ignore[no-redef]
    return sha256


def _address_list_to_json(value: AddressList) -> Any:
    """An address list as the metadata stores it: its canonical text and that text's
    SHA-256, so that reading it back needs no parsing (see :func:`_address_list_from_json`);
    an empty list as ``[]``. (A list of 200k words took 1 s to write with the metadata's
    indented JSON and 75 ms to read; one string takes milliseconds.) A list the store keeps
    in a file of its own stays as the store named it: not read, hashed or written again."""
    kept = getattr(value, "kept", None)  # ipacctd.manager.store.StoredList
    if kept is not None:
        return kept
    text = str(value)
    return {"canonical": text, "sha256": _digest(text)} if text else []


def _address_list_from_json(value: Any, name: str) -> AddressList:
    """Inverse of :func:`_address_list_to_json`. Canonical text that matches its digest
    is what ipacctd wrote: it is kept as text and parsed only when the networks are needed
    (:meth:`AddressList.from_canonical`). A list of words (metadata of earlier versions) is
    parsed now.

    Raises:
        InvalidInput: for another shape, or text that does not match its digest (edited by
            hand or damaged: the policy the kernel enforces is not known to be this one).
    """
    if isinstance(value, list) and all(isinstance(w, str) for w in value):
        return AddressList.parse(" ".join(value), name) if value else EMPTY
    if isinstance(value, AddressList):  # kept in a file, handed over by the store (unread)
        return value
    if not (
        isinstance(value, dict)
        and isinstance(value.get("canonical"), str)
        and isinstance(value.get("sha256"), str)
    ):
        raise InvalidInput(
            f"invalid JSON value for {name}: expected a list of strings or an object with "
            "'canonical' and 'sha256'"
        )
    text = value["canonical"]
    if _digest(text) != value["sha256"]:
        raise InvalidInput(
            f"invalid JSON value for {name}: its canonical text does not match its sha256 "
            "(edited by hand or damaged)"
        )
    return AddressList.from_canonical(text, name)


def _address_spec(name: str, attr: str, doc: str) -> PropertySpec:
    def from_dbus(value: Any) -> AddressList:
        return AddressList.from_dbus(value, name)

    def from_json(value: Any) -> AddressList:
        return _address_list_from_json(value, name)

    return PropertySpec(
        name=name,
        attr=attr,
        parse=lambda text: AddressList.parse(text, name),
        format=str,
        signature="a(iayu)",
        default=EMPTY,
        appends=True,
        doc=doc,
        to_dbus=AddressList.to_dbus,
        from_dbus=from_dbus,
        to_json=lambda v: str(v).split(),
        from_json=from_json,
        to_store=_address_list_to_json,
        combine=lambda old, new: old.extend(new),
        combine_all=lambda old, news: AddressList.joined([old, *news]),
    )


def _filter_path_spec(name: str, attr: str, doc: str) -> PropertySpec:
    parse_one = _parse_filter_path(name)

    def from_list(value: Any, kind: str) -> tuple[str, ...]:
        ok = isinstance(value, list | tuple) and all(isinstance(p, str) for p in value)
        if kind == "D-Bus":
            _expect(name, ok, "an array of strings", value)
        elif not ok:
            raise InvalidInput(f"invalid JSON value for {name}: expected a list of strings")
        return _dedupe(p for v in value for p in parse_one(v))

    return PropertySpec(
        name=name,
        attr=attr,
        parse=parse_one,
        format=" ".join,
        signature="as",
        default=(),
        appends=True,
        doc=doc,
        to_dbus=list,
        from_dbus=lambda v: from_list(v, "D-Bus"),
        to_json=list,
        from_json=lambda v: from_list(v, "JSON"),
        combine=lambda old, new: _dedupe((*old, *new)),
    )


def _bool_from(kind: str, name: str) -> Callable[[Any], bool]:
    def convert(value: Any) -> bool:
        if kind == "D-Bus":
            _expect(name, isinstance(value, bool), "a boolean", value)
        elif not isinstance(value, bool):
            raise InvalidInput(f"invalid JSON value for {name}: expected a boolean")
        return value

    return convert


def _str_from(kind: str, name: str, parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if kind == "D-Bus":
            _expect(name, isinstance(value, str), "a string", value)
        elif not isinstance(value, str):
            raise InvalidInput(f"invalid JSON value for {name}: expected a string")
        return parse(value)

    return convert


def _mode_from_text(value: str) -> DenyMode:
    return DenyMode.ENFORCE if not value.strip() else parse_deny_mode(value)


#: The property table, in ``systemctl show`` order.
PROPERTIES: Mapping[str, PropertySpec] = {
    spec.name: spec
    for spec in (
        PropertySpec(
            name="Description",
            attr="description",
            parse=parse_description,
            format=str,
            signature="s",
            default="",
            appends=False,
            doc="Free text describing the unit (one line, at most 256 characters).",
            to_dbus=str,
            from_dbus=_str_from("D-Bus", "Description", parse_description),
            to_json=str,
            from_json=_str_from("JSON", "Description", parse_description),
        ),
        PropertySpec(
            name="IPAccounting",
            attr="ip_accounting",
            parse=parse_boolean,
            format=format_boolean,
            signature="b",
            default=True,
            appends=False,
            doc="Count IP packets and bytes in and out (ipacctd counts by default).",
            to_dbus=bool,
            from_dbus=_bool_from("D-Bus", "IPAccounting"),
            to_json=bool,
            from_json=_bool_from("JSON", "IPAccounting"),
        ),
        _address_spec(
            "IPAddressAllow",
            "ip_address_allow",
            "Networks always allowed (ingress source, egress destination); wins over deny.",
        ),
        _address_spec(
            "IPAddressDeny",
            "ip_address_deny",
            "Networks dropped (ingress source, egress destination) unless allowed.",
        ),
        PropertySpec(
            name="IPAddressDenyMode",
            attr="ip_address_deny_mode",
            parse=parse_deny_mode,
            format=str,
            signature="s",
            default=DenyMode.ENFORCE,
            appends=False,
            doc="enforce: drop denied packets; audit: pass them but count them as would-drop.",
            to_dbus=str,
            from_dbus=_str_from("D-Bus", "IPAddressDenyMode", _mode_from_text),
            to_json=str,
            from_json=_str_from("JSON", "IPAddressDenyMode", parse_deny_mode),
        ),
        _filter_path_spec(
            "IPIngressFilterPath",
            "ip_ingress_filter_path",
            "Absolute bpffs paths of pinned cgroup_skb programs run on ingress.",
        ),
        _filter_path_spec(
            "IPEgressFilterPath",
            "ip_egress_filter_path",
            "Absolute bpffs paths of pinned cgroup_skb programs run on egress.",
        ),
    )
}


def _unknown_property(name: str) -> InvalidInput:
    import difflib  # only for this error message

    known = ", ".join(PROPERTIES)
    close = difflib.get_close_matches(name, PROPERTIES, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return InvalidInput(f"unknown property {name!r}{hint}; known properties: {known}")


def property_spec(name: str) -> PropertySpec:
    """Return the table row of property ``name``.

    Raises:
        InvalidInput: for an unknown name; the message lists the known names.
    """
    spec = PROPERTIES.get(name)
    if spec is None:
        raise _unknown_property(name)
    return spec


def parse_assignment(text: str) -> tuple[str, str]:
    """Split ``NAME=VALUE`` into ``(NAME, VALUE)``; the name must be a known property.

    Whitespace around the name is stripped; the value is kept as given.

    Raises:
        InvalidInput: for a missing ``=``, an empty name or an unknown property.
    """
    name, eq, value = text.partition("=")
    name = name.strip()
    if not eq:
        raise InvalidInput(f"invalid assignment {text!r}: expected NAME=VALUE")
    if not name:
        raise InvalidInput(f"invalid assignment {text!r}: missing property name before '='")
    property_spec(name)
    return name, value


class Assignment(tuple[str, str]):
    """``(NAME, VALUE)`` as given, with VALUE parsed already (see :meth:`parse`): applying
    it does not parse the value again, so a 100k-prefix list given with ``-p`` or in a unit
    file is parsed once, when it is validated. Everywhere else it is the plain pair."""

    value: Any

    def __new__(cls, name: str, text: str, value: Any) -> Assignment:
        self = super().__new__(cls, (name, text))
        self.value = value
        return self

    @classmethod
    def parse(cls, name: str, text: str, defer: bool = False) -> Assignment:
        """Validate and parse one assignment; an empty value stands for the default.
        ``defer``: an address list is validated now and parsed when first used
        (:meth:`AddressList.from_words`).

        Raises:
            InvalidInput: for an unknown name or an invalid value (the message names it).
        """
        spec = property_spec(name)
        if not isinstance(text, str):
            raise InvalidInput(f"invalid value for {name}=: expected a string")
        if not text.strip():
            return cls(name, text, spec.default)
        if defer and spec.default is EMPTY:
            return cls(name, text, AddressList.from_words(text, name))
        return cls(name, text, spec.parse(text))


class Properties(Record):
    """The values of all properties of one unit; immutable, every field has its default."""

    _fields = ("description", "ip_accounting", "ip_address_allow", "ip_address_deny",
               "ip_address_deny_mode", "ip_ingress_filter_path", "ip_egress_filter_path")
    __slots__ = _fields
    description: str
    ip_accounting: bool
    ip_address_allow: AddressList
    ip_address_deny: AddressList
    ip_address_deny_mode: DenyMode
    ip_ingress_filter_path: tuple[str, ...]
    ip_egress_filter_path: tuple[str, ...]

    def __init__(
        self,
        description: str = "",
        ip_accounting: bool = True,
        ip_address_allow: AddressList = EMPTY,
        ip_address_deny: AddressList = EMPTY,
        ip_address_deny_mode: DenyMode = DenyMode.ENFORCE,
        ip_ingress_filter_path: tuple[str, ...] = (),
        ip_egress_filter_path: tuple[str, ...] = (),
    ) -> None:
        set_ = object.__setattr__
        set_(self, "description", description)
        set_(self, "ip_accounting", ip_accounting)
        set_(self, "ip_address_allow", ip_address_allow)
        set_(self, "ip_address_deny", ip_address_deny)
        set_(self, "ip_address_deny_mode", ip_address_deny_mode)
        set_(self, "ip_ingress_filter_path", ip_ingress_filter_path)
        set_(self, "ip_egress_filter_path", ip_egress_filter_path)

    def get(self, name: str) -> Any:
        """Return the value of property ``name`` (e.g. ``"IPAddressDeny"``)."""
        return getattr(self, property_spec(name).attr)

    def apply(self, assignments: Iterable[tuple[str, str]]) -> Properties:
        """Apply ``(NAME, VALUE)`` assignments in order and return the new properties.

        Appending properties append, the others replace; an empty value resets to the
        default. ``self`` is unchanged. An :class:`Assignment` brings its parsed value.

        Raises:
            InvalidInput: for an unknown name or invalid value; nothing is applied.
        """
        values: dict[str, Any] = {}
        # Appended items wait here and are merged once per property: a unit file with
        # 16k IPAddressDeny= lines costs one reduction, not one per line (quadratic).
        pending: dict[str, list[Any]] = {}
        specs: dict[str, PropertySpec] = {}
        for item in assignments:
            if not isinstance(item, Assignment):
                name, text = item
                item = Assignment.parse(name, text)
            spec = property_spec(item[0])
            specs[spec.attr] = spec
            if spec.appends and item[1].strip():
                pending.setdefault(spec.attr, []).append(item.value)
                continue
            pending.pop(spec.attr, None)  # a reset (or a replacing value) drops them
            values[spec.attr] = item.value  # the default, for a reset
        for attr, items in pending.items():
            old = values.get(attr, getattr(self, attr))
            spec = specs[attr]
            values[attr] = (
                spec.combine_all(old, items)
                if spec.combine_all is not None
                else functools.reduce(spec.combine, items, old)
            )
        return replace(self, **values)

    def apply_dbus(self, items: Iterable[tuple[str, str, Any]]) -> Properties:
        """Apply SetUnitProperties-style ``(name, signature, value)`` items in order.

        The signature must be the property's (see :data:`PROPERTIES`) and the value must
        have the matching Python type (``b`` bool, ``s`` str, ``as`` list of str,
        ``a(iayu)`` list of (int, bytes, int)). An empty array resets an appending property,
        a non-empty one appends. ``self`` is unchanged.

        Raises:
            InvalidInput: for an unknown name, a wrong signature or a bad value; nothing is
                applied.
        """
        values: dict[str, Any] = {}
        for item in items:
            if not isinstance(item, tuple | list) or len(item) != 3:
                raise InvalidInput(
                    f"invalid D-Bus property item {item!r:.60}: expected (name, signature, value)"
                )
            name, signature, value = item
            if not isinstance(name, str) or not isinstance(signature, str):
                raise InvalidInput(
                    f"invalid D-Bus property item {item!r:.60}: name and signature must be strings"
                )
            spec = property_spec(name)
            old = values.get(spec.attr, getattr(self, spec.attr))
            values[spec.attr] = spec.assign_dbus(old, signature, value)
        return replace(self, **values)

    def to_show(self) -> dict[str, str]:
        """Return the properties as ``systemctl show`` prints them, keyed by name."""
        return {name: spec.format(getattr(self, spec.attr)) for name, spec in PROPERTIES.items()}

    def to_dbus(self) -> dict[str, tuple[str, Any]]:
        """Return ``{name: (signature, value)}`` ready to wrap in D-Bus variants."""
        return {
            name: (spec.signature, spec.to_dbus(getattr(self, spec.attr)))
            for name, spec in PROPERTIES.items()
        }

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (for the metadata file); see :meth:`from_json`."""
        return {name: spec.to_json(getattr(self, spec.attr)) for name, spec in PROPERTIES.items()}

    def to_store(self) -> dict[str, Any]:
        """Like :meth:`to_json`, in the form the unit's metadata keeps (address lists as
        canonical text with a digest, read back unparsed); :meth:`from_json` reads both."""
        return {
            name: (spec.to_store or spec.to_json)(getattr(self, spec.attr))
            for name, spec in PROPERTIES.items()
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Properties:
        """Rebuild properties from :meth:`to_json` or :meth:`to_store` output; missing names
        take their defaults. Equal JSON gives the same (immutable) object while it is in
        :data:`_FROM_JSON`.

        Raises:
            InvalidInput: for a non-object, an unknown name or a bad value.
        """
        if not isinstance(d, Mapping):
            raise InvalidInput("invalid properties JSON: expected an object")
        key = _json_key(d)
        if key is not None:
            known = _FROM_JSON.get(key)
            if known is not None:
                return known
        values: dict[str, Any] = {}
        for name, value in d.items():
            spec = property_spec(name)
            values[spec.attr] = spec.from_json(value)
        made = cls(**values)
        if key is not None:
            if len(_FROM_JSON) >= _FROM_JSON_MAX:
                _FROM_JSON.clear()
            _FROM_JSON[key] = made
        return made

    def has_firewall(self) -> bool:
        """Whether a firewall program is needed: a non-empty deny list or filter paths."""
        return bool(
            self.ip_address_deny or self.ip_ingress_filter_path or self.ip_egress_filter_path
        )


#: Properties rebuilt from JSON, by that JSON (:func:`_json_key`). Units of one policy — the
#: cgroups of one glob unit file, the containers of one image — share one Properties and its
#: address lists instead of holding one each (~300 bytes a unit in the daemon, which keeps
#: every unit: 3 MB at 10,000; bench/results-daemon.txt), and a list's text is checked
#: against its digest once, not once per unit read. Sharing is safe: Properties are frozen
#: and an AddressList's lazily parsed networks are the same for equal text. Bounded: emptied
#: when full (policies beyond this many at once are rare; each change makes a new one).
_FROM_JSON: dict[tuple[Any, ...], Properties] = {}
_FROM_JSON_MAX = 1024


def _json_key(d: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """A hashable key for properties JSON, each value with its type (``True`` is not ``1``);
    None when a value is not plain JSON (a list the store keeps in its own file, handed over
    as an object: large and read only where needed, so not worth keeping here)."""
    items: list[Any] = []
    for name, value in d.items():
        if isinstance(value, dict):
            inner = tuple((k, type(v).__name__, v) for k, v in sorted(value.items()))
            if not all(type(v) in _PLAIN for _, _, v in inner):
                return None
            items.append((name, "dict", inner))
        elif isinstance(value, list):
            if not all(type(v) is str for v in value):
                return None
            items.append((name, "list", tuple(value)))
        elif type(value) in _PLAIN:
            items.append((name, type(value).__name__, value))
        else:
            return None
    return tuple(items)


_PLAIN = frozenset({str, int, float, bool, type(None)})
