"""Route planning: desired routes from node networks, and plans from desired vs present."""

from __future__ import annotations

import ipaddress
import itertools

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xcluster_cni_lib.core.planning import (
    CidrIndex,
    DesiredRoutes,
    apply_plan_model,
    canonical_route,
    desired_routes,
    desired_routes_from_facts,
    plan_routes,
    route_sort_key,
)
from xcluster_cni_lib.core.values import Annotations, NodeFacts, NodeNetwork, Plan, Route

net = ipaddress.ip_network
ip = ipaddress.ip_address


def R(dst: str, gw: str, node: str = "") -> Route:
    return Route(dst=net(dst), gateway=ip(gw), node=node)


def N(name: str, cidrs: tuple[str, ...] = (), addrs: tuple[str, ...] = ()) -> NodeNetwork:
    return NodeNetwork(
        name=name,
        cidrs=tuple(net(c) for c in cidrs),
        addresses=tuple(ip(a) for a in addrs),
    )


# -- desired_routes ------------------------------------------------------------------

DUAL = [
    N("a", ("10.244.1.0/24", "fd00:10:244:1::/64"), ("192.168.1.1", "fd00:1::1")),
    N("b", ("10.244.2.0/24", "fd00:10:244:2::/64"), ("192.168.1.2", "fd00:1::2")),
    N("c", ("10.244.3.0/24", "fd00:10:244:3::/64"), ("192.168.1.3", "fd00:1::3")),
]


def test_one_route_per_family_to_every_other_node() -> None:
    routes, problems = desired_routes(DUAL, own="b")
    assert [(str(r.dst), str(r.gateway), r.node) for r in routes] == [
        ("10.244.1.0/24", "192.168.1.1", "a"),
        ("10.244.3.0/24", "192.168.1.3", "c"),
        ("fd00:10:244:1::/64", "fd00:1::1", "a"),
        ("fd00:10:244:3::/64", "fd00:1::3", "c"),
    ]
    assert problems == []


def test_without_own_node_every_node_gets_a_route() -> None:
    routes, _ = desired_routes(DUAL, own=None)
    assert {r.node for r in routes} == {"a", "b", "c"} and len(routes) == 6
    routes, _ = desired_routes(DUAL, own="not-there")
    assert len(routes) == 6


def test_output_is_sorted_whatever_the_input_order() -> None:
    expected, _ = desired_routes(DUAL, own="a")
    for perm in itertools.permutations(DUAL):
        assert desired_routes(perm, own="a")[0] == expected
    # numeric, not textual order: 10.244.10.0 after 10.244.9.0
    nodes = [N(f"n{i}", (f"10.244.{i}.0/24",), (f"10.0.0.{i}",)) for i in (10, 9, 100)]
    assert [str(r.dst) for r in desired_routes(nodes, own=None)[0]] == [
        "10.244.9.0/24",
        "10.244.10.0/24",
        "10.244.100.0/24",
    ]


def test_family_without_address_is_reported() -> None:
    nodes = [N("a", ("10.244.1.0/24", "fd00::/64"), ("192.168.1.1",)), N("me")]
    routes, problems = desired_routes(nodes, own="me")
    assert routes == [R("10.244.1.0/24", "192.168.1.1")]
    assert [(p.node, p.reason) for p in problems] == [
        ("a", "no IPv6 address; no route to its pod CIDR fd00::/64")
    ]


def test_address_without_cidr_of_its_family_is_fine() -> None:
    nodes = [N("a", ("10.244.1.0/24",), ("192.168.1.1", "fd00:1::1"))]
    assert desired_routes(nodes, own=None) == ([R("10.244.1.0/24", "192.168.1.1")], [])


def test_node_without_pod_cidr_is_reported() -> None:
    routes, problems = desired_routes([N("new", (), ("192.168.1.9",))], own=None)
    assert routes == [] and [p.node for p in problems] == ["new"]
    assert "no pod CIDR" in problems[0].reason


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("10.244.1.0/24", "10.244.1.0/24"),  # the same CIDR
        ("10.244.0.0/16", "10.244.1.0/24"),  # first contains second
        ("10.244.1.0/25", "10.244.1.0/24"),  # second contains first
        ("fd00::/64", "fd00::1:0/112"),
    ],
)
def test_overlapping_cidrs_are_contested_whatever_the_names(first: str, second: str) -> None:
    a = N("a", (first,), ("192.168.1.1", "fd00:1::1"))
    b = N("b", (second,), ("192.168.1.2", "fd00:1::2"))
    for order in ([a, b], [b, a]):
        routes, problems = desired_routes(order, own=None)
        assert routes == []
        assert [(p.node, p.value) for p in problems] == [("a", first), ("b", second)]
        assert f"node a's pod CIDR {net(first)}" in problems[1].reason
        assert problems[0].reason.endswith("contested, no route to either")


