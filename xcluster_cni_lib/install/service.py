"""The installer: plugins, kubeconfig, node-name file and conflist, in that order.

The conflist comes last because a runtime (and the kubelet's node readiness) takes a
config in the directory as "the network is ready": everything it refers to must be there
first. Decisions come from ``plan``; file operations from ``files``. The API server and
the kernel are reached only through ``detect_mtu``, which callers can replace.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.core.mtu import choose_mtu
from xcluster_cni_lib.core.values import Annotations, InterfaceAddress
from xcluster_cni_lib.install import files, plan
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.support.kubeconfig import SERVICE_ACCOUNT_DIR

BUNDLE_HOME = "xcluster-cni"  # directory in the CNI bin dir holding the bundle versions
CURRENT = "current"  # symlink in BUNDLE_HOME to the version in use
LAUNCHER = "xcluster-cni-plugin"
BUNDLE_INFO = "BUNDLE.json"

# Every environment variable ``xcluster-cni install`` reads (docs/install.md).
INSTALL_ENV = frozenset(
    {
        "NODE_NAME",
        "INSTALL_K8S_NET",
        "ADDRESS_ANNOTATION",
        "MTU",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "HOST_CNI_CONF_DIR",
        "LOG_LEVEL",
        "KUBECONFIG",
        "CLUSTER_CIDRS",
    }
)
DEFAULT_HOST_CONF_DIR = "/etc/cni/net.d"

log = jsonlog.get_logger("xcluster_cni_lib.install")


@attrs.frozen
class Action:
    """One thing the installer did or left alone: ``what`` is ``installed``,
    ``replaced``, ``unchanged``, ``written``, ``skipped`` or ``removed``."""

    path: str
    what: str
    detail: str = ""


@attrs.frozen
class InstallPaths:
    """The directories the installer works on (container paths)."""

    bin_dir: Path = Path("/cni/bin")
    conf_dir: Path = Path("/cni/net.d")
    service_account_dir: Path = Path(SERVICE_ACCOUNT_DIR)
    plugin_dir: Path = Path("/opt/xcluster-cni/plugins")


@attrs.frozen
class BundleInfo:
    """The BUNDLE.json of a plugin bundle."""

    version: str
    digest: str
    plugins: tuple[str, ...]

    @property
    def dir_name(self) -> str:
        return f"{self.version}-{self.digest[:12]}"


def read_bundle_info(bundle: Path) -> BundleInfo:
    """Parse ``bundle/BUNDLE.json``; an ``InputError`` names the file when it is bad."""
    path = bundle / BUNDLE_INFO
    try:
        raw: Any = files.read_json(path)
        info = BundleInfo(
            version=str(raw["version"]),
            digest=str(raw["digest"]),
            plugins=tuple(str(p) for p in raw["plugins"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a valid bundle description: {exc}") from exc
    if not info.digest.isalnum() or "/" in info.version or not info.plugins:
        raise InputError(f"{path}: bad version {info.version!r} or digest {info.digest!r}")
    return info


def install_bundle(bundle: Path, bin_dir: Path) -> list[Action]:
    """Install a plugin bundle into ``bin_dir`` without a moment where a plugin name
    points at a half-copied file.

    The bundle is copied to ``bin_dir/xcluster-cni/<version>-<digest>/`` through a
    temporary directory renamed into place; then the ``current`` symlink is swapped to it
    by a rename; each plugin name in ``bin_dir`` is a symlink to
    ``xcluster-cni/current/xcluster-cni-plugin``. A plugin started before the swap keeps
    running from its own version directory (the launcher resolves its real path), so the
    previous version is kept and only older ones are removed.
    """
    info = read_bundle_info(bundle)
    home = bin_dir / BUNDLE_HOME
    home.mkdir(mode=0o755, exist_ok=True)
    actions = [Action(str(home / n), "removed") for n in files.remove_stale_temporaries(home)]
    current = home / CURRENT
    previous = os.readlink(current) if current.is_symlink() else None
    version_dir = home / info.dir_name
    copied = files.copy_tree_atomic(bundle, version_dir)
    actions.append(Action(str(version_dir), "installed" if copied else "unchanged"))
    switched = files.symlink_atomic(info.dir_name, current)
    if switched:
        if previous:
            actions.append(Action(str(current), "replaced", f"{previous} -> {info.dir_name}"))
        else:
            actions.append(Action(str(current), "installed", info.dir_name))
    for name in info.plugins:
        link = bin_dir / name
        existed = link.exists() or link.is_symlink()
        if files.symlink_atomic(f"{BUNDLE_HOME}/{CURRENT}/{LAUNCHER}", link):
            actions.append(Action(str(link), "replaced" if existed else "installed"))
        else:
            actions.append(Action(str(link), "unchanged"))
    keep = {CURRENT, info.dir_name, previous}
    for entry in sorted(home.iterdir()):
        if entry.name not in keep and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            actions.append(Action(str(entry), "removed", "older version"))
    return actions


def install_plugins(plugin_dir: Path, bin_dir: Path) -> list[Action]:
    """Install every plugin of ``plugin_dir``: executable files are copied (version =
    content: an identical file is left alone), bundle directories go through
    ``install_bundle``."""
    if not plugin_dir.is_dir():
        raise InputError(f"plugin directory {plugin_dir} does not exist")
    if not bin_dir.is_dir():
        raise InputError(f"CNI bin directory {bin_dir} does not exist (is the hostPath mounted?)")
    actions = [Action(str(bin_dir / n), "removed") for n in files.remove_stale_temporaries(bin_dir)]
    for entry in sorted(plugin_dir.iterdir()):
        if entry.is_dir() and (entry / BUNDLE_INFO).is_file():
            actions.extend(install_bundle(entry, bin_dir))
        elif entry.is_file() and os.access(entry, os.X_OK):
            dst = bin_dir / entry.name
            actions.append(Action(str(dst), files.install_file(entry, dst)))
    return actions


def write_kubeconfig(
    conf_dir: Path, service_account_dir: Path, env: Mapping[str, str]
) -> list[Action]:
    """Write the plugins' kubeconfig (mode 0600) from the service account."""
    try:
        token = (service_account_dir / "token").read_text()
        ca_cert = (service_account_dir / "ca.crt").read_bytes()
    except OSError as exc:
        raise InputError(
            f"cannot read the service account in {service_account_dir}: {exc}"
        ) from exc
    server = plan.api_server_url(
        env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    )
    config = plan.kubeconfig(server=server, token=token, ca_cert=ca_cert)
    path = conf_dir / plan.KUBECONFIG_NAME
    written = files.write_atomic(path, plan.render_json(config), mode=0o600)
    return [Action(str(path), "written" if written else "unchanged", server)]


