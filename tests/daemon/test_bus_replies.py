"""``GetCounters`` and ``DescribeUnits`` as the daemon marshals them itself
(:mod:`ipacctd.daemon.wire`, issue 13 item 6), with real units: programs in the kernel,
processes sending UDP datagrams to test addresses on the ``lo`` of a private network
namespace, so that every counter has an exact expected value.

* In the daemon's own objects (its registry and bus service, a recording connection): the
  replies are byte for byte the messages dbus-fast marshalled from Python values before
  (the old builders are kept here as the reference), for idle, running and failed units,
  deny lists with denied packets, a list kept in a list file; and after more traffic, and
  after a unit's metadata changed, the next reply shows the change (a cache that never
  let go would not).
* Over a real bus, from a running daemon: dbus-fast, busctl (sd-bus, C) and gdbus (GLib)
  read the same exact counters, before and after more traffic.
"""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import pytest
from daemon_support import ALLOWED, BUS_NAME, DENIED, MANAGER, ROOT, DaemonEnv, Recorder
from dbus_fast import Message
from e2e_helpers import UDP4

from ipacctd.daemon.bus import COUNTERS_SIG, BusService, counter_values
from ipacctd.daemon.config import DaemonConfig
from ipacctd.daemon.contract import status_to_wire
from ipacctd.daemon.service import Daemon
from ipacctd.datapath import denied as denied_mod
from ipacctd.errors import NotFound
from ipacctd.manager.counters import Counters
from ipacctd.manager.listing import StatusReader
from ipacctd.manager.store import canonical
from ipacctd.record import fields

pytestmark = pytest.mark.kernel

#: 128 addresses no two of which merge into a shorter prefix: more than the store keeps
#: inline (INLINE_LIST_BYTES), so the list lives in a list file.
LONG_LIST = " ".join(f"192.0.2.{i}" for i in range(0, 256, 2))


def _call(member: str, signature: str = "", body: list | None = None) -> Message:
    msg = Message(
        destination=BUS_NAME,
        path=ROOT,
        interface=MANAGER,
        member=member,
        signature=signature,
        body=body or [],
        serial=41,
    )
    msg.sender = ":1.77"
    return msg


def _reply(service: BusService, bus: Recorder, call: Message) -> Message:
    bus.sent.clear()
    out = service._handle(call)
    if type(out) is Message:  # what dbus-fast sends for a handler
        return out
    assert out is True and len(bus.sent) == 1, (out, bus.sent)
    return bus.sent[0]


def _wire(msg: Message) -> bytes:
    msg.serial = 1234  # as the connection numbers it when it sends
    return bytes(msg._marshall(False))


def old_counters(service: BusService, call: Message) -> Message:
    """GetCounters as dbus-fast marshalled it from Python values (before wire.py)."""
    rows = [(n, counter_values(e.counters)) for n, e in sorted(service.registry.units.items())]
    return Message.new_method_return(call, COUNTERS_SIG, [rows])


def old_describe(service: BusService, names: list[str], denied: int) -> str:
    """DescribeUnits' text as it was built before (parts joined), each unit's metadata
    read and parsed anew (a status reader that remembers nothing)."""
    asked = [canonical(n) for n in names]
    known = service.registry.units
    lister = StatusReader(service.manager, service.registry.reader)
    parts = []
    for name in asked or service.manager.names():
        try:
            st = lister.read(name, keep=name in known)[0]
        except NotFound:
            if asked:
                raise
            continue
        c = st.counters
        hits = c is not None and (
            c.ingress_dropped_packets
            or c.egress_dropped_packets
            or c.ingress_audit_packets
            or c.egress_audit_packets
        )
        log = service.manager.denied(st.name, min(denied, 100)) if hits else []
        parts.append(json.dumps({**status_to_wire(st), "denied": log}))
    if not parts:
        return "[]"
    parts[0] = "[" + parts[0]
    parts[-1] += "]"
    return ", ".join(parts)


