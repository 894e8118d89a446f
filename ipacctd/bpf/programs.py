"""BPF programs: load (with the verifier log on failure), info, xlated code, test runs."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable

from ipacctd.bpf.errors import BPFError, BPFPermissionError, VerifierError
from ipacctd.bpf.objects import Object, c_str, fd_by_id, info_by_fd, obj_get
from ipacctd.bpf.syscall import addr, bpf, close
from ipacctd.bpf.types import AttachType, Cmd, ProgType
from ipacctd.uapi import BpfAttr, BpfProgInfo

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Self

    from ipacctd.bpf import asm
    from ipacctd.bpf.info import ProgramInfo, ProgramStats, TestRun


LOG_SIZE = 1 << 22


class Program(Object):
    """A loaded BPF program."""

    kind = "program"

    def __init__(self, fd: int, name: str = "", prog_type: int = ProgType.CGROUP_SKB) -> None:
        super().__init__(fd, name)
        self.prog_type = prog_type

    @classmethod
    def load(cls, items: Iterable[asm.Insn | asm.Label] | bytes, *,
             prog_type: ProgType = ProgType.CGROUP_SKB,
             attach_type: AttachType | None = None, name: str = "",
             license: str = "GPL") -> Self:
        """BPF_PROG_LOAD instructions (or bytecode); raise VerifierError with the log."""
        if isinstance(items, bytes):
            code = items
        else:  # the assembler only to load: reading pinned programs (views) never needs it
            from ipacctd.bpf import asm

            code = asm.assemble(items)
        text = ctypes.create_string_buffer(code, len(code))
        lic = ctypes.create_string_buffer(license.encode())
        expected = 0 if attach_type is None else int(attach_type)

        def attempt(log: ctypes.Array | None) -> int:
            attr = BpfAttr()
            attr.prog_type = prog_type
            attr.insn_cnt = len(code) // 8
            attr.insns = addr(text)
            attr.license = addr(lic)
            if log is not None:
                attr.log_level = 1
                attr.log_size = len(log)
                attr.log_buf = addr(log)
            attr.prog_name = name.encode()[:15]
            attr.expected_attach_type = expected
            return bpf(Cmd.PROG_LOAD, attr, f"{prog_type.name.lower()} program {name!r}")

        try:
            fd = attempt(None)
        except BPFPermissionError as exc:
            if exc.errno == errno.EACCES:  # the verifier says EACCES for unsafe programs
                raise _verifier_error(attempt, name, exc) from None
            raise
        except BPFError as exc:
            if exc.errno == errno.EINVAL:
                raise _verifier_error(attempt, name, exc) from None
            raise
        return cls(fd, name, prog_type)

    @classmethod
    def open_pinned(cls, path: str) -> Self:
        """Open the program pinned at ``path``."""
        prog = cls(obj_get(path, "program"), path)
        info = prog.info()
        prog.name, prog.prog_type = info.name, info.type
        return prog

    @classmethod
    def from_id(cls, prog_id: int) -> Self:
        """Open a program by its kernel id."""
        prog = cls(fd_by_id(Cmd.PROG_GET_FD_BY_ID, prog_id, "program"))
        info = prog.info()
        prog.name, prog.prog_type = info.name, info.type
        return prog

    def info(self) -> ProgramInfo:
        """The kernel's info on this program; map ids included."""
        return program_info(self.fd)

    def stats(self) -> ProgramStats:
        """Run time, run count and recursion misses of this program (see ProgramStats)."""
        return program_stats(self.fd)

    def xlated(self) -> bytes:
        """The program as the kernel rewrote it (needs root), like ``bpftool dump xlated``."""
        return _xlated(self.fd)

    def test_run(self, data: bytes, repeat: int = 1) -> TestRun:
        """BPF_PROG_TEST_RUN on ``data`` (an Ethernet frame for cgroup_skb)."""
        return test_run(self.fd, data, repeat)


def _verifier_error(attempt, name: str, first: BPFError) -> BPFError:
    log = ctypes.create_string_buffer(LOG_SIZE)
    try:
        attempt(log)
    except BPFError as exc:
        text = c_str(log.raw)
        return VerifierError(exc.errno, f"the kernel verifier rejected program {name!r}: "
                             f"{os.strerror(exc.errno)}", text)
    return first  # loaded with the log on: the first failure was not the verifier's


def program_info(fd: int, map_slots: int = 64) -> ProgramInfo:
    """BPF_OBJ_GET_INFO_BY_FD for a program fd."""
    from ipacctd.bpf.info import ProgramInfo

    ids = (ctypes.c_uint32 * map_slots)()
    i = BpfProgInfo()
    i.nr_map_ids = map_slots
    i.map_ids = addr(ids)
    info_by_fd(fd, i, "program")
    return ProgramInfo(i.id, i.type, bytes(i.tag).hex(), i.name.decode(errors="replace"),
                       i.jited_prog_len, i.xlated_prog_len, i.load_time, i.created_by_uid,
                       tuple(ids[: min(i.nr_map_ids, map_slots)]), i.run_time_ns, i.run_cnt,
                       i.verified_insns, bool(i.gpl_compatible))


# struct bpf_prog_info up to recursion_misses: asking the kernel for no more than that (no
# map ids, no name) is what makes a scrape of every unit's programs cheap.
_STATS_END = BpfProgInfo.verified_insns.offset


def program_stats(fd: int) -> ProgramStats:
    """The run statistics of the program behind ``fd`` (the fd stays open)."""
    from ipacctd.bpf.info import ProgramStats

    i = info_by_fd(fd, BpfProgInfo(), "program", _STATS_END)
    return ProgramStats(i.run_time_ns, i.run_cnt, i.recursion_misses)


def program_stats_by_id(prog_id: int) -> ProgramStats:
    """The run statistics of the program with kernel id ``prog_id``."""
    fd = fd_by_id(Cmd.PROG_GET_FD_BY_ID, prog_id, "program")
    try:
        return program_stats(fd)
    finally:
        close(fd)


def pinned_program_stats(path: str) -> ProgramStats:
    """The run statistics of the program pinned at ``path``."""
    fd = obj_get(path, "program")
    try:
        return program_stats(fd)
    finally:
        close(fd)


def _xlated(fd: int) -> bytes:
    """The xlated instructions: one call for their length, one to copy them."""
    size = info_by_fd(fd, BpfProgInfo(), "program").xlated_prog_len
    code = ctypes.create_string_buffer(max(size, 1))
    info = BpfProgInfo()
    info.xlated_prog_len = size
    info.xlated_prog_insns = addr(code)
    info_by_fd(fd, info, "program")
    return code.raw[:size]


def test_run(fd: int, data: bytes, repeat: int = 1) -> TestRun:
    """Run a loaded program ``repeat`` times on ``data`` inside the kernel."""
    from ipacctd.bpf.info import TestRun

    din = ctypes.create_string_buffer(data, len(data))
    dout = ctypes.create_string_buffer(len(data) + 256)
    attr = BpfAttr()
    test = attr.test
    test.prog_fd = fd
    test.data_size_in = len(data)
    test.data_size_out = len(dout)
    test.data_in = addr(din)
    test.data_out = addr(dout)
    test.repeat = repeat
    bpf(Cmd.PROG_TEST_RUN, attr, "test run")
    return TestRun(test.retval, test.duration, dout.raw[: test.data_size_out])


def return_one() -> list[asm.Insn]:
    """The trivial ``return 1`` program: the floor for datapath benchmarks."""
    from ipacctd.bpf import asm

    return [asm.mov64_imm(asm.R0, 1), asm.exit_()]

