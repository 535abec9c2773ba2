"""Hostile node data cannot steer traffic (issue 12, findings 1, 2, 9 and 12): the pod-CIDR
rule applied when parsing, contested CIDRs are nobody's, gateways are other nodes'
addresses, and a node's data cannot make a huge log line."""

from __future__ import annotations

import ipaddress
import itertools
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xcluster_cni_lib.core.errors import InvalidNode
from xcluster_cni_lib.core.nodes import POD_CIDRS_KEY, parse_facts, parse_nodes
from xcluster_cni_lib.core.planning import DesiredRoutes, desired_routes, route_sort_key
from xcluster_cni_lib.core.ranges import DENIED, RangePolicy
from xcluster_cni_lib.core.values import (
    Annotations,
    IPAddress,
    IPNetwork,
    NodeFacts,
    NodeNetwork,
    Route,
)
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.sync.nodecache import NodeCache

net = ipaddress.ip_network
ip = ipaddress.ip_address
KEY = "pods.example.com/cidrs"


def N(name: str, cidrs: tuple[str, ...] = (), addrs: tuple[str, ...] = ()) -> NodeNetwork:
    return NodeNetwork(
        name=name, cidrs=tuple(net(c) for c in cidrs), addresses=tuple(ip(a) for a in addrs)
    )


# -- finding 1 (overlap): contested CIDRs are nobody's -------------------------------------


def test_a_wider_cidr_does_not_take_another_nodes_route() -> None:
    evil = N("a-evil", ("10.244.2.0/23",), ("192.168.1.66",))
    n2 = N("n2", ("10.244.2.0/24", "fd00:2::/64"), ("192.168.1.2", "fd00::2"))
    n3 = N("n3", ("10.244.4.0/24",), ("192.168.1.3",))
    routes, problems = desired_routes([evil, n2, n3], own="n1")
    # neither claimant gets 10.244.2.0/24's traffic; n2's other family and n3 are untouched
    assert [(str(r.dst), r.node) for r in routes] == [
        ("10.244.4.0/24", "n3"),
        ("fd00:2::/64", "n2"),
    ]
    texts = {p.node: p.reason for p in problems}
    assert (
        "10.244.2.0/23" in texts["a-evil"] and "node n2's pod CIDR 10.244.2.0/24" in texts["a-evil"]
    )
    assert "10.244.2.0/24" in texts["n2"] and "node a-evil's pod CIDR 10.244.2.0/23" in texts["n2"]
    assert all("contested" in t for t in texts.values())


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("10.244.1.0/24", "10.244.1.0/24"),  # equal
        ("10.244.0.0/16", "10.244.1.0/24"),  # containing
        ("10.244.1.0/25", "10.244.1.0/24"),  # contained
        ("fd00::/64", "fd00::1:0/112"),
    ],
)
def test_overlapping_claims_route_neither_whatever_the_names(first: str, second: str) -> None:
    for names in (("a", "b"), ("b", "a")):
        x = N(names[0], (first,), ("192.168.1.1", "fd00:1::1"))
        y = N(names[1], (second,), ("192.168.1.2", "fd00:1::2"))
        routes, problems = desired_routes([x, y], own=None)
        assert routes == []
        assert sorted((p.node, p.value) for p in problems) == sorted(
            [(names[0], str(net(first))), (names[1], str(net(second)))]
        )
        state = DesiredRoutes([x, y], own=None)
        assert [str(p) for p in state.contested()] == [str(p) for p in problems]


def test_the_own_cidr_is_contested_too_and_never_routed_away() -> None:
    me = N("z-me", ("10.244.1.0/24",), ("192.168.1.9",))
    thief = N("a", ("10.244.1.0/25",), ("192.168.1.1",))
    routes, problems = desired_routes([thief, me], own="z-me")
    assert routes == []
    assert "this node's own pod CIDR 10.244.1.0/24" in problems[0].reason


