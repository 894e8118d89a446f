"""The kernel's BPF enums and flags (include/uapi/linux/bpf.h), named once.

A leaf: it imports nothing of ipacctd but ipacctd.enums (a leaf too), so any module may use
these names without pulling in maps, programs or the syscall (cf. cilium/ebpf
``types.go``). Member names are the kernel's without the ``BPF_``/``BPF_MAP_TYPE_``/…
prefix; lower-cased they are what bpftool prints (``cgroup_inet_ingress``,
``percpu_array``).
"""

from __future__ import annotations

from ipacctd.enums import IntEnum

# The kernel-internal "not supported" (include/linux/errno.h); bpf(2) leaks it to user space
# for commands a map or program type does not implement (batch ops on an LPM trie, ...).
ENOTSUPP = 524


class Cmd(IntEnum):
    """bpf(2) commands (enum bpf_cmd)."""

    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    MAP_GET_NEXT_KEY = 4
    PROG_LOAD = 5
    OBJ_PIN = 6
    OBJ_GET = 7
    PROG_ATTACH = 8
    PROG_DETACH = 9
    PROG_TEST_RUN = 10
    PROG_GET_NEXT_ID = 11
    MAP_GET_NEXT_ID = 12
    PROG_GET_FD_BY_ID = 13
    MAP_GET_FD_BY_ID = 14
    OBJ_GET_INFO_BY_FD = 15
    PROG_QUERY = 16
    MAP_LOOKUP_BATCH = 24
    MAP_UPDATE_BATCH = 26
    LINK_CREATE = 28
    LINK_UPDATE = 29
    LINK_GET_FD_BY_ID = 30
    LINK_GET_NEXT_ID = 31
    ENABLE_STATS = 32
    LINK_DETACH = 34


class MapType(IntEnum):
    """enum bpf_map_type (the ones ipacctd uses or shows)."""

    UNSPEC = 0
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERF_EVENT_ARRAY = 4
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    STACK_TRACE = 7
    CGROUP_ARRAY = 8
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11


class ProgType(IntEnum):
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


class LinkType(IntEnum):
    """enum bpf_link_type (bpf_link_info.type); ipacctd makes cgroup links only."""

    UNSPEC = 0
    RAW_TRACEPOINT = 1
    TRACING = 2
    CGROUP = 3
    ITER = 4
    NETNS = 5
    XDP = 6


class StatsType(IntEnum):
    """enum bpf_stats_type (BPF_ENABLE_STATS)."""

    RUN_TIME = 0


class AttachType(IntEnum):
    """enum bpf_attach_type for cgroup_skb."""

    CGROUP_INET_INGRESS = 0
    CGROUP_INET_EGRESS = 1


# Map flags (bpf_attr.map_flags of BPF_MAP_CREATE).
F_NO_PREALLOC = 1 << 0  # required by LPM tries
F_RDONLY_PROG = 1 << 7  # programs may only read the map

# Update flags (bpf_attr.flags of BPF_MAP_UPDATE_ELEM, and the bpf_map_update_elem helper).
ANY = 0  # create or overwrite
NOEXIST = 1  # create only
EXIST = 2  # overwrite only

# Attach flags (BPF_PROG_ATTACH, BPF_LINK_UPDATE) and query flags (BPF_PROG_QUERY).
F_ALLOW_MULTI = 1 << 1
F_REPLACE = 1 << 2
F_QUERY_EFFECTIVE = 1 << 0
