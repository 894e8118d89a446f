"""Real traffic through a unit's attached datapath, in private network namespaces.

Processes run inside the unit's cgroup (a fresh test cgroup) in a namespace whose ``lo``
holds the test addresses; the programs ipacctd attached decide and count what they send
and receive. Expectations are exact: a sent UDP datagram is payload + 8 + 20 bytes (IPv4)
or + 40 (IPv6) at the IP layer, on each side of the loopback.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import subprocess
import sys
import time

import model
import pytest

from ipacctd.datapath.counters import Counters
from ipacctd.datapath.unit import Spec, UnitDatapath

net = ipaddress.ip_network

# Sends each (source or null, destination, payload size) from its own socket to a receiver
# the same process bound on the destination address; prints one result per send: ok, lost
# (not received within 0.5 s; loopback delivers at once) or an errno name.
UDP_SELF = r"""
import errno, json, socket, sys
out = []
for src, dst, size in json.loads(sys.argv[1]):
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as r, socket.socket(fam, socket.SOCK_DGRAM) as s:
        r.bind((dst, 0))
        r.settimeout(0.5)
        if src:
            s.bind((src, 0))
        try:
            s.sendto(b"u" * size, (dst, r.getsockname()[1]))
        except OSError as e:
            out.append(errno.errorcode.get(e.errno, str(e.errno)))
            continue
        try:
            data = r.recv(65536)
            out.append("ok" if len(data) == size else "short")
        except socket.timeout:
            out.append("lost")
print(json.dumps(out))
"""

# Receives on (address, port) until a datagram b"end" arrives or the deadline passes; prints
# "ready" once bound, then the source address and size of each datagram received.
RECEIVER = r"""
import json, socket, sys, time
addr, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
r = socket.socket(fam, socket.SOCK_DGRAM)
r.bind((addr, port))
print("ready", flush=True)
got = []
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    r.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        data, peer = r.recvfrom(65536)
    except socket.timeout:
        break
    if data == b"end":
        break
    got.append([peer[0], len(data)])
print(json.dumps(got), flush=True)
"""

# Sends ``count`` datagrams of ``size`` bytes from each source address, then b"end" from
# the last source.
SENDER = r"""
import json, socket, sys
dst, port, plan = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
for src, count, size in plan:
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        for _ in range(count):
            s.sendto(b"s" * size, (dst, port))
with socket.socket(fam, socket.SOCK_DGRAM) as s:
    s.bind((plan[-1][0], 0))
    s.sendto(b"end", (dst, port))
print("sent")
"""

# A long-running unit process: for each line "destination size" on stdin it sends one
# datagram to its own receiver on that address and prints ok, lost or an errno name.
WORKER = r"""
import errno, socket, sys
socks = {}
print("ready", flush=True)
for line in sys.stdin:
    dst, size = line.split()
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    if dst not in socks:
        r = socket.socket(fam, socket.SOCK_DGRAM)
        r.bind((dst, 0))
        r.settimeout(2)
        socks[dst] = (r, socket.socket(fam, socket.SOCK_DGRAM))
    r, s = socks[dst]
    try:
        s.sendto(b"w" * int(size), (dst, r.getsockname()[1]))
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)), flush=True)
        continue
    try:
        r.recv(65536)
        print("ok", flush=True)
    except socket.timeout:
        print("lost", flush=True)
"""

# TCP connects (in parallel) with a bounded wait; prints "connected" or the error per address.
TCP_CLIENT = r"""
import json, socket, sys, threading
targets = json.loads(sys.argv[1])
out = [None] * len(targets)
def connect(i, addr, port):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect((addr, port))
            out[i] = "connected"
        except OSError as e:
            out[i] = type(e).__name__ + ":" + str(e.errno)
threads = [threading.Thread(target=connect, args=(i, *t)) for i, t in enumerate(targets)]
for t in threads:
    t.start()
for t in threads:
    t.join(5)