def test_a_contest_names_a_few_rivals_and_counts_the_rest() -> None:
    wide = N("evil", ("10.0.0.0/8",), ("192.168.1.1",))
    many = [N(f"n{i:02}", (f"10.{i}.0.0/24",), (f"192.168.2.{i}",)) for i in range(1, 21)]
    routes, problems = desired_routes([wide, *many], own=None)
    assert routes == []
    evil = next(p for p in problems if p.node == "evil")
    assert "and 17 more" in evil.reason and len(evil.reason) < 300


def test_a_contest_ends_when_the_claim_goes_away() -> None:
    n2 = N("n2", ("10.244.2.0/24",), ("192.168.1.2",))
    state = DesiredRoutes([n2], own="n1")
    assert net("10.244.2.0/24") in state.routes
    assert state.update({"a-evil": N("a-evil", ("10.244.2.0/23",), ("192.168.1.66",))}) is None
    assert state.routes == {} and len(state.contested()) == 2
    assert state.update({"a-evil": None}) is None
    assert list(state.routes.values()) == [Route(net("10.244.2.0/24"), ip("192.168.1.2"))]
    assert state.contested() == [] and state.problems() == []


# -- finding 1 (ranges): the policy in parsing and planning ---------------------------------


@pytest.mark.parametrize(
    "cidr",
    ["128.0.0.0/1", "::/1", "169.254.169.254/32", "224.0.0.0/4", "127.0.0.0/8", "169.254.0.0/24"],
)
def test_a_refused_pod_cidr_is_dropped_from_spec_and_refused_in_an_annotation(cidr: str) -> None:
    spec = NodeFacts("n2", pod_cidrs=(cidr, "10.244.2.0/24"), internal_ips=("192.168.1.2",))
    network = parse_facts(spec)
    assert network.cidrs == (net("10.244.2.0/24"),)
    [problem] = network.problems
    assert (problem.node, problem.key, problem.value) == ("n2", POD_CIDRS_KEY, cidr)

    annotated = NodeFacts("n2", cidr_annotation=cidr, annotations=Annotations(cidr=KEY))
    with pytest.raises(InvalidNode) as e:
        parse_facts(annotated)
    assert (e.value.node, e.value.key, e.value.value) == ("n2", KEY, cidr)


def test_cluster_cidrs_refuse_the_rest_when_parsing() -> None:
    policy = RangePolicy(cluster_cidrs=(net("10.244.0.0/16"), net("fd00:10:244::/48")))
    facts = [
        NodeFacts("n1", pod_cidrs=("10.244.1.0/24",), internal_ips=("192.168.1.1",)),
        NodeFacts("n2", pod_cidrs=("10.99.0.0/24", "fd00:10:244:2::/64")),
        NodeFacts("n3", cidr_annotation="10.99.3.0/24", annotations=Annotations(cidr=KEY)),
    ]
    networks, problems = parse_nodes(facts, policy=policy)
    assert [(n.name, [str(c) for c in n.cidrs]) for n in networks] == [
        ("n1", ["10.244.1.0/24"]),
        ("n2", ["fd00:10:244:2::/64"]),
    ]
    assert {(p.node, p.value) for p in problems} == {("n3", "10.99.3.0/24"), ("n2", "10.99.0.0/24")}
    assert all("outside the cluster CIDRs" in p.reason for p in problems)


def test_a_cidr_inside_the_hosts_subnet_gets_no_route_and_contests_nothing() -> None:
    policy = RangePolicy().with_host([net("192.168.1.0/24")], [ip("192.168.1.9")])
    lan = N("a-evil", ("192.168.1.128/25",), ("192.168.1.66",))
    routes, problems = desired_routes([lan], own="me", policy=policy)
    assert routes == [] and "connected to this host" in problems[0].reason
    # a refused claim does not contest: the victim keeps its route
    wide = N("a-evil", ("10.0.0.0/8",), ("192.168.1.66",))
    n2 = N("n2", ("10.244.2.0/24",), ("192.168.1.2",))
    policy = RangePolicy(cluster_cidrs=(net("10.244.0.0/16"),))
    routes, problems = desired_routes([wide, n2], own=None, policy=policy)
    assert [r.node for r in routes] == ["n2"]
    assert [p.node for p in problems] == ["a-evil"]


