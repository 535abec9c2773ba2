"""The one kernel listener: our protocol's routes as the kernel holds them, kept current
from its change events, and the monitor that wakes the daemon when one matters.

A ``RouteTracker`` belongs to a ``NetlinkRouteTable`` (``table.track()``) and shares its
lock. It holds the only copy of our installed routes (by destination, with the
interface each goes out of; their number too) and one multicast socket subscribed to
route, address and link events. Events are read under the table's lock: right after
each batch of the table's writes (rtnetlink queues a write's event before it
acknowledges the write, so a batch's own events are all there by then), when the table
is asked for changes, and by ``run``, the monitor loop, which calls ``on_change()`` when
something relevant arrived.

What is relevant: only what can change one of our routes or make a write of ours that
failed succeed now. Precisely (table = our route table; cloned routes are ignored):

1. a route of our protocol added, changed or deleted by someone else: its destination
   changed (our own writes are noted before their events, which then change nothing);
2. another protocol's route at a destination we hold or failed to write: it may take
   that destination from us or free it (a conflict may end); a replace of it also
   removes ours;
3. another protocol's route *added* whose prefix contains the gateway of a write of ours
   that failed: that gateway may be on-link now (an address was added, a link came up),
   so the failed destination counts as changed;
4. an address removed from an interface one of our routes goes out of, unless it is an
   IPv6 link-local address (fe80::/10): the view becomes unknown until the next full
   dump, since IPv4 drops the routes through a device without an event when its last
   address goes;
5. a link one of our routes goes out of deleted or set down: the view becomes unknown
   (IPv4 flushes the routes through a downed device without events);
6. events lost (receive buffer overrun): the view becomes unknown.

Everything else is ignored: other tables, routes of other protocols at destinations we
neither hold nor failed to write (the connected and ``fe80::/64`` routes of a pod's veth,
its host route), addresses on other interfaces (a pod veth's), IPv6 link-local
addresses anywhere, and links our routes do not use. A pod coming or going therefore
wakes nobody.
"""

from __future__ import annotations

import errno
import ipaddress
import select
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from xcluster_cni_lib.core.values import IPNetwork, Route, RouteOutcome
from xcluster_cni_lib.kernel import codec as rc
from xcluster_cni_lib.kernel.channel import (
    RCVBUF_BYTES,
    group_mask,
    grow_receive_buffer,
    open_socket,
)
from xcluster_cni_lib.kernel.dumps import Key, key_network, message_key, route_key
from xcluster_cni_lib.support import jsonlog

log = jsonlog.get_logger(__name__)

#: Route metric the kernel gives a route without RTA_PRIORITY, per family.
DEFAULT_PRIORITY: Final = {4: 0, 6: 1024}
_GROUPS: Final = group_mask(
    rc.RTNLGRP_LINK,
    rc.RTNLGRP_IPV4_IFADDR,
    rc.RTNLGRP_IPV4_ROUTE,
    rc.RTNLGRP_IPV6_IFADDR,
    rc.RTNLGRP_IPV6_ROUTE,
)


class Entry:
    """One route of ours to a destination, as the tracker knows it: metric, packed
    gateway (None without a single gateway), the interface it goes out of (0 while
    unknown) and its ``Route`` value once made (kept, so no dump makes it again)."""

    __slots__ = ("described", "gateway", "multipath", "oif", "priority", "route")

    def __init__(
        self,
        priority: int,
        gateway: bytes | None,
        multipath: bool,
        route: Route | None = None,
        oif: int = 0,
    ) -> None:
        self.priority = priority
        self.gateway = gateway
        self.multipath = multipath
        self.route = route
        self.oif = oif
        #: a ``Route`` describes it (a single gateway): ``routes_to`` and
        #: ``list_routes`` return it, ``RouteTracker.installed`` counts it
        self.described = gateway is not None and not multipath

    def same(self, priority: int, gateway: bytes | None, multipath: bool) -> bool:
        return self.priority == priority and self.gateway == gateway and self.multipath == multipath


def _no_device(oif: int) -> str | None:
    return None


def _route_of(
    dst: IPNetwork, entry: Entry, device_of: Callable[[int], str | None] = _no_device
) -> Route | None:
    if entry.route is not None or entry.gateway is None or entry.multipath:
        return entry.route
    device = device_of(entry.oif) if entry.oif else None
    if dst.version == 4:
        entry.route = Route(dst, ipaddress.IPv4Address(entry.gateway), device=device)
    else:
        entry.route = Route(dst, ipaddress.IPv6Address(entry.gateway), device=device)
    return entry.route


