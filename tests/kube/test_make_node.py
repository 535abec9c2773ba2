"""make_node builds realistic, deterministic Node objects."""

from __future__ import annotations

import ipaddress
import json

from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.core.values import Annotations
from xcluster_cni_lib.testing.nodes import make_node


def test_realistic_size_and_shape() -> None:
    node = make_node("w1", index=1)
    size = len(json.dumps(node, separators=(",", ":")))
    assert 11_000 < size < 15_000
    assert len(node["status"]["images"]) == 50
    assert {c["type"] for c in node["status"]["conditions"]} >= {"Ready"}
    assert node["metadata"]["managedFields"] and node["status"]["nodeInfo"]["machineID"]
    assert len(json.dumps(make_node("w1", images=0))) < 5_000


def test_defaults_from_index_are_unique_and_valid() -> None:
    seen: set[tuple[str, ...]] = set()
    for i in range(0, 10_000, 7):
        facts = extract_facts(make_node(f"n{i}", index=i))
        for cidr in facts.pod_cidrs:
            ipaddress.ip_network(cidr)  # strict: host bits clear
        assert ipaddress.IPv4Network(facts.pod_cidrs[0]).subnet_of(
            ipaddress.IPv4Network("10.0.0.0/8")
        )
        seen.add(facts.pod_cidrs + facts.internal_ips)
    assert len(seen) == len(range(0, 10_000, 7))
    assert extract_facts(make_node("n", index=5)).pod_cidrs == (
        "10.244.5.0/24",
        "fd00:10:244:5::/64",
    )


def test_overrides() -> None:
    node = make_node(
        "x",
        pod_cidrs=(),
        internal_ips=["10.1.1.1"],
        annotations={"a": "b"},
        machine_id="m1",
    )
    facts = extract_facts(node, annotations=Annotations(cidr="a"))
    assert facts.pod_cidrs == () and "podCIDR" not in node["spec"]
    assert facts.internal_ips == ("10.1.1.1",)
    assert facts.cidr_annotation == "b" and facts.machine_id == "m1"
    assert make_node("x", index=2) == make_node("x", index=2)
