"""A client of systemd's D-Bus API, written against systemd 252's own introspection.

It knows ``data/systemd-252-introspect.xml`` (what ``busctl introspect`` printed on a real
systemd 252) and nothing of ipacctd: dbus-fast builds its proxies from that XML. Its only
input is the names it is pointed at — :data:`SYSTEMD` or :data:`IPACCTD`. The tests run it
against ipacctd (``test_bus_systemd.py``) and, through ``systemd-ref.sh``, against systemd
252 itself (``python3 systemd_client.py UNIT`` inside the reference's namespaces), so the
code that passes against ipacctd is proven to be a systemd client.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbus_fast import DBusError, Variant
from dbus_fast.introspection import Interface, Node

from ipacctd.daemon import contract

SYSTEMD_XML = Path(__file__).with_name("data") / "systemd-252-introspect.xml"
SD = "org.freedesktop.systemd1"
COUNTERS = ("IPIngressBytes", "IPIngressPackets", "IPEgressBytes", "IPEgressPackets")


@dataclass
class Names:
    """Where a systemd client is pointed: bus name, manager path, and its interfaces."""

    bus: str
    root: str
    interfaces: dict[str, str] = field(default_factory=dict)  # systemd's → served name

    def iface(self, systemd_name: str) -> str:
        return self.interfaces.get(systemd_name, systemd_name)


SYSTEMD = Names(SD, "/org/freedesktop/systemd1")
#: ipacctd's names for systemd's objects: its Unit interface carries what systemd splits
#: between Unit and Service (ipacctd has one kind of unit).
IPACCTD = Names(
    contract.BUS_NAME,
    contract.ROOT,
    {
        f"{SD}.Manager": contract.MANAGER_IFACE,
        f"{SD}.Unit": contract.UNIT_IFACE,
        f"{SD}.Service": contract.UNIT_IFACE,
        f"{SD}.Job": contract.JOB_IFACE,
    },
)


def systemd_node(names: Names, *interfaces: str) -> Node:
    """systemd's introspection of ``interfaces``, under ``names``' interface names."""
    parsed = Node.parse(SYSTEMD_XML.read_text())
    merged: dict[str, Interface] = {}
    for want in interfaces:
        src = next(i for i in parsed.interfaces if i.name == want)
        dst = merged.setdefault(names.iface(want), Interface(names.iface(want)))
        dst.methods += src.methods
        dst.signals += src.signals
        dst.properties += src.properties
    return Node(None, list(merged.values()))


class SystemdClient:
    """Code written for systemd's D-Bus API, as a monitoring or deployment tool would: it
    knows systemd 252's introspection and nothing of ipacctd. Its only input is the names
    it is pointed at."""

    def __init__(self, bus: Any, names: Names) -> None:
        self.bus, self.names = bus, names
        obj = bus.get_proxy_object(names.bus, names.root, systemd_node(names, f"{SD}.Manager"))
        self.manager = obj.get_interface(names.iface(f"{SD}.Manager"))
        self.removed: dict[str, tuple[str, str]] = {}  # job → (unit, result)
        self.manager.on_job_removed(
            lambda _id, job, unit, result: self.removed.__setitem__(job, (unit, result))
        )

    def unit(self, path: str, iface: str = f"{SD}.Unit") -> Any:
        node = systemd_node(self.names, f"{SD}.Unit", f"{SD}.Service")
        return self.bus.get_proxy_object(self.names.bus, path, node).get_interface(
            self.names.iface(iface)
        )

    def job(self, path: str) -> Any:
        node = systemd_node(self.names, f"{SD}.Job")
        return self.bus.get_proxy_object(self.names.bus, path, node).get_interface(
            self.names.iface(f"{SD}.Job")
        )

    async def wait_job(self, job: str, timeout: float = 30.0) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while job not in self.removed:
            assert time.monotonic() < deadline, f"no JobRemoved for {job}"
            await asyncio.sleep(0.02)
        return self.removed.pop(job)

    async def start(self, name: str, properties: list[list[Any]]) -> tuple[str, str]:
        """systemd-run's way: Subscribe, StartTransientUnit, wait for the job to end."""
        await self.manager.call_subscribe()
        job = await self.manager.call_start_transient_unit(name, "fail", properties, [])
        return job, (await self.wait_job(job))[1]

    async def accounting(self) -> dict[str, dict[str, Any]]:
        """The IP accounting of every loaded service: ListUnits, then each one's properties."""
        out = {}
        for row in await self.manager.call_list_units():
            name, _desc, load, active, sub, _following, path, job_id, _jtype, _jpath = row
            if not name.endswith(".service") or load != "loaded":
                continue  # the Service interface (IP accounting) is a loaded service's
            service = self.unit(path, f"{SD}.Service")
            out[name] = {
                "load": load,
                "active": active,
                "sub": sub,
                "job": job_id,
                "path": path,
                "accounting": await service.get_ip_accounting(),
                "deny": [tuple(e) for e in await service.get_ip_address_deny()],
                "cgroup": await service.get_control_group(),
                **{c: await getattr(service, f"get_{snake(c)}")() for c in COUNTERS},
            }
        return out


def snake(name: str) -> str:
    """dbus-fast's member name: IPEgressBytes → ip_egress_bytes."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


async def systemd_demo(unit: str, python: str) -> dict[str, Any]:
    """Against systemd itself (run inside systemd-ref): start ``unit`` sending two allowed
    and one denied datagram, read its accounting, stop it following the job, reset it."""
    from dbus_fast import BusType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    client = SystemdClient(bus, SYSTEMD)
    code = (
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(2): s.sendto(b'x' * 200, ('198.51.100.2', 9))\n"
        "try: s.sendto(b'x' * 10, ('198.51.100.1', 9))\n"
        "except OSError as e: print('denied', e.errno, flush=True)\n"
        "time.sleep(300)\n"
    )
    job, result = await client.start(
        unit,
        [
            ["Description", Variant("s", "written for systemd")],
            ["IPAccounting", Variant("b", True)],
            ["IPAddressDeny", Variant("a(iayu)", [[2, bytes([198, 51, 100, 1]), 32]])],
            ["ExecStart", Variant("a(sasb)", [[python, [python, "-c", code], False]])],
        ],
    )
    out: dict[str, Any] = {"start_job": job, "start_result": result}
    deadline = time.monotonic() + 20
    while True:  # bounded: the unit sends at once
        seen = (await client.accounting())[unit]
        if seen["IPEgressPackets"] >= 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    out["unit"] = {k: v for k, v in seen.items() if k != "deny"} | {"deny": seen["deny"]}
    out["get_unit"] = await client.manager.call_get_unit(unit)
    job = await client.unit(seen["path"]).call_stop("replace")
    out["stop_job"] = job
    out["stop_removed"] = list(await client.wait_job(job))
    try:  # systemd unloads a transient unit once stopped: nothing left to reset then
        await client.manager.call_reset_failed_unit(unit)
        out["reset"] = "ok"
    except DBusError as exc:
        out["reset"] = exc.type
    try:
        out["after_reset"] = await client.manager.call_get_unit(unit)
    except DBusError as exc:
        out["after_reset"] = exc.type
    return out


if __name__ == "__main__":
    result = asyncio.run(systemd_demo(sys.argv[1], sys.argv[2]))
    print(json.dumps(result, default=lambda b: list(b) if isinstance(b, bytes) else str(b)))
