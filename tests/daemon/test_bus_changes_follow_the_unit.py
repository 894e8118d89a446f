"""A change through the daemon's bus (start, set-property, stop, reset, attach) has the
registry read again the unit it changed, not every unit: a full pass (``Registry.sync``:
the state and pin directories listed, every record stat'ed) held each change's reply for
~60 ms at 10,000 units (bench/results-daemon.txt, "run via daemon ms"). A reload, which
may change any unit, still makes the full pass.

The daemon's own objects, with real units in the kernel: its registry and bus service on
a recording connection (the caller's credentials stood in for: root, no owner), the
registry's passes counted.
"""

from __future__ import annotations

import asyncio

import pytest
from daemon_support import BUS_NAME, MANAGER, ROOT, Recorder
from dbus_fast import Message, MessageType, Variant

from ipacctd.daemon.bus import BusService, unit_path
from ipacctd.daemon.config import DaemonConfig
from ipacctd.daemon.service import Daemon

pytestmark = pytest.mark.kernel

DENY = "198.51.100.7"


def _call(member: str, signature: str, body: list, path: str = ROOT,
          iface: str = MANAGER) -> Message:
    msg = Message(destination=BUS_NAME, path=path, interface=iface, member=member,
                  signature=signature, body=body, serial=7)
    msg.sender = ":1.9"
    return msg


async def _ask(service: BusService, bus: Recorder, call: Message) -> Message:
    """The reply to ``call`` (the service answers it from a task of its own)."""
    bus.sent.clear()
    out = service._handle(call)
    if type(out) is Message:
        return out
    for _ in range(2000):  # bounded: 20 s
        replies = [m for m in bus.sent if m.reply_serial == call.serial]
        if replies and not service.tasks:
            return replies[0]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no reply to {call.member}: {bus.sent}")


def test_changes_read_the_unit_they_changed_and_a_reload_reads_all(inst, monkeypatch) -> None:
    mgr = inst.manager()
    for i in range(8):
        mgr.start_transient([("IPAddressDeny", DENY)], name=f"other{i}")
    d = Daemon(DaemonConfig(paths=inst.config(), bus="", listen=""))
    passes = []
    full = d.registry.sync

    def counted() -> None:
        passes.append(1)
        full()

    async def root(_msg: Message) -> int:
        return 0

    async def nobody(_msg: Message) -> None:
        return None

    async def scenario(service: BusService, bus: Recorder) -> None:
        reg = d.registry
        # A new unit (StartTransientUnit, a job as systemd-run's).
        items = [("IPAddressDeny", Variant("a(iayu)", [[2, bytes([198, 51, 100, 7]), 32]])),
                 ("Description", Variant("s", "made over the bus"))]
        reply = await _ask(service, bus, _call("StartTransientUnit", "ssa(sv)a(sa(sv))",
                                               ["made", "fail", items, []]))
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        assert reg.units["made.service"].status.unit.description == "made over the bus"
        # Its description changed (SetUnitProperties), by the short name.
        reply = await _ask(service, bus, _call(
            "SetUnitProperties", "sba(sv)", ["made", True, [("Description", Variant("s", "x"))]]))
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        assert reg.units["made.service"].status.unit.description == "x"
        # The same through the unit's object.
        reply = await _ask(service, bus, _call(
            "SetProperties", "ba(sv)", [True, [("Description", Variant("s", "y"))]],
            path=unit_path("made.service"), iface="org.ipacctd1.Unit"))
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        assert reg.units["made.service"].status.unit.description == "y"
        # Reset: gone from the registry at once.
        reply = await _ask(service, bus, _call("ResetUnit", "s", ["made.service"]))
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        assert "made.service" not in reg.units
        # A refused change (no such unit) changes nothing and passes over nothing.
        reply = await _ask(service, bus, _call("ResetUnit", "s", ["nope"]))
        assert reply.message_type == MessageType.ERROR
        assert passes == [], "a change about one unit read every unit"
        assert sorted(reg.units) == [f"other{i}.service" for i in range(8)]
        # A reload may change any unit: the full pass.
        reply = await _ask(service, bus, _call("Reload", "", []))
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        assert passes == [1]

    try:
        d.registry.sync()
        monkeypatch.setattr(d.registry, "sync", counted)
        bus = Recorder()
        service = BusService(bus, d.registry, "test", 0.2, lambda: None)
        monkeypatch.setattr(service, "caller_uid", root)
        monkeypatch.setattr(service, "caller_owner", nobody)
        asyncio.run(scenario(service, bus))
    finally:
        d.registry.close()
