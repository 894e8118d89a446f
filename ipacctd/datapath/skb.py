"""The cgroup_skb program's context, ``struct __sk_buff``, with the kernel's field names.

The programs read it with plain loads at fixed offsets (the verifier rewrites each load into
a read of the real ``struct sk_buff``); the offsets come from this view rather than from
bare numbers. The prefix of the UAPI struct up to ``napi_id`` (``include/uapi/linux/bpf.h``)::

    struct __sk_buff {
            __u32 len;
            __u32 pkt_type;
            __u32 mark;
            __u32 queue_mapping;
            __u32 protocol;
            __u32 vlan_present;
            __u32 vlan_tci;
            __u32 vlan_proto;
            __u32 priority;
            __u32 ingress_ifindex;
            __u32 ifindex;
            __u32 tc_index;
            __u32 cb[5];
            __u32 hash;
            __u32 tc_classid;
            __u32 data;
            __u32 data_end;
            __u32 napi_id;
            ...                     /* family, addresses, ports, data_meta, tstamp, sk, ... */
    };

Fields past ``napi_id`` are left out: nothing here reads them, and leaving them out moves
no offset of the fields before them.
"""

from __future__ import annotations

import ctypes


class SkBuff(ctypes.Structure):
    """``struct __sk_buff`` up to ``napi_id`` (see the module's docstring)."""

    _fields_ = [
        ("len", ctypes.c_uint32),  # bytes of the packet from its network header on
        ("pkt_type", ctypes.c_uint32),
        ("mark", ctypes.c_uint32),
        ("queue_mapping", ctypes.c_uint32),
        ("protocol", ctypes.c_uint32),  # the ethertype, big-endian, in the low 16 bits
        ("vlan_present", ctypes.c_uint32),
        ("vlan_tci", ctypes.c_uint32),
        ("vlan_proto", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("tc_index", ctypes.c_uint32),
        ("cb", ctypes.c_uint32 * 5),
        ("hash", ctypes.c_uint32),
        ("tc_classid", ctypes.c_uint32),
        ("data", ctypes.c_uint32),  # start of the linear data (the IP header here)
        ("data_end", ctypes.c_uint32),  # end of the linear data
        ("napi_id", ctypes.c_uint32),
    ]


LEN = SkBuff.len.offset
PROTOCOL = SkBuff.protocol.offset
DATA = SkBuff.data.offset
DATA_END = SkBuff.data_end.offset
