"""One policy for a node's pod CIDRs (``docs/node-data.md``): for every branch, the router
daemon on ANOTHER node (its dry run, ``xcluster-cni plan``) routes to the node exactly
when a ``kube-node`` ADD on that node succeeds (the real plugin and host-local, reading
the same nodes file), and to exactly the CIDRs the pod addresses come from. A node the
daemon skips is refused by the plugin with the daemon's reason."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ipam._cni import BIN, invoke, write_nodes
from xcluster_cni_lib.testing.nodes import make_node

Conf = Callable[..., dict[str, Any]]
KEY = "pods.example.com/cidrs"  # the CIDR annotation of a secondary network

# (id, pod CIDRs in spec.podCIDRs, value of the CIDR annotation KEY or None when the
#  network reads spec.podCIDRs, the CIDRs both must use or None for "refused")
CASES: list[tuple[str, list[str], str | None, list[str] | None]] = [
    ("ipv4-only", ["10.50.0.0/24"], None, ["10.50.0.0/24"]),
    ("ipv6-only", ["fd00:50::/64"], None, ["fd00:50::/64"]),
    ("dual-stack", ["10.50.0.0/24", "fd00:50::/64"], None, ["10.50.0.0/24", "fd00:50::/64"]),
    (
        "dual-stack-v6-first",
        ["fd00:50::/64", "10.50.0.0/24"],
        None,
        ["10.50.0.0/24", "fd00:50::/64"],
    ),
    ("two-ipv4-spec", ["10.50.0.0/24", "10.51.0.0/24"], None, ["10.50.0.0/24"]),
    (
        "two-ipv4-spec-and-ipv6",
        ["10.50.0.0/24", "fd00:50::/64", "10.51.0.0/24"],
        None,
        ["10.50.0.0/24", "fd00:50::/64"],
    ),
    ("duplicate-spec", ["10.50.0.0/24", "10.50.0.0/24"], None, ["10.50.0.0/24"]),
    ("malformed-extra-spec", ["10.50.0.0/24", "banana"], None, ["10.50.0.0/24"]),
    ("malformed-first-spec", ["banana", "fd00:50::/64"], None, ["fd00:50::/64"]),
    ("only-malformed-spec", ["banana"], None, None),
    ("default-route-spec", ["0.0.0.0/0"], None, None),
    ("default-route-and-ipv6-spec", ["0.0.0.0/0", "fd00:50::/64"], None, ["fd00:50::/64"]),
    ("too-small-spec", ["10.50.0.0/31"], None, None),
    ("too-small-extra-spec", ["10.50.0.0/24", "fd00:50::/127"], None, ["10.50.0.0/24"]),
    ("mapped-ipv6-spec", ["::ffff:10.50.0.0/120"], None, ["10.50.0.0/24"]),
    ("host-bits-spec", ["10.50.0.9/24"], None, ["10.50.0.0/24"]),
    ("no-pod-cidr", [], None, None),
    (
        "one-per-family-annotation",
        [],
        "10.50.0.0/24, fd00:50::/64",
        ["10.50.0.0/24", "fd00:50::/64"],
    ),
    ("ipv6-only-annotation", ["10.9.0.0/24"], "fd00:50::/64", ["fd00:50::/64"]),
    ("two-ipv4-annotation", [], "10.50.0.0/24,10.51.0.0/24", None),
    ("malformed-extra-annotation", [], "10.50.0.0/24,banana", None),
    ("empty-item-annotation", [], "10.50.0.0/24,", None),
    ("default-route-annotation", [], "0.0.0.0/0", None),
    ("too-small-annotation", [], "10.50.0.0/32", None),
    (
        "mapped-ipv6-annotation",
        [],
        "::ffff:10.50.0.0/120,fd00:50::/64",
        ["10.50.0.0/24", "fd00:50::/64"],
    ),
    ("mapped-ipv6-is-a-second-ipv4-annotation", [], "::ffff:10.50.0.0/120,10.51.0.0/24", None),
    (
        "mapped-ipv6-is-a-second-ipv4-spec",
        ["10.51.0.0/24", "::ffff:10.50.0.0/120"],
        None,
        ["10.51.0.0/24"],
    ),
    ("mapped-ipv6-only-annotation", [], "::ffff:10.50.0.0/120", ["10.50.0.0/24"]),
    ("missing-annotation", ["10.50.0.0/24"], "", None),
]


def _plan_from_another_node(nodes_file: Path, annotation: str | None) -> tuple[Any, list[str]]:
    """``xcluster-cni plan`` as the daemon of node ``other`` sees the nodes: its routes
    and its warnings."""
    extra = ["--cidr-annotation", KEY] if annotation is not None else []
    command = [str(BIN / "xcluster-cni"), "plan", "--nodes-file", str(nodes_file)]
    proc = subprocess.run(
        [*command, "--node-name", "other", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [line.removeprefix("warning: ") for line in proc.stderr.splitlines()]
    return json.loads(proc.stdout), warnings


def _canonical_order(cidrs: list[str]) -> list[str]:
    return sorted(cidrs, key=lambda c: ipaddress.ip_network(c, strict=False).version)


@pytest.mark.parametrize(
    ("spec", "annotation", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_routed_to_exactly_when_allocatable(
    conf: Conf,
    nodes_file: Path,
    spec: list[str],
    annotation: str | None,
    expected: list[str] | None,
) -> None:
    annotations = {KEY: annotation} if annotation else {}
    # both families' addresses, so that routing depends on the pod CIDRs alone
    subject = make_node("x", index=5, pod_cidrs=spec, annotations=annotations, images=0)
    other = make_node("other", index=6, annotations={KEY: "10.60.0.0/24,fd00:60::/64"}, images=0)
    write_nodes(nodes_file, [subject, other])

    routes, warnings = _plan_from_another_node(nodes_file, annotation)
    routed = [r["dst"] for r in routes if r["node"] == "x"]
    about_x = [w for w in warnings if w.startswith("node x: ")]

    ipam = {"nodeName": "x", "annotation": KEY if annotation is not None else None}
    out = invoke(conf(**ipam), "ADD")

    if expected is None:
        assert routed == [], routes
        err = out.error()
        assert err["code"] == 100
        # the plugin's refusal is the daemon's reason for skipping the node
        assert any(w.startswith(err["msg"]) for w in about_x), (err, about_x)
        return
    assert out.rc == 0, out
    assert sorted(routed) == sorted(expected)
    addresses = [ipaddress.ip_interface(ip["address"]) for ip in out.json["ips"]]
    assert [str(a.network) for a in addresses] == _canonical_order(expected)
    # whatever the daemon ignored, it said so, naming the node
    if len(spec) > len(expected) and annotation is None:
        assert about_x, warnings


@pytest.mark.parametrize("plugin", ["kube-node", "node-annotation"])
def test_an_annotation_key_the_daemon_refuses_is_refused(conf: Conf, plugin: str) -> None:
    err = invoke(conf(plugin=plugin, annotation="bad key!!"), "ADD", plugin=plugin).error()
    assert err["code"] == 7
    assert "bad key!!" in err["msg"] and "annotation key" in err["msg"]


def test_what_the_plugin_ignores_it_logs_naming_the_node(
    conf: Conf, nodes_file: Path, tmp_path: Path
) -> None:
    write_nodes(nodes_file, [make_node("x", index=5, pod_cidrs=["10.50.0.0/24", "10.51.0.0/24"])])
    logfile = tmp_path / "kube-node.log"
    out = invoke(conf(nodeName="x", logfile=str(logfile)), "ADD")
    assert out.rc == 0, out
    lines = [line for line in logfile.read_text().splitlines() if "10.51.0.0/24" in line]
    assert len(lines) == 1 and " warning " in lines[0] and "node x: " in lines[0], lines
