"""The Grafana dashboard and the Prometheus configuration and alert rules in contrib/.

Static checks first (``promtool check config`` / ``check rules`` / ``test rules``, the
dashboard's structure and variables), then the real thing: a private ``dbus-daemon``, an
isolated ipacctd installation, the daemon serving ``/metrics``, two units sending denied
traffic inside private network namespaces (one enforcing its deny list, one in audit
mode), BPF run-time statistics on, and a real Prometheus scraping the daemon every second
with contrib's alert rules loaded. Every dashboard query and variable query then runs
through Prometheus' HTTP API and must return data, and the alerts must fire for the right
unit and direction.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import REPO, Installation
from support import PrivateBus, free_port, stop_process, wait_for

pytestmark = pytest.mark.kernel

CONTRIB = Path(REPO) / "contrib"
DASHBOARD = CONTRIB / "grafana" / "ipacctd.json"
PROM_CONFIG = CONTRIB / "prometheus" / "prometheus.yml"
RULES = CONTRIB / "prometheus" / "ipacctd.rules.yml"
RULES_TEST = Path(__file__).with_name("ipacctd.rules.test.yml")

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

ALLOWED = "203.0.113.1"
DENIED = "198.51.100.1"
FW_UNIT = "fw.service"  # enforces IPAddressDeny=DENIED
AUDIT_UNIT = "canary.service"  # the same policy in IPAddressDenyMode=audit
ALERTS = {
    "IpacctdDown",
    "IpacctdDeniedTrafficRising",
    "IpacctdFirewallNotEnforced",
    "IpacctdAuditWouldDeny",
}
RECORDS = {"unit_direction:ipacctd_unit_ip_dropped_packets:rate5m"}
README = Path(REPO) / "README.md"
#: Matchers every metric selector of the dashboard carries (Grafana fills in the
#: variables; multi-value and "All" selections become regexes).
SCOPE = ('job=~"$job"', 'instance=~"$instance"')
# Grafana's global variables, filled in by Grafana itself (values used here: see expand()).
BUILTIN = {"__rate_interval", "__range", "__interval"}
VAR_REF = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def need(binary: str) -> None:
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} is missing: install Debian's prometheus package (.ci/run does)")


def run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


# -- the dashboard as data -----------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dash: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def query_panels(dash: dict) -> list[dict]:
    return [p for p in all_panels(dash) if p["type"] != "row"]


def variables(dash: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dash["templating"]["list"]}


def variable_query(var: dict) -> str:
    q = var.get("query")
    return q["query"] if isinstance(q, dict) else q


def refs(text: str) -> set[str]:
    return {a or b or c for a, b, c in VAR_REF.findall(text)}


def expand(expr: str, values: dict[str, str]) -> str:
    """Fill in template variables the way Grafana does before sending a query."""

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return values[name]

    return VAR_REF.sub(sub, expr)


def grafana_regex(values: list[str]) -> str:
    """A multi-value selection as Grafana puts it into a PromQL regex matcher."""
    escaped = [re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", v) for v in values]
    return "(" + "|".join(escaped) + ")"


# -- static checks ------------------------------------------------------------------------


def test_promtool_check_config_and_rules(tmp_path: Path) -> None:
    need(PROMTOOL)
    shutil.copy(PROM_CONFIG, tmp_path / "prometheus.yml")
    shutil.copy(RULES, tmp_path / RULES.name)  # rule_files is relative to the config
    res = run([PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 rule files found" in res.stdout + res.stderr
    res = run([PROMTOOL, "check", "rules", str(RULES)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(ALERTS) + len(RECORDS)} rules found" in res.stdout + res.stderr
    text = PROM_CONFIG.read_text()
    assert "job_name: ipacctd" in text
    assert '"127.0.0.1:9813"' in text
    assert re.search(r"^\s+scrape_interval: 15s$", text, re.M)
    for alert in ALERTS:
        assert f"alert: {alert}\n" in RULES.read_text()


def readme_anchors() -> set[str]:
    """GitHub's anchors of the README's headings (lower case, punctuation dropped)."""
    out, fenced = set(), False
    for line in README.read_text().splitlines():
        fenced ^= line.startswith("```")
        m = re.match(r"#+ (.+)", line)
        if m and not fenced:
            out.add(re.sub(r"[^\w\- ]", "", m[1].strip().lower()).replace(" ", "-"))
    return out


def test_every_alert_has_summary_description_and_runbook() -> None:
    import yaml

    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules if "alert" in r} == ALERTS
    assert {r["record"] for r in rules if "record" in r} == RECORDS
    anchors = readme_anchors()
    assert "alerts" in anchors
    for r in rules:
        if "alert" not in r:
            continue
        ann = r["annotations"]
        assert ann["summary"].strip() and ann["description"].strip(), r["alert"]
        url = ann["runbook_url"]
        # The README contrib/install.sh installs (the unit's Documentation= names it too).
        assert url.split("#")[0] == "file:///opt/ipacctd/share/doc/ipacctd/README.md", url
        assert url.split("#")[1] == r["alert"].lower() in anchors, (r["alert"], url)
    denied = next(r for r in rules if r.get("alert") == "IpacctdDeniedTrafficRising")
    assert denied["for"] == "10m"  # a rate over a threshold for a while, not one packet


#: PromQL words that are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
KEYWORDS |= {"and", "or", "unless", "vector", "inf", "nan"}


def selectors(expr: str) -> list[str]:
    """Every metric selector of a PromQL expression, as ``name{matchers}``."""

    # Blank out (keeping every position) what may look like a name but is not one:
    # strings, grouping label lists, durations.
    def blank(m: re.Match) -> str:
        return " " * len(m[0])

    text = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: '"' + "_" * (len(m[0]) - 2) + '"', expr)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", blank, text)
    text = re.sub(r"\[[^\]]*\]", blank, text)
    out = []
    for m in re.finditer(r"([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?", text):
        name, braces, call = m.groups()
        if call or name.lower() in KEYWORDS or (m.start() and text[m.start() - 1].isdigit()):
            continue
        out.append(expr[m.start(1) : m.end(2) if braces else m.end(1)])
    return out


def test_selectors_scan() -> None:
    """The scanner below must see a selector that lacks the matchers (else it proves nothing)."""
    e = 'sum by (unit) (rate(a_total{job=~"$job",x="y(z"}[5m])) / on (unit) b or vector(0)'
    assert selectors(e) == ['a_total{job=~"$job",x="y(z"}', "b"]


def test_promtool_rule_unit_tests(tmp_path: Path) -> None:
    """The alerts fire on the series they are about, with the expected labels and text."""
    need(PROMTOOL)
    test = tmp_path / "rules.test.yml"
    text = RULES_TEST.read_text()
    assert "RULES_FILE" in text
    test.write_text(text.replace("RULES_FILE", str(RULES)))
    res = run([PROMTOOL, "test", "rules", str(test)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_dashboard_structure() -> None:
    dash = dashboard()
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["uid"] and dash["title"]
    vars_ = variables(dash)
    assert "DS_PROMETHEUS" not in DASHBOARD.read_text()
    ds = vars_["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert list(vars_) == ["datasource", "job", "instance", "unit"]
    assert variable_query(vars_["job"]) == "label_values(ipacctd_build_info, job)"
    assert (
        variable_query(vars_["instance"])
        == 'label_values(ipacctd_build_info{job=~"$job"}, instance)'
    )
    for name in ("job", "instance", "unit"):  # multi-select with "All"
        var = vars_[name]
        assert var["multi"] and var["includeAll"] and var["allValue"] == ".*", name
        assert var["hide"] == 0, name
    assert variable_query(vars_["unit"]) == (
        'label_values(ipacctd_unit_state{job=~"$job",instance=~"$instance"}, unit)'
    )
    for name, var in vars_.items():  # variables only use variables defined before them
        if var["type"] == "query":
            assert var["datasource"]["uid"] == "${datasource}", name
            earlier = list(vars_)[: list(vars_).index(name)]
            assert refs(variable_query(var)) <= set(earlier), name
    panels = query_panels(dash)
    ids = [p["id"] for p in all_panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        assert p["title"] and p.get("description"), p["id"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]), p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        assert p["targets"], p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
        for t in p["targets"]:
            assert t.get("expr", "").strip(), (p["title"], t)
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            undefined = refs(t["expr"]) - set(vars_) - BUILTIN
            assert not undefined, (p["title"], undefined)
    boxes = [(p["title"], p["gridPos"]) for p in all_panels(dash)]
    for i, (a, ga) in enumerate(boxes):  # no two panels overlap on the grid
        for b, gb in boxes[i + 1 :]:
            apart = (
                ga["x"] + ga["w"] <= gb["x"]
                or gb["x"] + gb["w"] <= ga["x"]
                or ga["y"] + ga["h"] <= gb["y"]
                or gb["y"] + gb["h"] <= ga["y"]
            )
            assert apart, (a, b)
    # Every selector of every query honours job and instance; unit-level ones the unit too.
    for p in panels:
        for t in p["targets"]:
            sels = selectors(t["expr"])
            assert sels, (p["title"], t["expr"])
            for sel in sels:
                for matcher in SCOPE:
                    assert matcher in sel, (p["title"], sel)
                if sel.startswith("ipacctd_unit_"):
                    assert 'unit=~"$unit"' in sel, (p["title"], sel)
    units = {
        p["title"]: p["fieldConfig"]["defaults"].get("unit") for p in panels if "fieldConfig" in p
    }
    assert units["Ingress rate per unit"] == "Bps"
    assert units["Egress rate per unit"] == "Bps"
    assert units["Dropped traffic per unit"] == "Bps"
    assert units["Packets per unit"] == "pps"
    assert units["Program cost per packet"] == "ns"
    # All variables are used somewhere.
    used = set().union(*(refs(json.dumps(p)) for p in panels))
    used |= set().union(*(refs(variable_query(v)) for v in vars_.values() if v["type"] == "query"))
    assert set(vars_) <= used, set(vars_) - used


# -- the live stack -------------------------------------------------------------------------

#: A unit's main program: for at most ``seconds`` (and a bounded number of rounds) send
#: allowed traffic, traffic to the denied address (egress check) and traffic from the
#: denied address (a socket bound to it: ingress check), all inside the namespace's lo.
TRAFFIC = r"""
import socket, sys, time