def test_own_cidr_is_never_routed_away() -> None:
    me = N("z-me", ("10.244.1.0/24",), ("192.168.1.9",))
    thief = N("a", ("10.244.1.0/24", "fd00::/64"), ("192.168.1.1", "fd00:1::1"))
    routes, problems = desired_routes([thief, me], own="z-me")
    assert routes == [R("fd00::/64", "fd00:1::1")]
    assert "this node's own pod CIDR 10.244.1.0/24" in problems[0].reason


def test_an_overlap_costs_only_its_family() -> None:
    a = N("a", ("10.244.1.0/24", "fd00:1::/64"), ("192.168.1.1", "fd00::1"))
    b = N("b", ("10.244.1.0/24", "fd00:2::/64"), ("192.168.1.2", "fd00::2"))
    routes, problems = desired_routes([a, b], own=None)
    assert {(r.node, r.family) for r in routes} == {("a", 6), ("b", 6)}
    assert [p.node for p in problems] == ["a", "b"]


def test_loser_with_unroutable_cidr_still_blocks_later_overlaps() -> None:
    # a claims 10.1.0.0/16 without an IPv4 address; b (later by name) overlapping it still loses
    a = N("a", ("10.1.0.0/16",), ())
    b = N("b", ("10.1.2.0/24",), ("192.168.1.2",))
    routes, problems = desired_routes([a, b], own=None)
    assert routes == [] and [p.node for p in problems] == ["a", "b"]


def test_many_nodes_are_quick() -> None:
    nodes = [
        N(
            f"n{i:05}",
            (f"10.{i // 256}.{i % 256}.0/24", f"fd00:{i:x}::/64"),
            (f"172.16.{i // 256}.{i % 256}", f"fd01::{i:x}"),
        )
        for i in range(5000)
    ]
    routes, problems = desired_routes(nodes, own="n00000")
    assert len(routes) == 9998 and problems == []


def test_desired_routes_from_facts_is_parse_then_plan() -> None:
    facts = [
        NodeFacts("a", pod_cidrs=("10.244.1.0/24",), internal_ips=("192.168.1.1",)),
        NodeFacts("b", pod_cidrs=("10.244.2.0/24",), cidr_annotation="junk"),
        NodeFacts("c", pod_cidrs=("10.244.3.0/24", "fd00::/64"), internal_ips=("192.168.1.3",)),
    ]
    routes, problems = desired_routes_from_facts(facts, own="a")
    assert routes == [R("10.244.3.0/24", "192.168.1.3")]
    assert [p.node for p in problems] == ["b", "c"]  # b: no address; c: no IPv6 address
    # facts read with a CIDR annotation "x" that no node has
    read_with_x = [attrs.evolve(f, annotations=Annotations(cidr="x")) for f in facts]
    routes, problems = desired_routes_from_facts(read_with_x, own="a")
    assert routes == [] and [(p.node, p.key) for p in problems] == [
        ("a", "x"),
        ("b", "x"),
        ("c", "x"),
    ]


# -- plan_routes: exhaustive small cases ---------------------------------------------

D1 = "10.244.1.0/24"
D2 = "10.244.2.0/24"
G1, G2, G3 = "192.168.1.1", "192.168.1.2", "192.168.1.3"


