"""Every manifest in deploy/ is valid against the Kubernetes schemas (offline, strict:
unknown fields are errors) and grants exactly what the docs promise: read-only access to
nodes, NET_ADMIN only, a read-only root filesystem, the runtime's default seccomp profile,
Linux nodes only, probes on the daemon's endpoints (on the node's address where
HTTP_ADDRESS is "[$(HOST_IP)]:port", with a named `metrics` port), one CLUSTER_CIDRS for
the installer and the daemon, the IPAM socket and the host's /var/lib/cni for the main
instance only. The kustomize variants and deploy/monitoring: tests/deploy/."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from xcluster_cni_daemon import cli

from xcluster_cni_lib.core.ranges import parse_cidr_list
from xcluster_cni_lib.daemon.config import (
    DEFAULT_PROTOCOL,
    SETTINGS,
    load_config,
    parse_http_address,
)
from xcluster_cni_lib.install import plan
from xcluster_cni_lib.install.service import INSTALL_ENV

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.30"
# deploy/kustomize (kustomizations, their patches, copies of these files) and
# deploy/monitoring (a CRD object) have their own tests in tests/deploy/.
OWN_TESTS = (DEPLOY / "kustomize", DEPLOY / "monitoring")
MANIFESTS = sorted(
    p
    for p in DEPLOY.rglob("*.yaml")
    if not p.name.endswith("-patch.yaml") and not any(p.is_relative_to(d) for d in OWN_TESTS)
)
PATCHES = sorted((DEPLOY / "examples").rglob("*-patch.yaml"))
DAEMONSETS = ["xcluster-cni.yaml", "xcluster-cni-secondary-net.yaml"]
WORKLOADS = [*DAEMONSETS, "xcluster-cni-static.yaml"]
MAIN = ["xcluster-cni.yaml", "xcluster-cni-static.yaml"]  # the instances that serve IPAM
SOCKET = "/run/xcluster-cni/ipam.sock"
# The in-cluster client's contract (read by the Kubernetes client, not a daemon setting):
# the static pod names the API server for both containers.
IN_CLUSTER_ENV = {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(name: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs(DEPLOY / name) if d["kind"] == kind]
    return doc


def _pod_spec(name: str) -> dict[str, Any]:
    path = DEPLOY / name
    for doc in _docs(path):
        if doc["kind"] == "DaemonSet":
            spec: dict[str, Any] = doc["spec"]["template"]["spec"]
            return spec
        if doc["kind"] == "Pod":
            spec = doc["spec"]
            return spec
    raise AssertionError(f"{name}: no workload")


def _container(spec: dict[str, Any], name: str, *, init: bool) -> dict[str, Any]:
    containers = spec["initContainers" if init else "containers"]
    (found,) = [c for c in containers if c["name"] == name]
    return found  # type: ignore[no-any-return]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _validate(doc: dict[str, Any], where: str) -> None:
    if doc["kind"] == "NetworkAttachmentDefinition":  # a CRD: no upstream schema
        return
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{where}: {doc['kind']} {doc['metadata'].get('name')}: {e.message}")


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    docs = _docs(path)
    assert docs
    for doc in docs:
        _validate(doc, str(path))


def test_the_validator_rejects_a_typo() -> None:
    ds = _one("xcluster-cni.yaml", "DaemonSet")
    broken = copy.deepcopy(ds)
    broken["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", ["xcluster-cni.yaml", "xcluster-cni-static-rbac.yaml"])
def test_rbac_is_exactly_read_only_nodes(name: str) -> None:
    role = _one(name, "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}
    ]
    binding = _one(name, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    account = _one(name, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]


@pytest.mark.parametrize("name", WORKLOADS)
def test_pod_runs_on_every_node_in_the_host_network(name: str) -> None:
    spec = _pod_spec(name)
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]  # every taint, every effect
    if name in DAEMONSETS:
        assert spec["serviceAccountName"] == "xcluster-cni"
        ds = _one(name, "DaemonSet")
        assert ds["metadata"]["namespace"] == "kube-system"


@pytest.mark.parametrize("name", WORKLOADS)
def test_install_init_container_mounts_the_host_cni_dirs(name: str) -> None:
    spec = _pod_spec(name)
    install = _container(spec, "install", init=True)
    args = cli.build_parser().parse_args(install["args"])
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {m["mountPath"]: host_paths.get(m["name"]) for m in install["volumeMounts"]}
    assert mounts[str(args.cni_bin_dir)] == "/opt/cni/bin"
    assert mounts[str(args.cni_conf_dir)] == "/etc/cni/net.d"
    env = _env(install)
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert set(env) <= INSTALL_ENV, set(env) - INSTALL_ENV
    sc = install["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert not sc.get("privileged", False)


@pytest.mark.parametrize("name", WORKLOADS)
def test_daemon_container_has_net_admin_only_and_probes(name: str) -> None:
    spec = _pod_spec(name)
    daemon = _container(spec, "xcluster-cni", init=False)
    assert daemon["args"] == ["daemon"]
    sc = daemon["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert sc.get("privileged", False) is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True

    env = _env(daemon)
    # only settings it reads (HOST_IP: only for HTTP_ADDRESS's $(HOST_IP))
    assert set(env) <= set(SETTINGS) | IN_CLUSTER_ENV | {"HOST_IP"}, set(env) - set(SETTINGS)
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    raw = env["HTTP_ADDRESS"]
    if "$(HOST_IP)" in raw:
        # the kubelet expands it from the downward API, declared before it
        names = [e["name"] for e in daemon["env"]]
        assert names.index("HOST_IP") < names.index("HTTP_ADDRESS")
        assert env["HOST_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
        for node_ip in ("192.0.2.7", "2001:db8::7"):
            assert parse_http_address(raw.replace("$(HOST_IP)", node_ip)) is not None
        raw = raw.replace("$(HOST_IP)", "192.0.2.7")
    address = parse_http_address(raw)
    assert address is not None
    host, port = address
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = daemon[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, port)
        if "HOST_IP" in env:
            # no host: the kubelet probes the pod's IP, the node's own with hostNetwork
            assert "host" not in get and spec["hostNetwork"] is True
        else:
            assert get.get("host", host) == host
    if "HOST_IP" in env:  # reachable from Prometheus: a named port for a PodMonitor
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in daemon["ports"]

    resources = daemon["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]


@pytest.mark.parametrize("name", WORKLOADS)
def test_pod_runs_on_linux_nodes_only(name: str) -> None:
    """It tolerates every taint, so only the selector keeps it off Windows nodes."""
    assert _pod_spec(name)["nodeSelector"] == {"kubernetes.io/os": "linux"}


@pytest.mark.parametrize("name", WORKLOADS)
def test_every_container_runs_under_the_runtime_default_seccomp_profile(name: str) -> None:
    spec = _pod_spec(name)
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in spec["containers"] + spec["initContainers"]:
        own = container.get("securityContext", {}).get("seccompProfile")
        assert own in (None, {"type": "RuntimeDefault"}), (container["name"], own)


@pytest.mark.parametrize("name", WORKLOADS)
def test_cluster_cidrs_is_valid_and_the_same_for_the_installer_and_the_daemon(
    name: str,
) -> None:
    spec = _pod_spec(name)
    daemon = _env(_container(spec, "xcluster-cni", init=False))
    assert "CLUSTER_CIDRS" in daemon  # a visible place to set it
    daemon_value = load_config(
        {"CLUSTER_CIDRS": daemon["CLUSTER_CIDRS"]}, rt_protos={}
    ).cluster_cidrs
    install = _env(_container(spec, "install", init=True))
    if plan.parse_yes_no("INSTALL_K8S_NET", install.get("INSTALL_K8S_NET"), default=True):
        # the conflist's clusterCIDRs and the daemon's allow-list are one setting
        value = plan.parse_cluster_cidrs("CLUSTER_CIDRS", install["CLUSTER_CIDRS"])
        assert value == daemon_value


def test_secondary_instance_is_separate_from_the_main_one() -> None:
    main = _pod_spec("xcluster-cni.yaml")
    second = _pod_spec("xcluster-cni-secondary-net.yaml")
    main_env = _env(_container(main, "xcluster-cni", init=False))
    env = _env(_container(second, "xcluster-cni", init=False))
    assert env["CIDR_ANNOTATION"] and env["ADDRESS_ANNOTATION"]
    assert int(env["PROTOCOL"]) != int(main_env.get("PROTOCOL", DEFAULT_PROTOCOL))
    assert env["HTTP_ADDRESS"] != main_env["HTTP_ADDRESS"]
    install_env = _env(_container(second, "install", init=True))
    assert plan.parse_yes_no("INSTALL_K8S_NET", install_env["INSTALL_K8S_NET"], default=True) is (
        False
    )
    ds = _one("xcluster-cni-secondary-net.yaml", "DaemonSet")
    assert ds["metadata"]["name"] != _one("xcluster-cni.yaml", "DaemonSet")["metadata"]["name"]
    # its nodes' CIDRs come from an annotation they can write: the example's NAD hands out
    # addresses from the same ranges the instance routes
    (nad,) = _docs(DEPLOY / "examples" / "nad-kube-node.yaml")
    (bridge,) = json.loads(nad["spec"]["config"])["plugins"]
    assert bridge["ipam"]["annotation"] == env["CIDR_ANNOTATION"]
    routed = load_config({"CLUSTER_CIDRS": env["CLUSTER_CIDRS"]}, rt_protos={}).cluster_cidrs
    assert routed and [str(c) for c in routed] == bridge["ipam"]["clusterCIDRs"]


def _host_mounts(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """mountPath -> (host path, hostPath type) of a container's hostPath mounts."""
    volumes = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
    return {
        m["mountPath"]: (volumes[m["name"]]["path"], volumes[m["name"]].get("type", ""))
        for m in container.get("volumeMounts", [])
        if m["name"] in volumes
    }


