"""Which CIDRs may be pod CIDRs, for routes (the daemon) and for the ranges the IPAM
plugins hand out, and which addresses may be gateways: the one rule both apply.

A node can write its own annotations, so where pod CIDRs come from annotations a node
could claim any destination. A CIDR is refused when:

- it is shorter than the minimum prefix (default /8 for IPv4, /32 for IPv6; a whole /0 is
  a default route);
- it overlaps a range that is never a pod network (``DENIED``): unspecified, loopback,
  link-local (which holds the cloud metadata address 169.254.169.254), multicast,
  reserved/broadcast, and the IPv6 metadata address ``fd00:ec2::254``;
- an allow-list (``CLUSTER_CIDRS``) is set and the CIDR is not inside one of its entries;
- it overlaps a subnet connected to this host (the node's own LAN: routing it elsewhere
  would take the host's neighbours' traffic). A connected subnet that contains a whole
  allow-list entry does not count: the administrator declared that range for pods.

A node address is refused as a gateway when it is one of this host's own addresses, or
the network address (or, IPv4, the broadcast address) of a subnet connected to this host.

Pure: the host's subnets and addresses are values the caller reads (``host_view``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs

from xcluster_cni_lib.core.addresses import parse_cidr, split_list
from xcluster_cni_lib.core.errors import InputError, shorten
from xcluster_cni_lib.core.values import InterfaceAddress, IPAddress, IPNetwork

__all__ = [
    "DEFAULT_MIN_PREFIX_V4",
    "DEFAULT_MIN_PREFIX_V6",
    "DEFAULT_POLICY",
    "DENIED",
    "RangePolicy",
    "host_view",
    "parse_cidr_list",
    "shorten",
]

DEFAULT_MIN_PREFIX_V4 = 8
DEFAULT_MIN_PREFIX_V6 = 32
MEMO_SIZE = 65536  # remembered refusals per policy (cleared when full)
_BITS = {4: 32, 6: 128}

# Never a pod network, whatever the allow-list says: (range, what it is).
DENIED: tuple[tuple[IPNetwork, str], ...] = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "the unspecified/this-network range"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "the loopback range"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "the link-local range (cloud metadata)"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "the multicast range"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "the reserved/broadcast range"),
    (ipaddress.IPv6Network("::/128"), "the unspecified address"),
    (ipaddress.IPv6Network("::1/128"), "the loopback address"),
    (ipaddress.IPv6Network("fe80::/10"), "the link-local range"),
    (ipaddress.IPv6Network("ff00::/8"), "the multicast range"),
    (ipaddress.IPv6Network("fd00:ec2::254/128"), "the cloud metadata address"),
)


def _key(cidr: IPNetwork) -> tuple[int, int, int]:
    return (cidr.version, int(cidr.network_address), cidr.prefixlen)


def _overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Aligned CIDRs overlap exactly when one contains the other: they agree on the
    bits of the shorter prefix."""
    if a[0] != b[0]:
        return False
    shift = _BITS[a[0]] - min(a[2], b[2])
    return a[1] >> shift == b[1] >> shift


def _inside(inner: tuple[int, int, int], outer: tuple[int, int, int]) -> bool:
    return inner[2] >= outer[2] and _overlap(inner, outer)


# per family: (network address as int, prefix length, the range, what it is)
_DENIED_BY_FAMILY: dict[int, tuple[tuple[int, int, IPNetwork, str], ...]] = {
    f: tuple((int(c.network_address), c.prefixlen, c, w) for c, w in DENIED if c.version == f)
    for f in (4, 6)
}


def parse_cidr_list(text: str, *, key: str) -> tuple[IPNetwork, ...]:
    """A comma-separated CIDR list (``CLUSTER_CIDRS``); empty text is an empty list.
    Raises ``InputError`` naming ``key`` and the bad item (shortened)."""
    if not text.strip():
        return ()
    out: list[IPNetwork] = []
    for item in split_list(text):
        try:
            out.append(parse_cidr(item))
        except ValueError:
            raise InputError(f"{key}: {shorten(item)!r} is not a CIDR") from None
    return tuple(out)


