#!/usr/bin/env python3
"""Datapath benchmark: ns per packet of ipacctd's cgroup_skb programs under BPF_PROG_TEST_RUN.

Every measurement of a program is paired with one of a ``return 1`` program (the floor) on
the same frame, taken right before or after it (the order alternates by round), so that the
noise of this machine is shared by both; each case reports the median of several rounds.
Cases: deny lists of 0 / 1 / 100 / 10k / 100k prefixes and allow+deny lists, IPv4 and IPv6,
egress (destination checked) and ingress (source checked), packets that hit an allow entry,
hit a deny entry or miss; accounting is on throughout. Each row names the lookup strategy
the policy's table got (inline, lpm, multibit; see ipacctd/datapath/lookup.py). Random
prefix lists are seeded and every tested address is checked against the table's own
lookup (trie or multibit table in Python), ``FamilyRules.verdict`` and, while measuring,
the program's return value.

With ``--systemd`` the script also boots systemd 252 through shared/tools/systemd-ref (or
reuses a running one), takes the programs systemd attached to sdref-long.service
(IPAccounting=yes, IPAddressDeny=198.51.100.1) and times them beside ipacctd's programs for
the same policy on the same frames. systemd-ref is brought down again if this script
brought it up.

Run as root:  python3 bench/datapath.py [--quick] [--repeat N] [--runs N] [--systemd]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import os
import platform
import random
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from ipacctd import cgroup  # noqa: E402
from ipacctd.bpf.links import open_cgroup, prog_query  # noqa: E402
from ipacctd.bpf.maps import LPMTrieMap, PerCPUArrayMap  # noqa: E402
from ipacctd.bpf.programs import Program, return_one  # noqa: E402
from ipacctd.bpf.types import AttachType  # noqa: E402
from ipacctd.datapath import counters, denied, lookup  # noqa: E402
from ipacctd.datapath import program as program_mod  # noqa: E402
from ipacctd.datapath.counters import Direction  # noqa: E402
from ipacctd.datapath.rules import DENY, PASS, FamilyRules, compile_rules  # noqa: E402
from ipacctd.datapath.unit import ATTACH, Programs, Spec, build_programs  # noqa: E402

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def shared_tools() -> Path:
    """``shared/tools`` beside the checkout (or beside a parent: worktrees nest deeper)."""
    for parent in ROOT.parents:
        if (parent / "shared" / "tools").is_dir():
            return parent / "shared" / "tools"
    return ROOT.parent / "shared" / "tools"


SYSTEMD_REF = Path(os.environ.get("SYSTEMD_REF", shared_tools() / "systemd-ref" / "systemd-ref.sh"))
SDREF_PIDFILE = Path("/tmp/sdref.pid")
SDREF_LOCK = "/tmp/sdref.lock"
SDREF_UNIT = "sdref/system.slice/sdref-long.service"  # relative to the cgroup2 mount

# Prefix-length mix of the random lists (weights), shaped like real block lists: mostly
# /24 and host routes in IPv4, /48, /64 and host routes in IPv6, a few short prefixes.
V4_LENGTHS = {
    12: 1,
    14: 2,
    16: 40,
    18: 30,
    19: 30,
    20: 60,
    21: 60,
    22: 120,
    23: 100,
    24: 3500,
    25: 50,
    26: 80,
    27: 80,
    28: 120,
    29: 150,
    30: 100,
    31: 30,
    32: 5000,
}
V6_LENGTHS = {
    20: 1,
    24: 2,
    28: 10,
    29: 40,
    32: 300,
    36: 100,
    40: 150,
    44: 200,
    48: 3500,
    52: 100,
    56: 800,
    60: 100,
    64: 2500,
    72: 50,
    80: 50,
    96: 100,
    112: 100,
    120: 50,
    124: 50,
    128: 1500,
}

# The side of the frame that is not checked (source on egress, destination on ingress).
OTHER = {4: ipaddress.ip_address("192.0.2.10"), 6: ipaddress.ip_address("2001:db8:ffff::10")}
PAYLOAD = 64


def frame(src: Address, dst: Address) -> bytes:
    """An Ethernet frame with a UDP datagram of PAYLOAD bytes (106 bytes for IPv4)."""
    udp = struct.pack("!HHHH", 40000, 9, 8 + PAYLOAD, 0) + b"x" * PAYLOAD
    if src.version == 4:
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src.packed, dst.packed
        )
        return b"\0" * 12 + b"\x08\x00" + ip + udp
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, src.packed, dst.packed)
    return b"\0" * 12 + b"\x86\xdd" + ip + udp


def packet(direction: Direction, address: Address) -> bytes:
    """A frame whose checked address (destination on egress, source on ingress) is ``address``."""
    other = OTHER[address.version]
    if direction == Direction.EGRESS:
        return frame(other, address)
    return frame(address, other)


# -- policies -------------------------------------------------------------------------------


def random_net(
    rng: random.Random,
    version: int,
    lengths: dict[int, int] | None = None,
    inside: Network | None = None,
) -> Network:
    """A random prefix with a length drawn from the mix (IPv6 within 2000::/3)."""
    table = lengths or (V4_LENGTHS if version == 4 else V6_LENGTHS)
    plen = rng.choices(list(table), weights=list(table.values()))[0]
    bits = 32 if version == 4 else 128
    if inside is not None:
        base, fixed = int(inside.network_address), inside.prefixlen
    elif version == 6:
        base, fixed = 1 << 125, 3
    else:
        base, fixed = 0, 0
    value = base | rng.getrandbits(bits - fixed)
    return ipaddress.ip_network((value, plen), strict=False)


def random_host(rng: random.Random, net: Network) -> Address:
    return net.network_address + rng.randrange(net.num_addresses)


@dataclass
class Policy:
    """One benchmarked policy: a list kind, a size, one family, the addresses to test."""

    kind: str  # "deny" or "allow+deny"
    size: int  # prefixes in the deny list
    version: int
    spec: Spec
    addresses: dict[str, Address]  # packet label → checked address
    progs: Programs | None = None
    log: denied.Log | None = None  # the denied-addresses log, as a unit with a deny list has

    def build(self, counters_map: PerCPUArrayMap) -> None:
        """Load the programs as UnitDatapath does: with the denied-addresses log when the
        policy has a deny list."""
        self.log = unit_log(self.spec)
        self.progs = build_programs(self.spec, counters_map, self.log)

    def close(self) -> None:
        if self.progs is not None:
            self.progs.close()
        if self.log is not None:
            self.log.close()

    @property
    def label(self) -> str:
        return f"{self.kind} {size_label(self.size)} IPv{self.version}"

    @property
    def rules(self) -> FamilyRules:
        assert self.progs is not None and self.progs.rules is not None
        return self.progs.rules[0 if self.version == 4 else 1]

    @property
    def table(self) -> lookup.Table | None:
        assert self.progs is not None
        return self.progs.table(self.version)

    @property
    def strategy(self) -> str:
        table = self.table
        return table.strategy if table is not None else "none"


def unit_log(spec: Spec) -> denied.Log | None:
    """A fresh denied-addresses log when ``spec`` has a deny list (what UnitDatapath.create
    pins for a unit made with one: busy-flag slots)."""
    return denied.create_map() if spec.deny else None


def size_label(n: int) -> str:
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


FIXED = {  # the small hand-written policies and their test addresses
    4: {
        "deny": ("198.51.100.1/32", "198.51.100.2"),
        "allow": (
            "198.51.100.0/24",
            "198.51.100.7/32",
            "198.51.100.1",
            "198.51.100.7",
            "203.0.113.1",
        ),
    },
    6: {
        "deny": ("2001:db8::1/128", "2001:db8::2"),
        "allow": (
            "2001:db8::/64",
            "2001:db8::7/128",
            "2001:db8::1",
            "2001:db8::7",
            "2001:db8:1::1",
        ),
    },
}


def make_policy(kind: str, size: int, version: int, seed: int) -> Policy:
    """The policy's spec; test addresses are chosen after the build (see choose_addresses)."""
    ip, net = ipaddress.ip_address, ipaddress.ip_network
    if size == 0:
        return Policy(kind, 0, version, Spec(), {"miss": ip(FIXED[version]["deny"][1])})
    if size == 1 and kind == "deny":
        deny, miss = FIXED[version]["deny"]
        return Policy(
            kind,
            1,
            version,
            Spec(deny=(net(deny),)),
            {"deny-hit": ip(deny.split("/")[0]), "miss": ip(miss)},
        )
    if size == 1:
        deny, allow, hit_d, hit_a, miss = FIXED[version]["allow"]
        return Policy(
            kind,
            1,
            version,
            Spec(allow=(net(allow),), deny=(net(deny),)),
            {"allow-hit": ip(hit_a), "deny-hit": ip(hit_d), "miss": ip(miss)},
        )
    rng = random.Random(f"{seed}-{kind}-{size}-{version}")
    denies: set[Network] = set()
    while len(denies) < size:
        denies.add(random_net(rng, version))
    allows: set[Network] = set()
    if kind != "deny":  # an allow list a tenth the size, each entry inside some deny prefix
        pool = sorted(d for d in denies if d.prefixlen < d.max_prefixlen)
        while len(allows) < max(1, size // 10):
            parent = rng.choice(pool)
            lengths = {
                n: w
                for n, w in (V4_LENGTHS if version == 4 else V6_LENGTHS).items()
                if n > parent.prefixlen
            }
            allows.add(random_net(rng, version, lengths, parent))
    spec = Spec(allow=tuple(sorted(allows)), deny=tuple(sorted(denies)))
    labels = ["allow-hit", "deny-hit", "miss"] if kind != "deny" else ["deny-hit", "miss"]
    return Policy(kind, size, version, spec, dict.fromkeys(labels, ip(0)))  # filled later


def choose_addresses(policy: Policy, seed: int) -> None:
    """Pick random test addresses for a random policy: a host inside one of the longest
    entries with the wanted verdict, and a random address no entry contains."""
    if policy.size <= 1:
        return
    rng = random.Random(f"{seed}-addr-{policy.kind}-{policy.size}-{policy.version}")
    entries = policy.rules.entries
    match = Matcher(policy.rules)
    for label in policy.addresses:
        if label == "miss":
            host = {32 if policy.version == 4 else 128: 1}
            probe = random_net(rng, policy.version, host).network_address
            while match(probe) is not None:
                probe = random_net(rng, policy.version, host).network_address
            policy.addresses[label] = probe
            continue
        want = DENY if label == "deny-hit" else PASS
        nets = [n for n, v in entries.items() if v == want]
        longest = max(n.prefixlen for n in nets)
        nets = sorted(n for n in nets if n.prefixlen == longest)
        policy.addresses[label] = random_host(rng, rng.choice(nets))


class Matcher:
    """Longest-prefix match over a compiled table with integers: the matching entry's
    verdict, or None when no entry contains the address."""

    def __init__(self, rules: FamilyRules) -> None:
        self.bits = 32 if rules.version == 4 else 128
        self.by_len: dict[int, dict[int, int]] = {}
        for net, verdict in rules.entries.items():
            shift = self.bits - net.prefixlen
            self.by_len.setdefault(net.prefixlen, {})[int(net.network_address) >> shift] = verdict
        self.lengths = sorted(self.by_len, reverse=True)

    def __call__(self, address: Address) -> int | None:
        value = int(address)
        for plen in self.lengths:
            got = self.by_len[plen].get(value >> (self.bits - plen))
            if got is not None:
                return got
        return None


def check_addresses(policy: Policy) -> None:
    """Each address must hit or miss as labelled: by an integer longest-prefix match, by
    the table's own lookup (trie, multibit table) and by ``FamilyRules.verdict``."""
    table, match = policy.table, Matcher(policy.rules)
    for label, address in policy.addresses.items():
        want_found = {"deny-hit": DENY, "allow-hit": PASS, "miss": None}[label]
        want_verdict = DENY if label == "deny-hit" else PASS
        got = [
            ("match", match(address), want_found),
            ("verdict", policy.rules.verdict(address), want_verdict),
        ]
        if table is not None and table.strategy == lookup.LPM:
            assert isinstance(table.map, LPMTrieMap)
            value = table.map.lookup_address(address)
            got.append(("trie", value[0] if value is not None else None, want_found))
        if table is not None and table.multibit is not None:
            got.append(("multibit", table.multibit.lookup(int(address)), want_verdict))
        for what, value, want in got:
            if value != want:
                raise SystemExit(
                    f"{policy.label}: {label} address {address}: {what} gives "
                    f"{value!r}, expected {want!r}"
                )


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Case:
    label: str
    prog: Program
    data: bytes
    expect: int  # program return value: 1 pass, 0 drop
    key: tuple = ()  # cases with equal keys but different sizes are compared
    ns: list[int] = field(default_factory=list)
    floor: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.ns)

    @property
    def floor_median(self) -> float:
        return statistics.median(self.floor)

    @property
    def above(self) -> float:
        """Median over rounds of (program - its paired floor run)."""
        return statistics.median(a - f for a, f in zip(self.ns, self.floor, strict=True))