def _same_describe(service: BusService, bus: Recorder, names: list[str]) -> list[dict]:
    call = _call("DescribeUnits", "asu", [names, 5])
    ours = _reply(service, bus, call)
    text = old_describe(service, names, 5)
    assert _wire(ours) == _wire(Message.new_method_return(call, "s", [text]))
    return json.loads(text)


def _counters(service: BusService, bus: Recorder) -> dict[str, list[int]]:
    """GetCounters, checked byte for byte against the old marshalling; by unit."""
    call = _call("GetCounters")
    ours = _reply(service, bus, call)
    ref = old_counters(service, call)
    assert _wire(ours) == _wire(ref)
    return {n: list(v) for n, v in ref.body[0]}


def test_replies_are_the_old_marshalling_and_follow_changes(inst, monkeypatch) -> None:
    # The denied-address log says how long ago an address was last seen, as of the read:
    # the clock it reads is stopped, so that two builders of the same reply agree.
    frozen = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 10**9
    clock = SimpleNamespace(clock_gettime_ns=lambda _clk: frozen, CLOCK_MONOTONIC=0)
    monkeypatch.setattr(denied_mod, "time", clock)
    ns = inst.netns([ALLOWED, DENIED])
    web = inst.start_unit(ns, "web", f"IPAddressDeny={DENIED}")
    api = inst.start_unit(ns, "api", port=7001)
    for _ in range(3):
        assert web.send(ALLOWED, 100) == "ok 100"
    assert web.send(DENIED, 50) == "err 1"
    assert api.send(ALLOWED, 200) == "ok 200"
    bad = inst.cli("run", "--unit", "bad", "--wait", "--", "false")
    assert bad.returncode == 1, bad
    mgr = inst.manager()
    inst.make_cgroup(f"{inst.cgroup_root}/idle")
    mgr.attach(f"{inst.cgroup_root}/idle", [("IPAddressDeny", LONG_LIST)], name="idle.service")
    assert os.listdir(mgr.store.lists_dir("idle.service"))  # the list is in a file

    d = Daemon(DaemonConfig(paths=inst.config(), bus="", listen=""))
    try:
        d.registry.sync()
        d.poll(1)
        bus = Recorder()
        service = BusService(bus, d.registry, "test", 0.2, lambda: None)
        sent = 3 * (100 + UDP4)
        values = _counters(service, bus)
        assert sorted(values) == ["api.service", "bad.service", "idle.service", "web.service"]
        assert values["web.service"][:8] == [3, sent, 3, sent, 0, 0, 1, 50 + UDP4]
        assert values["api.service"][:4] == [1, 200 + UDP4, 1, 200 + UDP4]
        assert values["idle.service"] == [0] * 12
        for name, v in values.items():  # value for value, as the engine reads them
            assert v == counter_values(mgr.status(name).counters), name
        assert _counters(service, bus) == values  # from the rows kept: the same

        # All units, then some by name: idle, running, failed, a denied-address log, a
        # list read from its file.
        described = {s["unit"]["name"]: s for s in _same_describe(service, bus, [])}
        assert described["web.service"]["sub_state"] == "running"
        assert described["web.service"]["denied"][0]["address"] == DENIED
        assert described["bad.service"]["active_state"] == "failed"
        assert described["idle.service"]["pids"] == [] and described["web.service"]["pids"] == [
            web.pid
        ]
        idle_deny = described["idle.service"]["unit"]["properties"]["IPAddressDeny"]
        assert idle_deny["canonical"].split() == [f"192.0.2.{i}/32" for i in range(0, 256, 2)]
        assert len(_same_describe(service, bus, ["web", "bad.service"])) == 2
        call = _call("DescribeUnits", "asu", [["web", "nope.service"], 5])
        err = _reply(service, bus, call)
        assert err.error_name == "org.ipacctd1.Error.NoSuchUnit", err.body
        _same_describe(service, bus, [])  # again, from the units kept: still the same

        # More traffic: the next poll's counters are in the next reply, exactly.
        for _ in range(2):
            assert web.send(ALLOWED, 1000) == "ok 1000"
        d.poll(2)
        after = _counters(service, bus)
        more = sent + 2 * (1000 + UDP4)
        assert after["web.service"][:4] == [5, more, 5, more]
        assert after["api.service"] == values["api.service"]

        # New metadata (a policy change): DescribeUnits reads it, not the unit kept.
        mgr.set_properties("idle.service", [("IPAddressDeny", ""), ("IPAddressDeny", DENIED)])
        described = {s["unit"]["name"]: s for s in _same_describe(service, bus, [])}
        deny = json.dumps(described["idle.service"]["unit"]["properties"]["IPAddressDeny"])
        assert DENIED in deny and "192.0.2.2" not in deny, deny
        # ... and one that leaves the programs as they are (the same policy generation).
        mgr.set_properties("web.service", [("Description", "changed web")])
        described = {s["unit"]["name"]: s for s in _same_describe(service, bus, ["web"])}
        assert described["web.service"]["unit"]["properties"]["Description"] == "changed web"

        # A unit gone: its row too.
        inst.ok("stop", "api")
        inst.ok("reset", "api")
        d.registry.sync()
        assert "api.service" not in _counters(service, bus)
    finally:
        d.registry.close()


