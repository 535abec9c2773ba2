"""The vxlan overlay in the kernel: the device, its permanent neighbour and FDB entries,
and a monitor of the events that concern them (the self-heal trigger).

Raw rtnetlink like the route table (``channel`` + ``vxlancodec``): the nested
``IFLA_LINKINFO`` of a vxlan link is a few ``struct.pack`` calls, so ``pyroute2`` is
not needed here; a named namespace is entered only to open the socket
(``channel.open_socket``: a short-lived thread, no fork). Reading and setting a plain
link by name or index is ``links``'s (``get_link``, ``set_link``).

Ownership: the device named in the settings is ours, and so is every *permanent*
neighbour entry (``AF_INET``/``AF_INET6``) and every FDB entry (``AF_BRIDGE``,
``NTF_SELF``) on it; nothing on any other device is read or written. Entries the kernel
makes itself (non-permanent neighbour entries, e.g. a failed resolution) are left to the
kernel's garbage collection. An FDB entry is one destination per MAC: extra
destinations appended to one of our MACs by hand are not removed (only the first one is
compared and replaced).
"""

from __future__ import annotations

import errno
import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from xcluster_cni_lib.core.overlay import (
    DeviceOutcome,
    Entries,
    EntryOutcome,
    EntryPlan,
    Fdb,
    KernelChanges,
    Neighbour,
    VxlanDevice,
    overlay_mtu,
)
from xcluster_cni_lib.core.values import IPAddress
from xcluster_cni_lib.kernel import codec as rc
from xcluster_cni_lib.kernel import vxlancodec as vc
from xcluster_cni_lib.kernel.channel import (
    BATCH_BYTES,
    RCVBUF_BYTES,
    Channel,
    NetlinkError,
    group_mask,
    grow_receive_buffer,
    open_socket,
)
from xcluster_cni_lib.kernel.dumps import packed_address
from xcluster_cni_lib.kernel.links import get_link, list_interface_addresses, set_link
from xcluster_cni_lib.support import jsonlog

log = jsonlog.get_logger(__name__)

#: Tries of a dump that concurrent changes interrupted.
DUMP_TRIES: Final = 5
_FAMILIES: Final = (rc.AF_INET, rc.AF_INET6)


class OverlayKernelError(Exception):
    """The device cannot be made as wanted (no interface holds the underlay address,
    another kind of link has the name, the kernel refused); the message says why."""


@contextmanager
def _overlay_errors() -> Iterator[None]:
    """A kernel refusal (NetlinkError) as an OverlayKernelError with the kernel's reason."""
    try:
        yield
    except NetlinkError as e:
        raise OverlayKernelError(f"{e.strerror}") from e


def _is_permanent(state: int) -> bool:
    return bool(state & vc.NUD_PERMANENT)


