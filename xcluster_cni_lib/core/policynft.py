"""NetworkPolicy enforcement, pure: the nftables state that enforces a view's policies for
the pods of one node (``compile_node``), the ``nft -j -f -`` documents that create it
atomically or change its elements (``table_document``, ``update_document``), and the
reading of ``nft -j list table`` that tells what a tampered table needs
(``read_tables``, ``repair_document``: element changes, or ``None`` for a rewrite).

Two tables per instance, both named ``xcluster-cni-policy-<protocol>``, owned whole:

``inet`` — the verdicts, in the forward hook, where every policed packet passes (routed
across nodes, through the overlay, after a Service's DNAT, before masquerade; and
same-node pod-to-pod, see the bridge table)::

    chain forward { type filter hook forward priority filter; policy accept;
        ct state established,related accept          # replies always pass
        icmpv6 type { nd-... } accept                # bridged ND (br_netfilter)
        ip saddr . ip daddr @self4 accept            # a pod cannot block itself
        ip saddr @egress4 jump egress                # a local pod isolated for egress
        ip daddr @ingress4 jump ingress              # a local pod isolated for ingress
        (and the same for ip6)
    }
    chain egress  { ip daddr vmap @out4; ip6 daddr vmap @out6; drop }
    chain ingress { ip saddr vmap @in4;  ip6 saddr vmap @in6;  drop }
    chain in4-<id> {                                 # one per peer class
        ip daddr @in4-<id>-all return                # rules without ports
        ip daddr . meta l4proto . th dport @in4-<id>-ports return
        drop
    }

The vmaps (``type ipv4_addr : verdict; flags interval``) partition the address space by
*peer class*: addresses that the same policy rules allow as peers (an ipBlock range, the
pods of one label set) map to one ``goto`` a class chain, whose two sets hold the local
pods that class may reach (ingress: the local pods that receive; egress: the local pods
that send, with the ports resolved on the destination). A class chain ``return``s to
``forward`` (it was entered by ``goto`` from the chain that ``forward`` jumped to), so an
allowed egress still meets the destination's ingress check. Per new connection: at most
two vmap and four set lookups, whatever the number of pods, peers or policies; rules grow
only with the number of peer classes (distinct combinations of rules that cover an
address), not with pods or peers. Pods and labels change elements; only a new or vanished
peer class changes chains (``update_document`` returns ``None``: write the whole table,
atomically).

``bridge`` — pods on one node talk over ``cbr0`` bridged, which the IP hooks do not see
without ``br_netfilter`` (not assumed). A prerouting rule hands every IPv4/IPv6 frame from
or to a policed local pod to the node's IP stack (destination MAC set to the bridge's,
``meta pkttype set host``); the node routes it back out ``cbr0``, through ``forward`` and
conntrack. Neighbour discovery stays bridged. Traffic between unpoliced pods stays on the
fast bridged path. (The ``bridge`` family's own conntrack, ``nf_conntrack_bridge``, is not
used: kernels often lack it — the lab's 6.18 has ``CONFIG_NF_CONNTRACK_BRIDGE`` unset.)

Kernel: nf_tables with ``inet`` and ``bridge`` families, conntrack, verdict maps,
concatenations with intervals (``nft_set_pipapo``: Linux 5.6+, nft 0.9.4+); packet-type
and payload mangling in the bridge family (core ``nft_meta``/``nft_payload``). Node
sysctls: IPv4/IPv6 forwarding (a router node has them); ``send_redirects`` off on the
bridge is advisable (the node forwards pod-to-pod out the interface it came in).

Traffic between a pod and its own node never crosses ``forward`` (input/output hooks): it
is always allowed, as Kubernetes requires. hostNetwork pods are not in any set.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

from xcluster_cni_lib.core.masquerade import Command, Document, document
from xcluster_cni_lib.core.policy import (
    ALL_PORTS,
    Ports,
    merge_ranges,
    peer_matches,
    resolve_ports,
    selects,
)
from xcluster_cni_lib.core.policyfacts import Peer, PodFacts, PolicyFacts, PolicyView, Rule
from xcluster_cni_lib.core.values import IPAddress

TABLE_PREFIX: Final = "xcluster-cni-policy-"
INET: Final = "inet"
BRIDGE: Final = "bridge"
OWNER: Final = "owned by xcluster-cni"
FILTER_PRIORITY: Final = 0  # "filter" in inet
BRIDGE_FILTER_PRIORITY: Final = -200  # "filter" in bridge
#: The fixed sets and maps of the inet table (the class chains' sets come and go).
FIXED_SETS: Final = ("ingress4", "ingress6", "egress4", "egress6", "self4", "self6")
VMAPS: Final = ("in4", "in6", "out4", "out6")
BRIDGE_SETS: Final = ("policed4", "policed6")
#: ICMPv6 neighbour discovery (router/neighbour solicitation/advertisement, redirect).
ND_TYPES: Final = (
    "nd-router-solicit",
    "nd-router-advert",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "nd-redirect",
)
_ADDR_TYPE: Final = {4: "ipv4_addr", 6: "ipv6_addr"}
_PAYLOAD: Final = {4: "ip", 6: "ip6"}
_BITS: Final = {4: 32, 6: 128}


def table_name(protocol: int) -> str:
    """Both policy tables of the instance with this route protocol."""
    return f"{TABLE_PREFIX}{protocol}"


# -- the desired state -------------------------------------------------------------------


@attrs.frozen
class Segment:
    """A vmap element: the addresses ``first``..``last`` (as integers: a node holds tens of
    thousands of segments, and address objects would double their memory) of ``family``
    go to ``chain``."""

    first: int
    last: int
    chain: str
    family: int = 4

    @property
    def addresses(self) -> tuple[IPAddress, IPAddress]:
        make = ipaddress.IPv4Address if self.family == 4 else ipaddress.IPv6Address
        return make(self.first), make(self.last)


@attrs.frozen
class ClassChain:
    """One peer class: ``all`` the local pods it may reach on every port and protocol,
    ``ports`` (local pod, protocol, first port, last port), canonical (merged ranges)."""

    name: str
    family: int
    ingress: bool
    all: frozenset[IPAddress] = frozenset()
    ports: frozenset[tuple[IPAddress, str, int, int]] = frozenset()

    @property
    def sets(self) -> tuple[str, str]:
        return (f"{self.name}-all", f"{self.name}-ports")


@attrs.frozen
class PolicyState:
    """The desired elements of both tables for one node."""

    ingress: frozenset[IPAddress] = frozenset()
    egress: frozenset[IPAddress] = frozenset()
    vmaps: Mapping[str, tuple[Segment, ...]] = attrs.field(factory=dict)
    chains: Mapping[str, ClassChain] = attrs.field(factory=dict)

    @property
    def policed(self) -> frozenset[IPAddress]:
        return self.ingress | self.egress

    def shape(self) -> frozenset[str]:
        """What a change of elements cannot change: the class chains."""
        return frozenset(self.chains)

    def elements(self) -> dict[str, frozenset[Any]]:
        """Every set and map of both tables (bridge sets prefixed ``bridge:``) as
        comparable elements."""
        out: dict[str, frozenset[Any]] = {}
        for f in (4, 6):
            out[f"ingress{f}"] = frozenset(a for a in self.ingress if a.version == f)
            out[f"egress{f}"] = frozenset(a for a in self.egress if a.version == f)
            out[f"self{f}"] = frozenset((a, a) for a in self.policed if a.version == f)
            out[f"bridge:policed{f}"] = frozenset(a for a in self.policed if a.version == f)
        for name in VMAPS:
            out[name] = frozenset(self.vmaps.get(name, ()))
        for chain in self.chains.values():
            all_set, ports_set = chain.sets
            out[all_set] = chain.all
            out[ports_set] = chain.ports
        return out

    def count(self) -> int:
        return sum(len(e) for e in self.elements().values())


@attrs.frozen
class _Entry:
    key: str
    policy: PolicyFacts
    rule: Rule
    selected: tuple[PodFacts, ...]


def compile_node(view: PolicyView, *, node: str) -> PolicyState:
    """The state that enforces ``view`` for the pods of ``node``."""
    by_ip = view.pod_by_ip()
    local = [p for p in view.pods if p.policed and p.node == node]
    isolated: dict[bool, set[IPAddress]] = {True: set(), False: set()}
    vmaps: dict[str, tuple[Segment, ...]] = {}
    chains: dict[str, ClassChain] = {}
    for ingress in (True, False):
        entries: list[_Entry] = []
        for policy in view.policies:
            if not (policy.ingress_policy if ingress else policy.egress_policy):
                continue
            selected = tuple(p for p in local if selects(policy, p))
            if not selected:
                continue
            isolated[ingress].update(a for p in selected for a in p.ips)
            for i, rule in enumerate(policy.ingress if ingress else policy.egress):
                entries.append(_Entry(f"{policy.key}#{i}", policy, rule, selected))
        for family in (4, 6):
            segments = _segments(view, entries, family, by_ip, ingress=ingress, chains=chains)
            vmaps[f"{'in' if ingress else 'out'}{family}"] = segments
    return PolicyState(
        ingress=frozenset(isolated[True]),
        egress=frozenset(isolated[False]),
        vmaps=vmaps,
        chains=dict(sorted(chains.items())),
    )


def _intervals(
    view: PolicyView,
    entry: _Entry,
    family: int,
    pods: Mapping[str, Sequence[tuple[PodFacts, IPAddress]]],
    matched: dict[tuple[str, Peer, int], list[int]],
) -> list[tuple[int, int]]:
    """The addresses (of ``family``) the entry's rule allows as peers, as merged
    [first, last] integer intervals. ``pods``: each namespace's pods with their address
    of ``family``; ``matched`` caches the pods each pod peer selects (policies repeat
    peers)."""
    top = (1 << _BITS[family]) - 1
    if not entry.rule.peers:
        return [(0, top)]
    out: list[tuple[int, int]] = []
    for peer in entry.rule.peers:
        block = peer.ipblock
        if block is None:
            key = (entry.policy.namespace, peer, family)
            if key not in matched:
                # only the pods of the namespaces the peer can match are looked at
                if peer.namespaces is None:
                    names: Iterable[str] = (entry.policy.namespace,)
                else:
                    names = [n for n in pods if peer.namespaces.matches(view.namespace_labels(n))]
                matched[key] = [
                    int(a)
                    for n in names
                    for pod, a in pods.get(n, ())
                    if peer_matches(view, entry.policy, peer, a, pod)
                ]
            out.extend((a, a) for a in matched[key])
            continue
        if block.cidr.version != family:
            continue
        start, end = int(block.cidr.network_address), int(block.cidr.broadcast_address)
        for ex in sorted(block.excepts, key=lambda n: int(n.network_address)):
            ex_start, ex_end = int(ex.network_address), int(ex.broadcast_address)
            if ex_start > start:
                out.append((start, ex_start - 1))
            start = max(start, ex_end + 1)
        if start <= end:
            out.append((start, end))
    merged: list[tuple[int, int]] = []
    for s, e in sorted(out):
        if merged and s <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _segments(
    view: PolicyView,
    entries: Sequence[_Entry],
    family: int,
    by_ip: Mapping[IPAddress, PodFacts],
    *,
    ingress: bool,
    chains: dict[str, ClassChain],
) -> tuple[Segment, ...]:
    """Sweep the address space: at every boundary of an entry's peer intervals (and at
    every pod address, where named ports may resolve differently) the set of entries
    covering the address changes; each distinct set is a peer class."""
    make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    top = (1 << _BITS[family]) - 1
    pods = [(p, a) for a, p in by_ip.items() if a.version == family]
    by_namespace: dict[str, list[tuple[PodFacts, IPAddress]]] = {}
    for p, a in pods:
        by_namespace.setdefault(p.namespace, []).append((p, a))
    matched: dict[tuple[str, Peer, int], list[int]] = {}
    events: dict[int, list[tuple[int, bool]]] = {}
    for index, entry in enumerate(entries):
        for s, e in _intervals(view, entry, family, by_namespace, matched):
            events.setdefault(s, []).append((index, True))
            if e < top:
                events.setdefault(e + 1, []).append((index, False))
    points = {int(a) for _, a in pods}
    bounds = sorted({0, *events, *points, *(p + 1 for p in points if p < top)})
    active: set[int] = set()
    out: list[Segment] = []
    memo: dict[Any, ClassChain | None] = {}
    for i, start in enumerate(bounds):
        for index, on in events.get(start, ()):
            (active.add if on else active.discard)(index)
        end = bounds[i + 1] - 1 if i + 1 < len(bounds) else top
        if end == start:
            end = start  # one int for both ends: most segments are a single pod address
        if not active:
            continue
        signature = _signature(
            entries, active, ingress=ingress, peer=by_ip.get(make(start)) if start == end else None
        )
        if signature not in memo:
            memo[signature] = _class_chain(entries, signature, family, ingress=ingress)
        chain = memo[signature]
        if chain is None:
            continue
        chains.setdefault(chain.name, chain)
        if out and out[-1].chain == chain.name and out[-1].last + 1 == start:
            out[-1] = Segment(out[-1].first, end, chain.name, family)
        else:
            out.append(Segment(start, end, chain.name, family))
    return tuple(out)


#: A peer class: the entries (by index) covering an address, each with the ports it
#: allows there (egress: resolved on the destination; ingress: ``ALL_PORTS``, the ports
#: resolve on each receiving local pod).
_Signature = tuple[tuple[int, Ports], ...]


def _signature(
    entries: Sequence[_Entry], active: Iterable[int], *, ingress: bool, peer: PodFacts | None
) -> _Signature:
    if ingress:
        return tuple((index, ALL_PORTS) for index in sorted(active))
    out = []
    for index in sorted(active):
        ports = resolve_ports(entries[index].rule, peer)
        if ports != ():  # () : only named ports, none of them on this destination
            out.append((index, ports))
    return tuple(out)


def _class_chain(
    entries: Sequence[_Entry], signature: _Signature, family: int, *, ingress: bool
) -> ClassChain | None:
    every: set[IPAddress] = set()
    ranges: dict[IPAddress, list[tuple[str, int, int]]] = {}
    for index, peer_ports in signature:
        entry = entries[index]
        for pod in entry.selected:
            a = pod.ip(family)
            if a is None:
                continue
            ports = resolve_ports(entry.rule, pod) if ingress else peer_ports
            if ports is ALL_PORTS:
                every.add(a)
            else:
                ranges.setdefault(a, []).extend(ports)
    if not every and not any(ranges.values()):
        return None
    # named by the rules (not the indices, which shift) and their ports: stable while
    # the same rules cover the same peers, whatever the pods
    named = sorted(repr((entries[index].key, ports)) for index, ports in signature)
    digest = hashlib.sha256("\n".join(named).encode()).hexdigest()[:12]
    return ClassChain(
        name=f"{'in' if ingress else 'out'}{family}-{digest}",
        family=family,
        ingress=ingress,
        all=frozenset(every),
        ports=frozenset((a, *r) for a, rs in ranges.items() for r in merge_ranges(rs)),
    )


# -- nft JSON ----------------------------------------------------------------------------


def _payload(family: int, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": _PAYLOAD[family], "field": field}}


def _in_set(left: Any, name: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": f"@{name}"}}


def address_element(first: IPAddress, last: IPAddress) -> Any:
    """An address, a prefix or a range, the smallest form that says first..last."""
    if first == last:
        return str(first)
    size = int(last) - int(first) + 1
    if size & (size - 1) == 0 and int(first) % size == 0:
        return {"prefix": {"addr": str(first), "len": first.max_prefixlen - size.bit_length() + 1}}
    return {"range": [str(first), str(last)]}


def _element(set_name: str, value: Any) -> Any:
    if isinstance(value, Segment):
        return [address_element(*value.addresses), {"goto": {"target": value.chain}}]
    if set_name.startswith("self"):
        return {"concat": [str(value[0]), str(value[1])]}
    if isinstance(value, tuple):  # (pod, protocol, first, last)
        a, proto, lo, hi = value
        port: Any = lo if lo == hi else {"range": [lo, hi]}
        return {"concat": [str(a), proto.lower(), port]}
    return str(value)


def _nd() -> dict[str, Any]:
    """Matches ICMPv6 neighbour discovery (``ND_TYPES``)."""
    return {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": "icmpv6", "field": "type"}},
            "right": {"set": list(ND_TYPES)},
        }
    }


def forward_rules(family: int) -> list[list[dict[str, Any]]]:
    """The forward chain's rules of one family (after the conntrack rule). IPv6 neighbour
    discovery is accepted first: it is never routed (hop limit 255), so in ``forward`` it
    is only ever a bridged frame that ``br_netfilter`` shows to the IP hooks."""
    nd: list[list[dict[str, Any]]] = [[_nd(), {"accept": None}]] if family == 6 else []
    return [
        *nd,
        [
            _in_set(
                {"concat": [_payload(family, "saddr"), _payload(family, "daddr")]}, f"self{family}"
            ),
            {"accept": None},
        ],
        [_in_set(_payload(family, "saddr"), f"egress{family}"), {"jump": {"target": "egress"}}],
        [_in_set(_payload(family, "daddr"), f"ingress{family}"), {"jump": {"target": "ingress"}}],
    ]


#: Denied packets logged (``log_denied``): at most this many per second per table.
DENY_LOG_RATE: Final = 10
DENY_LOG_BURST: Final = 20


def deny_prefix(table: str) -> str:
    """The kernel log prefix of a denied packet (``log_denied``)."""
    return f"{table} deny "


def _deny(log_denied: bool) -> dict[str, Any]:
    """The verdict that denies: drop, or (``log_denied``) go to the ``deny`` chain."""
    return {"goto": {"target": "deny"}} if log_denied else {"drop": None}


def deny_rules(table: str) -> list[list[dict[str, Any]]]:
    """The ``deny`` chain (``log_denied``): log (rate-limited, one limit for the table),
    then drop."""
    return [
        [
            {"limit": {"rate": DENY_LOG_RATE, "burst": DENY_LOG_BURST, "per": "second"}},
            {"log": {"prefix": deny_prefix(table)}},
        ],
        [{"drop": None}],
    ]


def class_rules(chain: ClassChain, *, log_denied: bool = False) -> list[list[dict[str, Any]]]:
    local = _payload(chain.family, "daddr" if chain.ingress else "saddr")
    all_set, ports_set = chain.sets
    ports_key = {
        "concat": [
            local,
            {"meta": {"key": "l4proto"}},
            {"payload": {"protocol": "th", "field": "dport"}},
        ]
    }
    return [
        [_in_set(local, all_set), {"return": None}],
        [_in_set(ports_key, ports_set), {"return": None}],
        [_deny(log_denied)],
    ]


def bridge_rules(mac: str) -> list[list[dict[str, Any]]]:
    """Neighbour discovery stays bridged; a policed pod's other frames go up to the node."""
    nd = _nd()
    redirect = [
        {"mangle": {"key": {"payload": {"protocol": "ether", "field": "daddr"}}, "value": mac}},
        {"mangle": {"key": {"meta": {"key": "pkttype"}}, "value": "host"}},
    ]
    rules: list[list[dict[str, Any]]] = [[nd, {"accept": None}]]
    for family in (4, 6):
        for field in ("saddr", "daddr"):
            rules.append([_in_set(_payload(family, field), f"policed{family}"), *redirect])
    return rules


