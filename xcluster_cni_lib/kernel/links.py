"""Interfaces: their addresses and MTUs (not hot: read once at start or by a tool)."""

from __future__ import annotations

import errno
import ipaddress
import os
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


def link_index(chan: Channel, name: str) -> int:
    """The index of interface ``name`` (0: no such interface): one RTM_GETLINK by name,
    answered by one message, instead of a dump of every link."""
    from xcluster_cni_lib.kernel import vxlancodec

    seq = chan.next_seq()
    chan.sock.send(vxlancodec.link_get_request(name, seq=seq))
    while True:
        data = chan.sock.recv(1 << 16)
        view = memoryview(data)
        for header in rc.iter_messages(view, len(data)):
            if header.seq != seq:
                continue  # a late answer to an earlier request
            if header.msg_type == rc.NLMSG_ERROR:
                error = rc.parse_ack(view, header).error
                if error in (errno.ENODEV, errno.ENOENT):
                    return 0
                raise OSError(error, os.strerror(error))
            if header.msg_type == rc.RTM_NEWLINK:
                return rc.parse_link(view, header).ifindex


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
