"""Frozen values shared by every layer."""

from __future__ import annotations

import ipaddress
import re
from typing import TypeAlias

import attrs

from xcluster_cni_lib.core.errors import InputError, shorten, shorten_optional

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"(?=.{{1,253}}$){_DNS_LABEL}(\.{_DNS_LABEL})*")
_ANNOTATION_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def is_dns_subdomain(text: str) -> bool:
    """Whether ``text`` is a DNS subdomain as Kubernetes names use them (node names,
    annotation prefixes): lower-case labels of alphanumerics and ``-``, 253 at most."""
    return _DNS_SUBDOMAIN.fullmatch(text) is not None


def annotation_key_problem(key: str) -> str | None:
    """Why ``key`` is not a Kubernetes annotation key (``[prefix/]name``, the prefix a DNS
    subdomain, the name at most 63 alphanumerics, ``-``, ``_`` or ``.``), or None."""
    prefix, slash, name = key.rpartition("/")
    if (slash and not is_dns_subdomain(prefix)) or not _ANNOTATION_NAME.fullmatch(name):
        return "not a valid annotation key ([dns-prefix/]name)"
    return None


def _annotation_key(instance: object, attribute: attrs.Attribute[str | None], key: object) -> None:
    if key is None:
        return
    if not isinstance(key, str):
        raise InputError(f"{attribute.name} annotation: {key!r} is not a string")
    problem = annotation_key_problem(key)
    if problem is not None:
        raise InputError(f"{attribute.name} annotation {key!r}: {problem}")


@attrs.frozen
class Annotations:
    """Which node annotations hold the pod CIDRs (``cidr``) and the node addresses
    (``address``) instead of ``spec.podCIDRs`` and the ``InternalIP`` addresses; ``None``:
    the Kubernetes field. Given once, where Node objects are read (``extract_facts``, the
    node sources): the ``NodeFacts`` carry it, so parsing and planning cannot disagree
    with the reading. The keys are checked: ``InputError`` names a bad one."""

    cidr: str | None = attrs.field(default=None, validator=_annotation_key)
    address: str | None = attrs.field(default=None, validator=_annotation_key)

    def keys(self) -> tuple[str, ...]:
        """The configured annotation keys."""
        return tuple(k for k in (self.cidr, self.address) if k is not None)


#: No annotations: pod CIDRs from ``spec.podCIDRs``, addresses from ``InternalIP``.
NO_ANNOTATIONS = Annotations()


@attrs.frozen
class NodeFacts:
    """The compact, raw view of a Node that routing and IPAM need, extracted without validation.

    Two facts compare equal exactly when nothing routing cares about changed, so a kubelet
    heartbeat yields an equal value and costs nothing downstream. ``annotations`` is the
    configuration the facts were read with: ``cidr_annotation``/``address_annotation``
    hold the values of those annotations, and parsing takes the CIDRs/addresses from
    them exactly when ``annotations`` names them.
    """

    name: str
    pod_cidrs: tuple[str, ...] = ()
    internal_ips: tuple[str, ...] = ()
    cidr_annotation: str | None = None
    address_annotation: str | None = None
    machine_id: str | None = None
    annotations: Annotations = NO_ANNOTATIONS


@attrs.frozen
class Problem:
    """Something wrong with one node that is reported but does not stop others. The
    node name, key and value are shortened (``core.errors.shorten``): a node's data must
    not make a log line as large as itself."""

    node: str = attrs.field(converter=shorten)
    reason: str
    key: str | None = attrs.field(default=None, converter=shorten_optional)
    value: str | None = attrs.field(default=None, converter=shorten_optional)

    def __str__(self) -> str:
        key, value = self.key, self.value
        where = "" if key is None else f" ({key})" if value is None else f" ({key}={value!r})"
        return f"node {self.node}: {self.reason}{where}"


@attrs.frozen
class NodeNetwork:
    """A node's validated, canonical network view: at most one pod CIDR and one address
    per family (IPv4 first)."""

    name: str
    cidrs: tuple[IPNetwork, ...] = ()
    addresses: tuple[IPAddress, ...] = ()
    machine_id: str | None = None
    problems: tuple[Problem, ...] = attrs.field(default=(), eq=False)

    def cidr(self, family: int) -> IPNetwork | None:
        """The pod CIDR of one family (4 or 6), if any."""
        return next((c for c in self.cidrs if c.version == family), None)

    def address(self, family: int) -> IPAddress | None:
        """The node address of one family (4 or 6), if any."""
        return next((a for a in self.addresses if a.version == family), None)


@attrs.frozen
class Route:
    """A route to a pod CIDR via a node address, or (the vxlan overlay) via a VTEP
    address on ``device``, on-link. ``node`` is informational only (not compared), so
    routes read back from the kernel equal the planned ones."""

    dst: IPNetwork
    gateway: IPAddress
    node: str = attrs.field(default="", eq=False)
    device: str | None = None

    @property
    def family(self) -> int:
        return self.dst.version

    def to_json(self) -> dict[str, str]:
        out = {"dst": str(self.dst), "gateway": str(self.gateway)}
        if self.device:
            out["device"] = self.device
        if self.node:
            out["node"] = self.node
        return out


@attrs.frozen
class Plan:
    """What to change in a route table: ``add`` routes to destinations we have no route to,
    ``replace`` routes whose destination we route elsewhere, ``delete`` routes nobody wants."""

    add: tuple[Route, ...] = ()
    replace: tuple[Route, ...] = ()
    delete: tuple[Route, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add or self.replace or self.delete)

    def __len__(self) -> int:
        return len(self.add) + len(self.replace) + len(self.delete)


@attrs.frozen
class RouteOutcome:
    """The result of one planned route operation. ``status`` is one of ``ok``,
    ``conflict`` (a route of another protocol holds the destination), ``unreachable``
    (the kernel refused the gateway), ``gone`` (deleting a route that was already gone,
    which counts as success) or ``error``; ``reason`` is the kernel's message."""

    op: str  # "add" | "replace" | "delete"
    route: Route
    status: str = "ok"
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "gone")


@attrs.frozen
class InterfaceAddress:
    """An address configured on a network interface, with the interface's MTU."""

    interface: str
    mtu: int
    network: IPNetwork  # the interface address's subnet, e.g. 192.168.1.0/24
    address: IPAddress
