"""The pure masquerade rules (core.masquerade): desired sets, diffs, documents, parsing."""

from __future__ import annotations

import ipaddress
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xcluster_cni_lib.core import masquerade as m
from xcluster_cni_lib.core.values import IPNetwork, NodeNetwork

T = m.table_name(202)


def net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


def nets(*texts: str) -> tuple[IPNetwork, ...]:
    return tuple(net(t) for t in texts)


NODES = (
    NodeNetwork("a", nets("10.244.0.0/24", "fd00:10:244::/64")),
    NodeNetwork("b", nets("10.244.1.0/24", "fd00:10:244:1::/64")),
    NodeNetwork("c", nets("10.244.5.0/24")),
)


def test_table_name_is_per_instance() -> None:
    assert m.table_name(202) == "xcluster-cni-202"
    assert m.table_name(7) != m.table_name(8)


def test_desired_sets_local_is_own_node_cluster_is_every_node() -> None:
    sets = m.desired_sets(NODES, own="a", non_masquerade=nets("192.168.0.0/16"))
    assert sets.local4 == nets("10.244.0.0/24")
    assert sets.local6 == nets("fd00:10:244::/64")
    # adjacent CIDRs merged; sorted
    assert sets.cluster4 == nets("10.244.0.0/23", "10.244.5.0/24", "192.168.0.0/16")
    assert sets.cluster6 == nets("fd00:10:244::/63")


def test_unknown_own_node_masquerades_nothing() -> None:
    sets = m.desired_sets(NODES, own=None)
    assert sets.local4 == sets.local6 == ()
    assert sets.cluster4
    assert m.desired_sets(NODES, own="gone").local4 == ()


def test_overlapping_non_masquerade_cidrs_are_merged() -> None:
    sets = m.desired_sets(
        NODES, own="a", non_masquerade=nets("10.0.0.0/8", "10.244.5.7/32", "fd00::/8")
    )
    assert sets.cluster4 == nets("10.0.0.0/8")
    assert sets.cluster6 == nets("fd00::/8")


def test_diff_sets_deletes_and_adds_only_what_changed() -> None:
    before = m.desired_sets(NODES, own="a")
    after = m.desired_sets((*NODES, NodeNetwork("d", nets("10.244.9.0/24"))), own="a")
    diff = m.diff_sets(before, after)
    assert diff.add == {"cluster4": nets("10.244.9.0/24")}
    assert diff.delete == {}
    assert m.diff_sets(after, before).delete == {"cluster4": nets("10.244.9.0/24")}
    assert not m.diff_sets(after, after)
    # a merge: the two /24 go, the /23 comes, in one diff
    one = m.MasqueradeSets.of(cluster=nets("10.1.0.0/24"))
    two = m.MasqueradeSets.of(cluster=nets("10.1.0.0/24", "10.1.1.0/24"))
    d = m.diff_sets(one, two)
    assert d.delete == {"cluster4": nets("10.1.0.0/24")}
    assert d.add == {"cluster4": nets("10.1.0.0/23")}
    assert (d.added, d.deleted) == (1, 1)


def test_covering_never_drops_an_address() -> None:
    present = m.MasqueradeSets.of(local=nets("10.1.0.0/24"), cluster=nets("10.2.0.0/24"))
    desired = m.MasqueradeSets.of(cluster=nets("10.3.0.0/24"))
    target = m.covering(present, desired)
    assert target.local4 == nets("10.1.0.0/24")
    assert target.cluster4 == nets("10.2.0.0/24", "10.3.0.0/24")
    assert m.diff_sets(present, target).delete == {}


def test_table_document_replaces_the_table_atomically() -> None:
    sets = m.desired_sets(NODES, own="a")
    doc = m.table_document(T, sets)["nftables"]
    assert doc[0] == {"metainfo": {"json_schema_version": 1}}
    assert doc[1] == {"add": {"table": {"family": "inet", "name": T}}}
    assert doc[2] == {"delete": {"table": {"family": "inet", "name": T}}}
    assert "owned by xcluster-cni" in doc[3]["add"]["table"]["comment"]
    chain = doc[4]["add"]["chain"]
    assert (chain["type"], chain["hook"], chain["prio"]) == ("nat", "postrouting", 100)
    made = {c["add"]["set"]["name"]: c["add"]["set"] for c in doc if "set" in c.get("add", {})}
    assert list(made) == list(m.SET_NAMES)
    assert all(s["flags"] == ["interval"] for s in made.values())
    assert made["local4"]["elem"] == [{"prefix": {"addr": "10.244.0.0", "len": 24}}]
    assert made["cluster6"]["type"] == "ipv6_addr"
    rules = [c["add"]["rule"] for c in doc if "rule" in c.get("add", {})]
    assert [r["expr"] for r in rules] == [m.rule_expressions(4), m.rule_expressions(6)]
    assert rules[1]["expr"][0]["match"]["left"]["payload"]["protocol"] == "ip6"
    assert rules[0]["expr"][1]["match"]["op"] == "!="
    assert rules[0]["expr"][2] == {"masquerade": None}


