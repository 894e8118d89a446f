"""Kits made by a helper process (ipacctd.manager.kits), as the daemon uses them to bind a
glob's many cgroups: the very programs the engine would load itself, on fresh maps of
their own; a unit built from one drops and counts real packets as one built in-process;
and kits never used, a helper that cannot make them, or one that dies, leave nothing in
the kernel and no error: the engine makes its own then."""

from __future__ import annotations

import ipaddress
import os
import signal
import threading

import pytest
from support import wait_for
from test_pinning import ADDRS, ALLOWED, DENIED, udp
from test_rebind import ONE_EACH

from ipacctd.bpf.objects import all_ids
from ipacctd.bpf.types import Cmd
from ipacctd.datapath import counters as counters_mod
from ipacctd.datapath import denied
from ipacctd.datapath.counters import Counters
from ipacctd.datapath.unit import Kit, Spec, UnitDatapath
from ipacctd.manager import kits
from ipacctd.manager.kits import KitMaker
from ipacctd.policy.addresses import AddressList

pytestmark = pytest.mark.kernel

net = ipaddress.ip_network
SPEC = Spec(deny=(net(f"{DENIED}/32"),))
SPECS = [
    Spec(),  # accounting only
    SPEC,
    Spec(allow=(net("198.51.100.0/28"), net("2001:db8::1/128")),
         deny=(net("198.51.0.0/16"), net("2001:db8::/32"))),
    Spec(deny=AddressList.parse("any", "IPAddressDeny"), audit=True),
    Spec(accounting=False, deny=AddressList.parse("192.0.2.7 ::1", "IPAddressDeny")),
]


def _kit(maker: KitMaker, spec: Spec) -> Kit:
    """The helper's next kit for ``spec`` (it starts in ~0.1 s)."""
    got: list[Kit] = []

    def ready() -> bool:
        kit = maker.take(spec)
        if kit is not None:
            got.append(kit)
        return bool(got)

    wait_for(ready, 30, "a kit from the helper")
    return got[0]


def _map_ids(kit: Kit) -> set[int]:
    maps = [kit.counters, *([kit.log.table, kit.log.slots] if kit.log else [])]
    return {m.info().id for m in maps}


@pytest.mark.parametrize("spec", SPECS, ids=["accounting", "deny", "lists", "audit", "nocount"])
def test_a_helpers_kit_holds_the_programs_the_engine_builds_on_fresh_maps(spec: Spec) -> None:
    assert kits.crosses(spec)
    with KitMaker(spec) as maker:
        kit = _kit(maker, spec)
    ref = Kit.build(spec)
    try:
        assert kit.spec is spec
        for mine, theirs in ((kit.programs.ingress, ref.programs.ingress),
                             (kit.programs.egress, ref.programs.egress)):
            a, b = mine.info(), theirs.info()
            # The kernel's tag hashes the instructions with map references zeroed: the same
            # tag is the same program, whichever maps it was loaded on.
            assert (a.tag, a.type, a.name) == (b.tag, b.type, b.name)
            assert set(a.map_ids) <= _map_ids(kit)  # on the kit's own maps...
            assert not set(a.map_ids) & _map_ids(ref)
        assert (kit.log is None) == (not spec.deny)
        assert counters_mod.read(kit.counters) == Counters()  # ...which are new
        if kit.log is not None:
            assert denied.guarded(kit.log) and denied.decode(kit.log) == []
    finally:
        kit.close()
        ref.close()


def test_a_unit_built_from_a_helpers_kit_drops_and_counts_real_packets(
    netns_factory, cgroup_dir, pin_root
) -> None:
    ns = netns_factory(ADDRS)
    pin_dir = os.path.join(pin_root, "unit")
    with KitMaker(SPEC) as maker:
        kit = _kit(maker, SPEC)
    with UnitDatapath.create(pin_dir, cgroup_dir, SPEC, kit=kit) as dp:
        try:
            assert dp.problem(cgroup_dir, SPEC) is None
            assert udp(ns, [(ALLOWED, 20), (DENIED, 20)], cgroup_dir) == ["ok", "EPERM"]
            assert dp.read() == ONE_EACH
            log = dp.denied_map()
            assert log is not None
            with log:
                assert [(e["address"], e["packets"]) for e in denied.decode(log)] == [(DENIED, 1)]
        finally:
            dp.remove(cgroup_dir)


