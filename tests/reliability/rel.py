"""Helpers of the reliability suite: bounded traffic, kernel object ledgers, figures.

Traffic runs only inside network namespaces the tests make, to test addresses on their
``lo``. Every loop here is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from netns import NetNS
from support import wait_for

SOAK = os.environ.get("IPACCTD_SOAK") == "1"
REPORT = os.environ.get("IPACCTD_SOAK_REPORT")
PY = sys.executable

UDP4 = 20 + 8
UDP6 = 40 + 8


def count(ci: int, soak: int) -> int:
    """The CI count, or the soak count under ``IPACCTD_SOAK=1``."""
    return soak if SOAK else ci


def report(test: str, **figures: object) -> None:
    """Append one test's figures to the soak report (when one is being written)."""
    if not REPORT:
        return
    with open(REPORT, "a") as f:
        f.write(json.dumps({"test": test, **figures}) + "\n")


# -- traffic -------------------------------------------------------------------------------

#: Sends UDP datagrams to each destination in turn, in a tight loop bounded in rounds and
#: seconds, until the stop file appears. Counts, per destination, what sendto accepted
#: (datagrams and IP bytes: payload + IP/UDP headers of the packet's real family) and what
#: it refused with EPERM (the unit's firewall), and the sequence of verdict changes.
#: Writes ``ready`` once every destination has been tried, and the result as JSON at the end.
SENDER = r"""
import errno, json, os, socket, sys, time
cfg = json.loads(sys.argv[1])
dests = cfg["dests"]
port, size = cfg["port"], cfg["size"]
payload = b"x" * size
socks, hdr = [], []
for d in dests:
    fam = socket.AF_INET6 if ":" in d else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(cfg.get("v6only", 0)))
    socks.append(s)
    # a v4-mapped destination leaves as an IPv4 packet
    hdr.append(28 if (fam == socket.AF_INET or d.startswith("::ffff:")) else 48)
res = [{"ok": 0, "ok_bytes": 0, "eperm": 0, "other": 0, "flips": [], "last": None}
       for _ in dests]
deadline = time.monotonic() + cfg["max_seconds"]
stop = cfg["stopfile"]
burst, pause = cfg.get("burst", 64), cfg.get("pause", 0.0)
ready = False
rounds = 0
for rounds in range(1, cfg["max_rounds"] + 1):
    for i, d in enumerate(dests):
        r = res[i]
        try:
            socks[i].sendto(payload, (d, port))
            r["ok"] += 1
            r["ok_bytes"] += size + hdr[i]
            v = "ok"
        except OSError as e:
            if e.errno == errno.EPERM:
                r["eperm"] += 1
                v = "eperm"
            else:
                r["other"] += 1
                r.setdefault("errnos", []).append(e.errno)
                continue
        if v != r["last"]:
            r["flips"].append(v)
            r["last"] = v
    if not ready:
        open(cfg["readyfile"], "w").close()
        ready = True
    if rounds % burst == 0:
        if os.path.exists(stop) or time.monotonic() > deadline:
            break
        if pause:
            time.sleep(pause)
out = {"rounds": rounds, "dests": dict(zip(dests, res))}
with open(cfg["result"] + ".tmp", "w") as f:
    json.dump(out, f)
os.rename(cfg["result"] + ".tmp", cfg["result"])
"""

#: Counts datagrams arriving on each address (UDP ``port``) by source address, until the
#: stop file appears (bounded in seconds); writes JSON at the end.
RECEIVER = r"""
import json, os, select, socket, sys, time
cfg = json.loads(sys.argv[1])
socks = {}
for a in cfg["addrs"]:
    fam = socket.AF_INET6 if ":" in a else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind((a, cfg["port"]))
    s.setblocking(False)
    socks[s] = a
counts = {a: 0 for a in cfg["addrs"]}
open(cfg["readyfile"], "w").close()
deadline = time.monotonic() + cfg["max_seconds"]
idle_since = None
while time.monotonic() < deadline:
    ready, _, _ = select.select(list(socks), [], [], 0.05)
    for s in ready:
        for _ in range(1000):
            try:
                s.recv(65536)
            except BlockingIOError:
                break
            counts[socks[s]] += 1
    if os.path.exists(cfg["stopfile"]):
        if ready:
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > 0.2:
            break
with open(cfg["result"] + ".tmp", "w") as f:
    json.dump(counts, f)
os.rename(cfg["result"] + ".tmp", cfg["result"])
"""