def _rule(family: str, table: str, chain: str, expr: list[dict[str, Any]]) -> Command:
    return {
        "add": {
            "rule": {
                "family": family,
                "table": table,
                "chain": chain,
                "comment": OWNER,
                "expr": expr,
            }
        }
    }


def _set_spec(
    family: str, table: str, name: str, type_: Any, *, interval: bool = False
) -> dict[str, Any]:
    spec: dict[str, Any] = {"family": family, "table": table, "name": name, "type": type_}
    if interval:
        spec["flags"] = ["interval"]
    return spec


def _set_command(
    family: str,
    table: str,
    name: str,
    type_: Any,
    elements: Iterable[Any],
    *,
    interval: bool = False,
) -> Command:
    spec = _set_spec(family, table, name, type_, interval=interval)
    elem = [_element(name.removeprefix("bridge:"), e) for e in _sorted(elements)]
    if elem:
        spec["elem"] = elem
    return {"add": {"set": spec}}


def _sorted(elements: Iterable[Any]) -> list[Any]:
    def key(e: Any) -> Any:
        if isinstance(e, Segment):
            return (e.first, e.chain)
        if isinstance(e, tuple):
            return tuple(int(x) if not isinstance(x, str | int) else x for x in e)
        return int(e)

    return sorted(elements, key=key)


