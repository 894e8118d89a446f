"""The per-unit families ``/metrics`` writes from cached label strings are what
prometheus_client's own exposition writes for the same families: the same HELP and TYPE
lines and the same samples (names, labels, values), in the text format and in
OpenMetrics — also for label values that need escaping, and on a second scrape (cache in
use) after a unit's container record changed.
"""

from __future__ import annotations

from types import SimpleNamespace as NS

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse

from ipacctd.containers import ContainerInfo
from ipacctd.daemon import metrics
from ipacctd.manager.counters import COUNTERS, METRIC_HELP, Counters

DENIED = {"web.service": [{"direction": "egress", "address": "198.51.100.1", "packets": 3}]}


def status(active: str, accounting: bool, allow: int, deny: int, enforced: bool, container=None):
    props = NS(
        ip_accounting=accounting, ip_address_allow=(None,) * allow, ip_address_deny=(None,) * deny
    )
    return NS(
        unit=NS(properties=props, container=container),
        active_state=active,
        enforcement=NS(enforced=enforced),
        attached=enforced,
    )


def snapshot(pod: str) -> list:
    web = ContainerInfo("podman", "5522d0d1ae87" + "0" * 52, 'we"b\\1', pod)
    return [
        ("bad.service", status("failed", False, 0, 2, True), Counters(*range(1, 13))),
        ("gone.service", status("inactive", True, 0, 0, False), None),
        ('odd"na\\me\n.service', status("active", True, 1, 0, True), Counters(*[7] * 12)),
        (
            "web.service",
            status("active", True, 2, 1, True, web),
            Counters(10, 2000, 30, 4000, 0, 0, 3, 180, 0, 0, 0, 0),
        ),
    ]


def reference(snap: list) -> list:
    """The families as a prometheus_client collector builds them (the code this replaced)."""
    traffic = {
        m: CounterMetricFamily(m, doc, labels=["unit", "direction"])
        for m, doc in METRIC_HELP.items()
    }
    fams = {
        f.name: f
        for f in (
            GaugeMetricFamily(
                metrics.UNIT_STATE.name,
                "1 for the unit's active state (active, inactive, failed), 0 for the others",
                labels=["unit", "state"],
            ),
            GaugeMetricFamily(
                metrics.ENFORCED.name,
                "1 when the unit's recorded policy is in "
                "force on the live cgroup at its path (0: not, or no live cgroup)",
                labels=["unit"],
            ),
            GaugeMetricFamily(
                metrics.PREFIXES.name,
                "Prefixes in the unit's allow and deny lists",
                labels=["unit", "list"],
            ),
            GaugeMetricFamily(
                metrics.DENIED.name,
                "Packets denied per remote address (top 10 per "
                "unit, from a bounded LRU log: an evicted address starts again at 0)",
                labels=["unit", "direction", "address"],
            ),
            InfoMetricFamily(
                metrics.CONTAINER.name,
                "The container behind a unit (engine, name, short id, pod)",
                labels=["unit"],
            ),
        )
    }
    for name, st, c in snap:
        props = st.unit.properties
        if c is not None:
            for spec in COUNTERS:
                if spec.kind.value == "passed" and not props.ip_accounting:
                    continue
                traffic[spec.metric].add_metric([name, spec.label], getattr(c, spec.attr))
        for s in metrics.STATES:
            fams[metrics.UNIT_STATE.name].add_metric([name, s], int(st.active_state == s))
        fams[metrics.ENFORCED.name].add_metric([name], int(st.enforcement.enforced))
        fams[metrics.PREFIXES.name].add_metric([name, "allow"], len(props.ip_address_allow))
        fams[metrics.PREFIXES.name].add_metric([name, "deny"], len(props.ip_address_deny))
        for e in DENIED.get(name, []) if c is not None and props.ip_address_deny else []:
            fams[metrics.DENIED.name].add_metric([name, e["direction"], e["address"]], e["packets"])
        ci = st.unit.container
        if ci is not None:
            fams[metrics.CONTAINER.name].add_metric(
                [name],
                {
                    "engine": ci.engine,
                    "container_id": ci.short_id,
                    "container_name": ci.name or "",
                    "pod": ci.pod or "",
                },
            )
    return [*traffic.values(), *fams.values()]


class Families:
    def __init__(self, fams: list) -> None:
        self.fams = fams

    def collect(self):
        return iter(self.fams)


def parsed(families) -> tuple[dict, dict]:
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}
    heads = {f.name: (f.type, f.documentation) for f in families}
    return samples, heads


def headers(text: str) -> set[str]:
    return {line for line in text.splitlines() if line.startswith("#") and line != "# EOF"}


def test_render_matches_the_client_library() -> None:
    registry = NS(manager=NS(denied=lambda name, top: DENIED.get(name, [])[:top]))
    units = metrics.UnitCollector(registry, program_stats=False)  # type: ignore[arg-type]
    for pod in ("pod1", 'p"o\\d\n2'):  # the second: cached labels, a changed container
        snap = snapshot(pod)
        ref = Families(reference(snap))
        text = b"".join(units.render(snap)).decode()
        want_text = generate_latest(ref).decode()  # type: ignore[arg-type]
        assert headers(text) == headers(want_text)
        assert parsed(text_parse(text)) == parsed(text_parse(want_text))

        om = b"".join(units.render(snap, openmetrics=True)).decode() + "# EOF\n"
        want_om = om_generate_latest(ref).decode()  # type: ignore[arg-type]
        assert headers(om) == headers(want_om)
        got, want = parsed(om_parse(om)), parsed(om_parse(want_om))
        assert got == want
        assert (
            "ipacctd_unit_ip_bytes_total",
            frozenset({("unit", "web.service"), ("direction", "egress")}),
        ) in got[0]
        pods = {dict(k[1]).get("pod") for k in got[0] if k[0] == "ipacctd_unit_container_info"}
        assert pods == {pod}


def test_name_filter() -> None:
    registry = NS(manager=NS(denied=lambda name, top: []))
    units = metrics.UnitCollector(registry, program_stats=False)  # type: ignore[arg-type]
    text = b"".join(units.render(snapshot("p"), names=["ipacctd_unit_state"])).decode()
    names = {s.name for f in text_parse(text) for s in f.samples}
    assert names == {"ipacctd_unit_state"}
