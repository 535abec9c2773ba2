"""Which pod changes can change a node's compiled policy state — so that the agent skips
the recompile for the others (a cluster's pods churn everywhere; a node's tables depend on
few of them).

``compile_node`` reads a remote pod (one on another node) only through the rules of the
policies that select a local pod (``NodeScope.policies``): as a peer a pod or namespace
selector matches, or — for an egress rule with named ports, which resolve on the
destination — as the owner of an address an ``ipBlock`` or a rule without peers covers.
A remote pod that none of those rules can see, before or after its change, leaves the
state unchanged: its address only splits a vmap range into pieces that map to the same
chain and merge again. A local pod always matters, and so does an address two pods claim
(which of them owns it is decided by order). ``tests/unit/test_policy_scope.py`` checks
the claim against ``compile_node`` on random clusters.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from xcluster_cni_lib.core.policy import peer_matches, selects
from xcluster_cni_lib.core.policyfacts import PodFacts, PolicyFacts, PolicyView, Rule
from xcluster_cni_lib.core.values import IPAddress


def _named(rule: Rule) -> bool:
    return any(isinstance(spec.port, str) for spec in rule.ports)


@attrs.frozen
class NodeScope:
    """What of a view the node's state depends on: the node, the policies selecting one
    of its pods (with their rules by direction), and the owner of each pod address."""

    node: str
    policies: tuple[tuple[PolicyFacts, tuple[tuple[Rule, bool], ...]], ...] = ()
    owners: Mapping[IPAddress, PodFacts] = attrs.field(factory=dict)
    #: the node's pods that policies can see (with addresses, not hostNetwork)
    local: tuple[PodFacts, ...] = ()

    def pod_matters(self, view: PolicyView, pod: PodFacts | None) -> bool:
        """Whether ``pod`` (a version of it: before or after a change) can change the
        node's state. ``view`` gives the namespaces' labels."""
        if pod is None:
            return False
        if pod.node == self.node:
            return True
        if not pod.policed:
            return False
        for a in pod.ips:
            owner = self.owners.get(a)
            if owner is not None and (owner.namespace, owner.name) != (pod.namespace, pod.name):
                return True  # an address another pod claims too
        for policy, rules in self.policies:
            for rule, egress in rules:
                named = egress and _named(rule)
                if not rule.peers:
                    if named:
                        return True
                    continue
                for peer in rule.peers:
                    if peer.ipblock is not None:
                        if named and any(peer.ipblock.contains(a) for a in pod.ips):
                            return True
                    elif any(peer_matches(view, policy, peer, a, pod) for a in pod.ips):
                        return True
        return False


def node_scope(view: PolicyView, node: str) -> NodeScope:
    local = [p for p in view.pods if p.node == node and p.policed]
    policies = []
    for q in view.policies:
        if any(selects(q, p) for p in local):
            rules = ((r, False) for r in (q.ingress if q.ingress_policy else ()))
            more = ((r, True) for r in (q.egress if q.egress_policy else ()))
            policies.append((q, (*rules, *more)))
    return NodeScope(
        node=node, policies=tuple(policies), owners=view.pod_by_ip(), local=tuple(local)
    )
