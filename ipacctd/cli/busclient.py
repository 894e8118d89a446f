"""A blocking D-Bus client for the CLI: method calls, and the signals that end its jobs.

The daemon serves D-Bus with dbus-fast, which is asyncio's. A command that makes one call
does not need an event loop, and importing asyncio and dbus-fast costs it more than the rest
of ``set-property`` (~60-80 ms of CPU with Debian's python3; bench/results-largelists.txt,
rows "D-Bus client"). So the CLI speaks the wire protocol itself, with the socket and
struct modules: the D-Bus specification's "Message Protocol" (marshalling, the fixed
header, header fields) and "Authentication Protocol" (``EXTERNAL``: the kernel tells the
bus our uid), for the types ipacctd's API uses — every basic type, arrays, structs,
dict entries and variants. Messages are little-endian; replies are read in either order.
Unix sockets only (``unix:path=`` and ``unix:abstract=``): the system bus.
"""

from __future__ import annotations

# _socket, the C module under socket.py: the same socket object for what this client does
# (connect, sendall, recv, timeouts), without the enums and the selectors module socket.py
# builds and imports (~4-6 ms of a command's start-up, like typing's; bench/cli_phases.py).
import _socket
import os
import struct
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see ipacctd.record)
if TYPE_CHECKING:
    from typing import Any

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
NO_REPLY_EXPECTED = 0x1
BUS = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"
MAX_MESSAGE = 128 << 20  # the specification's limit

#: Header field codes and their types.
PATH, INTERFACE, MEMBER, ERROR_NAME, REPLY_SERIAL, DESTINATION, SENDER, SIGNATURE = range(1, 9)
_FIELD_TYPES = {
    PATH: "o",
    INTERFACE: "s",
    MEMBER: "s",
    ERROR_NAME: "s",
    REPLY_SERIAL: "u",
    DESTINATION: "s",
    SENDER: "s",
    SIGNATURE: "g",
    9: "u",
}

#: Fixed-size types: struct code and size (also their alignment).
_FIXED = {
    "y": ("B", 1),
    "b": ("I", 4),
    "n": ("h", 2),
    "q": ("H", 2),
    "i": ("i", 4),
    "u": ("I", 4),
    "x": ("q", 8),
    "t": ("Q", 8),
    "d": ("d", 8),
    "h": ("I", 4),
}
_ALIGN = {
    **{k: v[1] for k, v in _FIXED.items()},
    "s": 4,
    "o": 4,
    "g": 1,
    "a": 4,
    "(": 8,
    "{": 8,
    "v": 1,
}


class WireError(ConnectionError):
    """The bus sent what this client cannot read, or closed the connection (an OSError:
    the CLI reports it in one line, as any other failure of the connection)."""


class Variant:
    """A D-Bus variant: a value with its signature (``.signature``, ``.value``)."""

    __slots__ = ("signature", "value")

    def __init__(self, signature: str, value: Any) -> None:
        self.signature = signature
        self.value = value

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Variant)
            and self.signature == other.signature
            and self.value == other.value
        )

    def __repr__(self) -> str:
        return f"Variant({self.signature!r}, {self.value!r})"


class Message:
    """One D-Bus message, sent or received."""

    __slots__ = (
        "body",
        "destination",
        "error_name",
        "flags",
        "interface",
        "member",
        "message_type",
        "path",
        "reply_serial",
        "sender",
        "serial",
        "signature",
    )

    def __init__(
        self,
        message_type: int,
        *,
        path: str | None = None,
        interface: str | None = None,
        member: str | None = None,
        destination: str | None = None,
        signature: str = "",
        body: list[Any] | None = None,
        flags: int = 0,
    ) -> None:
        self.message_type = message_type
        self.flags = flags
        self.serial = 0
        self.path, self.interface, self.member = path, interface, member
        self.destination = destination
        self.error_name: str | None = None
        self.reply_serial: int | None = None
        self.sender: str | None = None
        self.signature = signature
        self.body = body if body is not None else []


# -- signatures ------------------------------------------------------------------------------


def split_signature(sig: str) -> list[str]:
    """The single complete types of a signature, in order."""
    out, i = [], 0
    while i < len(sig):
        j = _end_of(sig, i)
        out.append(sig[i:j])
        i = j
    return out


def _end_of(sig: str, i: int) -> int:
    """Index just past the single complete type starting at ``i``."""
    c = sig[i]
    if c == "a":
        return _end_of(sig, i + 1)
    if c in "({":
        close = ")" if c == "(" else "}"
        j = i + 1
        while sig[j] != close:
            j = _end_of(sig, j)
        return j + 1
    if c in _ALIGN:
        return i + 1
    raise WireError(f"unknown type {c!r} in signature {sig!r}")


# -- marshalling -----------------------------------------------------------------------------


def _pad(buf: bytearray, n: int) -> None:
    buf.extend(b"\0" * (-len(buf) % n))


