"""The built-in vxlan overlay's rules, pure: names, addresses and MACs every node derives
the same way from what it already sees of the others (no extra API objects, no RBAC).

- **Device**: one vxlan device per instance, ``xcvx<protocol>`` unless ``VXLAN_DEVICE``
  names one, VNI ``VXLAN_ID`` (default: the protocol number), UDP ``VXLAN_PORT`` (8472).
  Instances have distinct protocol numbers, so their defaults never clash.
- **Underlay**: a node's address of the underlay family (IPv4 when this node has an IPv4
  address, else IPv6): the InternalIP or ``ADDRESS_ANNOTATION``, as for direct routes.
- **VTEP address** (the next hop of the routes into the overlay): per family, the network
  address of the node's pod CIDR of that family (``10.244.1.0``, ``fd00:10:244:1::``).
  Never a packet's destination: only the key of a permanent neighbour entry.
- **VTEP MAC** (the device address of a node, and the neighbour entry's lladdr),
  locally administered unicast, from the node's underlay address: IPv4 ``a.b.c.d`` ->
  ``0e:04:a:b:c:d``; IPv6 -> ``0e:06:`` + the first four bytes of the SHA-256 of the 16
  address bytes.
- **MTU**: the underlay interface's MTU less the encapsulation (50 bytes over IPv4, 70
  over IPv6).

Planning (``DesiredOverlay``, kept up to date node by node by the overlay reconciler):
the own node's underlay address gives the device (``VxlanDevice``: name, VNI, port,
local address, MAC; the kernel side finds the interface holding the address and its
MTU). Every other node is a ``Peer`` with one permanent neighbour entry per VTEP
address (-> its VTEP MAC) and one permanent FDB entry (its VTEP MAC -> its underlay
address), both on the device. Named ``Problem``s instead of entries: a node without an
address of the underlay family; a node whose underlay address is the own node's or
another node's (one MAC for two nodes), or whose VTEP address another node also has
(overlapping pod CIDRs with the same network address) -- then all of them are skipped
until the clash ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import attrs

from xcluster_cni_lib.core.values import IPAddress, IPNetwork, NodeNetwork, Problem

DEFAULT_VXLAN_PORT = 8472
#: Outer IP + UDP + vxlan + inner Ethernet headers.
VXLAN_OVERHEAD = {4: 50, 6: 70}
DEVICE_PREFIX = "xcvx"


def default_device(protocol: int) -> str:
    """The vxlan device of the instance with this route protocol."""
    return f"{DEVICE_PREFIX}{protocol}"


def vtep_mac(underlay: IPAddress) -> str:
    """The VTEP MAC of the node with this underlay address (see the module doc)."""
    if underlay.version == 4:
        tail = underlay.packed
        kind = 0x04
    else:
        tail = hashlib.sha256(underlay.packed).digest()[:4]
        kind = 0x06
    return ":".join(f"{b:02x}" for b in (0x0E, kind, *tail))


def vtep_address(cidr: IPNetwork) -> IPAddress:
    """The VTEP address of a pod CIDR: its network address."""
    return cidr.network_address


def underlay_family(own: NodeNetwork | None) -> int | None:
    """The underlay family: IPv4 when the own node has an IPv4 address, else IPv6;
    None when it has no address at all."""
    if own is None:
        return None
    if own.address(4) is not None:
        return 4
    if own.address(6) is not None:
        return 6
    return None


def route_underlay_family(own: NodeNetwork | None, networks: Iterable[NodeNetwork]) -> int | None:
    """The underlay family the routes are planned for: the own node's
    (``underlay_family``); while the own node is not among the nodes (deleted, not yet
    listed), IPv4 when any node has an IPv4 address, else IPv6, so that a missing own
    Node does not take every route away (its overlay device and entries stay as they
    are meanwhile)."""
    if own is not None:
        return underlay_family(own)
    addresses = [a for n in networks for a in n.addresses]
    if any(a.version == 4 for a in addresses):
        return 4
    return 6 if addresses else None


def overlay_mtu(underlay_mtu: int, family: int) -> int:
    """The MTU inside the overlay for an underlay interface MTU."""
    return underlay_mtu - VXLAN_OVERHEAD[family]


# --- the desired state ------------------------------------------------------------------


@attrs.frozen
class OverlaySettings:
    """One instance's overlay settings: device name, VNI and UDP port."""

    device: str
    vni: int
    port: int = DEFAULT_VXLAN_PORT