def _same_entries(a: list[Entry] | None, b: list[Entry] | None) -> bool:
    if not a or not b:
        return not a and not b
    return len(a) == len(b) and all(
        any(x.same(y.priority, y.gateway, y.multipath) for y in b) for x in a
    )


def _contains(key: Key, family: int, gateway: bytes) -> bool:
    """Whether the prefix ``key`` contains the packed address ``gateway``."""
    version, packed, length = key
    if version != family or len(packed) != len(gateway):
        return False
    whole, rest = divmod(length, 8)
    if packed[:whole] != gateway[:whole]:
        return False
    if rest == 0:
        return True
    mask = (0xFF << (8 - rest)) & 0xFF
    return packed[whole] & mask == gateway[whole] & mask


class RouteTracker:
    """Our protocol's routes in our table, kept current from the kernel's events, and
    the kernel monitor of the daemon (``run``). Made by ``NetlinkRouteTable.track()``;
    every method but ``run`` and ``close`` expects the table's lock to be held."""

    def __init__(
        self, netns: str | None, *, protocol: int, table: int, lock: threading.Lock
    ) -> None:
        self.sock = open_socket(netns, groups=_GROUPS)
        grow_receive_buffer(self.sock, RCVBUF_BYTES)
        self.sock.setblocking(False)
        self.buf = bytearray(1 << 16)
        self.protocol = protocol
        self.table = table
        self.lock = lock
        self.valid = False  # the view is complete (a dump, then every event since)
        self.lost = False  # it was not, since changes were last taken: report "unknown"
        self.routes: dict[Key, list[Entry]] = {}
        #: how many of ``routes`` a ``Route`` describes, kept with every change of them
        self.installed = 0
        self.changed: set[Key] = set()
        #: destinations whose last write of ours failed -> that write's packed gateway
        self.failed: dict[Key, bytes] = {}
        self.unreported = False  # something relevant happened that ``run`` has not told
        self._oifs: frozenset[int] | None = None  # interfaces our routes use (cached)
        self._backlog: list[bytes] = []  # events read by count_route_events, not applied yet
        self.v6_route_events = 0
        # rtm_table of our routes' messages (a table past 255 travels in RTA_TABLE)
        self._rtm_table = table if table < 256 else rc.RT_TABLE_COMPAT
        self._closed = False
        #: the name of the overlay device with this interface index (the table sets it)
        self.device_of: Callable[[int], str | None] = _no_device

    def close(self) -> None:
        """Close the socket (idempotent; the table and the monitor may both call it)."""
        if not self._closed:
            self._closed = True
            self.sock.close()

    # -- the monitor ---------------------------------------------------------------------

    def run(
        self, on_change: Callable[[], None], stop: threading.Event, *, poll: float = 0.2
    ) -> None:
        """Call ``on_change()`` whenever a relevant change arrived (several read together
        cause one call; so do those read meanwhile by the table's own writes), until
        ``stop`` is set (returns within ``poll`` seconds after)."""
        while not stop.is_set():
            try:
                select.select([self.sock], [], [], poll)
            except (OSError, ValueError):  # closed under us: stopping
                if stop.is_set() or self._closed:
                    return
                raise
            with self.lock:
                if self._closed:
                    return
                self.drain()
                tell, self.unreported = self.unreported, False
            if tell and not stop.is_set():
                on_change()

    # -- reading events ------------------------------------------------------------------

    def drain(self) -> None:
        """Read every queued event (those set aside by ``count_route_events`` first) and
        update the view."""
        backlog, self._backlog = self._backlog, []
        for data in backlog:
            self._process(memoryview(data), len(data))
        view = memoryview(self.buf)
        while True:
            try:
                n = self.sock.recv_into(self.buf)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._lose("events lost (receive buffer overrun)")
                continue
            self._process(view, n)

    def count_route_events(self) -> int:
        """How many IPv6 route events of our table arrived so far (a running count), for
        checking that nothing changed under a dump. Reads the queued events without
        applying them: ``drain`` applies them later, to the view the dump makes."""
        while True:
            try:
                data = self.sock.recv(len(self.buf))
            except BlockingIOError:
                return self.v6_route_events
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._lose("events lost (receive buffer overrun)")
                self.v6_route_events += 1
                continue
            self._backlog.append(data)
            tables = (self._rtm_table, rc.RT_TABLE_COMPAT)
            for header in rc.iter_messages(data, len(data)):
                if header.msg_type in (rc.RTM_NEWROUTE, rc.RTM_DELROUTE):
                    family, rtm_table, _ = rc.route_header(data, header)
                    if family == socket.AF_INET6 and rtm_table in tables:
                        self.v6_route_events += 1

    def _process(self, view: memoryview, n: int) -> None:
        if not self.valid:
            return
        for header in rc.iter_messages(view, n):
            kind = header.msg_type
            if kind in (rc.RTM_NEWROUTE, rc.RTM_DELROUTE):
                self._replay(rc.parse_route(view, header))
            elif kind == rc.RTM_DELADDR:
                self._address_removed(rc.parse_address(view, header))
            elif kind in (rc.RTM_NEWLINK, rc.RTM_DELLINK):
                self._link_changed(kind, rc.parse_link(view, header))
            if not self.valid:
                return

    def _lose(self, reason: str, **fields: object) -> None:
        if self.valid or not self.lost:
            log.debug("tracked routes unknown until the next full list", reason=reason, **fields)
        self.valid = False
        self.lost = True
        self.unreported = True

    def _mark(self, key: Key) -> None:
        self.changed.add(key)
        self.unreported = True

    def _interfaces(self) -> frozenset[int]:
        """Indexes of the interfaces our routes go out of (0 among them: some unknown)."""
        if self._oifs is None:
            self._oifs = frozenset(e.oif for entries in self.routes.values() for e in entries)
        return self._oifs

    def _uses(self, ifindex: int) -> bool:
        oifs = self._interfaces()
        return ifindex in oifs or 0 in oifs

    def _address_removed(self, msg: rc.AddressMessage) -> None:
        address = msg.address or b"\0\0"
        link_local = address[0] == 0xFE and address[1] & 0xC0 == 0x80  # fe80::/10
        if msg.family == socket.AF_INET6 and link_local:
            return
        if self._uses(msg.ifindex):
            self._lose("address removed from an interface our routes use", ifindex=msg.ifindex)

    def _link_changed(self, kind: int, msg: rc.LinkMessage) -> None:
        if (kind == rc.RTM_DELLINK or not msg.flags & rc.IFF_UP) and self._uses(msg.ifindex):
            self._lose("an interface our routes use went down or away", ifindex=msg.ifindex)

    def _replay(self, msg: rc.RouteMessage) -> None:
        if msg.table != self.table or msg.flags & rc.RTM_F_CLONED:
            return
        key = message_key(msg)
        priority = msg.priority or 0
        entries = self.routes.get(key)
        if msg.protocol != self.protocol or msg.route_type != rc.RTN_UNICAST:
            self._replay_other(key, msg, priority, entries)
            return
        if msg.msg_type == rc.RTM_DELROUTE:
            if self._remove(key, priority, msg.gateway):
                self._mark(key)
            return
        if entries is not None:
            for e in entries:
                if e.same(priority, msg.gateway, msg.multipath):
                    if not e.oif and msg.oif:  # the event of our own write: learn its interface
                        e.oif = msg.oif
                        self._oifs = None
                    return
        entry = Entry(priority, msg.gateway, msg.multipath, oif=msg.oif)
        # without NLM_F_REPLACE an append: one more route for this metric
        self._put(key, entry, replacing=bool(msg.nl_flags & rc.NLM_F_REPLACE))
        self._mark(key)

    def _replay_other(
        self, key: Key, msg: rc.RouteMessage, priority: int, entries: list[Entry] | None
    ) -> None:
        """Another protocol's route (or a non-unicast one of ours) changed."""
        if entries or key in self.failed:
            # it may take or free a destination of ours; a replace takes the place of
            # whichever route had its metric, ours included
            self._mark(key)
            if entries and msg.msg_type == rc.RTM_NEWROUTE and msg.nl_flags & rc.NLM_F_REPLACE:
                self._remove(key, priority, None)
        if msg.msg_type == rc.RTM_NEWROUTE and self.failed:
            family = 4 if msg.family == socket.AF_INET else 6
            for dst, gateway in self.failed.items():
                if _contains(key, family, gateway):
                    self._mark(dst)  # its gateway may be reachable now

    def _put(self, key: Key, entry: Entry, *, replacing: bool) -> None:
        """Add ``entry`` to ``key``'s routes; ``replacing``: in place of those of its metric."""
        entries = self.routes.get(key)
        if entries is None:
            self.routes[key] = [entry]
        else:
            if replacing:
                # IPv4 replaces the first route of that metric (an appended second one
                # stays); IPv6 replaces the route with its siblings
                same = [i for i, e in enumerate(entries) if e.priority == entry.priority]
                gone = same[:1] if key[0] == 4 else same
                self.installed -= sum(entries[i].described for i in gone)
                entries[:] = [e for i, e in enumerate(entries) if i not in gone]
            entries.append(entry)
        self.installed += entry.described
        self._oifs = None

    def _remove(self, key: Key, priority: int, gateway: bytes | None) -> bool:
        entries = self.routes.get(key)
        if not entries:
            return False
        kept = [
            e
            for e in entries
            if e.priority != priority or (gateway is not None and e.gateway != gateway)
        ]
        if len(kept) == len(entries):
            return False
        self.installed -= sum(e.described for e in entries) - sum(e.described for e in kept)
        if kept:
            self.routes[key] = kept
        else:
            del self.routes[key]
        self._oifs = None
        return True

    # -- what the table tells it -----------------------------------------------------------

    def known_route(self, key: Key, priority: int, gateway: bytes) -> Route | None:
        """The ``Route`` value already made for this route, if any."""
        for entry in self.routes.get(key, ()):
            if entry.priority == priority and entry.gateway == gateway and not entry.multipath:
                return entry.route
        return None

    def reset(self, routes: dict[Key, list[Entry]]) -> None:
        """Start over from a dump of our routes (``drain`` was called before it).
        Where the dump differs from a valid view, the destinations count as changed,
        so a consumer that did not ask for the dump still learns of them."""
        if self.valid:
            old = self.routes
            for key in old.keys() | routes.keys():
                if not _same_entries(old.get(key), routes.get(key)):
                    self._mark(key)
        self.routes = routes
        self.installed = sum(e.described for entries in routes.values() for e in entries)
        self._oifs = None
        self.failed.clear()  # the writes planned from this dump say again what fails
        self.valid = True
        self.drain()  # what changed while the dump ran

    def note(self, msg_type: int, routes: Sequence[Route], results: Sequence[int]) -> None:
        """Writes that succeeded (errno 0): what the kernel holds now, before their events."""
        for route, err in zip(routes, results, strict=True):
            if err:
                continue
            key = route_key(route)
            priority = DEFAULT_PRIORITY[route.family]
            gateway = route.gateway.packed
            if msg_type == rc.RTM_DELROUTE:
                self._remove(key, priority, gateway)
                continue
            entries = self.routes.get(key)
            if entries is not None and any(e.same(priority, gateway, False) for e in entries):
                continue
            made = Route(route.dst, route.gateway, device=route.device)
            self._put(key, Entry(priority, gateway, False, made), replacing=True)

    def note_outcomes(self, outcomes: Iterable[RouteOutcome]) -> None:
        """Remember which destinations a write of ours failed for (in order: the last
        outcome for a destination wins), and forget those that succeeded."""
        for o in outcomes:
            key = route_key(o.route)
            if o.ok:
                self.failed.pop(key, None)
            elif o.op != "delete":
                self.failed[key] = o.route.gateway.packed

    # -- what the consumer asks --------------------------------------------------------

    def take_changed(self) -> set[IPNetwork] | None:
        """The destinations changed since the last call; None when unknown (a dump is
        needed). What it returns need not be told by ``run`` any more."""
        self.drain()
        changed, self.changed = self.changed, set()
        self.unreported = False
        if self.lost or not self.valid:
            self.lost = False
            return None
        return {key_network(k) for k in changed}

    def routes_to(self, dsts: Iterable[IPNetwork]) -> list[Route]:
        out: list[Route] = []
        for dst in dsts:
            key = (dst.version, dst.network_address.packed, dst.prefixlen)
            for entry in self.routes.get(key, ()):
                route = _route_of(dst, entry, self.device_of)
                if route is not None:
                    out.append(route)
        return out
