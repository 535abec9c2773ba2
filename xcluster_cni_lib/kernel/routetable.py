"""``NetlinkRouteTable``: a kernel route table bound to one route protocol number.

Writes are batched: one ``RTM_NEWROUTE``/``RTM_DELROUTE`` per route, many per ``send``,
encoded by ``codec``; only the last message of each send asks for an acknowledgement.
Netlink errno codes become ``RouteOutcome`` statuses (``gone``, ``unreachable``,
``conflict``, ``error``). Nothing netlink-shaped leaves this module.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Final

from xcluster_cni_lib.core.protocols import check_protocol
from xcluster_cni_lib.core.values import IPNetwork, Plan, Route, RouteOutcome
from xcluster_cni_lib.kernel import codec as rc
from xcluster_cni_lib.kernel.channel import BATCH_BYTES, Channel
from xcluster_cni_lib.kernel.dumps import (
    Held,
    Key,
    RouteEventWatch,
    as_route,
    dump_routes,
    holders,
    look_up,
    message_key,
    packed_address,
    route_key,
)
from xcluster_cni_lib.kernel.links import link_index
from xcluster_cni_lib.kernel.tracker import DEFAULT_PRIORITY, Entry, RouteTracker
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.support.rtprotos import protocol_name

log = jsonlog.get_logger(__name__)

_UNREACHABLE: Final = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN})
#: A lookup's verdict when it cannot tell who holds a destination (the full dump decides).
_UNKNOWN: Final = Held(-1, -1, None)
#: Errors of a lookup that found no route for the address at all.
_NO_ROUTE: Final = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ESRCH})


def _needs_swap(route: Route) -> bool:
    """An IPv6 route through the overlay device: written over our route to the same
    destination by delete and create (see ``NetlinkRouteTable._swap``)."""
    return route.device is not None and route.family == 6


def _held_elsewhere(route: Route, err: int) -> bool:
    """An IPv6 on-link route refused because a route through another device covers its
    gateway: the kernel's EINVAL means "a route holds this" as EEXIST does elsewhere."""
    return err == errno.EINVAL and _needs_swap(route)


def _outcome(op: str, route: Route, err: int, message: str) -> RouteOutcome:
    if err == 0:
        return RouteOutcome(op, route)
    text = message or os.strerror(err)
    if op == "delete" and err == errno.ESRCH:
        return RouteOutcome(op, route, "gone", text)
    if err in _UNREACHABLE or (err == errno.EINVAL and "gateway" in message.lower()):
        return RouteOutcome(op, route, "unreachable", text)
    return RouteOutcome(op, route, "error", f"{errno.errorcode.get(err, str(err))}: {text}")