def table_document(
    table: str, state: PolicyState, *, bridge_mac: str | None, log_denied: bool = False
) -> Document:
    """Replace both tables (``bridge_mac`` ``None``: no bridge table, e.g. a node whose
    pods are routed, not bridged) with ``state``, in one transaction. ``log_denied``:
    denied packets go through a ``deny`` chain that logs them (``deny_rules``)."""
    commands: list[Command] = []
    for family in (INET, BRIDGE):
        commands += [
            {"add": {"table": {"family": family, "name": table}}},
            {"delete": {"table": {"family": family, "name": table}}},
        ]
    commands.append({"add": {"table": {"family": INET, "name": table, "comment": OWNER}}})
    elements = state.elements()
    for f in (4, 6):
        addr = _ADDR_TYPE[f]
        for name in (f"ingress{f}", f"egress{f}"):
            commands.append(_set_command(INET, table, name, addr, elements[name]))
        commands.append(_set_command(INET, table, f"self{f}", [addr, addr], elements[f"self{f}"]))
    base = {"family": INET, "table": table}
    commands.append(
        {
            "add": {
                "chain": {
                    **base,
                    "name": "forward",
                    "type": "filter",
                    "hook": "forward",
                    "prio": FILTER_PRIORITY,
                    "policy": "accept",
                }
            }
        }
    )
    commands.append({"add": {"chain": {**base, "name": "egress"}}})
    commands.append({"add": {"chain": {**base, "name": "ingress"}}})
    if log_denied:
        commands.append({"add": {"chain": {**base, "name": "deny"}}})
        commands += [_rule(INET, table, "deny", r) for r in deny_rules(table)]
    for chain in state.chains.values():
        commands.append({"add": {"chain": {**base, "name": chain.name}}})
        addr = _ADDR_TYPE[chain.family]
        all_set, ports_set = chain.sets
        commands.append(_set_command(INET, table, all_set, addr, chain.all))
        commands.append(
            _set_command(
                INET,
                table,
                ports_set,
                [addr, "inet_proto", "inet_service"],
                chain.ports,
                interval=True,
            )
        )
        rules = class_rules(chain, log_denied=log_denied)
        commands += [_rule(INET, table, chain.name, r) for r in rules]
    for name in VMAPS:  # after the chains their elements name
        spec = _set_spec(INET, table, name, _ADDR_TYPE[int(name[-1])], interval=True)
        spec["map"] = "verdict"
        elem = [_element(name, s) for s in state.vmaps.get(name, ())]
        if elem:
            spec["elem"] = elem
        commands.append({"add": {"map": spec}})
    commands.append(
        _rule(
            INET,
            table,
            "forward",
            [
                {
                    "match": {
                        "op": "in",
                        "left": {"ct": {"key": "state"}},
                        "right": ["established", "related"],
                    }
                },
                {"accept": None},
            ],
        )
    )
    for f in (4, 6):
        commands += [_rule(INET, table, "forward", r) for r in forward_rules(f)]
    for chain_name, key in (("egress", "daddr"), ("ingress", "saddr")):
        prefix = "out" if chain_name == "egress" else "in"
        for f in (4, 6):
            vmap = {"vmap": {"key": _payload(f, key), "data": f"@{prefix}{f}"}}
            commands.append(_rule(INET, table, chain_name, [vmap]))
        commands.append(_rule(INET, table, chain_name, [_deny(log_denied)]))
    if bridge_mac is not None:
        commands.append({"add": {"table": {"family": BRIDGE, "name": table, "comment": OWNER}}})
        for f in (4, 6):
            commands.append(
                _set_command(
                    BRIDGE, table, f"policed{f}", _ADDR_TYPE[f], elements[f"bridge:policed{f}"]
                )
            )
        commands.append(
            {
                "add": {
                    "chain": {
                        "family": BRIDGE,
                        "table": table,
                        "name": "prerouting",
                        "type": "filter",
                        "hook": "prerouting",
                        "prio": BRIDGE_FILTER_PRIORITY,
                        "policy": "accept",
                    }
                }
            }
        )
        commands += [_rule(BRIDGE, table, "prerouting", r) for r in bridge_rules(bridge_mac)]
    return document(commands)


