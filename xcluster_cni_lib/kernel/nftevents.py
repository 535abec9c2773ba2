"""Changes to one nftables table, straight from the kernel's nf_tables notifications
(netlink group ``NFNLGRP_NFTABLES``), without ``nft monitor``.

Why not ``nft -j monitor`` (``kernel.nftables.NftMonitor``, which the masquerade table
uses): nft 1.0.6 crashes (SIGSEGV) printing the element events of a set of concatenated
intervals — the policy tables' ``<class>-ports`` sets — so every policy update would
kill the monitor. Telling whose change a notification is needs no decoding either: every
nf_tables notification carries the table's name as its first attribute (``NFTA_TABLE_NAME``,
``NFTA_CHAIN_TABLE``, ``NFTA_SET_TABLE``, ``NFTA_SET_ELEM_LIST_TABLE``, ``NFTA_RULE_TABLE``
are all attribute 1), the family in its ``nfgenmsg``, and in its netlink header the port
id of the socket that committed the transaction — the ``nft`` process's id. An ``Nft``
records the ids of the processes it starts (``Nft.started``), so our own writes are known
exactly, whatever they change, and wake nobody.

Layout (``linux/netfilter/nfnetlink.h``, ``nf_tables.h``): ``nlmsghdr`` (16 bytes; type =
``NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_*``, pid), ``nfgenmsg`` (u8 family, u8 version,
be16 resource id), attributes (u16 length, u16 type, 4-byte aligned).
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import threading
from collections.abc import Callable, Container
from typing import Final

from xcluster_cni_lib.kernel.channel import run_in_netns
from xcluster_cni_lib.support import jsonlog

log = jsonlog.get_logger(__name__)

NETLINK_NETFILTER: Final = 12
NFNLGRP_NFTABLES: Final = 7
NFNL_SUBSYS_NFTABLES: Final = 10
SOL_NETLINK: Final = 270
NETLINK_ADD_MEMBERSHIP: Final = 1
#: nfgenmsg families (``NFPROTO_*``)
FAMILIES: Final = {"inet": 1, "ipv4": 2, "arp": 3, "netdev": 5, "bridge": 7, "ipv6": 10}
_HDR: Final = struct.Struct("=IHHII")
_ATTR: Final = struct.Struct("=HH")


def table_events(
    data: bytes, table: str, families: Container[int], ours: Container[int]
) -> tuple[int, int]:
    """(foreign, own): how many nf_tables notifications in ``data`` are about ``table``
    of one of ``families``, by someone else and by one of the ``ours`` port ids."""
    name = table.encode()
    foreign = own = 0
    offset = 0
    while offset + _HDR.size + 4 <= len(data):
        length, msg_type, _flags, _seq, pid = _HDR.unpack_from(data, offset)
        if length < _HDR.size or offset + length > len(data):
            break
        end = offset + length
        if msg_type >> 8 == NFNL_SUBSYS_NFTABLES and data[offset + _HDR.size] in families:
            attr = offset + _HDR.size + 4
            while attr + 4 <= end:
                alen, atype = _ATTR.unpack_from(data, attr)
                if alen < 4:
                    break
                if atype & 0x3FFF == 1:
                    if data[attr + 4 : attr + alen].rstrip(b"\0") == name:
                        if pid in ours:
                            own += 1
                        else:
                            foreign += 1
                    break
                attr += (alen + 3) & ~3
        offset += (length + 3) & ~3
    return foreign, own


def open_socket(netns: str | None = None) -> socket.socket:
    """A NETLINK_NETFILTER socket subscribed to nf_tables notifications, in ``netns``."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            sock.bind((0, 0))
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        except BaseException:
            sock.close()
            raise
        return sock

    if netns is None:
        return make()
    # errors as they are (FileNotFoundError: no such namespace)
    return run_in_netns(netns, make, name=f"nftevents-{netns}")


class NftTableEvents:
    """A ``KernelMonitor`` of one table: ``run`` calls ``on_change`` when ``table`` (of
    one of ``families``) or anything in it changed by someone else's transaction — not by
    the processes ``own_pids`` holds (``Nft.started``) — and when notifications were lost
    (receive buffer overrun: unknown, so assumed)."""

    def __init__(
        self,
        table: str,
        *,
        own_pids: Container[int] = (),
        netns: str | None = None,
        families: tuple[str, ...] = ("inet",),
    ) -> None:
        self.table = table
        self.own_pids = own_pids
        self.families = frozenset(FAMILIES[f] for f in families)
        self.sock = open_socket(netns)
        self.events = 0  # notifications about our table by someone else
        self.echoes = 0  # notifications of our own transactions, ignored
        self.overruns = 0

    def run(
        self, on_change: Callable[[], None], stop: threading.Event, *, poll: float = 0.2
    ) -> None:
        """Until ``stop`` is set (returns within ``poll`` seconds after)."""
        fd = self.sock.fileno()
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], poll)
            if not ready:
                continue
            try:
                data = self.sock.recv(1 << 20)
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1
                log.warning("nf_tables notifications lost; checking the table", table=self.table)
                on_change()
                continue
            foreign, own = table_events(data, self.table, self.families, self.own_pids)
            self.echoes += own
            if foreign:
                self.events += foreign
                if not stop.is_set():
                    on_change()

    def close(self) -> None:
        self.sock.close()
