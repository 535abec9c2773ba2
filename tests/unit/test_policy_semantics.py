"""NetworkPolicy semantics, case by case: each case is a small two-node cluster with some
policies and the full list of connections it implies, allowed and denied. Every
expectation is checked twice: against the oracle (``core.policy.allowed``) and against the
nftables documents compiled for both nodes, run by ``tests/unit/policyeval.py``."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tests.unit.policyeval import Table, cluster_allows
from xcluster_cni_lib.core.policy import allowed, allowed_ips
from xcluster_cni_lib.core.policyfacts import PolicyView, build_view, parse_pod
from xcluster_cni_lib.core.policynft import compile_node, table_document

ip = ipaddress.ip_address

N1, N2 = "192.168.0.1", "192.168.0.2"  # node addresses
WEB, CLI, FAR, BCLI, OTHER = "10.0.1.2", "10.0.1.3", "10.0.2.2", "10.0.2.3", "10.0.1.4"
WEB6, CLI6 = "fd01::2", "fd01::3"
EXT, EXT2 = "172.16.1.1", "172.16.0.9"


def pod(
    ns: str, name: str, ips: list[str], labels: dict[str, str], node: str, **kw: Any
) -> dict[str, Any]:
    ports = kw.get("ports", [])
    return {
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "hostNetwork": kw.get("host", False),
            "containers": [
                {
                    "name": "c",
                    "ports": [
                        {"name": n, "containerPort": p, "protocol": pr} for n, p, pr in ports
                    ],
                }
            ],
        },
        "status": {"phase": kw.get("phase", "Running"), "podIPs": [{"ip": i} for i in ips]},
    }


PODS = [
    pod(
        "a",
        "web",
        [WEB, WEB6],
        {"app": "web"},
        "n1",
        ports=[("http", 8080, "TCP"), ("dns", 53, "UDP")],
    ),
    pod("a", "cli", [CLI, CLI6], {"app": "cli"}, "n1"),
    pod("a", "far", [FAR], {"app": "cli"}, "n2"),
    pod("b", "cli", [BCLI], {"app": "cli"}, "n2", ports=[("http", 80, "TCP")]),
    pod("b", "other", [OTHER], {"app": "other"}, "n1"),
    pod("a", "host", [N1], {"app": "web"}, "n1", host=True),
    pod("a", "done", ["10.0.1.9"], {"app": "cli"}, "n1", phase="Succeeded"),
]
NAMESPACES = [
    {"metadata": {"name": "a", "labels": {"team": "a"}}},
    {"metadata": {"name": "b", "labels": {"team": "b"}}},
]
NODES = {"n1": [ip(N1), ip("10.0.1.1"), ip("fd00::1")], "n2": [ip(N2), ip("10.0.2.1")]}


def policy(name: str, spec: dict[str, Any], ns: str = "a") -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name}, "spec": spec}


WEB_ONLY = {"matchLabels": {"app": "web"}}
CLI_ONLY = {"matchLabels": {"app": "cli"}}

#: name -> (policies, [(src, dst, protocol, port, allowed)])
CASES: dict[str, tuple[list[dict[str, Any]], list[tuple[str, str, str, int | None, bool]]]] = {
    "no policy allows everything": (
        [],
        [(CLI, WEB, "TCP", 80, True), (EXT, WEB, "UDP", 1, True), (WEB, EXT, "ICMP", None, True)],
    ),
    "default deny ingress": (
        [policy("deny", {"podSelector": {}})],
        [
            (CLI, WEB, "TCP", 80, False),  # same node
            (FAR, WEB, "TCP", 80, False),  # cross node
            (OTHER, WEB, "TCP", 80, False),
            (EXT, FAR, "TCP", 80, False),
            (N1, WEB, "TCP", 80, True),  # its own node
            (N2, FAR, "TCP", 80, True),
            (N1, FAR, "TCP", 80, False),  # another node is just an address
            (WEB, BCLI, "TCP", 80, True),  # egress not isolated, b not isolated
            (WEB, OTHER, "TCP", 80, True),
            (CLI6, WEB6, "TCP", 80, False),
            (BCLI, OTHER, "TCP", 80, True),  # namespace b untouched
        ],
    ),
    "default deny egress": (
        [policy("deny", {"podSelector": {}, "policyTypes": ["Egress"]})],
        [
            (WEB, BCLI, "TCP", 80, False),
            (WEB, OTHER, "TCP", 80, False),  # same node
            (WEB, EXT, "UDP", 53, False),
            (WEB, N1, "TCP", 10250, True),  # its own node
            (FAR, N1, "TCP", 10250, False),
            (BCLI, WEB, "TCP", 80, True),  # ingress not isolated
            (WEB6, CLI6, "TCP", 80, False),
        ],
    ),
    "allow by pod (same namespace only)": (
        [
            policy(
                "web", {"podSelector": WEB_ONLY, "ingress": [{"from": [{"podSelector": CLI_ONLY}]}]}
            )
        ],
        [
            (CLI, WEB, "TCP", 80, True),
            (FAR, WEB, "UDP", 5, True),
            (BCLI, WEB, "TCP", 80, False),  # app=cli, but namespace b
            (OTHER, WEB, "TCP", 80, False),
            (EXT, WEB, "TCP", 80, False),
            (CLI6, WEB6, "TCP", 80, True),
            (CLI, FAR, "TCP", 80, True),  # far is not selected
            (WEB, CLI, "TCP", 80, True),  # no egress policy
            ("10.0.1.9", WEB, "TCP", 80, False),  # a finished pod's address is no pod
        ],
    ),
    "allow by namespace": (
        [
            policy(
                "web",
                {
                    "podSelector": WEB_ONLY,
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}],
                },
            )
        ],
        [(BCLI, WEB, "TCP", 80, True), (OTHER, WEB, "TCP", 80, True), (CLI, WEB, "TCP", 80, False)],
    ),
    "allow by namespace and pod together": (
        [
            policy(
                "web",
                {
                    "podSelector": WEB_ONLY,
                    "ingress": [
                        {
                            "from": [
                                {
                                    "namespaceSelector": {"matchLabels": {"team": "b"}},
                                    "podSelector": CLI_ONLY,
                                }
                            ]
                        }
                    ],
                },
            )
        ],
        [
            (BCLI, WEB, "TCP", 80, True),
            (OTHER, WEB, "TCP", 80, False),
            (CLI, WEB, "TCP", 80, False),
        ],
    ),
    "ipBlock with except (pod addresses included)": (
        [
            policy(
                "web",
                {
                    "podSelector": WEB_ONLY,
                    "ingress": [
                        {
                            "from": [
                                {"ipBlock": {"cidr": "172.16.0.0/16", "except": ["172.16.0.0/24"]}},
                                {"ipBlock": {"cidr": "10.0.2.0/24"}},
                            ]
                        }
                    ],
                },
            )
        ],
        [
            (EXT, WEB, "TCP", 80, True),
            (EXT2, WEB, "TCP", 80, False),  # in the except
            ("172.17.0.1", WEB, "TCP", 80, False),
            (BCLI, WEB, "TCP", 80, True),  # a pod address in the block
            (FAR, WEB, "TCP", 80, True),
            (N2, WEB, "TCP", 80, False),  # node n2 is outside 10.0.2.0/24
            ("10.0.2.1", WEB, "TCP", 80, True),  # n2's bridge address is inside
            (CLI, WEB, "TCP", 80, False),
            (CLI6, WEB6, "TCP", 80, False),  # the blocks are IPv4
        ],
    ),
    "egress ipBlock with except": (
        [
            policy(
                "out",
                {
                    "podSelector": CLI_ONLY,
                    "policyTypes": ["Egress"],
                    "egress": [
                        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}
                    ],
                },
            )
        ],
        [
            (CLI, EXT, "TCP", 443, True),
            (CLI, WEB, "TCP", 80, False),
            (FAR, BCLI, "TCP", 80, False),
            (CLI, N1, "TCP", 80, True),
            (CLI6, WEB6, "TCP", 80, False),
        ],
    ),
    "named ports resolve on the receiving pod": (
        [
            policy(
                "web",
                {
                    "podSelector": {},
                    "ingress": [{"ports": [{"port": "http"}, {"port": "dns", "protocol": "UDP"}]}],
                },
            ),
            policy(
                "cli-out",
                {
                    "podSelector": CLI_ONLY,
                    "policyTypes": ["Egress"],
                    "egress": [{"ports": [{"port": "http"}]}],
                },
            ),
        ],
        [
            (OTHER, WEB, "TCP", 8080, True),
            (OTHER, WEB, "TCP", 80, False),
            (OTHER, WEB, "UDP", 8080, False),  # protocol must match the named port's
            (OTHER, WEB, "UDP", 53, True),
            (OTHER, WEB, "TCP", 53, False),
            (OTHER, CLI, "TCP", 8080, False),  # cli has no port named http
            (CLI, WEB, "TCP", 8080, True),  # cli's egress: http on web is 8080
            (CLI, BCLI, "TCP", 80, True),  # ... and on b/cli 80
            (CLI, BCLI, "TCP", 8080, False),
            (CLI, EXT, "TCP", 8080, False),  # an address has no named ports
        ],
    ),
    "port ranges": (
        [
            policy(
                "web",
                {
                    "podSelector": WEB_ONLY,
                    "ingress": [{"ports": [{"port": 9000, "endPort": 9100}]}],
                },
            )
        ],
        [
            (CLI, WEB, "TCP", 9000, True),
            (CLI, WEB, "TCP", 9100, True),
            (CLI, WEB, "TCP", 9050, True),
            (CLI, WEB, "TCP", 8999, False),
            (CLI, WEB, "TCP", 9101, False),
            (CLI, WEB, "UDP", 9050, False),
            (CLI, WEB, "ICMP", None, False),
        ],
    ),
    "SCTP and protocol-only ports": (
        [
            policy(
                "web",
                {
                    "podSelector": WEB_ONLY,
                    "ingress": [
                        {"ports": [{"protocol": "SCTP", "port": 7777}, {"protocol": "UDP"}]}
                    ],
                },
            )
        ],
        [
            (CLI, WEB, "SCTP", 7777, True),
            (CLI, WEB, "SCTP", 7778, False),
            (CLI, WEB, "TCP", 7777, False),
            (CLI, WEB, "UDP", 1, True),
            (CLI, WEB, "UDP", 65535, True),
        ],
    ),
    "rules without ports allow every protocol": (
        [
            policy(
                "web", {"podSelector": WEB_ONLY, "ingress": [{"from": [{"podSelector": CLI_ONLY}]}]}
            )
        ],
        [(CLI, WEB, "ICMP", None, True), (OTHER, WEB, "ICMP", None, False)],
    ),
    "hostNetwork pods are not policed and no selector picks them": (
        [
            policy("deny", {"podSelector": {}}),
            policy(
                "far", {"podSelector": CLI_ONLY, "ingress": [{"from": [{"podSelector": WEB_ONLY}]}]}
            ),
        ],
        [
            (BCLI, N1, "TCP", 80, True),  # to the hostNetwork pod: not policed
            (N1, FAR, "TCP", 80, False),  # from it, to another node: not app=web
            (WEB, FAR, "TCP", 80, True),
        ],
    ),
    "both ends must allow": (
        [
            policy("deny-in", {"podSelector": WEB_ONLY}),
            policy(
                "cli-out",
                {
                    "podSelector": CLI_ONLY,
                    "egress": [{"to": [{"podSelector": WEB_ONLY}]}],
                    "policyTypes": ["Egress"],
                },
            ),
        ],
        [
            (CLI, WEB, "TCP", 80, False),  # cli may, web refuses
            (FAR, WEB, "TCP", 80, False),
            (CLI, OTHER, "TCP", 80, False),  # web-only egress
            (OTHER, CLI, "TCP", 80, True),
        ],
    ),
    "union of policies": (
        [
            policy(
                "p1",
                {
                    "podSelector": WEB_ONLY,
                    "ingress": [{"from": [{"podSelector": CLI_ONLY}], "ports": [{"port": 80}]}],
                },
            ),
            policy(
                "p2",
                {
                    "podSelector": {},
                    "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 443}]}],
                },
            ),
        ],
        [
            (CLI, WEB, "TCP", 80, True),
            (CLI, WEB, "TCP", 443, True),
            (OTHER, WEB, "TCP", 443, True),
            (OTHER, WEB, "TCP", 80, False),
            (EXT, WEB, "TCP", 443, False),  # namespaceSelector {}: pods only
            (OTHER, CLI, "TCP", 80, False),
        ],
    ),
    "a pod cannot block itself": (
        [policy("deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})],
        [(WEB, WEB, "TCP", 80, True), (WEB6, WEB6, "TCP", 80, True), (WEB, CLI, "TCP", 80, False)],
    ),
}


def compiled(view: PolicyView) -> dict[str, Table]:
    return {
        node: Table(
            table_document("t", compile_node(view, node=node), bridge_mac="02:00:00:00:00:01")
        )
        for node in ("n1", "n2")
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name: str) -> None:
    policies, checks = CASES[name]
    view = build_view(pods=PODS, namespaces=NAMESPACES, policies=policies, node_addresses=NODES)
    assert view.problems == ()
    tables = compiled(view)
    for src, dst, proto, port, expected in checks:
        s, d = ip(src), ip(dst)
        assert allowed_ips(view, s, d, proto, port) is expected, ("oracle", src, dst, proto, port)
        assert cluster_allows(view, tables, s, d, proto, port) is expected, (
            "nft",
            src,
            dst,
            proto,
            port,
        )


def test_allowed_takes_pods_or_addresses() -> None:
    view = build_view(
        pods=PODS,
        namespaces=NAMESPACES,
        policies=[
            policy(
                "web", {"podSelector": WEB_ONLY, "ingress": [{"from": [{"podSelector": CLI_ONLY}]}]}
            )
        ],
        node_addresses=NODES,
    )
    web, cli, other = (parse_pod(p) for p in (PODS[0], PODS[1], PODS[4]))
    assert allowed(view, cli, web, "TCP", 80)
    assert not allowed(view, other, web, "TCP", 80)
    assert not allowed(view, ip(EXT), web, "TCP", 80)
    assert allowed(view, web, ip("fd09::9"), "TCP", 80)  # IPv6 picks web's IPv6 address
    with pytest.raises(ValueError, match="family"):
        allowed(view, other, ip("fd09::9"), "TCP", 80)