def update_document(
    table: str, present: PolicyState, desired: PolicyState, *, bridge: bool
) -> Document | None:
    """Only element changes, deletes first, in one transaction; ``None`` when the class
    chains differ (write ``table_document`` instead). ``bridge``: the bridge table exists
    (``table_document`` was given a MAC). Only the metainfo when nothing changes."""
    if present.shape() != desired.shape():
        return None
    old, new = present.elements(), desired.elements()
    if not bridge:
        old = {k: v for k, v in old.items() if not k.startswith("bridge:")}
        new = {k: v for k, v in new.items() if not k.startswith("bridge:")}
    deletes: list[Command] = []
    adds: list[Command] = []
    for name in sorted(set(old) | set(new)):
        gone = old.get(name, frozenset()) - new.get(name, frozenset())
        fresh = new.get(name, frozenset()) - old.get(name, frozenset())
        family, set_name = (BRIDGE, name[7:]) if name.startswith("bridge:") else (INET, name)
        for elements, out in ((gone, deletes), (fresh, adds)):
            if elements:
                out.append(
                    {
                        "element": {
                            "family": family,
                            "table": table,
                            "name": set_name,
                            "elem": [_element(set_name, e) for e in _sorted(elements)],
                        }
                    }
                )
    return document([*({"delete": c} for c in deletes), *({"add": c} for c in adds)])


