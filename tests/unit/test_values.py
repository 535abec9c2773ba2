"""The frozen values' behaviour that users read or branch on: texts, truth values, JSON."""

from __future__ import annotations

import ipaddress

import pytest

from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.core.values import (
    Annotations,
    NodeNetwork,
    Plan,
    Problem,
    Route,
    RouteOutcome,
)

net = ipaddress.ip_network
ip = ipaddress.ip_address

R4 = Route(dst=net("10.244.1.0/24"), gateway=ip("192.168.1.1"), node="n1")
R6 = Route(dst=net("fd00:10:244:1::/64"), gateway=ip("fd00:1::1"), node="n1")


# -- Plan: an empty plan is skipped, any other is applied ----------------------------


@pytest.mark.parametrize(
    ("plan", "truth", "size"),
    [
        (Plan(), False, 0),
        (Plan(add=(R4,)), True, 1),  # only adds
        (Plan(replace=(R4,)), True, 1),  # only replaces
        (Plan(delete=(R4,)), True, 1),  # only deletes
        (Plan(add=(R4,), delete=(R6,)), True, 2),  # adds and deletes
        (Plan(add=(R4,), replace=(R6,), delete=(R4, R6)), True, 4),
    ],
)
def test_plan_is_true_when_it_changes_anything(plan: Plan, truth: bool, size: int) -> None:
    assert bool(plan) is truth
    assert len(plan) == size


# -- RouteOutcome.ok: what counts as success ----------------------------------------


@pytest.mark.parametrize(
    ("status", "ok"),
    [("ok", True), ("gone", True), ("conflict", False), ("unreachable", False), ("error", False)],
)
def test_route_outcome_ok(status: str, ok: bool) -> None:
    assert RouteOutcome("delete", R4, status=status).ok is ok


def test_route_outcome_defaults_to_ok() -> None:
    outcome = RouteOutcome("add", R4)
    assert outcome.status == "ok" and outcome.reason == "" and outcome.ok is True


# -- Problem: the text in logs and in `xcluster-cni plan` ----------------------------


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        (
            Problem("n1", "no pod CIDR; no route to this node"),
            "node n1: no pod CIDR; no route to this node",
        ),
        (
            Problem("n1", "annotation missing", key="example.com/cidr"),
            "node n1: annotation missing (example.com/cidr)",
        ),
        (
            Problem("n1", "not a CIDR", key="example.com/cidr", value="10.0.0.0/33"),
            "node n1: not a CIDR (example.com/cidr='10.0.0.0/33')",
        ),
        # a value without a key names no place, so it is not printed
        (Problem("n2", "overlap", value="10.0.0.0/24"), "node n2: overlap"),
    ],
)
def test_problem_text(problem: Problem, text: str) -> None:
    assert str(problem) == text


# -- Route: JSON for `xcluster-cni plan` and the daemon's log ------------------------


def test_route_json() -> None:
    assert R4.to_json() == {"dst": "10.244.1.0/24", "gateway": "192.168.1.1", "node": "n1"}
    assert R6.to_json() == {"dst": "fd00:10:244:1::/64", "gateway": "fd00:1::1", "node": "n1"}
    anonymous = Route(dst=net("10.244.1.0/24"), gateway=ip("192.168.1.1"))
    assert anonymous.to_json() == {"dst": "10.244.1.0/24", "gateway": "192.168.1.1"}
    assert list(R4.to_json()) == ["dst", "gateway", "node"]


def test_route_family_and_node_not_compared() -> None:
    assert (R4.family, R6.family) == (4, 6)
    same, other = R4, Route(dst=R4.dst, gateway=R4.gateway, node="other")
    assert same == other
    moved = Route(dst=R4.dst, gateway=ip("192.168.1.2"), node="n1")
    assert same != moved


def test_node_network_lookup_by_family() -> None:
    n = NodeNetwork(
        "n1",
        cidrs=(net("10.244.1.0/24"), net("fd00::/64")),
        addresses=(ip("192.168.1.1"), ip("fd00:1::1")),
    )
    assert (n.cidr(4), n.cidr(6)) == (net("10.244.1.0/24"), net("fd00::/64"))
    assert (n.address(4), n.address(6)) == (ip("192.168.1.1"), ip("fd00:1::1"))
    only6 = NodeNetwork("n2", cidrs=(net("fd00::/64"),), addresses=(ip("fd00:1::2"),))
    assert only6.cidr(4) is None and only6.address(4) is None
    # problems do not take part in comparisons (a re-parse with new findings is equal)
    assert only6 == NodeNetwork(
        "n2",
        cidrs=(net("fd00::/64"),),
        addresses=(ip("fd00:1::2"),),
        problems=(Problem("n2", "x"),),
    )


def test_annotation_keys_must_be_strings() -> None:
    with pytest.raises(InputError) as info:
        Annotations(cidr=5)  # type: ignore[arg-type]  # as from a parsed YAML config
    assert str(info.value) == "cidr annotation: 5 is not a string"
    assert Annotations(address="example.com/ip").keys() == ("example.com/ip",)