def _tuple(items: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    return tuple(items)


def _addresses(items: Iterable[IPAddress]) -> frozenset[IPAddress]:
    return frozenset(items)


@attrs.frozen
class RangePolicy:
    """The rule, configured: ``cluster_cidrs`` (empty: no allow-list), the minimum prefix
    lengths, this host's connected subnets and this host's own addresses (the last two
    from ``host_view``)."""

    cluster_cidrs: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_tuple)
    min_prefix_v4: int = DEFAULT_MIN_PREFIX_V4
    min_prefix_v6: int = DEFAULT_MIN_PREFIX_V6
    host_subnets: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_tuple)
    host_addresses: frozenset[IPAddress] = attrs.field(default=frozenset(), converter=_addresses)
    # precomputed integer forms (not compared: they follow from the fields above)
    _allowed: dict[int, tuple[tuple[int, int], ...]] = attrs.field(
        init=False, eq=False, repr=False, hash=False
    )
    _near: tuple[tuple[tuple[int, int, int], IPNetwork], ...] = attrs.field(
        init=False, eq=False, repr=False, hash=False
    )
    _bad_gateways: dict[IPAddress, str] = attrs.field(init=False, eq=False, repr=False, hash=False)
    # answers so far: a daemon asks about the same CIDRs at every recomputation
    _memo: dict[IPNetwork, str | None] = attrs.field(
        init=False, eq=False, repr=False, hash=False, factory=dict
    )

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.min_prefix_v4 <= 32:
            raise InputError(f"minimum IPv4 pod prefix {self.min_prefix_v4}: not 0-32")
        if not 0 <= self.min_prefix_v6 <= 128:
            raise InputError(f"minimum IPv6 pod prefix {self.min_prefix_v6}: not 0-128")
        keys = tuple(_key(c) for c in self.cluster_cidrs)
        near = tuple(
            (k, s)
            for s in self.host_subnets
            for k in (_key(s),)
            # a connected subnet holding a whole allow-list entry was declared for pods
            if not any(_inside(a, k) for a in keys)
        )
        # allow-list entries per family as (prefix length, the prefix's bits)
        allowed = {
            f: tuple((k[2], k[1] >> (_BITS[f] - k[2])) for k in keys if k[0] == f) for f in (4, 6)
        }
        bad: dict[IPAddress, str] = {}
        for s in self.host_subnets:
            if s.prefixlen >= _BITS[s.version] - 1:
                continue  # /31, /32, /127, /128: no network or broadcast address
            if s.version == 4:
                bad.setdefault(
                    s.broadcast_address,
                    f"{s.broadcast_address} is the broadcast address of {s}, "
                    "connected to this host",
                )
            bad.setdefault(
                s.network_address,
                f"{s.network_address} is the network address of {s}, connected to this host",
            )
        for a in self.host_addresses:
            bad[a] = f"{a} is an address of this host"
        object.__setattr__(self, "_allowed", allowed)
        object.__setattr__(self, "_near", near)
        object.__setattr__(self, "_bad_gateways", bad)

    def with_host(
        self, subnets: Iterable[IPNetwork], addresses: Iterable[IPAddress] = ()
    ) -> RangePolicy:
        """This policy with the host's connected subnets and own addresses."""
        return attrs.evolve(self, host_subnets=tuple(subnets), host_addresses=frozenset(addresses))

    def without_host(self) -> RangePolicy:
        """The static part: the same rule for every node of the cluster."""
        return attrs.evolve(self, host_subnets=(), host_addresses=frozenset())

    def refusal(self, cidr: IPNetwork) -> str | None:
        """Why ``cidr`` may not be a pod CIDR, or ``None`` when it may."""
        memo = self._memo
        try:
            return memo[cidr]
        except KeyError:
            pass
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[cidr] = reason = self._refusal(cidr)
        return reason

    def _refusal(self, cidr: IPNetwork) -> str | None:
        if cidr.prefixlen == 0:
            return f"{cidr} is a default route, not a pod CIDR"
        minimum = self.min_prefix_v4 if cidr.version == 4 else self.min_prefix_v6
        if cidr.prefixlen < minimum:
            return f"{cidr} is broader than /{minimum}, the shortest pod CIDR allowed"
        family, length, addr = cidr.version, cidr.prefixlen, int(cidr.network_address)
        bits = _BITS[family]
        for denied_addr, denied_length, denied, what in _DENIED_BY_FAMILY[family]:
            shift = bits - min(length, denied_length)
            if addr >> shift == denied_addr >> shift:
                return f"{cidr} overlaps {what} {denied}"
        if self.cluster_cidrs and not any(
            length >= a_length and addr >> (bits - a_length) == a_bits
            for a_length, a_bits in self._allowed[family]
        ):
            entries = [str(c) for c in self.cluster_cidrs if c.version == family]
            allowed = ",".join(entries) or f"no IPv{family} entry"
            return f"{cidr} is outside the cluster CIDRs ({allowed})"
        if self._near:
            key = (family, addr, length)
            for subnet_key, subnet in self._near:
                if _overlap(key, subnet_key):
                    return f"{cidr} overlaps {subnet}, a subnet connected to this host"
        return None

    def gateway_refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be a gateway, or ``None`` when it may: one of this
        host's own addresses, or a connected subnet's network or (IPv4) broadcast address
        (subnets of /31, /32, /127 and /128 have neither)."""
        return self._bad_gateways.get(address)


DEFAULT_POLICY = RangePolicy()


def host_view(
    addresses: Iterable[InterfaceAddress],
) -> tuple[tuple[IPNetwork, ...], frozenset[IPAddress]]:
    """This host's connected subnets and own addresses from its interface addresses
    (``kernel.links.list_interface_addresses``). Subnets: the addresses' networks, except
    host routes (/32, /128: e.g. a node address on ``lo`` or a VIP), loopback and IPv6
    link-local (every interface has ``fe80::/64``; link-local is denied anyway).
    Addresses: all of them but IPv6 link-local. Sorted, duplicates removed."""
    subnets: set[IPNetwork] = set()
    own: set[IPAddress] = set()
    for a in addresses:
        if a.address.version == 6 and a.address.is_link_local:
            continue
        own.add(a.address)
        net = a.network
        if net.prefixlen >= _BITS[net.version] or net.is_loopback:
            continue
        subnets.add(net)
    return tuple(sorted(subnets, key=_key)), frozenset(own)