class VxlanKernel:
    """The overlay's kernel port, in network namespace ``netns`` (None: this one)."""

    def __init__(self, netns: str | None = None, *, monitor: bool = True) -> None:
        self.netns = netns
        #: the event monitor (run it in a thread: ``monitor.run(on_change, stop)``)
        self.monitor = VxlanMonitor(netns) if monitor else None
        self._chan = Channel(netns)
        self._lock = threading.Lock()
        self._out = bytearray(BATCH_BYTES)

    def close(self) -> None:
        self._chan.close()
        if self.monitor is not None:
            self.monitor.close()

    def take_changes(self) -> KernelChanges | None:
        """What the monitor saw since the last call (None: unknown, list everything;
        always None without a monitor)."""
        return self.monitor.take() if self.monitor is not None else None

    # -- the device ------------------------------------------------------------------------

    def link(self, name: str) -> vc.VxlanLink | None:
        """The link called ``name`` (any kind), or None (``links.get_link``)."""
        with self._lock:
            return get_link(self._chan, name)

    def underlay(self, local: IPAddress) -> tuple[str, int, int]:
        """(name, index, MTU) of the interface holding ``local``. Raises
        OverlayKernelError when none does."""
        for a in list_interface_addresses(self.netns):
            if a.address == local:
                link = self.link(a.interface)
                if link is not None:
                    return link.name, link.ifindex, link.mtu
        raise OverlayKernelError(f"no interface holds the node address {local}")

    def ensure_device(self, want: VxlanDevice) -> DeviceOutcome:
        """Make the device as wanted (see ``_ensure``) and tell the monitor about it."""
        result = self._ensure(want)
        if self.monitor is not None:
            self.monitor.watch(
                want.name,
                result.ifindex,
                mtu=result.mtu,
                mac=want.mac,
                lower=result.lower_index,
                lower_mtu=result.lower_mtu,
            )
        return result

    def _ensure(self, want: VxlanDevice) -> DeviceOutcome:
        """Make the device as wanted: create it, change MTU/address/up in place, or
        delete and create it again when the VNI, port, local address, underlay
        interface or learning differ (or a link of another kind has the name, if it is
        a vxlan link: others are an error, never deleted)."""
        lower_name, lower_index, lower_mtu = self.underlay(want.local)
        mtu = overlay_mtu(lower_mtu, want.family)
        current = self.link(want.name)
        action = "created"
        if current is not None:
            if current.kind != "vxlan":
                kind = current.kind or "a physical"
                raise OverlayKernelError(
                    f"{want.name} exists and is {kind} link, not a vxlan device; "
                    "set VXLAN_DEVICE to another name"
                )
            same = (
                current.vni == want.vni
                and current.port == want.port
                and current.local == want.local.packed
                and current.lower == lower_index
                and not current.learning
            )
            if same:
                if current.mtu == mtu and current.mac == want.mac and current.flags & rc.IFF_UP:
                    return DeviceOutcome(
                        "unchanged", current.ifindex, lower_name, lower_index, mtu, lower_mtu
                    )
                self.set_link(current.ifindex, mac=want.mac, mtu=mtu)
                return DeviceOutcome(
                    "updated", current.ifindex, lower_name, lower_index, mtu, lower_mtu
                )
            self._simple(lambda seq: vc.link_delete_request(seq=seq, ifindex=current.ifindex))
            action = "recreated"
        self._simple(
            lambda seq: vc.vxlan_create_request(
                seq=seq,
                name=want.name,
                vni=want.vni,
                port=want.port,
                local=want.local.packed,
                lower=lower_index,
                mac=want.mac,
                mtu=mtu,
            )
        )
        made = self.link(want.name)
        if made is None:
            raise OverlayKernelError(f"{want.name} vanished right after it was created")
        return DeviceOutcome(action, made.ifindex, lower_name, lower_index, mtu, lower_mtu)

    def delete_device(self, name: str) -> bool:
        """Delete our vxlan device (not a link of another kind); whether one was there."""
        current = self.link(name)
        if current is None or current.kind != "vxlan":
            return False
        try:
            self._simple(lambda seq: vc.link_delete_request(seq=seq, ifindex=current.ifindex))
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    def set_link(self, ifindex: int, *, mac: str, mtu: int) -> None:
        """Set a link's address and MTU and bring it up (any kind of link;
        ``links.set_link`` under this kernel's lock). Raises OverlayKernelError."""
        with self._lock, _overlay_errors():
            set_link(self._chan, ifindex, mac=mac, mtu=mtu)

    def _simple(self, make: Callable[[int], bytes]) -> None:
        """Send the request ``make(seq)`` and wait for its ack. Raises OverlayKernelError."""
        with self._lock, _overlay_errors():
            seq = self._chan.next_seq()
            self._chan.request(make(seq), seq)

    # -- entries ---------------------------------------------------------------------------

    def list_entries(self, ifindex: int) -> Entries:
        """The permanent neighbour entries and the FDB entries of device ``ifindex``."""
        neighbours: dict[IPAddress, str] = {}
        fdb: dict[str, IPAddress] = {}
        with self._lock:
            for family in (*_FAMILIES, vc.AF_BRIDGE):
                for msg in self._dump_neighbours(family, ifindex):
                    if msg.ifindex != ifindex or msg.dst is None or msg.lladdr is None:
                        continue
                    if family == vc.AF_BRIDGE:
                        if not msg.flags & vc.NTF_SELF or len(msg.dst) not in (4, 16):
                            continue
                        fam = rc.AF_INET if len(msg.dst) == 4 else rc.AF_INET6
                        fdb.setdefault(vc.mac_text(msg.lladdr), packed_address(fam, msg.dst))
                    elif _is_permanent(msg.state):
                        neighbours[packed_address(family, msg.dst)] = vc.mac_text(msg.lladdr)
        return Entries(neighbours, fdb)

    def _dump_neighbours(self, family: int, ifindex: int) -> list[vc.NeighbourMessage]:
        chan = self._chan
        for attempt in range(DUMP_TRIES):
            seq = chan.next_seq()
            request = vc.neighbour_dump_request(seq=seq, family=family, ifindex=ifindex)
            try:
                return [
                    vc.parse_neighbour(view, header)
                    for view, header in chan.dump(request, seq)
                    if header.msg_type == vc.RTM_NEWNEIGH
                ]
            except NetlinkError as e:
                if e.errno != errno.EAGAIN or attempt == DUMP_TRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def apply(self, ifindex: int, plan: EntryPlan) -> list[EntryOutcome]:
        """Apply an entry plan to device ``ifindex`` in batches; one outcome per entry."""
        ops: list[tuple[str, Neighbour | Fdb]] = [
            *(("delete", n) for n in plan.delete_neighbours),
            *(("delete", f) for f in plan.delete_fdb),
            *(("put", f) for f in plan.put_fdb),
            *(("put", n) for n in plan.put_neighbours),
        ]
        outcomes: list[EntryOutcome] = []
        with self._lock:
            chan, out = self._chan, self._out
            start = 0
            while start < len(ops):
                chunk = ops[start : start + chan.batch_messages]
                base = chan.next_seq(len(chunk))
                offset = count = 0
                for i, (op, entry) in enumerate(chunk):
                    # the last one asks for an ack: then every error of the batch was read
                    extra = rc.NLM_F_ACK if i == len(chunk) - 1 else 0
                    msg = _encode(op, entry, seq=base + i, ifindex=ifindex, extra_flags=extra)
                    out[offset : offset + len(msg)] = msg
                    offset += len(msg)
                    count += 1
                results = chan.exchange(out, offset, base, count)
                for (op, entry), (error, reason) in zip(chunk[:count], results, strict=True):
                    if error and op == "delete" and error in (errno.ENOENT, errno.ESRCH):
                        error = 0  # already gone
                    outcomes.append(EntryOutcome(op, entry, error, reason))
                start += count
        return outcomes


