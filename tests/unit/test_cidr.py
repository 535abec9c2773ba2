"""The double-slash node CIDR notation, every case and error of issue 2."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xcluster_cni_lib.core.cidr import node_cidr, parse_node_number
from xcluster_cni_lib.core.errors import InputError


@pytest.mark.parametrize(
    ("spec", "number", "expected"),
    [
        ("192.168.0.0/22/25", 5, "192.168.2.128/25"),
        ("fd00:1000::/96/112", 5, "fd00:1000::5:0/112"),
        ("fd00:1000::/48/64", 5, "fd00:1000:0:5::/64"),
        ("192.168.0.0/22/25", 0, "192.168.0.0/25"),
        ("192.168.0.0/22/25", 7, "192.168.3.128/25"),  # the last one that fits
        ("10.0.0.0/8/24", 65535, "10.255.255.0/24"),
        ("10.0.0.0/8/32", 5, "10.0.0.5/32"),
        ("10.0.0.0/8/8", 0, "10.0.0.0/8"),  # equal prefixes: one subnet
        ("10.1.2.3/16/24", 4, "10.1.4.0/24"),  # host bits beyond the first prefix masked
        ("fd00::/48/128", 2**80 - 1, "fd00::ffff:ffff:ffff:ffff:ffff/128"),
        ("::ffff:10.0.0.0/104/120", 3, "10.0.3.0/24"),  # IPv4-mapped is IPv4
        (" 192.168.0.0/22/25 ", 5, "192.168.2.128/25"),
        ("FD00:1000::/96/112", 5, "fd00:1000::5:0/112"),
    ],
)
def test_node_cidr(spec: str, number: int, expected: str) -> None:
    assert str(node_cidr(spec, number)) == expected


@pytest.mark.parametrize(
    ("spec", "number", "message"),
    [
        # malformed address
        ("192.168.0/22/25", 1, "malformed address '192.168.0'"),
        ("hello/22/25", 1, "malformed address 'hello'"),
        ("/22/25", 1, "malformed address ''"),
        ("fe80::1%eth0/64/96", 1, "malformed address"),
        # not three parts
        ("192.168.0.0/22", 1, "is not ADDRESS/CLUSTER_PREFIX/NODE_PREFIX"),
        ("192.168.0.0", 1, "is not ADDRESS/CLUSTER_PREFIX/NODE_PREFIX"),
        ("192.168.0.0/22/25/26", 1, "is not ADDRESS/CLUSTER_PREFIX/NODE_PREFIX"),
        # non-decimal prefix lengths
        ("192.168.0.0/x/25", 1, "prefix length 'x' is not a decimal number"),
        ("192.168.0.0/22/0x19", 1, "prefix length '0x19' is not a decimal number"),
        ("192.168.0.0/-22/25", 1, "prefix length '-22' is not a decimal number"),
        ("192.168.0.0/+22/25", 1, "prefix length '+22' is not a decimal number"),
        ("192.168.0.0/22/", 1, "prefix length '' is not a decimal number"),
        ("192.168.0.0/2 2/25", 1, "is not a decimal number"),
        ("192.168.0.0/٢٢/25", 1, "is not a decimal number"),  # Arabic-Indic digits
        # first prefix larger than the second
        ("192.168.0.0/25/22", 0, "first prefix length 25 is larger than the second 22"),
        ("fd00::/112/96", 0, "first prefix length 112 is larger than the second 96"),
        # node number does not fit
        ("192.168.0.0/22/25", 8, "node number 8 does not fit"),
        ("fd00::/96/112", 65536, "node number 65536 does not fit"),
        ("10.0.0.0/8/8", 1, "node number 1 does not fit"),
        ("10.0.0.0/8/24", -1, "node number -1 is negative"),
        # family limits
        ("10.0.0.0/7/24", 0, "IPv4 first prefix length 7 is less than 8"),
        ("10.0.0.0/8/33", 0, "IPv4 second prefix length 33 is more than 32"),
        ("fd00::/47/64", 0, "IPv6 first prefix length 47 is less than 48"),
        ("fd00::/48/129", 0, "IPv6 second prefix length 129 is more than 128"),
        (
            "::ffff:10.0.0.0/95/120",
            0,
            "IPv4-mapped range needs a first prefix length of at least 96",
        ),
        ("::ffff:10.0.0.0/100/120", 0, "IPv4 first prefix length 4 is less than 8"),
    ],
)
def test_node_cidr_errors(spec: str, number: int, message: str) -> None:
    with pytest.raises(InputError) as info:
        node_cidr(spec, number)
    assert message in str(info.value)


@pytest.mark.parametrize(("text", "number"), [("0", 0), ("5", 5), (" 12 ", 12), ("007", 7)])
def test_parse_node_number(text: str, number: int) -> None:
    assert parse_node_number(text) == number


@pytest.mark.parametrize("text", ["", "-1", "+1", "1.5", "0x10", "five", "\u0661"])
def test_parse_node_number_errors(text: str) -> None:
    with pytest.raises(InputError, match="not a non-negative decimal integer"):
        parse_node_number(text)


@given(
    st.sampled_from([4, 6]),
    st.integers(0, 2**128 - 1),
    st.data(),
)
def test_node_subnets_tile_the_range(family: int, raw: int, data: st.DataObject) -> None:
    bits = 32 if family == 4 else 128
    low = 8 if family == 4 else 48
    first = data.draw(st.integers(low, bits))
    second = data.draw(st.integers(first, min(bits, first + 20)))
    number = data.draw(st.integers(0, 2 ** (second - first) - 1))
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    if family == 4:
        address = ipaddress.IPv4Address(raw % 2**32)
    else:
        address = ipaddress.IPv6Address(raw)
        if address.ipv4_mapped is not None:
            return  # mapped addresses are IPv4 (tested above)
    spec = f"{address}/{first}/{second}"
    got = node_cidr(spec, number)
    cluster = ipaddress.ip_network(f"{address}/{first}", strict=False)
    assert got.prefixlen == second and got.subnet_of(cluster)  # type: ignore[arg-type]
    assert (int(got.network_address) - int(cluster.network_address)) >> (bits - second) == number


@pytest.mark.parametrize(
    ("spec", "number", "message"),
    [
        (
            "192.168.0.0/22/25",
            8,
            "node number 8 does not fit in '192.168.0.0/22/25' (8 node subnets: 0..7)",
        ),
        ("10.0.0.0/8/8", 1, "node number 1 does not fit in '10.0.0.0/8/8' (1 node subnets: 0..0)"),
        # a mapped range of exactly /96 is IPv4's /0: too short, said in IPv4 terms
        (
            "::ffff:10.0.0.0/96/120",
            0,
            "'::ffff:10.0.0.0/96/120': IPv4 first prefix length 0 is less than 8",
        ),
        ("::ffff:10.0.0.0/104/96", 0, "first prefix length 8 is larger than the second 0"),
        ("10.0.0.0/8/24", -1, "node number -1 is negative"),
    ],
)
def test_node_cidr_error_texts(spec: str, number: int, message: str) -> None:
    with pytest.raises(InputError) as info:
        node_cidr(spec, number)
    assert str(info.value).endswith(message)


def test_mapped_slash_96_cluster_range_is_ipv4_slash_0() -> None:
    # ::ffff:0.0.0.0/96/... passes the mapped check and fails IPv4's limits, like 0.0.0.0/0/...
    with pytest.raises(InputError, match="IPv4 first prefix length 0 is less than 8"):
        node_cidr("::ffff:0.0.0.0/96/120", 0)
    assert str(node_cidr("::ffff:10.0.0.0/104/128", 3)) == "10.0.0.3/32"
