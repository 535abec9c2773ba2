"""The resources the double serves, described once: everything kind-specific lives here
(names, scope, the fields a field selector may use, the defaults a real server fills in).
The store, the handler and the test-side API are generic over these."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Fields = dict[str, str]


def _get(obj: Mapping[str, Any], *path: str) -> Any:
    value: Any = obj
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _text(value: Any) -> str:
    """A field's value as a field selector compares it (``true``/``false`` for bools)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _node_fields(obj: Mapping[str, Any]) -> Fields:
    return {"spec.unschedulable": _text(bool(_get(obj, "spec", "unschedulable")))}


def _pod_fields(obj: Mapping[str, Any]) -> Fields:
    return {
        "spec.nodeName": _text(_get(obj, "spec", "nodeName")),
        "spec.hostNetwork": _text(bool(_get(obj, "spec", "hostNetwork"))),
        "spec.restartPolicy": _text(_get(obj, "spec", "restartPolicy")),
        "spec.schedulerName": _text(_get(obj, "spec", "schedulerName")),
        "spec.serviceAccountName": _text(_get(obj, "spec", "serviceAccountName")),
        "status.phase": _text(_get(obj, "status", "phase")),
        "status.podIP": _text(_get(obj, "status", "podIP")),
        "status.nominatedNodeName": _text(_get(obj, "status", "nominatedNodeName")),
    }


def _namespace_fields(obj: Mapping[str, Any]) -> Fields:
    return {"status.phase": _text(_get(obj, "status", "phase"))}


def _no_fields(obj: Mapping[str, Any]) -> Fields:
    return {}


def _default_pod(obj: dict[str, Any]) -> None:
    status = dict(obj.get("status") or {})
    status.setdefault("phase", "Pending")
    obj["status"] = status


def _default_namespace(obj: dict[str, Any]) -> None:
    # What a real server does: the immutable name label (NetworkPolicy namespaceSelectors
    # rely on it), the kubernetes finalizer, phase Active.
    metadata = obj["metadata"]
    metadata["labels"] = {
        **(metadata.get("labels") or {}),
        "kubernetes.io/metadata.name": metadata["name"],
    }
    spec = dict(obj.get("spec") or {})
    spec.setdefault("finalizers", ["kubernetes"])
    obj["spec"] = spec
    status = dict(obj.get("status") or {})
    status.setdefault("phase", "Active")
    obj["status"] = status


def _no_default(obj: dict[str, Any]) -> None:
    pass


@dataclass(frozen=True)
class Kind:
    resource: str  # the plural in URLs: "pods"
    kind: str  # "Pod"
    singular: str
    group: str  # "" for the core group
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    version: str = "v1"
    fields: Callable[[Mapping[str, Any]], Fields] = field(default=_no_fields)
    default: Callable[[dict[str, Any]], None] = field(default=_no_default)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def selectable(self, obj: Mapping[str, Any]) -> Fields:
        """Every field a field selector may name, with this object's values."""
        metadata = obj.get("metadata") or {}
        return {
            "metadata.name": _text(metadata.get("name")),
            "metadata.namespace": _text(metadata.get("namespace")),
            **self.fields(obj),
        }


KINDS: dict[str, Kind] = {
    k.resource: k
    for k in (
        Kind(
            "nodes",
            "Node",
            "node",
            "",
            False,
            short_names=("no",),
            subresources=("status",),
            fields=_node_fields,
        ),
        Kind(
            "namespaces",
            "Namespace",
            "namespace",
            "",
            False,
            short_names=("ns",),
            subresources=("status",),
            fields=_namespace_fields,
            default=_default_namespace,
        ),
        Kind(
            "pods",
            "Pod",
            "pod",
            "",
            True,
            short_names=("po",),
            subresources=("status",),
            fields=_pod_fields,
            default=_default_pod,
        ),
        Kind(
            "networkpolicies",
            "NetworkPolicy",
            "networkpolicy",
            "networking.k8s.io",
            True,
            short_names=("netpol",),
        ),
    )
}

GROUP_VERSIONS: dict[str, list[Kind]] = {}
for _kind in KINDS.values():
    GROUP_VERSIONS.setdefault(_kind.api_version, []).append(_kind)


def kind_at(api_version: str, resource: str) -> Kind | None:
    kind = KINDS.get(resource)
    return kind if kind is not None and kind.api_version == api_version else None


def object_key(kind: Kind, name: str, namespace: str | None) -> str:
    """The store's key: ``namespace/name`` for namespaced kinds (so keys sort as etcd's do:
    by namespace, then name), ``name`` otherwise."""
    return f"{namespace}/{name}" if kind.namespaced else name
