"""Choose the MTU for pod interfaces: the MTU of the interface that reaches an address."""

from __future__ import annotations

from collections.abc import Iterable

from xcluster_cni_lib.core.addresses import parse_address
from xcluster_cni_lib.core.values import InterfaceAddress, IPAddress, IPNetwork

DEFAULT_MTU = 1500


def _in(address: IPAddress, network: IPNetwork) -> bool:
    return network.version == address.version and address in network


def choose_mtu(
    address: IPAddress, interfaces: Iterable[InterfaceAddress]
) -> tuple[int, str | None]:
    """``(mtu, warning)``: the MTU of the interface whose subnet holds ``address``.

    The interface that has ``address`` itself wins; otherwise the one with the most
    specific subnet holding it (ties: the first by interface name). When none holds it:
    ``DEFAULT_MTU`` and a warning text; otherwise the warning is None.
    """
    address = parse_address(str(address))  # canonical: IPv4-mapped is IPv4
    holding = [ia for ia in interfaces if ia.address == address or _in(address, ia.network)]
    if not holding:
        return DEFAULT_MTU, (
            f"no interface has an address in a subnet holding {address}; using MTU {DEFAULT_MTU}"
        )
    best = min(holding, key=lambda ia: (ia.address != address, -ia.network.prefixlen, ia.interface))
    return best.mtu, None
