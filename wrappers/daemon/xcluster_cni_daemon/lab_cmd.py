"""``xcluster-cni lab up|status|down|demo``: a cluster in network namespaces on this
machine (root). Documented in ``docs/lab.md``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xcluster_cni_lib.lab import Lab, LabSpec


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

    up = verbs.add_parser("up", help="build a lab and leave it running")
    common(up, default_id="lab")
    shape(up)
    up.set_defaults(func=_up)

    status = verbs.add_parser("status", help="show labs, their daemons and routes")
    common(status, default_id=None)
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
    from xcluster_cni_lib.lab.spec import MAIN, SECONDARY, LabSpec

    kwargs: dict[str, object] = {
        "nodes": args.nodes,
        "pods_per_node": args.pods,
        "networks": (MAIN,) if args.no_secondary else (MAIN, SECONDARY),
        "prefix": args.prefix,
        "state_root": args.state_root,
        "ipam": args.ipam,
    }
    if args.id:
        kwargs["lab_id"] = args.id
    return LabSpec(**kwargs)  # type: ignore[arg-type]  # values typed by argparse


def _up(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.lab import Lab, LabError
    from xcluster_cni_lib.lab.cleanup import interrupt_on_termination

    try:
        spec = _spec(args)
        lab = Lab(spec)
        with interrupt_on_termination():
            try:
                lab.up()
            except BaseException:
                lab.down()
                raise
    except LabError as e:
        print(f"xcluster-cni lab up: {e}", file=sys.stderr)
        return 1
    print(f"lab {spec.lab_id} is up; state, nodes file and logs in {spec.state_dir}")
    for node in lab.nodes.values():
        addrs = "  ".join(f"{net}: {', '.join(map(str, a))}" for net, a in node.addresses.items())
        print(f"  node {node.name:4} netns {node.namespace:20} {addrs}")
    for pod in sorted(lab.pods.values(), key=lambda p: p.name):
        addrs = "  ".join(f"{net}: {', '.join(map(str, a))}" for net, a in pod.addresses.items())
        print(f"  pod  {pod.name:9} netns {pod.netns:20} {addrs}")
    print(f"try: ip netns exec {spec.namespace('n1-pod1')} ping {_first_remote(lab)}")
    print(f"stop it with: {spec.down_command}")
    return 0


def _first_remote(lab: Lab) -> str:
    for pod in lab.pods.values():
        if pod.node != "n1":
            address = pod.address(lab.spec.main.name, 4)
            return str(address)
    return "127.0.0.1"


def _labs(args: argparse.Namespace) -> list[str]:
    from xcluster_cni_lib.lab.cleanup import find_labs

    return [args.id] if args.id else find_labs(args.prefix, args.state_root)


def _status(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.lab.cleanup import lab_status

    labs = _labs(args)
    if not labs:
        print("no labs")
    for lab_id in labs:
        for line in lab_status(args.prefix, lab_id, args.state_root):
            print(line)
    return 0


def _down(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.lab.cleanup import shielded, teardown_lab

    labs = _labs(args)
    if not labs:
        print("no labs to remove")
    with shielded():
        for lab_id in labs:
            removed = teardown_lab(args.prefix, lab_id, args.state_root)
            print(f"lab {lab_id}: removed {len(removed)} namespaces")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from xcluster_cni_lib.lab import LabError
    from xcluster_cni_lib.lab.cleanup import interrupt_on_termination
    from xcluster_cni_lib.lab.demo import run_demo

    try:
        spec = _spec(args)
    except LabError as e:
        print(f"xcluster-cni lab demo: {e}", file=sys.stderr)
        return 1
    with interrupt_on_termination():
        return run_demo(sys.stdout, spec=spec)