allowed, denied, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
port = 7000
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("0.0.0.0", port))
rx.setblocking(False)
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
spoof = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
spoof.bind((denied, 0))
end = time.monotonic() + seconds
for _ in range(10000):
    if time.monotonic() > end:
        break
    tx.sendto(b"a" * 200, (allowed, port))
    for sock, data, dest in ((tx, b"d" * 50, denied), (spoof, b"s" * 30, allowed)):
        try:
            sock.sendto(data, (dest, port))
        except PermissionError:  # dropped on egress by the unit's firewall
            pass
    try:
        while True:
            rx.recv(65536)
    except BlockingIOError:
        pass
    time.sleep(0.02)
"""


class Stack:
    """Bus, installation, daemon, traffic units and Prometheus; torn down by PID."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.procs: list[subprocess.Popen] = []  # daemon, prometheus: ended in reverse
        self.inst = Installation(tmp_path)
        self.bus: PrivateBus | None = None
        self.daemon_port = 0
        self.prom_port = 0

    def log(self, name: str) -> str:
        try:
            return (self.tmp / f"{name}.log").read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def start_bus(self) -> str:
        self.bus = PrivateBus()
        return self.bus.address

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.tmp / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv, env=env, cwd=self.tmp, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self.procs.append(proc)

    def get(self, url: str, timeout: float = 5) -> bytes:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read()

    def start_daemon(self, address: str) -> None:
        self.daemon_port = free_port()
        argv = [sys.executable, "-m", "ipacctd", "daemon", "--bus", address]
        argv += ["--listen", f"127.0.0.1:{self.daemon_port}", "--poll-interval", "0.2"]
        self.spawn("daemon", argv, env=self.inst.env)
        proc = self.procs[-1]

        def ready() -> bool:
            assert proc.poll() is None, f"daemon exited:\n{self.log('daemon')}"
            try:
                return b"ipacctd_build_info" in self.get(self.metrics_url, timeout=2)
            except OSError:
                return False

        wait_for(ready, 20, "the daemon to serve /metrics", step=0.25)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.daemon_port}/metrics"

    def start_unit(self, name: str, *props: str, seconds: float = 80) -> None:
        """``ipacctd run --unit NAME -p ... -- python3 traffic.py`` in a namespace of its own."""
        script = self.tmp / "traffic.py"
        script.write_text(TRAFFIC)
        ns = self.inst.netns([ALLOWED, DENIED])
        argv = self.inst.argv("run", "--unit", name, *(f"-p{p}" for p in props), "--")
        argv += [sys.executable, str(script), ALLOWED, DENIED, str(seconds)]
        with open(self.tmp / f"{name}.log", "wb") as log:
            ns.popen(
                argv, env=self.inst.env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def start_prometheus(self) -> None:
        """A real Prometheus on contrib's config, scraping the daemon every second."""
        self.prom_port = free_port()
        text = PROM_CONFIG.read_text()
        for old, new in (
            (r"(?m)^(\s*(scrape|evaluation)_interval:) 15s$", r"\1 1s"),
            (r'"127\.0\.0\.1:9813"', f'"127.0.0.1:{self.daemon_port}"'),
        ):
            text, n = re.subn(old, new, text)
            assert n, (old, text)
        conf = self.tmp / "prom"
        conf.mkdir()
        (conf / "prometheus.yml").write_text(text)
        shutil.copy(RULES, conf / RULES.name)  # the rules as shipped
        res = run([PROMTOOL, "check", "config", str(conf / "prometheus.yml")])
        assert res.returncode == 0, res.stdout + res.stderr
        argv = [
            PROMETHEUS,
            f"--config.file={conf / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.tmp / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{self.prom_port}",
            "--log.level=warn",
        ]
        self.spawn("prometheus", argv)
        proc = self.procs[-1]

        def ready() -> bool:
            assert proc.poll() is None, f"prometheus exited:\n{self.log('prometheus')}"
            try:
                return bool(self.get(f"{self.prom_url}/-/ready", timeout=2))
            except OSError:
                return False

        wait_for(ready, 30, "prometheus to be ready", step=0.25)

    @property
    def prom_url(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    def api(self, path: str, **params: str) -> dict:
        """GET /api/v1/PATH; the parsed answer, errors (HTTP 400/422) included."""
        url = f"{self.prom_url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            body = self.get(url, timeout=10)
        except urllib.error.HTTPError as exc:
            body = exc.read()
        return json.loads(body)

    def query(self, expr: str) -> list[dict]:
        """An instant query that must parse and run; its result vector."""
        ans = self.api("query", query=expr)
        assert ans["status"] == "success", (expr, ans)
        return ans["data"]["result"]

    def query_range(self, expr: str, seconds: int = 20) -> list[dict]:
        now = time.time()
        ans = self.api("query_range", query=expr, start=str(now - seconds), end=str(now), step="1")
        assert ans["status"] == "success", (expr, ans)
        return ans["data"]["result"]

    def close(self) -> None:
        problems = []
        for proc in reversed(self.procs):
            stop_process(proc, timeout=10, kill_timeout=5)
        try:
            self.inst.close()  # unit processes, namespaces, units, cgroups, pins
        except Exception as exc:
            problems.append(repr(exc))
        if self.bus is not None:
            self.bus.close()
        assert not problems, problems


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    need(PROMETHEUS)
    need(PROMTOOL)
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.close()


def by(result: list[dict], *labels: str) -> dict[tuple, float]:
    return {tuple(r["metric"].get(k, "") for k in labels): float(r["value"][1]) for r in result}


def test_dashboard_queries_and_alerts_on_a_live_daemon(stack: Stack) -> None:
    from ipacctd.bpf.stats import enabled_stats

    dash = dashboard()
    with enabled_stats():  # the kernel measures program run time while we hold the fd
        stack.start_daemon(stack.start_bus())
        stack.start_unit("fw", f"IPAddressDeny={DENIED}")
        stack.start_unit("canary", f"IPAddressDeny={DENIED}", "IPAddressDenyMode=audit")
        stack.start_prometheus()
        instance = f"127.0.0.1:{stack.daemon_port}"
        # job and instance as Grafana fills in a multi-value selection (one real value and
        # one that matches nothing), so every query also proves it takes a regex there.
        values = {
            "instance": grafana_regex([instance, "192.0.2.9:9813"]),
            "job": grafana_regex(["ipacctd", "other-job"]),
            "unit": ".*",
            "__rate_interval": "15s",
            "__range": "1m",
            "__interval": "1s",
        }
        targets = [(p["title"], t) for p in query_panels(dash) for t in p["targets"]]

        # Wait (bounded) until every dashboard query has data: two scrapes with traffic.
        def empty() -> list[tuple[str, str]]:
            exprs = [(title, expand(t["expr"], values)) for title, t in targets]
            return [(title, expr) for title, expr in exprs if not stack.query(expr)]

        try:
            wait_for(lambda: not empty(), 40, "every dashboard query to return data", step=0.25)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; still empty: {empty()}") from None
        wait_for(
            lambda: stack.api("alerts")["data"]["alerts"],
            10,
            "the rules to be evaluated",
            step=0.25,
        )

        # -- the template variables' own queries (Grafana: /api/v1/label/X/values) -----
        vars_ = variables(dash)
        got: dict[str, list[str]] = {}
        for name, var in vars_.items():
            if var["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", variable_query(var))
            assert m, variable_query(var)
            ans = stack.api(f"label/{m[2]}/values", **{"match[]": expand(m[1], values)})
            assert ans["status"] == "success", (name, ans)
            got[name] = ans["data"]
        assert got["instance"] == [instance]
        assert got["job"] == ["ipacctd"]
        assert sorted(got["unit"]) == [AUDIT_UNIT, FW_UNIT]
        # ... and with "All" for job and instance, and with a job that is not there.
        for job, inst, n in ((".*", ".*", 2), (grafana_regex(["other-job"]), ".*", 0)):
            ans = stack.api(
                "label/unit/values",
                **{"match[]": expand(m[1], {**values, "job": job, "instance": inst})},
            )
            assert len(ans["data"]) == n, (job, ans)

        # -- every panel's query, with "All" and with an explicit unit selection ------
        selections = {".*": {AUDIT_UNIT, FW_UNIT}, grafana_regex([FW_UNIT]): {FW_UNIT}}
        results: dict[str, list[dict]] = {}
        for title, t in targets:  # "All" for job and instance: the same data
            vals = {**values, "job": ".*", "instance": ".*"}
            assert stack.query(expand(t["expr"], vals)), (title, t["expr"])
        for unit_value, expected_units in selections.items():
            vals = {**values, "unit": unit_value}
            for title, t in targets:
                expr = expand(t["expr"], vals)
                res = stack.query(expr)
                assert res, (title, expr)
                if not t.get("instant"):
                    assert stack.query_range(expr), (title, expr)
                seen = {r["metric"]["unit"] for r in res if "unit" in r["metric"]}
                if "unit" in t["expr"] and "by (unit" in t["expr"]:
                    assert seen == expected_units, (title, expr, res)
                results[f"{title}/{t['refId']}/{unit_value}"] = res

        def panel(title: str, ref: str = "A") -> list[dict]:
            return results[f"{title}/{ref}/.*"]

        assert by(panel("Exporter up"), "instance") == {(instance,): 1.0}
        assert by(panel("Units by state"), "state")[("active",)] == 2
        assert by(panel("Active units without firewall"))[()] == 0
        assert [r["metric"]["version"] for r in panel("Version")]
        for title in ("Ingress rate per unit", "Egress rate per unit"):
            rates = by(panel(title), "unit")
            assert rates[(FW_UNIT,)] > 0 and rates[(AUDIT_UNIT,)] > 0, (title, rates)
        top = by(panel("Top units by traffic"), "unit")
        assert set(top) == {(FW_UNIT,), (AUDIT_UNIT,)} and min(top.values()) > 0
        assert min(by(panel("Packets per unit"), "unit", "direction").values()) > 0
        for title in ("Dropped traffic per unit", "Dropped packets per unit"):
            dropped = by(panel(title), "unit", "direction")
            assert dropped[(FW_UNIT, "egress")] > 0, (title, dropped)
            assert dropped[(FW_UNIT, "ingress")] > 0, (title, dropped)
            assert dropped[(AUDIT_UNIT, "egress")] == dropped[(AUDIT_UNIT, "ingress")] == 0
        audit = by(panel("Audit: would-be-denied traffic"), "unit", "direction")
        assert audit[(AUDIT_UNIT, "egress")] > 0 and audit[(AUDIT_UNIT, "ingress")] > 0, audit
        assert audit[(FW_UNIT, "egress")] == audit[(FW_UNIT, "ingress")] == 0, audit
        active = by(panel("Unit status", "A"), "unit", "state")
        assert active == {(FW_UNIT, "active"): 1, (AUDIT_UNIT, "active"): 1}
        enforced = by(panel("Unit status", "B"), "unit")
        assert enforced == {(FW_UNIT,): 1, (AUDIT_UNIT,): 1}
        sizes = by(panel("Policy sizes"), "unit", "list")
        assert sizes == {
            (u, lst): (1 if lst == "deny" else 0)
            for u in (FW_UNIT, AUDIT_UNIT)
            for lst in ("allow", "deny")
        }
        addresses = by(panel("Top denied remote addresses"), "unit", "direction", "address")
        for unit in (FW_UNIT, AUDIT_UNIT):  # dropped or audited: both are logged
            for direction in ("egress", "ingress"):
                assert addresses[(unit, direction, DENIED)] > 0, addresses
        assert {a for _, _, a in addresses} == {DENIED}, addresses
        cost = by(panel("Program cost per packet"), "unit", "direction")
        assert len(cost) == 4 and all(1 < ns < 1e6 for ns in cost.values()), cost
        cpu = by(panel("Program CPU time"), "unit", "direction")
        assert len(cpu) == 4 and all(0 < share < 1 for share in cpu.values()), cpu

        # -- the alert rules as Prometheus loaded them ---------------------------------
        rules = [r for g in stack.api("rules")["data"]["groups"] for r in g["rules"]]
        assert {r["name"] for r in rules if r["type"] == "alerting"} == ALERTS
        assert {r["name"] for r in rules if r["type"] == "recording"} == RECORDS
        for r in rules:
            assert r["health"] == "ok", r
            stack.query(r["query"])  # parses and runs through the query API
        expr = {r["name"]: r["query"] for r in rules}
        record = next(iter(RECORDS))

        def denied() -> dict[tuple, float]:  # needs the recording rule evaluated first
            return by(stack.query(expr["IpacctdDeniedTrafficRising"]), "unit", "direction")

        try:
            wait_for(lambda: len(denied()) >= 2, 20, "the denied-traffic rule", step=0.25)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {record} = {stack.query(record)}") from None
        assert set(denied()) == {(FW_UNIT, "egress"), (FW_UNIT, "ingress")}, denied()
        assert min(denied().values()) > 1  # denied packets/s, over the alert's threshold
        would = by(stack.query(expr["IpacctdAuditWouldDeny"]), "unit", "direction")
        assert set(would) == {(AUDIT_UNIT, "egress"), (AUDIT_UNIT, "ingress")}, would
        assert stack.query(expr["IpacctdFirewallNotEnforced"]) == []  # both are enforced
        assert stack.query(expr["IpacctdDown"]) == []

        def firing() -> dict[tuple, dict]:
            alerts = stack.api("alerts")["data"]["alerts"]
            return {
                (a["labels"]["alertname"], a["labels"].get("unit"), a["labels"].get("direction")): a
                for a in alerts
                # The denied-traffic alert waits 10 minutes (`for:`): pending is as far
                # as it gets here, with its labels and annotations filled in.
                if a["state"] == "firing"
                or (a["state"] == "pending" and a["labels"]["alertname"].endswith("Rising"))
            }

        expected = {
            ("IpacctdDeniedTrafficRising", FW_UNIT, "egress"),
            ("IpacctdDeniedTrafficRising", FW_UNIT, "ingress"),
            ("IpacctdAuditWouldDeny", AUDIT_UNIT, "egress"),
            ("IpacctdAuditWouldDeny", AUDIT_UNIT, "ingress"),
        }
        alerts = wait_for(
            lambda: set(firing()) >= expected and firing(), 10, "alerts firing", step=0.25
        )
        assert set(alerts) == expected, alerts
        for (_name, unit, direction), a in alerts.items():
            assert a["labels"]["instance"] == instance and a["labels"]["job"] == "ipacctd"
            assert unit in a["annotations"]["summary"], a
            assert direction in a["annotations"]["summary"], a
            assert unit in a["annotations"]["description"], a
            assert re.search(
                rf"\b\d+(\.\d+)?k? {direction} packets", a["annotations"]["description"]
            )