def delete_document(table: str) -> Document:
    """Delete both tables, whether they exist or not (policy switched off)."""
    commands: list[Command] = []
    for family in (INET, BRIDGE):
        commands += [
            {"add": {"table": {"family": family, "name": table}}},
            {"delete": {"table": {"family": family, "name": table}}},
        ]
    return document(commands)


# -- reading the tables back -------------------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@attrs.frozen
class ListedTables:
    """Both tables as ``nft -j list table`` shows them (or as a ``table_document`` creates
    them): ``elements`` per set and map (the bridge's as ``bridge:<name>``), each element
    in canonical JSON; ``structure`` everything else that must be as created (sets' and
    maps' definitions, chains, rules), in canonical JSON. nft lists the elements, chains
    and rules exactly as ``table_document`` writes them (checked with nft 1.0.6), so "is
    the kernel as wanted" is a plain comparison."""

    elements: Mapping[str, frozenset[str]] = attrs.field(factory=dict)
    structure: frozenset[str] = frozenset()


_VOLATILE: Final = ("handle", "elem", "comment")


def read_tables(objects: Iterable[Mapping[str, Any]]) -> ListedTables:
    """The objects of ``nft -j list table inet <t>`` and ``... bridge <t>`` (either may be
    missing: its parts are then missing from the result)."""
    elements: dict[str, frozenset[str]] = {}
    structure: set[str] = set()
    for obj in objects:
        if "metainfo" in obj or "table" in obj:
            continue
        (kind, spec), *_ = obj.items()
        if not isinstance(spec, Mapping):
            structure.add(_canonical(obj))
            continue
        if kind in ("set", "map"):
            prefix = "bridge:" if spec.get("family") == BRIDGE else ""
            elements[prefix + str(spec.get("name"))] = frozenset(
                _canonical(e) for e in spec.get("elem", [])
            )
        volatile = ("handle",) if kind == "rule" else _VOLATILE
        structure.add(_canonical({kind: {k: v for k, v in spec.items() if k not in volatile}}))
    return ListedTables(elements=elements, structure=frozenset(structure))


