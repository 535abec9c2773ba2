"""Route planning: which routes a node wants, and what to change to get there. Pure.

``desired_routes`` turns the cluster's node networks into the routes one node needs:
for every other node and each family with both a pod CIDR and an address, a route to
the CIDR via the address. ``plan_routes`` compares those with the routes present in the
kernel (of our protocol) and returns a ``Plan``; ``apply_plan_model`` is the model of the
kernel that the property tests check plans against.

The kernel model: routes are compared on (dst, gateway) in canonical form. The kernel
holds one of our routes per destination (we always use the same metric and table), but a
dump may still show several for one destination (left by an older instance, added by
hand with another metric). A plan keeps at most one per destination:

- ``add``: a wanted destination with no route (applied with create, exclusive);
- ``replace``: a wanted destination routed via another gateway (applied with
  create|replace, which rewrites one existing route of that destination or creates it);
- ``delete``: every present route nobody wants, including the other-gateway routes of a
  replaced destination. Deletes must name the gateway; one that finds its route already
  gone (rewritten by the replace) counts as done.

Any order of applying the three lists reaches the same end state.

``DesiredRoutes`` keeps ``desired_routes``'s answer up to date node by node, so that a
daemon reacting to one node's change plans only that node's destinations: a change
that cannot interact with another node's CIDR is worked out from the changed nodes
alone; any other (an overlap, the own node) recomputes everything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from xcluster_cni_lib.core.addresses import parse_address, parse_cidr
from xcluster_cni_lib.core.nodes import NO_POD_CIDR, parse_nodes
from xcluster_cni_lib.core.values import IPNetwork, NodeFacts, NodeNetwork, Plan, Problem, Route

_BITS = {4: 32, 6: 128}


def route_sort_key(route: Route) -> tuple[int, int, int, int, int]:
    """A total, deterministic order: family, destination, prefix length, gateway."""
    dst, gw = route.dst, route.gateway
    return (dst.version, int(dst.network_address), dst.prefixlen, gw.version, int(gw))


def _mask(family: int, length: int) -> int:
    bits = _BITS[family]
    return ((1 << length) - 1) << (bits - length)


class _Claims:
    """Which node claimed which CIDR, with O(#prefix lengths) overlap checks.

    CIDRs are aligned, so two overlap exactly when one contains the other. ``_exact``
    holds the accepted CIDRs; ``_covered`` holds, for each accepted CIDR, its supernets
    at every prefix length any candidate uses, so "some accepted CIDR lies inside this
    candidate" is one lookup.
    """

    def __init__(self, candidates: Iterable[IPNetwork]) -> None:
        lengths: dict[int, set[int]] = {4: set(), 6: set()}
        for c in candidates:
            lengths[c.version].add(c.prefixlen)
        self._lengths = {f: sorted(ls) for f, ls in lengths.items()}
        self._exact: dict[tuple[int, int, int], tuple[IPNetwork, str]] = {}
        self._covered: dict[tuple[int, int, int], tuple[IPNetwork, str]] = {}

    def find(self, cidr: IPNetwork) -> tuple[IPNetwork, str] | None:
        """An accepted CIDR overlapping ``cidr`` and its owner, if any."""
        family, length, addr = cidr.version, cidr.prefixlen, int(cidr.network_address)
        inside = self._covered.get((family, length, addr))
        if inside is not None:
            return inside
        for shorter in self._lengths[family]:
            if shorter >= length:
                break
            outer = self._exact.get((family, shorter, addr & _mask(family, shorter)))
            if outer is not None:
                return outer
        return None

    def accept(self, cidr: IPNetwork, owner: str) -> None:
        family, length, addr = cidr.version, cidr.prefixlen, int(cidr.network_address)
        self._exact.setdefault((family, length, addr), (cidr, owner))
        for shorter in self._lengths[family]:
            if shorter > length:
                break
            key = (family, shorter, addr & _mask(family, shorter))
            self._covered.setdefault(key, (cidr, owner))


def desired_routes(
    nodes: Iterable[NodeNetwork], *, own: str | None
) -> tuple[list[Route], list[Problem]]:
    """The routes node ``own`` wants to the other nodes' pod CIDRs, and what prevents others.

    For every node but ``own`` and each family with a pod CIDR: a route to the CIDR via
    the node's address of that family. Reported instead: a node without any pod CIDR, a
    CIDR without an address of its family, and a CIDR overlapping (or equal to) one that
    another node claimed first. Claims go first to ``own`` (its pods are local and are
    never routed away), then to nodes in name order, so every node decides alike.
    Routes come sorted by ``route_sort_key``; problems in node-name order.
    """
    ordered = sorted(nodes, key=lambda n: n.name)
    claims = _Claims(c for n in ordered for c in n.cidrs)
    for n in ordered:
        if n.name == own:
            for cidr in n.cidrs:
                claims.accept(cidr, n.name)
    routes: list[Route] = []
    problems: list[Problem] = []
    for n in ordered:
        if n.name == own:
            continue
        if not n.cidrs:
            problems.append(Problem(n.name, f"{NO_POD_CIDR}; no route to this node"))
        for cidr in n.cidrs:
            claimed = claims.find(cidr)
            if claimed is not None:
                other, owner = claimed
                whose = "this node's own" if owner == own else f"node {owner}'s"
                problems.append(
                    Problem(
                        n.name,
                        f"pod CIDR {cidr} overlaps {whose} pod CIDR {other}; no route",
                        value=str(cidr),
                    )
                )
                continue
            claims.accept(cidr, n.name)
            address = n.address(cidr.version)
            if address is None:
                problems.append(
                    Problem(
                        n.name,
                        f"no IPv{cidr.version} address; no route to its pod CIDR {cidr}",
                        value=str(cidr),
                    )
                )
                continue
            routes.append(Route(dst=cidr, gateway=address, node=n.name))
    routes.sort(key=route_sort_key)
    return routes, problems


def desired_routes_from_facts(
    facts: Iterable[NodeFacts], *, own: str | None
) -> tuple[list[Route], list[Problem]]:
    """``parse_nodes`` then ``desired_routes``: the whole path from facts to routes, with
    every problem (skipped nodes first, then lenient findings, then routing problems).
    The facts carry the annotation configuration they were read with."""
    networks, problems = parse_nodes(facts)
    routes, more = desired_routes(networks, own=own)
    return routes, problems + more


class CidrIndex:
    """Which owners hold CIDRs overlapping a given one, kept up to date by ``add`` and
    ``remove``. A lookup costs one dictionary access per prefix length in use (plus a
    scan when the CIDR is shorter than a length in use)."""

    def __init__(self) -> None:
        # family -> prefix length -> network address -> owners
        self._by_length: dict[int, dict[int, dict[int, list[str]]]] = {4: {}, 6: {}}

    def add(self, cidr: IPNetwork, owner: str) -> None:
        table = self._by_length[cidr.version].setdefault(cidr.prefixlen, {})
        table.setdefault(int(cidr.network_address), []).append(owner)

    def remove(self, cidr: IPNetwork, owner: str) -> None:
        lengths = self._by_length[cidr.version]
        table = lengths.get(cidr.prefixlen)
        addr = int(cidr.network_address)
        owners = table.get(addr) if table is not None else None
        if table is None or owners is None or owner not in owners:
            return
        owners.remove(owner)
        if not owners:
            del table[addr]
            if not table:
                del lengths[cidr.prefixlen]

    def overlapping(self, cidr: IPNetwork) -> list[str]:
        """The owners of every indexed CIDR that overlaps ``cidr`` (equal, containing or
        contained), with repetitions."""
        family, length, addr = cidr.version, cidr.prefixlen, int(cidr.network_address)
        found: list[str] = []
        for other, table in self._by_length[family].items():
            if other <= length:
                found.extend(table.get(addr & _mask(family, other), ()))
                continue
            span = 1 << (other - length)
            step = 1 << (_BITS[family] - other)
            if span <= len(table):
                for k in range(span):
                    found.extend(table.get(addr + k * step, ()))
            else:
                mask = _mask(family, length)
                for inner, owners in table.items():
                    if inner & mask == addr:
                        found.extend(owners)
        return found


class DesiredRoutes:
    """``desired_routes(nodes, own=own)``, kept up to date as nodes change.

    ``routes`` maps each destination to the route wanted for it; ``problems()`` lists
    the routing problems like ``desired_routes`` does. ``update`` takes the changed
    nodes and returns the destinations whose wanted route may differ now. A change
    stays local when none of the changed nodes' CIDRs, old or new, overlaps another
    node's CIDR and the own node is not among them: then the other nodes' routes and
    problems cannot change (claims only compete between overlapping CIDRs). Otherwise
    everything is computed again and ``update`` returns ``None``.
    """

    def __init__(self, nodes: Iterable[NodeNetwork], *, own: str | None) -> None:
        self.own = own
        self.networks: dict[str, NodeNetwork] = {n.name: n for n in nodes}
        self._rebuild()  # sets routes, _problems and _index

    def _rebuild(self) -> None:
        routes, problems = desired_routes(self.networks.values(), own=self.own)
        self.routes: dict[IPNetwork, Route] = {r.dst: r for r in routes}
        self._problems: dict[str, list[Problem]] = {}
        for p in problems:
            self._problems.setdefault(p.node, []).append(p)
        self._index = CidrIndex()
        for n in self.networks.values():
            for cidr in n.cidrs:
                self._index.add(cidr, n.name)

    def problems(self) -> list[Problem]:
        """Routing problems, in node-name order (as ``desired_routes`` reports them)."""
        return [p for name in sorted(self._problems) for p in self._problems[name]]

    def update(self, changed: Mapping[str, NodeNetwork | None]) -> set[IPNetwork] | None:
        """Apply node changes (``None``: the node is gone or no longer routable)."""
        if not changed:
            return set()
        names = set(changed)
        local = self.own is None or self.own not in names
        if local:
            for name, new in changed.items():
                old = self.networks.get(name)
                cidrs = (*(old.cidrs if old else ()), *(new.cidrs if new else ()))
                if any(owner not in names for c in cidrs for owner in self._index.overlapping(c)):
                    local = False
                    break
        if not local:
            self._replace_networks(changed)
            self._rebuild()
            return None
        touched: set[IPNetwork] = set()
        for name in names:
            old = self.networks.get(name)
            self._problems.pop(name, None)
            if old is None:
                continue
            for cidr in old.cidrs:
                self._index.remove(cidr, name)
                route = self.routes.get(cidr)
                if route is not None and route.node == name:
                    del self.routes[cidr]
                    touched.add(cidr)
        self._replace_networks(changed)
        fresh = [n for n in changed.values() if n is not None]
        for n in fresh:
            for cidr in n.cidrs:
                self._index.add(cidr, n.name)
        routes, problems = desired_routes(fresh, own=self.own)
        for r in routes:
            self.routes[r.dst] = r
            touched.add(r.dst)
        for p in problems:
            self._problems.setdefault(p.node, []).append(p)
        return touched

    def _replace_networks(self, changed: Mapping[str, NodeNetwork | None]) -> None:
        for name, new in changed.items():
            if new is None:
                self.networks.pop(name, None)
            else:
                self.networks[name] = new


def canonical_route(route: Route) -> Route:
    """``route`` with an IPv4-mapped IPv6 destination or gateway turned into IPv4."""
    dst, gw = route.dst, route.gateway
    if type(gw) is ipaddress.IPv4Address and type(dst) is ipaddress.IPv4Network:
        return route  # the common case, already canonical
    # (a network shorter than /96 never has a mapped network address: its host bits
    # include some of the 0xffff that mark one)
    mapped_dst = (
        isinstance(dst, ipaddress.IPv6Network) and dst.network_address.ipv4_mapped is not None
    )
    mapped_gw = isinstance(gw, ipaddress.IPv6Address) and gw.ipv4_mapped is not None
    if not (mapped_dst or mapped_gw):
        return route
    return Route(dst=parse_cidr(str(dst)), gateway=parse_address(str(gw)), node=route.node)


def plan_routes(desired: Iterable[Route], present: Iterable[Route]) -> Plan:
    """What to change so that ``present`` becomes ``desired`` (see the module doc).

    Compares canonical (dst, gateway). ``desired`` should hold one route per destination;
    if it holds several, the first wins. Routes already right are left alone, so a second
    plan after applying the first is empty. The lists are sorted by ``route_sort_key``.
    Costs one dictionary lookup per route when nothing changed.
    """
    canon = canonical_route
    want: dict[IPNetwork, Route] = {}
    for r in desired:
        r = canon(r)
        if r.dst not in want:
            want[r.dst] = r
    add: list[Route] = []
    replace: list[Route] = []
    delete: list[Route] = []
    # present routes by destination, only where they differ from what is wanted
    others: dict[IPNetwork, list[Route]] = {}
    right: set[IPNetwork] = set()
    for r in present:
        r = canon(r)
        dst = r.dst
        if want.get(dst) == r:
            right.add(dst)
            continue
        there = others.get(dst)
        if there is None:
            others[dst] = [r]
        elif r not in there:
            there.append(r)
    for dst, there in others.items():
        delete.extend(there)
        wanted = want.get(dst)
        if wanted is not None and dst not in right:
            replace.append(wanted)
    if len(right) + len(replace) < len(want):
        add = [r for dst, r in want.items() if dst not in right and dst not in others]
    return Plan(
        add=tuple(sorted(add, key=route_sort_key)),
        replace=tuple(sorted(replace, key=route_sort_key)),
        delete=tuple(sorted(delete, key=route_sort_key)),
    )


ORDER = ("delete", "replace", "add")


def apply_plan_model(
    present: Iterable[Route], plan: Plan, *, order: Sequence[str] = ORDER
) -> set[Route]:
    """The kernel model: the routes left after applying ``plan`` to ``present``.

    ``delete`` removes the route with that (dst, gateway) if present (none left counts as
    done); ``replace`` rewrites one route of the destination (the lowest gateway, which
    the kernel does not promise: the plans must not care) or creates it; ``add`` creates
    and raises ``ValueError`` when the destination already has a route (the kernel's
    EEXIST). ``order`` is the order the three lists are applied in.
    """
    state = {canonical_route(r) for r in present}
    steps: dict[str, tuple[Route, ...]] = {
        "delete": plan.delete,
        "replace": plan.replace,
        "add": plan.add,
    }
    for step in order:
        for r in steps[step]:
            if step == "delete":
                state.discard(r)
                continue
            same_dst = sorted((x for x in state if x.dst == r.dst), key=route_sort_key)
            if step == "add" and same_dst:
                raise ValueError(f"add {r.dst} via {r.gateway}: the destination has a route")
            if step == "replace" and same_dst:
                state.discard(same_dst[0])
            state.add(r)
    return state