@pytest.mark.parametrize(
    ("desired", "present", "expected"),
    [
        ([], [], Plan()),
        ([R(D1, G1)], [R(D1, G1)], Plan()),
        ([R(D1, G1)], [], Plan(add=(R(D1, G1),))),
        ([], [R(D1, G1)], Plan(delete=(R(D1, G1),))),
        ([R(D1, G2)], [R(D1, G1)], Plan(replace=(R(D1, G2),), delete=(R(D1, G1),))),
        # several present for one dst: keep the right one, delete the rest
        ([R(D1, G1)], [R(D1, G1), R(D1, G2)], Plan(delete=(R(D1, G2),))),
        (
            [R(D1, G3)],
            [R(D1, G2), R(D1, G1)],
            Plan(replace=(R(D1, G3),), delete=(R(D1, G1), R(D1, G2))),
        ),
        ([], [R(D1, G1), R(D1, G2)], Plan(delete=(R(D1, G1), R(D1, G2)))),
        # duplicates in present count once
        ([R(D1, G1)], [R(D1, G1), R(D1, G1)], Plan()),
        (
            [R(D1, G1), R(D2, G2)],
            [R(D2, G1), R("10.9.0.0/16", G3)],
            Plan(
                add=(R(D1, G1),),
                replace=(R(D2, G2),),
                delete=(R("10.9.0.0/16", G3), R(D2, G1)),
            ),
        ),
        # same address, different prefix length: another destination
        (
            [R("10.244.0.0/16", G1)],
            [R("10.244.0.0/24", G1)],
            Plan(add=(R("10.244.0.0/16", G1),), delete=(R("10.244.0.0/24", G1),)),
        ),
    ],
)
def test_plan_cases(desired: list[Route], present: list[Route], expected: Plan) -> None:
    plan = plan_routes(desired, present)
    assert plan == expected
    for order in itertools.permutations(("delete", "replace", "add")):
        assert apply_plan_model(present, plan, order=order) == set(desired)


def test_node_name_does_not_matter_for_comparison() -> None:
    assert plan_routes([R(D1, G1, node="a")], [R(D1, G1)]) == Plan()
    assert plan_routes([R(D1, G1, node="a")], []).add[0].node == "a"  # but is kept for logs


def test_canonical_comparison_of_mapped_ipv4() -> None:
    mapped = Route(dst=net("::ffff:10.244.1.0/120"), gateway=ip("::ffff:192.168.1.1"))
    assert canonical_route(mapped) == R(D1, G1)
    assert plan_routes([R(D1, G1)], [mapped]) == Plan()
    assert plan_routes([mapped], []) == Plan(add=(R(D1, G1),))
    plain = R("fd00::/64", "fd00::1")
    assert canonical_route(plain) is plain


def test_canonical_route_with_one_mapped_half() -> None:
    v4 = R(D1, G1, node="a")
    for mapped in (
        Route(dst=net("::ffff:10.244.1.0/120"), gateway=ip(G1), node="a"),  # mapped dst only
        Route(dst=net(D1), gateway=ip("::ffff:192.168.1.1"), node="a"),  # mapped gateway only
    ):
        got = canonical_route(mapped)
        assert (type(got.dst), type(got.gateway), got) == (type(v4.dst), type(v4.gateway), v4)
        assert got.node == "a"
    assert canonical_route(v4) is v4


def test_model_replace_rewrites_the_lowest_gateway_route() -> None:
    # the kernel model of the module doc: replace rewrites one route of the destination
    assert apply_plan_model([R(D1, G1)], Plan(replace=(R(D1, G2),))) == {R(D1, G2)}
    assert apply_plan_model([R(D1, G2), R(D1, G1)], Plan(replace=(R(D1, G3),))) == {
        R(D1, G2),
        R(D1, G3),
    }
    assert apply_plan_model([], Plan(replace=(R(D1, G2),))) == {R(D1, G2)}  # or creates it
    assert apply_plan_model([R(D1, G1)], Plan(delete=(R(D1, G2),))) == {R(D1, G1)}
    # the other orders of the module doc apply the lists as given
    plan = Plan(add=(R(D2, G1),), delete=(R(D2, G1),))
    assert apply_plan_model([], plan, order=("delete", "replace", "add")) == {R(D2, G1)}
    assert apply_plan_model([], plan, order=("add", "replace", "delete")) == set()


def test_first_desired_route_per_destination_wins() -> None:
    assert plan_routes([R(D1, G1), R(D1, G2)], []) == Plan(add=(R(D1, G1),))


def test_model_add_over_an_existing_route_is_eexist() -> None:
    with pytest.raises(ValueError, match="has a route"):
        apply_plan_model([R(D1, G1)], Plan(add=(R(D1, G2),)))


def test_plan_lists_are_sorted() -> None:
    desired = [R(f"10.{i}.0.0/16", G1) for i in (30, 4, 200)] + [R("fd00::/64", "fd00::1")]
    plan = plan_routes(reversed(desired), [])
    assert [str(r.dst) for r in plan.add] == [
        "10.4.0.0/16",
        "10.30.0.0/16",
        "10.200.0.0/16",
        "fd00::/64",
    ]


# -- plan_routes: properties ---------------------------------------------------------