# -- finding 12: gateways --------------------------------------------------------------------


def test_gateways_are_never_this_hosts_addresses_nor_network_or_broadcast() -> None:
    me = N("me", ("10.244.0.0/24",), ("192.168.1.9", "fd00:1::9"))
    policy = RangePolicy().with_host(
        [net("192.168.1.0/24"), net("fd00:1::/64")], [ip("192.168.1.9"), ip("192.168.7.7")]
    )
    nodes = [
        me,
        N("copycat", ("10.244.1.0/24", "fd00:244:1::/64"), ("192.168.1.9", "fd00:1::9")),
        N("host", ("10.244.2.0/24",), ("192.168.7.7",)),  # another address of this host
        N("net", ("10.244.3.0/24", "fd00:244:3::/64"), ("192.168.1.0", "fd00:1::")),
        N("bcast", ("10.244.4.0/24",), ("192.168.1.255",)),
        N("good", ("10.244.5.0/24",), ("192.168.1.5",)),
    ]
    routes, problems = desired_routes(nodes, own="me", policy=policy)
    assert [(r.node, str(r.gateway)) for r in routes] == [("good", "192.168.1.5")]
    reasons = {(p.node, p.value): p.reason for p in problems}
    assert "192.168.1.9 is this node's own" in reasons[("copycat", "10.244.1.0/24")]
    assert "fd00:1::9 is this node's own" in reasons[("copycat", "fd00:244:1::/64")]
    assert "192.168.7.7 is an address of this host" in reasons[("host", "10.244.2.0/24")]
    assert "network address" in reasons[("net", "10.244.3.0/24")]
    assert "network address" in reasons[("net", "fd00:244:3::/64")]
    assert "broadcast address" in reasons[("bcast", "10.244.4.0/24")]
    # without a host view the own node's addresses are still no gateway
    routes, _ = desired_routes(nodes, own="me")
    assert "copycat" not in {r.node for r in routes}


# -- finding 9: a huge annotation makes a small log line -------------------------------------


def test_a_256_kib_annotation_value_makes_a_small_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    huge = "10.244.1.0/24," + "9" * (256 * 1024)
    cache = NodeCache()
    with caplog.at_level(logging.WARNING, logger="xcluster_cni_lib"):
        cache.upsert(NodeFacts("n1", cidr_annotation=huge, annotations=Annotations(cidr=KEY)))
        cache.upsert(
            NodeFacts("n2", pod_cidrs=("10.244.2.0/24", huge), internal_ips=("192.168.1.2",))
        )
    lines = [jsonlog.render(r) for r in caplog.records]
    assert len(lines) == 2
    for line in lines:
        assert len(line) < 1024, len(line)
        assert f"({len(huge) - 14} characters)" in line or f"({len(huge)} characters)" in line


# -- the property: whatever the nodes say ----------------------------------------------------

POD_BASES = {4: ["10.244.0.0", "10.0.0.0", "192.168.1.0"], 6: ["fd00:10:244::", "fd00:1::"]}
DENIED_BASES = {
    4: ["169.254.169.254", "127.0.0.1", "224.0.0.0", "0.0.0.0"],
    6: ["fe80::", "ff02::", "::1", "fd00:ec2::254"],
}