def measure(cases: list[Case], floor: Program, repeat: int, runs: int) -> None:
    """Round-robin over the cases; each program run is paired with a floor run."""
    for case in cases:  # warm-up and sanity check of the verdict
        got = case.prog.test_run(case.data, 1).retval
        if got != case.expect:
            raise SystemExit(f"{case.label}: program returned {got}, expected {case.expect}")
    for rnd in range(runs):
        for case in cases:
            if rnd % 2:
                res = case.prog.test_run(case.data, repeat)
                base = floor.test_run(case.data, repeat)
            else:
                base = floor.test_run(case.data, repeat)
                res = case.prog.test_run(case.data, repeat)
            if res.retval != case.expect:
                raise SystemExit(f"{case.label}: returned {res.retval}, expected {case.expect}")
            case.ns.append(res.duration_ns)
            case.floor.append(base.duration_ns)


def ratio(a: float, b: float) -> str:
    return f"{a / b:6.2f}" if b > 0 else "     -"


def print_table(cases: list[Case], reference: dict[tuple, Case]) -> None:
    width = max(len(c.label) for c in cases)
    print(
        f"{'case':{width}} {'ns/pkt':>7} {'floor':>6} {'above':>6} {'x floor':>7} "
        f"{'x 1-prefix':>10}"
    )
    for case in cases:
        ref = reference.get(case.key)
        rel = ratio(case.above, ref.above) if ref is not None else "     -"
        print(
            f"{case.label:{width}} {case.median:7.1f} {case.floor_median:6.1f} {case.above:6.1f} "
            f"{ratio(case.median, case.floor_median):>7} {rel:>10}"
        )


