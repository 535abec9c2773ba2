"""The rtnetlink messages of the vxlan overlay, encoded with ``struct`` like ``codec``:
vxlan links (create, change, look up, decode ``IFLA_LINKINFO``), neighbour and
forwarding-database entries (``RTM_*NEIGH``: ``AF_INET``/``AF_INET6`` neighbours,
``AF_BRIDGE`` FDB entries with ``NTF_SELF``). No I/O and nothing outside the standard
library and ``codec``.

Layouts (host byte order unless noted, attributes 4-byte aligned), from
``linux/rtnetlink.h``, ``linux/neighbour.h`` and ``linux/if_link.h``::

    ndmsg     u8 family, u8 pad, u16 pad, i32 ifindex, u16 state, u8 flags, u8 type  12 bytes
    ifinfomsg u8 family, pad, u16 type, i32 index, u32 flags, u32 change            16 bytes
    IFLA_LINKINFO { IFLA_INFO_KIND "vxlan", IFLA_INFO_DATA { IFLA_VXLAN_* } }   (nested)
    IFLA_VXLAN_PORT is big-endian; IFLA_VXLAN_LOCAL/LOCAL6 are the packed address.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Final, NamedTuple

from xcluster_cni_lib.kernel import codec as rc

RTM_NEWNEIGH: Final = 28
RTM_DELNEIGH: Final = 29
RTM_GETNEIGH: Final = 30
RTNLGRP_NEIGH: Final = 3

AF_BRIDGE: Final = int(socket.AF_BRIDGE)

NDA_DST: Final = 1
NDA_LLADDR: Final = 2
NDA_IFINDEX: Final = 8
NUD_PERMANENT: Final = 0x80
NTF_SELF: Final = 0x02

IFLA_ADDRESS: Final = 1
IFLA_LINKINFO: Final = 18
IFLA_INFO_KIND: Final = 1
IFLA_INFO_DATA: Final = 2
IFLA_VXLAN_ID: Final = 1
IFLA_VXLAN_LINK: Final = 3
IFLA_VXLAN_LOCAL: Final = 4
IFLA_VXLAN_LEARNING: Final = 7
IFLA_VXLAN_PORT: Final = 15
IFLA_VXLAN_LOCAL6: Final = 17
NLA_F_NESTED: Final = 0x8000

_HDR = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")
_NDMSG = struct.Struct("=BBHiHBB")
_IFINFOMSG = struct.Struct("=BxHiII")


def mac_bytes(mac: str) -> bytes:
    """``0e:04:0a:00:00:01`` -> 6 bytes."""
    return bytes(int(part, 16) for part in mac.split(":"))


def mac_text(raw: bytes) -> str:
    """6 bytes -> ``0e:04:0a:00:00:01``."""
    return ":".join(f"{b:02x}" for b in raw)


def _attr(atype: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _ATTR.pack(length, atype) + payload + b"\0" * (-length % 4)


def _message(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HDR.pack(HDR_LEN + len(body), msg_type, flags, seq, 0) + body


HDR_LEN: Final = _HDR.size


# --- links ------------------------------------------------------------------------------


def link_get_request(name: str, *, seq: int) -> bytes:
    """RTM_GETLINK of one link by name (answered with RTM_NEWLINK or ENODEV)."""
    body = _IFINFOMSG.pack(0, 0, 0, 0, 0) + _attr(rc.IFLA_IFNAME, name.encode() + b"\0")
    return _message(rc.RTM_GETLINK, rc.NLM_F_REQUEST, seq, body)


def vxlan_create_request(
    *,
    seq: int,
    name: str,
    vni: int,
    port: int,
    local: bytes,
    lower: int,
    mac: str,
    mtu: int,
) -> bytes:
    """RTM_NEWLINK creating a vxlan link, up, learning off (fails if the name exists)."""
    local_type = IFLA_VXLAN_LOCAL if len(local) == 4 else IFLA_VXLAN_LOCAL6
    data = b"".join(
        (
            _attr(IFLA_VXLAN_ID, _U32.pack(vni)),
            _attr(IFLA_VXLAN_LINK, _U32.pack(lower)),
            _attr(local_type, local),
            _attr(IFLA_VXLAN_LEARNING, b"\0"),
            _attr(IFLA_VXLAN_PORT, _BE16.pack(port)),
        )
    )
    info = _attr(IFLA_INFO_KIND, b"vxlan") + _attr(IFLA_INFO_DATA | NLA_F_NESTED, data)
    body = b"".join(
        (
            _IFINFOMSG.pack(0, 0, 0, rc.IFF_UP, rc.IFF_UP),
            _attr(rc.IFLA_IFNAME, name.encode() + b"\0"),
            _attr(IFLA_ADDRESS, mac_bytes(mac)),
            _attr(rc.IFLA_MTU, _U32.pack(mtu)),
            _attr(IFLA_LINKINFO | NLA_F_NESTED, info),
        )
    )
    flags = rc.NLM_F_REQUEST | rc.NLM_F_ACK | rc.NLM_F_CREATE | rc.NLM_F_EXCL
    return _message(rc.RTM_NEWLINK, flags, seq, body)


def link_set_request(*, seq: int, ifindex: int, mac: str, mtu: int) -> bytes:
    """RTM_NEWLINK changing a link in place: address, MTU, up."""
    body = b"".join(
        (
            _IFINFOMSG.pack(0, 0, ifindex, rc.IFF_UP, rc.IFF_UP),
            _attr(IFLA_ADDRESS, mac_bytes(mac)),
            _attr(rc.IFLA_MTU, _U32.pack(mtu)),
        )
    )
    return _message(rc.RTM_NEWLINK, rc.NLM_F_REQUEST | rc.NLM_F_ACK, seq, body)


def link_delete_request(*, seq: int, ifindex: int) -> bytes:
    body = _IFINFOMSG.pack(0, 0, ifindex, 0, 0)
    return _message(rc.RTM_DELLINK, rc.NLM_F_REQUEST | rc.NLM_F_ACK, seq, body)


class VxlanLink(NamedTuple):
    """A link as RTM_NEWLINK/RTM_DELLINK describes it; the vxlan fields are set only
    for a vxlan link (``kind``)."""

    ifindex: int
    name: str
    flags: int
    mtu: int
    mac: str
    kind: str
    vni: int | None
    port: int | None
    local: bytes | None
    lower: int
    learning: bool


def _iter_attrs(buf: bytes | memoryview, offset: int, end: int) -> Iterator[tuple[int, int, int]]:
    while offset + 4 <= end:
        alen, atype = _ATTR.unpack_from(buf, offset)
        if alen < 4 or offset + alen > end:
            break
        yield atype & 0x3FFF, offset + 4, offset + alen
        offset += (alen + 3) & ~3


def parse_vxlan_link(buf: bytes | memoryview, header: rc.Header) -> VxlanLink:
    """Decode a link message with its vxlan attributes."""
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(buf, header.start)
    name = mac = kind = ""
    mtu = lower = 0
    vni = port = None
    local = None
    learning = True
    for atype, start, end in _iter_attrs(buf, header.start + _IFINFOMSG.size, header.end):
        if atype == rc.IFLA_IFNAME:
            name = bytes(buf[start:end]).rstrip(b"\0").decode("utf-8", "replace")
        elif atype == rc.IFLA_MTU:
            mtu = _U32.unpack_from(buf, start)[0]
        elif atype == IFLA_ADDRESS:
            mac = mac_text(bytes(buf[start:end]))
        elif atype == IFLA_LINKINFO:
            for itype, istart, iend in _iter_attrs(buf, start, end):
                if itype == IFLA_INFO_KIND:
                    kind = bytes(buf[istart:iend]).rstrip(b"\0").decode("utf-8", "replace")
                elif itype == IFLA_INFO_DATA:
                    for dtype, dstart, dend in _iter_attrs(buf, istart, iend):
                        if dtype == IFLA_VXLAN_ID:
                            vni = _U32.unpack_from(buf, dstart)[0]
                        elif dtype == IFLA_VXLAN_PORT:
                            port = _BE16.unpack_from(buf, dstart)[0]
                        elif dtype in (IFLA_VXLAN_LOCAL, IFLA_VXLAN_LOCAL6):
                            local = bytes(buf[dstart:dend])
                        elif dtype == IFLA_VXLAN_LINK:
                            lower = _U32.unpack_from(buf, dstart)[0]
                        elif dtype == IFLA_VXLAN_LEARNING:
                            learning = bool(buf[dstart])
    if kind != "vxlan":
        vni = port = local = None
        learning = False
    return VxlanLink(index, name, flags, mtu, mac, kind, vni, port, local, lower, learning)


# --- neighbour and FDB entries ----------------------------------------------------------

_PUT = rc.NLM_F_REQUEST | rc.NLM_F_CREATE | rc.NLM_F_REPLACE


def neighbour_put(
    *, seq: int, ifindex: int, address: bytes, mac: str, extra_flags: int = 0
) -> bytes:
    """RTM_NEWNEIGH: a permanent neighbour entry (created or replaced)."""
    family = rc.AF_INET if len(address) == 4 else rc.AF_INET6
    body = b"".join(
        (
            _NDMSG.pack(family, 0, 0, ifindex, NUD_PERMANENT, 0, 0),
            _attr(NDA_DST, address),
            _attr(NDA_LLADDR, mac_bytes(mac)),
        )
    )
    return _message(RTM_NEWNEIGH, _PUT | extra_flags, seq, body)


def neighbour_delete(*, seq: int, ifindex: int, address: bytes, extra_flags: int = 0) -> bytes:
    family = rc.AF_INET if len(address) == 4 else rc.AF_INET6
    body = _NDMSG.pack(family, 0, 0, ifindex, 0, 0, 0) + _attr(NDA_DST, address)
    return _message(RTM_DELNEIGH, rc.NLM_F_REQUEST | extra_flags, seq, body)


def fdb_put(*, seq: int, ifindex: int, mac: str, dst: bytes, extra_flags: int = 0) -> bytes:
    """RTM_NEWNEIGH (AF_BRIDGE, NTF_SELF): a permanent FDB entry of the vxlan device,
    its (first) destination replaced."""
    body = b"".join(
        (
            _NDMSG.pack(AF_BRIDGE, 0, 0, ifindex, NUD_PERMANENT, NTF_SELF, 0),
            _attr(NDA_LLADDR, mac_bytes(mac)),
            _attr(NDA_DST, dst),
        )
    )
    return _message(RTM_NEWNEIGH, _PUT | extra_flags, seq, body)


def fdb_delete(*, seq: int, ifindex: int, mac: str, extra_flags: int = 0) -> bytes:
    """RTM_DELNEIGH (AF_BRIDGE, NTF_SELF) without NDA_DST: the whole entry of ``mac``."""
    body = _NDMSG.pack(AF_BRIDGE, 0, 0, ifindex, 0, NTF_SELF, 0) + _attr(NDA_LLADDR, mac_bytes(mac))
    return _message(RTM_DELNEIGH, rc.NLM_F_REQUEST | extra_flags, seq, body)


def neighbour_dump_request(*, seq: int, family: int, ifindex: int) -> bytes:
    """RTM_GETNEIGH dump of one family on one device (``AF_BRIDGE``: its FDB). Under
    NETLINK_GET_STRICT_CHK the kernel filters by device (NDA_IFINDEX for neighbours,
    ``ndm_ifindex`` for the FDB); the caller filters again."""
    flags = rc.NLM_F_REQUEST | rc.NLM_F_DUMP
    if family == AF_BRIDGE:
        body = _NDMSG.pack(family, 0, 0, ifindex, 0, 0, 0)
    else:
        body = _NDMSG.pack(family, 0, 0, 0, 0, 0, 0) + _attr(NDA_IFINDEX, _U32.pack(ifindex))
    return _message(RTM_GETNEIGH, flags, seq, body)


class NeighbourMessage(NamedTuple):
    family: int
    ifindex: int
    state: int
    flags: int
    dst: bytes | None
    lladdr: bytes | None


def parse_neighbour(buf: bytes | memoryview, header: rc.Header) -> NeighbourMessage:
    """Decode an RTM_NEWNEIGH/RTM_DELNEIGH message."""
    family, _p1, _p2, ifindex, state, flags, _type = _NDMSG.unpack_from(buf, header.start)
    dst = lladdr = None
    for atype, start, end in _iter_attrs(buf, header.start + _NDMSG.size, header.end):
        if atype == NDA_DST:
            dst = bytes(buf[start:end])
        elif atype == NDA_LLADDR:
            lladdr = bytes(buf[start:end])
    return NeighbourMessage(family, ifindex, state, flags, dst, lladdr)


def neighbour_ifindex(buf: bytes | memoryview, header: rc.Header) -> tuple[int, int]:
    """(family, ifindex) of a neighbour message, without decoding attributes."""
    family, _p1, _p2, ifindex, _s, _f, _t = _NDMSG.unpack_from(buf, header.start)
    return family, ifindex
