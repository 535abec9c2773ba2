"""Interfaces: one link by name (read, or its address and MTU set), and every
interface's addresses and MTUs (not hot: read once at start or by a tool).

Raw rtnetlink over a ``channel.Channel`` (``vxlancodec`` encodes the link requests and
decodes a link of any kind); the caller owns the channel and serialises its use.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Final

from xcluster_cni_lib.core.values import InterfaceAddress
from xcluster_cni_lib.kernel import codec as rc
from xcluster_cni_lib.kernel import vxlancodec as vc
from xcluster_cni_lib.kernel.channel import Channel, NetlinkError
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


def get_link(chan: Channel, name: str) -> vc.VxlanLink | None:
    """The link called ``name`` (any kind; the vxlan fields are set for a vxlan link), or
    None when there is none: one RTM_GETLINK by name, answered by one message, instead
    of a dump of every link. Raises NetlinkError on any other error."""
    seq = chan.next_seq()
    try:
        answers = chan.request(vc.link_get_request(name, seq=seq), seq)
    except NetlinkError as e:
        if e.errno in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    for view, header in answers:
        if header.msg_type == rc.RTM_NEWLINK:
            return vc.parse_vxlan_link(view, header)
    return None


def link_index(chan: Channel, name: str) -> int:
    """The index of interface ``name`` (0: no such interface)."""
    link = get_link(chan, name)
    return 0 if link is None else link.ifindex


def set_link(chan: Channel, ifindex: int, *, mac: str, mtu: int) -> None:
    """Set link ``ifindex``'s address and MTU and bring it up, in place (any kind of
    link). Raises NetlinkError when the kernel refuses."""
    seq = chan.next_seq()
    chan.request(vc.link_set_request(seq=seq, ifindex=ifindex, mac=mac, mtu=mtu), seq)


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