# -- policy build time ----------------------------------------------------------------------


def time_build(policy: Policy, counters_map: PerCPUArrayMap) -> BuildRow:
    """Times of one policy's build, and what its table costs in memory.

    The total is one ``build_programs`` call (what applying a policy costs); compile, table
    build and load are timed again on their own.
    """
    log = unit_log(policy.spec)
    start = time.perf_counter()
    progs = build_programs(policy.spec, counters_map, log)
    total = time.perf_counter() - start
    try:
        start = time.perf_counter()
        v4, v6 = compile_rules(policy.spec.allow, policy.spec.deny)
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        tables = {r.version: lookup.build_table(r) for r in (v4, v6)}
        table_s = time.perf_counter() - start
        try:
            start = time.perf_counter()
            for direction in Direction:
                shape = program_mod.Shape(
                    direction,
                    policy.spec.accounting,
                    policy.spec.audit,
                    v4,
                    v6,
                    log_denied=log is not None,
                )
                insns = program_mod.build(shape, counters_map, tables[4], tables[6], log)
                Program.load(insns, attach_type=ATTACH[direction]).close()
            load_s = time.perf_counter() - start
        finally:
            for t in tables.values():
                if t is not None:
                    t.close()
        entries = len(v4.entries) + len(v6.entries)
        table = progs.table(policy.version)
        memory = 0
        if table is not None and table.map is not None:
            memory = memlock(table.map.fd) + sum(memlock(h.fd) for h in table.hashes.values())
    finally:
        progs.close()
        if log is not None:
            log.close()
    return BuildRow(
        policy.label, policy.strategy, entries, compile_s, table_s, load_s, total, memory
    )


