"""The pod-CIDR rule (``core.ranges``): which CIDRs may be pod CIDRs and which addresses
may be gateways, for the daemon's routes and the IPAM plugins' ranges alike."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xcluster_cni_lib.core.errors import InputError, InvalidNode
from xcluster_cni_lib.core.ranges import (
    DEFAULT_POLICY,
    DENIED,
    RangePolicy,
    host_view,
    parse_cidr_list,
    shorten,
)
from xcluster_cni_lib.core.values import InterfaceAddress, IPNetwork, Problem

net = ipaddress.ip_network
ip = ipaddress.ip_address


# -- finding 1: what a node could claim before, refused now ---------------------------


@pytest.mark.parametrize(
    ("cidr", "why"),
    [
        ("128.0.0.0/1", "broader than /8"),
        ("::/1", "broader than /32"),
        ("0.0.0.0/0", "default route"),
        ("::/0", "default route"),
        ("169.254.169.254/32", "link-local"),  # the cloud metadata address
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "broader than /8"),
        ("224.0.0.0/24", "multicast"),
        ("127.0.0.0/8", "loopback"),
        ("0.0.0.0/8", "unspecified"),
        ("240.0.0.0/8", "reserved"),
        ("255.255.255.255/32", "reserved"),
        ("fe80::/64", "link-local"),
        ("ff02::/64", "multicast"),
        ("::1/128", "loopback"),
        ("::/127", "unspecified"),
        ("fd00:ec2::/64", "metadata"),  # holds fd00:ec2::254
    ],
)
def test_the_deny_list_refuses_what_is_never_a_pod_network(cidr: str, why: str) -> None:
    reason = DEFAULT_POLICY.refusal(net(cidr))
    assert reason is not None and why in reason and str(net(cidr)) in reason


@pytest.mark.parametrize(
    "cidr", ["10.244.1.0/24", "10.0.0.0/8", "192.168.5.0/24", "fd00:10:244:1::/64", "2001:db8::/32"]
)
def test_ordinary_pod_cidrs_pass(cidr: str) -> None:
    assert DEFAULT_POLICY.refusal(net(cidr)) is None


def test_the_minimum_prefixes_are_configurable() -> None:
    policy = RangePolicy(min_prefix_v4=16, min_prefix_v6=48)
    assert policy.refusal(net("10.0.0.0/15")) == (
        "10.0.0.0/15 is broader than /16, the shortest pod CIDR allowed"
    )
    assert policy.refusal(net("10.0.0.0/16")) is None
    assert policy.refusal(net("fd00::/47")) is not None
    assert policy.refusal(net("fd00::/48")) is None


@pytest.mark.parametrize(("v4", "v6"), [(-1, 32), (33, 32), (8, -1), (8, 129)])
def test_a_minimum_prefix_out_of_range_is_an_error(v4: int, v6: int) -> None:
    with pytest.raises(InputError, match="minimum IPv"):
        RangePolicy(min_prefix_v4=v4, min_prefix_v6=v6)


# -- the allow-list -------------------------------------------------------------------


def test_the_allow_list_admits_only_its_ranges_per_family() -> None:
    policy = RangePolicy(cluster_cidrs=(net("10.244.0.0/16"),))
    assert policy.refusal(net("10.244.3.0/24")) is None
    assert policy.refusal(net("10.244.0.0/16")) is None  # the whole range is inside itself
    assert policy.refusal(net("10.0.0.0/8")) == (
        "10.0.0.0/8 is outside the cluster CIDRs (10.244.0.0/16)"
    )
    assert policy.refusal(net("10.245.0.0/24")) is not None
    # no IPv6 entry: no IPv6 pod CIDR at all
    assert policy.refusal(net("fd00::/64")) == (
        "fd00::/64 is outside the cluster CIDRs (no IPv6 entry)"
    )


def test_the_deny_list_applies_inside_the_allow_list() -> None:
    policy = RangePolicy(cluster_cidrs=(net("169.254.0.0/16"), net("fe80::/10")))
    assert "link-local" in (policy.refusal(net("169.254.1.0/24")) or "")
    assert "link-local" in (policy.refusal(net("fe80::/64")) or "")


def test_parse_cidr_list() -> None:
    assert parse_cidr_list("", key="CLUSTER_CIDRS") == ()
    assert parse_cidr_list("  ", key="CLUSTER_CIDRS") == ()
    assert parse_cidr_list("10.244.0.0/16, fd00:10:244::/48", key="K") == (
        net("10.244.0.0/16"),
        net("fd00:10:244::/48"),
    )
    with pytest.raises(InputError, match=r"CLUSTER_CIDRS: 'banana' is not a CIDR"):
        parse_cidr_list("10.244.0.0/16,banana", key="CLUSTER_CIDRS")
    with pytest.raises(InputError) as e:
        parse_cidr_list("x" * 100_000, key="CLUSTER_CIDRS")
    assert len(str(e.value)) < 300 and "100000 characters" in str(e.value)


# -- the host's subnets and addresses ---------------------------------------------------


def test_a_cidr_overlapping_a_connected_subnet_is_refused() -> None:
    policy = RangePolicy(host_subnets=(net("192.168.1.0/24"), net("fd00:1::/64")))
    # inside, equal, containing: all would take the host's neighbours' traffic
    for cidr in ("192.168.1.128/25", "192.168.1.0/24", "192.168.0.0/16", "fd00:1::/64"):
        reason = policy.refusal(net(cidr))
        assert reason is not None and "connected to this host" in reason, cidr
    assert policy.refusal(net("192.168.2.0/24")) is None
    assert policy.refusal(net("fd00:2::/64")) is None


def test_a_connected_subnet_holding_an_allow_list_entry_does_not_count() -> None:
    # the node LAN is 10.0.0.0/8 and the administrator put the pods in 10.244.0.0/16
    policy = RangePolicy(
        cluster_cidrs=(net("10.244.0.0/16"),),
        host_subnets=(net("10.0.0.0/8"), net("10.244.7.0/24")),
    )
    assert policy.refusal(net("10.244.1.0/24")) is None
    # a connected subnet inside the allow-list still counts (e.g. the own bridge)
    assert "connected" in (policy.refusal(net("10.244.7.0/25")) or "")


def test_gateway_refusals() -> None:
    policy = RangePolicy().with_host(
        [net("192.168.1.0/24"), net("10.0.0.0/31"), net("fd00:1::/64")],
        [ip("192.168.1.10"), ip("fd00:1::10")],
    )
    assert policy.gateway_refusal(ip("192.168.1.10")) == "192.168.1.10 is an address of this host"
    assert "network address" in (policy.gateway_refusal(ip("192.168.1.0")) or "")
    assert "broadcast address" in (policy.gateway_refusal(ip("192.168.1.255")) or "")
    assert "network address" in (policy.gateway_refusal(ip("fd00:1::")) or "")
    assert policy.gateway_refusal(ip("fd00:1::10")) is not None
    for fine in ("192.168.1.11", "10.0.0.0", "10.0.0.1", "fd00:1::ffff:ffff:ffff:ffff", "8.8.8.8"):
        assert policy.gateway_refusal(ip(fine)) is None, fine  # a /31 has no network address


def test_host_view_keeps_subnets_and_own_addresses() -> None:
    def a(interface: str, iface: str) -> InterfaceAddress:
        i = ipaddress.ip_interface(iface)
        return InterfaceAddress(interface, 1500, i.network, i.ip)

    subnets, own = host_view(
        [
            a("lo", "127.0.0.1/8"),
            a("lo", "::1/128"),
            a("eth0", "192.168.1.10/24"),
            a("eth0", "fe80::1/64"),
            a("eth0", "fd00:1::10/64"),
            a("lo", "192.168.99.1/32"),  # a VIP or a node address on lo: no subnet
            a("cni0", "10.244.1.1/24"),  # the own node's bridge: a connected subnet too
            a("eth1", "192.168.1.11/24"),  # a second address on the same subnet
        ]
    )
    assert subnets == (net("10.244.1.0/24"), net("192.168.1.0/24"), net("fd00:1::/64"))
    assert ip("192.168.99.1") in own and ip("127.0.0.1") in own
    assert ip("fe80::1") not in own
    assert {ip("192.168.1.10"), ip("192.168.1.11"), ip("10.244.1.1"), ip("fd00:1::10")} <= own


def test_policies_compare_by_their_settings() -> None:
    one = RangePolicy(cluster_cidrs=[net("10.244.0.0/16")])
    assert one == RangePolicy(cluster_cidrs=(net("10.244.0.0/16"),))
    assert one.with_host([net("192.168.0.0/24")]) != one
    assert one.with_host([net("192.168.0.0/24")]).without_host() == one
    assert hash(one) == hash(RangePolicy(cluster_cidrs=(net("10.244.0.0/16"),)))


# -- finding 9: values are shortened --------------------------------------------------


def test_shorten() -> None:
    assert shorten("10.244.1.0/24") == "10.244.1.0/24"
    assert shorten("x" * 200) == "x" * 200
    long = shorten("y" * 262_144)
    assert long.startswith("y" * 200) and long.endswith("... (262144 characters)")
    assert len(long) < 230
    assert shorten(long) == long  # shortening twice keeps the original length


def test_errors_and_problems_carry_shortened_values() -> None:
    value = "10.0.0.0/24," + "a" * 262_144
    error = InvalidNode("n1", "not a CIDR", key="k.example.com/cidrs", value=value)
    assert error.value is not None and len(error.value) < 250 and len(str(error)) < 400
    problem = Problem("n1", "bad", key="k", value=value)
    assert problem.value is not None and len(problem.value) < 250
    assert problem == Problem("n1", "bad", key="k", value=value)


# -- the rule against a brute-force model -------------------------------------------------


@st.composite
def cidrs(draw: st.DrawFn) -> IPNetwork:
    family = draw(st.sampled_from([4, 6]))
    bits = 32 if family == 4 else 128
    length = draw(st.integers(0, bits))
    # addresses near interesting ranges as well as random ones
    if family == 4:
        base = draw(
            st.sampled_from([0x0A000000, 0x7F000000, 0xA9FEA9FE, 0xE0000000, 0xC0A80100, 0])
        )
    else:
        base = draw(st.sampled_from([0xFD00 << 112, 0xFE80 << 112, 0xFF02 << 112, 1, 0]))
    addr = base ^ draw(st.integers(0, (1 << bits) - 1)) if draw(st.booleans()) else base
    return ipaddress.ip_network((addr, length), strict=False)


def model_refused(policy: RangePolicy, cidr: IPNetwork) -> bool:
    if cidr.prefixlen == 0:
        return True
    minimum = policy.min_prefix_v4 if cidr.version == 4 else policy.min_prefix_v6
    if cidr.prefixlen < minimum:
        return True
    same = [c for c, _ in DENIED if c.version == cidr.version]
    if any(cidr.overlaps(c) for c in same):
        return True
    allowed = [c for c in policy.cluster_cidrs if c.version == cidr.version]
    if policy.cluster_cidrs and not any(cidr.subnet_of(c) for c in allowed):  # type: ignore[arg-type]
        return True
    for s in policy.host_subnets:
        if s.version != cidr.version:
            continue
        declared = any(
            c.version == s.version and c.subnet_of(s)  # type: ignore[arg-type]
            for c in policy.cluster_cidrs
        )
        if not declared and cidr.overlaps(s):
            return True
    return False


@settings(max_examples=300)
@given(
    st.lists(cidrs(), max_size=3),
    st.lists(cidrs(), max_size=3),
    st.integers(1, 30),
    st.integers(1, 126),
    st.lists(cidrs(), min_size=1, max_size=6),
)
def test_refusal_equals_a_brute_force_model(
    allowed: list[IPNetwork],
    host: list[IPNetwork],
    min4: int,
    min6: int,
    queries: list[IPNetwork],
) -> None:
    policy = RangePolicy(
        cluster_cidrs=tuple(allowed),
        min_prefix_v4=min4,
        min_prefix_v6=min6,
        host_subnets=tuple(host),
    )
    for q in queries:
        reason = policy.refusal(q)
        assert (reason is not None) == model_refused(policy, q), (q, reason)
        if reason is not None:
            assert str(q) in reason


# -- edges the mutation run found untested -------------------------------------------


@pytest.mark.parametrize(("v4", "v6"), [(0, 0), (32, 128), (0, 128), (32, 0)])
def test_the_minimum_prefix_bounds_are_inclusive(v4: int, v6: int) -> None:
    policy = RangePolicy(min_prefix_v4=v4, min_prefix_v6=v6)
    assert (policy.min_prefix_v4, policy.min_prefix_v6) == (v4, v6)


def test_a_slash_30_has_a_network_and_a_broadcast_address() -> None:
    policy = RangePolicy().with_host([net("10.0.0.0/30"), net("fd00:2::/126")])
    assert "network address" in (policy.gateway_refusal(ip("10.0.0.0")) or "")
    assert "broadcast address" in (policy.gateway_refusal(ip("10.0.0.3")) or "")
    assert "network address" in (policy.gateway_refusal(ip("fd00:2::")) or "")
    assert policy.gateway_refusal(ip("10.0.0.1")) is None


def test_families_never_match_each_other() -> None:
    # an IPv6 CIDR whose leading bits are zero is not "inside" an IPv4 range
    assert RangePolicy().refusal(net("0:0:1::/48")) is None
    v4_only = RangePolicy(cluster_cidrs=[net("0.0.0.0/1")], min_prefix_v4=1)
    assert "outside the cluster CIDRs" in (v4_only.refusal(net("0:a00::/32")) or "")
    assert RangePolicy().with_host([net("10.0.0.0/8")]).refusal(net("0:a00::/32")) is None


def test_the_remembered_answers_are_not_part_of_the_value() -> None:
    used, fresh = (
        RangePolicy(cluster_cidrs=[net("10.244.0.0/16")]),
        RangePolicy(cluster_cidrs=[net("10.244.0.0/16")]),
    )
    assert used.refusal(net("10.244.1.0/24")) is None  # fills its memo
    assert used == fresh and hash(used) == hash(fresh)
    assert repr(used) == repr(fresh)
    assert repr(used) == (
        "RangePolicy(cluster_cidrs=(IPv4Network('10.244.0.0/16'),), min_prefix_v4=8, "
        "min_prefix_v6=32, host_subnets=(), host_addresses=frozenset())"
    )