def test_empty_sets_have_no_elem_key() -> None:
    doc = m.table_document(T, m.MasqueradeSets())["nftables"]
    assert all("elem" not in c["add"]["set"] for c in doc if "set" in c.get("add", {}))


def test_update_document_deletes_before_it_adds() -> None:
    one = m.MasqueradeSets.of(cluster=nets("10.1.0.0/24"))
    two = m.MasqueradeSets.of(cluster=nets("10.1.0.0/24", "10.1.1.0/24"))
    doc = m.update_document(T, m.diff_sets(one, two))["nftables"]
    assert [next(iter(c)) for c in doc] == ["metainfo", "delete", "add"]
    assert doc[1]["delete"]["element"] == {
        "family": "inet",
        "table": T,
        "name": "cluster4",
        "elem": [{"prefix": {"addr": "10.1.0.0", "len": 24}}],
    }


def test_fill_and_delete_documents() -> None:
    doc = m.fill_document(T, {"local4": nets("10.1.0.0/24"), "local6": ()})["nftables"]
    assert [next(iter(c)) for c in doc] == ["metainfo", "flush", "add", "flush"]
    doc = m.delete_document(T)["nftables"]
    assert [next(iter(c)) for c in doc] == ["metainfo", "add", "delete"]


def listed(sets: m.MasqueradeSets) -> list[dict[str, Any]]:
    """A table as ``nft -j list table`` shows one ``table_document`` made (recorded shape:
    handles added, table comment and set comments as nft 1.0.6 shows them)."""
    out: list[dict[str, Any]] = [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": T, "handle": 7}},
    ]
    for i, c in enumerate(m.table_document(T, sets)["nftables"][4:]):
        kind, spec = next(iter(c["add"].items()))
        out.append({kind: {**spec, "handle": i + 1}})
    return out


def test_parse_table_of_our_own_table_is_intact() -> None:
    sets = m.desired_sets(NODES, own="b", non_masquerade=nets("172.16.0.0/12"))
    state = m.parse_table(listed(sets), T)
    assert state.intact, state.mismatches
    assert state.sets == sets
    assert not state.irregular


def test_parse_table_reads_addresses_and_ranges() -> None:
    objects = listed(m.MasqueradeSets())
    for o in objects:
        if o.get("set", {}).get("name") == "cluster4":
            o["set"]["elem"] = [
                "10.9.9.9",
                {"range": ["10.1.0.0", "10.1.0.255"]},
                {"range": ["10.2.0.3", "10.2.0.20"]},
                {"elem": {"val": {"prefix": {"addr": "10.3.0.0", "len": 16}}, "comment": "x"}},
            ]
    state = m.parse_table(objects, T)
    assert state.intact
    assert net("10.9.9.9/32") in state.sets.cluster4
    assert net("10.1.0.0/24") in state.sets.cluster4
    assert net("10.3.0.0/16") in state.sets.cluster4
    assert state.irregular == {"cluster4"}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda objs: [o for o in objs if "rule" not in o], "rules differ"),
        (lambda objs: [o for o in objs if o.get("set", {}).get("name") != "local6"], "local6"),
        (lambda objs: [o for o in objs if "chain" not in o], "chain postrouting missing"),
        (lambda objs: [*objs, {"chain": {"family": "inet", "table": T, "name": "x"}}], "chains"),
        (lambda objs: [*objs, {"map": {"name": "m"}}], "unexpected object map"),
        (lambda objs: [*objs, {"set": {"name": "extra"}}], "unknown set"),
    ],
)
def test_parse_table_names_what_is_not_ours(change: Any, expected: str) -> None:
    state = m.parse_table(change(listed(m.desired_sets(NODES, own="a"))), T)
    assert not state.intact
    assert any(expected in s for s in state.mismatches), state.mismatches


def test_parse_table_finds_an_extra_rule_and_a_changed_chain() -> None:
    objects = listed(m.MasqueradeSets())
    rule = next(o for o in objects if "rule" in o)
    objects.append({"rule": {**rule["rule"], "expr": [{"accept": None}]}})
    assert "rules differ from ours" in m.parse_table(objects, T).mismatches
    objects = listed(m.MasqueradeSets())
    chain = next(o for o in objects if "chain" in o)
    chain["chain"]["prio"] = 0
    assert "chains differ from ours" in m.parse_table(objects, T).mismatches


# -- properties --------------------------------------------------------------------------

