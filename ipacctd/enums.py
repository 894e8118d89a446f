"""ipacctd's enumerations: what it uses of ``enum.IntEnum`` and ``enum.StrEnum``, without
:mod:`enum`.

Why not :mod:`enum` (Debian's python3.11, measured back to back): importing it takes
~1.2 ms, and the six enums of :mod:`ipacctd.bpf.types` another ~0.8 ms even when made with
``enum._simple_enum`` (the standard library's fast path) — ~3 ms of the ~27 ms an
``ipacctd run`` spends in Python, for 14 classes of constants. And in 3.11 each access to a
member through its class (``Jmp.JA``) calls a descriptor; the assembler makes a few hundred
of them for each program. Here a class of constants is made in ~10 µs and its members are
plain class attributes.

What is kept, as the enums had it (tests/unit/test_enums.py holds each class to the enum
:mod:`enum` makes from the same members):

* members are instances of their class and of ``int`` (:class:`IntEnum`) or ``str``
  (:class:`StrEnum`): they compare, hash, format and encode (JSON, D-Bus) as their value;
  ``str()`` and ``format()`` give the value, ``repr()`` is ``<Class.NAME: value>``;
* ``.name`` and ``.value``; ``Class(value)`` and ``Class[name]`` find a member
  (``ValueError`` / ``KeyError`` otherwise); iteration and ``len()`` in definition order;
  a second name for a value is an alias of the first member, as in :mod:`enum`;
* copy and pickle give the member itself.

Not kept (nothing here uses them): ``enum.auto``, ``Flag`` arithmetic, ``_missing_``,
methods on members, ``isinstance(m, enum.Enum)``. A member is defined by a class
attribute whose name does not start with ``_`` and whose value is an ``int`` (or ``str``);
anything else in the class body (a docstring, a method) stays what it is.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see ipacctd.record)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


class EnumType(type):
    """The class of an enumeration: makes the members, looks them up, iterates them."""

    _member_map_: dict[str, Any]
    _value2member_map_: dict[Any, Any]
    _members_: tuple[Any, ...]

    def __new__(mcls, name: str, bases: tuple[type, ...], ns: dict[str, Any]) -> EnumType:
        cls = super().__new__(mcls, name, bases, ns)
        value_type = next((b for b in cls.__mro__ if b in (int, str)), None)
        by_name: dict[str, Any] = {}
        by_value: dict[Any, Any] = {}
        canonical: list[Any] = []
        for key, value in ns.items():
            if key.startswith("_") or value_type is None or type(value) is not value_type:
                continue
            member = by_value.get(value)
            if member is None:  # a second name for a value is an alias of the first member
                member = value_type.__new__(cls, value)
                member._name_ = key
                member._value_ = value
                by_value[value] = member
                canonical.append(member)
            by_name[key] = member
            type.__setattr__(cls, key, member)
        cls._member_map_ = by_name
        cls._value2member_map_ = by_value
        cls._members_ = tuple(canonical)
        return cls

    def __call__(cls, value: Any) -> Any:
        try:
            return cls._value2member_map_[value]
        except (KeyError, TypeError):
            raise ValueError(f"{value!r} is not a valid {cls.__qualname__}") from None

    def __getitem__(cls, name: str) -> Any:
        return cls._member_map_[name]

    def __iter__(cls) -> Iterator[Any]:
        return iter(cls._members_)

    def __reversed__(cls) -> Iterator[Any]:
        return reversed(cls._members_)

    def __len__(cls) -> int:
        return len(cls._members_)

    def __contains__(cls, value: object) -> bool:
        """A member of this class, or the value of one (Python 3.12's enum)."""
        if isinstance(value, cls):
            return True
        try:
            return value in cls._value2member_map_
        except TypeError:  # unhashable
            return False

    def __setattr__(cls, name: str, value: object) -> None:
        if name in cls.__dict__.get("_member_map_", ()):
            raise AttributeError(f"cannot reassign member {name!r}")
        super().__setattr__(name, value)

    def __delattr__(cls, name: str) -> None:
        if name in cls.__dict__.get("_member_map_", ()):
            raise AttributeError(f"cannot delete member {name!r}")
        super().__delattr__(name)

    def __repr__(cls) -> str:
        return f"<enum {cls.__name__!r}>"


class _Member:
    """What every member has, whatever its value's type."""

    __slots__ = ()
    _name_: str
    _value_: Any

    @property
    def name(self) -> str:
        return self._name_

    @property
    def value(self) -> Any:
        return self._value_

    def __reduce_ex__(self, protocol: object) -> tuple[Any, tuple[Any]]:
        return type(self), (self._value_,)  # unpickled by Class(value): the member itself

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: object) -> Any:
        return self


class IntEnum(_Member, int, metaclass=EnumType):
    """Constants that are ints (``enum.IntEnum``'s behaviour; see the module's docstring)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self._name_}: {int.__repr__(self)}>"

    __str__ = int.__repr__
    __format__ = int.__format__


class StrEnum(_Member, str, metaclass=EnumType):
    """Constants that are strings (``enum.StrEnum``'s behaviour; see the module's docstring)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self._name_}: {str.__repr__(self)}>"

    __str__ = str.__str__
    __format__ = str.__format__