@pytest.mark.parametrize("name", MAIN)
def test_the_main_instance_serves_ipam_on_the_hosts_socket(name: str) -> None:
    """The shim on the host connects to /run/xcluster-cni/ipam.sock; the agent's
    host-local keeps its allocations in the host's /var/lib/cni (they outlive the pod)."""
    spec = _pod_spec(name)
    daemon = _container(spec, "xcluster-cni", init=False)
    env = _env(daemon)
    assert env["IPAM_SOCKET"] == SOCKET
    assert "IPAM_NODE_FILE" not in env or str(env["IPAM_NODE_FILE"]).startswith("/var/lib/cni/")
    mounts = _host_mounts(spec, daemon)
    assert mounts["/run/xcluster-cni"] == ("/run/xcluster-cni", "DirectoryOrCreate")
    assert mounts["/var/lib/cni"] == ("/var/lib/cni", "DirectoryOrCreate")
    ro = {m["mountPath"] for m in daemon["volumeMounts"] if m.get("readOnly")}
    assert not ro & {"/run/xcluster-cni", "/var/lib/cni"}


def test_a_secondary_instance_serves_no_ipam() -> None:
    spec = _pod_spec("xcluster-cni-secondary-net.yaml")
    daemon = _container(spec, "xcluster-cni", init=False)
    assert "IPAM_SOCKET" not in _env(daemon)
    assert "/run/xcluster-cni" not in _host_mounts(spec, daemon)