def write_node_name(conf_dir: Path, node_name: str) -> Action:
    """Write the node-name file beside the kubeconfig (for configs that cannot carry
    ``nodeName``, like cluster-wide Multus NADs)."""
    if not node_name:
        raise InputError("NODE_NAME is not set (give it from the downward API)")
    path = conf_dir / plan.NODE_NAME_FILE
    written = files.write_atomic(path, (node_name + "\n").encode(), mode=0o644)
    return Action(str(path), "written" if written else "unchanged")


def _config_files(conf_dir: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for entry in conf_dir.iterdir():
        if entry.name.endswith(plan.CONFIG_SUFFIXES) and entry.is_file():
            try:
                found[entry.name] = entry.read_bytes()
            except OSError:
                continue
    return found


def write_conflist(
    conf_dir: Path, settings: plan.InstallSettings, *, detect_mtu: Callable[[], int]
) -> Action:
    """Write ``10-xcluster-cni.conflist`` unless an xcluster config is already there.
    ``detect_mtu`` is called only when a config is written and no MTU is set."""
    existing = plan.find_xcluster_config(_config_files(conf_dir))
    if existing is not None:
        return Action(str(conf_dir / existing), "skipped", "an xcluster config is present")
    mtu = settings.mtu if settings.mtu is not None else detect_mtu()
    config = plan.conflist(
        node_name=settings.node_name,
        mtu=mtu,
        host_conf_dir=settings.host_conf_dir,
        cluster_cidrs=settings.cluster_cidrs,
    )
    path = conf_dir / plan.CONFLIST_NAME
    files.write_atomic(path, plan.render_json(config), mode=0o644)
    return Action(str(path), "written", f"mtu {mtu}")


def run_install(
    settings: plan.InstallSettings,
    paths: InstallPaths,
    *,
    env: Mapping[str, str],
    detect_mtu: Callable[[], int],
) -> list[Action]:
    """Everything ``xcluster-cni install`` does; returns what it did, in order."""
    if not settings.node_name:
        raise InputError("NODE_NAME is not set (give it from the downward API)")
    if not paths.conf_dir.is_dir():
        raise InputError(
            f"CNI config directory {paths.conf_dir} does not exist (is the hostPath mounted?)"
        )
    actions = install_plugins(paths.plugin_dir, paths.bin_dir)
    actions.extend(
        Action(str(paths.conf_dir / n), "removed")
        for n in files.remove_stale_temporaries(paths.conf_dir)
    )
    actions.extend(write_kubeconfig(paths.conf_dir, paths.service_account_dir, env))
    actions.append(write_node_name(paths.conf_dir, settings.node_name))
    if settings.install_k8s_net:
        actions.append(write_conflist(paths.conf_dir, settings, detect_mtu=detect_mtu))
    else:
        actions.append(
            Action(str(paths.conf_dir / plan.CONFLIST_NAME), "skipped", "INSTALL_K8S_NET=no")
        )
    return actions


def address_annotation_setting(value: str | None, env: Mapping[str, str]) -> str | None:
    """The address annotation: ``value`` (a flag) when given, else ``ADDRESS_ANNOTATION``;
    empty means none. A key the daemon would refuse raises ``InputError`` (same rule)."""
    value = value if value is not None else env.get("ADDRESS_ANNOTATION")
    return Annotations(address=value or None).address


def settings_from_env(
    env: Mapping[str, str], *, host_conf_dir: str | None = None, mtu: str | None = None
) -> plan.InstallSettings:
    """The installer's settings from its environment (``INSTALL_ENV``); ``host_conf_dir``
    and ``mtu`` are flags that win over ``HOST_CNI_CONF_DIR`` and ``MTU``. ``InputError``
    names a bad value."""
    return plan.InstallSettings(
        node_name=env.get("NODE_NAME", ""),
        install_k8s_net=plan.parse_yes_no(
            "INSTALL_K8S_NET", env.get("INSTALL_K8S_NET"), default=True
        ),
        host_conf_dir=host_conf_dir or env.get("HOST_CNI_CONF_DIR") or DEFAULT_HOST_CONF_DIR,
        mtu=plan.parse_mtu("MTU", mtu if mtu is not None else env.get("MTU")),
        address_annotation=address_annotation_setting(None, env),
        cluster_cidrs=plan.parse_cluster_cidrs("CLUSTER_CIDRS", env.get("CLUSTER_CIDRS")),
    )


def mtu_detector(settings: plan.InstallSettings) -> Callable[[], int]:
    """``detect_mtu`` for ``run_install``: this node's MTU from the API server and the
    interfaces here; a warning (no interface holds the address) is logged."""

    def detect() -> int:
        mtu, warning = detect_mtu(
            settings.node_name, address_annotation=settings.address_annotation
        )
        if warning:
            log.warning(warning, node=settings.node_name)
        return mtu

    return detect


def node_mtu(
    node: Mapping[str, Any],
    interfaces: Iterable[InterfaceAddress],
    *,
    address_annotation: str | None,
) -> tuple[int, str | None]:
    """``(mtu, warning)``: the MTU of the interface holding the node's address (the
    ``address_annotation`` value when configured, else the InternalIP)."""
    facts = extract_facts(node, annotations=Annotations(address=address_annotation))
    address = plan.node_address(facts, address_annotation=address_annotation)
    return choose_mtu(address, interfaces)


def detect_mtu(
    node_name: str,
    *,
    address_annotation: str | None,
    kubeconfig: str | None = None,
    netns: str | None = None,
) -> tuple[int, str | None]:
    """``node_mtu`` for the Node named ``node_name`` read from the API server, against
    the interfaces of this network namespace (or ``netns``)."""
    from xcluster_cni_lib.kernel.links import list_interface_addresses
    from xcluster_cni_lib.sources import kube

    if not node_name:
        raise InputError("NODE_NAME is not set: cannot find this node's address")
    client = kube.load_api_client(kubeconfig, timeout=10.0)
    node = kube.get_node(client, node_name)
    if node is None:
        raise InputError(f"node {node_name} does not exist")
    return node_mtu(node, list_interface_addresses(netns), address_annotation=address_annotation)
