"""NetworkPolicy semantics, pure: which new connections the policies of a view allow.

``allowed`` is the oracle: the definition the compiled nftables state
(``core/policynft.py``) is tested against, connection by connection. It decides *new*
connections; replies and related packets of an allowed connection always pass (the
enforcement accepts conntrack's established/related first).

The rules, per ``networking.k8s.io/v1`` and the Kubernetes documentation:

- A pod selected by no policy of a direction (``policyTypes``) allows everything in that
  direction; a selected pod allows only what at least one rule of one of the policies
  selecting it allows (a union; order and policy names do not matter).
- A connection between two pods needs both: the egress side of the source and the
  ingress side of the destination.
- A rule allows a peer and a port: no peers (``from``/``to`` empty) is every peer, no
  ``ports`` every port of every protocol. A peer is pods (``podSelector`` in the policy's
  namespace; with ``namespaceSelector`` in the namespaces it selects; a
  ``namespaceSelector`` alone: every pod of those namespaces) or an ``ipBlock``.
- ``ipBlock`` matches *addresses*, any address, pod addresses included (a choice: the
  API describes "a particular CIDR"; the documentation only recommends cluster-external
  ranges, and implementations differ. Matching every address is the literal reading and
  needs no knowledge of which address is a pod's).
- A named port resolves on the pod that *receives* the connection: the selected pod for
  ingress, the destination pod for egress (an address that is no pod has no named
  ports: a named port never matches it). Protocol must match too.
- ``endPort``: ports ``port``..``endPort``; a protocol without ``port``: all its ports.
  Other protocols than TCP/UDP/SCTP (ICMP, ...) match only rules without ``ports``.
- Exceptions: traffic between a pod and the node it runs on is always allowed (in both
  directions, whatever the address); a pod cannot block itself; hostNetwork pods and
  finished pods (``Succeeded``/``Failed``) are not policed and no selector selects them
  (their addresses still match an ``ipBlock``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, TypeAlias

from xcluster_cni_lib.core.policyfacts import (
    MAX_PORT,
    Peer,
    PodFacts,
    PolicyFacts,
    PolicyView,
    Rule,
)
from xcluster_cni_lib.core.values import IPAddress

#: Resolved ports: ``None`` every port and protocol; else (protocol, first, last) ranges.
Ports: TypeAlias = tuple[tuple[str, int, int], ...] | None
ALL_PORTS: Final = None
Endpoint: TypeAlias = PodFacts | IPAddress


def selects(policy: PolicyFacts, pod: PodFacts) -> bool:
    """Whether ``policy`` applies to ``pod`` (in some direction)."""
    return (
        pod.policed
        and pod.namespace == policy.namespace
        and policy.pod_selector.matches(pod.labels)
    )


def policies_of(view: PolicyView, pod: PodFacts, *, ingress: bool) -> list[PolicyFacts]:
    """The policies that isolate ``pod`` in one direction."""
    return [
        p
        for p in view.policies
        if (p.ingress_policy if ingress else p.egress_policy) and selects(p, pod)
    ]


def peer_matches(
    view: PolicyView, policy: PolicyFacts, peer: Peer, address: IPAddress, pod: PodFacts | None
) -> bool:
    """Whether one peer entry matches the far end: ``address``, the pod that has it if
    any (live, not hostNetwork)."""
    if peer.ipblock is not None:
        return peer.ipblock.contains(address)
    if pod is None or not pod.policed:
        return False
    if peer.namespaces is None:
        if pod.namespace != policy.namespace:
            return False
    elif not peer.namespaces.matches(view.namespace_labels(pod.namespace)):
        return False
    return peer.pods is None or peer.pods.matches(pod.labels)


def rule_peers_match(
    view: PolicyView, policy: PolicyFacts, rule: Rule, address: IPAddress, pod: PodFacts | None
) -> bool:
    return not rule.peers or any(peer_matches(view, policy, p, address, pod) for p in rule.peers)


def resolve_ports(rule: Rule, receiver: PodFacts | None) -> Ports:
    """The rule's ports with names resolved on ``receiver`` (canonical: merged, sorted)."""
    if not rule.ports:
        return ALL_PORTS
    out: list[tuple[str, int, int]] = []
    for spec in rule.ports:
        if spec.port is None:
            out.append((spec.protocol, 0, MAX_PORT))
        elif isinstance(spec.port, str):
            found = None if receiver is None else receiver.named_ports.get(spec.port)
            if found is not None and found[0] == spec.protocol:
                out.append((spec.protocol, found[1], found[1]))
        else:
            out.append((spec.protocol, spec.port, spec.end if spec.end is not None else spec.port))
    return merge_ranges(out)


