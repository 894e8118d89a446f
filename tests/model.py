"""An independent, brute-force model of systemd's IPAddressAllow=/IPAddressDeny= semantics,
and builders of the Ethernet frames that BPF_PROG_TEST_RUN feeds to a cgroup_skb program.

Nothing here imports ipacctd: the tests compare the library (and the kernel running the
programs it builds) against this model, so the model must not share its code.

Semantics (systemd, src/core/ip-address-access.c and bpf-firewall.c):

- ingress checks the packet's source address, egress its destination;
- an address is allowed when any allow prefix contains it; else dropped when any deny
  prefix contains it; else allowed;
- a packet that is neither IPv4 nor IPv6 passes.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806

_SRC_MAC = bytes.fromhex("020000000001")
_DST_MAC = bytes.fromhex("020000000002")


def _direction_name(direction: object) -> str:
    """Accept "ingress"/"egress", or an enum whose name or value (0/1) says which."""
    name = getattr(direction, "name", direction)
    if isinstance(name, str):
        name = name.lower()
        if name in ("ingress", "egress"):
            return name
    if direction in (0, 1):
        return ("ingress", "egress")[int(direction)]  # type: ignore[arg-type]
    raise ValueError(f"not a direction: {direction!r}")


def _addr(a: Address | str | None) -> Address | None:
    if a is None or isinstance(a, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return a
    return ipaddress.ip_address(a)


def _net(n: Network | str) -> Network:
    if isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return n
    return ipaddress.ip_network(n, strict=False)


def _contains(prefixes: Iterable[Network | str], address: Address) -> bool:
    """Brute force: does any prefix of ``address``'s family contain it (bit by bit)?"""
    bits = address.max_prefixlen
    value = int(address)
    for p in prefixes:
        net = _net(p)
        if net.version != address.version:
            continue
        shift = bits - net.prefixlen
        if (value >> shift) == (int(net.network_address) >> shift):
            return True
    return False


def address_verdict(
    address: Address | str, allow: Iterable[Network | str], deny: Iterable[Network | str]
) -> bool:
    """True when ``address`` passes: allowed if in allow; else dropped if in deny; else passes."""
    a = _addr(address)
    assert a is not None
    allow, deny = list(allow), list(deny)
    if _contains(allow, a):
        return True
    return not _contains(deny, a)


def verdict(
    direction: object,
    packet_src: Address | str | None,
    packet_dst: Address | str | None,
    allow: Iterable[Network | str],
    deny: Iterable[Network | str],
) -> bool:
    """True when the packet passes (the program returns 1), False when it is dropped.

    ``packet_src``/``packet_dst`` are None for a packet that is not IP (it passes).
    """
    which = _direction_name(direction)
    address = packet_src if which == "ingress" else packet_dst
    if address is None:
        return True
    return address_verdict(address, allow, deny)


# ---- frames -------------------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(ethertype: int, payload: bytes) -> bytes:
    """An Ethernet II frame (no FCS)."""
    return _DST_MAC + _SRC_MAC + struct.pack("!H", ethertype) + payload


def ipv4_udp(
    src: Address | str,
    dst: Address | str,
    payload: bytes = b"x" * 16,
    sport: int = 40000,
    dport: int = 9,
) -> bytes:
    """Ethernet + IPv4 (20-byte header, correct total length and checksum) + UDP."""
    s, d = ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst)
    udp_len = 8 + len(payload)
    pseudo = s.packed + d.packed + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    csum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    total = 20 + udp_len
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 17, 0, s.packed, d.packed)
    hdr = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
    return ethernet(ETH_P_IP, hdr + udp)


def ipv6_udp(
    src: Address | str,
    dst: Address | str,
    payload: bytes = b"x" * 16,
    sport: int = 40000,
    dport: int = 9,
) -> bytes:
    """Ethernet + IPv6 (40-byte header, correct payload length) + UDP with checksum."""
    s, d = ipaddress.IPv6Address(src), ipaddress.IPv6Address(dst)
    udp_len = 8 + len(payload)
    pseudo = s.packed + d.packed + struct.pack("!I3xB", udp_len, 17)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    csum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    hdr = struct.pack("!IHBB16s16s", 6 << 28, udp_len, 17, 64, s.packed, d.packed)
    return ethernet(ETH_P_IPV6, hdr + udp)


def udp_frame(src: Address | str, dst: Address | str, payload: bytes = b"x" * 16) -> bytes:
    """IPv4 or IPv6 UDP frame, by the addresses' family."""
    s = _addr(src)
    if isinstance(s, ipaddress.IPv4Address):
        return ipv4_udp(src, dst, payload)
    return ipv6_udp(src, dst, payload)


def arp_frame() -> bytes:
    """A non-IP frame: an ARP request (ethertype 0x0806) for 192.0.2.1."""
    arp = struct.pack(
        "!HHBBH6s4s6s4s",
        1,
        ETH_P_IP,
        6,
        4,
        1,
        _SRC_MAC,
        ipaddress.IPv4Address("192.0.2.2").packed,
        b"\0" * 6,
        ipaddress.IPv4Address("192.0.2.1").packed,
    )
    return ethernet(ETH_P_ARP, arp)


def ip_length(frame: bytes) -> int:
    """What the program counts as bytes (skb->len): the frame from the network header on."""
    return len(frame) - ETH_HLEN


def udp_ip_bytes(payload_len: int, version: int) -> int:
    """Bytes of one UDP datagram as the IP layer sees it (headers included)."""
    return payload_len + 8 + (20 if version == 4 else 40)