# Small pools make collisions (same dst, different gateways) common.
dsts = st.sampled_from(
    [net(f"10.244.{i}.0/24") for i in range(4)]
    + [net("10.244.0.0/16"), net("fd00::/64"), net("fd00:1::/64"), net("::ffff:10.244.9.0/120")]
)
gws4 = st.sampled_from([ip(f"192.168.1.{i}") for i in range(1, 4)] + [ip("::ffff:192.168.1.1")])
gws6 = st.sampled_from([ip(f"fd00:9::{i}") for i in range(1, 4)])


@st.composite
def routes(draw: st.DrawFn) -> Route:
    dst = draw(dsts)
    gw = draw(gws6) if dst.version == 6 and not dst.network_address.ipv4_mapped else draw(gws4)
    return Route(dst=dst, gateway=gw)


def unique_dst(rs: list[Route]) -> list[Route]:
    seen: dict[object, Route] = {}
    for r in rs:
        seen.setdefault(canonical_route(r).dst, r)
    return list(seen.values())


ORDERS = list(itertools.permutations(("delete", "replace", "add")))


@settings(max_examples=300)
@given(st.lists(routes(), max_size=8), st.lists(routes(), max_size=8), st.sampled_from(ORDERS))
def test_applying_a_plan_yields_exactly_desired(
    desired: list[Route], present: list[Route], order: tuple[str, ...]
) -> None:
    desired = unique_dst(desired)
    plan = plan_routes(desired, present)
    after = apply_plan_model(present, plan, order=order)
    assert after == {canonical_route(r) for r in desired}


@settings(max_examples=300)
@given(st.lists(routes(), max_size=8), st.lists(routes(), max_size=8))
def test_planning_again_is_empty(desired: list[Route], present: list[Route]) -> None:
    desired = unique_dst(desired)
    after = apply_plan_model(present, plan_routes(desired, present))
    assert plan_routes(desired, after) == Plan()
    assert not plan_routes(desired, after)


@settings(max_examples=300)
@given(st.lists(routes(), max_size=8), st.lists(routes(), max_size=8))
def test_plan_is_consistent(desired: list[Route], present: list[Route]) -> None:
    desired = unique_dst(desired)
    plan = plan_routes(desired, present)
    canon_present = {canonical_route(r) for r in present}
    canon_desired = {canonical_route(r) for r in desired}
    changed = set(plan.add) | set(plan.replace)
    assert not changed & set(plan.delete)  # nothing both added and deleted
    assert not changed & canon_present  # nothing already right is touched
    assert set(plan.delete) <= canon_present - canon_desired  # only present, unwanted routes go
    assert changed <= canon_desired
    assert len({r.dst for r in plan.add + plan.replace}) == len(plan.add) + len(plan.replace)
    present_dsts = {r.dst for r in canon_present}
    assert all(r.dst not in present_dsts for r in plan.add)
    assert all(r.dst in present_dsts for r in plan.replace)


@given(st.lists(routes(), max_size=8), st.lists(routes(), max_size=8), st.randoms())
def test_plan_does_not_depend_on_input_order(
    desired: list[Route], present: list[Route], rnd: object
) -> None:
    desired = unique_dst(desired)
    shuffled = list(present)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert plan_routes(desired, present) == plan_routes(list(reversed(desired)), shuffled)


@st.composite
def networks(draw: st.DrawFn) -> list[NodeNetwork]:
    count = draw(st.integers(0, 6))
    out = []
    for i in range(count):
        cidrs = draw(
            st.lists(
                st.sampled_from(
                    ["10.1.0.0/16", "10.1.1.0/24", "10.2.0.0/24", "fd00::/64", "fd00::/56"]
                ),
                max_size=2,
                unique_by=lambda c: net(c).version,
            )
        )
        addrs = draw(
            st.lists(st.sampled_from(["192.168.0.1", "fd00:9::1"]), max_size=2, unique=True)
        )
        out.append(N(f"n{i}", tuple(cidrs), tuple(addrs)))
    return out


@given(networks(), st.sampled_from([None, "n0", "n3"]))
def test_desired_routes_are_plannable(nodes: list[NodeNetwork], own: str | None) -> None:
    routes_, problems = desired_routes(nodes, own=own)
    dst_list = [r.dst for r in routes_]
    assert len(set(dst_list)) == len(dst_list)  # one route per destination
    for a, b in itertools.combinations(dst_list, 2):
        assert a.version != b.version or not a.overlaps(b)  # no overlaps survive
    assert all(r.node != own for r in routes_)
    assert all(r.gateway.version == r.dst.version for r in routes_)
    wanted = sum(len(n.cidrs) for n in nodes if n.name != own)
    assert (
        len(routes_) + len([p for p in problems if p.value]) == wanted
    )  # each CIDR: route or problem


