"""Prometheus ``/metrics``: values read from the kernel maps at scrape time.

A custom collector over the registry: no second copy of the counters, and the series of
a removed unit vanish with it. Served by a small asyncio HTTP endpoint (no thread), bound
to localhost by default.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from ipacctd import __version__
from ipacctd.bpf.errors import BPFError
from ipacctd.bpf.links import CgroupLink
from ipacctd.bpf.programs import Program
from ipacctd.daemon.registry import Registry
from ipacctd.datapath.counters import Direction
from ipacctd.datapath.unit import LINK

log = logging.getLogger("ipacctd.metrics")

DIRECTIONS = (("ingress", "ingress"), ("egress", "egress"))
DENIED_TOP = 10


class UnitCollector(Collector):
    """Exports every unit of a :class:`Registry`, reading counters at scrape time."""

    def __init__(self, registry: Registry, program_stats: bool = True) -> None:
        self.registry = registry
        self.program_stats = program_stats

    def collect(self) -> Iterator:
        reg = self.registry
        ip_bytes = CounterMetricFamily("ipacctd_unit_ip_bytes",
                                       "IP bytes passed (systemd's IPIngressBytes/IPEgressBytes)",
                                       labels=["unit", "direction"])
        ip_packets = CounterMetricFamily("ipacctd_unit_ip_packets", "IP packets passed",
                                         labels=["unit", "direction"])
        drop_bytes = CounterMetricFamily("ipacctd_unit_ip_dropped_bytes",
                                         "IP bytes dropped by the unit's firewall",
                                         labels=["unit", "direction"])
        drop_packets = CounterMetricFamily("ipacctd_unit_ip_dropped_packets",
                                           "IP packets dropped by the unit's firewall",
                                           labels=["unit", "direction"])
        audit_bytes = CounterMetricFamily("ipacctd_unit_ip_audit_bytes",
                                          "IP bytes the deny list would drop (audit mode)",
                                          labels=["unit", "direction"])
        audit_packets = CounterMetricFamily("ipacctd_unit_ip_audit_packets",
                                            "IP packets the deny list would drop (audit mode)",
                                            labels=["unit", "direction"])
        active = GaugeMetricFamily("ipacctd_unit_active", "1 when the unit has processes",
                                   labels=["unit", "state"])
        enforced = GaugeMetricFamily("ipacctd_unit_firewall_enforced",
                                     "1 when the unit's programs are attached to a live cgroup",
                                     labels=["unit"])
        prefixes = GaugeMetricFamily("ipacctd_unit_policy_prefixes",
                                     "Prefixes in the unit's allow and deny lists",
                                     labels=["unit", "list"])
        run_time = CounterMetricFamily("ipacctd_program_run_time_seconds",
                                       "Time spent in the unit's programs (BPF stats on)",
                                       labels=["unit", "direction"])
        run_count = CounterMetricFamily("ipacctd_program_runs",
                                        "Runs of the unit's programs (BPF stats on)",
                                        labels=["unit", "direction"])
        denied = GaugeMetricFamily(
            "ipacctd_unit_denied_address_packets",
            f"Packets denied per remote address (top {DENIED_TOP} per unit, from a bounded "
            "LRU log: an evicted address starts again at 0)",
            labels=["unit", "direction", "address"])
        states: dict[str, int] = {}
        for name, entry in sorted(reg.units.items()):
            st = entry.status
            states[st.active_state] = states.get(st.active_state, 0) + 1
            c = reg.reader.read(name)
            entry.counters = c
            props = st.unit.properties
            if c is not None:
                for label, prefix in DIRECTIONS:
                    if props.ip_accounting:
                        ip_bytes.add_metric([name, label], getattr(c, f"{prefix}_bytes"))
                        ip_packets.add_metric([name, label], getattr(c, f"{prefix}_packets"))
                    drop_bytes.add_metric([name, label], getattr(c, f"{prefix}_dropped_bytes"))
                    drop_packets.add_metric([name, label],
                                            getattr(c, f"{prefix}_dropped_packets"))
                    audit_bytes.add_metric([name, label], getattr(c, f"{prefix}_audit_bytes"))
                    audit_packets.add_metric([name, label],
                                             getattr(c, f"{prefix}_audit_packets"))
            active.add_metric([name, st.active_state], 1 if st.active_state == "active" else 0)
            enforced.add_metric([name], 1 if (st.unit.enforced and st.attached) else 0)
            prefixes.add_metric([name, "allow"], len(props.ip_address_allow))
            prefixes.add_metric([name, "deny"], len(props.ip_address_deny))
            if props.ip_address_deny:
                for e in reg.manager.denied(name, DENIED_TOP):
                    denied.add_metric([name, e["direction"], e["address"]], e["packets"])
            if self.program_stats and st.attached:
                self._program_stats(name, run_time, run_count)
        units = GaugeMetricFamily("ipacctd_units", "Units by active state", labels=["state"])
        for state in ("active", "inactive", "failed"):
            units.add_metric([state], states.get(state, 0))
        yield from (ip_bytes, ip_packets, drop_bytes, drop_packets, audit_bytes, audit_packets,
                    active, enforced, prefixes, units, denied)
        if self.program_stats:
            yield from (run_time, run_count)
        info = InfoMetricFamily("ipacctd_build", "ipacctd version")
        info.add_metric([], {"version": __version__})
        yield info

    def _program_stats(self, name: str, run_time: CounterMetricFamily,
                       run_count: CounterMetricFamily) -> None:
        pin_dir = self.registry.manager.store.pin_dir(name)
        for direction in Direction:
            try:
                with CgroupLink.open_pinned(f"{pin_dir}/{LINK[direction]}") as link, \
                        Program.from_id(link.info().prog_id) as prog:
                    info = prog.info()
            except (BPFError, OSError):
                continue
            if info.run_cnt:
                label = direction.name.lower()
                run_time.add_metric([name, label], info.run_time_ns / 1e9)
                run_count.add_metric([name, label], info.run_cnt)


def make_registry(registry: Registry, program_stats: bool = True) -> CollectorRegistry:
    """A prometheus_client registry holding only ipacctd's collector."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(UnitCollector(registry, program_stats))
    return reg


async def serve(prom: CollectorRegistry, host: str, port: int) -> asyncio.Server:
    """Serve ``GET /metrics`` (and ``/`` with a pointer to it) over HTTP/1.0."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10)
            for _ in range(100):  # headers, bounded
                line = await asyncio.wait_for(reader.readline(), 10)
                if line in (b"\r\n", b"\n", b""):
                    break
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else "/"
            if parts and parts[0] not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path.split("?")[0] == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(prom)
            elif path == "/":
                status, ctype = "200 OK", "text/html"
                body = b'<html><body><a href="/metrics">/metrics</a></body></html>\n'
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            head = (f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode())
            if parts and parts[0] != "HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
