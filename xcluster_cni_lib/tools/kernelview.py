"""``xcluster-cni kernelroutes`` and ``xcluster-cni mtu``: what the kernel of this network
namespace holds. The kernel module (pyroute2) is loaded inside the functions."""

from __future__ import annotations

from collections.abc import Mapping

from xcluster_cni_lib.core.addresses import parse_address
from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.core.mtu import choose_mtu
from xcluster_cni_lib.core.planning import route_sort_key
from xcluster_cni_lib.core.values import Route


def shown_protocol(text: str, names: Mapping[int, str] | None = None) -> int:
    """A route protocol to show: a number 1-255 or a name from iproute2's rt_protos
    (``names``, default the system's). Any protocol can be shown, the kernel's own
    included (``boot`` is what ``ip route add`` uses); ``InputError`` otherwise."""
    if text.isdecimal() and 1 <= int(text) <= 255:
        return int(text)
    if names is None:
        from xcluster_cni_lib.support.rtprotos import read_rt_protos

        names = read_rt_protos()
    by_name = sorted(n for n, name in names.items() if name == text and 1 <= n <= 255)
    if not by_name:
        raise InputError(f"not a route protocol number (1-255) nor a name in rt_protos: {text!r}")
    return by_name[0]


def kernel_routes(protocol: int, *, netns: str | None = None) -> list[Route]:
    """The routes of ``protocol`` in the main table, both families, sorted like a plan."""
    from xcluster_cni_lib.kernel.dumps import list_protocol_routes

    # read-only: any protocol, the kernel's own included (a NetlinkRouteTable refuses 0-4)
    return sorted(list_protocol_routes(protocol, netns=netns), key=route_sort_key)


def address_mtu(address: str, *, netns: str | None = None) -> tuple[int, str | None]:
    """``(mtu, warning)``: the MTU of the interface whose subnet holds ``address`` (see
    ``core.mtu.choose_mtu``); ``InputError`` when ``address`` is not an IP address."""
    from xcluster_cni_lib.kernel.links import list_interface_addresses

    try:
        parsed = parse_address(address)
    except ValueError as e:
        raise InputError(str(e)) from None
    return choose_mtu(parsed, list_interface_addresses(netns))
