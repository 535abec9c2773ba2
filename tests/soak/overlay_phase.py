"""The soak campaign's overlay phase: what a daemon running with ``OVERLAY=vxlan`` and
``MASQUERADE=true`` must hold, computed here from the node list by the rules of
docs/overlay.md and docs/egress.md (only the names, ``vtep_address`` and ``vtep_mac`` come
from ``core.overlay``; contests, peers and set contents are worked out independently),
and readers of what the kernel holds (``ip``, ``bridge``, ``nft``, as a person would)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections import Counter
from collections.abc import Iterable
from typing import Any

import attrs

from xcluster_cni_lib.core.overlay import default_device, vtep_address, vtep_mac
from xcluster_cni_lib.core.values import IPAddress, IPNetwork, NodeNetwork, Route
from xcluster_cni_lib.testing.netns import run_in

SET_NAMES = ("local4", "local6", "cluster4", "cluster6")


def device_name(protocol: int) -> str:
    return default_device(protocol)


def table_name(protocol: int) -> str:
    return f"xcluster-cni-{protocol}"


@attrs.frozen
class OverlayState:
    """The overlay entries and masquerade sets of one instance (wanted or found)."""

    device_mac: str | None  # None: no device
    neighbours: frozenset[tuple[IPAddress, str]]  # (VTEP address, MAC), permanent
    fdb: frozenset[tuple[str, IPAddress]]  # (MAC, underlay address), with a destination
    sets: tuple[tuple[str, frozenset[IPNetwork]], ...] | None  # None: no table

    def diff(self, other: OverlayState) -> str:
        """What ``other`` (found) lacks and has extra, compared with ``self`` (wanted)."""
        parts: list[str] = []
        if self.device_mac != other.device_mac:
            parts.append(f"device mac {other.device_mac} (want {self.device_mac})")
        for what, want, have in (
            ("neighbours", self.neighbours, other.neighbours),
            ("fdb", self.fdb, other.fdb),
        ):
            missing, extra = want - have, have - want
            if missing or extra:
                parts.append(
                    f"{what}: missing {len(missing)} {_few(missing)}, extra {len(extra)} "
                    f"{_few(extra)}"
                )
        if self.sets != other.sets:
            if other.sets is None:
                parts.append("no nft table")
            else:
                have_sets = dict(other.sets)
                for name, want_set in self.sets or ():
                    got = have_sets.get(name)
                    if got is None:
                        parts.append(f"set {name} missing")
                    elif got != want_set:
                        lost, more = want_set - got, got - want_set
                        parts.append(f"set {name}: missing {_few(lost)}, extra {_few(more)}")
        return "; ".join(parts) or "equal"


def _few(items: Iterable[Any], n: int = 3) -> str:
    return "[" + ", ".join(sorted(str(i) for i in items)[:n]) + "]"


def _contested(networks: list[NodeNetwork]) -> set[tuple[str, IPNetwork]]:
    """(node, CIDR) pairs whose CIDR overlaps (or equals) another CIDR of the list: a
    sweep over address intervals per family (pod CIDRs are aligned: they nest or are
    disjoint, so one overlapping the longest-reaching earlier one marks both)."""
    out: set[tuple[str, IPNetwork]] = set()
    for family in (4, 6):
        spans = sorted(
            (int(c.network_address), int(c.broadcast_address) + 1, n.name, c)
            for n in networks
            for c in n.cidrs
            if c.version == family
        )
        reach = -1
        holder: tuple[str, IPNetwork] | None = None
        for start, end, name, cidr in spans:
            if start < reach and holder is not None:
                out.add((name, cidr))
                out.add(holder)
            if end > reach:
                reach, holder = end, (name, cidr)
    return out


def expected_overlay(
    networks: list[NodeNetwork], *, own: str, device: str, masquerade: bool = True
) -> tuple[set[Route], OverlayState]:
    """The overlay routes and the overlay state the instance on node ``own`` wants."""
    by_name = {n.name: n for n in networks}
    mine = by_name.get(own)
    assert mine is not None, "the soak's real nodes are never deleted"
    family = 4 if mine.address(4) is not None else 6
    local = mine.address(family)
    assert local is not None
    own_addresses = set(mine.addresses)
    contested = _contested(networks)
    routes: set[Route] = set()
    peers: list[tuple[str, IPAddress, tuple[IPAddress, ...]]] = []
    for n in networks:
        if n.name == own:
            continue
        underlay = n.address(family)
        if underlay is None:
            continue  # no route, no entries (a named problem in the daemon)
        peers.append((n.name, underlay, tuple(vtep_address(c) for c in n.cidrs)))
        if underlay in own_addresses:
            continue
        for cidr in n.cidrs:
            if (n.name, cidr) not in contested:
                routes.add(Route(cidr, vtep_address(cidr), node=n.name, device=device))
    # A peer whose underlay address or one of whose VTEP addresses another peer also has,
    # or whose underlay address is this node's, gets no entries.
    underlays = Counter(u for _, u, _ in peers)
    vteps = Counter(v for _, _, vs in peers for v in set(vs))
    neighbours: set[tuple[IPAddress, str]] = set()
    fdb: set[tuple[str, IPAddress]] = set()
    for _, underlay, vs in peers:
        if underlay == local or underlays[underlay] > 1 or any(vteps[v] > 1 for v in vs):
            continue
        mac = vtep_mac(underlay)
        fdb.add((mac, underlay))
        neighbours.update((v, mac) for v in vs)
    sets = None
    if masquerade:
        local_cidrs = list(mine.cidrs)
        cluster_cidrs = [c for n in networks for c in n.cidrs]
        sets = tuple(
            (name, _canonical(src, int(name[-1])))
            for name, src in (
                ("local4", local_cidrs),
                ("local6", local_cidrs),
                ("cluster4", cluster_cidrs),
                ("cluster6", cluster_cidrs),
            )
        )
    state = OverlayState(vtep_mac(local), frozenset(neighbours), frozenset(fdb), sets)
    return routes, state


def _canonical(networks: Iterable[IPNetwork], family: int) -> frozenset[IPNetwork]:
    nets = [n for n in networks if n.version == family]
    return frozenset(ipaddress.collapse_addresses(nets))  # type: ignore[type-var]


# -- the kernel side --------------------------------------------------------------------


def _run(argv: list[str]) -> str:
    """``ip -n``/``bridge -n`` (one process; ``ip netns exec`` would be two)."""
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def read_device_mac(ns: str, device: str) -> str | None:
    found = json.loads(_run(["ip", "-n", ns, "-j", "link", "show", "dev", device]) or "[]")
    return str(found[0].get("address")) if found else None


def read_neighbours(ns: str, device: str) -> frozenset[tuple[IPAddress, str]]:
    out: set[tuple[IPAddress, str]] = set()
    for family in ("-4", "-6"):
        text = _run(
            ["ip", "-n", ns, "-j", family, "neigh", "show", "dev", device, "nud", "permanent"]
        )
        for e in json.loads(text or "[]"):
            if e.get("lladdr"):
                out.add((ipaddress.ip_address(e["dst"]), str(e["lladdr"])))
    return frozenset(out)


def read_fdb(ns: str, device: str) -> frozenset[tuple[str, IPAddress]]:
    text = _run(["bridge", "-n", ns, "-j", "fdb", "show", "dev", device])
    out: set[tuple[str, IPAddress]] = set()
    for e in json.loads(text or "[]"):
        if e.get("dst"):
            out.add((str(e["mac"]), ipaddress.ip_address(e["dst"])))
    return frozenset(out)


def _elements(elems: list[Any], family: int) -> frozenset[IPNetwork]:
    nets: list[IPNetwork] = []
    make = ipaddress.IPv4Network if family == 4 else ipaddress.IPv6Network
    for e in elems:
        if isinstance(e, dict) and "elem" in e:
            e = e["elem"]["val"]
        if isinstance(e, str):
            nets.append(make(e))
        elif "prefix" in e:
            nets.append(make(f"{e['prefix']['addr']}/{e['prefix']['len']}"))
        elif "range" in e:
            lo, hi = (ipaddress.ip_address(a) for a in e["range"])
            nets.extend(ipaddress.summarize_address_range(lo, hi))
    return frozenset(ipaddress.collapse_addresses(nets))  # type: ignore[type-var]


def read_sets(
    ns: str, table: str, names: Iterable[str] = SET_NAMES
) -> tuple[tuple[str, frozenset[IPNetwork]], ...] | None:
    """The named sets' elements (canonical), None when the table is gone; a set that is
    gone is left out."""
    text = run_in(ns, ["nft", "-j", "list", "table", "inet", table], check=False)
    if not text.strip():
        return None
    found: dict[str, frozenset[IPNetwork]] = {}
    for item in json.loads(text).get("nftables", []):
        s = item.get("set")
        if s is not None and s.get("name") in SET_NAMES:
            found[s["name"]] = _elements(s.get("elem", []), int(s["name"][-1]))
    return tuple((n, found[n]) for n in names if n in found)


def read_overlay(ns: str, protocol: int, *, masquerade: bool = True) -> OverlayState:
    device = device_name(protocol)
    return OverlayState(
        read_device_mac(ns, device),
        read_neighbours(ns, device),
        read_fdb(ns, device),
        read_sets(ns, table_name(protocol)) if masquerade else None,
    )
