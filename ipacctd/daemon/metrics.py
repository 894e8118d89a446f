"""Prometheus ``/metrics``: values read from the kernel maps at scrape time.

No second copy of the counters: a scrape reads every unit's counters map, and the series of
a removed unit vanish with it. Served from a thread (bound to localhost by default) with
prometheus_client's content negotiation (``choose_encoder``: the text format or
OpenMetrics; gzip on ``Accept-Encoding``; ``name[]`` filters), its ``process_*``/``python_*``
collectors and its exposition for every family of a fixed size; the per-unit families are
written by :class:`UnitCollector` from label strings cached per unit (why: see there).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import socket
import threading
import zlib
from collections.abc import Callable, Collection, Iterator
from socketserver import ThreadingMixIn
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Metric,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder, gzip_accepted

from ipacctd import __version__
from ipacctd.daemon.registry import Registry
from ipacctd.manager.counters import COUNTERS, METRIC_HELP, Counters, Kind
from ipacctd.manager.stats import StatsProbe, StatsReader
from ipacctd.manager.unit import UnitStatus

log = logging.getLogger("ipacctd.metrics")

DENIED_TOP = 10
#: The states of ``ipacctd_unit_state``: one series per state, 1 for the unit's own and 0
#: for the others (as systemd_exporter's ``systemd_unit_state``), so that no series
#: vanishes or appears when a unit changes state.
STATES = ("active", "activating", "deactivating", "inactive", "failed")
#: How long a scrape waits for the event loop to take the snapshot of the units.
SNAPSHOT_TIMEOUT = 30.0
#: gzip level of a compressed scrape. ``gzip.compress``'s default (9, the library's) costs
#: 0.45 s of CPU on the 16 MB of 10,000 units, level 1 0.07 s for a body 9 % larger
#: (1.52 vs 1.26 MB; measured on this 2-CPU machine).
GZIP_LEVEL = 1
OPENMETRICS_TYPE = "application/openmetrics-text"

Snapshot = list[tuple[str, UnitStatus, "Counters | None"]]


def escape_value(value: str) -> str:
    """A label value as both the text format and OpenMetrics escape it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class Family:
    """One per-unit family: its header in either format, and its series' line prefixes.

    Labels are written sorted, as prometheus_client writes them; every label name ipacctd
    uses sorts before ``unit``, so a series line is a constant prefix, the unit's cached
    ``unit="…"}`` string and the value.
    """

    __slots__ = ("name", "om_head", "sample", "text_head")

    def __init__(self, name: str, doc: str, kind: str) -> None:
        self.name = name
        # The text format names a counter's family X_total and an info family X_info (a
        # gauge); OpenMetrics names the family X and its samples X_total / X_info.
        suffix = {"counter": "_total", "info": "_info"}.get(kind, "")
        self.sample = name + suffix
        text_doc = doc.replace("\\", r"\\").replace("\n", r"\n")
        text_kind = "gauge" if kind == "info" else kind
        self.text_head = f"# HELP {self.sample} {text_doc}\n# TYPE {self.sample} {text_kind}\n"
        self.om_head = f"# HELP {name} {escape_value(doc)}\n# TYPE {name} {kind}\n"

    def prefix(self, **labels: str) -> str:
        """The start of a series line, up to the ``unit`` label."""
        return (
            self.sample
            + "{"
            + "".join(f'{k}="{escape_value(v)}",' for k, v in sorted(labels.items()))
        )


