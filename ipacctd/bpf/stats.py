"""BPF_ENABLE_STATS: program run time and run count, collected while an fd is held."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ipacctd.bpf.syscall import bpf, close
from ipacctd.bpf.types import Cmd, StatsType
from ipacctd.uapi import BpfAttr


@contextmanager
def enabled_stats() -> Iterator[None]:
    """Turn on run_time_ns/run_cnt accounting for all programs while the block runs.

    The kernel keeps the statistics on for as long as any holder keeps its fd open, so
    this never turns off stats that somebody else (e.g. sysctl kernel.bpf_stats_enabled)
    switched on.
    """
    attr = BpfAttr()
    attr.enable_stats.type = StatsType.RUN_TIME
    fd = bpf(Cmd.ENABLE_STATS, attr, "enable run-time stats")
    try:
        yield
    finally:
        close(fd)