# -- DesiredRoutes: incremental desired routes -----------------------------------------


def test_desired_routes_state_follows_node_changes_locally() -> None:
    state = DesiredRoutes(DUAL, own="b")
    assert list(state.routes.values()) == desired_routes(DUAL, own="b")[0]
    moved = N("c", ("10.244.3.0/24", "fd00:10:244:3::/64"), ("192.168.9.3", "fd00:1::3"))
    touched = state.update({"c": moved})
    assert touched == {net("10.244.3.0/24"), net("fd00:10:244:3::/64")}
    assert state.routes[net("10.244.3.0/24")] == R("10.244.3.0/24", "192.168.9.3")
    assert state.update({"a": None}) == {net("10.244.1.0/24"), net("fd00:10:244:1::/64")}
    assert sorted(str(d) for d in state.routes) == ["10.244.3.0/24", "fd00:10:244:3::/64"]
    assert state.update({}) == set()


def test_desired_routes_state_recomputes_when_an_overlap_is_involved() -> None:
    a = N("a", ("10.244.0.0/16",), ("192.168.1.1",))
    b = N("b", ("10.244.1.0/24",), ("192.168.1.2",))
    state = DesiredRoutes([a, b], own=None)
    assert list(state.routes) == [] and len(state.problems()) == 2  # contested
    # a leaves: b's CIDR is no longer contested and gets its route
    assert state.update({"a": None}) is None
    assert list(state.routes.values()) == [R("10.244.1.0/24", "192.168.1.2")]
    assert state.problems() == []
    # the own node changing recomputes too
    state = DesiredRoutes([a, b], own="b")
    assert state.update({"b": None}) is None
    assert list(state.routes) == [net("10.244.0.0/16")]


def test_a_change_after_a_recomputation_stays_local() -> None:
    a = N("a", ("10.244.1.0/24",), ("192.168.1.1",))
    b = N("b", ("10.244.2.0/24",), ("192.168.1.2",))
    state = DesiredRoutes([a, b], own=None)
    # a moves onto b's CIDR: an overlap, everything is recomputed
    assert state.update({"a": N("a", ("10.244.2.0/25",), ("192.168.1.1",))}) is None
    # a new node on a's old CIDR overlaps nothing now: planned alone
    c = N("c", ("10.244.1.0/24",), ("192.168.1.3",))
    assert state.update({"c": c}) == {net("10.244.1.0/24")}
    assert state.routes[net("10.244.1.0/24")] == R("10.244.1.0/24", "192.168.1.3", "c")


def test_a_cidr_left_locally_is_free_for_a_local_change() -> None:
    a = N("a", ("10.244.1.0/24",), ("192.168.1.1",))
    b = N("b", ("10.244.2.0/24",), ("192.168.1.2",))
    state = DesiredRoutes([a, b], own=None)
    moved = N("a", ("10.244.3.0/24",), ("192.168.1.1",))
    assert state.update({"a": moved}) == {net("10.244.1.0/24"), net("10.244.3.0/24")}
    # 10.244.1.0/24 belongs to nobody now: a node taking it is planned alone
    c = N("c", ("10.244.1.0/25",), ("192.168.1.3",))
    assert state.update({"c": c}) == {net("10.244.1.0/25")}
    assert state.update({"c": None}) == {net("10.244.1.0/25")}
    assert state.update({"b": None}) == {net("10.244.2.0/24")}
    assert list(state.routes.values()) == [R("10.244.3.0/24", "192.168.1.1")]


def test_cidr_index_finds_equal_containing_and_contained() -> None:
    index = CidrIndex()
    index.add(net("10.1.0.0/16"), "wide")
    index.add(net("10.2.3.0/24"), "narrow")
    index.add(net("fd00::/64"), "six")
    assert index.overlapping(net("10.1.2.0/24")) == ["wide"]  # containing
    assert index.overlapping(net("10.2.0.0/16")) == ["narrow"]  # contained (enumerated)
    assert index.overlapping(net("10.0.0.0/8")) == ["wide", "narrow"]  # contained (scanned)
    assert index.overlapping(net("10.3.0.0/24")) == []
    assert index.overlapping(net("fd00::/64")) == ["six"]
    index.remove(net("10.1.0.0/16"), "wide")
    index.remove(net("10.1.0.0/16"), "wide")  # twice: no error
    assert index.overlapping(net("10.1.2.0/24")) == []


