"""``xcluster-cni install`` (the init container's job) and ``xcluster-cni k8smtu``.

Environment (documented in ``docs/install.md``; the list is
``xcluster_cni_lib.install.service.INSTALL_ENV``, read by ``settings_from_env``):
``NODE_NAME`` (required), ``INSTALL_K8S_NET`` (yes/no, default yes), ``ADDRESS_ANNOTATION``,
``MTU``, ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT``, ``KUBECONFIG`` (the last
three only for the MTU look-up), ``CLUSTER_CIDRS`` (written into the conflist as
``clusterCIDRs``), ``OVERLAY`` (``vxlan``: the detected MTU leaves room for it).
Directory flags default to the container paths of the DaemonSet's hostPath mounts and to
the image's layout.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``install`` and ``k8smtu`` subcommands."""
    install = subparsers.add_parser(
        "install",
        help="install the host shim, missing reference plugins and the main-network config",
        description="Copy the static host shim for this machine into the host's CNI bin "
        "dir as kube-node and node-annotation (same content: left alone), copy each "
        "reference plugin (bridge, host-local, loopback, portmap) only where the node has "
        "none, remove what earlier versions left (the plugin bundle, the plugins' "
        "kubeconfig and node-name file), and write 10-xcluster-cni.conflist, marked as the "
        "installer's: a later run rewrites it when the MTU, overlay or format it would "
        "write differs. A config the installer did not write (this file without the "
        "marker or edited by hand, or another xcluster config sorting first) is never "
        "touched; with INSTALL_K8S_NET=no no conflist is written. Every file is written "
        "atomically; each decision is one JSON log line.",
    )
    install.add_argument(
        "--cni-bin-dir",
        type=Path,
        default=Path("/cni/bin"),
        help="the host's CNI bin dir as mounted here [/cni/bin]",
    )
    install.add_argument(
        "--cni-conf-dir",
        type=Path,
        default=Path("/cni/net.d"),
        help="the host's CNI config dir as mounted here [/cni/net.d]",
    )
    install.add_argument(
        "--shim-dir",
        type=Path,
        default=Path("/opt/xcluster-cni/shim"),
        help="the host shims, <dir>/<arch>/xcluster-cni-shim (arch: amd64, arm64) "
        "[/opt/xcluster-cni/shim]",
    )
    install.add_argument(
        "--reference-dir",
        type=Path,
        default=Path("/opt/xcluster-cni/reference"),
        help="the reference plugins installed where the node has none "
        "[/opt/xcluster-cni/reference]",
    )
    install.add_argument(
        "--mtu",
        default=None,
        help="bridge MTU; default: the MTU of the interface holding the "
        "node's address (see k8smtu) [$MTU]",
    )
    install.set_defaults(func=run_install)

    mtu = subparsers.add_parser(
        "k8smtu",
        help="print the MTU of the interface holding this node's address",
        description="Read this node from the API server and print the MTU of the local "
        "interface holding its address (ADDRESS_ANNOTATION's value when set, else the "
        "InternalIP).",
    )
    mtu.add_argument("--node", default=None, help="node name [$NODE_NAME]")
    mtu.add_argument("--kubeconfig", default=None, help="kubeconfig [$KUBECONFIG, else in-cluster]")
    mtu.add_argument("--address-annotation", default=None, help="[$ADDRESS_ANNOTATION]")
    mtu.add_argument(
        "--overlay",
        default=None,
        help="none or vxlan: with vxlan, less the encapsulation (50 bytes over IPv4, 70 over "
        "IPv6) [$OVERLAY]",
    )
    mtu.set_defaults(func=run_k8smtu)


def run_install(args: argparse.Namespace) -> int:
    """Run the installer; logs one JSON line per file and returns 0, or raises an
    ``InputError`` that ``cli.main`` reports in one line."""
    from xcluster_cni_lib.install import service
    from xcluster_cni_lib.support import jsonlog

    jsonlog.setup(os.environ.get("LOG_LEVEL", "info"))
    log = jsonlog.get_logger("xcluster_cni_lib.install")
    settings = service.settings_from_env(os.environ, mtu=args.mtu)
    paths = service.InstallPaths(
        bin_dir=args.cni_bin_dir,
        conf_dir=args.cni_conf_dir,
        shim_dir=args.shim_dir,
        reference_dir=args.reference_dir,
    )
    detect = service.mtu_detector(settings)
    for action in service.run_install(settings, paths, detect_mtu=detect):
        emit = log.warning if action.level == "warning" else log.info
        emit(
            f"{action.what} {action.path}",
            path=action.path,
            action=action.what,
            detail=action.detail,
        )
    log.info("install done", node=settings.node_name, install_k8s_net=settings.install_k8s_net)
    return 0


def run_k8smtu(args: argparse.Namespace) -> int:
    """Print the MTU; a warning (no interface holds the address) goes to stderr."""
    from xcluster_cni_lib.install import plan, service

    mtu, warning = service.detect_mtu(
        args.node or os.environ.get("NODE_NAME", ""),
        address_annotation=service.address_annotation_setting(args.address_annotation, os.environ),
        kubeconfig=args.kubeconfig,
        overlay=plan.parse_overlay(
            "--overlay" if args.overlay is not None else "OVERLAY",
            args.overlay if args.overlay is not None else os.environ.get("OVERLAY"),
        ),
    )
    if warning:
        print(f"xcluster-cni k8smtu: warning: {warning}", file=sys.stderr)
    print(mtu)
    return 0
