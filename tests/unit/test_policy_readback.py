"""Reading the policy tables back: a listing recorded from nft 1.0.6 (``nft -j list table``
of both tables, after ``table_document`` of the state below, on Linux 6.18) reads as the
wanted tables, and tampering becomes the element changes or the rewrite that repairs it."""

from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path
from typing import Any

from xcluster_cni_lib.core.policyfacts import build_view
from xcluster_cni_lib.core.policynft import (
    PolicyState,
    compile_node,
    read_tables,
    repair_document,
    table_name,
    wanted_tables,
)

LISTING = Path(__file__).resolve().parent.parent / "data" / "nft-policy-listing.json"
MAC = "02:00:00:00:00:01"
TABLE = table_name(202)


def pod(
    ns: str, name: str, ips: list[str], labels: dict[str, str], node: str = "n1", **kw: Any
) -> dict[str, Any]:
    ports = [{"name": n, "containerPort": p, "protocol": pr} for n, p, pr in kw.get("ports", [])]
    return {
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIPs": [{"ip": i} for i in ips]},
    }


def recorded_state() -> PolicyState:
    """The state the listing was recorded with."""
    pods = [
        pod("a", "web", ["10.9.0.3", "fd09::3"], {"app": "web"}, ports=[("http", 8080, "TCP")]),
        pod("a", "cli", ["10.9.0.2", "fd09::2"], {"app": "cli"}),
        pod("b", "x", ["10.9.1.5", "fd09:1::5"], {"app": "x"}, node="n2"),
    ]
    namespaces = [
        {"metadata": {"name": "a", "labels": {"kubernetes.io/metadata.name": "a"}}},
        {"metadata": {"name": "b", "labels": {"team": "b"}}},
    ]
    policies = [
        {
            "metadata": {"namespace": "a", "name": "web"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [
                    {
                        "from": [
                            {"podSelector": {"matchLabels": {"app": "cli"}}},
                            {"namespaceSelector": {"matchLabels": {"team": "b"}}},
                        ],
                        "ports": [
                            {"port": "http"},
                            {"port": 9000, "endPort": 9100, "protocol": "UDP"},
                        ],
                    },
                    {
                        "from": [
                            {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}
                        ]
                    },
                ],
            },
        },
        {
            "metadata": {"namespace": "a", "name": "deny-egress"},
            "spec": {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "SCTP"}]}
                ],
            },
        },
    ]
    view = build_view(pods=pods, namespaces=namespaces, policies=policies)
    assert view.problems == ()
    return compile_node(view, node="n1")


def listing() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = json.loads(LISTING.read_text())["nftables"]
    return objects


def only_metainfo(document: dict[str, Any] | None) -> bool:
    return document is not None and document["nftables"][1:] == []


def test_the_recorded_listing_is_the_wanted_tables() -> None:
    state = recorded_state()
    listed = read_tables(listing())
    assert listed == wanted_tables(TABLE, state, bridge_mac=MAC)
    assert only_metainfo(repair_document(TABLE, listed, state, bridge_mac=MAC))


def test_missing_and_foreign_elements_are_repaired_element_by_element() -> None:
    objects = listing()
    for obj in objects:
        spec = obj.get("set") or obj.get("map")
        if spec and spec["name"] == "in4":
            removed = spec["elem"].pop(0)
        if spec and spec["name"] == "policed4":
            spec["elem"].append("10.9.0.77")
    repair = repair_document(TABLE, read_tables(objects), recorded_state(), bridge_mac=MAC)
    assert repair is not None
    assert repair["nftables"][1:] == [
        {
            "delete": {
                "element": {
                    "family": "bridge",
                    "table": TABLE,
                    "name": "policed4",
                    "elem": ["10.9.0.77"],
                }
            }
        },
        {"add": {"element": {"family": "inet", "table": TABLE, "name": "in4", "elem": [removed]}}},
    ]


def test_a_flushed_set_is_refilled() -> None:
    objects = listing()
    for obj in objects:
        if "set" in obj and obj["set"]["name"] == "egress4":
            del obj["set"]["elem"]
    repair = repair_document(TABLE, read_tables(objects), recorded_state(), bridge_mac=MAC)
    assert repair is not None
    (add,) = repair["nftables"][1:]
    assert add["add"]["element"]["name"] == "egress4"
    assert sorted(add["add"]["element"]["elem"]) == ["10.9.0.2", "10.9.0.3"]


def test_structural_tampering_asks_for_a_rewrite() -> None:
    state = recorded_state()
    base = listing()

    def without(predicate: Any) -> list[dict[str, Any]]:
        return [o for o in copy.deepcopy(base) if not predicate(o)]

    tampered = [
        without(
            lambda o: "rule" in o and o["rule"]["chain"] == "ingress" and "drop" in json.dumps(o)
        ),
        without(lambda o: "chain" in o and o["chain"]["name"] == "egress"),
        without(lambda o: "set" in o and o["set"]["name"] == "self6"),
        without(
            lambda o: o.get("set", o.get("chain", o.get("rule", {}))).get("family") == "bridge"
        ),
        [
            *copy.deepcopy(base),
            {
                "rule": {
                    "family": "inet",
                    "table": TABLE,
                    "chain": "forward",
                    "expr": [{"accept": None}],
                }
            },
        ],
    ]
    for objects in tampered:
        assert repair_document(TABLE, read_tables(objects), state, bridge_mac=MAC) is None
    # and a table without its bridge part is right for a node without a bridge
    no_bridge = without(
        lambda o: o.get("set", o.get("chain", o.get("rule", {}))).get("family") == "bridge"
    )
    assert only_metainfo(repair_document(TABLE, read_tables(no_bridge), state, bridge_mac=None))


def test_a_different_desired_state_is_an_element_change() -> None:
    state = recorded_state()
    changed = PolicyState(
        ingress=state.ingress,
        egress=state.egress - {ipaddress.ip_address("10.9.0.3")},
        vmaps=state.vmaps,
        chains=state.chains,
    )
    repair = repair_document(TABLE, read_tables(listing()), changed, bridge_mac=MAC)
    assert repair is not None and repair["nftables"][1:]
    assert all("delete" in c for c in repair["nftables"][1:])