print(json.dumps(out))
"""

# Listens on each address; counts accepted connections per address until stdin closes.
TCP_LISTENER = r"""
import json, select, socket, sys
ls = {}
for addr in sys.argv[2:]:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.bind((addr, int(sys.argv[1])))
    s.listen(16)
    ls[s] = addr
print("ready", flush=True)
got = {a: 0 for a in ls.values()}
while True:
    r, _, _ = select.select([*ls, sys.stdin], [], [], 10)
    if not r or sys.stdin in r:
        break
    for s in r:
        c, _ = s.accept()
        got[ls[s]] += 1
        c.close()
for s, addr in ls.items():  # connections still queued count too
    s.setblocking(False)
    for _ in range(100):
        try:
            s.accept()[0].close()
        except BlockingIOError:
            break
        got[addr] += 1
print(json.dumps(got), flush=True)
"""


class Lines:
    """Read lines from a child's unbuffered stdout with a deadline per line."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.buf = b""

    def readline(self, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line from {self.proc.args} within {timeout}s")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise AssertionError(f"{self.proc.args} ended early: {err}")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def start(ns, code: str, args: list[str], cgroup_fs: str | None = None, stdin: bool = False):
    proc = ns.popen(
        [sys.executable, "-c", code, *args],
        cgroup_fs,
        bufsize=0,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return proc, Lines(proc)


def run_json(ns, code: str, arg: object, cgroup_fs: str | None = None):
    res = ns.python(code, cgroup_fs=cgroup_fs, args=[json.dumps(arg)], timeout=30)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def udp_bytes(size: int, dst: str) -> int:
    return model.udp_ip_bytes(size, ipaddress.ip_address(dst).version)


@pytest.fixture
def unit(cgroup_dir, pin_root):
    """A factory for the unit's datapath on ``cgroup_dir``; removed afterwards."""
    made: list[UnitDatapath] = []

    def create(spec: Spec) -> UnitDatapath:
        dp = UnitDatapath.create(os.path.join(pin_root, "unit"), cgroup_dir, spec)
        made.append(dp)
        return dp

    yield create
    for dp in made:
        if os.path.exists(dp.pin_dir):
            dp.remove()
        else:
            dp.close()


V4 = ["192.0.2.1", "198.51.100.1", "203.0.113.1"]
V6 = ["2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8::4"]


@pytest.mark.parametrize(
    ("allowed", "denied", "loopback"),
    [
        ("192.0.2.1", "198.51.100.1", "127.0.0.1"),
        ("2001:db8::1", "2001:db8::2", "::1"),
    ],
    ids=["ipv4", "ipv6"],
)
def test_udp_deny_eperm_and_exact_counters(
    netns_factory, cgroup_dir, unit, allowed, denied, loopback
) -> None:
    ns = netns_factory(V4 + V6)
    dp = unit(Spec(deny=(net(denied),)))
    # (source, destination, payload, expected): egress judges the destination, ingress the
    # source; the receiver is in the unit too, so both hooks see each delivered datagram.
    sends = [
        (None, allowed, 100, "ok"),
        (None, denied, 50, "EPERM"),  # egress drop: sendto fails
        (allowed, denied, 7, "EPERM"),
        (denied, allowed, 20, "lost"),  # egress passes (allowed dst), ingress drops it
        (None, allowed, 1, "ok"),
        (None, loopback, 300, "ok"),
        (denied, allowed, 0, "lost"),
        (None, allowed, 1400, "ok"),
    ]
    out = run_json(ns, UDP_SELF, [s[:3] for s in sends], cgroup_fs=cgroup_dir)
    assert out == [s[3] for s in sends]

    def total(*outcomes: str) -> tuple[int, int]:
        picked = [udp_bytes(n, dst) for _, dst, n, r in sends if r in outcomes]
        return len(picked), sum(picked)

    (ok_p, ok_b), (lost_p, lost_b), (perm_p, perm_b) = (total("ok"), total("lost"), total("EPERM"))
    assert dp.read() == Counters(
        ingress_packets=ok_p,
        ingress_bytes=ok_b,
        egress_packets=ok_p + lost_p,
        egress_bytes=ok_b + lost_b,
        ingress_dropped_packets=lost_p,
        ingress_dropped_bytes=lost_b,
        egress_dropped_packets=perm_p,
        egress_dropped_bytes=perm_b,
    )
    # The same code outside the unit's cgroup is not filtered, and not counted.
    assert run_json(ns, UDP_SELF, [(None, denied, 10), (denied, allowed, 10)]) == ["ok", "ok"]
    assert dp.read().egress_dropped_packets == perm_p


def test_deny_1_1_1_1_like_the_seed(netns_factory, cgroup_dir, unit) -> None:
    ns = netns_factory(["1.1.1.1"])
    dp = unit(Spec(deny=(net("1.1.1.1/32"),)))
    res = ns.run(
        ["sh", "-c", "ping -c1 -W1 1.1.1.1; echo rc=$?; ping -c1 -W1 127.0.0.1; echo rc=$?"],
        cgroup_fs=cgroup_dir,
        timeout=20,
    )
    rcs = [ln for ln in res.stdout.splitlines() if ln.startswith("rc=")]
    assert rcs[0] != "rc=0", res.stdout
    assert rcs[1] == "rc=0", res.stdout
    # systemd 252 printed "IP traffic received: 84B / sent: 84B" for the same commands.
    c = dp.read()
    assert (c.ingress_packets, c.ingress_bytes, c.egress_packets, c.egress_bytes) == (1, 84, 1, 84)
    assert (c.egress_dropped_packets, c.egress_dropped_bytes) == (1, 84)
    assert run_json(ns, UDP_SELF, [(None, "1.1.1.1", 100)], cgroup_fs=cgroup_dir) == ["EPERM"]
    # ping from outside the unit reaches 1.1.1.1: the address is there, the unit is denied.
    assert ns.run(["ping", "-c1", "-W1", "1.1.1.1"], timeout=10).returncode == 0


@pytest.mark.parametrize(
    ("allowed", "denied"),
    [("192.0.2.1", "198.51.100.1"), ("2001:db8::1", "2001:db8::2")],
    ids=["ipv4", "ipv6"],
)
def test_ping_to_denied_address_fails(netns_factory, cgroup_dir, unit, allowed, denied) -> None:
    ns = netns_factory(V4 + V6)
    dp = unit(Spec(deny=(net(denied),)))
    bad = ns.run(["ping", "-c1", "-W1", denied], cgroup_fs=cgroup_dir, timeout=10)
    assert bad.returncode != 0, bad.stdout
    assert "1 received" not in bad.stdout
    good = ns.run(["ping", "-c1", "-W1", allowed], cgroup_fs=cgroup_dir, timeout=10)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "1 received" in good.stdout
    c = dp.read()
    size = 84 if ":" not in denied else 104  # 56 bytes of ICMP data + 8 + IP header
    assert (c.egress_dropped_packets, c.egress_dropped_bytes) == (1, size)
    assert (c.egress_packets, c.egress_bytes) == (1, size)
    assert c.ingress_packets >= 1 and c.ingress_dropped_packets == 0


def test_tcp_connect_to_denied_address_never_completes(netns_factory, cgroup_dir, unit) -> None:
    ns = netns_factory(V4 + V6)
    dp = unit(Spec(deny=(net("198.51.100.0/24"), net("2001:db8::2/128"))))
    addrs = ["192.0.2.1", "198.51.100.1", "2001:db8::1", "2001:db8::2"]
    listener, lines = start(ns, TCP_LISTENER, ["7777", *addrs], stdin=True)  # not in the unit
    assert lines.readline() == "ready"
    out = run_json(ns, TCP_CLIENT, [[a, 7777] for a in addrs], cgroup_fs=cgroup_dir)
    listener.stdin.close()
    accepted = json.loads(lines.readline())
    assert out[0] == "connected" and out[2] == "connected", out
    # the SYN is dropped on egress: no handshake, the connect times out (or fails EPERM)
    for result in (out[1], out[3]):
        assert result.startswith(("TimeoutError", "PermissionError")), out
    assert accepted == {"192.0.2.1": 1, "198.51.100.1": 0, "2001:db8::1": 1, "2001:db8::2": 0}
    c = dp.read()
    assert c.egress_dropped_packets >= 2  # at least one SYN per denied address
    assert c.ingress_dropped_packets == 0


@pytest.mark.parametrize(
    ("receiver", "denied_src", "allowed_src", "deny"),
    [
        ("192.0.2.1", "198.51.100.1", "203.0.113.1", "198.51.100.0/24"),
        ("2001:db8::1", "2001:db8::3", "2001:db8::4", "2001:db8::2/127"),
    ],
    ids=["ipv4", "ipv6"],
)
def test_denied_ingress_never_reaches_the_socket(
    netns_factory, cgroup_dir, unit, receiver, denied_src, allowed_src, deny
) -> None:
    ns = netns_factory(V4 + V6)
    dp = unit(Spec(deny=(net(deny),)))
    assert model.address_verdict(allowed_src, [], [deny])
    assert not model.address_verdict(denied_src, [], [deny])
    port = "7000"
    proc, lines = start(ns, RECEIVER, [receiver, port, "10"], cgroup_fs=cgroup_dir)
    assert lines.readline() == "ready"
    plan = [[denied_src, 5, 64], [allowed_src, 3, 200]]
    res = ns.python(SENDER, args=[receiver, port, json.dumps(plan)])  # outside the unit
    assert res.returncode == 0, res.stderr
    got = json.loads(lines.readline(timeout=15))
    proc.wait(timeout=10)
    assert got == [[allowed_src, 200]] * 3
    one_denied = udp_bytes(64, receiver)
    allowed_bytes = 3 * udp_bytes(200, receiver) + udp_bytes(3, receiver)  # + b"end"
    assert dp.read() == Counters(
        ingress_packets=4,
        ingress_bytes=allowed_bytes,
        ingress_dropped_packets=5,
        ingress_dropped_bytes=5 * one_denied,
    )


def test_apply_changes_enforcement_of_a_running_process(netns_factory, cgroup_dir, unit) -> None:
    ns = netns_factory(V4 + V6)
    a, b, a6 = "192.0.2.1", "198.51.100.1", "2001:db8::1"
    dp = unit(Spec(deny=(net(b),)))
    proc, lines = start(ns, WORKER, [], cgroup_fs=cgroup_dir, stdin=True)
    assert lines.readline() == "ready"

    def send(dst: str, size: int) -> str:
        proc.stdin.write(f"{dst} {size}\n".encode())
        proc.stdin.flush()
        return lines.readline()

    expected = Counters()

    def sent(dst: str, size: int, ok: bool) -> Counters:
        n = udp_bytes(size, dst)
        if ok:
            return Counters(ingress_packets=1, ingress_bytes=n, egress_packets=1, egress_bytes=n)
        return Counters(egress_dropped_packets=1, egress_dropped_bytes=n)

    steps = [
        (Spec(deny=(net(b),)), [(a, 10, True), (b, 20, False), (a6, 30, True)]),
        (Spec(deny=(net(a), net(a6))), [(a, 40, False), (b, 50, True), (a6, 60, False)]),
        (
            Spec(allow=(net(a),), deny=(net("0.0.0.0/0"), net("::/0"))),
            [(a, 70, True), (b, 80, False), (a6, 90, False)],
        ),
        (Spec(), [(a, 11, True), (b, 12, True), (a6, 13, True)]),
    ]
    for i, (spec, sends) in enumerate(steps):
        if i:
            dp.apply(spec)
        for dst, size, ok in sends:
            assert send(dst, size) == ("ok" if ok else "EPERM"), (i, dst)
            expected = expected + sent(dst, size, ok)
        assert dp.read() == expected, f"after step {i}"
    assert proc.poll() is None, "the unit's process kept running throughout"
    proc.stdin.close()
    proc.wait(timeout=10)
