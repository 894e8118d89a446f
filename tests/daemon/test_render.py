"""The fast /metrics renderer writes exactly what prometheus_client's generate_latest does."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from ipacctd.daemon.metrics import render

VALUES = [0, 1, 384, 10**6, 1234567, 10**7 + 1, 2**63, 2**64 - 1, 0.5, 1e-9, 12345678.9]
UNITS = [
    "web.service",
    'q"uote.service',
    "back\\slash.service",
    "new\nline.service",
    "a@b:c-d_e.scope",
    "ünï.service",
    "",
]


class Families(Collector):
    def __init__(self, families) -> None:
        self.families = families

    def collect(self) -> Iterator:
        yield from self.families


def registry(families) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Families(families))
    return reg


def test_render_matches_generate_latest() -> None:
    c = CounterMetricFamily(
        "ipacctd_unit_ip_bytes", "help with \\ and\nnewline", labels=["unit", "direction"]
    )
    g = GaugeMetricFamily("ipacctd_unit_active", "1 when active", labels=["unit", "state"])
    for i, unit in enumerate(UNITS):
        for j, value in enumerate(VALUES):
            c.add_metric([unit, f"d{j}"], value)
        g.add_metric([unit, "active"], i % 2)
    plain = GaugeMetricFamily("ipacctd_units", "no labels", value=3)
    empty = CounterMetricFamily("ipacctd_empty", "no samples", labels=["unit"])
    info = InfoMetricFamily("ipacctd_build", "version")
    info.add_metric([], {"version": "0.1.0"})
    reg = registry([c, g, plain, empty, info])
    assert render(reg) == generate_latest(reg)


def test_render_falls_back_for_what_it_does_not_handle() -> None:
    odd = CounterMetricFamily("ipacctd_odd", "with created", labels=["unit"])
    odd.add_metric(["x"], 1, created=1700000000.0)
    reg = registry([odd])
    assert render(reg) == generate_latest(reg)
    reg = registry([GaugeMetricFamily("ipacctd.dotted", "utf-8 name", value=1)])
    assert render(reg) == generate_latest(reg)