# -- wide CIDR pools: nested, adjacent, equal and containing, many lengths, both families --

# Every CIDR is the k-th block of its length from a common base, so CIDRs of different
# lengths nest (k=0 at every length shares the base), blocks k and k+1 are adjacent, equal
# draws are equal, and lengths one apart exercise both of CidrIndex's lookup strategies.
V4_LENGTHS = (8, 12, 15, 16, 17, 23, 24, 25, 30, 31, 32)
V6_LENGTHS = (32, 48, 55, 56, 57, 63, 64, 65, 96, 112, 127, 128)
V4_BASE = int(ip("10.0.0.0"))
V6_BASE = int(ip("fd00::"))
NAMES = [f"n{i}" for i in range(8)]
V4_ADDRS = [ip(f"192.168.0.{i}") for i in range(1, 4)]
V6_ADDRS = [ip(f"fd00:9::{i}") for i in range(1, 4)]


@st.composite
def wide_cidrs(
    draw: st.DrawFn, family: int | None = None, *, close: bool = False
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR from the pools; ``close``: only three lengths one apart, so that a query's
    every possible subnet of the next length is often indexed (CidrIndex enumerates them)."""
    if family is None:
        family = draw(st.sampled_from([4, 6]))
    k = draw(st.integers(0, 4))
    if family == 4:
        length = draw(st.sampled_from((15, 16, 17) if close else V4_LENGTHS))
        return ipaddress.IPv4Network((V4_BASE + (k << (32 - length)), length))
    length = draw(st.sampled_from((63, 64, 65) if close else V6_LENGTHS))
    return ipaddress.IPv6Network((V6_BASE + (k << (128 - length)), length))


@st.composite
def wide_network(draw: st.DrawFn, name: str) -> NodeNetwork:
    cidrs = []
    addrs = []
    for family, pool in ((4, V4_ADDRS), (6, V6_ADDRS)):
        if draw(st.integers(0, 3)):  # mostly dual-stack
            cidrs.append(draw(wide_cidrs(family)))
        if draw(st.integers(0, 4)):  # sometimes without an address of the family
            addrs.append(draw(st.sampled_from(pool)))
    return NodeNetwork(name=name, cidrs=tuple(cidrs), addresses=tuple(addrs))


@st.composite
def wide_networks(draw: st.DrawFn) -> list[NodeNetwork]:
    names = draw(st.lists(st.sampled_from(NAMES), max_size=len(NAMES), unique=True))
    return [draw(wide_network(name)) for name in names]


def reference_desired_routes(
    nodes: list[NodeNetwork], own: str | None
) -> tuple[list[Route], list[str]]:
    """``desired_routes`` as the module doc says it, by brute force: a CIDR overlapping
    another node's (the own node's included) is contested and nobody's; a node address
    that is one of the own node's is no gateway."""
    by_name = {n.name: n for n in nodes}
    ordered = sorted(by_name.values(), key=lambda n: n.name)
    own_addresses = set(by_name[own].addresses) if own in by_name else set()
    routes: list[Route] = []
    problems: list[str] = []
    for n in ordered:
        if n.name == own:
            continue
        if not n.cidrs:
            problems.append(f"node {n.name}: no pod CIDR; no route to this node")
        for cidr in n.cidrs:
            rivals = sorted(
                {
                    m.name
                    for m in ordered
                    if m.name != n.name
                    for c in m.cidrs
                    if c.version == cidr.version and c.overlaps(cidr)
                }
            )
            address = next((a for a in n.addresses if a.version == cidr.version), None)
            if rivals:
                named = []
                for rival in rivals[:3]:
                    theirs = next(c for c in by_name[rival].cidrs if c.version == cidr.version)
                    whose = "this node's own" if rival == own else f"node {rival}'s"
                    named.append(f"{whose} pod CIDR {theirs}")
                tail = f" and {len(rivals) - 3} more" if len(rivals) > 3 else ""
                problems.append(
                    f"node {n.name}: pod CIDR {cidr} overlaps {', '.join(named)}{tail}: "
                    "contested, no route to either"
                )
            elif address is None:
                problems.append(
                    f"node {n.name}: no IPv{cidr.version} address; no route to its pod CIDR {cidr}"
                )
            elif address in own_addresses:
                problems.append(
                    f"node {n.name}: address {address} is this node's own; "
                    f"no route to its pod CIDR {cidr}"
                )
            else:
                routes.append(Route(dst=cidr, gateway=address, node=n.name))
    routes.sort(key=route_sort_key)
    return routes, problems


