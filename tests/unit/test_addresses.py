"""Canonical CIDRs and addresses: IPv4-mapped IPv6 values are IPv4, at every length."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xcluster_cni_lib.core.addresses import parse_address, parse_cidr, split_list
from xcluster_cni_lib.core.errors import InvalidNode
from xcluster_cni_lib.core.nodes import parse_subnets
from xcluster_cni_lib.core.planning import canonical_route
from xcluster_cni_lib.core.values import Route

net = ipaddress.ip_network
ip = ipaddress.ip_address


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("::ffff:0.0.0.0/96", "0.0.0.0/0"),  # the whole mapped range is IPv4's whole range
        ("::ffff:0.0.0.0/97", "0.0.0.0/1"),
        ("::ffff:10.1.2.3/104", "10.0.0.0/8"),
        ("::ffff:10.244.1.0/120", "10.244.1.0/24"),
        ("::ffff:10.244.1.1/128", "10.244.1.1/32"),
        ("::fffe:0:0/95", "::fffe:0:0/95"),  # shorter: not inside the mapped range
        ("::ffff:0:0/95", "::fffe:0:0/95"),
        ("::/0", "::/0"),
        ("FD00::1/64", "fd00::/64"),
        (" 10.244.1.7/24 ", "10.244.1.0/24"),
    ],
)
def test_parse_cidr_canonical(text: str, canonical: str) -> None:
    got = parse_cidr(text)
    assert got == net(canonical) and type(got) is type(net(canonical))


@pytest.mark.parametrize(
    "text", ["", "10.0.0.0", "10.0.0.0/", "/24", "10.0.0.0/33", "x/8", "10.0.0.0/+8"]
)
def test_parse_cidr_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a CIDR"):
        parse_cidr(text)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("::ffff:192.168.1.1", "192.168.1.1"), (" FD00::1 ", "fd00::1"), ("10.0.0.1", "10.0.0.1")],
)
def test_parse_address_canonical(text: str, canonical: str) -> None:
    assert parse_address(text) == ip(canonical)


@pytest.mark.parametrize("text", ["", " ", "10.0.0.1/32", "10.0.0.256", "fe80::1%eth0x/"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        parse_address(text)


def test_split_list_keeps_empty_items() -> None:
    assert split_list(" a , b ") == ["a", "b"]
    assert split_list("a,,b,") == ["a", "", "b", ""]
    assert split_list("") == [""]


def test_mapped_slash_96_is_no_ipv6_pod_cidr() -> None:
    # ::ffff:0.0.0.0/96 is IPv4's 0.0.0.0/0: a default route, never a pod CIDR
    with pytest.raises(InvalidNode, match=r"0\.0\.0\.0/0 is a default route"):
        parse_subnets("::ffff:0.0.0.0/96", node="n1", key="k")
    # and it cannot pose as the IPv6 CIDR next to an IPv4 one
    with pytest.raises(InvalidNode):
        parse_subnets("10.244.1.0/24,::ffff:0.0.0.0/96", node="n1", key="k")
    route = Route(dst=net("::ffff:0.0.0.0/96"), gateway=ip("::ffff:192.168.1.1"))
    assert canonical_route(route) == Route(dst=net("0.0.0.0/0"), gateway=ip("192.168.1.1"))


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_every_mapped_cidr_is_its_ipv4_cidr(raw: int, length: int) -> None:
    v4 = ipaddress.IPv4Network((raw, length), strict=False)
    mapped = f"::ffff:{ipaddress.IPv4Address(raw)}/{96 + length}"
    got = parse_cidr(mapped)
    assert got == v4 and got.version == 4
    route = Route(dst=net(mapped, strict=False), gateway=ip("::ffff:10.0.0.1"))
    assert canonical_route(route).dst == v4
