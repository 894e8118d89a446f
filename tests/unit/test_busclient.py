"""The CLI's blocking D-Bus client (ipacctd/cli/busclient.py) against dbus-fast, the
daemon's library, and against a real ``dbus-daemon``:

* what it marshals is byte for byte what dbus-fast marshals, for the calls the CLI makes
  (their signatures and values as ipacctd sends them), and it reads what dbus-fast writes;
* it connects to a bus (EXTERNAL authentication, ``Hello``), calls the bus, gets errors as
  errors, and receives the signals it asked for, sent by a dbus-fast connection;
* the CLI's way to the daemon loads neither asyncio nor dbus-fast.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from dbus_fast import Message as FastMessage
from dbus_fast import Variant as FastVariant
from support import PrivateBus

from ipacctd.cli import busclient as bc
from ipacctd.cli.remote import assignments_to_dbus

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fast(value):
    """A value of ours as dbus-fast takes it (its Variant, lists for structs)."""
    if isinstance(value, bc.Variant):
        return FastVariant(value.signature, fast(value.value))
    if isinstance(value, tuple | list):
        return [fast(v) for v in value]
    if isinstance(value, dict):
        return {k: fast(v) for k, v in value.items()}
    return value


ITEMS = assignments_to_dbus(
    [
        ("Description", "web: x"),
        ("IPAddressDeny", "192.0.2.0/24 2001:db8::/32"),
        ("IPAddressAllow", ""),
        ("IPAccounting", "no"),
        ("IPIngressFilterPath", "/sys/fs/bpf/f"),
    ]
)

CALLS = [
    ("SetUnitProperties", "sba(sv)", ["web.service", True, ITEMS]),
    (
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        ["", "fail", [*ITEMS, ("ExecCommand", bc.Variant("as", ["sleep", "1"]))], []],
    ),
    ("AttachUnit", "ssa(sv)", ["/x.slice/y", "", ITEMS]),
    ("StopUnit", "ss", ["web.service", "replace"]),
    ("InspectUnit", "sb", ["web.service", False]),
    ("DescribeUnits", "asu", [["a.service", "b.service"], 5]),
    ("Reload", "", []),
    (
        "Odd",
        "a{sv}(ynqiuxtd)ao",
        [{"k": bc.Variant("t", 2**63)}, (1, -2, 3, -4, 5, -6, 7, 0.5), ["/a", "/b/c"]],
    ),
]


@pytest.mark.parametrize("member,sig,body", CALLS, ids=[c[0] for c in CALLS])
def test_marshalling_is_dbus_fasts(member, sig, body) -> None:
    msg = bc.Message(
        bc.METHOD_CALL,
        destination=":1.7",
        path="/org/ipacctd1",
        interface="org.ipacctd1.Manager",
        member=member,
        signature=sig,
        body=body,
    )
    ours = bc.encode(msg, 42)
    theirs = FastMessage(
        destination=":1.7",
        path="/org/ipacctd1",
        interface="org.ipacctd1.Manager",
        member=member,
        signature=sig,
        body=fast(body),
        serial=42,
    )._marshall(False)
    assert ours == theirs
    back = bc.decode(theirs)
    assert (back.member, back.signature, back.serial, back.path) == (
        member,
        sig,
        42,
        "/org/ipacctd1",
    )
    assert fast(back.body) == fast(body)


def test_a_reply_and_an_error_as_dbus_fast_writes_them() -> None:
    props = {
        "StateDirectory": FastVariant("s", "/run/ipacctd"),
        "Units": FastVariant("u", 3),
        "Names": FastVariant("as", ["a", "b"]),
    }
    reply = FastMessage.new_method_return(
        FastMessage(destination=":1.1", path="/", member="GetAll", serial=9, sender=":1.2"),
        "a{sv}",
        [props],
    )
    reply.serial = 10
    got = bc.decode(reply._marshall(False))
    assert got.message_type == bc.METHOD_RETURN and got.reply_serial == 9
    assert {k: v.value for k, v in got.body[0].items()} == {
        "StateDirectory": "/run/ipacctd",
        "Units": 3,
        "Names": ["a", "b"],
    }
    err = FastMessage.new_error(
        FastMessage(path="/", member="X", serial=4, sender=":1.2"),
        "org.ipacctd1.Error.NotFound",
        "unit x not found",
    )
    err.serial = 11
    got = bc.decode(err._marshall(False))
    assert got.message_type == bc.ERROR and got.error_name == "org.ipacctd1.Error.NotFound"
    assert got.body == ["unit x not found"]


def test_on_a_real_bus() -> None:
    bus = PrivateBus()
    try:
        conn = bc.Connection(bus.address, 5)
        try:
            assert conn.unique_name.startswith(":1.")

            def bus_call(member, sig="", body=()):
                return conn.call(
                    bc.Message(
                        bc.METHOD_CALL,
                        destination=bc.BUS,
                        path=bc.BUS_PATH,
                        interface=bc.BUS,
                        member=member,
                        signature=sig,
                        body=list(body),
                    ),
                    5,
                )

            names = bus_call("ListNames").body[0]
            assert conn.unique_name in names
            assert bus_call("GetConnectionUnixUser", "s", [conn.unique_name]).body == [os.geteuid()]
            missing = bus_call("GetNameOwner", "s", ["org.ipacctd1"])
            assert missing.message_type == bc.ERROR
            assert missing.error_name == "org.freedesktop.DBus.Error.NameHasNoOwner"
            rule = "type='signal',interface='org.ipacctd1.Manager',member='JobRemoved'"
            assert bus_call("AddMatch", "s", [rule]).message_type == bc.METHOD_RETURN

            async def emit() -> None:
                from dbus_fast.aio import MessageBus

                sender = await MessageBus(bus_address=bus.address).connect()
                try:
                    await sender.send(
                        FastMessage.new_signal(
                            "/org/ipacctd1",
                            "org.ipacctd1.Manager",
                            "JobRemoved",
                            "uoss",
                            [7, "/org/ipacctd1/job/7", "web.service", "done"],
                        )
                    )
                    await sender.call(
                        FastMessage(
                            destination="org.freedesktop.DBus",
                            path="/org/freedesktop/DBus",
                            interface="org.freedesktop.DBus",
                            member="GetId",
                        )
                    )  # the signal went first
                finally:
                    sender.disconnect()

            asyncio.run(emit())
            import time

            deadline = time.monotonic() + 5
            while True:
                msg = conn.receive(deadline)
                if msg.message_type == bc.SIGNAL and msg.member == "JobRemoved":
                    break
            assert msg.body == [7, "/org/ipacctd1/job/7", "web.service", "done"]

            # Calls sent back to back: each reply to its own call, in order, errors among
            # them; a signal arriving meanwhile is kept for receive().
            def m(member, sig="", body=()):
                return bc.Message(bc.METHOD_CALL, destination=bc.BUS, path=bc.BUS_PATH,
                                  interface=bc.BUS, member=member, signature=sig,
                                  body=list(body))

            asyncio.run(emit())  # another JobRemoved on its way while the calls go out
            got = conn.calls([m("GetNameOwner", "s", ["org.ipacctd1"]), m("ListNames"),
                              m("GetConnectionUnixUser", "s", [conn.unique_name]),
                              m("GetNameOwner", "s", [conn.unique_name])], 5)
            assert [g.message_type for g in got] == [bc.ERROR, *[bc.METHOD_RETURN] * 3]
            assert conn.unique_name in got[1].body[0]
            assert got[2].body == [os.geteuid()] and got[3].body == [conn.unique_name]
            msg = conn.receive(time.monotonic() + 5)
            assert msg.message_type == bc.SIGNAL and msg.member == "JobRemoved"
        finally:
            conn.close()
    finally:
        bus.close()


def test_the_cli_reaches_the_daemon_without_asyncio() -> None:
    code = (
        "import sys\n"
        "import ipacctd.cli.remote, ipacctd.cli.busclient\n"
        "print(sorted(m for m in ('asyncio', 'dbus_fast') if m in sys.modules))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