@attrs.frozen
class VxlanDevice:
    """The vxlan device this node wants: bound to its underlay address ``local`` (the
    kernel side finds the interface holding it, and the MTU from that interface's),
    learning off, device address ``mac`` (``vtep_mac(local)``)."""

    name: str
    vni: int
    port: int
    local: IPAddress
    mac: str

    @property
    def family(self) -> int:
        """The underlay family."""
        return self.local.version


@attrs.frozen
class Neighbour:
    """A permanent neighbour entry on the vxlan device: VTEP address -> VTEP MAC.
    ``node`` is informational (not compared)."""

    address: IPAddress
    mac: str
    node: str = attrs.field(default="", eq=False)


@attrs.frozen
class Fdb:
    """A permanent forwarding-database entry on the vxlan device: VTEP MAC -> the
    node's underlay address. ``node`` is informational (not compared)."""

    mac: str
    dst: IPAddress
    node: str = attrs.field(default="", eq=False)


@attrs.frozen
class Peer:
    """Another node as the overlay sees it: its underlay address, VTEP MAC and VTEP
    addresses (one per family it has a pod CIDR in)."""

    node: str
    underlay: IPAddress
    mac: str
    vteps: tuple[IPAddress, ...] = ()

    def neighbours(self) -> tuple[Neighbour, ...]:
        return tuple(Neighbour(v, self.mac, self.node) for v in self.vteps)

    def fdb(self) -> Fdb:
        return Fdb(self.mac, self.underlay, self.node)


@attrs.frozen
class EntryPlan:
    """What to change among the entries of the vxlan device: ``put`` is added or
    replaced (netlink create + replace), ``delete`` removed."""

    put_neighbours: tuple[Neighbour, ...] = ()
    put_fdb: tuple[Fdb, ...] = ()
    delete_neighbours: tuple[Neighbour, ...] = ()
    delete_fdb: tuple[Fdb, ...] = ()

    def __bool__(self) -> bool:
        return bool(len(self))

    def __len__(self) -> int:
        return (
            len(self.put_neighbours)
            + len(self.put_fdb)
            + len(self.delete_neighbours)
            + len(self.delete_fdb)
        )

    def without_deletes(self) -> EntryPlan:
        return EntryPlan(put_neighbours=self.put_neighbours, put_fdb=self.put_fdb)


@attrs.frozen
class Entries:
    """The entries of the vxlan device, as planned or as found: neighbour entries by
    VTEP address (their MAC), FDB entries by MAC (their destination)."""

    neighbours: Mapping[IPAddress, str] = attrs.field(factory=dict)
    fdb: Mapping[str, IPAddress] = attrs.field(factory=dict)


def peer_of(network: NodeNetwork, family: int) -> Peer | Problem:
    """The peer of another node over an underlay of ``family``, or why it has none."""
    underlay = network.address(family)
    if underlay is None:
        return Problem(
            network.name,
            f"no IPv{family} node address for the overlay's IPv{family} underlay",
        )
    vteps = tuple(vtep_address(c) for c in network.cidrs)
    return Peer(network.name, underlay, vtep_mac(underlay), vteps)


def plan_entries(
    wanted: Entries,
    present: Entries,
    *,
    neighbours: Iterable[IPAddress] | None = None,
    fdb: Iterable[str] | None = None,
) -> EntryPlan:
    """The changes that turn ``present`` into ``wanted``, over all keys or (when given)
    only over these VTEP addresses / MACs."""
    wn, pn, wf, pf = wanted.neighbours, present.neighbours, wanted.fdb, present.fdb
    n_keys: Iterable[IPAddress] = neighbours if neighbours is not None else {*wn, *pn}
    f_keys: Iterable[str] = fdb if fdb is not None else {*wf, *pf}
    put_n: list[Neighbour] = []
    del_n: list[Neighbour] = []
    for addr in n_keys:
        want, have = wn.get(addr), pn.get(addr)
        if want is not None and want != have:
            put_n.append(Neighbour(addr, want))
        elif want is None and have is not None:
            del_n.append(Neighbour(addr, have))
    put_f: list[Fdb] = []
    del_f: list[Fdb] = []
    for mac in f_keys:
        wdst, hdst = wf.get(mac), pf.get(mac)
        if wdst is not None and wdst != hdst:
            put_f.append(Fdb(mac, wdst))
        elif wdst is None and hdst is not None:
            del_f.append(Fdb(mac, hdst))
    return EntryPlan(tuple(put_n), tuple(put_f), tuple(del_n), tuple(del_f))