v4 = st.builds(
    lambda a, p: ipaddress.ip_network((a, p), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(8, 32),
)
v6 = st.builds(
    lambda a, p: ipaddress.ip_network((a, p), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(16, 128),
)
networks = st.lists(st.one_of(v4, v6), max_size=30)


def covered(networks: tuple[IPNetwork, ...], probe: IPNetwork) -> bool:
    return any(probe.version == n.version and probe.subnet_of(n) for n in networks)  # type: ignore[arg-type]


@settings(max_examples=200)
@given(networks, networks, networks)
def test_sets_are_canonical_and_cover_exactly_the_inputs(
    local: list[IPNetwork], cluster: list[IPNetwork], probes: list[IPNetwork]
) -> None:
    sets = m.MasqueradeSets.of(local=local, cluster=cluster)
    for name, elements in sets.items():
        assert all(e.version == m.set_family(name) for e in elements)
        # no overlaps, sorted: what an nft interval set accepts
        for a, b in itertools.pairwise(elements):
            assert int(a.broadcast_address) < int(b.network_address)
    both = (*sets.cluster4, *sets.cluster6)
    for n in cluster:
        assert covered(both, n)
    for p in probes:
        assert covered(both, p) == any(
            p.version == n.version and p.overlaps(n) and p.subnet_of(n)  # type: ignore[arg-type]
            for n in m.collapse(cluster)
        )


@settings(max_examples=200)
@given(networks, networks, networks, networks)
def test_applying_a_diff_gives_the_desired_sets(
    l1: list[IPNetwork], c1: list[IPNetwork], l2: list[IPNetwork], c2: list[IPNetwork]
) -> None:
    before = m.MasqueradeSets.of(local=l1, cluster=c1)
    after = m.MasqueradeSets.of(local=l2, cluster=c2)
    diff = m.diff_sets(before, after)
    for name, elements in before.items():
        result = (set(elements) - set(diff.delete.get(name, ()))) | set(diff.add.get(name, ()))
        assert sorted(result, key=lambda n: int(n.network_address)) == list(after.get(name))
        # the deleted elements are all present before: the transaction cannot fail
        assert set(diff.delete.get(name, ())) <= set(elements)
        assert not set(diff.add.get(name, ())) & set(elements)
    assert bool(diff) == (before != after)


@settings(max_examples=200)
@given(networks, networks, networks, networks)
def test_covering_keeps_everything_and_adds_the_desired(
    l1: list[IPNetwork], c1: list[IPNetwork], l2: list[IPNetwork], c2: list[IPNetwork]
) -> None:
    present = m.MasqueradeSets.of(local=l1, cluster=c1)
    desired = m.MasqueradeSets.of(local=l2, cluster=c2)
    target = m.covering(present, desired)
    for name, elements in target.items():
        for n in (*present.get(name), *desired.get(name)):
            assert covered(elements, n)
    assert target == m.covering(target, desired)


@settings(max_examples=100)
@given(networks, networks)
def test_parse_table_reads_back_what_table_document_writes(
    local: list[IPNetwork], cluster: list[IPNetwork]
) -> None:
    sets = m.MasqueradeSets.of(local=local, cluster=cluster)
    state = m.parse_table(listed(sets), T)
    assert state.intact
    assert state.sets == sets


@settings(max_examples=500)
@given(st.lists(st.one_of(v4, v6), max_size=60))
def test_collapse_equals_the_standard_library(nets: list[IPNetwork]) -> None:
    expected = [
        *ipaddress.collapse_addresses(n for n in nets if n.version == 4),
        *ipaddress.collapse_addresses(n for n in nets if n.version == 6),
    ]
    assert list(m.collapse(nets)) == expected


@settings(max_examples=300)
@given(st.lists(st.integers(0, 63), max_size=40), st.integers(22, 26))
def test_collapse_of_dense_blocks_equals_the_standard_library(
    blocks: list[int], prefix: int
) -> None:
    # many neighbours and duplicates: the merging paths
    size = 1 << (32 - prefix)
    nets = [
        ipaddress.ip_network((int(ipaddress.ip_address("10.0.0.0")) + b * size, prefix))
        for b in blocks
    ]
    assert list(m.collapse(nets)) == list(ipaddress.collapse_addresses(nets))  # type: ignore[type-var]


def test_parse_table_refuses_unreadable_elements() -> None:
    for bad in ("fd00::1", {"prefix": {"addr": "10.0.0.1", "len": 24}}, {"what": 1}):
        objects = listed(m.MasqueradeSets())
        for o in objects:
            if o.get("set", {}).get("name") == "cluster4":
                o["set"]["elem"] = [bad]
        state = m.parse_table(objects, T)
        assert any(s.startswith("set cluster4:") for s in state.mismatches), (bad, state)
