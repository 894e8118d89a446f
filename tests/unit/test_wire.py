"""The replies the daemon marshals itself (:mod:`ipacctd.daemon.wire`) are, byte for byte, the
messages dbus-fast would send for the same values, and read back as those values."""

from __future__ import annotations

import io

import pytest
from dbus_fast import Message, MessageType
from dbus_fast._private.unmarshaller import Unmarshaller
from dbus_fast.errors import InvalidMessageError

from ipacctd.daemon import wire

U64_MAX = (1 << 64) - 1


def _call(serial: int = 7, sender: str = ":1.42") -> Message:
    call = Message(
        destination="org.ipacctd1",
        path="/org/ipacctd1",
        interface="org.ipacctd1.Manager",
        member="GetCounters",
        serial=serial,
    )
    call.sender = sender
    return call


def _same(ours: Message, values: list, signature: str, call: Message, serial: int) -> bytes:
    """Our message's bytes, after checking them against dbus-fast's for ``values`` (both
    with the serial the bus connection would give)."""
    ref = Message.new_method_return(call, signature, values)
    ours.serial = ref.serial = serial
    data = bytes(ours._marshall(False))
    assert data == bytes(ref._marshall(False))
    assert bytes(ours._marshall(True)) == data  # no fds: the same either way
    back = Unmarshaller(io.BytesIO(data)).unmarshall()
    assert back.message_type == MessageType.METHOD_RETURN
    assert (back.reply_serial, back.destination, back.signature) == (
        call.serial,
        call.sender,
        signature,
    )
    if signature == "a(sat)":
        assert [(n, list(v)) for n, v in back.body[0]] == [(n, list(v)) for n, v in values[0]]
    else:
        assert back.body == values
    return data


# Names of every length modulo 8 (each padding of the name and of the inner array), and
# one in UTF-8 of more bytes than characters.
NAMES = [f"u{'x' * i}.service" for i in range(17)] + ["wéb-ü.service", "a"]


@pytest.mark.parametrize("serial", [1, 0xFFFF_FFFF])
def test_counters_reply_is_dbus_fasts_message(serial: int) -> None:
    call = _call(serial=serial)
    rows = [
        (name, [(i * 1_000_003 + j) % (1 << 40) for j in range(12)]) for i, name in enumerate(NAMES)
    ]
    rows.append(("unknown.service", [U64_MAX] * 12))
    rows.append(("zero.service", [0] * 12))
    ours = wire.counters_reply(call, [wire.row_head(n) + wire.row_counts(v) for n, v in rows])
    _same(ours, [rows], "a(sat)", call, serial)


def test_rows_concatenate_in_any_order() -> None:
    """A row's bytes do not depend on where it stands (it starts and ends 8-aligned): rows
    made once are reused as units come and go."""
    made = {
        n: wire.row_head(n) + wire.row_counts(list(range(i, i + 12))) for i, n in enumerate(NAMES)
    }
    for order in (NAMES, NAMES[::-1], NAMES[1::2]):
        call = _call()
        values = [[(n, list(range(NAMES.index(n), NAMES.index(n) + 12))) for n in order]]
        _same(wire.counters_reply(call, [made[n] for n in order]), values, "a(sat)", call, 9)


def test_empty_replies() -> None:
    call = _call()
    _same(wire.counters_reply(call, []), [[]], "a(sat)", call, 3)
    _same(wire.string_reply(call, []), [""], "s", call, 3)
    _same(wire.string_reply(call, [b"", b""]), [""], "s", call, 3)


def test_string_reply_in_pieces_is_the_whole_string() -> None:
    text = '[{"unit": {"name": "wéb.service"}, "x": "' + "y" * 5000 + '"}, {}]'
    data = text.encode()
    for cut in (1, 7, 4096):
        pieces = [data[i : i + cut] for i in range(0, len(data), cut)]
        call = _call(serial=11)
        _same(wire.string_reply(call, pieces), [text], "s", call, 12)


def test_a_reply_to_a_caller_without_a_name_and_header_fields() -> None:
    """A call without sender (a peer-to-peer connection): no destination field; the header
    size found before the body was written still holds."""
    call = _call(sender=None)
    _same(wire.string_reply(call, [b"ok"]), ["ok"], "s", call, 5)


def test_too_large_a_reply_is_the_calls_error(monkeypatch) -> None:
    monkeypatch.setattr(wire, "MAX_MESSAGE", 4096)
    with pytest.raises(InvalidMessageError, match="exceeds maximum"):
        wire.string_reply(_call(), [b"x" * 5000])
    wire.string_reply(_call(), [b"x" * 1000])  # below it: fine
