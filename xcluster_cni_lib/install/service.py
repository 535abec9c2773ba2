"""The installer: the host shim, the reference plugins the node lacks, the clean-up of
what earlier versions left, then the conflist, in that order.

The conflist comes last because a runtime (and the kubelet's node readiness) takes a
config in the directory as "the network is ready": everything it refers to must be there
first. Decisions come from ``plan``; file operations from ``files``. The API server and
the kernel are reached only through ``detect_mtu``, which callers can replace.
"""

from __future__ import annotations

import platform
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from xcluster_cni_lib import __version__
from xcluster_cni_lib.core.errors import InputError, XclusterError, shorten
from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.core.mtu import choose_mtu
from xcluster_cni_lib.core.overlay import overlay_mtu
from xcluster_cni_lib.core.values import Annotations, InterfaceAddress
from xcluster_cni_lib.install import files, plan
from xcluster_cni_lib.support import jsonlog

# Every environment variable ``xcluster-cni install`` reads (docs/install.md).
INSTALL_ENV = frozenset(
    {
        "NODE_NAME",
        "INSTALL_K8S_NET",
        "ADDRESS_ANNOTATION",
        "MTU",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "LOG_LEVEL",
        "KUBECONFIG",
        "CLUSTER_CIDRS",
        "OVERLAY",
    }
)
# Where the image keeps what the installer copies (see the Dockerfile).
DEFAULT_SHIM_DIR = Path("/opt/xcluster-cni/shim")
DEFAULT_REFERENCE_DIR = Path("/opt/xcluster-cni/reference")

log = jsonlog.get_logger("xcluster_cni_lib.install")


@attrs.frozen
class Action:
    """One thing the installer did or left alone: ``what`` is ``installed``,
    ``replaced``, ``unchanged``, ``written``, ``rewritten``, ``kept``, ``skipped`` or
    ``removed``; ``detail`` says why; ``level`` is the log level of its line."""

    path: str
    what: str
    detail: str = ""
    level: str = "info"


@attrs.frozen
class InstallPaths:
    """The directories the installer works on (container paths): the host's CNI bin and
    config dirs, and the image's shims (``<shim_dir>/<arch>/xcluster-cni-shim``) and
    reference plugins."""

    bin_dir: Path = Path("/cni/bin")
    conf_dir: Path = Path("/cni/net.d")
    shim_dir: Path = DEFAULT_SHIM_DIR
    reference_dir: Path = DEFAULT_REFERENCE_DIR


def install_shim(shim_dir: Path, bin_dir: Path, *, machine: str) -> list[Action]:
    """Copy the shim for ``machine`` (a ``platform.machine()`` value) to every IPAM plugin
    name in ``bin_dir``: each name is replaced atomically (a runtime starting the plugin
    meanwhile runs the old file or the new one), an identical file is left alone."""
    arch = plan.shim_arch(machine)
    shim = shim_dir / arch / plan.SHIM_NAME
    if not shim.is_file():
        raise InputError(f"the host shim for {arch} is missing: {shim}")
    actions = []
    for name in plan.SHIM_PLUGIN_NAMES:
        dst = bin_dir / name
        actions.append(Action(str(dst), files.install_file(shim, dst), f"shim {arch}"))
    return actions


def install_reference_plugins(reference_dir: Path, bin_dir: Path) -> list[Action]:
    """Install each reference plugin of the image only where the node has none: a file
    or symlink of that name in ``bin_dir`` (the node's own, maybe another version built
    for the node's libc) is never replaced. One action per plugin: ``installed``,
    ``unchanged`` (ours, from an earlier run) or ``skipped`` ("kept the node's own")."""
    actions = []
    for name in plan.REFERENCE_PLUGINS:
        src = reference_dir / name
        dst = bin_dir / name
        if not src.is_file():
            raise InputError(f"the reference plugin {name} is missing from the image: {src}")
        what = files.install_if_absent(src, dst)
        if what == "kept":
            actions.append(Action(str(dst), "skipped", "kept the node's own"))
        else:
            actions.append(Action(str(dst), what, "reference plugin"))
    return actions


def remove_old_bundle(bin_dir: Path) -> list[Action]:
    """Remove the CPython bundle directory earlier versions installed (``<bin>/
    xcluster-cni/``); call it once the plugin names point at the shim. A plugin still
    running from it keeps its open files."""
    home = bin_dir / plan.OLD_BUNDLE_DIR
    if home.is_symlink() or not home.is_dir():
        return []
    shutil.rmtree(home)
    files.fsync_dir(bin_dir)
    return [Action(str(home), "removed", "the plugin bundle of an earlier version")]