@dataclass
class Flow:
    """A receiver (outside any unit) and the files of one traffic experiment."""

    ns: NetNS
    tmp: Path
    port: int
    tag: str
    receiver: subprocess.Popen | None = None
    senders: list[tuple[subprocess.Popen | None, Path]] = field(default_factory=list)

    @property
    def stopfile(self) -> Path:
        return self.tmp / f"{self.tag}.stop"

    def start_receiver(self, addrs: Iterable[str], max_seconds: float = 300) -> None:
        cfg = {
            "addrs": list(addrs),
            "port": self.port,
            "stopfile": str(self.stopfile),
            "result": str(self.tmp / f"{self.tag}.recv.json"),
            "readyfile": str(self.tmp / f"{self.tag}.recv.ready"),
            "max_seconds": max_seconds,
        }
        self.receiver = self.ns.popen([PY, "-c", RECEIVER, json.dumps(cfg)])
        wait_for(lambda: os.path.exists(cfg["readyfile"]), 15, "the receiver")

    def sender_argv(
        self,
        dests: Iterable[str],
        idx: int = 0,
        size: int = 100,
        max_seconds: float = 300,
        max_rounds: int = 10**8,
        **extra,
    ) -> list[str]:
        """argv of a sender (to run in a unit); its result file is registered."""
        result = self.tmp / f"{self.tag}.send{idx}.json"
        cfg = {
            "dests": list(dests),
            "port": self.port,
            "size": size,
            "stopfile": str(self.stopfile),
            "result": str(result),
            "readyfile": str(self.tmp / f"{self.tag}.send{idx}.ready"),
            "max_seconds": max_seconds,
            "max_rounds": max_rounds,
            **extra,
        }
        return [PY, "-c", SENDER, json.dumps(cfg)]

    def sender_ready(self, idx: int = 0) -> bool:
        return os.path.exists(self.tmp / f"{self.tag}.send{idx}.ready")

    def sender_result_path(self, idx: int = 0) -> Path:
        return self.tmp / f"{self.tag}.send{idx}.json"

    def stop(self, procs: Iterable[subprocess.Popen] = (), timeout: float = 60) -> dict:
        """Stop every sender and the receiver; return the receiver's counts."""
        self.stopfile.touch()
        for p in procs:
            p.wait(timeout=timeout)
        assert self.receiver is not None
        self.receiver.wait(timeout=timeout)
        return json.loads((self.tmp / f"{self.tag}.recv.json").read_text())

    def sender_result(self, idx: int = 0, timeout: float = 60) -> dict:
        path = self.sender_result_path(idx)
        wait_for(lambda: path.exists(), timeout, "the sender's result")
        return json.loads(path.read_text())


# -- kernel objects, fds, memory -----------------------------------------------------------


def kernel_ids() -> dict[str, set[int]]:
    """Every program, map and link id in the kernel now."""
    from ipacctd.bpf.objects import all_ids
    from ipacctd.bpf.types import Cmd

    return {
        "prog": set(all_ids(Cmd.PROG_GET_NEXT_ID)),
        "map": set(all_ids(Cmd.MAP_GET_NEXT_ID)),
        "link": set(all_ids(Cmd.LINK_GET_NEXT_ID)),
    }


def unit_objects(pin_dir: str) -> dict[str, set[int]]:
    """Ids of everything a unit's pins hold: links, their programs and the programs' maps,
    and the pinned maps."""
    from ipacctd.bpf.links import CgroupLink
    from ipacctd.bpf.maps import Map
    from ipacctd.bpf.programs import Program

    out: dict[str, set[int]] = {"prog": set(), "map": set(), "link": set()}
    try:
        names = os.listdir(pin_dir)
    except FileNotFoundError:
        return out
    for n in names:
        path = os.path.join(pin_dir, n)
        with contextlib.suppress(Exception):
            if n.startswith(("link_", "filter_")):
                with CgroupLink.open_pinned(path) as link:
                    li = link.info()
                out["link"].add(li.id)
                out["prog"].add(li.prog_id)
                with Program.from_id(li.prog_id) as prog:
                    out["map"].update(prog.info().map_ids)
            else:
                with Map.open_pinned(path) as m:
                    out["map"].add(m.info().id)
    return out


def merge(into: dict[str, set[int]], more: dict[str, set[int]]) -> None:
    for k, v in more.items():
        into.setdefault(k, set()).update(v)


def alive(ids: dict[str, set[int]], timeout: float = 5.0) -> dict[str, set[int]]:
    """Which of ``ids`` still exist (waiting out the kernel's deferred frees)."""
    deadline = time.monotonic() + timeout
    while True:
        now = kernel_ids()
        left = {k: v & now[k] for k, v in ids.items()}
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def cgroup_id(fs: str) -> int:
    """A cgroup's id (its directory's inode number, as bpf_link_info reports it)."""
    return os.stat(fs).st_ino


def links_on(cgroup_ids: set[int]) -> set[int]:
    """Ids of live links attached to any of these cgroups."""
    from ipacctd.bpf.links import CgroupLink
    from ipacctd.bpf.objects import all_ids
    from ipacctd.bpf.types import Cmd

    found = set()
    for lid in all_ids(Cmd.LINK_GET_NEXT_ID):
        with contextlib.suppress(Exception):
            with CgroupLink.from_id(lid) as link:
                if link.info().cgroup_id in cgroup_ids:
                    found.add(lid)
    return found


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def bpf_fds(pid: int) -> list[str]:
    """The BPF object fds (maps, programs, links) a process holds, by kind."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("anon_inode:bpf"):
                out.append(target)
    return sorted(out)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def meta_bytes(state_dir: str, unit: str) -> bytes | None:
    try:
        return Path(state_dir, "units", unit + ".json").read_bytes()
    except FileNotFoundError:
        return None


def prog_ids(bpf_dir: str, unit: str) -> tuple[int, ...]:
    """Program ids on a unit's links (ingress, egress), () without pins."""
    from ipacctd.bpf.links import CgroupLink
    from ipacctd.manager.store import pin_name

    out = []
    for d in ("link_ingress", "link_egress"):
        try:
            with CgroupLink.open_pinned(os.path.join(bpf_dir, "units", pin_name(unit), d)) as ln:
                out.append(ln.info().prog_id)
        except Exception:
            return ()
    return tuple(out)