def test_a_kit_for_another_policy_is_refused_and_left_for_its_own(pin_root) -> None:
    other = Spec(deny=(net("203.0.113.9/32"),))
    with KitMaker(SPEC) as maker:
        assert maker.take(other) is None  # another policy: never a kit
        kit = _kit(maker, SPEC)  # the one made for SPEC was not used up
        with pytest.raises(ValueError, match="another policy"):
            UnitDatapath.create(os.path.join(pin_root, "u"), None, other, kit=kit)
        assert kit.counters.closed and kit.programs.ingress.closed  # taken over, closed
        assert not os.path.exists(os.path.join(pin_root, "u"))


def test_kits_made_for_nothing_and_the_helper_are_gone_after_close() -> None:
    before = set(all_ids(Cmd.PROG_GET_NEXT_ID))
    fds = sorted(os.listdir("/proc/self/fd"))
    maker = KitMaker(SPEC)
    kit = _kit(maker, SPEC)
    taken = {kit.programs.ingress.info().id, kit.programs.egress.info().id}
    # The helper makes DEPTH more ahead (two programs each), in flight on the socket.
    wait_for(lambda: len(set(all_ids(Cmd.PROG_GET_NEXT_ID)) - before - taken)
             >= 2 * kits.DEPTH, 30, "the helper's kits ahead")
    proc = maker.proc
    assert proc is not None
    # It yields the CPU to the daemon's loop and the bus (see kits._idle_priority).
    assert os.getpriority(os.PRIO_PROCESS, proc.pid) == \
        min(19, os.getpriority(os.PRIO_PROCESS, 0) + kits.HELPER_NICE)
    maker.close()
    kit.close()
    assert proc.returncode == 0  # it exited by itself at the end of its socket
    assert not maker.alive and maker.take(SPEC) is None
    wait_for(lambda: not set(all_ids(Cmd.PROG_GET_NEXT_ID)) - before, 30,
             "every program of the helper's freed")
    assert sorted(os.listdir("/proc/self/fd")) == fds


def test_a_helper_that_cannot_make_kits_says_so_and_the_engine_makes_its_own() -> None:
    # More networks than the inline lookup takes: its programs need table maps, which do
    # not cross processes (the daemon does not start a helper for such a policy at all).
    many = Spec(deny=tuple(net(f"198.51.100.{i}/32") for i in range(1, 40)))
    assert not kits.crosses(many)
    with KitMaker(many) as maker:
        wait_for(lambda: maker.take(many) is None and not maker.alive, 30, "the helper's word")
        assert maker.made == 0


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def test_a_stalled_helper_holds_nothing_up_and_its_descriptors_stay_in_the_daemon() -> None:
    """The engine takes a kit only when one is ready: a helper that falls behind (or hangs)
    never holds the daemon's loop. CPython 3.11's ``socket.recv_fds`` drops its flags, so
    a take through it waited for the helper's next kit: with the helper stopped, for good."""
    with KitMaker(SPEC) as maker:
        kit = _kit(maker, SPEC)
        # Received descriptors are the daemon's own: not inherited by what it runs.
        assert not any(os.get_inheritable(fd) for fd in kit.fds())
        kit.close()
        proc = maker.proc
        assert proc is not None
        taken: list[Kit | None] = []

        def drain() -> None:  # the kits sent before it stopped, then none ready
            for _ in range(kits.DEPTH + 2):  # bounded: at most DEPTH were ahead
                got = maker.take(SPEC)
                taken.append(got)
                if got is None:
                    return
                got.close()

        worker = threading.Thread(target=drain, daemon=True)
        os.kill(proc.pid, signal.SIGSTOP)  # the helper this test started, by its PID
        try:
            wait_for(lambda: _state(proc.pid) == "T", 30, "the helper stopped")
            worker.start()
            worker.join(30)
            assert not worker.is_alive(), "a take waited for the stopped helper"
            assert taken[-1] is None and maker.alive  # not given up: only behind
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            if worker.is_alive():
                worker.join(30)


def test_a_helper_killed_mid_way_is_given_up_without_an_error() -> None:
    with KitMaker(SPEC) as maker:
        kit = _kit(maker, SPEC)
        kit.close()
        assert maker.proc is not None
        os.kill(maker.proc.pid, signal.SIGKILL)  # the helper this test started, by its PID
        maker.proc.wait(30)
        # The kits it sent before it died may still come; then nothing, and no error.
        for _ in range(kits.DEPTH + 1):
            got = maker.take(SPEC)
            if got is None:
                break
            got.close()
        assert maker.take(SPEC) is None and not maker.alive
