"""Edges of the core's node reading that the mutation target (docs/testing.md) showed
untested: odd machine ids and the field names problems are reported under."""

from __future__ import annotations

from typing import Any

import pytest

from xcluster_cni_lib.core.errors import InvalidNode
from xcluster_cni_lib.core.facts import node_machine_id
from xcluster_cni_lib.core.nodes import FIELD_KEYS, parse_subnets
from xcluster_cni_lib.core.ownnode import find_own
from xcluster_cni_lib.core.values import NodeFacts


def node(machine_id: Any) -> dict[str, Any]:
    return {"metadata": {"name": "n1"}, "status": {"nodeInfo": {"machineID": machine_id}}}


def test_machine_id_is_a_non_empty_string_or_none() -> None:
    assert node_machine_id(node("abc")) == "abc"
    assert node_machine_id(node("")) is None
    assert node_machine_id(node(123)) is None
    assert node_machine_id(node(["abc"])) is None
    assert node_machine_id({}) is None


def test_no_machine_id_matches_no_node_even_a_blank_one() -> None:
    blank = NodeFacts("n1", machine_id="  ")
    assert find_own([blank], name=None, machine_id=None) is None
    assert find_own([blank], name=None, machine_id=" ") is None
    one = NodeFacts("n2", machine_id=" ABC ")
    assert find_own([blank, one], name=None, machine_id="abc") == one


def test_problems_on_kubernetes_fields_are_keyed_by_these_names() -> None:
    assert frozenset({"spec.podCIDRs", "status.addresses", "metadata.name"}) == FIELD_KEYS


def test_only_a_slash_0_is_called_a_default_route() -> None:
    with pytest.raises(InvalidNode) as info:
        parse_subnets("0.0.0.0/1", node="n1", key="k")
    assert info.value.reason == "0.0.0.0/1 is broader than /8, the shortest pod CIDR allowed"
    with pytest.raises(InvalidNode) as info:
        parse_subnets("::/0", node="n1", key="k")
    assert info.value.reason == "::/0 is a default route, not a pod CIDR"
