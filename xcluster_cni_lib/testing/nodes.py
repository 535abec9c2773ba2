"""Realistic Node objects (plain dicts, as the API server returns them) for tests,
benchmarks and users' own harnesses.

``make_node("n7", index=7)`` is about 13 KB of JSON, most of it 50 ``status.images``
entries, like a kubelet-reported Node; addresses and pod CIDRs derive from ``index``:

- pod CIDRs ``10.244.<i>.0/24`` (continuing through 10.0.0.0/8 past index 11 x 256 - 1,
  unique for 65,536 indexes) and ``fd00:10:244:<i hex>::/64``;
- InternalIPs ``192.168.0.0 + i + 1`` and ``fd00::`` plus the same 32 bits
  (``fd00::c0a8:1`` for index 0).

Pure: no I/O, no ``kubernetes`` import.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["default_internal_ips", "default_pod_cidrs", "make_node"]

_V4_POD_BASE = int(ipaddress.IPv4Address("10.244.0.0"))
_V4_NODE_BASE = int(ipaddress.IPv4Address("192.168.0.0"))
_V6_NODE_BASE = int(ipaddress.IPv6Address("fd00::"))
_TEN = int(ipaddress.IPv4Address("10.0.0.0"))
_TIMESTAMP = "2026-01-01T00:00:00Z"


def default_pod_cidrs(index: int) -> tuple[str, str]:
    """The IPv4 and IPv6 pod CIDRs ``make_node`` gives the node at ``index``."""
    v4 = _TEN + (_V4_POD_BASE - _TEN + index * 256) % (1 << 24)
    return f"{ipaddress.IPv4Address(v4)}/24", f"fd00:10:244:{index % 65536:x}::/64"


def default_internal_ips(index: int) -> tuple[str, str]:
    """The IPv4 and IPv6 InternalIPs ``make_node`` gives the node at ``index``."""
    v4 = _V4_NODE_BASE + (index + 1) % 65536
    return str(ipaddress.IPv4Address(v4)), str(ipaddress.IPv6Address(_V6_NODE_BASE + v4))


def _images(count: int) -> list[dict[str, Any]]:
    images = []
    for i in range(count):
        repo = f"registry.example.com/app-{i:02d}"
        digest = hashlib.sha256(f"image-{i}".encode()).hexdigest()
        images.append(
            {
                "names": [f"{repo}@sha256:{digest}", f"{repo}:v1.{i}.{i % 7}"],
                "sizeBytes": 10_000_000 + i * 1_234_567,
            }
        )
    return images


def _managed_fields() -> list[dict[str, Any]]:
    def entry(manager: str, fields: dict[str, Any], sub: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "apiVersion": "v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": fields,
            "manager": manager,
            "operation": "Update",
            "time": _TIMESTAMP,
        }
        if sub:
            out["subresource"] = sub
        return out

    labels: dict[str, Any] = {
        f"f:{k}": {}
        for k in (
            "beta.kubernetes.io/arch",
            "beta.kubernetes.io/os",
            "kubernetes.io/arch",
            "kubernetes.io/hostname",
            "kubernetes.io/os",
        )
    }
    conditions: dict[str, Any] = {
        f'k:{{"type":"{t}"}}': {
            ".": {},
            "f:lastHeartbeatTime": {},
            "f:lastTransitionTime": {},
            "f:message": {},
            "f:reason": {},
            "f:status": {},
            "f:type": {},
        }
        for t in ("DiskPressure", "MemoryPressure", "PIDPressure", "Ready")
    }
    return [
        entry(
            "kubelet",
            {
                "f:metadata": {
                    "f:annotations": {
                        ".": {},
                        "f:volumes.kubernetes.io/controller-managed-attach-detach": {},
                    },
                    "f:labels": {".": {}, **labels},
                }
            },
        ),
        entry(
            "kubeadm",
            {
                "f:metadata": {
                    "f:annotations": {
                        "f:kubeadm.alpha.kubernetes.io/cri-socket": {},
                    },
                    "f:labels": {"f:node-role.kubernetes.io/control-plane": {}},
                }
            },
        ),
        entry(
            "kube-controller-manager",
            {
                "f:metadata": {"f:annotations": {"f:node.alpha.kubernetes.io/ttl": {}}},
                "f:spec": {"f:podCIDR": {}, "f:podCIDRs": {".": {}}},
            },
        ),
        entry(
            "kubelet",
            {
                "f:status": {
                    "f:conditions": conditions,
                    "f:addresses": {},
                    "f:allocatable": {"f:ephemeral-storage": {}},
                    "f:capacity": {"f:ephemeral-storage": {}},
                    "f:images": {},
                    "f:nodeInfo": {"f:bootID": {}, "f:kubeletVersion": {}},
                }
            },
            "status",
        ),
    ]


def _conditions() -> list[dict[str, str]]:
    rows = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "has sufficient memory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "has sufficient PID available"),
        ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ]
    return [
        {
            "type": kind,
            "status": status,
            "lastHeartbeatTime": _TIMESTAMP,
            "lastTransitionTime": _TIMESTAMP,
            "reason": reason,
            "message": f"kubelet {message}",
        }
        for kind, status, reason, message in rows
    ]


def make_node(
    name: str,
    *,
    index: int = 0,
    pod_cidrs: Sequence[str] | None = None,
    internal_ips: Sequence[str] | None = None,
    annotations: Mapping[str, str] | None = None,
    machine_id: str | None = None,
    images: int = 50,
) -> dict[str, Any]:
    """A Node dict as a kubelet-managed node looks in a real cluster (~13 KB of JSON with
    the default 50 images). ``pod_cidrs``/``internal_ips`` default from ``index`` (pass
    ``()`` for none); ``annotations`` are added to the usual ones; ``machine_id``
    defaults to a stable hash of ``name``."""
    cidrs = list(default_pod_cidrs(index) if pod_cidrs is None else pod_cidrs)
    ips = list(default_internal_ips(index) if internal_ips is None else internal_ips)
    mid = machine_id if machine_id is not None else hashlib.md5(name.encode()).hexdigest()
    spec: dict[str, Any] = {"providerID": f"kind://docker/cluster/{name}"}
    if cidrs:
        spec["podCIDR"] = cidrs[0]
        spec["podCIDRs"] = cidrs
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": hashlib.md5(f"uid/{name}".encode()).hexdigest(),
            "creationTimestamp": _TIMESTAMP,
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
            },
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                **(annotations or {}),
            },
            "managedFields": _managed_fields(),
        },
        "spec": spec,
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip} for ip in ips]
            + [{"type": "Hostname", "address": name}],
            "allocatable": {
                "cpu": "8",
                "ephemeral-storage": "101430960Ki",
                "hugepages-1Gi": "0",
                "hugepages-2Mi": "0",
                "memory": "32718864Ki",
                "pods": "110",
            },
            "capacity": {
                "cpu": "8",
                "ephemeral-storage": "101430960Ki",
                "hugepages-1Gi": "0",
                "hugepages-2Mi": "0",
                "memory": "32821264Ki",
                "pods": "110",
            },
            "conditions": _conditions(),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": _images(images),
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": hashlib.md5(f"boot/{name}".encode()).hexdigest(),
                "containerRuntimeVersion": "containerd://1.7.18",
                "kernelVersion": "6.1.0-21-amd64",
                "kubeProxyVersion": "v1.31.0",
                "kubeletVersion": "v1.31.0",
                "machineID": mid,
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "systemUUID": hashlib.md5(f"system/{name}".encode()).hexdigest(),
            },
        },
    }
