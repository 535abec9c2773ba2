"""Pod, Namespace and NetworkPolicy objects (plain dicts, shaped as the API server returns
them, valid for the official client's models) for tests that feed the API-server double::

    from tests.apiserver.objects import make_namespace, make_network_policy, make_pod

    api.add_namespace(make_namespace("shop", labels={"team": "a"}))
    api.add_pod(make_pod("web-0", "shop", node="n1", ips=["10.244.1.5", "fd00:10:244:1::5"],
                         labels={"app": "web"}, ports={"http": 8080}))
    api.add_network_policy(make_network_policy("deny-all", "shop", pod_selector={},
                                               policy_types=["Ingress"]))

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["make_namespace", "make_network_policy", "make_pod"]


def make_namespace(name: str, *, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A Namespace (the double adds ``kubernetes.io/metadata.name``, as a server does)."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def make_pod(
    name: str,
    namespace: str = "default",
    *,
    node: str | None = None,
    ips: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    ports: Mapping[str, int | tuple[int, str]] | None = None,
    host_network: bool = False,
    phase: str | None = None,
) -> dict[str, Any]:
    """A Pod with one container. ``node`` None: not scheduled yet (``spec.nodeName``
    absent). ``ports`` maps a port name to a number, or to ``(number, protocol)``.
    ``phase`` defaults to Running when the pod has IPs, Pending otherwise."""
    container_ports = []
    for port_name, value in (ports or {}).items():
        number, protocol = value if isinstance(value, tuple) else (value, "TCP")
        container_ports.append({"name": port_name, "containerPort": number, "protocol": protocol})
    spec: dict[str, Any] = {
        "containers": [
            {"name": "main", "image": "registry.example.com/app:v1", "ports": container_ports}
        ],
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        "serviceAccountName": "default",
    }
    if node is not None:
        spec["nodeName"] = node
    if host_network:
        spec["hostNetwork"] = True
    status: dict[str, Any] = {"phase": phase or ("Running" if ips else "Pending")}
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": spec,
        "status": status,
    }


def make_network_policy(
    name: str,
    namespace: str = "default",
    *,
    pod_selector: Mapping[str, Any] | None = None,
    policy_types: Sequence[str] = ("Ingress",),
    ingress: Sequence[Mapping[str, Any]] = (),
    egress: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A NetworkPolicy. ``pod_selector`` is a LabelSelector (``{}``, the default, selects
    every pod of the namespace); ``ingress``/``egress`` are the rules, as in YAML."""
    spec: dict[str, Any] = {
        "podSelector": dict(pod_selector or {}),
        "policyTypes": list(policy_types),
    }
    if ingress:
        spec["ingress"] = [dict(rule) for rule in ingress]
    if egress:
        spec["egress"] = [dict(rule) for rule in egress]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
