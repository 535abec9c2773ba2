"""NetworkPolicy inputs: selectors as Kubernetes defines them, Pod/Namespace/NetworkPolicy
dicts to facts, policyTypes defaulting, and malformed objects skipped with a problem that
names the object and the field."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from xcluster_cni_lib.core.policyfacts import (
    EVERYTHING,
    FieldError,
    InvalidObject,
    PortSpec,
    Selector,
    build_view,
    parse_pod,
    parse_policy,
    parse_selector,
)

ip = ipaddress.ip_address


# -- selectors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, {}, True),  # empty selects everything
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchLabels": {"a": "1"}}, {}, False),
        ({"matchLabels": {"a": "1", "b": "2"}}, {"a": "1"}, False),  # ANDed
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]},
            {"a": "2"},
            True,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]},
            {"a": "1"},
            False,
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]},
            {"a": "3"},
            True,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"b": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"b": "1"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "1"}, False),
        (
            {
                "matchLabels": {"a": "1"},
                "matchExpressions": [{"key": "b", "operator": "DoesNotExist"}],
            },
            {"a": "1", "b": "x"},
            False,
        ),
    ],
)
def test_selectors_match_as_kubernetes_defines(
    selector: dict[str, Any], labels: dict[str, str], expected: bool
) -> None:
    assert parse_selector(selector, "s").matches(labels) is expected


def test_a_missing_selector_is_the_empty_one_where_parsed_directly() -> None:
    assert parse_selector(None, "s") == EVERYTHING == Selector()
    assert EVERYTHING.everything


@pytest.mark.parametrize(
    ("selector", "field"),
    [
        (
            {"matchExpressions": [{"key": "a", "operator": "Near", "values": ["1"]}]},
            "s.matchExpressions[0].operator",
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "s.matchExpressions[0].values"),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["1"]}]},
            "s.matchExpressions[0].values",
        ),
        ({"matchExpressions": [{"operator": "Exists"}]}, "s.matchExpressions[0].key"),
        ({"matchLabels": {"a": 1}}, "s.matchLabels"),
        ({"matchLabels": []}, "s.matchLabels"),
        ("app=x", "s"),
    ],
)
def test_bad_selectors_name_the_field(selector: object, field: str) -> None:
    with pytest.raises(FieldError) as e:
        parse_selector(selector, "s")
    assert e.value.field == field


# -- pods --------------------------------------------------------------------------------


def pod_dict(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "metadata": {"namespace": "ns", "name": "p", "labels": {"app": "web"}},
        "spec": {
            "nodeName": "n1",
            "containers": [
                {
                    "name": "c",
                    "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9}],
                },
                {"name": "d", "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}]},
            ],
        },
        "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]},
    }
    d.update(over)
    return d


def test_a_pod_becomes_compact_facts() -> None:
    p = parse_pod(pod_dict())
    assert p.key == "ns/p"
    assert p.labels == {"app": "web"}
    assert p.ips == (ip("10.0.0.1"), ip("fd00::1"))
    assert p.named_ports == {"http": ("TCP", 8080), "dns": ("UDP", 53)}
    assert (p.node, p.host_network, p.phase, p.policed) == ("n1", False, "Running", True)


def test_pod_ip_falls_back_to_podip_and_mapped_ipv6_is_ipv4() -> None:
    p = parse_pod(pod_dict(status={"podIP": "::ffff:10.0.0.7"}))
    assert p.ips == (ip("10.0.0.7"),)
    assert p.phase == "Pending"


@pytest.mark.parametrize(
    ("over", "policed"),
    [
        ({"spec": {"hostNetwork": True, "nodeName": "n1"}}, False),
        ({"status": {"phase": "Succeeded", "podIP": "10.0.0.1"}}, False),
        ({"status": {"phase": "Failed", "podIP": "10.0.0.1"}}, False),
        ({"status": {"phase": "Pending"}}, False),  # no address yet
        ({"status": {"phase": "Pending", "podIP": "10.0.0.1"}}, True),
    ],
)
def test_which_pods_are_policed(over: dict[str, Any], policed: bool) -> None:
    assert parse_pod(pod_dict(**over)).policed is policed


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"status": {"podIPs": [{"ip": "10.0.0.300"}]}}, "status.podIPs[0]"),
        ({"metadata": {"name": "p"}}, "metadata.namespace"),
        ({"metadata": {"namespace": "ns"}}, "metadata.name"),
        ({"metadata": {"namespace": "ns", "name": "p", "labels": {"a": 1}}}, "labels"),
        (
            {"spec": {"containers": [{"ports": [{"name": "x", "containerPort": 70000}]}]}},
            "spec.containers[0].ports[0]",
        ),
        (
            {
                "spec": {
                    "containers": [
                        {"ports": [{"name": "x", "containerPort": 1, "protocol": "ICMP"}]}
                    ]
                }
            },
            "spec.containers[0].ports[0]",
        ),
    ],
)
def test_bad_pods_name_the_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidObject) as e:
        parse_pod(pod_dict(**over))
    assert e.value.field == field
    assert e.value.kind == "Pod"


# -- policies ----------------------------------------------------------------------------


def policy_dict(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "pol"}, "spec": spec}


@pytest.mark.parametrize(
    ("spec", "ingress", "egress"),
    [
        ({}, True, False),  # no rules: deny all ingress
        ({"ingress": [{}]}, True, False),
        ({"egress": [{}]}, True, True),  # egress rules make it an egress policy too
        ({"egress": []}, True, False),
        ({"policyTypes": ["Egress"]}, False, True),  # deny all egress
        ({"policyTypes": ["Egress"], "ingress": [{}]}, False, True),
        ({"policyTypes": ["Ingress", "Egress"]}, True, True),
    ],
)
def test_policy_types_default_as_the_api_does(
    spec: dict[str, Any], ingress: bool, egress: bool
) -> None:
    p = parse_policy(policy_dict(spec))
    assert (p.ingress_policy, p.egress_policy) == (ingress, egress)


def test_a_policy_becomes_facts() -> None:
    p = parse_policy(
        policy_dict(
            {
                "podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [
                    {
                        "from": [
                            {"podSelector": {"matchLabels": {"app": "web"}}},
                            {"namespaceSelector": {}},
                            {"podSelector": {}, "namespaceSelector": {"matchLabels": {"t": "x"}}},
                            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                        ],
                        "ports": [
                            {"port": 5432},
                            {"protocol": "UDP", "port": "dns"},
                            {"protocol": "SCTP", "port": 100, "endPort": 200},
                            {"protocol": "UDP"},
                        ],
                    }
                ],
            }
        )
    )
    assert p.pod_selector.matches({"app": "db"}) and not p.pod_selector.matches({})
    rule = p.ingress[0]
    assert rule.peers[0].namespaces is None and rule.peers[0].pods is not None
    assert rule.peers[1].pods is None and rule.peers[1].namespaces == EVERYTHING
    assert rule.peers[2].pods == EVERYTHING and rule.peers[2].namespaces is not None
    block = rule.peers[3].ipblock
    assert (
        block is not None and block.contains(ip("10.2.0.1")) and not block.contains(ip("10.1.0.1"))
    )
    assert rule.ports == (
        PortSpec("TCP", 5432),
        PortSpec("UDP", "dns"),
        PortSpec("SCTP", 100, 200),
        PortSpec("UDP", None),
    )


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"ingress": [{"from": [{}]}]}, "spec.ingress[0].from[0]"),
        (
            {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
            "spec.ingress[0].from[0]",
        ),
        (
            {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]},
            "spec.egress[0].to[0].ipBlock.except[0]",
        ),
        ({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}, "spec.ingress[0].ports[0].protocol"),
        ({"ingress": [{"ports": [{"port": 0}]}]}, "spec.ingress[0].ports[0].port"),
        (
            {"ingress": [{"ports": [{"port": 80, "endPort": 79}]}]},
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            {"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
            "spec.ingress[0].ports[0].endPort",
        ),
        ({"policyTypes": ["Sideways"]}, "spec.policyTypes"),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "spec.podSelector.matchExpressions[0].values",
        ),
        ({"ingress": {}}, "spec.ingress"),
    ],
)
def test_bad_policies_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidObject) as e:
        parse_policy(policy_dict(spec))
    assert (e.value.kind, e.value.key, e.value.field) == ("NetworkPolicy", "ns/pol", field)
    assert "NetworkPolicy ns/pol" in str(e.value) and field in str(e.value)


def test_a_view_skips_malformed_objects_and_reports_them() -> None:
    view = build_view(
        pods=[
            pod_dict(),
            pod_dict(metadata={"namespace": "ns", "name": "bad"}, status={"podIP": "x"}),
            7,  # type: ignore[list-item]
        ],
        namespaces=[{"metadata": {"name": "ns", "labels": {"t": "x"}}}, {"metadata": {}}],
        policies=[
            policy_dict({}),
            policy_dict({"ingress": [{"from": [{}]}]})
            | {"metadata": {"namespace": "ns", "name": "broken"}},
        ],
    )
    assert [p.key for p in view.pods] == ["ns/p"]
    assert list(view.namespaces) == ["ns"]
    assert [p.key for p in view.policies] == ["ns/pol"]
    reported = sorted(str(p) for p in view.problems)
    assert len(reported) == 4
    assert any(r.startswith("Pod ns/bad: bad IP") for r in reported)
    assert any(
        r.startswith("NetworkPolicy ns/broken:") and "spec.ingress[0].from[0]" in r
        for r in reported
    )
