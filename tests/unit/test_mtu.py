"""Choosing the MTU from the interfaces' addresses."""

from __future__ import annotations

import ipaddress

from xcluster_cni_lib.core.mtu import DEFAULT_MTU, choose_mtu
from xcluster_cni_lib.core.values import InterfaceAddress

ip = ipaddress.ip_address


def IA(name: str, mtu: int, cidr: str) -> InterfaceAddress:
    iface = ipaddress.ip_interface(cidr)
    return InterfaceAddress(interface=name, mtu=mtu, network=iface.network, address=iface.ip)


IFACES = [
    IA("lo", 65536, "127.0.0.1/8"),
    IA("eth0", 1500, "192.168.1.3/24"),
    IA("eth0", 1500, "fd00:1::3/64"),
    IA("eth1", 9000, "192.168.2.3/24"),
    IA("vxlan0", 1450, "10.200.0.3/16"),
    IA("vxlan1", 1400, "10.200.5.3/24"),  # more specific, inside vxlan0's subnet
]


def test_interface_whose_subnet_holds_the_address() -> None:
    assert choose_mtu(ip("192.168.2.77"), IFACES) == (9000, None)
    assert choose_mtu(ip("fd00:1::99"), IFACES) == (1500, None)


def test_interface_with_the_exact_address_wins() -> None:
    # 10.200.0.3 is in vxlan0's /16 only; 10.200.5.3 is vxlan1's own address
    assert choose_mtu(ip("10.200.0.3"), IFACES) == (1450, None)
    assert choose_mtu(ip("10.200.5.3"), IFACES) == (1400, None)
    # the exact owner wins even over a more specific subnet elsewhere
    odd = [IA("a", 1300, "10.0.0.0/30"), IA("b", 1200, "10.0.0.1/8")]
    assert choose_mtu(ip("10.0.0.1"), odd) == (1200, None)


def test_most_specific_subnet_wins() -> None:
    assert choose_mtu(ip("10.200.5.9"), IFACES) == (1400, None)
    assert choose_mtu(ip("10.200.6.9"), IFACES) == (1450, None)


def test_tie_breaks_by_interface_name() -> None:
    same = [IA("b", 1300, "10.0.0.1/24"), IA("a", 1400, "10.0.0.2/24")]
    assert choose_mtu(ip("10.0.0.9"), same) == (1400, None)
    assert choose_mtu(ip("10.0.0.9"), list(reversed(same))) == (1400, None)


def test_mapped_address_is_ipv4() -> None:
    assert choose_mtu(ip("::ffff:192.168.2.77"), IFACES) == (9000, None)


def test_no_interface_holds_it() -> None:
    mtu, warning = choose_mtu(ip("8.8.8.8"), IFACES)
    assert mtu == DEFAULT_MTU == 1500
    assert warning and "8.8.8.8" in warning and "1500" in warning
    assert choose_mtu(ip("fd00:9::1"), [])[0] == 1500
