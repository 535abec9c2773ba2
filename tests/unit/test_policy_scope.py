"""The claim of ``core.policyscope``: a change of a pod that does not matter to a node
(before and after) leaves the node's compiled state exactly as it was — checked with
``compile_node`` on the random clusters of ``test_policy_compile``, and on a few cases."""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_policy_compile import NAMED, clusters, labels
from xcluster_cni_lib.core.addresses import parse_address
from xcluster_cni_lib.core.policyfacts import PodFacts, PolicyView, build_view, make_view
from xcluster_cni_lib.core.policynft import compile_node
from xcluster_cni_lib.core.policyscope import node_scope


def _changed(
    view: PolicyView, index: int, change: dict[str, Any]
) -> tuple[PodFacts | None, PolicyView]:
    pods = list(view.pods)
    old = pods[index % len(pods)] if pods else None
    if old is None:
        return None, view
    if change.get("delete"):
        new = None
        pods.remove(old)
    else:
        new = attrs.evolve(old, **{k: v for k, v in change.items() if k != "delete"})
        pods[pods.index(old)] = new
    changed = make_view(
        pods=pods,
        namespaces=view.namespaces.values(),
        policies=view.policies,
        node_addresses=view.node_addresses,
    )
    return new, changed


change = st.one_of(
    st.builds(lambda lab: {"labels": lab}, labels),
    st.builds(lambda n: {"named_ports": n}, NAMED),
    st.builds(lambda last: {"ips": (parse_address(f"10.0.2.{last}"),)}, st.integers(2, 12)),
    st.just({"delete": True}),
    st.just({"phase": "Succeeded"}),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.integers(0, 7), change)
def test_a_change_that_does_not_matter_changes_nothing(
    view: PolicyView, index: int, what: dict[str, Any]
) -> None:
    pods = list(view.pods)
    if not pods:
        return
    old = pods[index % len(pods)]
    new, after = _changed(view, index, what)
    for node in ("n1", "n2"):
        scope = node_scope(view, node)
        if scope.pod_matters(view, old) or scope.pod_matters(view, new):
            continue
        assert compile_node(after, node=node) == compile_node(view, node=node), (node, what)


def test_local_pods_and_selected_peers_matter_others_do_not() -> None:
    def pod(name: str, node: str, ip: str, **labels_: str) -> dict[str, Any]:
        return {
            "metadata": {"namespace": "a", "name": name, "labels": labels_},
            "spec": {"nodeName": node},
            "status": {"phase": "Running", "podIPs": [{"ip": ip}]},
        }

    policy = {
        "metadata": {"namespace": "a", "name": "p"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}],
        },
    }
    view = build_view(
        pods=[
            pod("web", "n1", "10.0.1.2", app="web"),
            pod("client", "n2", "10.0.2.2", app="client"),
            pod("other", "n2", "10.0.2.3", app="other"),
        ],
        namespaces=[{"metadata": {"name": "a"}}],
        policies=[policy],
    )
    by_name = {p.name: p for p in view.pods}
    n1, n2 = node_scope(view, "n1"), node_scope(view, "n2")
    assert n1.pod_matters(view, by_name["web"])  # local
    assert n1.pod_matters(view, by_name["client"])  # a selected peer
    assert not n1.pod_matters(view, by_name["other"])  # nobody's peer
    assert not n2.pod_matters(view, by_name["web"])  # no policy selects a pod of n2
    relabelled = attrs.evolve(by_name["other"], labels={"app": "client"})
    assert n1.pod_matters(view, relabelled)  # it becomes a peer
