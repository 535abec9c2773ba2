"""The tool subcommands of ``xcluster-cni``: version, cidr, mtu, plan, nodes, kernelroutes.

Thin: each reads its arguments, calls the library (``xcluster_cni_lib.tools``, ``.core``)
and prints. Library modules are imported inside the handlers, so ``xcluster-cni cidr``
stays fast. Documented in ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.core.protocols import DEFAULT_PROTOCOL
from xcluster_cni_lib.support.hostinfo import MACHINE_ID_PATH

if TYPE_CHECKING:
    from xcluster_cni_lib.core.values import Annotations


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _output_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default=None,
        help="table or json [table on a terminal, else json]",
    )


def _print(
    args: argparse.Namespace,
    value: object,
    header: Sequence[str],
    rows: Iterable[Sequence[object]],
) -> None:
    """``value`` as JSON or ``rows`` as a table (``-o``; without it a table on a
    terminal, JSON otherwise: what scripts got before ``-o`` existed)."""
    from xcluster_cni_lib.support.output import choose_format, render_json, render_table

    if choose_format(args.output, tty=sys.stdout.isatty()) == "json":
        print(render_json(value))
    else:
        for line in render_table(header, rows):
            print(line)


def _warn(lines: Iterable[object]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _protocol(text: str) -> int:
    from xcluster_cni_lib.tools.kernelview import shown_protocol

    try:
        return shown_protocol(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _annotations(args: argparse.Namespace) -> Annotations:
    """The annotation keys, checked by the daemon's rule (a bad key is an error here too)."""
    from xcluster_cni_lib.core.values import Annotations

    return Annotations(cidr=args.cidr_annotation, address=args.address_annotation)


def _annotation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cidr-annotation",
        metavar="NAME",
        default=_env("CIDR_ANNOTATION"),
        help="take pod CIDRs from this node annotation instead of spec.podCIDRs [$CIDR_ANNOTATION]",
    )
    parser.add_argument(
        "--address-annotation",
        metavar="NAME",
        default=_env("ADDRESS_ANNOTATION"),
        help="take node addresses from this node annotation instead of the InternalIPs "
        "[$ADDRESS_ANNOTATION]",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the tool subcommands."""
    p = subparsers.add_parser("version", help="print the version", description="Print the version.")
    p.set_defaults(func=cmd_version)

    p = subparsers.add_parser(
        "cidr",
        help="a node's CIDR from a double-slash range",
        description="Print node NODE_NUMBER's subnet of a double-slash range "
        "ADDRESS/CLUSTER_PREFIX/NODE_PREFIX: cidr 192.168.0.0/22/25 5 prints 192.168.2.128/25.",
    )
    p.add_argument("spec", metavar="DOUBLE_SLASH_CIDR", help="e.g. 192.168.0.0/16/24")
    p.add_argument("number", metavar="NODE_NUMBER", help="0, 1, 2, ...")
    p.set_defaults(func=cmd_cidr)

    p = subparsers.add_parser(
        "mtu",
        help="the MTU of the interface that reaches an address",
        description="Print the MTU of the interface whose subnet holds ADDRESS (the "
        "interface that has ADDRESS itself first), in the current network namespace; "
        "1500 and a warning when none does.",
    )
    p.add_argument("address", metavar="ADDRESS", help="e.g. 192.168.1.2")
    p.set_defaults(func=cmd_mtu)

    p = subparsers.add_parser(
        "plan",
        help="dry run: the routes this node would install, from a nodes file",
        description="Read a node list (JSON or YAML: a NodeList, a list of Nodes or one "
        "Node, as kubectl get nodes -o json prints it) and print the routes this node would "
        "install as JSON; problems go to stderr. Uses the daemon's code. The own node is "
        "--node-name, else the node whose machineID is this machine's.",
    )
    p.add_argument("--nodes-file", required=True, metavar="FILE", help="the node list")
    p.add_argument(
        "--node-name",
        metavar="NAME",
        default=_env("NODE_NAME"),
        help="this node's name [$NODE_NAME; else found by machine id]",
    )
    p.add_argument(
        "--machine-id-file",
        metavar="FILE",
        default=MACHINE_ID_PATH,
        help=f"where this machine's id is, used without a node name [{MACHINE_ID_PATH}]",
    )
    _annotation_flags(p)
    _output_flag(p)
    p.set_defaults(func=cmd_plan)

    p = subparsers.add_parser(
        "nodes",
        help="the nodes' network view (name, pod CIDRs, addresses) as JSON",
        description="Print every node's network view as the daemon sees it, as JSON: "
        "name, pod CIDRs, addresses, machine id and problems. Reads the API (--kubeconfig, "
        "else $KUBECONFIG, else the in-cluster service account, else ~/.kube/config) or a "
        "nodes file.",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--kubeconfig", metavar="FILE", default=None, help="[$KUBECONFIG]")
    source.add_argument("--nodes-file", metavar="FILE", help="read a node list instead")
    _annotation_flags(p)
    _output_flag(p)
    p.set_defaults(func=cmd_nodes)

    p = subparsers.add_parser(
        "kernelroutes",
        help="the kernel's routes of one protocol as JSON",
        description="Print the routes of route protocol N in the current network "
        "namespace (both families, main table) as JSON.",
    )
    p.add_argument(
        "--protocol",
        type=_protocol,
        metavar="N",
        default=DEFAULT_PROTOCOL,
        help=f"route protocol: a number 1-255 or a name from rt_protos [{DEFAULT_PROTOCOL}]",
    )
    _output_flag(p)
    p.set_defaults(func=cmd_kernelroutes)


def cmd_version(args: argparse.Namespace) -> int:
    from xcluster_cni_lib import __version__

    print(f"xcluster-cni {__version__}")
    return 0


def cmd_cidr(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.core.cidr import node_cidr, parse_node_number

    print(node_cidr(args.spec, parse_node_number(args.number)))
    return 0


def cmd_mtu(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.tools.kernelview import address_mtu

    mtu, warning = address_mtu(args.address)
    _warn([warning] if warning else [])
    print(mtu)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.tools.dryrun import plan_from_file

    result = plan_from_file(
        args.nodes_file,
        annotations=_annotations(args),
        node_name=args.node_name,
        machine_id_file=args.machine_id_file,
    )
    _print(
        args,
        [r.to_json() for r in result.routes],
        ("destination", "via", "device", "node"),
        [(r.dst, r.gateway, r.device, r.node) for r in result.routes],
    )
    _warn(result.warnings)
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.tools.nodeview import node_views, read_node_facts

    facts = read_node_facts(
        nodes_file=args.nodes_file, kubeconfig=args.kubeconfig, annotations=_annotations(args)
    )
    result = node_views(facts)
    _print(
        args,
        list(result.views),
        ("name", "pod cidrs", "addresses", "machine id", "problems"),
        [
            (v["name"], v["podCIDRs"], v["addresses"], v["machineID"], len(v["problems"]))
            for v in result.views
        ],
    )
    _warn(result.warnings)
    return 0


def cmd_kernelroutes(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.tools.kernelview import kernel_routes

    routes = kernel_routes(args.protocol)
    _print(
        args,
        [r.to_json() for r in routes],
        ("destination", "via"),
        [(r.dst, r.gateway) for r in routes],
    )
    return 0
