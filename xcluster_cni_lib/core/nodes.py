"""Parse a node's facts into its validated, canonical ``NodeNetwork``: the one place that
decides which pod CIDRs and addresses a node has. The router daemon routes to exactly
these CIDRs and the ``kube-node`` IPAM plugin allocates from exactly these (see
``docs/node-data.md``).

Where the values come from (``NodeFacts.annotations`` says which):

- pod CIDRs: ``spec.podCIDRs`` (``spec.podCIDR`` on old nodes), or, when a CIDR annotation
  name is configured, that annotation (comma-separated);
- addresses: ``status.addresses`` of type ``InternalIP``, or, when an address annotation
  name is configured, that annotation (comma-separated).

Every CIDR must also pass the range policy (``core.ranges.RangePolicy``: the deny-list,
the minimum prefix lengths, ``CLUSTER_CIDRS`` when set, the host's connected subnets when
given); the parse functions take it as ``policy`` (default: the deny-list and the default
minimum prefixes, no allow-list, no host subnets). A CIDR the policy refuses is not a pod
CIDR.

Kubernetes-owned fields are read leniently: the first valid entry per family is used and
extra, duplicate, malformed or refused entries become ``Problem``s on the network.
Annotations are written by people (and, for secondary networks, by the node itself), so
they are strict: anything odd raises ``InvalidNode`` naming the node, the annotation and
the bad value (shortened to 200 characters and its length), and the node is not used at all:

- the annotation is configured but missing on the node, or its value is empty;
- an item is empty (``"a,,b"``, a trailing comma) or not a CIDR / not an address;
- more than two items, or two of one family;
- a CIDR of length 0 (a default route is never a pod CIDR), too small to hold pods
  (IPv4 longer than /30, IPv6 longer than /126: no room for a gateway and a pod) or
  refused by the policy; an address that cannot be a gateway (unspecified, loopback,
  multicast);
- an address of the wrong family: an annotated address whose family none of the node's
  pod CIDRs has (``fd00::1`` for an IPv4-only node). Such an address can never be a
  gateway for this node, so it is a typo or a stale value. (A node with no pod CIDR at
  all is not checked: it gets no routes anyway.)

IPv4-mapped IPv6 values count as IPv4 everywhere (``core.addresses``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from xcluster_cni_lib.core.addresses import parse_address, parse_cidr, split_list
from xcluster_cni_lib.core.errors import InputError, InvalidNode, shorten
from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.core.ranges import DEFAULT_POLICY, RangePolicy
from xcluster_cni_lib.core.values import (
    NO_ANNOTATIONS,
    Annotations,
    IPAddress,
    IPNetwork,
    NodeFacts,
    NodeNetwork,
    Problem,
)

POD_CIDRS_KEY = "spec.podCIDRs"
ADDRESSES_KEY = "status.addresses"
NAME_KEY = "metadata.name"
#: The keys of problems that are about a Kubernetes field; any other key is an annotation.
FIELD_KEYS = frozenset({POD_CIDRS_KEY, ADDRESSES_KEY, NAME_KEY})
#: Why a node without a pod CIDR gets no route and no pod address.
NO_POD_CIDR = "no pod CIDR"
# The longest pod CIDR per family: host-local needs a gateway and a pod address in it.
LONGEST_POD_CIDR = {4: 30, 6: 126}

_T = TypeVar("_T", IPNetwork, IPAddress)


def _cidr_check(policy: RangePolicy) -> Callable[[IPNetwork], str | None]:
    def check(cidr: IPNetwork) -> str | None:
        # a /0 is refused by the policy (``core.ranges``), with its own text
        longest = LONGEST_POD_CIDR[cidr.version]
        if cidr.prefixlen > longest:
            return f"{cidr} is too small for pods (at most /{longest})"
        return policy.refusal(cidr)

    return check


def _check_address(address: IPAddress) -> str | None:
    if address.is_unspecified or address.is_loopback or address.is_multicast:
        return f"{address} cannot be a node address"
    return None


def _strict_list(
    text_or_items: str | Sequence[str],
    *,
    node: str,
    key: str,
    what: str,
    plural: str,
    parse: Callable[[str], _T],
    check: Callable[[_T], str | None],
) -> tuple[_T, ...]:
    if isinstance(text_or_items, str):
        value = text_or_items
        items = split_list(text_or_items)
    else:
        items = [str(i).strip() for i in text_or_items]
        value = ",".join(items)
    if not value.strip():
        raise InvalidNode(node, f"empty value, expected one or two {plural}", key=key, value=value)
    parsed: list[_T] = []
    for item in items:
        if not item:
            raise InvalidNode(node, "empty item in the comma-separated list", key=key, value=value)
        try:
            one = parse(item)
        except ValueError:
            raise InvalidNode(
                node, f"not {what}: {shorten(item)!r}", key=key, value=value
            ) from None
        reason = check(one)
        if reason is not None:
            raise InvalidNode(node, reason, key=key, value=value)
        parsed.append(one)
    if len(parsed) > 2:
        raise InvalidNode(
            node, f"{len(parsed)} {plural}, at most two (one per family)", key=key, value=value
        )
    if len(parsed) == 2 and parsed[0].version == parsed[1].version:
        raise InvalidNode(
            node,
            f"two IPv{parsed[0].version} {plural}, at most one per family",
            key=key,
            value=value,
        )
    return tuple(sorted(parsed, key=lambda v: v.version))


def parse_subnets(
    text_or_items: str | Sequence[str],
    *,
    node: str,
    key: str,
    policy: RangePolicy = DEFAULT_POLICY,
) -> tuple[IPNetwork, ...]:
    """Strictly parse one or two CIDRs (a comma-separated string or a list of strings).

    Rules: every item a valid CIDR (canonicalized: host bits masked, IPv4-mapped IPv6 is
    IPv4) that ``policy`` accepts, at most two, not two of one family. The result has
    IPv4 first. Raises ``InvalidNode(node, reason, key=key, value=<the value>)``.
    """
    return _strict_list(
        text_or_items,
        node=node,
        key=key,
        what="a CIDR",
        plural="CIDRs",
        parse=parse_cidr,
        check=_cidr_check(policy),
    )


def parse_addresses(
    text_or_items: str | Sequence[str], *, node: str, key: str
) -> tuple[IPAddress, ...]:
    """Strictly parse one or two node addresses; the same rules as ``parse_subnets``."""
    return _strict_list(
        text_or_items,
        node=node,
        key=key,
        what="an IP address",
        plural="addresses",
        parse=parse_address,
        check=_check_address,
    )


def _lenient_list(
    items: Iterable[str],
    *,
    node: str,
    key: str,
    what: str,
    parse: Callable[[str], _T],
    check: Callable[[_T], str | None],
    problems: list[Problem],
) -> tuple[_T, ...]:
    chosen: dict[int, _T] = {}
    for item in items:
        try:
            one = parse(item)
        except ValueError:
            problems.append(Problem(node, f"not {what}; ignored", key=key, value=item))
            continue
        reason = check(one)
        if reason is not None:
            problems.append(Problem(node, f"{reason}; ignored", key=key, value=item))
            continue
        first = chosen.get(one.version)
        if first is None:
            chosen[one.version] = one
        elif first == one:
            problems.append(Problem(node, f"duplicate of {first}; ignored", key=key, value=item))
        else:
            problems.append(
                Problem(
                    node,
                    f"extra IPv{one.version} {what.removeprefix('an ').removeprefix('a ')} "
                    f"ignored, using {first}",
                    key=key,
                    value=item,
                )
            )
    return tuple(chosen[f] for f in (4, 6) if f in chosen)


def parse_facts(facts: NodeFacts, *, policy: RangePolicy = DEFAULT_POLICY) -> NodeNetwork:
    """The validated network view of one node.

    The CIDRs/addresses come from the annotations that ``facts.annotations`` names (the
    configuration the facts were extracted with), else from the Kubernetes fields; a CIDR
    ``policy`` refuses is not a pod CIDR.
    Raises ``InvalidNode`` for a node that cannot be used; lenient findings are in
    ``NodeNetwork.problems``.
    """
    name = facts.name
    if not name:
        raise InvalidNode("?", "the node has no name", key=NAME_KEY)
    problems: list[Problem] = []
    cidr_annotation = facts.annotations.cidr
    address_annotation = facts.annotations.address

    cidrs: tuple[IPNetwork, ...]
    if cidr_annotation is not None:
        if facts.cidr_annotation is None:
            raise InvalidNode(name, "the CIDR annotation is missing", key=cidr_annotation)
        cidrs = parse_subnets(facts.cidr_annotation, node=name, key=cidr_annotation, policy=policy)
    else:
        cidrs = _lenient_list(
            facts.pod_cidrs,
            node=name,
            key=POD_CIDRS_KEY,
            what="a CIDR",
            parse=parse_cidr,
            check=_cidr_check(policy),
            problems=problems,
        )

    addresses: tuple[IPAddress, ...]
    if address_annotation is not None:
        if facts.address_annotation is None:
            raise InvalidNode(name, "the address annotation is missing", key=address_annotation)
        value = facts.address_annotation
        addresses = parse_addresses(value, node=name, key=address_annotation)
        families = {c.version for c in cidrs}
        for address in addresses if families else ():
            if address.version not in families:
                raise InvalidNode(
                    name,
                    f"address {address} is IPv{address.version} but the node has no "
                    f"IPv{address.version} pod CIDR",
                    key=address_annotation,
                    value=value,
                )
    else:
        addresses = _lenient_list(
            facts.internal_ips,
            node=name,
            key=ADDRESSES_KEY,
            what="an InternalIP address",
            parse=parse_address,
            check=_check_address,
            problems=problems,
        )

    return NodeNetwork(
        name=name,
        cidrs=cidrs,
        addresses=addresses,
        machine_id=facts.machine_id,
        problems=tuple(problems),
    )


def parse_node(
    node: Mapping[str, Any],
    *,
    annotations: Annotations = NO_ANNOTATIONS,
    policy: RangePolicy = DEFAULT_POLICY,
) -> NodeNetwork:
    """``parse_facts(extract_facts(node, annotations=annotations), policy=policy)``: a
    Node dict as the API returns it."""
    return parse_facts(extract_facts(node, annotations=annotations), policy=policy)


def pod_cidrs(network: NodeNetwork) -> tuple[IPNetwork, ...]:
    """The node's pod CIDRs, IPv4 first: what the daemon routes to and the ``kube-node``
    plugin allocates from. Raises ``InvalidNode`` (``NO_POD_CIDR``) when there is none."""
    if not network.cidrs:
        raise InvalidNode(network.name, NO_POD_CIDR)
    return network.cidrs


def problem_of(error: InvalidNode) -> Problem:
    """The ``Problem`` that reports a node skipped for ``error``."""
    return Problem(error.node, error.reason, key=error.key, value=error.value)


def parse_nodes(
    nodes: Iterable[NodeFacts | Mapping[str, Any]],
    *,
    annotations: Annotations | None = None,
    policy: RangePolicy = DEFAULT_POLICY,
) -> tuple[list[NodeNetwork], list[Problem]]:
    """Parse many nodes (facts or Node dicts); a bad node never stops the others.

    Node dicts are read with ``annotations`` (default: none); facts carry their own. When
    ``annotations`` is given, facts read with other annotations raise ``InputError``: the
    caller disagrees with the source about where the values are.

    Returns the usable networks (in input order) and every problem found: one per
    skipped node (invalid, or a second node with an already seen name) followed by the
    lenient findings of the usable ones (also kept in their ``problems``).
    """
    networks: list[NodeNetwork] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for item in nodes:
        if isinstance(item, NodeFacts):
            facts = item
            if annotations is not None and facts.annotations != annotations:
                raise InputError(
                    f"node {facts.name}: its facts were read with {facts.annotations}, "
                    f"not {annotations}"
                )
        else:
            facts = extract_facts(item, annotations=annotations or NO_ANNOTATIONS)
        try:
            network = parse_facts(facts, policy=policy)
        except InvalidNode as e:
            problems.append(problem_of(e))
            continue
        if network.name in seen:
            problems.append(
                Problem(network.name, "a second node with this name; ignored", key=NAME_KEY)
            )
            continue
        seen.add(network.name)
        networks.append(network)
    problems.extend(p for n in networks for p in n.problems)
    return networks, problems
