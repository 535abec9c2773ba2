"""Interfaces: their addresses and MTUs (not hot: read once at start or by a tool)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Final

from xcluster_cni_lib.core.values import InterfaceAddress
from xcluster_cni_lib.kernel import codec as rc
from xcluster_cni_lib.kernel.channel import Channel
from xcluster_cni_lib.kernel.dumps import packed_address

_FAMILIES: Final = frozenset({socket.AF_INET, socket.AF_INET6})


def list_links(chan: Channel) -> dict[int, rc.LinkMessage]:
    """Every interface, by index."""
    seq = chan.next_seq()
    request = rc.simple_dump_request(msg_type=rc.RTM_GETLINK, seq=seq)
    links: dict[int, rc.LinkMessage] = {}
    for view, header in chan.dump(request, seq):
        if header.msg_type == rc.RTM_NEWLINK:
            link = rc.parse_link(view, header)
            links[link.ifindex] = link
    return links


def list_interface_addresses(netns: str | None = None) -> list[InterfaceAddress]:
    """Every address on every interface (both families), with the interface's MTU and
    the address's subnet."""
    chan = Channel(netns)
    try:
        links = list_links(chan)
        out: list[InterfaceAddress] = []
        seq = chan.next_seq()
        request = rc.simple_dump_request(msg_type=rc.RTM_GETADDR, seq=seq)
        for view, header in chan.dump(request, seq):
            if header.msg_type != rc.RTM_NEWADDR:
                continue
            msg = rc.parse_address(view, header)
            link = links.get(msg.ifindex)
            if link is None or msg.address is None or msg.family not in _FAMILIES:
                continue
            address = packed_address(msg.family, msg.address)
            network = ipaddress.ip_network((msg.address, msg.prefixlen), strict=False)
            out.append(InterfaceAddress(link.name, link.mtu, network, address))
        return out
    finally:
        chan.close()


def interface_mtu(name: str, *, netns: str | None = None) -> int:
    """The MTU of interface ``name``. Raises LookupError when there is no such interface."""
    chan = Channel(netns)
    try:
        for link in list_links(chan).values():
            if link.name == name:
                return link.mtu
    finally:
        chan.close()
    where = f" in network namespace {netns!r}" if netns else ""
    raise LookupError(f"no network interface {name!r}{where}")