#: (family, its (line prefix, Counters attribute) for ingress and egress, counts passed traffic)
TRAFFIC = tuple(
    (
        fam,
        tuple((fam.prefix(direction=c.label), c.attr) for c in COUNTERS if c.metric == metric),
        any(c.kind is Kind.PASSED for c in COUNTERS if c.metric == metric),
    )
    for metric, doc in METRIC_HELP.items()
    for fam in (Family(metric, doc, "counter"),)
)
UNIT_STATE = Family(
    "ipacctd_unit_state",
    "1 for the unit's active state (active, inactive, failed), 0 for the others",
    "gauge",
)
#: A unit's five ``ipacctd_unit_state`` lines by its state (None: none of them), ``%s`` for
#: its ``unit="…"}``.
STATE_LINES = {
    own: "".join(f"{UNIT_STATE.prefix(state=s)}%s {1 if s == own else 0}\n" for s in STATES)
    for own in (*STATES, None)
}
ENFORCED = Family(
    "ipacctd_unit_firewall_enforced",
    "1 when the unit's recorded policy is in force on the live cgroup at its path "
    "(0: not, or no live cgroup)",
    "gauge",
)
PREFIXES = Family(
    "ipacctd_unit_policy_prefixes", "Prefixes in the unit's allow and deny lists", "gauge"
)
DENIED = Family(
    "ipacctd_unit_denied_address_packets",
    f"Packets denied per remote address (top {DENIED_TOP} per unit, from a bounded "
    "LRU log: an evicted address starts again at 0)",
    "gauge",
)
# One series per container unit (bounded like the units themselves), to join on ``unit``:
# the container labels stay off the traffic series.
CONTAINER = Family(
    "ipacctd_unit_container", "The container behind a unit (engine, name, short id, pod)", "info"
)
RUN_TIME = Family(
    "ipacctd_program_run_time_seconds",
    "Time spent in the unit's programs (BPF stats on)",
    "counter",
)
RUN_COUNT = Family("ipacctd_program_runs", "Runs of the unit's programs (BPF stats on)", "counter")


