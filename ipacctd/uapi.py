"""The kernel structs ipacctd passes to system calls, each named once with the kernel's field
names (``include/uapi/linux/bpf.h``, ``include/uapi/linux/sched.h``).

A leaf (ctypes only), so the BPF layer and ``cli/spawn.py`` share it without importing each
other; cf. cilium/ebpf ``internal/sys/types.go``. Code sets and reads fields by name, as
systemd's ``bpf-program.c`` does (``attr.prog_type = …``), never by offset.

Every ``__aligned_u64`` is a ``c_uint64``; where C pads before one, the padding is an explicit
``_pad*`` field, so the layout is the kernel's on 32-bit machines too (where ctypes aligns a
u64 to 4 only). ``tests/unit/test_uapi.py`` checks sizes and offsets against the C header.
A struct that the kernel has grown since declares the fields ipacctd uses and leaves the rest
out: the kernel reads a shorter struct as one whose tail is zero.
"""

from __future__ import annotations

import ctypes

u32 = ctypes.c_uint32
u64 = ctypes.c_uint64

BPF_OBJ_NAME_LEN = 16
BPF_TAG_SIZE = 8

# The bpf_attr buffer handed to bpf(2). union bpf_attr is 144+ bytes on current kernels; the
# kernel accepts a larger buffer as long as the tail is zero, and writes outputs (prog_cnt,
# revision, next_id, …) back into it, so it must cover every field a command may write.
ATTR_SIZE = 160


# -- union bpf_attr: one Structure per command's variant ------------------------------------


class MapCreateAttr(ctypes.Structure):
    """BPF_MAP_CREATE::

        struct { /* anonymous struct used by BPF_MAP_CREATE command */
            __u32   map_type;       /* one of enum bpf_map_type */
            __u32   key_size;       /* size of key in bytes */
            __u32   value_size;     /* size of value in bytes */
            __u32   max_entries;    /* max number of entries in a map */
            __u32   map_flags;      /* BPF_MAP_CREATE related flags */
            __u32   inner_map_fd;   /* fd pointing to the inner map */
            __u32   numa_node;      /* numa node (effective only if BPF_F_NUMA_NODE is set) */
            char    map_name[BPF_OBJ_NAME_LEN];
            __u32   map_ifindex;    /* ifindex of netdev to create on */
            __u32   btf_fd;         /* fd pointing to a BTF type data */
            __u32   btf_key_type_id;        /* BTF type_id of the key */
            __u32   btf_value_type_id;      /* BTF type_id of the value */
            __u32   btf_vmlinux_value_type_id;
            __u64   map_extra;
        };
    """

    _fields_ = [
        ("map_type", u32),
        ("key_size", u32),
        ("value_size", u32),
        ("max_entries", u32),
        ("map_flags", u32),
        ("inner_map_fd", u32),
        ("numa_node", u32),
        ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("map_ifindex", u32),
        ("btf_fd", u32),
        ("btf_key_type_id", u32),
        ("btf_value_type_id", u32),
        ("btf_vmlinux_value_type_id", u32),
        ("map_extra", u64),
    ]


class _ValueOrNextKey(ctypes.Union):
    _fields_ = [("value", u64), ("next_key", u64)]


class MapElemAttr(ctypes.Structure):
    """BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY::

        struct { /* anonymous struct used by BPF_MAP_*_ELEM commands */
            __u32           map_fd;
            __aligned_u64   key;
            union {
                __aligned_u64 value;
                __aligned_u64 next_key;
            };
            __u64           flags;
        };
    """

    _anonymous_ = ("_value",)
    _fields_ = [
        ("map_fd", u32),
        ("_pad0", u32),
        ("key", u64),
        ("_value", _ValueOrNextKey),
        ("flags", u64),
    ]