def merge_ranges(ranges: Iterable[tuple[str, int, int]]) -> tuple[tuple[str, int, int], ...]:
    """Per protocol, overlapping and adjacent ranges merged; sorted."""
    out: list[tuple[str, int, int]] = []
    for proto, lo, hi in sorted(ranges):
        if out and out[-1][0] == proto and lo <= out[-1][2] + 1:
            if hi > out[-1][2]:
                out[-1] = (proto, out[-1][1], hi)
        else:
            out.append((proto, lo, hi))
    return tuple(out)


def port_matches(ports: Ports, protocol: str, port: int | None) -> bool:
    if ports is ALL_PORTS:
        return True
    return port is not None and any(p == protocol and lo <= port <= hi for p, lo, hi in ports)


def _side_allows(
    view: PolicyView,
    subject: PodFacts,
    *,
    ingress: bool,
    peer_ip: IPAddress,
    peer_pod: PodFacts | None,
    protocol: str,
    port: int | None,
) -> bool:
    policies = policies_of(view, subject, ingress=ingress)
    if not policies or peer_ip in view.node_addresses.get(subject.node, ()):
        return True
    receiver = subject if ingress else peer_pod
    for policy in policies:
        for rule in policy.ingress if ingress else policy.egress:
            if rule_peers_match(view, policy, rule, peer_ip, peer_pod) and port_matches(
                resolve_ports(rule, receiver), protocol, port
            ):
                return True
    return False


def allowed_ips(
    view: PolicyView,
    src: IPAddress,
    dst: IPAddress,
    protocol: str,
    port: int | None,
    *,
    by_ip: dict[IPAddress, PodFacts] | None = None,
) -> bool:
    """Whether a new connection from address ``src`` to address ``dst`` is allowed
    (``by_ip``: ``view.pod_by_ip()``, given when deciding many connections)."""
    pods = view.pod_by_ip() if by_ip is None else by_ip
    src_pod, dst_pod = pods.get(src), pods.get(dst)
    if src_pod is not None and src_pod is dst_pod:
        return True  # a pod cannot block itself
    if src_pod is not None and not _side_allows(
        view, src_pod, ingress=False, peer_ip=dst, peer_pod=dst_pod, protocol=protocol, port=port
    ):
        return False
    return dst_pod is None or _side_allows(
        view, dst_pod, ingress=True, peer_ip=src, peer_pod=src_pod, protocol=protocol, port=port
    )


def allowed(
    view: PolicyView, src: Endpoint, dst: Endpoint, protocol: str, port: int | None
) -> bool:
    """Whether a new connection from ``src`` to ``dst`` (a pod or an address) is allowed:
    the egress side of ``src`` if it is a pod, the ingress side of ``dst`` if it is one.
    Pods are taken at an address of the family both ends have (IPv4 first); a
    ``ValueError`` if there is none."""
    families = [
        f
        for f in (4, 6)
        if all(
            e.ip(f) is not None if isinstance(e, PodFacts) else e.version == f for e in (src, dst)
        )
    ]
    if not families:
        raise ValueError("the two ends have no address family in common")
    f = families[0]
    s = src.ip(f) if isinstance(src, PodFacts) else src
    d = dst.ip(f) if isinstance(dst, PodFacts) else dst
    assert s is not None and d is not None
    return allowed_ips(view, s, d, protocol, port)
