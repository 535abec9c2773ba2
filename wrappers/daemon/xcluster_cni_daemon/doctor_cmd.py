"""``xcluster-cni doctor``: check this node's networking (conflist, plugins, IPAM socket,
API server, routes, overlay, masquerade, NetworkPolicy tables, MTU, protocol number). The
checks are ``xcluster_cni_lib.tools.doctor`` (pure) on what ``tools.doctorfacts`` reads;
this only parses the flags, prints and returns the exit code: 0 all OK, 1 a WARN, 2 a FAIL.
Documented in ``docs/doctor.md``."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``doctor`` subcommand."""
    from xcluster_cni_lib.support.hostinfo import MACHINE_ID_PATH
    from xcluster_cni_lib.support.output import FORMATS

    p = subparsers.add_parser(
        "doctor",
        help="check this node's networking: OK/WARN/FAIL with a hint each",
        description="Check this node (run it on the node or with kubectl exec in the "
        "agent's pod): CNI config, plugins, IPAM socket, API server, routes, overlay, "
        "masquerade, NetworkPolicy tables, MTU, protocol number. Settings come from the "
        "daemon's environment variables; flags win. Exit 0 all OK, 1 a warning, 2 a "
        "failure. See docs/doctor.md.",
    )
    p.add_argument(
        "--cni-conf-dir", metavar="DIR", default="/etc/cni/net.d", help="[/etc/cni/net.d]"
    )
    p.add_argument("--cni-bin-dir", metavar="DIR", default="/opt/cni/bin", help="[/opt/cni/bin]")
    p.add_argument(
        "--socket",
        metavar="PATH",
        default=None,
        help="the agent's IPAM socket [$IPAM_SOCKET, else the conflist's, else "
        "/run/xcluster-cni/ipam.sock]",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--nodes-file",
        metavar="FILE",
        default=None,
        help="read the nodes from a file [$NODES_FILE]",
    )
    source.add_argument("--kubeconfig", metavar="FILE", default=None, help="[$KUBECONFIG]")
    p.add_argument("--node", metavar="NAME", default=None, help="this node's name [$NODE_NAME]")
    p.add_argument(
        "--machine-id-file",
        metavar="FILE",
        default=MACHINE_ID_PATH,
        help=f"used without a node name [{MACHINE_ID_PATH}]",
    )
    p.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="per request (API, socket) [5]"
    )
    p.add_argument("-o", "--output", choices=FORMATS, default=None, help="table or json [table]")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.support.output import render_json, render_table
    from xcluster_cni_lib.tools.doctor import (
        TABLE_HEADER,
        exit_code,
        report_json,
        run_checks,
        table_rows,
    )
    from xcluster_cni_lib.tools.doctorfacts import DoctorOptions, gather

    options = DoctorOptions(
        conf_dir=args.cni_conf_dir,
        bin_dir=args.cni_bin_dir,
        socket=args.socket,
        nodes_file=args.nodes_file,
        kubeconfig=args.kubeconfig,
        node=args.node,
        machine_id_file=args.machine_id_file,
        timeout=args.timeout,
    )
    checks = run_checks(gather(options, os.environ))
    if (args.output or "table") == "json":
        print(render_json(report_json(checks)))
    else:
        for line in render_table(TABLE_HEADER, table_rows(checks)):
            print(line)
    sys.stdout.flush()
    return exit_code(checks)
