"""Run statistics of units' programs: the cost column of ``top`` and ``/metrics``.

The kernel adds to a program's ``run_time_ns``/``run_cnt`` only while BPF statistics are on
(``kernel.bpf_stats_enabled``, or any holder of a ``BPF_ENABLE_STATS`` fd:
:func:`enabled_stats`). Front doors (``cli/``, ``daemon/``) read them through this module,
never through ``bpf/`` themselves.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

from ipacctd.bpf.errors import BPFError
from ipacctd.bpf.info import ProgramStats
from ipacctd.bpf.links import link_program_id, linked_program_stats
from ipacctd.bpf.objects import fd_by_id, obj_get
from ipacctd.bpf.programs import Program, pinned_program_stats, return_one
from ipacctd.bpf.programs import program_stats as fd_program_stats
from ipacctd.bpf.stats import enabled_stats
from ipacctd.bpf.syscall import NR_BPF, close
from ipacctd.bpf.types import Cmd
from ipacctd.datapath.counters import Direction
from ipacctd.datapath.unit import LINK, PROG_PIN
from ipacctd.libc import libc
from ipacctd.uapi import ATTR_SIZE, BpfAttr, BpfProgInfo

__all__ = ["ProgramStats", "StatsProbe", "StatsReader", "enabled_stats", "program_stats"]

#: The probe serves /metrics: its warning keeps the logger it had in daemon/metrics.py.
log = logging.getLogger("ipacctd.metrics")

PROBE_FRAME = bytes(12) + b"\x08\x00" + b"\x45" + bytes(19)  # Ethernet + IPv4 header


def program_stats(pin_dir: str) -> dict[Direction, ProgramStats]:
    """The run statistics of a unit's programs, per direction, from its pin directory.

    The program the unit's pinned link holds now; for a unit systemd arms (no link of ours:
    systemd attaches the unit's pinned programs itself), the pinned program. A direction with
    neither (no datapath, a unit being removed) is left out.
    """
    out = {}
    for direction in Direction:
        try:
            out[direction] = linked_program_stats(f"{pin_dir}/{LINK[direction]}")
        except (BPFError, OSError):
            try:
                out[direction] = pinned_program_stats(f"{pin_dir}/{PROG_PIN[direction]}")
            except (BPFError, OSError):
                continue
    return out


_INFO = int(Cmd.OBJ_GET_INFO_BY_FD)
#: struct bpf_prog_info up to recursion_misses (what :func:`program_stats` asks for).
_STATS_END = BpfProgInfo.verified_insns.offset


class StatsReader:
    """Run statistics of many units' programs, read again and again (``/metrics`` while
    BPF statistics are on): each unit's programs are opened once and their fds kept, so
    that a read is one ``BPF_OBJ_GET_INFO_BY_FD`` a program, where :func:`program_stats`
    opens the link, asks it for its program, opens that by id, reads and closes both (six
    syscalls a direction: 0.8 s a scrape at 10,000 units).

    The programs are those the unit's links held when first read under ``key`` (the
    caller's token for the unit as it knew it: the daemon passes the unit's status, which
    it replaces when the unit's policy or cgroup changes); a read under another key opens
    them again. :meth:`close` lets go of every fd (statistics turned off). Units beyond
    the fds the caller lets it keep are read by their programs' ids (see :meth:`read`).
    """

    def __init__(self) -> None:
        self._units: dict[str, tuple[object, tuple[tuple[Direction, int], ...]]] = {}
        self._ids: dict[str, tuple[object, tuple[tuple[Direction, int | str], ...]]] = {}
        # One struct and attr for every read (the reader is used under one lock): a new
        # ctypes struct per program read was a third of a scrape's statistics.
        self._info = BpfProgInfo()
        self._attr = BpfAttr()
        self._attr.info.info_len = _STATS_END
        self._attr.info.info = ctypes.addressof(self._info)
        self._ref = ctypes.byref(self._attr)

    def _stats(self, fd: int) -> ProgramStats:
        info = self._info
        # Zeroed first: the kernel reads the buffer lengths and pointers of the struct.
        ctypes.memset(ctypes.addressof(info), 0, _STATS_END)
        self._attr.info.bpf_fd = fd
        if libc.syscall(NR_BPF, _INFO, self._ref, ATTR_SIZE) != 0:
            return fd_program_stats(fd)  # asked again, to raise the mapped error
        return ProgramStats(info.run_time_ns, info.run_cnt, info.recursion_misses)

    @staticmethod
    def _resolve(pin_dir: str) -> tuple[tuple[Direction, int | str], ...]:
        """Per direction, the id of the program the unit's link holds, or for a unit
        systemd arms the path of its pinned program."""
        out: list[tuple[Direction, int | str]] = []
        for direction in Direction:
            try:
                link = obj_get(f"{pin_dir}/{LINK[direction]}", "link")
            except (BPFError, OSError):
                out.append((direction, f"{pin_dir}/{PROG_PIN[direction]}"))
                continue
            try:
                out.append((direction, link_program_id(link)))
            except (BPFError, OSError):
                out.append((direction, f"{pin_dir}/{PROG_PIN[direction]}"))
            finally:
                close(link)
        return tuple(out)

    @staticmethod
    def _fd(prog: int | str) -> int:
        if isinstance(prog, str):
            return obj_get(prog, "program")
        return fd_by_id(Cmd.PROG_GET_FD_BY_ID, prog, "program")

    def _open(self, pin_dir: str) -> tuple[tuple[Direction, int], ...]:
        fds = []
        for direction, prog in self._resolve(pin_dir):
            try:
                fds.append((direction, self._fd(prog)))
            except (BPFError, OSError):
                continue
        return tuple(fds)

    def __contains__(self, name: str) -> bool:
        return name in self._units

    def __len__(self) -> int:
        return len(self._units)

    def read(
        self, name: str, key: object, pin_dir: Callable[[str], str], keep: bool = True
    ) -> dict[Direction, ProgramStats]:
        """As :func:`program_stats` for the unit ``name``, pinned at ``pin_dir(name)``.

        ``keep``: its programs' fds may be kept. Else (the fds it may keep are taken) the
        ids of its programs are kept instead, each opened by id, read and closed (three
        syscalls a program, where resolving the link each time took six): a program's
        id stays its own while a link holds it, and the unit's links change with its
        policy or cgroup, that is with ``key``."""
        hit = self._units.get(name)
        if not keep and (hit is None or hit[0] is not key):
            self.forget(name)
            ids = self._ids.get(name)
            if ids is None or ids[0] is not key:
                ids = self._ids[name] = (key, self._resolve(pin_dir(name)))
            out = {}
            for direction, prog in ids[1]:
                try:
                    fd = self._fd(prog)
                except (BPFError, OSError):
                    continue  # gone: the unit's key changes with it
                try:
                    out[direction] = self._stats(fd)
                except (BPFError, OSError):
                    continue
                finally:
                    close(fd)
            return out
        self._ids.pop(name, None)
        if hit is None or hit[0] is not key:
            self.forget(name)
            hit = self._units[name] = (key, self._open(pin_dir(name)))
        out = {}
        for direction, fd in hit[1]:
            try:
                out[direction] = self._stats(fd)
            except (BPFError, OSError):
                continue
        return out

    def forget(self, name: str) -> None:
        hit = self._units.pop(name, None)
        for _, fd in hit[1] if hit is not None else ():
            close(fd)

    def keep_only(self, names: set[str]) -> None:
        """Let go of every unit not in ``names``."""
        for name in [n for n in self._units if n not in names]:
            self.forget(name)
        if len(self._ids) > len(names):
            self._ids = {n: v for n, v in self._ids.items() if n in names}

    def close(self) -> None:
        for name in list(self._units):
            self.forget(name)
        self._ids.clear()


class StatsProbe:
    """Whether the kernel collects BPF run-time statistics now (``kernel.bpf_stats_enabled``
    or any holder of a ``BPF_ENABLE_STATS`` fd, e.g. ``ipacctd top``).

    A ``return 1`` program is test-run once per question and its run count read: the kernel
    counts the run only while statistics are on. Two syscalls, where reading the program
    statistics of every unit costs about ten per unit (~70 ms at 1,000 units).
    """

    def __init__(self) -> None:
        self.prog: Program | None = None
        self.count = 0
        self.broken = False

    def on(self) -> bool:
        if self.broken:
            return True  # cannot tell: read them
        try:
            if self.prog is None:
                self.prog = Program.load(return_one(), name="ipacctd_probe")
                self.count = self.prog.stats().run_cnt
            self.prog.test_run(PROBE_FRAME)
            count = self.prog.stats().run_cnt
        except (BPFError, OSError) as exc:
            log.warning("cannot tell whether BPF stats are on (%s): reading them always", exc)
            self.broken = True
            return True
        on, self.count = count > self.count, count
        return on
