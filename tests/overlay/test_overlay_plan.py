"""The overlay's pure planning (core.overlay): peers, entries, problems, incremental
updates equal to planning from scratch."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from xcluster_cni_lib.core.overlay import (
    DesiredOverlay,
    Entries,
    Fdb,
    Neighbour,
    OverlaySettings,
    peer_of,
    plan_entries,
    plan_overlay,
    vtep_mac,
)
from xcluster_cni_lib.core.values import NodeNetwork, Problem

S = OverlaySettings("xcvx77", 77)
ip = ipaddress.ip_address
net = ipaddress.ip_network


def node(name: str, *cidrs: str, addrs: tuple[str, ...] = ()) -> NodeNetwork:
    return NodeNetwork(
        name,
        tuple(sorted((net(c) for c in cidrs), key=lambda n: n.version)),
        tuple(sorted((ip(a) for a in addrs), key=lambda a: a.version)),
    )


OWN = node("a", "10.244.0.0/24", "fd00:10:244::/64", addrs=("192.168.1.1", "fd00::1"))
B = node("b", "10.244.1.0/24", "fd00:10:244:1::/64", addrs=("192.168.1.2", "fd00::2"))
C6 = node("c", "10.244.2.0/24", addrs=("fd00::3",))


def test_device_and_peer_entries() -> None:
    d = plan_overlay([OWN, B], own="a", settings=S)
    assert d.device is not None
    assert d.device.local == ip("192.168.1.1")
    assert d.device.mac == "0e:04:c0:a8:01:01"
    assert (d.device.name, d.device.vni, d.device.port) == ("xcvx77", 77, 8472)
    mac_b = vtep_mac(ip("192.168.1.2"))
    assert d.entries() == Entries(
        {ip("10.244.1.0"): mac_b, ip("fd00:10:244:1::"): mac_b}, {mac_b: ip("192.168.1.2")}
    )
    assert list(d.peers) == ["b"]
    assert d.problems() == []


def test_ipv6_underlay_when_own_has_no_ipv4() -> None:
    own = node("a", "10.244.0.0/24", addrs=("fd00::1",))
    d = plan_overlay([own, C6], own="a", settings=S)
    assert d.device is not None and d.device.family == 6
    assert d.device.mac.startswith("0e:06:")
    assert d.entries().fdb == {vtep_mac(ip("fd00::3")): ip("fd00::3")}


def test_node_without_underlay_address_is_a_problem() -> None:
    d = plan_overlay([OWN, B, C6], own="a", settings=S)
    problems = d.problems()
    assert [p.node for p in problems] == ["c"]
    assert "no IPv4 node address" in problems[0].reason
    assert "c" not in d.peers
    assert isinstance(peer_of(C6, 4), Problem)


def test_shared_underlay_address_is_a_problem_for_both() -> None:
    b2 = node("b2", "10.244.9.0/24", addrs=("192.168.1.2",))
    d = plan_overlay([OWN, B, b2], own="a", settings=S)
    assert {p.node for p in d.problems()} == {"b", "b2"}
    assert d.entries() == Entries()
    # one of them goes: the other gets its entries back
    touched = d.update({"b2": None})
    assert set(d.peers) == {"b"}
    assert ip("10.244.1.0") in touched[0]
    assert d.problems() == []


def test_own_underlay_address_on_another_node_is_a_problem() -> None:
    twin = node("twin", "10.244.5.0/24", addrs=("192.168.1.1",))
    d = plan_overlay([OWN, twin], own="a", settings=S)
    assert [p.node for p in d.problems()] == ["twin"]
    assert "own node" in d.problems()[0].reason


def test_shared_vtep_is_a_problem() -> None:
    dup = node("d", "10.244.1.0/25", addrs=("192.168.1.9",))
    d = plan_overlay([OWN, B, dup], own="a", settings=S)
    assert {p.node for p in d.problems()} == {"b", "d"}


def test_unknown_own_node_plans_no_device() -> None:
    d = plan_overlay([B], own="a", settings=S)
    assert d.device is None
    assert "not among the nodes" in d.problems()[0].reason
    assert plan_overlay([B], own=None, settings=S).device is None
    noaddr = node("a", "10.244.0.0/24")
    assert plan_overlay([noaddr, B], own="a", settings=S).device is None


def test_plan_entries_puts_and_deletes() -> None:
    wanted = Entries({ip("10.0.0.0"): "m1", ip("10.0.1.0"): "m2"}, {"m1": ip("1.1.1.1")})
    present = Entries({ip("10.0.0.0"): "m1", ip("10.0.1.0"): "x", ip("10.0.2.0"): "m3"}, {})
    plan = plan_entries(wanted, present)
    assert plan.put_neighbours == (Neighbour(ip("10.0.1.0"), "m2"),)
    assert plan.put_fdb == (Fdb("m1", ip("1.1.1.1")),)
    assert plan.delete_neighbours == (Neighbour(ip("10.0.2.0"), "m3"),)
    assert len(plan) == 3 and plan.without_deletes().delete_neighbours == ()
    only = plan_entries(wanted, present, neighbours=[ip("10.0.2.0")], fdb=[])
    assert len(only) == 1 and only.delete_neighbours


# --- properties ---------------------------------------------------------------------------

ipv4 = st.integers(min_value=1, max_value=2**32 - 2).map(ipaddress.IPv4Address)


@given(st.lists(ipv4, min_size=2, max_size=50, unique=True))
def test_ipv4_mac_derivation_is_injective(addresses: list[ipaddress.IPv4Address]) -> None:
    macs = {vtep_mac(a) for a in addresses}
    assert len(macs) == len(addresses)
    for m in macs:
        first = int(m.split(":")[0], 16)
        assert first & 0x02 and not first & 0x01  # locally administered unicast


@st.composite
def clusters(draw: st.DrawFn) -> list[NodeNetwork]:
    """Small clusters with collisions likely: few addresses and CIDRs to pick from."""
    count = draw(st.integers(min_value=1, max_value=8))
    out = []
    for i in range(count):
        a4 = draw(st.one_of(st.none(), st.integers(1, 6)))
        a6 = draw(st.one_of(st.none(), st.integers(1, 6)))
        c4 = draw(st.one_of(st.none(), st.integers(0, 6)))
        c6 = draw(st.one_of(st.none(), st.integers(0, 6)))
        cidrs = [f"10.244.{c4}.0/24"] if c4 is not None else []
        cidrs += [f"fd00:10:244:{c6}::/64"] if c6 is not None else []
        addrs = tuple(a for a in (a4 and f"192.168.0.{a4}", a6 and f"fd00::{a6}") if a)
        out.append(node(f"n{i}", *cidrs, addrs=addrs))
    return out


def snapshot(d: DesiredOverlay) -> tuple[object, ...]:
    e = d.entries()
    return dict(e.neighbours), dict(e.fdb), d.problems(), d.device


@settings(max_examples=200, deadline=None)
@given(clusters(), clusters(), st.data())
def test_incremental_updates_equal_planning_from_scratch(
    before: list[NodeNetwork], after: list[NodeNetwork], data: st.DataObject
) -> None:
    own = "n0"
    # keep the own node the same, so the device is the same
    after = [before[0], *after[1:]]
    d = plan_overlay(before, own=own, settings=S)
    old = {n.name: n for n in before}
    new = {n.name: n for n in after}
    changes = {
        name: new.get(name)
        for name in {*old, *new}
        if name != own and old.get(name) != new.get(name)
    }
    # in any order, in any grouping
    names = data.draw(st.permutations(sorted(changes)))
    split = data.draw(st.integers(0, len(names)))
    old_entries = dict(d.entries().neighbours), dict(d.entries().fdb)
    t1 = d.update({n: changes[n] for n in names[:split]})
    t2 = d.update({n: changes[n] for n in names[split:]})
    fresh = plan_overlay(after, own=own, settings=S)
    assert snapshot(d) == snapshot(fresh)
    # every key whose wanted entry changed was reported as touched
    e = fresh.entries()
    for addr in {*old_entries[0], *e.neighbours}:
        if old_entries[0].get(addr) != e.neighbours.get(addr):
            assert addr in t1[0] | t2[0]
    for mac in {*old_entries[1], *e.fdb}:
        if old_entries[1].get(mac) != e.fdb.get(mac):
            assert mac in t1[1] | t2[1]


@settings(max_examples=100, deadline=None)
@given(clusters())
def test_planning_is_idempotent(nodes: list[NodeNetwork]) -> None:
    d = plan_overlay(nodes, own="n0", settings=S)
    first = snapshot(d)
    # applying the same networks again changes nothing
    d.update({n.name: n for n in nodes[1:]})
    assert snapshot(d) == first
    # a plan against what it wants is empty
    assert not plan_entries(
        d.entries(), Entries(dict(d.entries().neighbours), dict(d.entries().fdb))
    )
    # no node gets entries while it is a problem, and entries never clash
    problem_nodes = {p.node for p in d.problems()}
    assert not problem_nodes & set(d.peers)
    assert len({p.underlay for p in d.peers.values()}) == len(d.peers)
