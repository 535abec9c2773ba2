"""A small rtnetlink codec built on ``struct``: route, address and link messages.

This is the hot path of the route table (``routetable``): encoding thousands of
RTM_NEWROUTE messages into one buffer, and decoding route dumps and acknowledgements,
costs a few microseconds per route here (a generic marshaller costs tens). It does no
I/O and imports neither ``pyroute2`` nor anything outside the standard library; the
socket lives in ``channel``.

Layouts (all host byte order, attributes 4-byte aligned), from ``linux/netlink.h`` and
``linux/rtnetlink.h``::

    nlmsghdr  u32 len, u16 type, u16 flags, u32 seq, u32 pid             16 bytes
    rtmsg     u8 family, dst_len, src_len, tos, table, protocol, scope,
              type, u32 flags                                             12 bytes
    ifaddrmsg u8 family, prefixlen, flags, scope, u32 index               8 bytes
    ifinfomsg u8 family, pad, u16 type, i32 index, u32 flags, u32 change  16 bytes
    rtattr    u16 len, u16 type, payload
    nlmsgerr  i32 error, nlmsghdr of the request (+ payload unless capped), ext-ack TLVs
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator, Sequence
from typing import Final, NamedTuple

from xcluster_cni_lib.core.values import IPNetwork, Route

# --- netlink ---------------------------------------------------------------------------
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in NLMSG_ERROR: the request's payload was left out
NLM_F_ACK_TLVS = 0x200  # in NLMSG_ERROR: extended-ack attributes follow

NLMSGERR_ATTR_MSG = 1

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12

# --- rtnetlink message types -----------------------------------------------------------
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26

# multicast groups (numbers; the bind() mask bit is 1 << (group - 1))
RTNLGRP_LINK = 1
RTNLGRP_IPV4_IFADDR = 5
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV6_IFADDR = 9
RTNLGRP_IPV6_ROUTE = 11

# route attributes, types, scopes
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_MULTIPATH = 9
RTA_TABLE = 15
RTA_VIA = 18
RTNH_F_ONLINK = 4  # rtm_flags: the gateway is on the link named by RTA_OIF, no lookup

RTN_UNSPEC = 0
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_NOWHERE = 255
RT_TABLE_COMPAT = 252
RT_TABLE_MAIN = 254
RTM_F_CLONED = 0x200
RTM_F_LOOKUP_TABLE = 0x1000  # RTM_GETROUTE: the answer names the table that matched
RTM_F_FIB_MATCH = 0x2000  # RTM_GETROUTE: answer with the matching route, not a dst entry

# link flags (ifinfomsg.ifi_flags)
IFF_UP = 0x1

# address and link attributes
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFLA_IFNAME = 3
IFLA_MTU = 4

AF_INET: Final = int(socket.AF_INET)
AF_INET6: Final = int(socket.AF_INET6)

_HDR = struct.Struct("=IHHII")
_ERR = struct.Struct("=i")
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_FLAGS = struct.Struct("=H")
_RTMSG = struct.Struct("=BBBBBBBBI")
_IFADDRMSG = struct.Struct("=BBBBI")
_IFINFOMSG = struct.Struct("=BxHiII")
_HDR_RTMSG = struct.Struct("=IHHIIBBBBBBBBI")  # nlmsghdr + rtmsg, 28 bytes

HDR_LEN = _HDR.size


def _route_struct(addr_len: int, *, gateway: bool, oif: bool = False) -> struct.Struct:
    # nlmsghdr, rtmsg, RTA_TABLE(u32), RTA_DST(addr) [, RTA_GATEWAY(addr)] [, RTA_OIF(u32)]
    fmt = f"=IHHII BBBBBBBBI HHI HH{addr_len}s"
    if gateway:
        fmt += f" HH{addr_len}s"
    if oif:
        fmt += " HHI"
    return struct.Struct(fmt.replace(" ", ""))


_ROUTE_GW = {AF_INET: _route_struct(4, gateway=True), AF_INET6: _route_struct(16, gateway=True)}
_ROUTE_NOGW = {AF_INET: _route_struct(4, gateway=False), AF_INET6: _route_struct(16, gateway=False)}
_ROUTE_GW_OIF = {
    AF_INET: _route_struct(4, gateway=True, oif=True),
    AF_INET6: _route_struct(16, gateway=True, oif=True),
}


def route_message_size(family: int, *, gateway: bool) -> int:
    """The encoded size of one route message made by ``encode_routes``."""
    return (_ROUTE_GW if gateway else _ROUTE_NOGW)[family].size


def encode_routes(
    out: bytearray,
    routes: Sequence[Route],
    start: int,
    stop: int,
    *,
    msg_type: int,
    flags: int,
    last_flags: int = 0,
    seq: int,
    table: int,
    protocol: int,
    gateway: bool,
    scope: int = RT_SCOPE_UNIVERSE,
    route_type: int = RTN_UNICAST,
    oif: int = 0,
) -> tuple[int, int]:
    """Encode route messages for ``routes[start:stop]`` into ``out`` until it is full, the
    i-th with sequence number ``seq + i`` and ``flags`` (``last_flags`` added to the last
    one); return (routes encoded, bytes used). ``oif`` (with ``gateway``): every route
    goes out of that interface, its gateway on-link (the vxlan overlay's routes).

    The hot loop of a route install: one ``pack_into`` per route.
    """
    table_byte = table if table < 256 else RT_TABLE_COMPAT
    if oif and gateway:
        return _encode_onlink(
            out, routes, start, stop, msg_type=msg_type, flags=flags, last_flags=last_flags,
            seq=seq, table=table, protocol=protocol, scope=scope, route_type=route_type,
            oif=oif,
        )  # fmt: skip
    structs = _ROUTE_GW if gateway else _ROUTE_NOGW
    st4, st6 = structs[AF_INET], structs[AF_INET6]
    size4, size6 = st4.size, st6.size
    limit = len(out)
    offset = 0
    index = start
    last = 0
    end = min(stop, len(routes))
    while index < end:
        route = routes[index]
        dst = route.dst
        if dst.version == 4:
            st, size, family, alen = st4, size4, AF_INET, 8
        else:
            st, size, family, alen = st6, size6, AF_INET6, 20
        if offset + size > limit:
            break
        if gateway:
            st.pack_into(
                out, offset, size, msg_type, flags, seq + index - start, 0,
                family, dst.prefixlen, 0, 0, table_byte, protocol, scope, route_type, 0,
                8, RTA_TABLE, table,
                alen, RTA_DST, dst.network_address.packed,
                alen, RTA_GATEWAY, route.gateway.packed,
            )  # fmt: skip
        else:
            st.pack_into(
                out, offset, size, msg_type, flags, seq + index - start, 0,
                family, dst.prefixlen, 0, 0, table_byte, protocol, scope, route_type, 0,
                8, RTA_TABLE, table,
                alen, RTA_DST, dst.network_address.packed,
            )  # fmt: skip
        last = offset
        offset += size
        index += 1
    if last_flags and index > start:
        _FLAGS.pack_into(out, last + 6, flags | last_flags)
    return index - start, offset


def _encode_onlink(
    out: bytearray,
    routes: Sequence[Route],
    start: int,
    stop: int,
    *,
    msg_type: int,
    flags: int,
    last_flags: int,
    seq: int,
    table: int,
    protocol: int,
    scope: int,
    route_type: int,
    oif: int,
) -> tuple[int, int]:
    """``encode_routes`` for routes via an on-link gateway out of interface ``oif``."""
    table_byte = table if table < 256 else RT_TABLE_COMPAT
    limit = len(out)
    offset = last = 0
    index = start
    end = min(stop, len(routes))
    while index < end:
        route = routes[index]
        dst = route.dst
        if dst.version == 4:
            family, alen = AF_INET, 8
        else:
            family, alen = AF_INET6, 20
        st = _ROUTE_GW_OIF[family]
        if offset + st.size > limit:
            break
        st.pack_into(
            out, offset, st.size, msg_type, flags, seq + index - start, 0,
            family, dst.prefixlen, 0, 0, table_byte, protocol, scope, route_type,
            RTNH_F_ONLINK,
            8, RTA_TABLE, table,
            alen, RTA_DST, dst.network_address.packed,
            alen, RTA_GATEWAY, route.gateway.packed,
            8, RTA_OIF, oif,
        )  # fmt: skip
        last = offset
        offset += st.size
        index += 1
    if last_flags and index > start:
        _FLAGS.pack_into(out, last + 6, flags | last_flags)
    return index - start, offset


_LOOKUP = {
    AF_INET: struct.Struct("=IHHII BBBBBBBBI HH4s".replace(" ", "")),
    AF_INET6: struct.Struct("=IHHII BBBBBBBBI HH16s".replace(" ", "")),
}


def encode_lookups(
    out: bytearray,
    dsts: Sequence[IPNetwork],
    *,
    flags: int,
    last_flags: int = 0,
    seq: int,
) -> tuple[int, int]:
    """Encode one RTM_GETROUTE lookup per destination (``dsts`` all, or as many as fit
    in ``out``), the i-th with sequence number ``seq + i``: "which route matches the
    destination's network address" (RTM_F_FIB_MATCH), answered with that route (prefix,
    table, protocol, gateway, metric) or an error when nothing matches. The lookup
    follows the policy rules; the answer names the table it came from (for IPv4 thanks to
    RTM_F_LOOKUP_TABLE). Valid under NETLINK_GET_STRICT_CHK. Returns (routes encoded,
    bytes used)."""
    limit = len(out)
    offset = last = index = 0
    st4, st6 = _LOOKUP[AF_INET], _LOOKUP[AF_INET6]
    for dst in dsts:
        if dst.version == 4:
            st, family, bits, alen = st4, AF_INET, 32, 8
            rflags = RTM_F_FIB_MATCH | RTM_F_LOOKUP_TABLE
        else:
            st, family, bits, alen, rflags = st6, AF_INET6, 128, 20, RTM_F_FIB_MATCH
        size = st.size
        if offset + size > limit:
            break
        st.pack_into(
            out, offset, size, RTM_GETROUTE, flags, seq + index, 0,
            family, bits, 0, 0, 0, 0, 0, 0, rflags,
            alen, RTA_DST, dst.network_address.packed,
        )  # fmt: skip
        last = offset
        offset += size
        index += 1
    if last_flags and index:
        _FLAGS.pack_into(out, last + 6, flags | last_flags)
    return index, offset


def route_dump_request(*, seq: int, family: int, table: int, protocol: int) -> bytes:
    """An RTM_GETROUTE dump request; with NETLINK_GET_STRICT_CHK set on the socket the
    kernel returns only routes of ``table`` and (unless 0) ``protocol``."""
    table_byte = table if table < 256 else RT_TABLE_COMPAT
    body = _RTMSG.pack(family, 0, 0, 0, table_byte, protocol, 0, 0, 0)
    attr = _ATTR.pack(8, RTA_TABLE) + _U32.pack(table)
    length = HDR_LEN + len(body) + len(attr)
    return _HDR.pack(length, RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body + attr


def simple_dump_request(*, msg_type: int, seq: int, family: int = 0) -> bytes:
    """An RTM_GETLINK / RTM_GETADDR dump request of all links or addresses."""
    if msg_type == RTM_GETLINK:
        body = _IFINFOMSG.pack(family, 0, 0, 0, 0)
    else:
        body = _IFADDRMSG.pack(family, 0, 0, 0, 0)
    return _HDR.pack(HDR_LEN + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


class Header(NamedTuple):
    """One netlink message within a buffer: its header and where its payload lies."""

    msg_type: int
    flags: int
    seq: int
    start: int  # offset of the payload (after the nlmsghdr)
    end: int  # offset just past the message


def iter_messages(buf: bytes | bytearray | memoryview, length: int) -> Iterator[Header]:
    """The messages in the first ``length`` bytes of a received buffer."""
    offset = 0
    unpack = _HDR.unpack_from
    while offset + HDR_LEN <= length:
        msg_len, msg_type, flags, seq, _pid = unpack(buf, offset)
        if msg_len < HDR_LEN or offset + msg_len > length:
            break
        yield Header(msg_type, flags, seq, offset + HDR_LEN, offset + msg_len)
        offset += (msg_len + 3) & ~3


class Ack(NamedTuple):
    """A decoded NLMSG_ERROR: ``error`` is 0 for success or a positive errno."""

    seq: int
    error: int
    message: str  # the kernel's extended-ack text, "" if none


def parse_ack(buf: bytes | bytearray | memoryview, header: Header) -> Ack:
    """Decode an NLMSG_ERROR message (an acknowledgement or an error)."""
    (err,) = _ERR.unpack_from(buf, header.start)
    message = ""
    if header.flags & NLM_F_ACK_TLVS:
        # the request's header (and its payload unless capped) precede the TLVs
        req_len = _HDR.unpack_from(buf, header.start + 4)[0]
        offset = header.start + 4 + (HDR_LEN if header.flags & NLM_F_CAPPED else req_len)
        offset = (offset + 3) & ~3
        for atype, start, end in _iter_attrs(buf, offset, header.end):
            if atype == NLMSGERR_ATTR_MSG:
                message = bytes(buf[start:end]).rstrip(b"\0").decode("utf-8", "replace")
    # the kernel answers with the sequence number of the request
    return Ack(header.seq, -err, message)


def _iter_attrs(
    buf: bytes | bytearray | memoryview, offset: int, end: int
) -> Iterator[tuple[int, int, int]]:
    unpack = _ATTR.unpack_from
    while offset + 4 <= end:
        alen, atype = unpack(buf, offset)
        if alen < 4 or offset + alen > end:
            break
        yield atype & 0x3FFF, offset + 4, offset + alen
        offset += (alen + 3) & ~3


class RouteMessage(NamedTuple):
    """The fields of a route message that this project uses (addresses packed)."""

    msg_type: int
    family: int
    dst_len: int
    table: int
    protocol: int
    route_type: int
    flags: int
    dst: bytes | None
    gateway: bytes | None
    priority: int | None
    multipath: bool
    nl_flags: int = 0  # the netlink header's flags (NLM_F_REPLACE in a change event)
    oif: int = 0  # RTA_OIF: the interface index the route goes out of (0: none, multipath)


def parse_route(buf: bytes | bytearray | memoryview, header: Header) -> RouteMessage:
    """Decode an RTM_NEWROUTE/RTM_DELROUTE message."""
    family, dst_len, _src, _tos, table, protocol, _scope, rtype, rflags = _RTMSG.unpack_from(
        buf, header.start
    )
    dst = gateway = None
    priority = None
    multipath = False
    oif = 0
    offset = header.start + _RTMSG.size
    end = header.end
    unpack = _ATTR.unpack_from
    while offset + 4 <= end:
        alen, atype = unpack(buf, offset)
        if alen < 4 or offset + alen > end:
            break
        if atype == RTA_DST:
            dst = bytes(buf[offset + 4 : offset + alen])
        elif atype == RTA_GATEWAY:
            gateway = bytes(buf[offset + 4 : offset + alen])
        elif atype == RTA_TABLE:
            table = _U32.unpack_from(buf, offset + 4)[0]
        elif atype == RTA_PRIORITY:
            priority = _U32.unpack_from(buf, offset + 4)[0]
        elif atype == RTA_OIF:
            oif = _U32.unpack_from(buf, offset + 4)[0]
        elif atype in (RTA_MULTIPATH, RTA_VIA):
            multipath = True
        offset += (alen + 3) & ~3
    return RouteMessage(
        header.msg_type,
        family,
        dst_len,
        table,
        protocol,
        rtype,
        rflags,
        dst,
        gateway,
        priority,
        multipath,
        header.flags,
        oif,
    )


def route_header(buf: bytes | bytearray | memoryview, header: Header) -> tuple[int, int, int]:
    """(family, rtm_table, protocol) of a route message, without decoding attributes."""
    family, _dl, _sl, _tos, table, protocol, _sc, _ty, _fl = _RTMSG.unpack_from(buf, header.start)
    return family, table, protocol


class AddressMessage(NamedTuple):
    family: int
    prefixlen: int
    ifindex: int
    address: bytes | None  # IFA_LOCAL if present (the own address on p2p links), else IFA_ADDRESS


def parse_address(buf: bytes | bytearray | memoryview, header: Header) -> AddressMessage:
    """Decode an RTM_NEWADDR/RTM_DELADDR message."""
    family, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(buf, header.start)
    local = address = None
    for atype, start, end in _iter_attrs(buf, header.start + _IFADDRMSG.size, header.end):
        if atype == IFA_LOCAL:
            local = bytes(buf[start:end])
        elif atype == IFA_ADDRESS:
            address = bytes(buf[start:end])
    return AddressMessage(family, prefixlen, index, local if local is not None else address)


class LinkMessage(NamedTuple):
    ifindex: int
    name: str
    mtu: int
    flags: int


def parse_link(buf: bytes | bytearray | memoryview, header: Header) -> LinkMessage:
    """Decode an RTM_NEWLINK/RTM_DELLINK message."""
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(buf, header.start)
    name = ""
    mtu = 0
    for atype, start, end in _iter_attrs(buf, header.start + _IFINFOMSG.size, header.end):
        if atype == IFLA_IFNAME:
            name = bytes(buf[start:end]).rstrip(b"\0").decode("utf-8", "replace")
        elif atype == IFLA_MTU:
            mtu = _U32.unpack_from(buf, start)[0]
    return LinkMessage(index, name, mtu, flags)
