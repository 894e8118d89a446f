"""BPF programs: load (with the verifier log on failure), info, xlated code, test runs."""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Self

from ipacctd.bpf import asm
from ipacctd.bpf.errors import BPFError, BPFPermissionError, VerifierError
from ipacctd.bpf.objects import Object, c_str, fd_by_id, info_by_fd, info_by_fd_into, obj_get
from ipacctd.bpf.syscall import Attr, Cmd, addr, bpf, close

if TYPE_CHECKING:
    from ipacctd.bpf.info import ProgramInfo, ProgramStats, TestRun


class ProgType(enum.IntEnum):
    """enum bpf_prog_type (the ones ipacctd uses or shows)."""

    UNSPEC = 0
    SOCKET_FILTER = 1
    KPROBE = 2
    SCHED_CLS = 3
    SCHED_ACT = 4
    TRACEPOINT = 5
    XDP = 6
    PERF_EVENT = 7
    CGROUP_SKB = 8
    CGROUP_SOCK = 9


class AttachType(enum.IntEnum):
    """enum bpf_attach_type for cgroup_skb."""

    CGROUP_INET_INGRESS = 0
    CGROUP_INET_EGRESS = 1


LOG_SIZE = 1 << 22


_INFO_SIZE = 232


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
        code = items if isinstance(items, bytes) else asm.assemble(items)
        text = ctypes.create_string_buffer(code, len(code))
        lic = ctypes.create_string_buffer(license.encode())
        expected = 0 if attach_type is None else int(attach_type)

        def attempt(log: ctypes.Array | None) -> int:
            attr = Attr(struct.pack("=IIQQIIQII16sII", prog_type, len(code) // 8, addr(text),
                                    addr(lic), 1 if log is not None else 0,
                                    len(log) if log is not None else 0, addr(log), 0, 0,
                                    name.encode()[:15], 0, expected))
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
        return _prog_code(self.fd, 20, 32)

    def jited(self) -> bytes:
        """The JIT-compiled machine code."""
        return _prog_code(self.fd, 16, 24)

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

    info = ctypes.create_string_buffer(_INFO_SIZE)
    ids = (ctypes.c_uint32 * map_slots)()
    struct.pack_into("=IQ", info, 52, map_slots, ctypes.addressof(ids))
    raw = info_by_fd_into(fd, info, "program")
    ptype, pid = struct.unpack_from("=II", raw, 0)
    tag = raw[8:16].hex()
    jited_len, xlated_len = struct.unpack_from("=II", raw, 16)
    load_time = struct.unpack_from("=Q", raw, 40)[0]
    uid, nr_maps = struct.unpack_from("=II", raw, 48)
    gpl = bool(struct.unpack_from("=I", raw, 84)[0] & 1)
    run_time, run_cnt = struct.unpack_from("=QQ", raw, 192)
    verified = struct.unpack_from("=I", raw, 216)[0]
    return ProgramInfo(pid, ptype, tag, c_str(raw[64:80]), jited_len, xlated_len, load_time,
                       uid, tuple(ids[: min(nr_maps, map_slots)]), run_time, run_cnt, verified,
                       gpl)


# struct bpf_prog_info up to recursion_misses: run_time_ns, run_cnt, recursion_misses are
# u64 at 192, 200, 208. Asking the kernel for no more than that (no map ids, no name) is
# what makes a scrape of every unit's programs cheap.
_STATS_END = 216


def program_stats(fd: int) -> ProgramStats:
    """The run statistics of the program behind ``fd`` (the fd stays open)."""
    from ipacctd.bpf.info import ProgramStats

    return ProgramStats._make(
        struct.unpack_from("=QQQ", info_by_fd(fd, _STATS_END, "program"), 192))


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


def _prog_code(fd: int, len_off: int, ptr_off: int) -> bytes:
    first = ctypes.create_string_buffer(_INFO_SIZE)
    size = struct.unpack_from("=I", info_by_fd_into(fd, first, "program"), len_off)[0]
    code = ctypes.create_string_buffer(max(size, 1))
    info = ctypes.create_string_buffer(_INFO_SIZE)
    struct.pack_into("=I", info, len_off, size)
    struct.pack_into("=Q", info, ptr_off, ctypes.addressof(code))
    info_by_fd_into(fd, info, "program")
    return code.raw[:size]


def test_run(fd: int, data: bytes, repeat: int = 1) -> TestRun:
    """Run a loaded program ``repeat`` times on ``data`` inside the kernel."""
    from ipacctd.bpf.info import TestRun

    din = ctypes.create_string_buffer(data, len(data))
    dout = ctypes.create_string_buffer(len(data) + 256)
    attr = Attr(struct.pack("=IIIIQQII", fd, 0, len(data), len(dout), addr(din), addr(dout),
                            repeat, 0))
    bpf(Cmd.PROG_TEST_RUN, attr, "test run")
    raw = attr.raw()
    retval, _, out_size = struct.unpack_from("=III", raw, 4)
    duration = struct.unpack_from("=I", raw, 36)[0]
    return TestRun(retval, duration, dout.raw[:out_size])


def return_one() -> list[asm.Insn]:
    """The trivial ``return 1`` program: the floor for datapath benchmarks."""
    return [asm.mov64_imm(asm.R0, 1), asm.exit_()]


def __getattr__(name: str) -> object:
    # ProgramInfo, TestRun moved to ipacctd.bpf.info (imported on first use); still exported here.
    if name in ("ProgramInfo", "TestRun"):
        from ipacctd.bpf import info

        return getattr(info, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