def wanted_tables(
    table: str, state: PolicyState, *, bridge_mac: str | None, log_denied: bool = False
) -> ListedTables:
    """What ``read_tables`` returns once ``table_document`` is applied."""
    created = table_document(table, state, bridge_mac=bridge_mac, log_denied=log_denied)
    return read_tables(c["add"] for c in created["nftables"] if "add" in c)


def repair_document(
    table: str,
    listed: ListedTables,
    desired: PolicyState,
    *,
    bridge_mac: str | None,
    log_denied: bool = False,
    wanted: ListedTables | None = None,
) -> Document | None:
    """What makes the listed tables the desired ones: ``None`` when their structure
    differs (a table, chain, rule or set missing, changed or added: write
    ``table_document``), else the element deletes and adds (only the metainfo when
    nothing differs), in one transaction."""
    if wanted is None:  # ``wanted_tables`` of the same arguments, if the caller has it
        wanted = wanted_tables(table, desired, bridge_mac=bridge_mac, log_denied=log_denied)
    if listed.structure != wanted.structure or set(listed.elements) != set(wanted.elements):
        return None
    deletes: list[Command] = []
    adds: list[Command] = []
    for name in sorted(wanted.elements):
        family, set_name = (BRIDGE, name[7:]) if name.startswith("bridge:") else (INET, name)
        have, want = listed.elements[name], wanted.elements[name]
        for chosen, out in ((have - want, deletes), (want - have, adds)):
            if chosen:
                spec = {"family": family, "table": table, "name": set_name}
                out.append({"element": {**spec, "elem": [json.loads(e) for e in sorted(chosen)]}})
    return document([*({"delete": c} for c in deletes), *({"add": c} for c in adds)])
