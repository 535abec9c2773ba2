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

Contested CIDRs are nobody's: a CIDR that overlaps (equals, contains or lies inside)
another node's CIDR gets no route, for either node, and both get a ``Problem`` naming the
other node and its CIDR. No node can take another's traffic by claiming its CIDR or a
wider one, whatever the names sort like; the price is that the victim loses its route
too, loudly (the daemon logs it as an error and counts it), until the claim is fixed.
The own node's CIDRs take part (they are never routed away) but get no problem.

With a ``RangePolicy`` (the daemon's: ``CLUSTER_CIDRS``, the minimum prefixes, the host's
connected subnets and addresses), another node's CIDR that the policy refuses gets no
route and does not contest anything, and a node address the policy refuses as a gateway
(one of this host's addresses, a connected subnet's network or broadcast address) gets no
route; the own node's addresses are never gateways either.

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
from xcluster_cni_lib.core.overlay import route_underlay_family, vtep_address
from xcluster_cni_lib.core.ranges import RangePolicy
from xcluster_cni_lib.core.values import (
    IPAddress,
    IPNetwork,
    NodeFacts,
    NodeNetwork,
    Plan,
    Problem,
    Route,
)

_BITS = {4: 32, 6: 128}


def route_sort_key(route: Route) -> tuple[int, int, int, int, int]:
    """A total, deterministic order: family, destination, prefix length, gateway."""
    dst, gw = route.dst, route.gateway
    return (dst.version, int(dst.network_address), dst.prefixlen, gw.version, int(gw))


def _mask(family: int, length: int) -> int:
    bits = _BITS[family]
    return ((1 << length) - 1) << (bits - length)


def desired_routes(
    nodes: Iterable[NodeNetwork],
    *,
    own: str | None,
    policy: RangePolicy | None = None,
    overlay: str | None = None,
) -> tuple[list[Route], list[Problem]]:
    """The routes node ``own`` wants to the other nodes' pod CIDRs, and what prevents others.

    For every node but ``own`` and each family with a pod CIDR: a route to the CIDR via
    the node's address of that family. Reported instead: a node without any pod CIDR, a
    CIDR ``policy`` refuses, a contested CIDR (one overlapping, or equal to, another
    node's: neither node gets it), a CIDR without an address of its family, an address
    that may not be a gateway. ``policy`` ``None``: the CIDRs were checked when parsed.
    With ``overlay`` (the vxlan device's name) every route goes via the node's VTEP
    address on that device (``core.overlay``), and the node needs an address of the
    underlay family instead (the own node's: IPv4 if it has one, else IPv6).
    Routes come sorted by ``route_sort_key``; problems in node-name order (per node:
    no pod CIDR, then per CIDR in the node's order). Of several nodes with one name, the
    last counts.
    """
    state = DesiredRoutes(nodes, own=own, policy=policy, overlay=overlay)
    return list(state.routes.values()), state.problems()  # a fresh state's are sorted


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


#: How many rivals a contested-CIDR problem names (then "and N more").
MAX_RIVALS_NAMED = 3


