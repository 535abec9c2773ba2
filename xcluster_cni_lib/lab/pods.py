"""Pods: a namespace per pod, attached by the real ``bridge`` plugin with ``kube-node``
IPAM, invoked exactly as a container runtime (main network, ``eth0``) or Multus
(secondary network, ``net1``) would: ``CNI_*`` environment, the network configuration
(with ``name`` and ``cniVersion``) on stdin, run on the node (inside its namespace)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from xcluster_cni_lib.core.addresses import parse_address
from xcluster_cni_lib.core.values import IPAddress
from xcluster_cni_lib.lab.shell import run
from xcluster_cni_lib.lab.spec import LabError, LabSpec, NetworkSpec, node_index

# Variables of ours or of a runtime that must not leak from the caller into a plugin.
_SCRUB = ("CNI_", "KUBECONFIG", "NODE_NAME", "NODES_FILE")


@attrs.frozen
class Pod:
    """A pod of the lab: its namespace, node, Kubernetes namespace and, per network
    name, the addresses the plugins gave it (IPv4 first)."""

    name: str
    node: str
    netns: str
    k8s_namespace: str
    container_id: str
    addresses: Mapping[str, tuple[IPAddress, ...]] = attrs.field(factory=dict)

    def address(self, network: str, family: int) -> IPAddress | None:
        return next((a for a in self.addresses.get(network, ()) if a.version == family), None)


def new_pod(spec: LabSpec, *, name: str, node: str, k8s_namespace: str) -> Pod:
    return Pod(
        name=name,
        node=node,
        netns=spec.namespace(name),
        k8s_namespace=k8s_namespace,
        container_id=uuid.uuid4().hex,
    )


def network_config(
    spec: LabSpec, net: NetworkSpec, *, node: str, nodes_file: Path, ipam_dir: Path
) -> dict[str, Any]:
    """The bridge plugin's configuration for one network on one node, as a runtime
    passes it (``name`` and ``cniVersion`` from the conflist)."""
    if net is spec.main:
        routes: list[dict[str, str]] = [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    else:
        routes = [{"dst": r} for r in net.pod_ranges]
    ipam: dict[str, Any]
    if spec.ipam == "kube-node":
        ipam = {
            "type": "kube-node",
            "nodesFile": str(nodes_file),
            "nodeName": node,
            "dataDir": str(ipam_dir),
            "routes": routes,
        }
        if net.cidr_annotation:
            ipam["annotation"] = net.cidr_annotation
        if spec.ipv4_namespaces is not None:
            ipam["ipv4-namespaces"] = list(spec.ipv4_namespaces)
    elif spec.ipam == "host-local":
        index = node_index(node)
        ipam = {
            "type": "host-local",
            "dataDir": str(ipam_dir),
            "ranges": [[{"subnet": str(net.node_cidr(index, f))}] for f in (4, 6)],
            "routes": routes,
        }
    else:
        raise LabError(f"unknown lab IPAM {spec.ipam!r} (kube-node or host-local)")
    config: dict[str, Any] = {
        "cniVersion": spec.cni_version,
        "name": f"lab-{net.name}",
        "type": "bridge",
        "bridge": net.bridge,
        "isGateway": True,
        "ipam": ipam,
    }
    if net.mtu:
        config["mtu"] = net.mtu
    return config


def plugin_env(
    spec: LabSpec, pod: Pod, *, command: str, ifname: str, bin_dir: Path
) -> dict[str, str]:
    """The environment a runtime gives a plugin (containerd's ``CNI_ARGS``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
    env.update(
        CNI_COMMAND=command,
        CNI_CONTAINERID=pod.container_id,
        CNI_NETNS=f"/var/run/netns/{pod.netns}",
        CNI_IFNAME=ifname,
        CNI_PATH=f"{spec.cni_bin_dir}{os.pathsep}{bin_dir}",
        CNI_ARGS=(
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.k8s_namespace};K8S_POD_NAME={pod.name};"
            f"K8S_POD_INFRA_CONTAINER_ID={pod.container_id};K8S_POD_UID={uuid.uuid4()}"
        ),
    )
    return env


def invoke(
    spec: LabSpec,
    pod: Pod,
    config: Mapping[str, Any],
    *,
    command: str,
    ifname: str,
    node_ns: str,
    bin_dir: Path,
) -> dict[str, Any]:
    """Run the network's main plugin for one verb on the pod's node; return its result
    (empty for DEL). A failure raises ``LabError`` with the plugin's error object."""
    plugin = spec.cni_bin_dir / str(config["type"])
    env = plugin_env(spec, pod, command=command, ifname=ifname, bin_dir=bin_dir)
    proc = run(node_ns, [str(plugin)], stdin=json.dumps(config), env=env, check=False)
    if proc.returncode != 0:
        raise LabError(
            f"{command} of pod {pod.name} {ifname} on {pod.node} failed "
            f"({proc.returncode}): {proc.stdout.strip() or proc.stderr.strip()}"
        )
    if command != "ADD":
        return {}
    result = json.loads(proc.stdout)
    return result if isinstance(result, dict) else {}


def result_addresses(result: Mapping[str, Any]) -> tuple[IPAddress, ...]:
    """The addresses of an ADD result, IPv4 first."""
    addresses = [parse_address(str(ip["address"]).split("/")[0]) for ip in result.get("ips", [])]
    return tuple(sorted(addresses, key=lambda a: a.version))