class DesiredOverlay:
    """The overlay one node wants, kept up to date node by node (``update``).

    ``device`` is None when the own node is unknown or has no address (then nothing
    can be planned: ``problems`` says why). A peer whose underlay address another node
    (the own one included) also has, or whose VTEP address another peer also has, gets
    no entries: both are named problems (a shared MAC or VTEP would send one node's
    traffic to the other)."""

    def __init__(
        self, networks: Iterable[NodeNetwork], *, own: str | None, settings: OverlaySettings
    ) -> None:
        self.settings = settings
        self.own = own
        nets = {n.name: n for n in networks}
        own_net = nets.get(own) if own is not None else None
        family = underlay_family(own_net)
        self.family = family
        self.own_problem: Problem | None = None
        self.device: VxlanDevice | None = None
        if own_net is None or family is None:
            why = (
                "the own node is unknown"
                if own is None
                else f"the own node {own} is not among the nodes"
                if own_net is None
                else "the own node has no node address"
            )
            self.own_problem = Problem(own or "?", f"no overlay device: {why}")
        else:
            local = own_net.address(family)
            assert local is not None
            self.device = VxlanDevice(
                settings.device, settings.vni, settings.port, local, vtep_mac(local)
            )
        self.networks: dict[str, NodeNetwork] = {}
        self.candidates: dict[str, Peer] = {}  # every other node with an underlay address
        self.peers: dict[str, Peer] = {}  # those that get entries
        self.skipped: dict[str, Problem] = {}
        self.neighbours: dict[IPAddress, Neighbour] = {}
        self.fdb: dict[str, Fdb] = {}
        # the same, flat: what ``entries`` returns (kept, not built per call)
        self._macs: dict[IPAddress, str] = {}
        self._dsts: dict[str, IPAddress] = {}
        self._by_underlay: dict[IPAddress, set[str]] = {}
        self._by_vtep: dict[IPAddress, set[str]] = {}
        if self.device is not None:
            self.update({n: net for n, net in nets.items() if n != own})

    def entries(self) -> Entries:
        """The wanted entries: a live view, changed by the next ``update``."""
        return Entries(self._macs, self._dsts)

    def problems(self) -> list[Problem]:
        out = [] if self.own_problem is None else [self.own_problem]
        out.extend(self.skipped[n] for n in sorted(self.skipped))
        return out

    def update(self, changes: Mapping[str, NodeNetwork | None]) -> tuple[set[IPAddress], set[str]]:
        """Take these nodes' new networks (None: deleted; the own node must not be among
        them); the VTEP addresses and MACs whose wanted entries may have changed."""
        if self.device is None:
            return set(), set()
        family = self.device.family
        local = self.device.local
        affected: set[str] = set()
        for name, net in changes.items():
            if name == self.own:
                continue
            affected.add(name)
            old = self.candidates.pop(name, None)
            if old is not None:
                self._unindex(old)
                affected |= self._sharing(old)
            self.networks.pop(name, None)
            self.skipped.pop(name, None)
            if net is None:
                continue
            self.networks[name] = net
            found = peer_of(net, family)
            if isinstance(found, Problem):
                self.skipped[name] = found
                continue
            self.candidates[name] = found
            self._index(found)
            affected |= self._sharing(found)
        touched_n: set[IPAddress] = set()
        touched_f: set[str] = set()
        # first take every affected peer's entries out, then put the valid ones back
        # (two peers may have swapped addresses: no removal may hit a new entry)
        for name in affected:
            old_peer = self.peers.pop(name, None)
            if old_peer is None:
                continue
            for n in old_peer.neighbours():
                touched_n.add(n.address)
                self.neighbours.pop(n.address, None)
                self._macs.pop(n.address, None)
            touched_f.add(old_peer.mac)
            self.fdb.pop(old_peer.mac, None)
            self._dsts.pop(old_peer.mac, None)
        for name in affected:
            peer = self.candidates.get(name)
            if peer is None:
                continue
            problem = self._conflict(peer, local)
            if problem is not None:
                self.skipped[name] = problem
                continue
            self.skipped.pop(name, None)
            self.peers[name] = peer
            for n in peer.neighbours():
                touched_n.add(n.address)
                self.neighbours[n.address] = n
                self._macs[n.address] = n.mac
            touched_f.add(peer.mac)
            self.fdb[peer.mac] = peer.fdb()
            self._dsts[peer.mac] = peer.underlay
        return touched_n, touched_f

    def _index(self, peer: Peer) -> None:
        self._by_underlay.setdefault(peer.underlay, set()).add(peer.node)
        for v in peer.vteps:
            self._by_vtep.setdefault(v, set()).add(peer.node)

    def _unindex(self, peer: Peer) -> None:
        for index, key in (
            (self._by_underlay, peer.underlay),
            *((self._by_vtep, v) for v in peer.vteps),
        ):
            names = index.get(key)
            if names is not None:
                names.discard(peer.node)
                if not names:
                    del index[key]

    def _sharing(self, peer: Peer) -> set[str]:
        out = set(self._by_underlay.get(peer.underlay, ()))
        for v in peer.vteps:
            out |= self._by_vtep.get(v, set())
        return out

    def _conflict(self, peer: Peer, local: IPAddress) -> Problem | None:
        if peer.underlay == local:
            return Problem(peer.node, "has the own node's underlay address", "address", str(local))
        others = self._by_underlay.get(peer.underlay, set()) - {peer.node}
        if others:
            return Problem(
                peer.node,
                f"shares its underlay address with {', '.join(sorted(others))}",
                "address",
                str(peer.underlay),
            )
        for v in peer.vteps:
            others = self._by_vtep.get(v, set()) - {peer.node}
            if others:
                return Problem(
                    peer.node,
                    f"shares its VTEP address with {', '.join(sorted(others))}",
                    "vtep",
                    str(v),
                )
        return None


