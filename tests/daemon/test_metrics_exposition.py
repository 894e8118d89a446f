"""``/metrics`` as prometheus_client exposes it: text or OpenMetrics by ``Accept``, gzip by
``Accept-Encoding``, the client library's ``process_*``/``python_*`` families, and one
``ipacctd_unit_state`` series per state (as systemd_exporter), checked by ``promtool`` and
by prometheus_client's strict OpenMetrics parser against a live daemon.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest
from daemon_support import DaemonEnv

pytestmark = pytest.mark.kernel

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
DENIED = "198.51.100.1"
ALLOWED = "203.0.113.1"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
STATES = ("active", "activating", "deactivating", "inactive", "failed")


def get(daemon: DaemonEnv, path: str = "/metrics", **headers: str):
    req = urllib.request.Request(f"http://127.0.0.1:{daemon.port}{path}", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, dict(resp.headers.items()), resp.read()


def samples(families) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}


@pytest.fixture
def units(daemon: DaemonEnv) -> DaemonEnv:
    """An active unit that dropped traffic, a failed one and an inactive one."""
    inst = daemon.inst
    ns = inst.netns([ALLOWED, DENIED])
    agent = inst.start_unit(ns, "web", f"IPAddressDeny={DENIED}")
    assert agent.send(ALLOWED, 64) == "ok 64"
    assert agent.send(DENIED, 10) == "err 1"
    assert inst.cli("run", "--unit", "bad", "--", "sh", "-c", "exit 7").returncode == 7
    inst.ok("run", "--unit", "done", "--", "true")
    # Settled, not only listed: the daemon may list a unit before a poll reads its exit
    # record (until then it is still "activating").
    want = {"web.service": "active", "bad.service": "failed", "done.service": "inactive"}

    def settled() -> bool:
        listed = daemon.client.units()
        return all(u in listed and daemon.client.props(u)["ActiveState"] == s
                   for u, s in want.items())

    daemon.client.wait(settled, 10, "the daemon to see the three units in their final states")
    return daemon


def test_text_gzip_and_openmetrics(units: DaemonEnv, tmp_path) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
    from prometheus_client.parser import text_string_to_metric_families as text_parse

    status, headers, plain = get(units)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version="), headers
    assert "Content-Encoding" not in headers
    text = samples(text_parse(plain.decode()))

    status, headers, body = get(units, **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("Content-Encoding") == "gzip", headers
    unzipped = gzip.decompress(body).decode()  # fails unless it really is gzip
    assert len(body) < len(unzipped) / 3
    gz = samples(text_parse(unzipped))
    assert set(gz) == set(text)

    status, headers, body = get(units, Accept=OPENMETRICS, **{"Accept-Encoding": "gzip"})
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    om_text = gzip.decompress(body).decode()
    assert om_text.endswith("# EOF\n")
    om = samples(om_parse(om_text))  # the strict parser: raises on any format error
    # The same series in both formats (OpenMetrics adds _created only where the client
    # library knows a creation time: not for ipacctd's families, read from the kernel).
    assert {k for k in om if k[0].startswith("ipacctd_")} == {
        k for k in text if k[0].startswith("ipacctd_")
    }

    # promtool, Prometheus' own linter, on the text format as served. (It reads OpenMetrics
    # as the text format, where family names differ: the strict parser above checks that.)
    path = tmp_path / "metrics.prom"
    path.write_bytes(plain)
    with open(path) as f:
        res = subprocess.run(
            [PROMTOOL, "check", "metrics"],
            stdin=f,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert res.returncode == 0, res.stdout + res.stderr

    # The client library's own process and Python collectors.
    names = {name for name, _ in text}
    for family in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "python_info",
        "python_gc_collections_total",
    ):
        assert family in names, family
    assert text[("process_open_fds", frozenset())] > 3

    # Other paths: an index page, 404 elsewhere.
    assert b'href="/metrics"' in get(units, "/")[2]
    with pytest.raises(urllib.error.HTTPError) as err:
        get(units, "/nope")
    assert err.value.code == 404


def test_one_series_per_state(units: DaemonEnv) -> None:
    m = units.scrape()
    expect = {"web.service": "active", "bad.service": "failed", "done.service": "inactive"}
    for unit, own in expect.items():
        got = {
            s: m.get(("ipacctd_unit_state", frozenset({("unit", unit), ("state", s)})))
            for s in STATES
        }
        assert got == {s: (1 if s == own else 0) for s in STATES}, (unit, got)
    assert not [k for k in m if k[0] == "ipacctd_unit_active"]  # the old family is gone
    for state, n in (("active", 1), ("inactive", 1), ("failed", 1)):
        assert m[("ipacctd_units", frozenset({("state", state)}))] == n
    assert (
        m[
            (
                "ipacctd_unit_ip_dropped_packets_total",
                frozenset({("unit", "web.service"), ("direction", "egress")}),
            )
        ]
        == 1
    )
