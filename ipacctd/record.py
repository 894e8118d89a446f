"""Plain value classes: what ``@dataclass`` gave ipacctd, for a fraction of the start-up.

Importing :mod:`dataclasses` imports :mod:`inspect` (and with it ast, dis, tokenize,
linecache): ~8 ms of every command; and every ``@dataclass`` compiles its generated
methods at import (~0.2 ms a class, 17 classes on the path of ``ipacctd run``). A
:class:`Record` costs neither: a subclass lists its fields in ``__slots__`` (in order)
and writes its ``__init__`` by hand — compiled once into the ``.pyc`` like any other
code; the rest, the same for every record, is here:

* ``==`` compares the fields (those not named in ``_no_compare``) of two records of the
  same class, as a dataclass does; a frozen record (the default) hashes them too, a
  mutable one (``class T(Record, frozen=False)``) is unhashable, as a dataclass is;
* a frozen record refuses assignment and deletion (:class:`FrozenError`, an
  :class:`AttributeError` as dataclasses' ``FrozenInstanceError`` is): its ``__init__``
  sets its fields with ``object.__setattr__``;
* ``repr`` is ``Name(field=value, ...)`` (but for those named in ``_no_repr``);
* :func:`replace`, :func:`fields` and :func:`asdict` stand for :mod:`dataclasses`' own
  (``replace`` calls ``__init__``, so its checks run); copy and pickle work
  (``__reduce__``).
"""

from __future__ import annotations

import operator

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~2 ms)
if TYPE_CHECKING:
    from typing import Any, TypeVar

    R = TypeVar("R", bound="Record")


class FrozenError(AttributeError):
    """Assignment to a field of a frozen record."""


def _refuse_set(self: Record, name: str, value: object) -> None:
    raise FrozenError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")


def _refuse_del(self: Record, name: str) -> None:
    raise FrozenError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")


def _rebuild(cls: type[Record], values: tuple[Any, ...]) -> Record:
    obj = cls.__new__(cls)
    for name, value in zip(cls._fields, values, strict=True):
        object.__setattr__(obj, name, value)
    return obj


class Record:
    """Base of ipacctd's value classes (see the module's docstring)."""

    __slots__ = ()
    #: The fields, in order (a subclass's ``__slots__``).
    _fields: tuple[str, ...] = ()
    #: Fields left out of ``==`` and the hash (``field(compare=False)``).
    _no_compare: tuple[str, ...] = ()
    #: Fields left out of ``repr`` (``field(repr=False)``).
    _no_repr: tuple[str, ...] = ()
    _key: Any = staticmethod(lambda _obj: ())
    _values: Any = staticmethod(lambda _obj: ())

    def __init_subclass__(cls, frozen: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Listed in _fields (and __slots__ = _fields): a linter sorts a __slots__ literal.
        cls._fields = tuple(cls.__dict__.get("_fields", ()))
        cls.__match_args__ = cls._fields
        compared = [f for f in cls._fields if f not in cls._no_compare]
        # attrgetter of several names gives a tuple; of one, the value (compared alike)
        cls._key = staticmethod(operator.attrgetter(*compared) if compared else (lambda _o: ()))
        cls._values = staticmethod(
            operator.attrgetter(*cls._fields) if cls._fields else (lambda _o: ())
        )
        if frozen:
            cls.__setattr__ = _refuse_set  # type: ignore[assignment]
            cls.__delattr__ = _refuse_del  # type: ignore[assignment]
        else:
            cls.__hash__ = None  # type: ignore[assignment]  # mutable: unhashable

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._key(self) == self._key(other)  # type: ignore[no-any-return]
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key(self))

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{f}={getattr(self, f)!r}" for f in self._fields if f not in self._no_repr
        )
        return f"{type(self).__qualname__}({inner})"

    def __reduce__(self) -> tuple[Any, ...]:
        values = self._values(self)
        return _rebuild, (type(self), values if len(self._fields) != 1 else (values,))


def replace(obj: R, **changes: Any) -> R:
    """A copy of ``obj`` with some fields changed (``dataclasses.replace``)."""
    for f in obj._fields:
        if f not in changes:
            changes[f] = getattr(obj, f)
    return type(obj)(**changes)


def fields(obj: Record | type[Record]) -> tuple[str, ...]:
    """The names of the fields, in order."""
    return obj._fields


def asdict(obj: Record) -> dict[str, Any]:
    """Field name → value (shallow: ipacctd's records hold values, not records)."""
    return {f: getattr(obj, f) for f in obj._fields}