def plan_overlay(
    networks: Iterable[NodeNetwork], *, own: str | None, settings: OverlaySettings
) -> DesiredOverlay:
    """The overlay the own node wants among ``networks`` (see ``DesiredOverlay``)."""
    return DesiredOverlay(networks, own=own, settings=settings)


# --- what the kernel side reports -------------------------------------------------------


@attrs.frozen
class EntryOutcome:
    """The result of one entry operation: ``op`` ``put``/``delete``, ``entry`` a
    ``Neighbour`` or ``Fdb``; ``error`` 0 or the errno (a delete of an entry that is
    already gone counts as success), ``reason`` the kernel's message."""

    op: str
    entry: Neighbour | Fdb
    error: int = 0
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.error == 0


@attrs.frozen
class DeviceOutcome:
    """What making the device right took: ``action`` ``unchanged``, ``created``,
    ``recreated`` (an attribute that cannot change in place differed: the kernel
    dropped its entries with it) or ``updated`` (MTU, address or up changed in place);
    the device's index, the underlay interface (name, index), the MTU set and the
    underlay interface's MTU."""

    action: str
    ifindex: int
    lower: str
    lower_index: int
    mtu: int
    lower_mtu: int = 0


@attrs.frozen
class KernelChanges:
    """What the kernel reported about the vxlan device since the last time it was
    asked: ``device`` (deleted, changed, or its underlay interface changed: take the
    device and every entry again), and per key the entry now present (None: gone or
    not permanent) for neighbour entries (VTEP address -> MAC) and FDB entries
    (MAC -> destination)."""

    device: bool = False
    neighbours: Mapping[IPAddress, str | None] = attrs.field(factory=dict)
    fdb: Mapping[str, IPAddress | None] = attrs.field(factory=dict)