class MapBatchAttr(ctypes.Structure):
    """BPF_MAP_LOOKUP_BATCH, BPF_MAP_UPDATE_BATCH (``attr.batch``)::

        struct { /* struct used by BPF_MAP_*_BATCH commands */
            __aligned_u64   in_batch;  /* start batch, NULL to start from beginning */
            __aligned_u64   out_batch; /* output: next start batch */
            __aligned_u64   keys;
            __aligned_u64   values;
            __u32           count;     /* input/output:
                                        * input: # of key/value elements
                                        * output: # of filled elements */
            __u32           map_fd;
            __u64           elem_flags;
            __u64           flags;
        } batch;
    """

    _fields_ = [
        ("in_batch", u64),
        ("out_batch", u64),
        ("keys", u64),
        ("values", u64),
        ("count", u32),
        ("map_fd", u32),
        ("elem_flags", u64),
        ("flags", u64),
    ]


class ProgLoadAttr(ctypes.Structure):
    """BPF_PROG_LOAD (up to expected_attach_type; the BTF, func/line info, fd_array … that
    follow stay zero)::

        struct { /* anonymous struct used by BPF_PROG_LOAD command */
            __u32           prog_type;      /* one of enum bpf_prog_type */
            __u32           insn_cnt;
            __aligned_u64   insns;
            __aligned_u64   license;
            __u32           log_level;      /* verbosity level of verifier */
            __u32           log_size;       /* size of user buffer */
            __aligned_u64   log_buf;        /* user supplied buffer */
            __u32           kern_version;   /* not used */
            __u32           prog_flags;
            char            prog_name[BPF_OBJ_NAME_LEN];
            __u32           prog_ifindex;   /* ifindex of netdev to prep for */
            __u32           expected_attach_type;
            ...
        };
    """

    _fields_ = [
        ("prog_type", u32),
        ("insn_cnt", u32),
        ("insns", u64),
        ("license", u64),
        ("log_level", u32),
        ("log_size", u32),
        ("log_buf", u64),
        ("kern_version", u32),
        ("prog_flags", u32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("prog_ifindex", u32),
        ("expected_attach_type", u32),
    ]


class ObjAttr(ctypes.Structure):
    """BPF_OBJ_PIN, BPF_OBJ_GET::

        struct { /* anonymous struct used by BPF_OBJ_* commands */
            __aligned_u64   pathname;
            __u32           bpf_fd;
            __u32           file_flags;
        };
    """

    _fields_ = [("pathname", u64), ("bpf_fd", u32), ("file_flags", u32)]


class ProgAttachAttr(ctypes.Structure):
    """BPF_PROG_ATTACH, BPF_PROG_DETACH::

        struct { /* anonymous struct used by BPF_PROG_ATTACH/DETACH commands */
            __u32   target_fd;      /* container object to attach to */
            __u32   attach_bpf_fd;  /* eBPF program to attach */
            __u32   attach_type;
            __u32   attach_flags;
            __u32   replace_bpf_fd; /* previously attached eBPF program to replace if
                                     * BPF_F_REPLACE is used */
        };
    """

    _fields_ = [
        ("target_fd", u32),
        ("attach_bpf_fd", u32),
        ("attach_type", u32),
        ("attach_flags", u32),
        ("replace_bpf_fd", u32),
    ]


class TestRunAttr(ctypes.Structure):
    """BPF_PROG_TEST_RUN (``attr.test``)::

        struct { /* anonymous struct used by BPF_PROG_TEST_RUN command */
            __u32           prog_fd;
            __u32           retval;
            __u32           data_size_in;   /* input: len of data_in */
            __u32           data_size_out;  /* input/output: len of data_out
                                             *   returns ENOSPC if data_out is too small. */
            __aligned_u64   data_in;
            __aligned_u64   data_out;
            __u32           repeat;
            __u32           duration;
            __u32           ctx_size_in;    /* input: len of ctx_in */
            __u32           ctx_size_out;   /* input/output: len of ctx_out */
            __aligned_u64   ctx_in;
            __aligned_u64   ctx_out;
            __u32           flags;
            __u32           cpu;
            __u32           batch_size;
        } test;
    """

    __test__ = False  # not a pytest test class

    _fields_ = [
        ("prog_fd", u32),
        ("retval", u32),
        ("data_size_in", u32),
        ("data_size_out", u32),
        ("data_in", u64),
        ("data_out", u64),
        ("repeat", u32),
        ("duration", u32),
        ("ctx_size_in", u32),
        ("ctx_size_out", u32),
        ("ctx_in", u64),
        ("ctx_out", u64),
        ("flags", u32),
        ("cpu", u32),
        ("batch_size", u32),
        ("_pad0", u32),
    ]


class _StartId(ctypes.Union):
    _fields_ = [("start_id", u32), ("prog_id", u32), ("map_id", u32), ("btf_id", u32),
                ("link_id", u32)]


class GetIdAttr(ctypes.Structure):
    """BPF_{PROG,MAP,LINK}_GET_NEXT_ID, BPF_{PROG,MAP,LINK}_GET_FD_BY_ID::

        struct { /* anonymous struct used by BPF_*_GET_*_ID */
            union {
                __u32   start_id;
                __u32   prog_id;
                __u32   map_id;
                __u32   btf_id;
                __u32   link_id;
            };
            __u32   next_id;
            __u32   open_flags;
        };
    """

    _anonymous_ = ("_id",)
    _fields_ = [("_id", _StartId), ("next_id", u32), ("open_flags", u32)]


class InfoAttr(ctypes.Structure):
    """BPF_OBJ_GET_INFO_BY_FD (``attr.info``)::

        struct { /* anonymous struct used by BPF_OBJ_GET_INFO_BY_FD */
            __u32           bpf_fd;
            __u32           info_len;
            __aligned_u64   info;
        } info;
    """

    _fields_ = [("bpf_fd", u32), ("info_len", u32), ("info", u64)]


class QueryAttr(ctypes.Structure):
    """BPF_PROG_QUERY (``attr.query``; link_ids and revision since Linux 6.6)::

        struct { /* anonymous struct used by BPF_PROG_QUERY command */
            union {
                __u32   target_fd;      /* target object to query or ... */
                __u32   target_ifindex; /* target ifindex */
            };
            __u32           attach_type;
            __u32           query_flags;
            __u32           attach_flags;
            __aligned_u64   prog_ids;
            union {
                __u32   prog_cnt;
                __u32   count;
            };
            __u32           :32;
            /* output: per-program attach_flags.
             * not allowed to be set during effective query. */
            __aligned_u64   prog_attach_flags;
            __aligned_u64   link_ids;
            __aligned_u64   link_attach_flags;
            __u64           revision;
        } query;
    """

    _fields_ = [
        ("target_fd", u32),
        ("attach_type", u32),
        ("query_flags", u32),
        ("attach_flags", u32),
        ("prog_ids", u64),
        ("prog_cnt", u32),
        ("_pad0", u32),
        ("prog_attach_flags", u64),
        ("link_ids", u64),
        ("link_attach_flags", u64),
        ("revision", u64),
    ]


class LinkCreateAttr(ctypes.Structure):
    """BPF_LINK_CREATE (``attr.link_create``; the per-link-type union that follows ``flags``
    is not used for cgroup links and stays zero)::

        struct { /* struct used by BPF_LINK_CREATE command */
            union {
                __u32   prog_fd;        /* eBPF program to attach */
                __u32   map_fd;         /* struct_ops to attach */
            };
            union {
                __u32   target_fd;      /* target object to attach to or ... */
                __u32   target_ifindex; /* target ifindex */
            };
            __u32   attach_type;    /* attach type */
            __u32   flags;          /* extra flags */
            union { ... };
        } link_create;
    """

    _fields_ = [("prog_fd", u32), ("target_fd", u32), ("attach_type", u32), ("flags", u32)]


class LinkUpdateAttr(ctypes.Structure):
    """BPF_LINK_UPDATE (``attr.link_update``)::

        struct { /* struct used by BPF_LINK_UPDATE command */
            __u32   link_fd;        /* link fd */
            union {
                /* new program fd to update link with */
                __u32   new_prog_fd;
                /* new struct_ops map fd to update link with */
                __u32   new_map_fd;
            };
            __u32   flags;          /* extra flags */
            union {
                /* expected link's program fd; is specified only if
                 * BPF_F_REPLACE flag is set in flags. */
                __u32   old_prog_fd;
                /* expected link's map fd; is specified only
                 * if BPF_F_REPLACE flag is set. */
                __u32   old_map_fd;
            };
        } link_update;
    """

    _fields_ = [("link_fd", u32), ("new_prog_fd", u32), ("flags", u32), ("old_prog_fd", u32)]


class LinkDetachAttr(ctypes.Structure):
    """BPF_LINK_DETACH (``attr.link_detach``)::

        struct {
            __u32   link_fd;
        } link_detach;
    """

    _fields_ = [("link_fd", u32)]


class EnableStatsAttr(ctypes.Structure):
    """BPF_ENABLE_STATS (``attr.enable_stats``)::

        struct { /* struct used by BPF_ENABLE_STATS command */
            __u32   type;
        } enable_stats;
    """

    _fields_ = [("type", u32)]


class BpfAttr(ctypes.Union):
    """``union bpf_attr``: the variants above, the kernel's anonymous ones anonymous here too
    (``attr.map_type``, ``attr.key``, ``attr.prog_type``, ``attr.pathname``,
    ``attr.target_fd``, ``attr.next_id``), the named ones by their names (``attr.batch``,
    ``attr.test``, ``attr.info``, ``attr.query``, ``attr.link_create``,
    ``attr.link_update``, ``attr.link_detach``, ``attr.enable_stats``). A new one is zeroed;
    it is :data:`ATTR_SIZE` bytes long::

        union bpf_attr {
            struct { ... };                 /* BPF_MAP_CREATE */
            struct { ... };                 /* BPF_MAP_*_ELEM */
            struct { ... } batch;           /* BPF_MAP_*_BATCH */
            struct { ... };                 /* BPF_PROG_LOAD */
            struct { ... };                 /* BPF_OBJ_* */
            struct { ... };                 /* BPF_PROG_ATTACH/DETACH */
            struct { ... } test;            /* BPF_PROG_TEST_RUN */
            struct { ... };                 /* BPF_*_GET_*_ID */
            struct { ... } info;            /* BPF_OBJ_GET_INFO_BY_FD */
            struct { ... } query;           /* BPF_PROG_QUERY */
            ...
            struct { ... } link_create;     /* BPF_LINK_CREATE */
            struct { ... } link_update;     /* BPF_LINK_UPDATE */
            struct { ... } link_detach;     /* BPF_LINK_DETACH */
            struct { ... } enable_stats;    /* BPF_ENABLE_STATS */
            ...
        } __attribute__((aligned(8)));
    """

    _anonymous_ = ("_map_create", "_elem", "_prog_load", "_obj", "_attach", "_get_id")
    _fields_ = [
        ("_map_create", MapCreateAttr),
        ("_elem", MapElemAttr),
        ("batch", MapBatchAttr),
        ("_prog_load", ProgLoadAttr),
        ("_obj", ObjAttr),
        ("_attach", ProgAttachAttr),
        ("test", TestRunAttr),
        ("_get_id", GetIdAttr),
        ("info", InfoAttr),
        ("query", QueryAttr),
        ("link_create", LinkCreateAttr),
        ("link_update", LinkUpdateAttr),
        ("link_detach", LinkDetachAttr),
        ("enable_stats", EnableStatsAttr),
        ("_size", u64 * (ATTR_SIZE // 8)),
    ]


# -- what BPF_OBJ_GET_INFO_BY_FD fills in ---------------------------------------------------


class BpfProgInfo(ctypes.Structure):
    """struct bpf_prog_info::

        struct bpf_prog_info {
            __u32 type;
            __u32 id;
            __u8  tag[BPF_TAG_SIZE];
            __u32 jited_prog_len;
            __u32 xlated_prog_len;
            __aligned_u64 jited_prog_insns;
            __aligned_u64 xlated_prog_insns;
            __u64 load_time;        /* ns since boottime */
            __u32 created_by_uid;
            __u32 nr_map_ids;
            __aligned_u64 map_ids;
            char name[BPF_OBJ_NAME_LEN];
            __u32 ifindex;
            __u32 gpl_compatible:1;
            __u32 :31; /* alignment pad */
            __u64 netns_dev;
            __u64 netns_ino;
            __u32 nr_jited_ksyms;
            __u32 nr_jited_func_lens;
            __aligned_u64 jited_ksyms;
            __aligned_u64 jited_func_lens;
            __u32 btf_id;
            __u32 func_info_rec_size;
            __aligned_u64 func_info;
            __u32 nr_func_info;
            __u32 nr_line_info;
            __aligned_u64 line_info;
            __aligned_u64 jited_line_info;
            __u32 nr_jited_line_info;
            __u32 line_info_rec_size;
            __u32 jited_line_info_rec_size;
            __u32 nr_prog_tags;
            __aligned_u64 prog_tags;
            __u64 run_time_ns;
            __u64 run_cnt;
            __u64 recursion_misses;
            __u32 verified_insns;
            __u32 attach_btf_obj_id;
            __u32 attach_btf_id;
        } __attribute__((aligned(8)));
    """

    _fields_ = [
        ("type", u32),
        ("id", u32),
        ("tag", ctypes.c_uint8 * BPF_TAG_SIZE),
        ("jited_prog_len", u32),
        ("xlated_prog_len", u32),
        ("jited_prog_insns", u64),
        ("xlated_prog_insns", u64),
        ("load_time", u64),
        ("created_by_uid", u32),
        ("nr_map_ids", u32),
        ("map_ids", u64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", u32),
        ("gpl_compatible", u32, 1),
        ("_pad0", u32, 31),
        ("netns_dev", u64),
        ("netns_ino", u64),
        ("nr_jited_ksyms", u32),
        ("nr_jited_func_lens", u32),
        ("jited_ksyms", u64),
        ("jited_func_lens", u64),
        ("btf_id", u32),
        ("func_info_rec_size", u32),
        ("func_info", u64),
        ("nr_func_info", u32),
        ("nr_line_info", u32),
        ("line_info", u64),
        ("jited_line_info", u64),
        ("nr_jited_line_info", u32),
        ("line_info_rec_size", u32),
        ("jited_line_info_rec_size", u32),
        ("nr_prog_tags", u32),
        ("prog_tags", u64),
        ("run_time_ns", u64),
        ("run_cnt", u64),
        ("recursion_misses", u64),
        ("verified_insns", u32),
        ("attach_btf_obj_id", u32),
        ("attach_btf_id", u32),
        ("_pad1", u32),
    ]


class BpfMapInfo(ctypes.Structure):
    """struct bpf_map_info (up to map_extra)::

        struct bpf_map_info {
            __u32 type;
            __u32 id;
            __u32 key_size;
            __u32 value_size;
            __u32 max_entries;
            __u32 map_flags;
            char  name[BPF_OBJ_NAME_LEN];
            __u32 ifindex;
            __u32 btf_vmlinux_value_type_id;
            __u64 netns_dev;
            __u64 netns_ino;
            __u32 btf_id;
            __u32 btf_key_type_id;
            __u32 btf_value_type_id;
            __u32 btf_vmlinux_id;  /* 6.1: __u32 :32; alignment pad */
            __u64 map_extra;
            ...
        } __attribute__((aligned(8)));
    """

    _fields_ = [
        ("type", u32),
        ("id", u32),
        ("key_size", u32),
        ("value_size", u32),
        ("max_entries", u32),
        ("map_flags", u32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", u32),
        ("btf_vmlinux_value_type_id", u32),
        ("netns_dev", u64),
        ("netns_ino", u64),
        ("btf_id", u32),
        ("btf_key_type_id", u32),
        ("btf_value_type_id", u32),
        ("btf_vmlinux_id", u32),
        ("map_extra", u64),
    ]


class _LinkInfoCgroup(ctypes.Structure):
    _fields_ = [("cgroup_id", u64), ("attach_type", u32), ("_pad0", u32)]


class _LinkInfoUnion(ctypes.Union):
    # Only the cgroup variant is read; the union is as large as the 48 bytes asked for until
    # now (the kernel fills min(its size, ours)).
    _fields_ = [("cgroup", _LinkInfoCgroup), ("_size", u64 * 6)]


class BpfLinkInfo(ctypes.Structure):
    """struct bpf_link_info (its cgroup variant)::

        struct bpf_link_info {
            __u32 type;
            __u32 id;
            __u32 prog_id;
            union {
                ...
                struct {
                    __u64 cgroup_id;
                    __u32 attach_type;
                } cgroup;
                ...
            };
        } __attribute__((aligned(8)));
    """

    _anonymous_ = ("_u",)
    _fields_ = [("type", u32), ("id", u32), ("prog_id", u32), ("_pad0", u32),
                ("_u", _LinkInfoUnion)]


# -- map keys the kernel defines ---------------------------------------------------------------


class BpfLpmTrieKeyHdr(ctypes.Structure):
    """The head of an LPM trie key (include/uapi/linux/bpf.h), the address bytes follow it
    in network order::

        struct bpf_lpm_trie_key_hdr {
            __u32   prefixlen;
        };
        struct bpf_lpm_trie_key_u8 {
            union {
                struct bpf_lpm_trie_key_hdr hdr;
                __u32 prefixlen;
            };
            __u8    data[];  /* Arbitrary size */
        };
    """

    _fields_ = [("prefixlen", u32)]


# -- inotify(7) ---------------------------------------------------------------------------------


class InotifyEvent(ctypes.Structure):
    """struct inotify_event (include/uapi/linux/inotify.h), ``len`` bytes of name follow::

        struct inotify_event {
            __s32       wd;
            __u32       mask;
            __u32       cookie;
            __u32       len;
            char        name[];
        };
    """

    _fields_ = [("wd", ctypes.c_int32), ("mask", u32), ("cookie", u32), ("len", u32)]


# -- clone3(2) --------------------------------------------------------------------------------


class CloneArgs(ctypes.Structure):
    """struct clone_args (include/uapi/linux/sched.h; CLONE_ARGS_SIZE_VER2, with cgroup)::

        struct clone_args {
            __aligned_u64 flags;
            __aligned_u64 pidfd;
            __aligned_u64 child_tid;
            __aligned_u64 parent_tid;
            __aligned_u64 exit_signal;
            __aligned_u64 stack;
            __aligned_u64 stack_size;
            __aligned_u64 tls;
            __aligned_u64 set_tid;
            __aligned_u64 set_tid_size;
            __aligned_u64 cgroup;
        };
    """

    _fields_ = [
        ("flags", u64),
        ("pidfd", u64),
        ("child_tid", u64),
        ("parent_tid", u64),
        ("exit_signal", u64),
        ("stack", u64),
        ("stack_size", u64),
        ("tls", u64),
        ("set_tid", u64),
        ("set_tid_size", u64),
        ("cgroup", u64),
    ]