@dataclass
class BuildRow:
    label: str
    strategy: str
    entries: int
    compile_s: float
    table_s: float
    load_s: float
    total_s: float
    memory: int  # bytes the kernel charges for the table's map (memlock), 0 without one

    def __str__(self) -> str:
        mem = f"{self.memory / 2**20:9.2f}" if self.memory else f"{'-':>9}"
        return (
            f"{self.label:24} {self.strategy:8} {self.entries:8} "
            f"{self.compile_s * 1e3:11.1f} {self.table_s * 1e3:9.1f} "
            f"{self.load_s * 1e3:8.1f} {self.total_s * 1e3:9.1f} {mem}"
        )


def memlock(fd: int) -> int:
    """The kernel's memory figure for a BPF object (memlock in /proc/self/fdinfo)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    return 0


# -- systemd --------------------------------------------------------------------------------


def sdref(*args: str) -> subprocess.CompletedProcess:
    """Run systemd-ref.sh; its output goes to a log, not to our table."""
    return subprocess.run(
        ["bash", str(SYSTEMD_REF), *args], capture_output=True, text=True, check=False, timeout=300
    )


def sdref_running() -> bool:
    try:
        pid = int(SDREF_PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return Path(f"/proc/{pid}/exe").resolve().name == "systemd"


def unit_progs() -> tuple[int, int] | None:
    """(ingress, egress) ids of the programs systemd attached to sdref-long.service."""
    path = os.path.join(cgroup.mount_point(), SDREF_UNIT)
    if not os.path.isdir(path):
        return None
    fd = open_cgroup(path)
    try:
        ing = prog_query(fd, AttachType.CGROUP_INET_INGRESS).prog_ids
        eg = prog_query(fd, AttachType.CGROUP_INET_EGRESS).prog_ids
    finally:
        os.close(fd)
    if len(ing) != 1 or len(eg) != 1:
        return None
    return ing[0], eg[0]


@contextlib.contextmanager
def systemd_programs() -> Iterator[tuple[Program, Program]]:
    """systemd's (ingress, egress) programs of sdref-long.service, booting systemd-ref if
    needed; brings it down afterwards (also on error) when this function brought it up."""
    brought_up = False
    # systemd-ref is a machine-wide singleton: hold its lock while using it.
    lock = open(SDREF_LOCK, "a")  # noqa: SIM115 - held until the finally below
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        if not sdref_running():
            print(f"# starting systemd-ref ({SYSTEMD_REF} up)", file=sys.stderr)
            brought_up = True
            res = sdref("up")
            if res.returncode != 0 or not sdref_running():
                raise SystemExit(f"systemd-ref up failed:\n{res.stdout}{res.stderr}")
        ids = unit_progs()
        if ids is None:
            print("# creating sdref-long.service (systemd-ref.sh test)", file=sys.stderr)
            res = sdref("test")
            ids = unit_progs()
            if ids is None:
                raise SystemExit(
                    f"no programs on {SDREF_UNIT} after systemd-ref test:\n"
                    f"{res.stdout[-3000:]}{res.stderr[-2000:]}"
                )
        ing, eg = Program.from_id(ids[0]), Program.from_id(ids[1])
        try:
            yield ing, eg
        finally:
            ing.close()
            eg.close()
    finally:
        if brought_up:
            print(f"# stopping systemd-ref ({SYSTEMD_REF} down)", file=sys.stderr)
            sdref("down")
        lock.close()


def compare_systemd(
    floor: Program, counters_map: PerCPUArrayMap, repeat: int, runs: int, extra: list[Case]
) -> None:
    """systemd's programs beside ipacctd's for the same policy, and ``extra`` cases (the
    100k-prefix IPv6 lists) measured in the same rounds against systemd's 1-prefix ones.

    ipacctd's programs come twice: with the log a unit made with its deny list gets (busy
    flag slots) and with the legacy log a unit gets when its first deny list comes later
    by set-property (see ipacctd/datapath/denied.py).
    """
    ip = ipaddress.ip_address
    spec = Spec(deny=(ipaddress.ip_network("198.51.100.1/32"),), accounting=True)
    frames = [
        ("v4 deny-hit 198.51.100.1", ip("198.51.100.1"), 0),
        ("v4 miss     198.51.100.2", ip("198.51.100.2"), 1),
        ("v6 (no v6 rule) 2001:db8::2", ip("2001:db8::2"), 1),
    ]
    log, legacy_log = denied.create_map(), denied.create_map(guarded=False)
    mine = build_programs(spec, counters_map, log)
    legacy = build_programs(spec, counters_map, legacy_log)
    try:
        with systemd_programs() as (sd_ing, sd_eg):
            info_i, info_e = sd_ing.info(), sd_eg.info()
            print(
                f"systemd programs: ingress id {info_i.id} {info_i.name} "
                f"({info_i.xlated_len // 8} insns), egress id {info_e.id} {info_e.name} "
                f"({info_e.xlated_len // 8} insns); ipacctd: ingress "
                f"{mine.ingress.info().xlated_len // 8} insns, egress "
                f"{mine.egress.info().xlated_len // 8} insns"
            )
            rows: list[tuple[Case, Case, Case]] = []
            for direction, sd_prog in ((Direction.EGRESS, sd_eg), (Direction.INGRESS, sd_ing)):
                for name, address, expect in frames:
                    data = packet(direction, address)
                    label = f"{direction.name.lower():7} {name}"
                    rows.append(
                        (
                            Case(f"systemd {label}", sd_prog, data, expect),
                            Case(f"ipacctd {label}", mine.by_direction(direction), data, expect),
                            Case(f"legacy  {label}", legacy.by_direction(direction), data, expect),
                        )
                    )
            extra = [Case(c.label, c.prog, c.data, c.expect, c.key) for c in extra]
            measure([c for row in rows for c in row] + extra, floor, repeat, runs)
    finally:
        mine.close()
        legacy.close()
        log.close()
        legacy_log.close()
    print(
        f"{'case':44} {'ns/pkt':>7} {'floor':>6} {'above':>6} {'x floor':>7} "
        f"{'x systemd (above floor)':>24}"
    )
    for row in rows:
        sd = row[0]
        for case in row:
            rel = ratio(case.above, sd.above) if case is not sd else ""
            print(
                f"{case.label:44} {case.median:7.1f} {case.floor_median:6.1f} "
                f"{case.above:6.1f} {ratio(case.median, case.floor_median):>7} {rel:>24}"
            )
    print()
    print(
        "## drop path and pass path, 1-entry deny + denied log (what a unit runs; 'legacy': "
        "a unit whose log came with a later deny list), medians of the same rounds"
    )
    print(
        f"{'path':22} {'floor':>6} {'systemd':>8} {'ipacctd':>8} {'legacy':>7} "
        f"{'sd above':>9} {'ip above':>9} {'lg above':>9} {'ip/sd':>6} {'lg/sd':>6}"
    )
    for sd, me, lg in rows:
        if "v6" in sd.label:
            continue
        direction = sd.label.split()[1]
        path = f"{'drop' if sd.expect == 0 else 'pass'} {direction}"
        floor_ns = statistics.median(sd.floor + me.floor + lg.floor)
        print(
            f"{path:22} {floor_ns:6.1f} {sd.median:8.1f} {me.median:8.1f} {lg.median:7.1f} "
            f"{sd.above:9.1f} {me.above:9.1f} {lg.above:9.1f} "
            f"{ratio(me.above, sd.above):>6} {ratio(lg.above, sd.above):>6}"
        )
    if extra:
        sd_one = {row[0].label: row[0] for row in rows}
        hit = sd_one["systemd egress  v4 deny-hit 198.51.100.1"]
        miss = sd_one["systemd egress  v4 miss     198.51.100.2"]
        print()
        print(
            "## large lists vs systemd's program holding one prefix (same rounds): above-floor "
            "cost / systemd's (egress, 1 prefix) for the same verdict"
        )
        print(f"systemd 1 prefix: drop {hit.above:.1f} ns above floor, pass {miss.above:.1f} ns")
        print(f"{'case':86} {'above':>6} {'x systemd':>9}")
        for case in extra:
            ref = hit if case.expect == 0 else miss
            print(f"{case.label:86} {case.above:6.1f} {ratio(case.above, ref.above):>9}")


# -- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat", type=int, default=None, help="BPF_PROG_TEST_RUN repeat count (default 1000000)"
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="rounds per case; the median is reported (default 5)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: repeat 20000, 3 rounds, no 100k lists"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the random lists")
    parser.add_argument(
        "--systemd",
        action="store_true",
        help="also time systemd 252's programs via shared/tools/systemd-ref",
    )
    args = parser.parse_args()
    repeat = args.repeat or (20_000 if args.quick else 1_000_000)
    runs = args.runs or (3 if args.quick else 5)
    sizes = [0, 1, 100, 10_000] + ([] if args.quick else [100_000])
    allow_sizes = [1, 10_000] + ([] if args.quick else [100_000])
    if os.geteuid() != 0:
        print("needs root (loads BPF programs)", file=sys.stderr)
        return 2

    print(
        f"# ipacctd datapath benchmark: kernel {platform.release()}, {os.cpu_count()} CPUs, "
        f"repeat {repeat}, median of {runs} rounds, seed {args.seed}; load average at "
        f"start {loadavg()}"
    )
    print(
        "# frames: Ethernet + IPv4/UDP (106 B) or IPv6/UDP (126 B), 64 B payload; "
        "accounting on; denied-address log on (as units run); "
        "'above' = median of (program - paired return-1 floor run)"
    )
    counters_map = counters.create_map()
    floor = Program.load(return_one(), name="bench_floor")
    policies: list[Policy] = []
    try:
        build_rows = []
        for kind, kind_sizes in (("deny", sizes), ("allow+deny", allow_sizes)):
            for size in kind_sizes:
                if size == 0 and kind != "deny":
                    continue
                for version in (4, 6):
                    policy = make_policy(kind, size, version, args.seed)
                    policies.append(policy)
                    policy.build(counters_map)
                    choose_addresses(policy, args.seed)
                    check_addresses(policy)
                    if kind == "deny" and size:
                        build_rows.append(time_build(policy, counters_map))

        cases: list[Case] = []
        for policy in policies:
            assert policy.progs is not None
            for direction in (Direction.EGRESS, Direction.INGRESS):
                for label, address in policy.addresses.items():
                    expect = 0 if label == "deny-hit" else 1
                    row = (
                        f"{policy.kind:10} {size_label(policy.size):>4} v{policy.version} "
                        f"{policy.strategy:8} {direction.name.lower():7} {label:9} "
                        f"{address}"
                    )
                    cases.append(
                        Case(
                            row,
                            policy.progs.by_direction(direction),
                            packet(direction, address),
                            expect,
                            (policy.kind, policy.version, direction, label),
                        )
                    )
        measure(cases, floor, repeat, runs)
        reference = {
            c.key: c for c, p in zip(cases, _case_policies(policies), strict=True) if p.size == 1
        }
        # The 0-prefix deny list is compared with the 1-prefix deny list's miss.
        print()
        print(
            "## datapath: ns per packet (x 1-prefix = above-floor cost / same case with "
            "a 1-prefix list)"
        )
        print_table(cases, reference)

        print()
        print(
            "## policy build (compile + table build/fill + load of both programs), deny "
            "list, one family; table MiB = the memlock of the table's maps"
        )
        print(
            f"{'policy':24} {'strategy':8} {'entries':>8} {'compile ms':>11} {'table ms':>9} "
            f"{'load ms':>8} {'total ms':>9} {'table MiB':>9}"
        )
        for row in build_rows:
            print(row)

        if args.systemd:
            print()
            print(
                "## systemd 252 vs ipacctd, IPAccounting=yes + IPAddressDeny=198.51.100.1, "
                "same frames"
            )
            large = [
                c
                for c, p in zip(cases, _case_policies(policies), strict=True)
                if p.size >= 10_000 and p.version == 6
            ]
            compare_systemd(floor, counters_map, repeat, runs, large)
        print()
        print(f"# load average at end {loadavg()}")
    finally:
        for policy in policies:
            policy.close()
        floor.close()
        counters_map.close()
    return 0


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine moves every figure."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _case_policies(policies: list[Policy]) -> Iterator[Policy]:
    """The policy of each case, in the order main() made the cases."""
    for policy in policies:
        for _ in (Direction.EGRESS, Direction.INGRESS):
            for _ in policy.addresses:
                yield policy


if __name__ == "__main__":
    sys.exit(main())
