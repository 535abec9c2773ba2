"""Route dumps: one route table's routes (of one protocol, or all), each route once, and
a read-only listing of any protocol's routes.

An IPv4 dump that a concurrent change disturbs is flagged by the kernel
(``NLM_F_DUMP_INTR``) and taken again. An IPv6 dump is not flagged: when the table
changes between two parts of a multi-part dump (any protocol's route, e.g. a second
instance's), the kernel restarts its walk from the root and skips as many tree nodes as
it had walked, so nodes ahead of the resume point that were removed make it *miss*
routes, and nodes added there make it *repeat* some. The resume points fall on the same
routes in every dump, so two dumps disturbed alike miss the same routes: comparing dumps
cannot tell a disturbed one. Hence, for IPv6 (``dump_routes``):

- the parts of a dump are read back to back (``Channel.dump``), which leaves a
  concurrent change little time to fall between two of them;
- every dump is de-duplicated;
- a dump is exact when no IPv6 route event of the table arrived while it ran (counted
  by ``events``: the table's tracker, or a ``RouteEventWatch``); else it is taken again,
  at most ``V6_DUMP_TRIES`` times;
- under unending churn (no dump clean) the *union* of the dumps is returned: a
  disturbed dump repeats or misses routes but never shows one that was not in the table
  during the listing. A route of ours deleted during that listing may then still be
  listed; its deletion is a change event, which a tracking table reports, so the next
  reconcile corrects it.
- the union can still miss a route that every dump missed (the dumps resume at the same
  places, and a churn in step with them disturbs each alike). The caller names the
  routes it expects (``expected``: its tracked view, or what it listed and wrote last);
  each of them absent from the union is asked for on its own (one RTM_GETROUTE lookup
  per route, many per send), which a concurrent change cannot make skip.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Collection, Sequence
from typing import Final, NamedTuple

from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.core.values import IPAddress, IPNetwork, Route
from xcluster_cni_lib.kernel import codec as rc
from xcluster_cni_lib.kernel.channel import (
    BATCH_BYTES,
    Channel,
    NetlinkError,
    group_mask,
    grow_receive_buffer,
    open_socket,
)
from xcluster_cni_lib.support import jsonlog

log = jsonlog.get_logger(__name__)

#: Most IPv6 dumps taken in one listing while they keep disagreeing.
V6_DUMP_TRIES: Final = 8
#: Most IPv4 dumps taken while the kernel flags them as interrupted.
_INTERRUPTED_TRIES: Final = 5

Key = tuple[int, bytes, int]  # family (4/6), packed destination, prefix length


class Held(NamedTuple):
    """A route found in the table (any protocol) for a destination."""

    protocol: int
    priority: int
    gateway: IPAddress | None


def route_key(route: Route) -> Key:
    dst = route.dst
    return dst.version, dst.network_address.packed, dst.prefixlen


def message_key(msg: rc.RouteMessage) -> Key:
    if msg.family == socket.AF_INET:
        return 4, msg.dst or bytes(4), msg.dst_len
    return 6, msg.dst or bytes(16), msg.dst_len


def key_network(key: Key) -> IPNetwork:
    version, packed, length = key
    if version == 4:
        return ipaddress.IPv4Network((packed, length))
    return ipaddress.IPv6Network((packed, length))


def packed_address(family: int, packed: bytes) -> IPAddress:
    if family == socket.AF_INET:
        return ipaddress.IPv4Address(packed)
    return ipaddress.IPv6Address(packed)


def _identity(msg: rc.RouteMessage) -> tuple[object, ...]:
    return (message_key(msg), msg.priority or 0, msg.protocol, msg.gateway, msg.multipath)


_Seen = dict[tuple[object, ...], rc.RouteMessage]  # route identity -> its first message


def _merge(into: _Seen, messages: list[rc.RouteMessage]) -> None:
    for msg in messages:
        into.setdefault(_identity(msg), msg)


#: A running count of the IPv6 route events of a table seen so far.
RouteEvents = Callable[[], int]


class RouteEventWatch:
    """Counts the IPv6 route events of one table, for a table that does not track (a
    tracking table's ``RouteTracker`` counts them itself): ``watch()`` is the count."""

    def __init__(self, netns: str | None, *, table: int) -> None:
        self.sock = open_socket(netns, groups=group_mask(rc.RTNLGRP_IPV6_ROUTE))
        grow_receive_buffer(self.sock, 1 << 20)
        self.sock.setblocking(False)
        self._rtm_table = table if table < 256 else rc.RT_TABLE_COMPAT
        self._count = 0

    def __call__(self) -> int:
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return self._count
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._count += 1  # events were lost: something changed
                continue
            tables = (self._rtm_table, rc.RT_TABLE_COMPAT)
            for header in rc.iter_messages(data, len(data)):
                is_route = header.msg_type in (rc.RTM_NEWROUTE, rc.RTM_DELROUTE)
                if is_route and rc.route_header(data, header)[1] in tables:
                    self._count += 1

    def close(self) -> None:
        self.sock.close()


def dump_routes(
    chan: Channel,
    family: int,
    *,
    table: int,
    protocol: int,
    events: RouteEvents,
    expected: Collection[Key] = (),
) -> list[rc.RouteMessage]:
    """Unicast route messages of ``table`` (and of ``protocol`` unless 0), each route
    once; for IPv6, exact unless the table never stops changing, and then still
    showing every route of ``expected`` that is there (see the module)."""
    first: _Seen = {}
    if family != socket.AF_INET6:
        _merge(first, _dump_once(chan, family, table=table, protocol=protocol))
        return list(first.values())
    union: _Seen = {}
    for _ in range(V6_DUMP_TRIES):
        mark = events()
        messages = _dump_once(chan, family, table=table, protocol=protocol)
        if events() == mark:
            clean: _Seen = {}
            _merge(clean, messages)
            return list(clean.values())
        _merge(union, messages)
    shown = {message_key(msg) for msg in union.values()}
    missed = [key_network(k) for k in expected if k[0] == 6 and k not in shown]
    found = 0
    for dst, (reply, _) in zip(missed, look_up(chan, missed), strict=True):
        if reply is not None and _holds(reply, dst, table=table, protocol=protocol):
            _merge(union, [reply])
            found += 1
    log.debug(
        "ipv6 table kept changing under every dump; listing the union of the dumps",
        dumps=V6_DUMP_TRIES,
        table=table,
        protocol=protocol,
        routes=len(union),
        looked_up=len(missed),
        found_by_lookup=found,
    )
    return list(union.values())


def _holds(reply: rc.RouteMessage, dst: IPNetwork, *, table: int, protocol: int) -> bool:
    """The lookup's answer is a route of ``table`` (and ``protocol``) at exactly ``dst``."""
    return (
        reply.table == table
        and reply.dst_len == dst.prefixlen
        and (reply.dst or bytes(len(dst.network_address.packed))) == dst.network_address.packed
        and (protocol == 0 or reply.protocol == protocol)
        and reply.route_type == rc.RTN_UNICAST
    )


def look_up(chan: Channel, dsts: Sequence[IPNetwork]) -> list[tuple[rc.RouteMessage | None, int]]:
    """Which route matches each destination's network address (the lookup follows the
    policy rules): (the route, 0), or (None, errno). One RTM_GETROUTE per destination,
    many per ``send``."""
    out = bytearray(BATCH_BYTES)
    answers: list[tuple[rc.RouteMessage | None, int]] = []
    start = 0
    while start < len(dsts):
        chunk = dsts[start : start + chan.batch_messages]
        base = chan.next_seq(len(chunk))
        count, length = rc.encode_lookups(
            out, chunk, flags=rc.NLM_F_REQUEST, last_flags=rc.NLM_F_ACK, seq=base
        )
        replies: dict[int, rc.RouteMessage] = {}
        results = chan.exchange(out, length, base, count, replies=replies)
        answers.extend((replies.get(i), results[i][0]) for i in range(count))
        start += count
    return answers


def _dump_once(chan: Channel, family: int, *, table: int, protocol: int) -> list[rc.RouteMessage]:
    """One dump; taken again when the kernel flags it as interrupted."""
    for attempt in range(_INTERRUPTED_TRIES):
        seq = chan.next_seq()
        request = rc.route_dump_request(seq=seq, family=family, table=table, protocol=protocol)
        messages: list[rc.RouteMessage] = []
        try:
            for view, header in chan.dump(request, seq):
                if header.msg_type != rc.RTM_NEWROUTE:
                    continue
                msg = rc.parse_route(view, header)
                if (
                    msg.table == table
                    and (protocol == 0 or msg.protocol == protocol)
                    and msg.route_type == rc.RTN_UNICAST
                    and not msg.flags & rc.RTM_F_CLONED
                ):
                    messages.append(msg)
        except NetlinkError as exc:
            if exc.errno == errno.EAGAIN and attempt < _INTERRUPTED_TRIES - 1:
                continue
            raise
        return messages
    raise AssertionError("unreachable")  # pragma: no cover


def holders(chan: Channel, *, table: int, events: RouteEvents) -> dict[Key, list[Held]]:
    """Every unicast route of ``table`` (any protocol), by destination."""
    held: dict[Key, list[Held]] = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in dump_routes(chan, family, table=table, protocol=0, events=events):
            priority = msg.priority if msg.priority is not None else 0
            gateway = packed_address(family, msg.gateway) if msg.gateway else None
            held.setdefault(message_key(msg), []).append(Held(msg.protocol, priority, gateway))
    return held


def as_route(family: int, msg: rc.RouteMessage, device: str | None = None) -> Route | None:
    """The ``Route`` value of a route message (``device``: the overlay device it goes
    out of); None for a route without a single gateway (multipath, or none), which a
    ``Route`` cannot describe."""
    if msg.gateway is None or msg.multipath:
        return None
    if family == socket.AF_INET:
        return Route(
            ipaddress.IPv4Network((msg.dst or bytes(4), msg.dst_len)),
            ipaddress.IPv4Address(msg.gateway),
            device=device,
        )
    return Route(
        ipaddress.IPv6Network((msg.dst or bytes(16), msg.dst_len)),
        ipaddress.IPv6Address(msg.gateway),
        device=device,
    )


def list_protocol_routes(
    protocol: int, *, netns: str | None = None, table: int = rc.RT_TABLE_MAIN
) -> list[Route]:
    """The routes of ``protocol`` (1-255, the kernel's own included: this only reads) in
    ``table``, both families, as ``Route`` values; routes without a single gateway are
    left out. To own routes (list *and* write them) use ``NetlinkRouteTable``, which
    refuses the kernel's protocols."""
    if not 1 <= protocol <= 255:  # 0 would list every protocol's routes
        raise InputError(f"route protocol must be between 1 and 255, got {protocol}")
    chan = Channel(netns)
    watch = RouteEventWatch(netns, table=table)
    try:
        out: list[Route] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            messages = dump_routes(chan, family, table=table, protocol=protocol, events=watch)
            for msg in messages:
                route = as_route(family, msg)
                if route is not None:
                    out.append(route)
        return out
    finally:
        watch.close()
        chan.close()
