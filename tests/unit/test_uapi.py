"""The kernel structs of :mod:`ipacctd.uapi` have the kernel's layout: every field at the offset
the C compiler gives it, and the sizes ipacctd passes to the kernel.

The offsets are ``offsetof()`` of the UAPI headers (``include/uapi/linux/bpf.h`` and
``sched.h`` of Linux 6.1, as Debian 12's linux-libc-dev ships them, printed by a C program);
``query.link_ids``/``link_attach_flags``/``revision`` and ``bpf_map_info.btf_vmlinux_id`` are
from 6.6, where they were added in what 6.1 has as padding. Root-free.
"""

from __future__ import annotations

import ctypes

import pytest

from ipacctd import uapi

# struct → "field=offset ..." (a dotted field is one inside a named member of the union).
OFFSETS = {
    "BpfAttr": """
    map_type=0 key_size=4 value_size=8 max_entries=12 map_flags=16 inner_map_fd=20
    numa_node=24 map_name=28 map_ifindex=44 btf_fd=48 btf_key_type_id=52
    btf_value_type_id=56 btf_vmlinux_value_type_id=60 map_extra=64 map_fd=0 key=8
    value=16 next_key=16 flags=24 batch.in_batch=0 batch.out_batch=8 batch.keys=16
    batch.values=24 batch.count=32 batch.map_fd=36 batch.elem_flags=40 batch.flags=48
    prog_type=0 insn_cnt=4 insns=8 license=16 log_level=24 log_size=28 log_buf=32
    kern_version=40 prog_flags=44 prog_name=48 prog_ifindex=64 expected_attach_type=68
    pathname=0 bpf_fd=8 file_flags=12 target_fd=0 attach_bpf_fd=4 attach_type=8
    attach_flags=12 replace_bpf_fd=16 test.prog_fd=0 test.retval=4 test.data_size_in=8
    test.data_size_out=12 test.data_in=16 test.data_out=24 test.repeat=32
    test.duration=36 test.ctx_size_in=40 test.ctx_size_out=44 test.ctx_in=48
    test.ctx_out=56 test.flags=64 test.cpu=68 test.batch_size=72 start_id=0 prog_id=0
    map_id=0 link_id=0 next_id=4 open_flags=8 info.bpf_fd=0 info.info_len=4 info.info=8
    query.target_fd=0 query.attach_type=4 query.query_flags=8 query.attach_flags=12
    query.prog_ids=16 query.prog_cnt=24 query.prog_attach_flags=32 link_create.prog_fd=0
    link_create.target_fd=4 link_create.attach_type=8 link_create.flags=12
    link_update.link_fd=0 link_update.new_prog_fd=4 link_update.flags=8
    link_update.old_prog_fd=12 link_detach.link_fd=0 enable_stats.type=0
    """,
    "BpfProgInfo": """
    type=0 id=4 tag=8 jited_prog_len=16 xlated_prog_len=20 jited_prog_insns=24
    xlated_prog_insns=32 load_time=40 created_by_uid=48 nr_map_ids=52 map_ids=56 name=64
    ifindex=80 netns_dev=88 netns_ino=96 nr_jited_ksyms=104 nr_jited_func_lens=108
    jited_ksyms=112 jited_func_lens=120 btf_id=128 func_info_rec_size=132 func_info=136
    nr_func_info=144 nr_line_info=148 line_info=152 jited_line_info=160
    nr_jited_line_info=168 line_info_rec_size=172 jited_line_info_rec_size=176
    nr_prog_tags=180 prog_tags=184 run_time_ns=192 run_cnt=200 recursion_misses=208
    verified_insns=216 attach_btf_obj_id=220 attach_btf_id=224
    """,
    "BpfMapInfo": """
    type=0 id=4 key_size=8 value_size=12 max_entries=16 map_flags=20 name=24 ifindex=40
    btf_vmlinux_value_type_id=44 netns_dev=48 netns_ino=56 btf_id=64 btf_key_type_id=68
    btf_value_type_id=72 map_extra=80
    """,
    "BpfLinkInfo": """
    type=0 id=4 prog_id=8 cgroup.cgroup_id=16 cgroup.attach_type=24
    """,
    "BpfLpmTrieKeyHdr": "prefixlen=0",
    "InotifyEvent": "wd=0 mask=4 cookie=8 len=12",
    "CloneArgs": """
    flags=0 pidfd=8 child_tid=16 parent_tid=24 exit_signal=32 stack=40 stack_size=48
    tls=56 set_tid=64 set_tid_size=72 cgroup=80
    """,
}
OFFSETS["BpfAttr"] += "query.link_ids=40 query.link_attach_flags=48 query.revision=56"
OFFSETS["BpfMapInfo"] += "btf_vmlinux_id=76"

SIZES = {
    "BpfProgInfo": 232,  # sizeof(struct bpf_prog_info)
    "BpfMapInfo": 88,  # sizeof(struct bpf_map_info) up to map_extra
    "BpfLinkInfo": 64,  # the 16-byte head and a 48-byte union (the cgroup variant read)
    "CloneArgs": 88,  # CLONE_ARGS_SIZE_VER2
    "BpfLpmTrieKeyHdr": 4,  # sizeof(struct bpf_lpm_trie_key_hdr): the address follows
    "InotifyEvent": 16,  # sizeof(struct inotify_event): the name follows
    "BpfAttr": uapi.ATTR_SIZE,  # at least sizeof(union bpf_attr), 144 in 6.1
    "MapCreateAttr": 72,
    "MapElemAttr": 32,
    "MapBatchAttr": 56,
    "TestRunAttr": 80,
    "QueryAttr": 64,
}


def _member_type(cls: type, name: str) -> type | None:
    """The ctypes type of field ``name`` of ``cls``, looking into anonymous members."""
    for field in cls._fields_:
        if field[0] == name:
            return field[1]
    for anon in getattr(cls, "_anonymous_", ()):
        found = _member_type(_member_type(cls, anon), name)
        if found is not None:
            return found
    return None


def offset(cls: type, path: str) -> int:
    total = 0
    for part in path.split("."):
        total += getattr(cls, part).offset
        cls = _member_type(cls, part)
    return total


CASES = [(struct, field, int(off)) for struct, text in OFFSETS.items()
         for field, _, off in (item.partition("=") for item in text.split())]


@pytest.mark.parametrize(("struct", "field", "expected"), CASES,
                         ids=[f"{s}.{f}" for s, f, _ in CASES])
def test_field_offset_is_the_kernels(struct: str, field: str, expected: int) -> None:
    assert offset(getattr(uapi, struct), field) == expected


@pytest.mark.parametrize(("struct", "size"), SIZES.items())
def test_struct_size(struct: str, size: int) -> None:
    assert ctypes.sizeof(getattr(uapi, struct)) == size


def test_bitfield_and_named_fields() -> None:
    info = uapi.BpfProgInfo.from_buffer_copy(
        bytes(84) + (1 | 0xFFFFFFFE).to_bytes(4, "little") + bytes(232 - 88))
    assert info.gpl_compatible == 1  # bit 0 of the u32 at 84
    info = uapi.BpfProgInfo()
    info.name = b"ipacctd_egress"
    assert bytes(info)[64:80] == b"ipacctd_egress\0\0"
    attr = uapi.BpfAttr()
    attr.next_key = 7  # shares its place with value
    assert attr.value == 7 and bytes(attr)[16:24] == (7).to_bytes(8, "little")
    assert bytes(uapi.BpfAttr()) == bytes(uapi.ATTR_SIZE)  # a new one is zeroed