class NetlinkRouteTable:
    """A kernel route table bound to one route protocol number (``RouteTable``).

    ``protocol`` must be 5-255: 0-4 are the kernel's own (``boot`` is what ``ip route
    add`` uses), and a table bound to one would list and delete routes made by hand.
    ``list_routes`` returns only this protocol's routes of ``table``; ``apply`` writes
    routes tagged with the protocol, never overwrites or deletes another protocol's route
    (those come back as ``conflict``), and sends many messages per system call. One
    instance holds one request socket; calls are serialized, so it may be shared between
    threads.

    It is also a ``TrackingRouteTable``: once tracking (``track()``, or the first
    ``changed_destinations()`` call) it follows the kernel's events with a
    ``RouteTracker`` (one more socket), which also serves as the kernel monitor that
    wakes a reconciler (``track().run(on_change, stop)``).

    Writes never read the whole table. An add is exclusive (create, never overwrite);
    only when the kernel answers "exists" does one lookup per such destination tell
    whose route holds it. A replace first looks up its destination (one batched lookup
    per route): ours is replaced, another protocol's is a conflict, a free destination
    gets an exclusive add. Only a lookup that cannot tell (the answer came from another
    table or with another prefix or metric) falls back to a full dump.
    """

    def __init__(
        self,
        protocol: int,
        *,
        netns: str | None = None,
        table: int = rc.RT_TABLE_MAIN,
        device: str | None = None,
    ) -> None:
        check_protocol(protocol)
        if not 1 <= table <= 0xFFFFFFFF or table in (253, 255):
            raise ValueError(f"route table must be 1-4294967295 (not 253/255), got {table}")
        self._protocol = protocol
        self._table = table
        self._netns = netns
        self._lock = threading.Lock()
        self._chan = Channel(netns)
        self._tracker: RouteTracker | None = None
        self._watch: RouteEventWatch | None = None  # checks IPv6 dumps while not tracking
        # while not tracking: our IPv6 routes' keys as last listed and written since, the
        # routes a listing under churn confirms one by one when every dump missed them
        self._ours6: set[Key] = set()
        # the vxlan overlay's device (routes with ``device``), its index as last looked up
        self._device = device
        self._device_index = 0
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
        if self._watch is not None:
            self._watch.close()

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

    # -- tracking ----------------------------------------------------------------------

    def track(self) -> RouteTracker:
        """Start following the kernel's events (if not yet) and return the tracker, which
        is also the monitor to run in a thread: ``track().run(on_change, stop)``.
        Subscribes at once, so nothing after this call is missed."""
        with self._lock:
            return self._start_tracking()

    def _start_tracking(self) -> RouteTracker:
        if self._tracker is None:
            self._tracker = RouteTracker(
                self._netns, protocol=self._protocol, table=self._table, lock=self._lock
            )
            self._tracker.device_of = self._device_of
            if self._watch is not None:  # the tracker counts route events from now on
                self._watch.close()
                self._watch = None
        return self._tracker

    def _route_events(self) -> int:
        """The running count of our table's IPv6 route events, to check dumps with."""
        if self._tracker is not None:
            return self._tracker.count_route_events()
        if self._watch is None:
            self._watch = RouteEventWatch(self._netns, table=self._table)
        return self._watch()

    def changed_destinations(self) -> set[IPNetwork] | None:
        """Destinations whose routes changed since the last call, other than by this
        table's own writes (see ``tracker`` for what counts). ``None`` when that is
        unknown (the first call, which starts tracking, or a list was never made since;
        events lost; an address or link our routes use went away): call ``list_routes``
        then. One consumer only."""
        with self._lock:
            if self._tracker is None:
                self._start_tracking()
                return None
            return self._tracker.take_changed()

    def routes_to(self, dsts: Iterable[IPNetwork]) -> list[Route]:
        """Our routes to these destinations as tracked (no kernel round trip). Only
        meaningful while tracking, after ``list_routes``."""
        with self._lock:
            if self._tracker is None or not self._tracker.valid:
                raise RuntimeError("routes_to needs a tracked view: call list_routes first")
            return self._tracker.routes_to(dsts)

    def installed_count(self) -> int:
        """How many of our routes the tracked view holds (those ``list_routes`` would
        return), kept current by the events read so far and our writes: no dump, no
        walk over the routes. Only meaningful while tracking, after ``list_routes``;
        after lost events, the last known number until the next ``list_routes``."""
        with self._lock:
            if self._tracker is None:
                raise RuntimeError("installed_count needs a tracked view: call list_routes first")
            return self._tracker.installed

    # -- reading -----------------------------------------------------------------------

    def list_routes(self) -> list[Route]:
        """This protocol's routes in this table, both families, as ``Route`` values.

        Routes of ours that a ``Route`` cannot describe (no gateway, multipath) are left
        out and logged at debug level. When tracking, the dump also resets the tracked
        view (what it shows differently from the view counts as changed).
        """
        with self._lock:
            return self._list_routes()

    def _list_routes(self) -> list[Route]:
        self._look_up_device()
        tracker = self._tracker
        if tracker is not None:
            tracker.drain()  # the changes so far stay reported
        routes: list[Route] = []
        entries: dict[Key, list[Entry]] = {}
        expected = tracker.routes.keys() if tracker is not None else self._ours6
        listed6: set[Key] = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            messages = dump_routes(
                self._chan,
                family,
                table=self._table,
                protocol=self._protocol,
                events=self._route_events,
                expected=expected,
            )
            for msg in messages:
                key = message_key(msg)
                if family == socket.AF_INET6:
                    listed6.add(key)
                priority = msg.priority or 0
                route: Route | None = None
                if msg.gateway is None or msg.multipath:
                    log.debug(
                        "route without a single gateway ignored",
                        protocol=self._protocol,
                        dst=f"{packed_address(family, key[1])}/{msg.dst_len}",
                    )
                else:
                    if tracker is not None:  # made for an earlier dump or write: reuse
                        route = tracker.known_route(key, priority, msg.gateway)
                    if route is None:
                        route = as_route(family, msg, self._device_of(msg.oif))
                    if route is not None:
                        routes.append(route)
                if tracker is not None:
                    entry = Entry(priority, msg.gateway, msg.multipath, route, msg.oif)
                    entries.setdefault(key, []).append(entry)
        if tracker is not None:
            tracker.reset(entries)
        else:
            self._ours6 = listed6
        return routes

    def _holders(self) -> dict[Key, list[Held]]:
        """Every unicast route of our table (any protocol), by destination."""
        self.full_dumps += 1
        return holders(self._chan, table=self._table, events=self._route_events)

    def _look_up(self, routes: Sequence[Route]) -> list[Held | None]:
        """Who holds each route's destination at our metric: a ``Held``, ``None`` when
        nothing does as far as the lookup sees, ``_UNKNOWN`` when it cannot tell. One
        RTM_GETROUTE per route, many per ``send``."""
        answers = look_up(self._chan, [r.dst for r in routes])
        return [
            self._verdict(route, reply, err)
            for route, (reply, err) in zip(routes, answers, strict=True)
        ]

    def _verdict(self, route: Route, reply: rc.RouteMessage | None, err: int) -> Held | None:
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
        default = DEFAULT_PRIORITY[dst.version]
        if priority > default:
            return None  # the lowest metric at this destination is above ours: none at ours
        if priority < default:
            return _UNKNOWN  # it hides whatever may hold our metric
        family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
        gateway = packed_address(family, reply.gateway) if reply.gateway else None
        return Held(reply.protocol, priority, gateway)

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
            if tracker is None:
                for o in outcomes:
                    if o.route.dst.version == 6 and o.ok:
                        if o.op == "delete":
                            self._ours6.discard(route_key(o.route))
                        else:
                            self._ours6.add(route_key(o.route))
            else:
                # adds found in place count as done: the view has them too
                done = [o.route for o in outcomes if o.ok and o.op != "delete"]
                tracker.note(rc.RTM_NEWROUTE, done, [0] * len(done))
                tracker.note_outcomes(outcomes)
                tracker.drain()
            return outcomes

    def _delete(self, routes: Sequence[Route]) -> list[RouteOutcome]:
        # Filtered on our protocol (and table) by the kernel: never removes another's
        # route; and on the gateway, so the old-gateway delete of a destination replaced
        # just before finds it gone instead of removing the new route.
        results = self._batch(rc.RTM_DELROUTE, 0, routes)
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
        swap = [i for i in ours if _needs_swap(routes[i])]
        ours = [i for i in ours if not _needs_swap(routes[i])]
        self._write(rc.NLM_F_CREATE | rc.NLM_F_REPLACE, "replace", routes, sorted(ours), outcomes)
        self._swap("replace", routes, swap, outcomes)
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
        results = self._batch(rc.RTM_NEWROUTE, flags, chosen)
        for i, (err, msg) in zip(indexes, results, strict=True):
            outcomes[i] = _outcome(op, routes[i], err, msg)
        return [err for err, _ in results]

    def _add(self, routes: Sequence[Route]) -> list[RouteOutcome]:
        flags = rc.NLM_F_CREATE | rc.NLM_F_EXCL
        results = self._batch(rc.RTM_NEWROUTE, flags, routes)
        outcomes: list[RouteOutcome | None] = [
            _outcome("add", r, err, msg) for r, (err, msg) in zip(routes, results, strict=True)
        ]
        existing = [
            i
            for i, (err, _) in enumerate(results)
            if err == errno.EEXIST or _held_elsewhere(routes[i], err)
        ]
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
                mine = [h for h in held.get(route_key(route), ()) if h.protocol == self._protocol]
                if any(h.gateway == route.gateway for h in mine):
                    outcomes[i] = RouteOutcome("add", route)
                elif mine:
                    ours_elsewhere.append(i)
                else:
                    outcomes[i] = RouteOutcome(
                        "add", route, "error", "EEXIST: a route appeared and vanished meanwhile"
                    )
        swap = [i for i in ours_elsewhere if _needs_swap(routes[i])]
        rest = sorted(i for i in ours_elsewhere if not _needs_swap(routes[i]))
        self._write(rc.NLM_F_CREATE | rc.NLM_F_REPLACE, "add", routes, rest, outcomes)
        self._swap("add", routes, swap, outcomes)
        return [o for o in outcomes if o is not None]

    def _swap(
        self,
        op: str,
        routes: Sequence[Route],
        indexes: Sequence[int],
        outcomes: list[RouteOutcome | None],
    ) -> None:
        """Our route to each destination goes, then the new one is created: an IPv6
        on-link route cannot replace a route through another device (the kernel checks
        the gateway against the routes present and answers EINVAL). A moment without a
        route, only when switching a destination onto the overlay device."""
        if not indexes:
            return
        chosen = [routes[i] for i in indexes]
        by_dst = [Route(r.dst, r.gateway) for r in chosen]
        self._send(rc.RTM_DELROUTE, 0, by_dst, 0, gateway=False)  # ours only: protocol
        self._write(rc.NLM_F_CREATE | rc.NLM_F_EXCL, op, routes, indexes, outcomes)

    def _foreign_holder(self, route: Route, held: dict[Key, list[Held]]) -> Held | None:
        """The other protocol's route that an add/replace of ``route`` would collide with
        (same destination and metric), if any."""
        priority = DEFAULT_PRIORITY[route.family]
        for h in held.get(route_key(route), ()):
            if h.protocol != self._protocol and h.priority == priority:
                return h
        return None

    def _conflict(self, op: str, route: Route, holder: Held) -> RouteOutcome:
        via = f" via {holder.gateway}" if holder.gateway is not None else ""
        reason = (
            f"{route.dst} is held by a route of protocol {protocol_name(holder.protocol)}{via}"
            f" in table {self._table}; not touching it"
        )
        return RouteOutcome(op, route, "conflict", reason)

    # -- the overlay device ------------------------------------------------------------

    def _look_up_device(self) -> int:
        """The overlay device's interface index now (0: no such device), remembered for
        ``_device_of``."""
        if self._device is None:
            return 0
        self._device_index = link_index(self._chan, self._device)
        return self._device_index

    def _device_of(self, oif: int) -> str | None:
        """The device name a route out of ``oif`` carries: the overlay device's, else
        none (a direct route: the kernel chose the interface)."""
        if self._device is not None and oif and oif == self._device_index:
            return self._device
        return None

    def _batch(self, msg_type: int, flags: int, routes: Sequence[Route]) -> list[tuple[int, str]]:
        """``_send`` per device: routes through the overlay device go out of it, on-link
        (one link lookup per call); a device that does not exist fails its routes with
        ENODEV. Deletes match on destination and gateway, whatever the device."""
        if msg_type == rc.RTM_DELROUTE or not any(r.device for r in routes):
            return self._send(msg_type, flags, routes, 0)
        results: list[tuple[int, str]] = [(0, "")] * len(routes)
        groups: dict[str | None, list[int]] = {}
        for i, route in enumerate(routes):
            groups.setdefault(route.device, []).append(i)
        index = self._look_up_device()
        for device, chosen in groups.items():
            if device is not None and (device != self._device or not index):
                for i in chosen:
                    results[i] = (errno.ENODEV, f"no device {device}")
                continue
            sent = self._send(msg_type, flags, [routes[i] for i in chosen], index if device else 0)
            for i, result in zip(chosen, sent, strict=True):
                results[i] = result
        return results

    def _send(
        self, msg_type: int, flags: int, routes: Sequence[Route], oif: int, *, gateway: bool = True
    ) -> list[tuple[int, str]]:
        """Send one request per route, many per ``send``; (errno, kernel message) per
        route (``Channel.exchange``). When tracking, each send's successful writes are
        noted and the events read, so that neither piles up."""
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
                oif=oif,
            )
            sent = chan.exchange(out, length, base, count)
            results.extend(sent)
            if tracker is not None:
                tracker.note(msg_type, routes[start : start + count], [e for e, _ in sent])
                tracker.drain()
            start += count
        return results
