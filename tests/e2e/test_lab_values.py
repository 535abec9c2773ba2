"""The lab's pure parts (no root needed): numbering, the Node objects it publishes, the
routes it expects, and the connectivity table."""

from __future__ import annotations

import ipaddress

import attrs
import pytest

from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.lab import MAIN, SECONDARY, LabError, LabSpec, Matrix, PingResult
from xcluster_cni_lib.lab.nodes import node_list, node_object, plan_node
from xcluster_cni_lib.lab.report import matrix_lines
from xcluster_cni_lib.lab.routes import expected_routes

SPEC = LabSpec(nodes=3, lab_id="unit")


def test_node_numbering_per_network_and_family() -> None:
    n3 = plan_node(SPEC, 3)
    assert n3.namespace == "xcl-unit-n3"
    assert n3.cidrs["main"] == (
        ipaddress.ip_network("10.244.3.0/24"),
        ipaddress.ip_network("fd00:10:244:3::/64"),
    )
    assert [str(a) for a in n3.addresses["net2"]] == ["192.168.200.3", "fd00:200::3"]
    with pytest.raises(LabError, match="does not fit"):
        MAIN.node_cidr(256, 4)


def test_node_object_carries_both_networks_as_the_daemons_read_them() -> None:
    node = plan_node(SPEC, 2)
    obj = node_object(node, SPEC.networks)

    main = extract_facts(obj)
    assert main.name == "n2"
    assert main.pod_cidrs == ("10.244.2.0/24", "fd00:10:244:2::/64")
    assert main.internal_ips == ("192.168.100.2", "fd00:100::2")
    secondary = extract_facts(obj, annotations=SECONDARY.annotations)
    assert secondary.cidr_annotation == "10.245.2.0/24,fd00:10:245:2::/64"
    assert secondary.address_annotation == "192.168.200.2,fd00:200::2"
    assert (
        main.machine_id
        and main.machine_id
        != extract_facts(node_object(plan_node(SPEC, 1), SPEC.networks)).machine_id
    )


def test_expected_routes_skip_self_and_removed_nodes_and_follow_annotations() -> None:
    nodes = [plan_node(SPEC, i) for i in (1, 2, 3)]
    nodes[2] = attrs.evolve(nodes[2], present=False)
    overlay = attrs.evolve(MAIN, address_annotation="example.com/overlay")
    nodes[1] = attrs.evolve(nodes[1], annotations={"example.com/overlay": "172.30.0.2,fd00:30::2"})

    routes = expected_routes(nodes, "n1", overlay)

    assert {(str(r.dst), str(r.gateway)) for r in routes} == {
        ("10.244.2.0/24", "172.30.0.2"),
        ("fd00:10:244:2::/64", "fd00:30::2"),
    }
    assert [i["metadata"]["name"] for i in node_list(nodes, SPEC.networks)["items"]] == ["n1", "n2"]


def test_bad_lab_id_is_refused_with_the_value() -> None:
    with pytest.raises(LabError, match="'Bad_Id'"):
        LabSpec(lab_id="Bad_Id")


def test_matrix_table_marks_failures_and_paths_not_expected() -> None:
    matrix = Matrix(
        (
            PingResult("a", "b", "main", 4, "10.0.0.2", True),
            PingResult("a", "b", "main", 6, "fd00::2", False),
        )
    )
    header, row = matrix_lines(matrix, ["main", "net2"])
    assert header.split() == [
        "from",
        "to",
        "main",
        "IPv4",
        "main",
        "IPv6",
        "net2",
        "IPv4",
        "net2",
        "IPv6",
    ]
    assert row.split() == ["a", "b", "OK", "FAIL", "-", "-"]
    assert not matrix.ok and matrix.failures == (matrix.results[1],)


def test_directories_may_be_given_as_str() -> None:
    from pathlib import Path

    spec = LabSpec(lab_id="unit", state_root="/tmp/x", cni_bin_dir="/opt/cni", bin_dir="/opt/b")
    assert spec.state_root == Path("/tmp/x") and spec.state_dir == Path("/tmp/x/xcl-unit")
    assert (spec.cni_bin_dir, spec.bin_dir) == (Path("/opt/cni"), Path("/opt/b"))
    assert LabSpec(lab_id="unit").bin_dir is None
    assert attrs.evolve(spec, state_root="/tmp/y").state_dir == Path("/tmp/y/xcl-unit")