def remove_old_plugin_files(conf_dir: Path) -> list[Action]:
    """Remove the plugins' kubeconfig (it holds a service-account token) and node-name
    file that earlier versions wrote: the served IPAM needs neither."""
    actions = []
    for name in (plan.KUBECONFIG_NAME, plan.NODE_NAME_FILE):
        path = conf_dir / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            actions.append(Action(str(path), "removed", "not needed by the served IPAM"))
    return actions


def install_plugins(paths: InstallPaths, *, machine: str) -> list[Action]:
    """The reference plugins the node lacks, the shim under the IPAM plugin names, then
    the removal of the old bundle."""
    if not paths.bin_dir.is_dir():
        raise InputError(
            f"CNI bin directory {paths.bin_dir} does not exist (is the hostPath mounted?)"
        )
    bin_dir = paths.bin_dir
    actions = [Action(str(bin_dir / n), "removed") for n in files.remove_stale_temporaries(bin_dir)]
    actions.extend(install_reference_plugins(paths.reference_dir, bin_dir))
    actions.extend(install_shim(paths.shim_dir, bin_dir, machine=machine))
    actions.extend(remove_old_bundle(bin_dir))
    return actions


def _config_files(conf_dir: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for entry in conf_dir.iterdir():
        if entry.name.endswith(plan.CONFIG_SUFFIXES) and entry.is_file():
            try:
                found[entry.name] = entry.read_bytes()
            except OSError:
                continue
    return found


def _desired_conflist(
    settings: plan.InstallSettings, *, detect_mtu: Callable[[], int], version: str
) -> dict[str, Any]:
    mtu = settings.mtu if settings.mtu is not None else detect_mtu()
    return plan.managed_conflist(
        mtu=mtu, cluster_cidrs=settings.cluster_cidrs, overlay=settings.overlay, version=version
    )


def _inputs(config: Mapping[str, Any]) -> str:
    marker = config[plan.MARKER_KEY]
    return f"mtu {config['plugins'][0]['mtu']}, overlay {marker['overlay']}"


def write_conflist(
    conf_dir: Path,
    settings: plan.InstallSettings,
    *,
    detect_mtu: Callable[[], int],
    version: str = __version__,
) -> Action:
    """Write, rewrite or leave ``10-xcluster-cni.conflist``; one ``Action`` says which
    and why.

    - No xcluster config in the directory: ``written`` (with the installer's marker).
    - Another xcluster config sorts first (a user's, by name): ``skipped``; neither it
      nor ours behind it is touched.
    - Ours (``plan.recognise_conflist``: marked and untouched, or exactly what an earlier
      version wrote): ``rewritten`` atomically when this run would write something else
      (MTU, overlay, clusterCIDRs, the format), else ``unchanged`` (not touched).
    - Ours by name but not by content (no marker, edited by hand, a symlink): ``skipped``.

    ``detect_mtu`` (when no MTU is set) is called only to write or compare our own file;
    when it fails with our file present, that file is ``kept`` as it is (the node keeps
    working without the API server, as before) and the action is logged as a warning.
    """
    found = _config_files(conf_dir)
    path = conf_dir / plan.CONFLIST_NAME
    first = plan.find_xcluster_config(found)
    if first is None:
        desired = _desired_conflist(settings, detect_mtu=detect_mtu, version=version)
        files.write_atomic(path, plan.render_json(desired), mode=0o644)
        return Action(str(path), "written", f"{_inputs(desired)}: no xcluster config was there")
    if first != plan.CONFLIST_NAME:
        behind = f", nor {plan.CONFLIST_NAME} behind it" if plan.CONFLIST_NAME in found else ""
        return Action(
            str(conf_dir / first),
            "skipped",
            f"a user's xcluster config comes first: not touched{behind}",
        )
    if path.is_symlink():
        return Action(str(path), "skipped", "a user's: a symlink, not written by the installer")
    recognised = plan.recognise_conflist(found[first], node_name=settings.node_name)
    if not recognised.ours:
        return Action(str(path), "skipped", f"a user's: {recognised.reason}; not touched")
    try:
        desired = _desired_conflist(settings, detect_mtu=detect_mtu, version=version)
    except (XclusterError, OSError) as exc:
        return Action(
            str(path),
            "kept",
            f"{recognised.reason}; left as it is: the MTU look-up failed: {shorten(str(exc))}",
            level="warning",
        )
    change = plan.plan_conflist_change(recognised, desired)
    if not change.rewrite:
        return Action(str(path), "unchanged", f"{_inputs(desired)}: {change.reason}")
    files.write_atomic(path, change.content, mode=0o644)
    return Action(str(path), "rewritten", f"{_inputs(desired)}: {change.reason}")


def run_install(
    settings: plan.InstallSettings,
    paths: InstallPaths,
    *,
    detect_mtu: Callable[[], int],
    machine: str | None = None,
) -> list[Action]:
    """Everything ``xcluster-cni install`` does; returns what it did, in order.
    ``machine`` picks the shim (default: this machine's, ``platform.machine()``)."""
    if not settings.node_name:
        raise InputError("NODE_NAME is not set (give it from the downward API)")
    if not paths.conf_dir.is_dir():
        raise InputError(
            f"CNI config directory {paths.conf_dir} does not exist (is the hostPath mounted?)"
        )
    actions = install_plugins(paths, machine=machine or platform.machine())
    actions.extend(
        Action(str(paths.conf_dir / n), "removed")
        for n in files.remove_stale_temporaries(paths.conf_dir)
    )
    actions.extend(remove_old_plugin_files(paths.conf_dir))
    if settings.install_k8s_net:
        actions.append(write_conflist(paths.conf_dir, settings, detect_mtu=detect_mtu))
    else:
        actions.append(
            Action(
                str(paths.conf_dir / plan.CONFLIST_NAME),
                "skipped",
                "INSTALL_K8S_NET=no: no conflist written or changed",
            )
        )
    return actions


def address_annotation_setting(value: str | None, env: Mapping[str, str]) -> str | None:
    """The address annotation: ``value`` (a flag) when given, else ``ADDRESS_ANNOTATION``;
    empty means none. A key the daemon would refuse raises ``InputError`` (same rule)."""
    value = value if value is not None else env.get("ADDRESS_ANNOTATION")
    return Annotations(address=value or None).address


def settings_from_env(env: Mapping[str, str], *, mtu: str | None = None) -> plan.InstallSettings:
    """The installer's settings from its environment (``INSTALL_ENV``); ``mtu`` is a flag
    that wins over ``MTU``. ``InputError`` names a bad value."""
    return plan.InstallSettings(
        node_name=env.get("NODE_NAME", ""),
        install_k8s_net=plan.parse_yes_no(
            "INSTALL_K8S_NET", env.get("INSTALL_K8S_NET"), default=True
        ),
        mtu=plan.parse_mtu("MTU", mtu if mtu is not None else env.get("MTU")),
        address_annotation=address_annotation_setting(None, env),
        cluster_cidrs=plan.parse_cluster_cidrs("CLUSTER_CIDRS", env.get("CLUSTER_CIDRS")),
        overlay=plan.parse_overlay("OVERLAY", env.get("OVERLAY")),
    )


def mtu_detector(settings: plan.InstallSettings) -> Callable[[], int]:
    """``detect_mtu`` for ``run_install``: this node's MTU from the API server and the
    interfaces here; a warning (no interface holds the address) is logged."""

    def detect() -> int:
        mtu, warning = detect_mtu(
            settings.node_name,
            address_annotation=settings.address_annotation,
            overlay=settings.overlay,
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
    overlay: str = "none",
) -> tuple[int, str | None]:
    """``(mtu, warning)``: the MTU of the interface holding the node's address (the
    ``address_annotation`` value when configured, else the InternalIP); with the vxlan
    overlay, less its encapsulation over that address's family (50 bytes IPv4, 70 IPv6)."""
    facts = extract_facts(node, annotations=Annotations(address=address_annotation))
    address = plan.node_address(facts, address_annotation=address_annotation)
    mtu, warning = choose_mtu(address, interfaces)
    if overlay == "vxlan":
        mtu = overlay_mtu(mtu, address.version)
    return mtu, warning


def detect_mtu(
    node_name: str,
    *,
    address_annotation: str | None,
    kubeconfig: str | None = None,
    netns: str | None = None,
    overlay: str = "none",
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
    return node_mtu(
        node,
        list_interface_addresses(netns),
        address_annotation=address_annotation,
        overlay=overlay,
    )