@st.composite
def cidr_texts(draw: st.DrawFn) -> str:
    """Any CIDR of any length in both families, often near the ranges that matter
    (pod ranges, the host's LAN, link-local, loopback, multicast, metadata)."""
    family = draw(st.sampled_from([4, 6]))
    bits = 32 if family == 4 else 128
    if draw(st.integers(0, 5)) == 0:
        addr = draw(st.integers(0, (1 << bits) - 1))  # anywhere
    else:
        bases = POD_BASES if draw(st.integers(0, 3)) else DENIED_BASES
        base = int(ip(draw(st.sampled_from(bases[family]))))
        block = draw(st.sampled_from([16, 23, 24, 25] if family == 4 else [16, 48, 64, 65]))
        addr = (base + (draw(st.integers(0, 7)) << (bits - block))) % (1 << bits)
    if draw(st.integers(0, 2)) == 0:
        length = draw(st.integers(0, bits))
    else:  # a usual pod CIDR length
        length = draw(st.integers(16, 28) if family == 4 else st.integers(48, 120))
    return str(ipaddress.ip_network((addr, length), strict=False))


ADDRESS_POOL = [
    *("192.168.1.1", "192.168.1.2", "192.168.1.0", "192.168.1.255", "192.168.1.9"),
    *("fd00:1::1", "fd00:1::2", "fd00:1::", "fd00:1::9", "127.0.0.1", "10.244.0.1"),
]


@st.composite
def address_texts(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 3)):
        return draw(st.sampled_from(ADDRESS_POOL))
    if draw(st.booleans()):
        return str(ipaddress.IPv4Address(draw(st.integers(0, 2**32 - 1))))
    return str(ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1))))


NAMES = ["a-evil", "me", "n1", "n2", "n3", "z"]


@st.composite
def node_facts(draw: st.DrawFn) -> list[NodeFacts]:
    names = draw(st.lists(st.sampled_from(NAMES), max_size=len(NAMES), unique=True))
    shared = draw(st.lists(cidr_texts(), min_size=1, max_size=3))  # for duplicates
    out = []
    for name in names:
        cidrs = draw(
            st.lists(st.one_of(cidr_texts(), st.sampled_from(shared)), min_size=1, max_size=3)
        )
        addresses = draw(st.lists(address_texts(), min_size=1, max_size=3))
        out.append(NodeFacts(name, pod_cidrs=tuple(cidrs), internal_ips=tuple(addresses)))
    return out


@st.composite
def policies(draw: st.DrawFn) -> RangePolicy:
    cluster = draw(
        st.sampled_from(
            [
                (),
                (),
                (net("10.244.0.0/16"), net("fd00::/16")),
                (net("10.0.0.0/8"), net("fd00:10:244::/48")),
                (net("fd00::/16"),),
            ]
        )
    )
    # the LAN (both families), sometimes the own bridge's pod CIDR, rarely a huge LAN
    host = [net("192.168.1.0/24"), net("fd00:1::/64")] if draw(st.integers(0, 3)) else []
    if draw(st.booleans()):
        host.append(net("10.244.0.0/24"))
    if draw(st.integers(0, 4)) == 0:
        host.append(net("10.0.0.0/8"))
    addresses = draw(st.lists(st.sampled_from([ip("192.168.1.9"), ip("fd00:1::9")]), unique=True))
    return RangePolicy(
        cluster_cidrs=cluster,
        min_prefix_v4=draw(st.sampled_from([8, 16])),
        min_prefix_v6=draw(st.sampled_from([32, 48])),
        host_subnets=tuple(host),
        host_addresses=frozenset(addresses),
    )