class DesiredRoutes:
    """``desired_routes(nodes, own=own, policy=policy)``, kept up to date as nodes change.

    ``routes`` maps each destination to the route wanted for it; ``problems()`` lists
    the routing problems like ``desired_routes`` does and ``contested()`` those about
    contested CIDRs. ``update`` takes the changed nodes and returns the destinations
    whose wanted route may differ now. A change stays local when none of the changed
    nodes' CIDRs, old or new, overlaps another node's CIDR and the own node is not among
    them: then the other nodes' routes and problems cannot change (only overlapping
    CIDRs contest each other). Otherwise everything is computed again and ``update``
    returns ``None``.
    """

    def __init__(
        self,
        nodes: Iterable[NodeNetwork],
        *,
        own: str | None,
        policy: RangePolicy | None = None,
        overlay: str | None = None,
    ) -> None:
        self.own = own
        self.policy = policy
        self.overlay = overlay
        self._underlay: int | None = None
        self.networks: dict[str, NodeNetwork] = {n.name: n for n in nodes}
        self._rebuild()  # sets routes, _problems, _contested, _accepted and _index

    # -- the rule, per node ------------------------------------------------------------------

    def _accept(self, n: NodeNetwork) -> tuple[tuple[IPNetwork, ...], list[Problem]]:
        """The node's CIDRs that take part in routing and contests, and the refused ones'
        problems. The own node's all take part: its pods are here, whatever the policy."""
        policy = self.policy
        if policy is None or n.name == self.own:
            return n.cidrs, []
        accepted: list[IPNetwork] = []
        problems: list[Problem] = []
        for cidr in n.cidrs:
            reason = policy.refusal(cidr)
            if reason is None:
                accepted.append(cidr)
            else:
                problems.append(
                    Problem(n.name, f"pod CIDR refused: {reason}; no route", value=str(cidr))
                )
        return tuple(accepted), problems

    def _own_addresses(self) -> frozenset[IPAddress]:
        mine = self.networks.get(self.own) if self.own is not None else None
        return frozenset(mine.addresses) if mine is not None else frozenset()

    def _plan_node(self, n: NodeNetwork, own_addresses: frozenset[IPAddress]) -> None:
        """Routes and problems of one node other than the own one, against ``_index``."""
        problems = self._refused.get(n.name, [])[:]
        contested: list[Problem] = []
        if not n.cidrs:
            problems.insert(0, Problem(n.name, f"{NO_POD_CIDR}; no route to this node"))
        accepted = self._accepted[n.name]
        for cidr in n.cidrs:
            if cidr not in accepted:
                continue
            found = self._index.overlapping(cidr)
            if len(found) > 1 or found[0] != n.name:  # (found holds the CIDR itself)
                rivals = [o for o in dict.fromkeys(found) if o != n.name]
                contested.append(self._contest(n.name, cidr, rivals))
                problems.append(contested[-1])
                continue
            family = self._underlay if self.overlay is not None else cidr.version
            address = n.address(family) if family is not None else None
            reason: str | None = None
            if family is None:
                reason = f"this node has no address for the vxlan underlay; no route to {cidr}"
            elif address is None:
                what = "address for the vxlan underlay" if self.overlay is not None else "address"
                reason = f"no IPv{family} {what}; no route to its pod CIDR {cidr}"
            elif address in own_addresses:
                reason = f"address {address} is this node's own; no route to its pod CIDR {cidr}"
            elif self.policy is not None:
                refusal = self.policy.gateway_refusal(address)
                if refusal is not None:
                    reason = f"address {refusal}; no route to its pod CIDR {cidr}"
            if reason is not None:
                problems.append(Problem(n.name, reason, value=str(cidr)))
                continue
            assert address is not None
            if self.overlay is not None:  # via the node's VTEP, on-link on the vxlan device
                gateway = vtep_address(cidr)
                self.routes[cidr] = Route(cidr, gateway, node=n.name, device=self.overlay)
            else:
                self.routes[cidr] = Route(dst=cidr, gateway=address, node=n.name)
        if problems:
            self._problems[n.name] = problems
        if contested:
            self._contested[n.name] = contested

    def _contest(self, name: str, cidr: IPNetwork, rivals: list[str]) -> Problem:
        named = []
        for rival in sorted(rivals)[:MAX_RIVALS_NAMED]:
            theirs = self._accepted[rival]
            other = next((c for c in theirs if c.version == cidr.version), None)
            whose = "this node's own" if rival == self.own else f"node {rival}'s"
            named.append(f"{whose} pod CIDR {other}")
        more = len(rivals) - MAX_RIVALS_NAMED
        tail = f" and {more} more" if more > 0 else ""
        return Problem(
            name,
            f"pod CIDR {cidr} overlaps {', '.join(named)}{tail}: contested, no route to either",
            value=str(cidr),
        )

    def _rebuild(self) -> None:
        self.routes: dict[IPNetwork, Route] = {}
        self._problems: dict[str, list[Problem]] = {}
        self._contested: dict[str, list[Problem]] = {}
        self._refused: dict[str, list[Problem]] = {}
        self._accepted: dict[str, tuple[IPNetwork, ...]] = {}
        self._index = CidrIndex()
        for n in self.networks.values():
            self._add_node(n)
        self._underlay = route_underlay_family(
            self.networks.get(self.own) if self.own else None, self.networks.values()
        )
        own_addresses = self._own_addresses()
        for name in sorted(self.networks):
            if name != self.own:
                self._plan_node(self.networks[name], own_addresses)
        ordered = sorted(self.routes.values(), key=route_sort_key)
        self.routes = {r.dst: r for r in ordered}

    def _add_node(self, n: NodeNetwork) -> None:
        accepted, refused = self._accept(n)
        self._accepted[n.name] = accepted
        if refused:
            self._refused[n.name] = refused
        for cidr in accepted:
            self._index.add(cidr, n.name)

    def _remove_node(self, name: str) -> None:
        for cidr in self._accepted.pop(name, ()):
            self._index.remove(cidr, name)
        self._refused.pop(name, None)
        self._problems.pop(name, None)
        self._contested.pop(name, None)

    def problems(self) -> list[Problem]:
        """Routing problems, in node-name order (as ``desired_routes`` reports them)."""
        return [p for name in sorted(self._problems) for p in self._problems[name]]

    def contested(self) -> list[Problem]:
        """The problems about contested CIDRs (one per contested CIDR of a node other
        than the own one), in node-name order."""
        return [p for name in sorted(self._contested) for p in self._contested[name]]

    def update(self, changed: Mapping[str, NodeNetwork | None]) -> set[IPNetwork] | None:
        """Apply node changes (``None``: the node is gone or no longer routable)."""
        if not changed:
            return set()
        names = set(changed)
        local = self.own is None or self.own not in names
        if local:
            for name, new in changed.items():
                before = self._accepted.get(name, ())
                after = self._accept(new)[0] if new is not None else ()
                if any(
                    owner not in names
                    for c in (*before, *after)
                    for owner in self._index.overlapping(c)
                ):
                    local = False
                    break
        if not local:
            self._replace_networks(changed)
            self._rebuild()
            return None
        touched: set[IPNetwork] = set()
        for name in names:
            old = self.networks.get(name)
            self._remove_node(name)
            for cidr in old.cidrs if old is not None else ():
                route = self.routes.get(cidr)
                if route is not None and route.node == name:
                    del self.routes[cidr]
                    touched.add(cidr)
        self._replace_networks(changed)
        fresh = [n for n in changed.values() if n is not None]
        for n in fresh:
            self._add_node(n)
        own_addresses = self._own_addresses()
        for n in fresh:
            self._plan_node(n, own_addresses)
            touched.update(c for c in n.cidrs if c in self.routes and self.routes[c].node == n.name)
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