def route_view(routes: list[Route]) -> list[tuple[str, str, str]]:
    return [(str(r.dst), str(r.gateway), r.node) for r in routes]


@settings(max_examples=200)
@given(wide_networks(), st.sampled_from([None, "n0", "n3", "n7"]))
def test_desired_routes_equal_a_brute_force_model(
    nodes: list[NodeNetwork], own: str | None
) -> None:
    routes, problems = desired_routes(nodes, own=own)
    expected_routes, expected_problems = reference_desired_routes(nodes, own)
    assert route_view(routes) == route_view(expected_routes)
    assert [str(p) for p in problems] == expected_problems
    assert all(p.value == str(c) for p in problems if (c := p.value) is not None)


# CidrIndex against a list of (cidr, owner) pairs, after every add and remove.
@st.composite
def index_ops(
    draw: st.DrawFn,
) -> list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network, str]]:
    ops: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
    held: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
    close = draw(st.booleans())
    for _ in range(draw(st.integers(1, 20))):
        if held and draw(st.integers(0, 2)) == 0:
            cidr, owner = draw(st.sampled_from(held))  # remove something held
            held.remove((cidr, owner))
            ops.append(("remove", cidr, owner))
        elif draw(st.integers(0, 9)) == 0:
            cidr, owner = draw(wide_cidrs(close=close)), draw(st.sampled_from(NAMES))
            ops.append(("remove", cidr, owner))  # mostly a no-op
        else:
            cidr, owner = draw(wide_cidrs(close=close)), draw(st.sampled_from(NAMES))
            held.append((cidr, owner))
            ops.append(("add", cidr, owner))
    return ops


@settings(max_examples=200)
@given(index_ops(), st.lists(wide_cidrs(), min_size=1, max_size=4))
def test_cidr_index_equals_a_list_scan(
    ops: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network, str]],
    queries: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> None:
    index = CidrIndex()
    held: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
    for op, cidr, owner in ops:
        if op == "add":
            index.add(cidr, owner)
            held.append((cidr, owner))
        else:
            index.remove(cidr, owner)
            if (cidr, owner) in held:
                held.remove((cidr, owner))
        for q in [*queries, cidr]:
            expected = [o for c, o in held if c.version == q.version and c.overlaps(q)]
            assert sorted(index.overlapping(q)) == sorted(expected), (op, cidr, q)


def test_cidr_index_keeps_other_cidrs_of_a_length_after_a_remove() -> None:
    index = CidrIndex()
    index.add(net("10.1.0.0/24"), "a")
    index.add(net("10.2.0.0/24"), "b")
    index.add(net("10.2.0.0/24"), "c")  # the same CIDR twice
    index.remove(net("10.1.0.0/24"), "a")
    assert index.overlapping(net("10.2.0.0/24")) == ["b", "c"]
    index.remove(net("10.2.0.0/24"), "b")
    assert index.overlapping(net("10.2.0.0/16")) == ["c"]
    index.remove(net("10.2.0.0/24"), "x")  # not an owner: nothing happens
    index.remove(net("10.3.0.0/24"), "c")  # not indexed: nothing happens
    index.remove(net("fd00::/64"), "c")  # no CIDR of this length: nothing happens
    assert index.overlapping(net("10.0.0.0/8")) == ["c"]
    # a daemon adds and removes CIDRs for months: a removed one leaves nothing behind
    index.remove(net("10.2.0.0/24"), "c")
    assert index._by_length == {4: {}, 6: {}}