class UnitCollector:
    """Writes every unit of a :class:`Registry` in the exposition, counters read at scrape time.

    A scrape runs in the HTTP server's thread. The registry belongs to the event loop, so
    the loop takes the snapshot (the unit list, each unit's last status and one counters
    map read per unit through the registry's cached fds); writing the exposition runs in
    the scrape's thread, as do the reads that open their own fds (denied addresses,
    program statistics).

    Why not prometheus_client's ``generate_latest`` for these families (issue 14 item 5
    asks for the library's exposition unless a measurement shows it breaks the 10k-unit
    scrape target): it builds a ``Sample`` per series and validates and escapes every
    label name and value again on each scrape, 18 series per unit. bench/daemon.py at
    10,000 units on this 2-CPU machine: 2.97 s of daemon CPU per scrape (13.7 s wall,
    load average ~12), against a target of 0.3 s. Here each unit's ``unit="…"}`` label
    string is built once (a unit's name never changes; container labels are rebuilt when
    the container record changes) and a scrape only formats numbers: 0.22 s (figures in
    :class:`MetricsServer` and bench/results-daemon.txt). The families of a fixed size
    (``ipacctd_units``, ``ipacctd_build_info``, ``process_*``, ``python_*``) stay the
    library's, and so do the content negotiation and gzip; tests/unit/test_metrics_render.py
    holds the output to the library's for the same families.
    """

    def __init__(
        self,
        registry: Registry,
        program_stats: bool = True,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.registry = registry
        self.program_stats = program_stats
        self.stats_probe = StatsProbe()
        self._probe_lock = threading.Lock()  # scrapes may run in parallel threads
        self._stats = StatsReader()
        self._stats_lock = threading.Lock()
        self.loop = loop
        self._labels: dict[str, str] = {}  # unit name → 'unit="…"}'
        self._containers: dict[str, tuple[object, str]] = {}  # name → (record, its labels)

    def snapshot(self) -> Snapshot:
        """(name, status, counters) of every unit, by name. Runs on the registry's loop."""
        # Read only: the entries keep the counters the last poll announced, so that a
        # scrape between two polls does not swallow a change the next poll would signal.
        reg = self.registry
        units = sorted(reg.units.items())
        counters = reg.reader.read_many(n for n, _ in units)
        return [(name, entry.status, c) for (name, entry), c in zip(units, counters, strict=True)]

    def snapshot_from_any_thread(self) -> Snapshot:
        loop = self.loop
        if loop is None or _running_loop() is loop:
            return self.snapshot()
        result: concurrent.futures.Future = concurrent.futures.Future()

        def take() -> None:
            if result.set_running_or_notify_cancel():
                try:
                    result.set_result(self.snapshot())
                except BaseException as exc:
                    result.set_exception(exc)

        loop.call_soon_threadsafe(take)
        try:
            return result.result(SNAPSHOT_TIMEOUT)
        finally:
            result.cancel()  # a loop that never got to it must not run it later

    def _label(self, name: str) -> str:
        label = self._labels.get(name)
        if label is None:
            label = self._labels[name] = f'unit="{escape_value(name)}"}}'
        return label

    def _container(self, name: str, ci) -> str:
        cached = self._containers.get(name)
        if cached is not None and cached[0] == ci:
            return cached[1]
        line = CONTAINER.prefix(
            engine=ci.engine,
            container_id=ci.short_id,
            container_name=ci.name or "",
            pod=ci.pod or "",
        )
        self._containers[name] = (ci, line)
        return line

    def _stats_of(self, snap: Snapshot, on: bool) -> dict[str, dict]:
        """Program statistics of the attached units of ``snap`` (their program fds kept
        while statistics are on: :class:`StatsReader`; let go when they turn off).

        Two fds a unit, within what RLIMIT_NOFILE leaves beside the counters fds (one a
        unit) and a reserve for everything else: the units beyond are read by opening and
        closing their programs, never by taking the fds the daemon's own reads need."""
        reader = self._stats
        if not on:
            reader.close()
            return {}
        pin_dir = self.registry.manager.store.pin_dir
        # Units whose fds may be kept besides those kept already.
        spare = (_fd_limit() - 2 * len(snap) - FD_RESERVE) // 2 - len(reader)
        out = {}
        for name, st, _ in snap:
            if st.attached:
                kept = name in reader
                if not kept and spare > 0:
                    spare -= 1
                    kept = True
                out[name] = reader.read(name, st, pin_dir, kept)
        reader.keep_only(set(out))
        return out

    def families(self, snap: Snapshot) -> list[Metric]:
        """The families of a fixed size, for prometheus_client's exposition."""
        counts = dict.fromkeys(STATES, 0)
        for _, st, _ in snap:
            counts[st.active_state] = counts.get(st.active_state, 0) + 1
        units = GaugeMetricFamily("ipacctd_units", "Units by active state", labels=["state"])
        for state in STATES:
            units.add_metric([state], counts[state])
        info = InfoMetricFamily("ipacctd_build", "ipacctd version")
        info.add_metric([], {"version": __version__})
        return [units, info]

    def render(
        self, snap: Snapshot, openmetrics: bool = False, names: Collection[str] | None = None
    ) -> Iterator[bytes]:
        """The per-unit families of ``snap`` in the text format or OpenMetrics, one bytes
        chunk each, made as the response is written; only those whose sample name is in
        ``names`` (``name[]``) when given.

        One pass over the units per family, its lines joined and let go before the next:
        the lines of all families at once (190,000 strings at 10,000 units) left 20 MB of
        fragmented heap behind each scrape, and all the chunks of a scrape at once (15 MB
        at 10,000 units) were the daemon's peak memory."""
        with self._probe_lock:
            program_stats = self.program_stats and self.stats_probe.on()
        label = self._label
        rows = [(label(name), name, st, st.unit.properties, c) for name, st, c in snap]

        def wanted(fam: Family) -> bool:
            return names is None or fam.sample in names

        def emit(fam: Family, lines: list[str]) -> bytes:
            lines.insert(0, fam.om_head if openmetrics else fam.text_head)
            return "".join(lines).encode()

        for fam, ((p1, a1), (p2, a2)), passed in TRAFFIC:
            if wanted(fam):  # as systemd: no passed counters without IPAccounting=
                yield emit(
                    fam,
                    [
                        f"{p1}{u} {getattr(c, a1)}\n{p2}{u} {getattr(c, a2)}\n"
                        for u, _, _, props, c in rows
                        if c is not None and (props.ip_accounting or not passed)
                    ],
                )
        if wanted(UNIT_STATE):  # all five lines of a unit from one template
            none = STATE_LINES[None]
            yield emit(
                UNIT_STATE,
                [STATE_LINES.get(st.active_state, none) % ((u,) * 5) for u, _, st, _, _ in rows],
            )
        if wanted(ENFORCED):
            p = ENFORCED.prefix()
            yield emit(
                ENFORCED,
                [f"{p}{u} {1 if st.enforcement.enforced else 0}\n" for u, _, st, _, _ in rows],
            )
        if wanted(PREFIXES):
            pa, pd = PREFIXES.prefix(list="allow"), PREFIXES.prefix(list="deny")
            yield emit(
                PREFIXES,
                [
                    f"{pa}{u} {len(props.ip_address_allow)}\n{pd}{u} {len(props.ip_address_deny)}\n"
                    for u, _, _, props, _ in rows
                ],
            )
        if wanted(DENIED):
            lines = []
            for u, name, _, props, c in rows:
                # The denied-address log is written on the drop and audit paths only:
                # nothing to read (five syscalls saved per unit) while those are zero.
                if (
                    props.ip_address_deny
                    and c is not None
                    and (
                        c.ingress_dropped_packets
                        or c.egress_dropped_packets
                        or c.ingress_audit_packets
                        or c.egress_audit_packets
                    )
                ):
                    for e in self.registry.manager.denied(name, DENIED_TOP):
                        prefix = DENIED.prefix(address=e["address"], direction=e["direction"])
                        lines.append(f"{prefix}{u} {e['packets']}\n")
            yield emit(DENIED, lines)
        if wanted(CONTAINER):
            yield emit(
                CONTAINER,
                [
                    f"{self._container(name, st.unit.container)}{u} 1\n"
                    for u, name, st, _, _ in rows
                    if st.unit.container is not None
                ],
            )
        if self.program_stats and (wanted(RUN_TIME) or wanted(RUN_COUNT)):
            run_time: list[str] = []
            run_count: list[str] = []
            with self._stats_lock:
                stats_of = self._stats_of(snap, program_stats)
            for u, name, st, _, _ in rows if program_stats else ():
                if not st.attached:
                    continue
                for direction, stats in stats_of[name].items():
                    if stats.run_cnt:
                        d = direction.name.lower()
                        run_time.append(
                            f'{RUN_TIME.sample}{{direction="{d}",{u} {stats.run_time_ns / 1e9!r}\n'
                        )
                        run_count.append(
                            f'{RUN_COUNT.sample}{{direction="{d}",{u} {stats.run_cnt}\n'
                        )
            for fam, lines in ((RUN_TIME, run_time), (RUN_COUNT, run_count)):
                if wanted(fam):
                    yield emit(fam, lines)
        if len(self._labels) > 2 * len(snap) + 64:  # units come and go: forget the gone
            keep = {name for name, _, _ in snap}
            self._labels = {n: v for n, v in self._labels.items() if n in keep}
            self._containers = {n: v for n, v in self._containers.items() if n in keep}


#: File descriptors a scrape leaves to everything else when keeping programs' fds.
FD_RESERVE = 1024


def _fd_limit() -> int:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


class _Families:
    """What prometheus_client's encoders read in one scrape: the library's collectors and
    ipacctd's families of a fixed size."""

    def __init__(self, prom: CollectorRegistry, extra: list[Metric]) -> None:
        self.prom = prom
        self.extra = extra

    def collect(self) -> Iterator[Metric]:
        yield from self.prom.collect()
        yield from self.extra


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def make_registry() -> CollectorRegistry:
    """A prometheus_client registry with the client library's own ``process_*`` and
    ``python_*`` collectors (CPU, memory, open fds, GC, version)."""
    reg = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    return reg


def exposition(
    units: UnitCollector,
    prom: CollectorRegistry,
    accept: str | None,
    names: Collection[str] | None = None,
) -> tuple[str, Iterator[bytes]]:
    """(content type, body in chunks, each made as it is taken) of one scrape, the format
    chosen by prometheus_client's ``choose_encoder`` from ``Accept``: the library writes
    its collectors and the fixed-size families, :meth:`UnitCollector.render` the per-unit
    ones (before OpenMetrics' ``# EOF``, which must come last)."""
    encoder, content_type = choose_encoder(accept or "")
    openmetrics = content_type.startswith(OPENMETRICS_TYPE)
    snap = units.snapshot_from_any_thread()
    extra = units.families(snap)
    if names is not None:
        lib: object = prom.restricted_registry(names)
        extra = [f for f in extra if any(s.name in names for s in f.samples)]
    else:
        lib = prom
    head = encoder(_Families(lib, extra))  # type: ignore[arg-type]
    body = units.render(snap, openmetrics, names)
    if openmetrics:
        eof = b"# EOF\n"
        assert head.endswith(eof), head[-40:]
        return content_type, itertools.chain([head[: -len(eof)]], body, [eof])
    return content_type, itertools.chain([head], body)


def _gzip(chunks: Iterator[bytes]) -> Iterator[bytes]:
    z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip
    for chunk in chunks:
        out = z.compress(chunk)
        if out:
            yield out
    yield z.flush()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in flight must not hold up the daemon's exit
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class MetricsServer:
    """``GET /metrics`` (and ``/`` with a pointer to it) over HTTP, in threads of its own.

    As prometheus_client's ``make_wsgi_app`` serves a registry (the format from ``Accept``
    by ``choose_encoder``, gzip on ``Accept-Encoding``, ``name[]`` filters), with the
    per-unit families written by :meth:`UnitCollector.render`. It runs in the server's
    threads and never on the event loop: D-Bus calls and polls go on during a scrape (the
    loop only takes the snapshot of the units). bench/daemon.py, daemon CPU per scrape
    (wall time in brackets), 2 CPUs under a load average of ~12:

    * hand-written renderer on the loop: 1,000 units 106 ms (759 ms), 10,000 units 1.29 s;
    * prometheus_client's families and exposition: 149 ms (235 ms), 2.97 s (13.7 s);
    * cached label strings (now), load average ~1-4: 1,000 units 12 ms (11 ms), 10,000
      units 0.22 s (0.21 s; 0.11 s of CPU in-process without the polls running beside it);
      with gzip 0.28 s, OpenMetrics 0.22 s. With BPF run-time statistics on, reading every
      unit's program statistics (12 syscalls a unit) made it 1.5 s wall at 10,000 units;
      with their fds kept (:class:`StatsReader`, one syscall a program) ~0.3-0.4 s.

    The body is written family by family as it is made (no Content-Length: the server
    speaks HTTP/1.0 and closes the connection at its end), so that a scrape never holds
    the whole text (15 MB at 10,000 units) at once.
    """

    def __init__(self, units: UnitCollector, prom: CollectorRegistry, host: str, port: int) -> None:
        def metrics_app(environ: dict, start_response: Callable) -> list[bytes]:
            method = environ["REQUEST_METHOD"]
            if method == "OPTIONS":  # as prometheus_client's make_wsgi_app answers
                start_response("200 OK", [("Allow", "OPTIONS,GET")])
                return [b""]
            if method not in ("GET", "HEAD"):
                start_response("405 Method Not Allowed", [("Allow", "OPTIONS,GET")])
                return [f"# HTTP 405 Method Not Allowed: {method}; use OPTIONS or GET\n".encode()]
            params = parse_qs(environ.get("QUERY_STRING", ""))
            content_type, body = exposition(
                units, prom, environ.get("HTTP_ACCEPT"), params.get("name[]")
            )
            headers = [("Content-Type", content_type)]
            if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
                body = _gzip(body)
                headers.append(("Content-Encoding", "gzip"))
            # Written chunk by chunk as made, without Content-Length (the server speaks
            # HTTP/1.0: the end of the body is the end of the connection).
            start_response("200 OK", headers)
            return body

        def app(environ: dict, start_response: Callable) -> list[bytes]:
            path = environ.get("PATH_INFO", "/")
            if path == "/metrics":
                return metrics_app(environ, start_response)
            if path == "/":
                start_response("200 OK", [("Content-Type", "text/html")])
                return [b'<html><body><a href="/metrics">/metrics</a></body></html>\n']
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]

        # The address family of HOST (WSGIServer is AF_INET only by default).
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]

        class Server(_Server):
            address_family = family

        self.httpd = make_server(sockaddr[0], port, app, Server, handler_class=_QuietHandler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="ipacctd-metrics", daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def close(self) -> None:
        """Stop accepting scrapes and close the socket (scrapes in flight end on their own)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def serve(
    units: UnitCollector, host: str, port: int, prom: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve the units and ``prom`` (by default :func:`make_registry`'s) on HOST:PORT until
    :meth:`MetricsServer.close`."""
    return MetricsServer(units, make_registry() if prom is None else prom, host, port)