def marshal(buf: bytearray, sig: str, values: list[Any]) -> None:
    """Append ``values`` (one per complete type of ``sig``) to ``buf``, which holds the
    message from its start (alignment counts from there)."""
    types = split_signature(sig)
    if len(types) != len(values):
        raise ValueError(f"signature {sig!r} has {len(types)} types, {len(values)} values given")
    for t, v in zip(types, values, strict=True):
        _marshal_one(buf, t, v)


def _marshal_one(buf: bytearray, t: str, v: Any) -> None:
    c = t[0]
    if c in _FIXED:
        code, size = _FIXED[c]
        _pad(buf, size)
        buf.extend(struct.pack("<" + code, int(v) if c == "b" else v))
    elif c in "so":
        data = v.encode()
        _pad(buf, 4)
        buf.extend(struct.pack("<I", len(data)) + data + b"\0")
    elif c == "g":
        data = v.encode()
        buf.extend(struct.pack("<B", len(data)) + data + b"\0")
    elif c == "v":
        if not isinstance(v, Variant):
            raise ValueError(f"a variant needs a Variant, not {type(v).__name__}")
        _marshal_one(buf, "g", v.signature)
        _marshal_one(buf, v.signature, v.value)
    elif c == "(":
        _pad(buf, 8)
        fields = split_signature(t[1:-1])
        if len(fields) != len(v):
            raise ValueError(f"struct {t} needs {len(fields)} fields, {len(v)} given")
        for ft, fv in zip(fields, v, strict=True):
            _marshal_one(buf, ft, fv)
    elif c == "a":
        elem = t[1:]
        _pad(buf, 4)
        at = len(buf)
        buf.extend(b"\0\0\0\0")
        _pad(buf, _ALIGN[elem[0]])  # even for an empty array
        start = len(buf)
        if elem[0] == "{":
            key_t, value_t = split_signature(elem[1:-1])
            for key, value in v.items():
                _pad(buf, 8)
                _marshal_one(buf, key_t, key)
                _marshal_one(buf, value_t, value)
        elif elem == "y":
            buf.extend(bytes(v))
        else:
            for item in v:
                _marshal_one(buf, elem, item)
        struct.pack_into("<I", buf, at, len(buf) - start)
    else:
        raise WireError(f"cannot marshal type {t!r}")


class _Reader:
    def __init__(self, data: bytes, order: str) -> None:
        self.data, self.pos, self.order = data, 0, order

    def align(self, n: int) -> None:
        self.pos += -self.pos % n

    def fixed(self, c: str) -> Any:
        code, size = _FIXED[c]
        self.align(size)
        (value,) = struct.unpack_from(self.order + code, self.data, self.pos)
        self.pos += size
        return bool(value) if c == "b" else value

    def read(self, t: str) -> Any:
        c = t[0]
        if c in _FIXED:
            return self.fixed(c)
        if c in "so":
            n = self.fixed("u")
            text = self.data[self.pos : self.pos + n].decode()
            self.pos += n + 1
            return text
        if c == "g":
            n = self.data[self.pos]
            text = self.data[self.pos + 1 : self.pos + 1 + n].decode()
            self.pos += n + 2
            return text
        if c == "v":
            sig = self.read("g")
            return Variant(sig, self.read(sig))
        if c == "(":
            self.align(8)
            return [self.read(ft) for ft in split_signature(t[1:-1])]
        if c == "a":
            n = self.fixed("u")
            elem = t[1:]
            self.align(_ALIGN[elem[0]])
            end = self.pos + n
            if elem == "y":
                self.pos = end
                return self.data[end - n : end]
            if elem[0] == "{":
                key_t, value_t = split_signature(elem[1:-1])
                out: dict[Any, Any] = {}
                while self.pos < end:
                    self.align(8)
                    key = self.read(key_t)
                    out[key] = self.read(value_t)
                return out
            items = []
            while self.pos < end:
                items.append(self.read(elem))
            return items
        raise WireError(f"cannot read type {t!r}")


def encode(msg: Message, serial: int) -> bytes:
    """The message on the wire, with ``serial``."""
    fields: list[tuple[int, Variant]] = []
    for code, value in (
        (PATH, msg.path),
        (INTERFACE, msg.interface),
        (MEMBER, msg.member),
        (DESTINATION, msg.destination),
    ):
        if value is not None:
            fields.append((code, Variant(_FIELD_TYPES[code], value)))
    if msg.signature:
        fields.append((SIGNATURE, Variant("g", msg.signature)))
    body = bytearray()
    marshal(body, msg.signature, msg.body)  # the body starts 8-aligned: same alignment
    head = bytearray(
        struct.pack("<cBBBII", b"l", msg.message_type, msg.flags, 1, len(body), serial)
    )
    marshal(head, "a(yv)", [fields])
    _pad(head, 8)
    return bytes(head + body)


