"""The tool subcommands of ``xcluster-cni``: version, cidr, mtu, plan, nodes, kernelroutes.

Thin: each reads its arguments, calls the library and prints. Heavy modules (netlink,
kube) are imported inside the handlers, so ``xcluster-cni cidr`` stays fast. Documented
in ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from typing import Any

from xcluster_cni_lib.core.errors import InputError

DEFAULT_PROTOCOL = 202


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def _warn(lines: Iterable[object]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _protocol(text: str) -> int:
    """A route protocol number 1-255, or a name from iproute2's rt_protos (any protocol
    can be shown, the kernel's own included)."""
    from xcluster_cni_lib.daemon.config import read_rt_protos

    if text.isdecimal() and 1 <= int(text) <= 255:
        return int(text)
    by_name = [n for n, name in read_rt_protos().items() if name == text and 1 <= n <= 255]
    if not by_name:
        raise argparse.ArgumentTypeError(
            f"not a route protocol number (1-255) nor a name in rt_protos: {text!r}"
        )
    return by_name[0]


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
        default="/etc/machine-id",
        help="where this machine's id is, used without a node name [/etc/machine-id]",
    )
    _annotation_flags(p)
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
    from xcluster_cni_lib.core.addresses import parse_address
    from xcluster_cni_lib.core.mtu import choose_mtu
    from xcluster_cni_lib.kernel.netlink import list_interface_addresses

    try:
        address = parse_address(args.address)
    except ValueError as e:
        raise InputError(str(e)) from None
    mtu, warning = choose_mtu(address, list_interface_addresses())
    if warning:
        _warn([warning])
    print(mtu)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.core.ownnode import resolve_own
    from xcluster_cni_lib.core.planning import desired_routes_from_facts
    from xcluster_cni_lib.sources.nodesfile import load_node_facts
    from xcluster_cni_lib.support.hostinfo import read_machine_id

    facts = load_node_facts(
        args.nodes_file,
        cidr_annotation=args.cidr_annotation,
        address_annotation=args.address_annotation,
    )
    machine_id = None if args.node_name else read_machine_id(args.machine_id_file)
    own, warning = resolve_own(facts, name=args.node_name, machine_id=machine_id)
    routes, problems = desired_routes_from_facts(
        facts,
        own=own,
        cidr_annotation=args.cidr_annotation,
        address_annotation=args.address_annotation,
    )
    _print_json([r.to_json() for r in routes])
    _warn([warning] if warning else [])
    _warn(problems)
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.core.errors import InvalidNode
    from xcluster_cni_lib.core.nodes import parse_facts

    if args.nodes_file:
        from xcluster_cni_lib.sources.nodesfile import load_node_facts

        facts = load_node_facts(
            args.nodes_file,
            cidr_annotation=args.cidr_annotation,
            address_annotation=args.address_annotation,
        )
    else:
        from xcluster_cni_lib.sources import kube

        client = kube.load_api_client(args.kubeconfig)
        try:
            facts = kube.list_node_facts(
                client,
                cidr_annotation=args.cidr_annotation,
                address_annotation=args.address_annotation,
            )
        finally:
            client.close()

    out: list[dict[str, Any]] = []
    problems: list[object] = []
    for f in sorted(facts, key=lambda f: f.name):
        try:
            n = parse_facts(
                f, cidr_annotation=args.cidr_annotation, address_annotation=args.address_annotation
            )
        except InvalidNode as e:
            problems.append(e)
            out.append(
                {
                    "name": f.name,
                    "podCIDRs": [],
                    "addresses": [],
                    "machineID": f.machine_id,
                    "problems": [str(e)],
                }
            )
            continue
        problems.extend(n.problems)
        out.append(
            {
                "name": n.name,
                "podCIDRs": [str(c) for c in n.cidrs],
                "addresses": [str(a) for a in n.addresses],
                "machineID": n.machine_id,
                "problems": [str(p) for p in n.problems],
            }
        )
    _print_json(out)
    _warn(problems)
    return 0


def cmd_kernelroutes(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.core.planning import route_sort_key
    from xcluster_cni_lib.kernel.netlink import NetlinkRouteTable

    table = NetlinkRouteTable(args.protocol)
    try:
        routes = table.list_routes()
    finally:
        table.close()
    _print_json([r.to_json() for r in sorted(routes, key=route_sort_key)])
    return 0
