"""Node parsing: where CIDRs and addresses come from, canonical forms, strict annotations,
lenient Kubernetes fields, and one bad node never stopping the others."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xcluster_cni_lib.core.errors import InputError, InvalidNode
from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.core.nodes import (
    NO_POD_CIDR,
    parse_facts,
    parse_node,
    parse_nodes,
    parse_subnets,
    pod_cidrs,
)
from xcluster_cni_lib.core.values import Annotations, NodeFacts, Problem

DATA = Path(__file__).parent.parent / "data"
CIDR_KEY = "cidr.example.com/net3"
ADDR_KEY = "node-ip.nordix.org/net3"
CIDR = Annotations(cidr=CIDR_KEY)
ADDR = Annotations(address=ADDR_KEY)
BOTH = Annotations(cidr=CIDR_KEY, address=ADDR_KEY)

net = ipaddress.ip_network
ip = ipaddress.ip_address


def make(
    name: str = "vm-003",
    cidrs: list[str] | None = None,
    ips: list[str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    node: dict[str, Any] = {
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {},
        "status": {"addresses": [{"type": "InternalIP", "address": a} for a in ips or []]},
    }
    if cidrs is not None:
        node["spec"]["podCIDRs"] = cidrs
    return node


# -- sources -------------------------------------------------------------------------


def test_real_node_from_spec_and_internal_ips() -> None:
    doc = json.loads((DATA / "node-real.json").read_text())
    n = parse_node(doc)
    assert n.name == "worker-2"
    assert n.cidrs == (net("10.244.2.0/24"), net("fd00:10:244:2::/64"))
    assert n.addresses == (ip("192.168.1.3"), ip("fd00:1::3"))  # the Hostname is ignored
    assert n.machine_id == "9f2c61d04b6e4c1f8a3b5d7e0c2f4a68"
    assert n.problems == ()


def test_real_node_from_annotations() -> None:
    doc = json.loads((DATA / "node-real.json").read_text())
    n = parse_node(doc, annotations=BOTH)
    # "192.168.55.64/26, fd00:5::2:0/112": whitespace around items is fine
    assert n.cidrs == (net("192.168.55.64/26"), net("fd00:5::2:0/112"))
    assert n.addresses == (ip("192.168.2.3"), ip("1000::1:c0a8:203"))


def test_old_single_pod_cidr() -> None:
    node = make(ips=["10.0.0.3"])
    node["spec"]["podCIDR"] = "10.244.3.0/24"
    assert parse_node(node).cidrs == (net("10.244.3.0/24"),)


def test_annotations_ignore_spec_and_internal_ips() -> None:
    node = make(
        cidrs=["10.244.3.0/24"],
        ips=["10.0.0.3"],
        annotations={CIDR_KEY: "192.168.55.0/26", ADDR_KEY: "192.168.2.3"},
    )
    n = parse_node(node, annotations=BOTH)
    assert n.cidrs == (net("192.168.55.0/26"),)
    assert n.addresses == (ip("192.168.2.3"),)


def test_only_one_annotation_configured() -> None:
    node = make(cidrs=["10.244.3.0/24"], ips=["10.0.0.3"], annotations={ADDR_KEY: "10.9.0.3"})
    n = parse_node(node, annotations=ADDR)
    assert n.cidrs == (net("10.244.3.0/24"),)
    assert n.addresses == (ip("10.9.0.3"),)


def test_node_without_cidr_or_address_is_fine_here() -> None:
    # Routing reports it (desired_routes); parsing has nothing to complain about.
    n = parse_node(make(cidrs=[], ips=[]))
    assert (n.cidrs, n.addresses, n.problems) == ((), (), ())


def test_ipv6_first_in_the_node_is_still_sorted_ipv4_first() -> None:
    n = parse_node(make(cidrs=["fd00::/64", "10.1.0.0/24"], ips=["fd00:1::1", "10.0.0.1"]))
    assert [c.version for c in n.cidrs] == [4, 6]
    assert [a.version for a in n.addresses] == [4, 6]
    assert n.cidr(6) == net("fd00::/64") and n.address(4) == ip("10.0.0.1")


# -- canonical forms (issue 2) -------------------------------------------------------


@pytest.mark.parametrize(
    ("given_", "canonical"),
    [
        ("::ffff:20.0.0.0/120", "20.0.0.0/24"),
        ("fd00:1000::0.0.0.0/96", "fd00:1000::/96"),
        ("10.244.3.77/24", "10.244.3.0/24"),  # host bits masked off
        ("FD00:0:0:0::/64", "fd00::/64"),
        (" 10.1.0.0/16 ", "10.1.0.0/16"),
    ],
)
def test_canonical_cidrs(given_: str, canonical: str) -> None:
    node = make(annotations={CIDR_KEY: given_})
    assert [str(c) for c in parse_node(node, annotations=CIDR).cidrs] == [canonical]
    assert [str(c) for c in parse_node(make(cidrs=[given_])).cidrs] == [canonical]


@pytest.mark.parametrize(
    ("given_", "canonical"),
    [
        ("::ffff:192.168.1.1", "192.168.1.1"),
        ("fd00:1::192.168.1.1", "fd00:1::c0a8:101"),
        ("FD00:0001:0000::0001", "fd00:1::1"),
    ],
)
def test_canonical_addresses(given_: str, canonical: str) -> None:
    node = make(cidrs=["10.0.0.0/24", "fd00::/64"], annotations={ADDR_KEY: given_})
    assert [str(a) for a in parse_node(node, annotations=ADDR).addresses] == [canonical]
    assert [str(a) for a in parse_node(make(ips=[given_])).addresses] == [canonical]


def test_mapped_and_plain_ipv4_are_two_of_one_family() -> None:
    with pytest.raises(InvalidNode, match="two IPv4 CIDRs"):
        parse_subnets("::ffff:20.0.0.0/120,30.0.0.0/24", node="n", key="k")


def test_whitespace_around_items() -> None:
    node = make(
        annotations={CIDR_KEY: "  10.1.0.0/24 ,\tfd00::/64  ", ADDR_KEY: " 10.0.0.1 , fd00::1"}
    )
    n = parse_node(node, annotations=BOTH)
    assert n.cidrs == (net("10.1.0.0/24"), net("fd00::/64"))
    assert n.addresses == (ip("10.0.0.1"), ip("fd00::1"))


# -- strict annotations: every bad value names node, annotation and value ------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty value"),
        ("   ", "empty value"),
        ("10.1.0.0", "not a CIDR: '10.1.0.0'"),
        ("10.1.0.0/33", "not a CIDR: '10.1.0.0/33'"),
        ("10.1.0.0/x", "not a CIDR"),
        ("hello/24", "not a CIDR"),
        ("10.1.0.0/24,", "empty item"),
        ("10.1.0.0/24,,fd00::/64", "empty item"),
        (",10.1.0.0/24", "empty item"),
        ("10.1.0.0/24,fd00::/64,10.2.0.0/24", "3 CIDRs, at most two"),
        ("10.1.0.0/24,10.2.0.0/24", "two IPv4 CIDRs"),
        ("fd00::/64,fd01::/64", "two IPv6 CIDRs"),
        ("10.1.0.0/24;fd00::/64", "not a CIDR"),
        ("0.0.0.0/0", "default route"),
        ("::/0", "default route"),
        ("10.1.0.0/31", "10.1.0.0/31 is too small for pods (at most /30)"),
        ("10.1.0.0/24,fd00::/127", "fd00::/127 is too small for pods (at most /126)"),
        ("::ffff:10.1.0.0/127", "10.1.0.0/31 is too small"),
    ],
)
def test_bad_cidr_annotation(value: str, reason: str) -> None:
    node = make("vm-007", ips=["10.0.0.7"], annotations={CIDR_KEY: value})
    with pytest.raises(InvalidNode) as info:
        parse_node(node, annotations=CIDR)
    e = info.value
    assert (e.node, e.key, e.value) == ("vm-007", CIDR_KEY, value)
    assert reason in e.reason
    assert "vm-007" in str(e) and CIDR_KEY in str(e) and repr(value) in str(e)
    assert isinstance(e, InputError)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty value"),
        ("10.0.0.7/24", "not an IP address"),
        ("vm-007", "not an IP address"),
        ("10.0.0.7,", "empty item"),
        ("10.0.0.7,10.0.0.8", "two IPv4 addresses"),
        ("fd00::7,fd00::8", "two IPv6 addresses"),
        ("10.0.0.7,fd00::7,10.0.0.8", "3 addresses"),
        ("0.0.0.0", "cannot be a node address"),
        ("::", "cannot be a node address"),
        ("127.0.0.1", "cannot be a node address"),
        ("224.0.0.1", "cannot be a node address"),
        # an address of the wrong family: the node has only an IPv4 pod CIDR
        ("fd00::7", "address fd00::7 is IPv6 but the node has no IPv6 pod CIDR"),
        ("10.0.0.7,fd00::7", "is IPv6 but the node has no IPv6 pod CIDR"),
    ],
)
def test_bad_address_annotation(value: str, reason: str) -> None:
    node = make("vm-007", cidrs=["10.244.7.0/24"], annotations={ADDR_KEY: value})
    with pytest.raises(InvalidNode) as info:
        parse_node(node, annotations=ADDR)
    e = info.value
    assert (e.node, e.key, e.value) == ("vm-007", ADDR_KEY, value)
    assert reason in e.reason


def test_wrong_family_is_judged_against_the_annotated_cidrs() -> None:
    node = make(
        cidrs=["10.244.7.0/24"],
        annotations={CIDR_KEY: "fd00:5::/112", ADDR_KEY: "10.0.0.7"},
    )
    with pytest.raises(InvalidNode, match="is IPv4 but the node has no IPv4 pod CIDR"):
        parse_node(node, annotations=BOTH)


def test_address_family_is_not_checked_without_any_cidr() -> None:
    node = make(cidrs=[], annotations={ADDR_KEY: "fd00::7"})
    assert parse_node(node, annotations=ADDR).addresses == (ip("fd00::7"),)


def test_dual_stack_internal_ips_with_ipv4_pods_is_normal() -> None:
    n = parse_node(make(cidrs=["10.244.7.0/24"], ips=["10.0.0.7", "fd00::7"]))
    assert n.addresses == (ip("10.0.0.7"), ip("fd00::7")) and n.problems == ()


@pytest.mark.parametrize("key", [CIDR_KEY, ADDR_KEY])
def test_configured_annotation_missing_on_the_node(key: str) -> None:
    node = make("vm-008", cidrs=["10.244.8.0/24"], ips=["10.0.0.8"])
    with pytest.raises(InvalidNode) as info:
        parse_node(node, annotations=CIDR if key == CIDR_KEY else ADDR)
    assert (info.value.node, info.value.key, info.value.value) == ("vm-008", key, None)
    assert str(info.value) == f"node vm-008: {info.value.reason} ({key})"
    assert "missing" in info.value.reason


def test_annotation_that_is_not_a_string_counts_as_missing() -> None:
    node = make(cidrs=["10.244.8.0/24"])
    node["metadata"]["annotations"][CIDR_KEY] = ["10.1.0.0/24"]
    with pytest.raises(InvalidNode, match="missing"):
        parse_node(node, annotations=CIDR)


def test_node_without_a_name() -> None:
    node = make(cidrs=["10.244.8.0/24"])
    del node["metadata"]["name"]
    with pytest.raises(InvalidNode, match="no name") as info:
        parse_node(node)
    assert info.value.key == "metadata.name"


# -- lenient Kubernetes fields -------------------------------------------------------


def test_extra_duplicate_and_malformed_pod_cidrs_are_problems() -> None:
    n = parse_node(
        make(
            "vm-009",
            cidrs=[
                "10.244.9.0/24",
                "10.244.9.1/24",
                "10.245.0.0/24",
                "bogus",
                "fd00::/64",
                "fd01::/64",
            ],
            ips=["10.0.0.9"],
        )
    )
    assert n.cidrs == (net("10.244.9.0/24"), net("fd00::/64"))
    assert n.problems == (
        Problem("vm-009", "duplicate of 10.244.9.0/24; ignored", "spec.podCIDRs", "10.244.9.1/24"),
        Problem(
            "vm-009",
            "extra IPv4 CIDR ignored, using 10.244.9.0/24",
            "spec.podCIDRs",
            "10.245.0.0/24",
        ),
        Problem("vm-009", "not a CIDR; ignored", "spec.podCIDRs", "bogus"),
        Problem("vm-009", "extra IPv6 CIDR ignored, using fd00::/64", "spec.podCIDRs", "fd01::/64"),
    )


def test_extra_and_bad_internal_ips_are_problems() -> None:
    n = parse_node(
        make("vm-009", cidrs=["10.244.9.0/24"], ips=["0.0.0.0", "10.0.0.9", "10.0.0.10", "x"])
    )
    assert n.addresses == (ip("10.0.0.9"),)
    reasons = [(p.reason, p.key, p.value) for p in n.problems]
    assert reasons == [
        ("0.0.0.0 cannot be a node address; ignored", "status.addresses", "0.0.0.0"),
        ("extra IPv4 InternalIP address ignored, using 10.0.0.9", "status.addresses", "10.0.0.10"),
        ("not an InternalIP address; ignored", "status.addresses", "x"),
    ]


def test_problems_do_not_change_equality() -> None:
    # The daemon compares networks to skip unchanged nodes; problems are reports only.
    a = parse_node(make(cidrs=["10.244.9.0/24", "10.245.0.0/24"], ips=["10.0.0.9"]))
    b = parse_node(make(cidrs=["10.244.9.0/24"], ips=["10.0.0.9"]))
    assert a == b and a.problems and not b.problems


# -- parse_subnets (for the IPAM plugins) ---------------------------------------------


def test_parse_subnets_accepts_strings_and_lists() -> None:
    assert parse_subnets("fd00::/64, 10.0.0.0/24", node="n", key="k") == (
        net("10.0.0.0/24"),
        net("fd00::/64"),
    )
    assert parse_subnets(["fd00::5/64"], node="n", key="k") == (net("fd00::/64"),)
    assert parse_subnets(("::ffff:20.0.0.0/120", " fd00::1:0/112 "), node="n", key="k") == (
        net("20.0.0.0/24"),
        net("fd00::1:0/112"),
    )


def test_parse_subnets_errors_name_node_key_and_value() -> None:
    with pytest.raises(InvalidNode) as info:
        parse_subnets([" 10.0.0.0/24 ", "::ffff:20.0.0.0/120"], node="n1", key="ranges")
    assert (info.value.node, info.value.key) == ("n1", "ranges")
    assert info.value.value == "10.0.0.0/24,::ffff:20.0.0.0/120"
    with pytest.raises(InvalidNode, match="empty value"):
        parse_subnets([], node="n1", key="ranges")


# -- parse_nodes ---------------------------------------------------------------------


def test_one_bad_node_never_stops_the_others() -> None:
    nodes = [
        make("a", annotations={CIDR_KEY: "10.1.0.0/24"}, ips=["10.0.0.1"]),
        make("b", annotations={CIDR_KEY: "garbage"}, ips=["10.0.0.2"]),
        make("c", annotations={}, ips=["10.0.0.3"]),
        make("d", annotations={CIDR_KEY: "10.4.0.0/24"}, ips=["10.0.0.4", "10.0.0.44"]),
    ]
    networks, problems = parse_nodes(nodes, annotations=CIDR)
    assert [n.name for n in networks] == ["a", "d"]
    assert [(p.node, p.key) for p in problems] == [
        ("b", CIDR_KEY),
        ("c", CIDR_KEY),
        ("d", "status.addresses"),
    ]


def test_parse_nodes_takes_facts_and_reports_duplicate_names() -> None:
    facts = [
        NodeFacts("a", pod_cidrs=("10.1.0.0/24",)),
        NodeFacts("a", pod_cidrs=("10.2.0.0/24",)),
        NodeFacts("", pod_cidrs=("10.3.0.0/24",)),
    ]
    networks, problems = parse_nodes(facts)
    assert [n.cidrs for n in networks] == [(net("10.1.0.0/24"),)]
    assert [(p.node, p.reason) for p in problems] == [
        ("a", "a second node with this name; ignored"),
        ("?", "the node has no name"),
    ]


# -- property: canonical output, never a crash ----------------------------------------

v4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
v6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
v4net = st.builds(lambda a, p: f"{a}/{p}", v4, st.integers(1, 32))
v6net = st.builds(lambda a, p: f"{a}/{p}", v6, st.integers(1, 128))
junk = st.text(max_size=12)


@given(st.lists(st.one_of(v4net, v6net, junk), max_size=4))
def test_any_annotation_parses_canonically_or_raises_invalid_node(items: list[str]) -> None:
    value = ",".join(items)
    node = make("p", annotations={CIDR_KEY: value})
    try:
        n = parse_node(node, annotations=CIDR)
    except InvalidNode as e:
        assert (e.node, e.key, e.value) == ("p", CIDR_KEY, value)
        return
    assert 1 <= len(n.cidrs) <= 2
    assert sorted({c.version for c in n.cidrs}) == [c.version for c in n.cidrs]
    for c in n.cidrs:
        assert ipaddress.ip_network(str(c)) == c  # canonical: reparses strictly to itself
        assert not (c.version == 6 and c.prefixlen >= 96 and c.network_address.ipv4_mapped)


@given(st.lists(st.one_of(v4net, v6net, junk), max_size=5), st.lists(st.one_of(v4, v6), max_size=4))
def test_spec_fields_never_raise(cidrs: list[str], ips: list[ipaddress._BaseAddress]) -> None:
    n = parse_node(make("p", cidrs=cidrs, ips=[str(a) for a in ips]))
    assert len(n.cidrs) <= 2 and len(n.addresses) <= 2
    assert len({c.version for c in n.cidrs}) == len(n.cidrs)
    used = len(n.cidrs) + len(n.addresses)
    assert used + len(n.problems) == len(cidrs) + len(ips)  # every entry used or reported


@pytest.mark.parametrize("odd", [True, 7, 1.5, "10.0.0.1", {"type": "InternalIP"}, None])
def test_odd_shapes_in_status_addresses_never_raise(odd: object) -> None:
    """One node with a nonsense field must not stop the daemon's node source."""
    from xcluster_cni_lib.core.facts import extract_facts

    node = {"metadata": {"name": "odd"}, "spec": {"podCIDRs": odd}, "status": {"addresses": odd}}
    facts = extract_facts(node)
    assert (facts.name, facts.pod_cidrs, facts.internal_ips) == ("odd", (), ())


