"""Replies the daemon marshals itself: ``GetCounters`` and ``DescribeUnits`` of all units.

dbus-fast marshals a body from Python values on every send. For the two replies that grow
with the units that cost more than everything else they do (bench/results-daemon.txt, 10,000
units): ``GetCounters`` is 10,000 rows of a name and 12 u64, 1.28 MB, marshalled from
120,000 ints on every call although a row changes only when its unit's counters do; and
``DescribeUnits`` of all units is one 12.6 MB string, held as its parts, joined, encoded,
marshalled and copied behind the header: full-size copies side by side (the daemon's peak
RSS went from 79 to 107 MB; 12.6 MB more is one copy, this module's).

So these bodies are written here, into one ``bytearray`` that leaves room for the header
in front (:class:`MarshalledReturn`): the counters as rows marshalled once per change of a
unit's counters (:func:`row_head`, :func:`row_counts`: kept by the registry), the JSON
text unit by unit as it is made. dbus-fast still marshals the header — serial, reply
serial, destination, signature — as for any message, when it sends it
(``Message._marshall``, which its writer calls). The bytes are those dbus-fast would send
for the same values (tests/unit/test_wire.py compares them; tests/daemon/test_bus_replies.py
with real units): the D-Bus specification's marshalling, little-endian, with

* an ``s``: its length in bytes (u32), the UTF-8 bytes, a NUL;
* an ``a(sat)``: the length in bytes of its elements (u32), padding to 8 (a struct's
  alignment, present even when the array is empty), then each struct, 8-aligned: the
  name as an ``s``, padding to 4, the inner array's length (96) as a u32, padding to 8,
  the 12 u64. A row ends 8-aligned, so its bytes do not depend on where it stands: rows
  marshalled once can be concatenated in any order.

Alignment counts from the start of the message; the header is padded to 8, so from the
start of the body as well.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.errors import InvalidMessageError

#: The specification's limit on a message (header and body), which dbus-fast enforces too.
MAX_MESSAGE = 128 << 20

_U32 = struct.Struct("<I")
_COUNTS = struct.Struct("<12Q")
#: After an ``s`` that ends 4 past an 8-boundary / on one: the u32 96 (the byte length of
#: 12 u64), then the padding to 8 before the first u64.
_INNER = {0: _U32.pack(96) + b"\0" * 4, 4: _U32.pack(96)}

#: Per signature: the body value of an empty reply, and its marshalled size (see
#: :class:`MarshalledReturn`): an empty ``s`` is its length and its NUL; an empty array
#: its length and the padding to its element's alignment.
_EMPTY: dict[str, tuple[list[Any], int]] = {"s": ([""], 5), "a(sat)": ([[]], 8)}


def row_head(name: str) -> bytes:
    """The part of a counters row before the counters: the name and the inner array's
    length, padded (the same for every row of the unit: computed once per name)."""
    data = name.encode()
    head = _U32.pack(len(data)) + data + b"\0"
    head += b"\0" * (-len(head) % 4)
    return head + _INNER[len(head) % 8]


def row_counts(values: Sequence[int]) -> bytes:
    """The rest of a counters row: the 12 counters (u64 each). A row is its
    :func:`row_head` and this; its counters' part may be shared by rows of equal counters."""
    return _COUNTS.pack(*values)


class MarshalledReturn(Message):
    """A method return whose body this module writes into :attr:`buf` after room for
    the header (:meth:`body_start`), never built as Python values.

    The daemon's message handler sends it itself (dbus-fast sends a returned message only
    when its type is exactly ``Message``). dbus-fast's writer calls :meth:`_marshall` when
    it queues the message; the header is marshalled there by dbus-fast itself, for the
    body that stands in :attr:`body` (an empty value of the signature, whose marshalled
    bytes are cut off), and its body length set to the real one.
    """

    def __init__(self, call: Message, signature: str) -> None:
        empty, self._empty_len = _EMPTY[signature]
        super().__init__(
            message_type=MessageType.METHOD_RETURN,
            reply_serial=call.serial,
            destination=call.sender,
            signature=signature,
            body=empty,
        )
        # The header's size does not depend on the serial or the body's length (fixed-size
        # fields): measured once here, the body is written after it.
        self._head_len = len(Message._marshall(self, False)) - self._empty_len
        self.buf = bytearray(self._head_len)

    def body_start(self) -> int:
        """Where the body begins in :attr:`buf` (a multiple of 8)."""
        return self._head_len

    def finish(self) -> MarshalledReturn:
        """Check the size once the body is written (the call's error, not the writer's)."""
        if len(self.buf) > MAX_MESSAGE:
            raise InvalidMessageError(
                f"message size exceeds maximum {MAX_MESSAGE}: {len(self.buf)} bytes"
            )
        return self

    def _marshall(self, negotiate_unix_fd: bool) -> bytearray:  # type: ignore[override]
        whole = Message._marshall(self, negotiate_unix_fd)  # the header, the empty body
        n = len(whole) - self._empty_len
        if n != self._head_len:  # cannot be: its fields are those it was measured with
            raise InvalidMessageError("the header changed size after the body was written")
        buf = self.buf
        buf[:n] = whole[:n]
        buf[4:8] = _U32.pack(len(buf) - n)  # the body's length (fixed header, offset 4)
        return buf


def counters_reply(call: Message, rows: Iterable[bytes]) -> MarshalledReturn:
    """An ``a(sat)`` return of these rows (each row's :func:`row_head` and
    :func:`row_counts` one after the other), in this order."""
    reply = MarshalledReturn(call, "a(sat)")
    buf = reply.buf
    start = len(buf)
    buf += b"\0" * 8  # the array's length (set below), padding to 8
    for row in rows:
        buf += row
    buf[start : start + 4] = _U32.pack(len(buf) - start - 8)
    return reply.finish()


def string_reply(call: Message, parts: Iterable[bytes]) -> MarshalledReturn:
    """An ``s`` return of the concatenation of ``parts`` (UTF-8 without NUL: JSON text,
    whose ``json.dumps`` escapes every control character), each appended as it comes: the
    text is never whole anywhere but in the message."""
    reply = MarshalledReturn(call, "s")
    buf = reply.buf
    start = len(buf)
    buf += b"\0" * 4  # the length, set below
    for part in parts:
        buf += part
    buf[start : start + 4] = _U32.pack(len(buf) - start - 4)
    buf += b"\0"
    return reply.finish()