def _encode(op: str, entry: Neighbour | Fdb, *, seq: int, ifindex: int, extra_flags: int) -> bytes:
    if isinstance(entry, Neighbour):
        address = entry.address.packed
        if op == "put":
            return vc.neighbour_put(
                seq=seq, ifindex=ifindex, address=address, mac=entry.mac, extra_flags=extra_flags
            )
        return vc.neighbour_delete(
            seq=seq, ifindex=ifindex, address=address, extra_flags=extra_flags
        )
    if op == "put":
        return vc.fdb_put(
            seq=seq, ifindex=ifindex, mac=entry.mac, dst=entry.dst.packed, extra_flags=extra_flags
        )
    return vc.fdb_delete(seq=seq, ifindex=ifindex, mac=entry.mac, extra_flags=extra_flags)


_GROUPS: Final = group_mask(rc.RTNLGRP_LINK, vc.RTNLGRP_NEIGH)


class VxlanMonitor:
    """Link and neighbour events of the vxlan device (and of its underlay interface):
    what ``take`` reports. Everything else (other devices' neighbours, pod veths coming
    and going) is dropped after decoding the 12-byte header.

    ``watch`` tells it the device as made; until then only link events naming the
    device count. ``run`` reads events in its own thread and calls ``on_change()``
    when one mattered."""

    def __init__(self, netns: str | None = None) -> None:
        self.sock = open_socket(netns, groups=_GROUPS)
        grow_receive_buffer(self.sock, RCVBUF_BYTES)
        self.sock.setblocking(False)
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._buf = bytearray(1 << 16)
        self._name = ""
        self._ifindex = 0
        self._lower = 0
        self._link: tuple[int, str, bool] | None = None  # (mtu, mac, up) as made
        self._lower_mtu = 0
        self._device = False
        self._lost = False
        self._neighbours: dict[IPAddress, str | None] = {}
        self._fdb: dict[str, IPAddress | None] = {}
        self.events = 0  # events that concerned the device

    def close(self) -> None:
        self.sock.close()

    def watch(
        self, name: str, ifindex: int, *, mtu: int, mac: str, lower: int, lower_mtu: int
    ) -> None:
        """The device as just made: the link events queued so far are our own making
        of it (read and forgotten); later ones count when they differ from this."""
        self.drain()
        with self._lock:
            self._device = False
            self._name = name
            self._ifindex = ifindex
            self._link = (mtu, mac, True)
            self._lower = lower
            self._lower_mtu = lower_mtu

    def take(self) -> KernelChanges | None:
        """What changed since the last call (events read so far, plus any pending);
        None when events were lost (receive buffer overrun): list everything."""
        self.drain()
        with self._lock:
            lost, self._lost = self._lost, False
            changes = KernelChanges(self._device, self._neighbours, self._fdb)
            self._device = False
            self._neighbours = {}
            self._fdb = {}
        return None if lost else changes

    def drain(self) -> bool:
        """Read every pending event; whether one concerned the device."""
        with self._read_lock:  # one reader at a time: events are applied in order
            return self._drain()

    def _drain(self) -> bool:
        relevant = False
        buf = self._buf
        view = memoryview(buf)
        while True:
            try:
                n = self.sock.recv_into(buf)
            except BlockingIOError:
                return relevant
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                with self._lock:
                    self._lost = True
                relevant = True
                continue
            with self._lock:
                relevant |= self._process(view, n)

    def _process(self, view: memoryview, n: int) -> bool:
        relevant = False
        for header in rc.iter_messages(view, n):
            kind = header.msg_type
            if kind in (vc.RTM_NEWNEIGH, vc.RTM_DELNEIGH):
                family, ifindex = vc.neighbour_ifindex(view, header)
                if ifindex != self._ifindex or not ifindex:
                    continue
                msg = vc.parse_neighbour(view, header)
                if msg.dst is None:
                    continue
                new = kind == vc.RTM_NEWNEIGH
                if family == vc.AF_BRIDGE:
                    if msg.lladdr is None or len(msg.dst) not in (4, 16):
                        continue
                    fam = rc.AF_INET if len(msg.dst) == 4 else rc.AF_INET6
                    dst = packed_address(fam, msg.dst)
                    self._fdb[vc.mac_text(msg.lladdr)] = dst if new else None
                elif family in _FAMILIES:
                    mac = (
                        vc.mac_text(msg.lladdr)
                        if new and msg.lladdr is not None and _is_permanent(msg.state)
                        else None
                    )
                    self._neighbours[packed_address(family, msg.dst)] = mac
                else:
                    continue
                relevant = True
                self.events += 1
            elif kind in (rc.RTM_NEWLINK, rc.RTM_DELLINK):
                link = vc.parse_vxlan_link(view, header)
                if self._link_matters(kind, link):
                    self._device = True
                    relevant = True
                    self.events += 1
        return relevant

    def _link_matters(self, kind: int, link: vc.VxlanLink) -> bool:
        if self._ifindex and link.ifindex == self._ifindex:
            if kind == rc.RTM_DELLINK:
                return True
            up = bool(link.flags & rc.IFF_UP)
            return self._link is None or (link.mtu, link.mac, up) != self._link
        if self._lower and link.ifindex == self._lower:
            return kind == rc.RTM_DELLINK or link.mtu != self._lower_mtu
        # a link taking our name (someone made one) while we had none or another index
        return bool(self._name) and link.name == self._name and link.ifindex != self._ifindex

    def run(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        """Read events until ``stop`` is set; ``on_change()`` after relevant ones."""
        while not stop.is_set():
            try:
                ready, _, _ = select.select([self.sock], [], [], 0.2)
            except (OSError, ValueError):
                if stop.is_set():
                    return
                raise
            if ready and self.drain():
                on_change()