def _overlap(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


def _inside(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.subnet_of(b)  # type: ignore[arg-type]


def _network_or_broadcast(address: IPAddress, subnets: tuple[IPNetwork, ...]) -> bool:
    for s in subnets:
        if s.version != address.version or s.prefixlen >= s.max_prefixlen - 1:
            continue
        if address == s.network_address or (s.version == 4 and address == s.broadcast_address):
            return True
    return False


@settings(max_examples=400, deadline=None)
@given(node_facts(), policies(), st.sampled_from([None, "me", "n2"]))
def test_no_hostile_node_data_steers_traffic(
    facts: list[NodeFacts], policy: RangePolicy, own: str | None
) -> None:
    networks, _ = parse_nodes(facts, policy=policy.without_host())
    routes, problems = desired_routes(networks, own=own, policy=policy)
    by_name = {n.name: n for n in networks}
    own_addresses = set(by_name[own].addresses) if own in by_name else set()
    declared = [s for s in policy.host_subnets if any(_inside(c, s) for c in policy.cluster_cidrs)]
    dsts = [r.dst for r in routes]
    assert routes == sorted(routes, key=route_sort_key)
    for r in routes:
        d = r.dst
        if policy.cluster_cidrs:
            assert any(_inside(d, c) for c in policy.cluster_cidrs), d
        assert not any(_overlap(d, denied) for denied, _ in DENIED), d
        assert not any(_overlap(d, s) for s in policy.host_subnets if s not in declared), d
        minimum = policy.min_prefix_v4 if d.version == 4 else policy.min_prefix_v6
        assert d.prefixlen >= minimum and d.prefixlen > 0
        # the gateway: the routed node's own address of the family, never ours
        assert r.node != own and r.node in by_name
        assert r.gateway in by_name[r.node].addresses and r.gateway.version == d.version
        assert d in by_name[r.node].cidrs
        assert r.gateway not in own_addresses and r.gateway not in policy.host_addresses
        assert not _network_or_broadcast(r.gateway, policy.host_subnets)
        # contested CIDRs are nobody's: no other node claims anything overlapping
        for other in networks:
            if other.name == r.node:
                continue
            claims = [c for c in other.cidrs if other.name == own or policy.refusal(c) is None]
            assert not any(_overlap(d, c) for c in claims), (d, other)
    assert len(set(dsts)) == len(dsts)
    for a, b in itertools.combinations(dsts, 2):
        assert not _overlap(a, b)
    # every CIDR of another node: a route or a problem naming it
    wanted = sum(len(n.cidrs) for n in networks if n.name != own)
    assert len(routes) + len([p for p in problems if p.value]) == wanted


@settings(max_examples=200, deadline=None)
@given(
    node_facts(),
    st.lists(node_facts(), min_size=1, max_size=4),
    policies(),
    st.sampled_from([None, "me", "n2"]),
)
def test_incremental_updates_equal_a_full_computation_with_a_policy(
    start: list[NodeFacts],
    batches: list[list[NodeFacts]],
    policy: RangePolicy,
    own: str | None,
) -> None:
    static = policy.without_host()
    networks, _ = parse_nodes(start, policy=static)
    state = DesiredRoutes(networks, own=own, policy=policy)
    current = {n.name: n for n in networks}
    for batch in batches:
        fresh, _ = parse_nodes(batch, policy=static)
        changed: dict[str, NodeNetwork | None] = {n.name: n for n in fresh}
        for name in {f.name for f in batch} - set(changed):
            changed[name] = None  # a node that became invalid
        for name in list(current)[:1]:
            changed.setdefault(name, None)  # and one node removed
        before = dict(state.routes)
        touched = state.update(changed)
        for name, n in changed.items():
            if n is None:
                current.pop(name, None)
            else:
                current[name] = n
        full = DesiredRoutes(current.values(), own=own, policy=policy)
        assert sorted(state.routes.values(), key=route_sort_key) == sorted(
            full.routes.values(), key=route_sort_key
        )
        assert [str(p) for p in state.problems()] == [str(p) for p in full.problems()]
        assert [str(p) for p in state.contested()] == [str(p) for p in full.contested()]
        if touched is not None:  # a local update names every destination that changed
            differ = {
                d
                for d in before.keys() | state.routes.keys()
                if before.get(d) != state.routes.get(d)
            }
            assert differ <= touched