def decode(data: bytes) -> Message:
    """A whole message read from the wire."""
    data = bytes(data)
    order = {b"l": "<", b"B": ">"}.get(data[:1])
    if order is None:
        raise WireError(f"bad endianness mark {data[:1]!r}")
    r = _Reader(data, order)
    r.pos = 1
    msg_type, flags, _version = r.fixed("y"), r.fixed("y"), r.fixed("y")
    body_len, serial = r.fixed("u"), r.fixed("u")
    fields = {code: v.value for code, v in r.read("a(yv)")}
    r.align(8)
    msg = Message(
        msg_type,
        path=fields.get(PATH),
        interface=fields.get(INTERFACE),
        member=fields.get(MEMBER),
        destination=fields.get(DESTINATION),
        signature=fields.get(SIGNATURE, ""),
        flags=flags,
    )
    msg.serial = serial
    msg.error_name = fields.get(ERROR_NAME)
    msg.reply_serial = fields.get(REPLY_SERIAL)
    msg.sender = fields.get(SENDER)
    body = _Reader(data[r.pos : r.pos + body_len], order)
    msg.body = [body.read(t) for t in split_signature(msg.signature)]
    return msg


# -- the connection --------------------------------------------------------------------------


def _socket_address(address: str) -> str:
    """The unix socket of a D-Bus address (its first unix entry)."""
    for entry in address.split(";"):
        kind, _, params = entry.partition(":")
        if kind != "unix":
            continue
        keys = dict(p.partition("=")[::2] for p in params.split(",") if p)
        if "path" in keys:
            return _unescape(keys["path"])
        if "abstract" in keys:
            return "\0" + _unescape(keys["abstract"])
    raise WireError(f"no unix socket in the D-Bus address {address!r}")


def _unescape(value: str) -> str:
    """A D-Bus address value with its %XX escapes undone."""
    if "%" not in value:
        return value
    out, i = bytearray(), 0
    while i < len(value):
        if value[i] == "%":
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out.extend(value[i].encode())
            i += 1
    return out.decode()


class Connection:
    """A blocking connection to a message bus: authenticated (EXTERNAL) and registered
    (``Hello``). Messages that arrive while a reply is awaited are kept (:attr:`queued`)."""

    def __init__(self, address: str, timeout: float) -> None:
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        self._serial = 0
        self._buf = b""
        self.queued: list[Message] = []
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(_socket_address(address))
            uid = str(os.geteuid()).encode().hex().encode()
            self.sock.sendall(b"\0AUTH EXTERNAL " + uid + b"\r\n")
            line = self._line(time.monotonic() + timeout)
            if not line.startswith(b"OK "):
                raise WireError(f"the bus refused authentication: {line[:200]!r}")
            self.sock.sendall(b"BEGIN\r\n")
            reply = self.call(
                Message(METHOD_CALL, path=BUS_PATH, interface=BUS, member="Hello", destination=BUS),
                timeout,
            )
            if reply.message_type != METHOD_RETURN:
                raise WireError(f"Hello failed: {reply.error_name}")
            self.unique_name = str(reply.body[0])
        except BaseException:
            self.sock.close()
            raise

    def _recv(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer from the bus in time")
        self.sock.settimeout(left)
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise WireError("the bus closed the connection")
        self._buf += chunk

    def _line(self, deadline: float) -> bytes:
        while b"\r\n" not in self._buf:
            if len(self._buf) > 4096:
                raise WireError("the bus sent no line")
            self._recv(deadline)
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def send(self, msg: Message) -> int:
        """Send ``msg``; its serial."""
        self._serial += 1
        msg.serial = self._serial
        self.sock.sendall(encode(msg, self._serial))
        return self._serial

    def receive(self, deadline: float) -> Message:
        """The next message (the queued ones first)."""
        if self.queued:
            return self.queued.pop(0)
        while len(self._buf) < 16:
            self._recv(deadline)
        order = "<" if self._buf[:1] == b"l" else ">"
        body_len, _serial, fields_len = struct.unpack_from(order + "III", self._buf, 4)
        total = 16 + fields_len + (-(16 + fields_len) % 8) + body_len
        if total > MAX_MESSAGE:
            raise WireError(f"a message of {total} bytes")
        while len(self._buf) < total:
            self._recv(deadline)
        data, self._buf = self._buf[:total], self._buf[total:]
        return decode(data)

    def call(self, msg: Message, timeout: float) -> Message:
        """Send a method call and return its reply (a return or an error); other messages
        meanwhile are queued."""
        return self.calls([msg], timeout)[0]

    def calls(self, msgs: list[Message], timeout: float) -> list[Message]:
        """Send method calls back to back, then return their replies, in the same order.

        The bus delivers one connection's messages in the order they were sent, and
        answers its own methods (AddMatch, GetConnectionUnixUser, ...) in that order too,
        so calls that do not depend on each other's answers need not wait for each other:
        each wait is a round trip through the bus daemon (~0.3 ms of a command here)."""
        serials = [self.send(msg) for msg in msgs]
        replies: dict[int, Message] = {}
        deadline = time.monotonic() + timeout
        held: list[Message] = []
        try:
            while len(replies) < len(serials):
                reply = self.receive(deadline)
                if reply.message_type in (METHOD_RETURN, ERROR) and reply.reply_serial in serials:
                    replies[reply.reply_serial] = reply
                else:
                    held.append(reply)
        finally:
            self.queued.extend(held)
        return [replies[s] for s in serials]

    def close(self) -> None:
        self.sock.close()
