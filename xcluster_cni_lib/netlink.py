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
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Final, NamedTuple

from xcluster_cni_lib import rtnl_codec as rc
from xcluster_cni_lib.core.values import (
    InterfaceAddress,
    IPAddress,
    IPNetwork,
    Plan,
    Route,
    RouteOutcome,
)

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


class NetlinkRouteTable:
    """A kernel route table bound to one route protocol number (``RouteTable``).

    ``list_routes`` returns only this protocol's routes of ``table``; ``apply`` writes
    routes tagged with the protocol, never overwrites or deletes another protocol's route
    (those come back as ``conflict``), and sends many messages per system call. One
    instance holds one socket; calls are serialized, so it may be shared between threads.
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

    @property
    def protocol(self) -> int:
        return self._protocol

    @property
    def table(self) -> int:
        return self._table

    def close(self) -> None:
        """Close the socket (the routes stay)."""
        self._chan.close()

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
        """Route messages of our table (and ``protocol`` unless 0); retried when a
        concurrent change interrupts the dump."""
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
            yield from messages
            return

    def list_routes(self) -> list[Route]:
        """This protocol's routes in this table, both families, as ``Route`` values.

        Routes of ours that a ``Route`` cannot describe (no gateway, multipath) are left
        out and logged at debug level.
        """
        with self._lock:
            return self._list_routes()

    def _list_routes(self) -> list[Route]:
        routes: list[Route] = []
        v4net, v6net = ipaddress.IPv4Network, ipaddress.IPv6Network
        v4addr, v6addr = ipaddress.IPv4Address, ipaddress.IPv6Address
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self._dump(family, self._protocol):
                if msg.gateway is None or msg.multipath:
                    log.debug(
                        "ignoring a route of protocol %d without a single gateway: %s/%d",
                        self._protocol,
                        _network(family, msg.dst, msg.dst_len).network_address,
                        msg.dst_len,
                    )
                    continue
                if family == socket.AF_INET:
                    dst: IPNetwork = v4net((msg.dst or b"\0\0\0\0", msg.dst_len))
                    gateway: IPAddress = v4addr(msg.gateway)
                else:
                    dst = v6net((msg.dst or bytes(16), msg.dst_len))
                    gateway = v6addr(msg.gateway)
                routes.append(Route(dst, gateway))
        return routes

    def _holders(self) -> dict[_Key, list[_Held]]:
        """Every unicast route of our table (any protocol), by destination."""
        held: dict[_Key, list[_Held]] = {}
        for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
            size = 4 if version == 4 else 16
            for msg in self._dump(family, 0):
                key = (version, msg.dst or bytes(size), msg.dst_len)
                priority = msg.priority if msg.priority is not None else 0
                gateway = _address(family, msg.gateway) if msg.gateway else None
                held.setdefault(key, []).append(_Held(msg.protocol, priority, gateway))
        return held

    # -- writing -----------------------------------------------------------------------

    def apply(self, plan: Plan) -> list[RouteOutcome]:
        """Apply ``plan``: deletes, then replaces, then adds; one outcome per planned route,
        in that order. A failed route never stops the others."""
        with self._lock:
            outcomes = self._delete(plan.delete)
            outcomes += self._replace(plan.replace)
            outcomes += self._add(plan.add)
            return outcomes

    def _delete(self, routes: Sequence[Route]) -> list[RouteOutcome]:
        # Filtered on our protocol (and table) by the kernel: never removes another's route.
        results = self._batch(rc.RTM_DELROUTE, 0, routes, gateway=False)
        return [
            _outcome("delete", r, err, msg) for r, (err, msg) in zip(routes, results, strict=True)
        ]

    def _replace(self, routes: Sequence[Route]) -> list[RouteOutcome]:
        if not routes:
            return []
        held = self._holders()
        outcomes: list[RouteOutcome | None] = [None] * len(routes)
        todo: list[int] = []
        for i, route in enumerate(routes):
            foreign = self._foreign_holder(route, held)
            if foreign is not None:
                outcomes[i] = self._conflict("replace", route, foreign)
            else:
                todo.append(i)
        todo_routes = [routes[i] for i in todo]
        flags = rc.NLM_F_CREATE | rc.NLM_F_REPLACE
        results = self._batch(rc.RTM_NEWROUTE, flags, todo_routes, gateway=True)
        for i, (err, msg) in zip(todo, results, strict=True):
            outcomes[i] = _outcome("replace", routes[i], err, msg)
        return [o for o in outcomes if o is not None]

    def _add(self, routes: Sequence[Route]) -> list[RouteOutcome]:
        flags = rc.NLM_F_CREATE | rc.NLM_F_EXCL
        results = self._batch(rc.RTM_NEWROUTE, flags, routes, gateway=True)
        outcomes = [
            _outcome("add", r, err, msg) for r, (err, msg) in zip(routes, results, strict=True)
        ]
        existing = [i for i, (err, _) in enumerate(results) if err == errno.EEXIST]
        if not existing:
            return outcomes
        # Something holds these destinations: find out what before deciding.
        held = self._holders()
        ours_elsewhere: list[int] = []
        for i in existing:
            route = routes[i]
            foreign = self._foreign_holder(route, held)
            if foreign is not None:
                outcomes[i] = self._conflict("add", route, foreign)
                continue
            mine = [h for h in held.get(_key(route), ()) if h.protocol == self._protocol]
            if any(h.gateway == route.gateway for h in mine):
                outcomes[i] = RouteOutcome("add", route)  # already there, as planned
            elif mine:
                ours_elsewhere.append(i)  # our own route, stale gateway: replace it
            else:
                outcomes[i] = RouteOutcome(
                    "add", route, "error", "EEXIST: a route appeared and vanished meanwhile"
                )
        if ours_elsewhere:
            again = [routes[i] for i in ours_elsewhere]
            flags = rc.NLM_F_CREATE | rc.NLM_F_REPLACE
            results = self._batch(rc.RTM_NEWROUTE, flags, again, gateway=True)
            for i, (err, msg) in zip(ours_elsewhere, results, strict=True):
                outcomes[i] = _outcome("add", routes[i], err, msg)
        return outcomes

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
        """
        chan = self._chan
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
            results.extend(self._send_and_collect(out, length, base, count))
            start += count
        return results

    def _send_and_collect(
        self, out: bytearray, length: int, base: int, count: int
    ) -> list[tuple[int, str]]:
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
                if header.msg_type != rc.NLMSG_ERROR:
                    continue
                index = (header.seq - base) & 0xFFFFFFFF
                if index < count:
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
