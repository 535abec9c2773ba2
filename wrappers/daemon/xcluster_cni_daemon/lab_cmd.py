"""``xcluster-cni lab up|status|down|demo``: a cluster in network namespaces on this
machine (root). The verbs' logic is ``xcluster_cni_lib.lab.commands``; documented in
``docs/lab.md``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xcluster_cni_lib.lab import LabSpec


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``lab`` subcommand and its verbs."""
    from xcluster_cni_lib.lab.spec import DEFAULT_PREFIX, DEFAULT_STATE_ROOT

    lab = subparsers.add_parser(
        "lab",
        help="a multi-node cluster in network namespaces (root)",
        description="Build and run a cluster of network namespaces with the real daemon "
        "and plugins. See docs/lab.md.",
    )
    verbs = lab.add_subparsers(dest="lab_verb", required=True, metavar="VERB")

    def common(p: argparse.ArgumentParser, *, default_id: str | None) -> None:
        p.add_argument(
            "--id",
            default=default_id,
            help="lab id (1-8 lowercase letters/digits)"
            + (f" [{default_id}]" if default_id else " [all labs with the prefix]"),
        )
        p.add_argument(
            "--prefix", default=DEFAULT_PREFIX, help=f"namespace prefix [{DEFAULT_PREFIX}]"
        )
        p.add_argument(
            "--state-root",
            type=Path,
            default=DEFAULT_STATE_ROOT,
            help=f"where labs keep state, nodes file, IPAM data and logs [{DEFAULT_STATE_ROOT}]",
        )

    def shape(p: argparse.ArgumentParser) -> None:
        p.add_argument("--nodes", type=int, default=3, help="number of nodes [3]")
        p.add_argument("--pods", type=int, default=2, help="pods per node [2]")
        p.add_argument(
            "--no-secondary", action="store_true", help="only the main network (no net1)"
        )
        p.add_argument(
            "--ipam",
            choices=("kube-node", "host-local"),
            default="kube-node",
            help="the pods' IPAM plugin [kube-node]",
        )
        p.add_argument(
            "--routed",
            action="store_true",
            help="put every node on its own subnet behind a router (main network)",
        )
        p.add_argument(
            "--overlay",
            choices=("none", "vxlan"),
            default="none",
            help="the main network's OVERLAY (vxlan: the built-in overlay) [none]",
        )
        p.add_argument(
            "--masquerade",
            action="store_true",
            help="MASQUERADE=true on the main network (adds the outside host)",
        )
        p.add_argument(
            "--outside",
            action="store_true",
            help="an outside host (203.0.113.10, 2001:db8:1::10) behind the lab's router",
        )

    up = verbs.add_parser("up", help="build a lab and leave it running")
    common(up, default_id="lab")
    shape(up)
    up.set_defaults(func=_up)

    status = verbs.add_parser("status", help="show labs, their daemons and routes")
    common(status, default_id=None)
    status.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default="table",
        help="table (the summary text) or json [table]",
    )
    status.set_defaults(func=_status)

    down = verbs.add_parser("down", help="remove labs (also what a crashed run left)")
    common(down, default_id=None)
    down.set_defaults(func=_down)

    demo = verbs.add_parser(
        "demo", help="build 3 nodes, show routes and connectivity, churn, tear down"
    )
    common(demo, default_id=None)
    shape(demo)
    demo.set_defaults(func=_demo)


def _spec(args: argparse.Namespace) -> LabSpec:
    from xcluster_cni_lib.lab.commands import command_spec

    return command_spec(
        nodes=args.nodes,
        pods=args.pods,
        secondary=not args.no_secondary,
        ipam=args.ipam,
        lab_id=args.id or None,
        prefix=args.prefix,
        state_root=args.state_root,
        routed=args.routed,
        overlay=args.overlay,
        masquerade=args.masquerade,
        outside=args.outside,
    )


def _failed(args: argparse.Namespace, error: Exception) -> int:
    print(f"xcluster-cni lab {args.lab_verb}: {error}", file=sys.stderr)
    return 1


def _up(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.lab import LabError
    from xcluster_cni_lib.lab.commands import bring_up
    from xcluster_cni_lib.lab.report import up_lines

    try:
        lab = bring_up(_spec(args))
    except LabError as e:
        return _failed(args, e)
    for line in up_lines(lab):
        print(line)
    return 0


def _status(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.lab import LabError
    from xcluster_cni_lib.lab.commands import status_lines, status_records
    from xcluster_cni_lib.support.output import render_json

    try:
        if args.output == "json":
            lines = [render_json(status_records(args.prefix, args.state_root, args.id))]
        else:
            lines = status_lines(args.prefix, args.state_root, args.id)
    except LabError as e:
        return _failed(args, e)
    for line in lines:
        print(line)
    return 0


def _down(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.lab import LabError
    from xcluster_cni_lib.lab.commands import remove_labs

    try:
        removed = remove_labs(args.prefix, args.state_root, args.id)
    except LabError as e:
        return _failed(args, e)
    if not removed:
        print("no labs to remove")
    for lab_id, namespaces in removed:
        print(f"lab {lab_id}: removed {len(namespaces)} namespaces")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.lab import LabError
    from xcluster_cni_lib.lab.commands import demo

    try:
        spec = _spec(args)
    except LabError as e:
        return _failed(args, e)
    return demo(sys.stdout, spec)
