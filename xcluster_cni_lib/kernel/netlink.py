"""The kernel adapter: route tables, route change events and interface addresses.

The only module that imports ``pyroute2``. It uses pyroute2 to enter a named network
namespace (``pyroute2.netns.setns``) when opening a socket; everything on the wire goes
through a plain ``AF_NETLINK`` socket with the ``struct`` codec of ``rtnl_codec``, because
a route table must encode ~10,000 messages per batch and decode dumps of the same size,
and a generic marshaller costs an order of magnitude more per message.

Entering a namespace is done in a short-lived helper thread: ``setns(2)`` only moves the
calling thread, a socket stays in the namespace it was created in, and the thread ends
right after, so nothing else in the process ever runs in the wrong namespace (no fork,
unlike ``pyroute2.netns.create_socket``, which matters in a multi-threaded daemon).

Nothing netlink-shaped leaves this module: callers get ``Route``, ``RouteOutcome`` and
``InterfaceAddress`` values.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Final, NamedTuple

from xcluster_cni_lib.core.values import (
    InterfaceAddress,
    IPAddress,
    IPNetwork,
    Plan,
    Route,
    RouteOutcome,
)
from xcluster_cni_lib.kernel import codec as rc

log = logging.getLogger(__name__)

NETLINK_ROUTE: Final = 0
SO_RCVBUFFORCE: Final = 33
SO_SNDBUFFORCE: Final = 32

#: Upper bounds of one batch (one ``send``): bytes of requests and number of messages.
BATCH_BYTES: Final = 64 * 1024
BATCH_MESSAGES: Final = 1024
#: Receive buffer asked for; every acknowledgement occupies ~1 KiB of it until read.
RCVBUF_BYTES: Final = 4 * 1024 * 1024
#: How long to wait for the acknowledgements of one batch before giving up on them.
ACK_TIMEOUT: Final = 10.0

#: Route metric the kernel gives a route without RTA_PRIORITY, per family.
_DEFAULT_PRIORITY: Final = {4: 0, 6: 1024}
_FAMILY: Final = {4: socket.AF_INET, 6: socket.AF_INET6}
_UNREACHABLE: Final = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN})
_RT_PROTOS_FILES: Final = ("/etc/iproute2/rt_protos", "/usr/share/iproute2/rt_protos")
_KERNEL_PROTOS: Final = {1: "redirect", 2: "kernel", 3: "boot", 4: "static"}


class NetlinkError(OSError):
    """A netlink request as a whole failed (not a single route of a batch)."""


# --- sockets ---------------------------------------------------------------------------


def _new_socket(groups: int) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


def open_socket(netns: str | None = None, *, groups: int = 0) -> socket.socket:
    """A NETLINK_ROUTE socket in namespace ``netns`` (a name under /var/run/netns or a
    path), subscribed to the multicast ``groups`` mask. The namespace must exist."""
    if netns is None:
        return _new_socket(groups)
    # imported here: pyroute2 costs ~0.1 s to import and is only needed to enter a namespace
    from pyroute2 import netns as pyroute2_netns

    result: list[socket.socket] = []
    failure: list[BaseException] = []

    def enter_and_open() -> None:
        try:
            # flags=0: never create the namespace, only enter it
            pyroute2_netns.setns(netns, flags=0)
            result.append(_new_socket(groups))
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    helper = threading.Thread(target=enter_and_open, name=f"netns-socket-{netns}", daemon=True)
    helper.start()
    helper.join()
    if failure:
        exc = failure[0]
        if isinstance(exc, FileNotFoundError):
            raise NetlinkError(errno.ENOENT, f"network namespace {netns!r} does not exist")
        raise NetlinkError(
            getattr(exc, "errno", None) or errno.EIO,
            f"cannot open a netlink socket in network namespace {netns!r}: {exc}",
        ) from exc
    return result[0]


def _set_option(sock: socket.socket, level: int, option: int, value: int) -> bool:
    try:
        sock.setsockopt(level, option, value)
    except OSError:
        return False
    return True


def _configure_request_socket(sock: socket.socket) -> None:
    # Kernel error text with each error, acks without the echoed request, filtered dumps.
    _set_option(sock, rc.SOL_NETLINK, rc.NETLINK_EXT_ACK, 1)
    _set_option(sock, rc.SOL_NETLINK, rc.NETLINK_CAP_ACK, 1)
    _set_option(sock, rc.SOL_NETLINK, rc.NETLINK_GET_STRICT_CHK, 1)
    if not _set_option(sock, socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES):
        _set_option(sock, socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
    if not _set_option(sock, socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 * BATCH_BYTES):
        _set_option(sock, socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * BATCH_BYTES)


class _Channel:
    """A request socket with a sequence counter, a receive buffer and dump support."""

    def __init__(self, netns: str | None) -> None:
        self.sock = open_socket(netns)
        _configure_request_socket(self.sock)
        self.sock.settimeout(ACK_TIMEOUT)
        self.buf = bytearray(1 << 20)
        self._seq = int.from_bytes(os.urandom(2), "big") << 8
        rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        # keep the acks of one batch well inside the receive buffer (~1 KiB each)
        self.batch_messages = max(16, min(BATCH_MESSAGES, rcvbuf // 2048))

    def next_seq(self, count: int = 1) -> int:
        seq = self._seq
        self._seq = (seq + count) & 0xFFFFFFFF
        if self._seq < seq:  # wrapped: never hand out a range crossing zero
            self._seq = count
            seq = 1
        return seq

    def close(self) -> None:
        self.sock.close()

    def dump(self, request: bytes, seq: int) -> Iterator[tuple[memoryview, rc.Header]]:
        """Send a dump request and yield its messages until NLMSG_DONE.

        The buffer is reused: decode each message before asking for the next.
        Raises NetlinkError on an error answer or an interrupted dump (the caller retries).
        """
        self.sock.send(request)
        view = memoryview(self.buf)
        interrupted = False
        while True:
            n = self.sock.recv_into(self.buf)
            for header in rc.iter_messages(view, n):
                if header.seq != seq:
                    continue  # a late answer to an earlier request
                if header.msg_type == rc.NLMSG_DONE:
                    if interrupted:
                        raise NetlinkError(errno.EAGAIN, "dump interrupted by concurrent changes")
                    return
                if header.msg_type == rc.NLMSG_ERROR:
                    ack = rc.parse_ack(view, header)
                    if ack.error:
                        raise NetlinkError(ack.error, ack.message or os.strerror(ack.error))
                    continue
                if header.flags & 0x10:  # NLM_F_DUMP_INTR
                    interrupted = True
                yield view, header


# --- route table -----------------------------------------------------------------------


class _Held(NamedTuple):
    """A route found in the table (any protocol) for a destination."""

    protocol: int
    priority: int
    gateway: IPAddress | None


#: A lookup's verdict when it cannot tell who holds a destination (the full dump decides).
_UNKNOWN: Final = _Held(-1, -1, None)
#: Errors of a lookup that found no route for the address at all.
_NO_ROUTE: Final = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ESRCH})

_Key = tuple[int, bytes, int]  # family (4/6), packed destination, prefix length


def _key(route: Route) -> _Key:
    dst = route.dst
    return dst.version, dst.network_address.packed, dst.prefixlen


def protocol_name(number: int) -> str:
    """``"99 (zebra)"``-style text for a route protocol number, names from rt_protos."""
    name = _KERNEL_PROTOS.get(number)
    for path in _RT_PROTOS_FILES:
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    fields = line.split("#", 1)[0].split()
                    if len(fields) >= 2 and fields[0] == str(number):
                        name = fields[1]
        except OSError:
            continue
        break
    return f"{number} ({name})" if name else str(number)


def _address(family: int, packed: bytes) -> IPAddress:
    if family == socket.AF_INET:
        return ipaddress.IPv4Address(packed)
    return ipaddress.IPv6Address(packed)


def _network(family: int, packed: bytes | None, prefixlen: int) -> IPNetwork:
    if family == socket.AF_INET:
        return ipaddress.IPv4Network((packed or bytes(4), prefixlen))
    return ipaddress.IPv6Network((packed or bytes(16), prefixlen))


def _outcome(op: str, route: Route, err: int, message: str) -> RouteOutcome:
    if err == 0:
        return RouteOutcome(op, route)
    text = message or os.strerror(err)
    if op == "delete" and err == errno.ESRCH:
        return RouteOutcome(op, route, "gone", text)
    if err in _UNREACHABLE or (err == errno.EINVAL and "gateway" in message.lower()):
        return RouteOutcome(op, route, "unreachable", text)
    return RouteOutcome(op, route, "error", f"{errno.errorcode.get(err, str(err))}: {text}")


class _Entry:
    """One route of ours to a destination, as the tracker knows it, with its ``Route``
    value once made (kept, so that the next dump need not make it again)."""

    __slots__ = ("gateway", "multipath", "priority", "route")

    def __init__(
        self, priority: int, gateway: bytes | None, multipath: bool, route: Route | None = None
    ) -> None:
        self.priority = priority
        self.gateway = gateway  # packed; None for a route without a single gateway
        self.multipath = multipath
        self.route = route

    def same(self, priority: int, gateway: bytes | None, multipath: bool) -> bool:
        return self.priority == priority and self.gateway == gateway and self.multipath == multipath


def _message_key(msg: rc.RouteMessage) -> _Key:
    if msg.family == socket.AF_INET:
        return 4, msg.dst or bytes(4), msg.dst_len
    return 6, msg.dst or bytes(16), msg.dst_len


def _key_network(key: _Key) -> IPNetwork:
    version, packed, length = key
    if version == 4:
        return ipaddress.IPv4Network((packed, length))
    return ipaddress.IPv6Network((packed, length))


def _route_of(dst: IPNetwork, entry: _Entry) -> Route | None:
    if entry.route is not None or entry.gateway is None or entry.multipath:
        return entry.route
    if dst.version == 4:
        entry.route = Route(dst, ipaddress.IPv4Address(entry.gateway))
    else:
        entry.route = Route(dst, ipaddress.IPv6Address(entry.gateway))
    return entry.route


def _same_entries(a: list[_Entry] | None, b: list[_Entry] | None) -> bool:
    if not a or not b:
        return not a and not b
    return len(a) == len(b) and all(
        any(x.same(y.priority, y.gateway, y.multipath) for y in b) for x in a
    )


def _may_drop_routes(view: memoryview, header: rc.Header) -> bool:
    """Whether an address's removal may have made the kernel drop routes without an
    event: any but an IPv6 link-local one (pods' veths come and go with those)."""
    msg = rc.parse_address(view, header)
    address = msg.address or b"\0\0"
    link_local = address[0] == 0xFE and address[1] & 0xC0 == 0x80  # fe80::/10
    return not (msg.family == socket.AF_INET6 and link_local)


class _Tracker:
    """Our protocol's routes in our table, as last dumped and then kept current from the
    kernel's change events, which a multicast socket of our own receives.

    Events are read under the table's lock: right after each batch of writes (rtnetlink
    queues a write's event before it acknowledges the write, so the batch's own events
    are all there by then) and when asked for changes. Each write that succeeded is
    noted first, so its own event changes nothing and is not reported; any other event
    that changes what we know of our routes, and any route of another protocol added to
    or removed from our table, marks its destination as changed. Lost events (receive
    buffer overrun) and an address's removal (IPv4 drops routes without an event when the
    address that made their gateway reachable goes away) make the view unknown until the
    next full dump; an added address removes no route, and IPv6 link-local addresses
    (pods' veths) are ignored.
    """

    def __init__(self, netns: str | None, protocol: int, table: int) -> None:
        groups = _group_mask(
            rc.RTNLGRP_IPV4_ROUTE,
            rc.RTNLGRP_IPV6_ROUTE,
            rc.RTNLGRP_IPV4_IFADDR,
            rc.RTNLGRP_IPV6_IFADDR,
        )
        self.sock = open_socket(netns, groups=groups)
        if not _set_option(self.sock, socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES):
            _set_option(self.sock, socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        self.sock.setblocking(False)
        self.buf = bytearray(1 << 16)
        self.protocol = protocol
        self.table = table
        self.valid = False  # the view is complete (a dump, then every event since)
        self.lost = False  # it was not, since changes were last taken: report "unknown"
        self.routes: dict[_Key, list[_Entry]] = {}
        self.changed: set[_Key] = set()

    def close(self) -> None:
        self.sock.close()

    def known_route(self, key: _Key, priority: int, gateway: bytes) -> Route | None:
        """The ``Route`` value already made for this route, if any."""
        for entry in self.routes.get(key, ()):
            if entry.priority == priority and entry.gateway == gateway and not entry.multipath:
                return entry.route
        return None

    def reset(self, routes: dict[_Key, list[_Entry]]) -> None:
        """Start over from a dump of our routes (``drain`` was called before it).
        Where the dump differs from a valid view, the destinations count as changed,
        so a consumer that did not ask for the dump still learns of them."""
        if self.valid:
            old = self.routes
            for key in old.keys() | routes.keys():
                if not _same_entries(old.get(key), routes.get(key)):
                    self.changed.add(key)
        self.routes = routes
        self.valid = True
        self.drain()  # what changed while the dump ran

    def drain(self) -> None:
        """Read every queued event and update the view."""
        view = memoryview(self.buf)
        while True:
            try:
                n = self.sock.recv_into(self.buf)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.valid = False  # events were lost
                self.lost = True
                continue
            if not self.valid:
                continue
            for header in rc.iter_messages(view, n):
                if header.msg_type in (rc.RTM_NEWROUTE, rc.RTM_DELROUTE):
                    self._replay(rc.parse_route(view, header))
                elif header.msg_type == rc.RTM_DELADDR and _may_drop_routes(view, header):
                    self.valid = False
                    self.lost = True
                    break

    def _replay(self, msg: rc.RouteMessage) -> None:
        if msg.table != self.table or msg.flags & rc.RTM_F_CLONED:
            return
        key = _message_key(msg)
        priority = msg.priority or 0
        entries = self.routes.get(key)
        if msg.protocol != self.protocol or msg.route_type != rc.RTN_UNICAST:
            # Another's route: it may free or take a destination of ours. A replace
            # takes the place of whichever route had its metric, ours included.
            self.changed.add(key)
            if entries and msg.msg_type == rc.RTM_NEWROUTE and msg.nl_flags & rc.NLM_F_REPLACE:
                self._remove(key, priority, None)
            return
        if msg.msg_type == rc.RTM_DELROUTE:
            if self._remove(key, priority, msg.gateway):
                self.changed.add(key)
            return
        entry = _Entry(priority, msg.gateway, msg.multipath)
        if entries is None:
            self.routes[key] = [entry]
        elif any(e.same(priority, msg.gateway, msg.multipath) for e in entries):
            return  # what we know already (the event of our own write)
        elif msg.nl_flags & rc.NLM_F_REPLACE:
            entries[:] = [e for e in entries if e.priority != priority]
            entries.append(entry)
        else:
            entries.append(entry)  # an append: one more route for this metric
        self.changed.add(key)

    def _remove(self, key: _Key, priority: int, gateway: bytes | None) -> bool:
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
        if kept:
            self.routes[key] = kept
        else:
            del self.routes[key]
        return True

    def note(self, msg_type: int, routes: Sequence[Route], results: Sequence[int]) -> None:
        """Writes that succeeded (errno 0): what the kernel holds now, before their events."""
        for route, err in zip(routes, results, strict=True):
            if err:
                continue
            key = _key(route)
            priority = _DEFAULT_PRIORITY[route.family]
            if msg_type == rc.RTM_DELROUTE:
                self._remove(key, priority, route.gateway.packed)
                continue
            gateway = route.gateway.packed
            entries = self.routes.get(key)
            if entries is not None and any(e.same(priority, gateway, False) for e in entries):
                continue
            entry = _Entry(priority, gateway, False, Route(route.dst, route.gateway))
            if entries is None:
                self.routes[key] = [entry]
            else:
                entries[:] = [e for e in entries if e.priority != priority]
                entries.append(entry)

    def take_changed(self) -> set[IPNetwork] | None:
        self.drain()
        changed, self.changed = self.changed, set()
        if self.lost or not self.valid:
            self.lost = False
            return None
        return {_key_network(k) for k in changed}

    def routes_to(self, dsts: Iterable[IPNetwork]) -> list[Route]:
        out: list[Route] = []
        for dst in dsts:
            key = (dst.version, dst.network_address.packed, dst.prefixlen)
            for entry in self.routes.get(key, ()):
                route = _route_of(dst, entry)
                if route is not None:
                    out.append(route)
        return out


_V6_DUMP_TRIES = 8


def _route_identity(msg: rc.RouteMessage) -> tuple[object, ...]:
    return (_message_key(msg), msg.priority or 0, msg.protocol, msg.gateway, msg.multipath)


def _unique(messages: list[rc.RouteMessage]) -> list[rc.RouteMessage]:
    """The messages without repeats (a disturbed IPv6 dump can send a route twice)."""
    seen: set[tuple[object, ...]] = set()
    out = []
    for msg in messages:
        identity = _route_identity(msg)
        if identity not in seen:
            seen.add(identity)
            out.append(msg)
    return out


def _dump_key(messages: list[rc.RouteMessage]) -> set[tuple[object, ...]]:
    return {_route_identity(m) for m in messages}


class NetlinkRouteTable:
    """A kernel route table bound to one route protocol number (``RouteTable``).

    ``list_routes`` returns only this protocol's routes of ``table``; ``apply`` writes
    routes tagged with the protocol, never overwrites or deletes another protocol's route
    (those come back as ``conflict``), and sends many messages per system call. One
    instance holds one socket; calls are serialized, so it may be shared between threads.

    It is also a ``TrackingRouteTable``: after the first ``changed_destinations()`` call
    it follows the kernel's route events (one more socket), so that a caller can ask
    which destinations changed and what our routes to them are without a dump.

    Writes never read the whole table. An add is exclusive (create, never overwrite);
    only when the kernel answers "exists" does one lookup per such destination tell
    whose route holds it. A replace first looks up its destination (one batched lookup
    per route): ours is replaced, another protocol's is a conflict, a free destination
    gets an exclusive add. Only a lookup that cannot tell (the answer came from another
    table or with another prefix or metric) falls back to a full dump.
    """

    def __init__(self, protocol: int, *, netns: str | None = None, table: int = 254) -> None:
        if not 1 <= protocol <= 255:
            raise ValueError(f"route protocol must be 1-255, got {protocol}")
        if not 1 <= table <= 0xFFFFFFFF or table in (253, 255):
            raise ValueError(f"route table must be 1-4294967295 (not 253/255), got {table}")
        self._protocol = protocol
        self._table = table
        self._netns = netns
        self._lock = threading.Lock()
        self._chan = _Channel(netns)
        self._tracker: _Tracker | None = None
        self.full_dumps = 0  # dumps of the whole table made to resolve a write (counted for tests)

    @property
    def protocol(self) -> int:
        return self._protocol

    @property
    def table(self) -> int:
        return self._table

    def close(self) -> None:
        """Close the sockets (the routes stay)."""
        self._chan.close()
        if self._tracker is not None:
            self._tracker.close()

    def __enter__(self) -> NetlinkRouteTable:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f", netns={self._netns!r}" if self._netns else ""
        return f"NetlinkRouteTable({self._protocol}, table={self._table}{where})"

    # -- reading -----------------------------------------------------------------------

    def _dump(self, family: int, protocol: int) -> Iterator[rc.RouteMessage]:
        """Route messages of our table (and ``protocol`` unless 0), each route once.

        An IPv4 dump that a concurrent change interrupts is flagged by the kernel and
        retried. An IPv6 dump is not flagged: when the table changes under it (any
        protocol's route, e.g. a second instance's), the kernel restarts its walk and
        skips as many routes as it had sent, so a dump can miss routes and repeat others.
        IPv6 is therefore dumped until two dumps in a row agree (at most
        ``_V6_DUMP_TRIES``); under unending churn the last dump is used, and what it missed
        is corrected by the next reconcile.
        """
        if family != socket.AF_INET6:
            yield from _unique(self._dump_once(family, protocol))
            return
        previous = _unique(self._dump_once(family, protocol))
        for _ in range(_V6_DUMP_TRIES - 1):
            current = _unique(self._dump_once(family, protocol))
            if _dump_key(current) == _dump_key(previous):
                break
            previous = current
        yield from previous

    def _dump_once(self, family: int, protocol: int) -> list[rc.RouteMessage]:
        """One dump; retried when the kernel flags it as interrupted."""
        for attempt in range(5):
            seq = self._chan.next_seq()
            request = rc.route_dump_request(
                seq=seq, family=family, table=self._table, protocol=protocol
            )
            messages: list[rc.RouteMessage] = []
            try:
                for view, header in self._chan.dump(request, seq):
                    if header.msg_type != rc.RTM_NEWROUTE:
                        continue
                    msg = rc.parse_route(view, header)
                    if (
                        msg.table == self._table
                        and (protocol == 0 or msg.protocol == protocol)
                        and msg.route_type == rc.RTN_UNICAST
                        and not msg.flags & rc.RTM_F_CLONED
                    ):
                        messages.append(msg)
            except NetlinkError as exc:
                if exc.errno == errno.EAGAIN and attempt < 4:
                    continue
                raise
            return messages
        raise AssertionError("unreachable")  # pragma: no cover

    def list_routes(self) -> list[Route]:
        """This protocol's routes in this table, both families, as ``Route`` values.

        Routes of ours that a ``Route`` cannot describe (no gateway, multipath) are left
        out and logged at debug level. When tracking, the dump also resets the tracked
        view (what it shows differently from the view counts as changed).
        """
        with self._lock:
            return self._list_routes()

    def _list_routes(self) -> list[Route]:
        tracker = self._tracker
        if tracker is not None:
            tracker.drain()  # the changes so far stay reported
        routes: list[Route] = []
        entries: dict[_Key, list[_Entry]] = {}
        v4net, v6net = ipaddress.IPv4Network, ipaddress.IPv6Network
        v4addr, v6addr = ipaddress.IPv4Address, ipaddress.IPv6Address
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self._dump(family, self._protocol):
                key = _message_key(msg)
                priority = msg.priority or 0
                route: Route | None = None
                if msg.gateway is None or msg.multipath:
                    log.debug(
                        "ignoring a route of protocol %d without a single gateway: %s/%d",
                        self._protocol,
                        _network(family, msg.dst, msg.dst_len).network_address,
                        msg.dst_len,
                    )
                else:
                    if tracker is not None:  # made for an earlier dump or write: reuse
                        route = tracker.known_route(key, priority, msg.gateway)
                    if route is None:
                        if family == socket.AF_INET:
                            dst: IPNetwork = v4net((key[1], msg.dst_len))
                            gateway: IPAddress = v4addr(msg.gateway)
                        else:
                            dst = v6net((key[1], msg.dst_len))
                            gateway = v6addr(msg.gateway)
                        route = Route(dst, gateway)
                    routes.append(route)
                if tracker is not None:
                    entry = _Entry(priority, msg.gateway, msg.multipath, route)
                    entries.setdefault(key, []).append(entry)
        if tracker is not None:
            tracker.reset(entries)
        return routes

    def changed_destinations(self) -> set[IPNetwork] | None:
        """Destinations whose routes changed since the last call, other than by this
        table's own writes: a route of ours added, changed or deleted by someone else, or
        a route of another protocol added to or removed from our table. ``None`` when
        that is unknown (the first call, which starts tracking; events lost; an address
        removed): call ``list_routes`` then. One consumer only."""
        with self._lock:
            if self._tracker is None:
                self._tracker = _Tracker(self._netns, self._protocol, self._table)
                return None
            return self._tracker.take_changed()

    def routes_to(self, dsts: Iterable[IPNetwork]) -> list[Route]:
        """Our routes to these destinations as tracked (no kernel round trip). Only
        meaningful while tracking, after ``list_routes``."""
        with self._lock:
            if self._tracker is None or not self._tracker.valid:
                raise RuntimeError("routes_to needs a tracked view: call list_routes first")
            return self._tracker.routes_to(dsts)

    def _holders(self) -> dict[_Key, list[_Held]]:
        """Every unicast route of our table (any protocol), by destination."""
        self.full_dumps += 1
        held: dict[_Key, list[_Held]] = {}
        for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
            size = 4 if version == 4 else 16
            for msg in self._dump(family, 0):
                key = (version, msg.dst or bytes(size), msg.dst_len)
                priority = msg.priority if msg.priority is not None else 0
                gateway = _address(family, msg.gateway) if msg.gateway else None
                held.setdefault(key, []).append(_Held(msg.protocol, priority, gateway))
        return held

    def _look_up(self, routes: Sequence[Route]) -> list[_Held | None]:
        """Who holds each route's destination at our metric: a ``_Held``, ``None`` when
        nothing does as far as the lookup sees, ``_UNKNOWN`` when it cannot tell. One
        RTM_GETROUTE per route, many per ``send``."""
        chan = self._chan
        out = bytearray(BATCH_BYTES)
        verdicts: list[_Held | None] = []
        start = 0
        while start < len(routes):
            chunk = routes[start : start + chan.batch_messages]
            base = chan.next_seq(len(chunk))
            count, length = rc.encode_lookups(
                out, chunk, flags=rc.NLM_F_REQUEST, last_flags=rc.NLM_F_ACK, seq=base
            )
            replies: dict[int, rc.RouteMessage] = {}
            results = self._send_and_collect(out, length, base, count, replies=replies)
            for i in range(count):
                verdicts.append(self._verdict(chunk[i], replies.get(i), results[i][0]))
            start += count
        return verdicts

    def _verdict(self, route: Route, reply: rc.RouteMessage | None, err: int) -> _Held | None:
        if reply is None:
            return None if err in _NO_ROUTE else _UNKNOWN
        dst = route.dst
        if reply.table != self._table or reply.dst_len > dst.prefixlen:
            return _UNKNOWN
        if reply.dst_len < dst.prefixlen:
            return None  # the best match in our table is a shorter prefix: nothing at ours
        if (reply.dst or bytes(len(dst.network_address.packed))) != dst.network_address.packed:
            return _UNKNOWN
        priority = reply.priority or 0
        default = _DEFAULT_PRIORITY[dst.version]
        if priority > default:
            return None  # the lowest metric at this destination is above ours: none at ours
        if priority < default:
            return _UNKNOWN  # it hides whatever may hold our metric
        family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
        gateway = _address(family, reply.gateway) if reply.gateway else None
        return _Held(reply.protocol, priority, gateway)

    # -- writing -----------------------------------------------------------------------

    def apply(self, plan: Plan) -> list[RouteOutcome]:
        """Apply ``plan``; one outcome per planned route, deletes first, then replaces,
        then adds. A failed route never stops the others.

        The writes go replaces first, then adds, then deletes: a replaced destination's
        route is rewritten in place before its old-gateway route's delete (which then
        finds it gone), so the destination is never without a route meanwhile."""
        with self._lock:
            replaced = self._replace(plan.replace)
            added = self._add(plan.add)
            outcomes = self._delete(plan.delete) + replaced + added
            tracker = self._tracker
            if tracker is not None:
                # adds found in place count as done: the view has them too
                done = [o.route for o in outcomes if o.ok and o.op != "delete"]
                tracker.note(rc.RTM_NEWROUTE, done, [0] * len(done))
                tracker.drain()
            return outcomes

    def _delete(self, routes: Sequence[Route]) -> list[RouteOutcome]:
        # Filtered on our protocol (and table) by the kernel: never removes another's
        # route; and on the gateway, so the old-gateway delete of a destination replaced
        # just before finds it gone instead of removing the new route.
        results = self._batch(rc.RTM_DELROUTE, 0, routes, gateway=True)
        return [
            _outcome("delete", r, err, msg) for r, (err, msg) in zip(routes, results, strict=True)
        ]

    def _replace(self, routes: Sequence[Route]) -> list[RouteOutcome]:
        if not routes:
            return []
        outcomes: list[RouteOutcome | None] = [None] * len(routes)
        ours: list[int] = []
        free: list[int] = []
        unsure: list[int] = []
        for i, holder in enumerate(self._look_up(routes)):
            if holder is _UNKNOWN:
                unsure.append(i)
            elif holder is None:
                free.append(i)
            elif holder.protocol != self._protocol:
                outcomes[i] = self._conflict("replace", routes[i], holder)
            else:
                ours.append(i)
        if unsure:
            held = self._holders()
            for i in unsure:
                foreign = self._foreign_holder(routes[i], held)
                if foreign is not None:
                    outcomes[i] = self._conflict("replace", routes[i], foreign)
                else:
                    ours.append(i)
        self._write(rc.NLM_F_CREATE | rc.NLM_F_REPLACE, "replace", routes, sorted(ours), outcomes)
        if free:
            # nothing of ours to replace: create, but never over a route that appeared
            errs = self._write(rc.NLM_F_CREATE | rc.NLM_F_EXCL, "replace", routes, free, outcomes)
            taken = [i for i, err in zip(free, errs, strict=True) if err == errno.EEXIST]
            if taken:
                held = self._holders()
                again: list[int] = []
                for i in taken:
                    foreign = self._foreign_holder(routes[i], held)
                    if foreign is not None:
                        outcomes[i] = self._conflict("replace", routes[i], foreign)
                    else:
                        again.append(i)
                self._write(rc.NLM_F_CREATE | rc.NLM_F_REPLACE, "replace", routes, again, outcomes)
        return [o for o in outcomes if o is not None]

    def _write(
        self,
        flags: int,
        op: str,
        routes: Sequence[Route],
        indexes: Sequence[int],
        outcomes: list[RouteOutcome | None],
    ) -> list[int]:
        """Write ``routes[i]`` for each index with ``flags``; its outcome into
        ``outcomes[i]``. Returns the errno per index."""
        if not indexes:
            return []
        chosen = [routes[i] for i in indexes]
        results = self._batch(rc.RTM_NEWROUTE, flags, chosen, gateway=True)
        for i, (err, msg) in zip(indexes, results, strict=True):
            outcomes[i] = _outcome(op, routes[i], err, msg)
        return [err for err, _ in results]

    def _add(self, routes: Sequence[Route]) -> list[RouteOutcome]:
        flags = rc.NLM_F_CREATE | rc.NLM_F_EXCL
        results = self._batch(rc.RTM_NEWROUTE, flags, routes, gateway=True)
        outcomes: list[RouteOutcome | None] = [
            _outcome("add", r, err, msg) for r, (err, msg) in zip(routes, results, strict=True)
        ]
        existing = [i for i, (err, _) in enumerate(results) if err == errno.EEXIST]
        if not existing:
            return [o for o in outcomes if o is not None]
        # Something holds these destinations: find out what before deciding.
        ours_elsewhere: list[int] = []
        unsure: list[int] = []
        for i, holder in zip(existing, self._look_up([routes[i] for i in existing]), strict=True):
            route = routes[i]
            if holder is _UNKNOWN or holder is None:
                unsure.append(i)  # None: "exists", yet the lookup sees nothing; ask the dump
            elif holder.protocol != self._protocol:
                outcomes[i] = self._conflict("add", route, holder)
            elif holder.gateway == route.gateway:
                outcomes[i] = RouteOutcome("add", route)  # already there, as planned
            else:
                ours_elsewhere.append(i)  # our own route, stale gateway: replace it
        if unsure:
            held = self._holders()
            for i in unsure:
                route = routes[i]
                foreign = self._foreign_holder(route, held)
                if foreign is not None:
                    outcomes[i] = self._conflict("add", route, foreign)
                    continue
                mine = [h for h in held.get(_key(route), ()) if h.protocol == self._protocol]
                if any(h.gateway == route.gateway for h in mine):
                    outcomes[i] = RouteOutcome("add", route)
                elif mine:
                    ours_elsewhere.append(i)
                else:
                    outcomes[i] = RouteOutcome(
                        "add", route, "error", "EEXIST: a route appeared and vanished meanwhile"
                    )
        self._write(
            rc.NLM_F_CREATE | rc.NLM_F_REPLACE, "add", routes, sorted(ours_elsewhere), outcomes
        )
        return [o for o in outcomes if o is not None]

    def _foreign_holder(self, route: Route, held: dict[_Key, list[_Held]]) -> _Held | None:
        """The other protocol's route that an add/replace of ``route`` would collide with
        (same destination and metric), if any."""
        priority = _DEFAULT_PRIORITY[route.family]
        for h in held.get(_key(route), ()):
            if h.protocol != self._protocol and h.priority == priority:
                return h
        return None

    def _conflict(self, op: str, route: Route, holder: _Held) -> RouteOutcome:
        via = f" via {holder.gateway}" if holder.gateway is not None else ""
        reason = (
            f"{route.dst} is held by a route of protocol {protocol_name(holder.protocol)}{via}"
            f" in table {self._table}; not touching it"
        )
        return RouteOutcome(op, route, "conflict", reason)

    def _batch(
        self, msg_type: int, flags: int, routes: Sequence[Route], *, gateway: bool
    ) -> list[tuple[int, str]]:
        """Send one request per route, many per ``send``; return (errno, kernel message)
        per route, matched by sequence number.

        Only the last message of each send asks for an acknowledgement (NLM_F_ACK): the
        kernel answers every failed request anyway, and handles a send's messages in
        order before ``send`` returns, so once the last one is acknowledged every error
        of the batch has been read and the requests without an answer succeeded. This
        saves one ``recv`` per route. If the kernel drops answers (receive buffer
        overrun), the batch's unanswered routes are reported as errors, to be retried.
        When tracking, each send's successful writes are noted and the events read, so
        that neither piles up.
        """
        chan = self._chan
        tracker = self._tracker
        if msg_type == rc.RTM_DELROUTE:
            scope, route_type = rc.RT_SCOPE_NOWHERE, rc.RTN_UNSPEC
        else:
            scope, route_type = rc.RT_SCOPE_UNIVERSE, rc.RTN_UNICAST
        out = bytearray(BATCH_BYTES)
        results: list[tuple[int, str]] = []
        start = 0
        while start < len(routes):
            base = chan.next_seq(chan.batch_messages)
            count, length = rc.encode_routes(
                out,
                routes,
                start,
                start + chan.batch_messages,
                msg_type=msg_type,
                flags=flags | rc.NLM_F_REQUEST,
                last_flags=rc.NLM_F_ACK,
                seq=base,
                table=self._table,
                protocol=self._protocol,
                gateway=gateway,
                scope=scope,
                route_type=route_type,
            )
            sent = self._send_and_collect(out, length, base, count)
            results.extend(sent)
            if tracker is not None:
                tracker.note(msg_type, routes[start : start + count], [e for e, _ in sent])
                tracker.drain()
            start += count
        return results

    def _send_and_collect(
        self,
        out: bytearray,
        length: int,
        base: int,
        count: int,
        *,
        replies: dict[int, rc.RouteMessage] | None = None,
    ) -> list[tuple[int, str]]:
        """Send ``count`` requests numbered from ``base``; (errno, message) per request.
        Route messages answering a request (lookups) go to ``replies`` by index."""
        chan = self._chan
        failed: dict[int, tuple[int, str]] = {}
        chan.sock.send(memoryview(out)[:length])
        view = memoryview(chan.buf)
        last = count - 1
        done = overrun = False
        while not done:
            try:
                if overrun:
                    n = chan.sock.recv_into(chan.buf, 0, socket.MSG_DONTWAIT)
                else:
                    n = chan.sock.recv_into(chan.buf)
            except (BlockingIOError, TimeoutError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # answers were dropped; the rest are already queued (rtnetlink
                    # answers before send returns), so drain without waiting
                    log.warning("netlink receive buffer overrun: answers were lost")
                    overrun = True
                    continue
                raise
            for header in rc.iter_messages(view, n):
                index = (header.seq - base) & 0xFFFFFFFF
                if index >= count:
                    continue
                if header.msg_type == rc.RTM_NEWROUTE and replies is not None:
                    replies[index] = rc.parse_route(view, header)
                    continue
                if header.msg_type != rc.NLMSG_ERROR:
                    continue
                ack = rc.parse_ack(view, header)
                if ack.error:
                    failed[index] = (ack.error, ack.message)
                if index == last:
                    done = True
        ok = (0, "")
        if done and not overrun:
            return [failed.get(i, ok) for i in range(count)]
        lost = (errno.EIO, "the kernel's answer was lost (receive buffer overrun); will retry")
        return [failed.get(i, lost) for i in range(count)]


# --- change events ---------------------------------------------------------------------


def _group_mask(*groups: int) -> int:
    mask = 0
    for g in groups:
        mask |= 1 << (g - 1)
    return mask


class RouteMonitor:
    """Calls ``on_change()`` when the kernel reports a change that may need a reconcile:
    a route of our protocol deleted or changed, any route added or replaced in our table
    (another program may have taken a destination of ours), or an address added/removed
    (which changes which gateways are reachable; IPv4 drops routes silently when the
    address that made their gateway reachable goes away).

    Subscribes when constructed, so nothing between construction and ``run`` is missed.
    Several events read together cause one call. When the kernel drops events (receive
    buffer overrun), ``on_change`` is called too, since the state is then unknown.
    """

    def __init__(self, protocol: int, *, netns: str | None = None, table: int = 254) -> None:
        if not 1 <= protocol <= 255:
            raise ValueError(f"route protocol must be 1-255, got {protocol}")
        self._protocol = protocol
        self._table = table
        groups = _group_mask(
            rc.RTNLGRP_IPV4_ROUTE,
            rc.RTNLGRP_IPV6_ROUTE,
            rc.RTNLGRP_IPV4_IFADDR,
            rc.RTNLGRP_IPV6_IFADDR,
        )
        self._sock = open_socket(netns, groups=groups)
        if not _set_option(self._sock, socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 20):
            _set_option(self._sock, socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.setblocking(False)
        self._buf = bytearray(1 << 16)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RouteMonitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def run(
        self, on_change: Callable[[], None], stop: threading.Event, *, poll: float = 0.2
    ) -> None:
        """Watch until ``stop`` is set (returns within ``poll`` seconds after)."""
        while not stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], poll)
            if ready and self._drain() and not stop.is_set():
                on_change()

    def _drain(self) -> bool:
        """Read every queued event; True if one of them matters."""
        relevant = False
        view = memoryview(self._buf)
        while True:
            try:
                n = self._sock.recv_into(self._buf)
            except BlockingIOError:
                return relevant
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    relevant = True  # events were lost
                    continue
                raise
            if not relevant:
                relevant = any(self._matters(view, h) for h in rc.iter_messages(view, n))

    def _matters(self, view: memoryview, header: rc.Header) -> bool:
        if header.msg_type in (rc.RTM_NEWADDR, rc.RTM_DELADDR):
            return True
        if header.msg_type not in (rc.RTM_NEWROUTE, rc.RTM_DELROUTE):
            return False
        msg = rc.parse_route(view, header)
        if msg.table != self._table or msg.flags & rc.RTM_F_CLONED:
            return False
        return header.msg_type == rc.RTM_NEWROUTE or msg.protocol == self._protocol


# --- interfaces ------------------------------------------------------------------------


def _links(chan: _Channel) -> dict[int, rc.LinkMessage]:
    seq = chan.next_seq()
    request = rc.simple_dump_request(msg_type=rc.RTM_GETLINK, seq=seq)
    links: dict[int, rc.LinkMessage] = {}
    for view, header in chan.dump(request, seq):
        if header.msg_type == rc.RTM_NEWLINK:
            link = rc.parse_link(view, header)
            links[link.ifindex] = link
    return links


def list_interface_addresses(netns: str | None = None) -> list[InterfaceAddress]:
    """Every address on every interface (both families), with the interface's MTU and
    the address's subnet."""
    chan = _Channel(netns)
    try:
        links = _links(chan)
        out: list[InterfaceAddress] = []
        seq = chan.next_seq()
        request = rc.simple_dump_request(msg_type=rc.RTM_GETADDR, seq=seq)
        for view, header in chan.dump(request, seq):
            if header.msg_type != rc.RTM_NEWADDR:
                continue
            msg = rc.parse_address(view, header)
            link = links.get(msg.ifindex)
            if link is None or msg.address is None or msg.family not in _FAMILY.values():
                continue
            address = _address(msg.family, msg.address)
            network = ipaddress.ip_network((msg.address, msg.prefixlen), strict=False)
            out.append(InterfaceAddress(link.name, link.mtu, network, address))
        return out
    finally:
        chan.close()


def interface_mtu(name: str, *, netns: str | None = None) -> int:
    """The MTU of interface ``name``. Raises LookupError when there is no such interface."""
    chan = _Channel(netns)
    try:
        for link in _links(chan).values():
            if link.name == name:
                return link.mtu
    finally:
        chan.close()
    where = f" in network namespace {netns!r}" if netns else ""
    raise LookupError(f"no network interface {name!r}{where}")