# -- one policy for the daemon and the IPAM plugin ------------------------------------


def test_pod_cidrs_too_small_for_pods_are_ignored_in_spec() -> None:
    n = parse_node(make(cidrs=["10.1.0.0/32", "fd00::/64", "10.2.0.0/30"], ips=["10.0.0.1"]))
    assert n.cidrs == (net("10.2.0.0/30"), net("fd00::/64"))
    assert [(p.reason, p.value) for p in n.problems] == [
        ("10.1.0.0/32 is too small for pods (at most /30); ignored", "10.1.0.0/32")
    ]


def test_pod_cidrs_of_a_node_without_one_name_it() -> None:
    n = parse_node(make("vm-1", cidrs=["0.0.0.0/0"], ips=["10.0.0.1"]))
    with pytest.raises(InvalidNode) as info:
        pod_cidrs(n)
    assert (info.value.node, info.value.reason) == ("vm-1", NO_POD_CIDR)
    assert pod_cidrs(parse_node(make(cidrs=["fd00::/64", "10.1.0.0/24"]))) == (
        net("10.1.0.0/24"),
        net("fd00::/64"),
    )


def test_facts_carry_the_annotations_they_were_read_with() -> None:
    node = make(cidrs=["10.244.3.0/24"], ips=["10.0.0.3"], annotations={CIDR_KEY: "10.9.0.0/24"})
    assert parse_facts(extract_facts(node, annotations=CIDR)).cidrs == (net("10.9.0.0/24"),)
    assert parse_facts(extract_facts(node)).cidrs == (net("10.244.3.0/24"),)
    # a caller that names other annotations than the facts were read with is told so
    with pytest.raises(InputError, match="vm-003"):
        parse_nodes([extract_facts(node)], annotations=CIDR)
    networks, _ = parse_nodes([extract_facts(node, annotations=CIDR)], annotations=CIDR)
    assert networks[0].cidrs == (net("10.9.0.0/24"),)


@pytest.mark.parametrize(
    ("cidr", "usable"),
    [
        ("10.1.0.0/30", True),
        ("10.1.0.0/31", False),
        ("fd00::/126", True),
        ("fd00::/127", False),
        ("fd00::/128", False),
        ("::ffff:10.1.0.0/126", True),  # 10.1.0.0/30
        ("::ffff:10.1.0.0/127", False),  # 10.1.0.0/31
        ("10.0.0.0/8", True),  # broad CIDRs down to the minimum prefix (core.ranges)
        ("fd00::/32", True),
    ],
)
def test_the_smallest_pod_cidr_holds_a_gateway_and_a_pod(cidr: str, usable: bool) -> None:
    lenient = parse_node(make(cidrs=[cidr], ips=["10.0.0.1", "fd00::1"]))
    assert bool(lenient.cidrs) is usable
    assert bool(lenient.problems) is not usable
    node = make(ips=["10.0.0.1"], annotations={CIDR_KEY: cidr})
    if usable:
        assert len(parse_node(node, annotations=CIDR).cidrs) == 1
    else:
        with pytest.raises(InvalidNode, match="too small for pods"):
            parse_node(node, annotations=CIDR)