def test_cidr_index_finds_contained_cidrs_by_both_strategies() -> None:
    index = CidrIndex()
    index.add(net("10.0.1.0/24"), "inner1")
    index.add(net("10.0.3.128/25"), "inner2")
    index.add(net("10.0.0.0/23"), "mid")
    index.add(net("fd00:0:0:1::/64"), "six")
    # the /24 and /25 tables hold one CIDR each: fewer than a /23 or /22 can hold (scanned)
    assert sorted(index.overlapping(net("10.0.0.0/23"))) == ["inner1", "mid"]
    assert sorted(index.overlapping(net("10.0.0.0/22"))) == ["inner1", "inner2", "mid"]
    assert index.overlapping(net("10.0.2.0/23")) == ["inner2"]
    assert index.overlapping(net("10.0.2.0/24")) == []  # adjacent to both
    assert index.overlapping(net("fd00::/48")) == ["six"]
    assert index.overlapping(net("fd00::/64")) == []
    # a /24 table holding at least as many CIDRs as a /23 has /24s (enumerated), with
    # neighbours on both sides that must not be found
    for third in (0, 2, 4, 5):
        index.add(net(f"10.1.{third}.0/24"), f"x{third}")
    assert sorted(index.overlapping(net("10.1.4.0/23"))) == ["x4", "x5"]
    assert index.overlapping(net("10.1.2.0/23")) == ["x2"]
    assert index.overlapping(net("10.1.6.0/23")) == []
    for last in range(0, 64, 16):
        index.add(net(f"fd00:0:0:2::{last:x}/124"), f"y{last}")
    assert sorted(index.overlapping(net("fd00:0:0:2::/122"))) == ["y0", "y16", "y32", "y48"]
    assert sorted(index.overlapping(net("fd00:0:0:2::20/123"))) == ["y32", "y48"]


@st.composite
def node_changes(draw: st.DrawFn, start: list[NodeNetwork]) -> list[dict[str, NodeNetwork | None]]:
    """Batches of changes, each one of: a new node, a node gone, a node's whole network
    replaced, one CIDR replaced or dropped, an address changed."""
    current = {n.name: n for n in start}
    batches = []
    for _ in range(draw(st.integers(1, 8))):
        batch: dict[str, NodeNetwork | None] = {}
        for _ in range(draw(st.integers(1, 3))):
            name = draw(st.sampled_from(NAMES))
            old = current.get(name)
            kind = draw(st.sampled_from(["remove", "replace", "cidr", "address"]))
            new: NodeNetwork | None
            if old is None or kind == "replace":
                new = draw(wide_network(name))
            elif kind == "remove":
                new = None
            elif kind == "cidr":
                family = draw(st.sampled_from([4, 6]))
                keep = tuple(c for c in old.cidrs if c.version != family)
                if draw(st.booleans()):
                    keep += (draw(wide_cidrs(family)),)
                new = attrs.evolve(old, cidrs=tuple(sorted(keep, key=lambda c: c.version)))
            else:
                family = draw(st.sampled_from([4, 6]))
                keep_a = tuple(a for a in old.addresses if a.version != family)
                if draw(st.booleans()):
                    keep_a += (draw(st.sampled_from(V4_ADDRS if family == 4 else V6_ADDRS)),)
                new = attrs.evolve(old, addresses=tuple(sorted(keep_a, key=lambda a: a.version)))
            batch[name] = new
            if new is None:
                current.pop(name, None)
            else:
                current[name] = new
        batches.append(batch)
    return batches


@settings(max_examples=200)
@given(st.data(), wide_networks(), st.sampled_from([None, "n0", "n3", "n7"]))
def test_incremental_desired_routes_equal_a_full_computation(
    data: st.DataObject, nodes: list[NodeNetwork], own: str | None
) -> None:
    changes = data.draw(node_changes(nodes))
    state = DesiredRoutes(nodes, own=own)
    current = {n.name: n for n in nodes}
    for batch in changes:
        before = dict(state.routes)
        # local exactly when the own node is not involved and no CIDR of a changed node,
        # old or new, overlaps a CIDR of an unchanged node
        changed_cidrs = [
            c for name, new in batch.items() for n in (current.get(name), new) if n for c in n.cidrs
        ]
        unchanged_cidrs = [c for n in current.values() if n.name not in batch for c in n.cidrs]
        local = (own is None or own not in batch) and not any(
            a.version == b.version and a.overlaps(b) for a in changed_cidrs for b in unchanged_cidrs
        )
        touched = state.update(batch)
        assert (touched is not None) == local
        for name, new in batch.items():
            if new is None:
                current.pop(name, None)
            else:
                current[name] = new
        routes, problems = desired_routes(current.values(), own=own)
        assert route_view(sorted(state.routes.values(), key=route_sort_key)) == route_view(routes)
        assert [str(p) for p in state.problems()] == [str(p) for p in problems]
        assert state.networks == current
        if touched is not None:  # every destination whose route changed was reported
            changed = {d for d in {*before, *state.routes} if before.get(d) != state.routes.get(d)}
            changed |= {
                d for d in before if d in state.routes and before[d].node != state.routes[d].node
            }
            assert changed <= touched