def test_replies_without_units(inst) -> None:
    d = Daemon(DaemonConfig(paths=inst.config(), bus="", listen=""))
    try:
        d.registry.sync()
        bus = Recorder()
        service = BusService(bus, d.registry, "test", 0.2, lambda: None)
        assert _counters(service, bus) == {}
        assert _same_describe(service, bus, []) == []
    finally:
        d.registry.close()


def _busctl_counters(daemon: DaemonEnv) -> dict[str, list[int]]:
    r = daemon.tool(
        [
            "busctl",
            f"--address={daemon.address}",
            "--json=short",
            "call",
            BUS_NAME,
            ROOT,
            MANAGER,
            "GetCounters",
        ]
    )
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["type"] == "a(sat)"
    return {n: v for n, v in reply["data"][0]}


def _gdbus_counters(daemon: DaemonEnv) -> str:
    r = daemon.gdbus_call("GetCounters")
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_counters_over_the_bus_are_exact_for_every_client(daemon: DaemonEnv) -> None:
    inst, c = daemon.inst, daemon.client
    ns = inst.netns([ALLOWED, DENIED])
    web = inst.start_unit(ns, "web", f"IPAddressDeny={DENIED}")
    for _ in range(4):
        assert web.send(ALLOWED, 300) == "ok 300"
    sent = 4 * (300 + UDP4)

    def counters() -> dict[str, list[int]]:
        (rows,) = c.manager("GetCounters")
        return {n: list(v) for n, v in rows}

    first = c.wait(
        lambda: (v := counters()).get("web.service", [0] * 4)[:4] == [4, sent, 4, sent] and v,
        10,
        "web's counters in GetCounters",
    )
    assert _busctl_counters(daemon) == first
    text = _gdbus_counters(daemon)
    assert f"('web.service', [uint64 4, {sent}, 4, {sent}, 0, 0, 0, 0, 0, 0, 0, 0])" in text

    # More traffic between two calls: the second one shows it, exactly.
    assert web.send(DENIED, 60) == "err 1"
    for _ in range(2):
        assert web.send(ALLOWED, 700) == "ok 700"
    more = sent + 2 * (700 + UDP4)
    want = [6, more, 6, more, 0, 0, 1, 60 + UDP4, 0, 0, 0, 0]
    second = c.wait(lambda: (v := counters())["web.service"] == want and v, 10, "the new counters")
    assert _busctl_counters(daemon) == second
    (text,) = c.manager("DescribeUnits", "asu", [], 5)
    (web_status,) = json.loads(text)
    assert [web_status["counters"][f] for f in fields(Counters)] == want
