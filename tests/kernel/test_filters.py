"""IPIngressFilterPath=/IPEgressFilterPath=: the user's own programs, pinned in bpffs, run
after ipacctd's on the unit's cgroup (as systemd attaches them), and are swapped
make-before-break."""

from __future__ import annotations

import ipaddress
import os

from ipacctd.bpf import asm
from ipacctd.bpf.links import open_cgroup, prog_query
from ipacctd.bpf.programs import Program
from ipacctd.bpf.types import AttachType
from ipacctd.datapath.unit import Spec, UnitDatapath

SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for dst in sys.argv[1:]:
    try:
        s.sendto(b"x" * 100, (dst, 9)); print(dst, "ok")
    except OSError as e:
        print(dst, e.errno)
"""


def _pin_verdict_program(path: str, verdict: int) -> None:
    """A user egress filter that returns ``verdict`` for every packet, pinned at ``path``."""
    with Program.load(
        [asm.mov64_imm(asm.R0, verdict), asm.exit_()],
        attach_type=AttachType.CGROUP_INET_EGRESS,
        name="user_filter",
    ) as prog:
        prog.pin(path)


def _send(ns, cgroup_dir: str, *dsts: str) -> dict[str, str]:
    res = ns.python(SEND, cgroup_fs=cgroup_dir, args=dsts)
    assert res.returncode == 0, res.stderr
    return dict(line.split() for line in res.stdout.splitlines())


def test_user_filters_run_after_ours_and_swap_cleanly(cgroup_dir, pin_root, netns_factory):
    drop_all = os.path.join(pin_root, "drop_all")
    pass_all = os.path.join(pin_root, "pass_all")
    _pin_verdict_program(drop_all, 0)
    _pin_verdict_program(pass_all, 1)
    ns = netns_factory(["198.51.100.1", "198.51.100.2"])
    unit_dir = os.path.join(pin_root, "unit")
    dp = UnitDatapath.create(unit_dir, cgroup_dir, Spec(egress_filters=(drop_all,)))
    try:
        # ours passes and counts; the user's filter drops: the sender sees EPERM
        assert _send(ns, cgroup_dir, "198.51.100.2") == {"198.51.100.2": "1"}
        assert dp.read().egress_packets == 1
        fd = open_cgroup(cgroup_dir)
        try:
            progs = prog_query(fd, AttachType.CGROUP_INET_EGRESS).prog_ids
        finally:
            os.close(fd)
        names = [Program.from_id(i).info().name for i in progs]
        assert names == ["ipacctd_egress", "user_filter"]  # ours first, as systemd

        # swap the user filter: the new one is in place, the old one gone
        dp.apply(Spec(egress_filters=(pass_all,)), cgroup_dir)
        assert _send(ns, cgroup_dir, "198.51.100.2") == {"198.51.100.2": "ok"}
        assert sorted(n for n in os.listdir(unit_dir) if n.startswith("filter_")) == [
            "filter_egress_0"
        ]
        # a filter path that is not there: refused, and the working filter stays
        try:
            dp.apply(Spec(egress_filters=(pass_all, os.path.join(pin_root, "nope"))), cgroup_dir)
        except Exception as exc:
            assert "nope" in str(exc)
        else:
            raise AssertionError("a missing filter program was accepted")
        assert sorted(n for n in os.listdir(unit_dir) if n.startswith("filter_")) == [
            "filter_egress_0"
        ]
        assert _send(ns, cgroup_dir, "198.51.100.2") == {"198.51.100.2": "ok"}

        # ipacctd's own deny still applies in front of the user's filter
        deny = (ipaddress.ip_network("198.51.100.1/32"),)
        dp.apply(Spec(deny=deny, egress_filters=(pass_all,)), cgroup_dir)
        assert _send(ns, cgroup_dir, "198.51.100.1", "198.51.100.2") == {
            "198.51.100.1": "1",
            "198.51.100.2": "ok",
        }
        # no filters: only ours remain attached
        dp.apply(Spec(), cgroup_dir)
        assert not [n for n in os.listdir(unit_dir) if n.startswith("filter_")]
    finally:
        dp.remove()