def test_static_pod_names_the_api_server_and_mounts_the_token_for_both_containers() -> None:
    spec = _pod_spec("xcluster-cni-static.yaml")
    install = _container(spec, "install", init=True)
    daemon = _container(spec, "xcluster-cni", init=False)
    assert install["args"] == ["install"]
    for container in (install, daemon):
        env = _env(container)
        assert env["KUBERNETES_SERVICE_HOST"] and 0 < int(env["KUBERNETES_SERVICE_PORT"]) < 65536
        assert "KUBECONFIG" not in env
        mounts = _host_mounts(spec, container)
        sa = mounts["/var/run/secrets/kubernetes.io/serviceaccount"]
        assert sa == ("/etc/xcluster-cni/serviceaccount", "Directory")
    assert _env(install)["KUBERNETES_SERVICE_HOST"] == _env(daemon)["KUBERNETES_SERVICE_HOST"]


def test_all_workloads_use_one_image() -> None:
    images = set()
    for name in WORKLOADS:
        spec = _pod_spec(name)
        images |= {c["image"] for c in spec["containers"] + spec["initContainers"]}
    assert len(images) == 1


@pytest.mark.parametrize("name", ["nad-kube-node.yaml", "nad-node-annotation.yaml"])
def test_nad_examples_use_the_served_ipam(name: str) -> None:
    (nad,) = _docs(DEPLOY / "examples" / name)
    assert nad["apiVersion"] == "k8s.cni.cncf.io/v1"
    config = json.loads(nad["spec"]["config"])
    assert config["cniVersion"] == "1.0.0"
    (bridge,) = config["plugins"]
    ipam = bridge["ipam"]
    assert ipam["type"] in plan.OUR_IPAM_TYPES
    assert ipam["annotation"]
    # the agent serving the shim knows its node and has its own credentials
    assert not {"kubeconfig", "nodeName", "nodesFile"} & set(ipam)
    # the nodes write the annotation themselves: the example limits what it hands out
    assert parse_cidr_list(",".join(ipam["clusterCIDRs"]), key="clusterCIDRs")
    assert bridge["bridge"] != plan.BRIDGE  # not the main network's bridge


def _merge_by_name(base: list[dict[str, Any]], patch: list[dict[str, Any]]) -> None:
    for item in patch:
        target = next((b for b in base if b["name"] == item["name"]), None)
        if target is None:
            base.append(item)
            continue
        for key, value in item.items():
            if key == "env":
                _merge_by_name(target.setdefault("env", []), value)
            else:
                target[key] = value


@pytest.mark.parametrize("path", PATCHES, ids=lambda p: p.name)
def test_overlay_patch_gives_both_containers_the_address_annotation(path: Path) -> None:
    ds = copy.deepcopy(_one("xcluster-cni.yaml", "DaemonSet"))
    patch = yaml.safe_load(path.read_text())["spec"]["template"]["spec"]
    spec = ds["spec"]["template"]["spec"]
    _merge_by_name(spec["initContainers"], patch["initContainers"])
    _merge_by_name(spec["containers"], patch["containers"])
    _validate(ds, str(path))
    install = _env(_container(spec, "install", init=True))
    daemon = _env(_container(spec, "xcluster-cni", init=False))
    assert install["ADDRESS_ANNOTATION"] == daemon["ADDRESS_ANNOTATION"]
    assert len(spec["containers"]) == 1 and len(spec["initContainers"]) == 1
