"""The compiled nftables state against the oracle: random clusters (pods, namespaces,
policies as API dicts), compiled for each node, run by ``tests/unit/policyeval.py``'s
evaluator of the emitted documents, must allow exactly the connections ``core.policy``
allows. Plus: element updates reach the same state as a rewrite, and the rule count does
not grow with pods."""

from __future__ import annotations

import ipaddress
import itertools
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.policyeval import Table, cluster_allows
from xcluster_cni_lib.core.policy import allowed_ips
from xcluster_cni_lib.core.policyfacts import PolicyView, build_view
from xcluster_cni_lib.core.policynft import (
    PolicyState,
    address_element,
    compile_node,
    delete_document,
    table_document,
    table_name,
    update_document,
)

ip = ipaddress.ip_address
MAC = "02:00:00:00:00:01"
NODES = {
    "n1": [ip("192.168.0.1"), ip("10.0.1.1"), ip("fd00::1")],
    "n2": [ip("192.168.0.2"), ip("10.0.2.1")],
}
EXTERNAL = [ip(a) for a in ("172.16.5.5", "10.0.1.200", "8.8.8.8", "fd01::99", "2001:db8::1")]
PROBES = [
    ("TCP", 80),
    ("TCP", 8080),
    ("TCP", 81),
    ("UDP", 53),
    ("UDP", 80),
    ("SCTP", 80),
    ("ICMP", None),
]

KEYS = ["app", "tier"]
VALUES = ["x", "y"]
labels = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2)
expression = st.one_of(
    st.builds(
        lambda k, op, vs: {"key": k, "operator": op, "values": vs},
        st.sampled_from(KEYS),
        st.sampled_from(["In", "NotIn"]),
        st.lists(st.sampled_from(VALUES), min_size=1, max_size=2, unique=True),
    ),
    st.builds(
        lambda k, op: {"key": k, "operator": op},
        st.sampled_from(KEYS),
        st.sampled_from(["Exists", "DoesNotExist"]),
    ),
)
selector = st.one_of(
    st.just({}),
    st.builds(lambda m: {"matchLabels": m}, labels),
    st.builds(lambda e: {"matchExpressions": e}, st.lists(expression, min_size=1, max_size=2)),
)
BLOCKS = {
    "10.0.0.0/16": ["10.0.1.0/28", "10.0.1.4/30", "10.0.2.0/24"],
    "10.0.1.0/24": ["10.0.1.2/31"],
    "172.16.0.0/12": ["172.16.5.0/24"],
    "0.0.0.0/0": ["10.0.0.0/8", "192.168.0.1/32"],
    "fd01::/64": ["fd01::/124"],
    "::/0": ["fd02::/64"],
}
ipblock = st.sampled_from(sorted(BLOCKS)).flatmap(
    lambda cidr: st.builds(
        lambda ex: {"ipBlock": {"cidr": cidr, "except": ex}} if ex else {"ipBlock": {"cidr": cidr}},
        st.lists(st.sampled_from(BLOCKS[cidr]), max_size=1),
    )
)
peer = st.one_of(
    st.builds(lambda s: {"podSelector": s}, selector),
    st.builds(lambda s: {"namespaceSelector": s}, selector),
    st.builds(lambda p, n: {"podSelector": p, "namespaceSelector": n}, selector, selector),
    ipblock,
)
port = st.one_of(
    st.builds(lambda p: {"protocol": p}, st.sampled_from(["TCP", "UDP", "SCTP"])),
    st.builds(
        lambda p, n: {"protocol": p, "port": n},
        st.sampled_from(["TCP", "UDP", "SCTP"]),
        st.sampled_from([80, 53, 8080, "http", "dns"]),
    ),
    st.builds(
        lambda n, w: {"port": n, "endPort": n + w},
        st.sampled_from([53, 79, 8000]),
        st.sampled_from([0, 1, 100]),
    ),
)


def rules(peers_key: str) -> st.SearchStrategy[list[dict[str, Any]]]:
    rule = st.builds(
        lambda ps, pts: {k: v for k, v in ((peers_key, ps), ("ports", pts)) if v is not None},
        st.one_of(st.none(), st.lists(peer, max_size=2)),
        st.one_of(st.none(), st.lists(port, max_size=2)),
    )
    return st.lists(rule, max_size=2)


policy = st.builds(
    lambda i, ns, sel, types, ing, eg: {
        "metadata": {"namespace": ns, "name": f"p{i}"},
        "spec": {
            "podSelector": sel,
            **({"policyTypes": types} if types is not None else {}),
            "ingress": ing,
            "egress": eg,
        },
    },
    st.integers(0, 1000),
    st.sampled_from(["a", "b"]),
    selector,
    st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]),
    rules("from"),
    rules("to"),
)
NAMED = st.dictionaries(
    st.sampled_from(["http", "dns"]),
    st.sampled_from([("TCP", 80), ("TCP", 8080), ("UDP", 80), ("UDP", 53)]),
    max_size=2,
)


@st.composite
def clusters(draw: st.DrawFn) -> PolicyView:
    pods = []
    for i in range(draw(st.integers(2, 8))):
        node = draw(st.sampled_from(["n1", "n2"]))
        n = int(node[1])
        host = draw(st.integers(0, 9)) == 0
        ips = [str(NODES[node][0])] if host else [f"10.0.{n}.{i + 2}"]
        if not host and draw(st.booleans()):
            ips.append(f"fd0{n}::{i + 2}")
        named = draw(NAMED)
        pods.append(
            {
                "metadata": {
                    "namespace": draw(st.sampled_from(["a", "b"])),
                    "name": f"pod{i}",
                    "labels": draw(labels),
                },
                "spec": {
                    "nodeName": node,
                    "hostNetwork": host,
                    "containers": [
                        {
                            "name": "c",
                            "ports": [
                                {"name": k, "protocol": p, "containerPort": v}
                                for k, (p, v) in named.items()
                            ],
                        }
                    ],
                },
                "status": {
                    "phase": draw(
                        st.sampled_from(["Running", "Running", "Running", "Pending", "Succeeded"])
                    ),
                    "podIPs": [{"ip": a} for a in ips],
                },
            }
        )
    namespaces = [{"metadata": {"name": ns, "labels": draw(labels)}} for ns in ("a", "b")]
    policies = {p["metadata"]["name"]: p for p in draw(st.lists(policy, min_size=1, max_size=4))}
    view = build_view(
        pods=pods, namespaces=namespaces, policies=policies.values(), node_addresses=NODES
    )
    assert view.problems == (), view.problems
    return view


def addresses(view: PolicyView) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    found = (
        {a for p in view.pods for a in p.ips}
        | {a for v in NODES.values() for a in v}
        | set(EXTERNAL)
    )
    return sorted(found, key=lambda a: (a.version, int(a)))


def tables(view: PolicyView) -> dict[str, Table]:
    return {
        n: Table(table_document("t", compile_node(view, node=n), bridge_mac=MAC)) for n in NODES
    }


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_the_compiled_tables_allow_exactly_what_the_oracle_allows(view: PolicyView) -> None:
    compiled = tables(view)
    by_ip = view.pod_by_ip()
    for src, dst in itertools.product(addresses(view), repeat=2):
        if src.version != dst.version:
            continue
        for proto, p in PROBES:
            want = allowed_ips(view, src, dst, proto, p, by_ip=by_ip)
            got = cluster_allows(view, compiled, src, dst, proto, p)
            assert got == want, (str(src), str(dst), proto, p, want)


def canonical(table: Table) -> dict[str, list[str]]:
    return {
        name: sorted(json.dumps(e, sort_keys=True) for e in elems)
        for name, elems in table.sets.items()
    }


def apply_update(table: Table, document: dict[str, Any]) -> None:
    """Element deletes and adds as the kernel applies them: a delete of an element that
    is not there, or an add of one that is, fails the transaction."""
    for command in document["nftables"][1:]:
        ((verb, body),) = command.items()
        spec = body["element"]
        if spec["family"] != "inet":
            continue
        elems = table.sets[spec["name"]]
        for e in spec["elem"]:
            if verb == "delete":
                assert e in elems, (spec["name"], e)
                elems.remove(e)
            else:
                assert e not in elems, (spec["name"], e)
                elems.append(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), clusters())
def test_an_element_update_reaches_the_rewritten_state(a: PolicyView, b: PolicyView) -> None:
    for node in NODES:
        present, desired = compile_node(a, node=node), compile_node(b, node=node)
        update = update_document("t", present, desired, bridge=True)
        if update is None:
            assert present.shape() != desired.shape()
            continue
        table = Table(table_document("t", present, bridge_mac=MAC))
        apply_update(table, update)
        assert canonical(table) == canonical(Table(table_document("t", desired, bridge_mac=MAC)))


def test_an_unchanged_state_updates_nothing() -> None:
    view = build_view(
        pods=[pod_dict(i, {"app": "x"}) for i in range(3)],
        policies=[
            {
                "metadata": {"namespace": "a", "name": "p"},
                "spec": {"podSelector": {}, "ingress": [{}]},
            }
        ],
    )
    s = compile_node(view, node="n1")
    assert update_document("t", s, s, bridge=True) == {
        "nftables": [{"metainfo": {"json_schema_version": 1}}]
    }


def pod_dict(i: int, lab: dict[str, str], ns: str = "a") -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": f"pod{i}", "labels": lab},
        "spec": {"nodeName": "n1" if i % 2 else "n2"},
        "status": {"phase": "Running", "podIPs": [{"ip": str(ip("10.1.0.0") + i)}]},
    }


def rule_count(state: PolicyState) -> int:
    doc = table_document("t", state, bridge_mac=MAC)
    return sum(1 for c in doc["nftables"] if "add" in c and "rule" in c["add"])


def test_rules_do_not_grow_with_pods_or_peers() -> None:
    spec = {
        "podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}
        ],
    }

    def state(n: int) -> PolicyState:
        pods = [pod_dict(i, {"app": "db" if i % 3 == 0 else "web"}) for i in range(n)]
        return compile_node(
            build_view(
                pods=pods, policies=[{"metadata": {"namespace": "a", "name": "p"}, "spec": spec}]
            ),
            node="n1",
        )

    small, large = state(12), state(1200)
    assert rule_count(small) == rule_count(large)
    assert small.shape() == large.shape()
    assert large.count() > 10 * small.count() / 2  # the pods went into elements
    # 400 web peers are one vmap range each at most, one class
    assert len(large.chains) == 1
    assert update_document("t", small, large, bridge=True) is not None


def test_documents_name_the_instance_tables_and_the_bridge_is_optional() -> None:
    view = build_view(
        pods=[pod_dict(1, {})], policies=[{"metadata": {"namespace": "a", "name": "p"}, "spec": {}}]
    )
    s = compile_node(view, node="n1")
    assert table_name(202) == "xcluster-cni-policy-202"
    with_bridge = table_document("xcluster-cni-policy-202", s, bridge_mac=MAC)["nftables"]
    without = table_document("xcluster-cni-policy-202", s, bridge_mac=None)["nftables"]

    def tables_of(cmds: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {
            (c["add"]["table"]["family"], c["add"]["table"]["name"])
            for c in cmds
            if "add" in c and "table" in c["add"]
        }

    assert tables_of(with_bridge) == {
        ("inet", "xcluster-cni-policy-202"),
        ("bridge", "xcluster-cni-policy-202"),
    }
    # without a bridge MAC, any bridge table is still deleted, none created
    assert (
        sum(
            1 for c in without if "add" in c and c["add"].get("table", {}).get("family") == "bridge"
        )
        == 1
    )
    assert any(c.get("delete", {}).get("table", {}).get("family") == "bridge" for c in without)
    assert s.ingress == {ip("10.1.0.1")} and s.egress == frozenset()
    deleted = delete_document("xcluster-cni-policy-202")["nftables"]
    assert [next(iter(c)) for c in deleted[1:]] == ["add", "delete", "add", "delete"]
    update = update_document("t", s, compile_node(build_view(), node="n1"), bridge=False)
    assert update is not None
    assert all(c["delete"]["element"]["family"] == "inet" for c in update["nftables"][1:])


def test_address_elements_take_the_smallest_form() -> None:
    assert address_element(ip("10.0.0.1"), ip("10.0.0.1")) == "10.0.0.1"
    assert address_element(ip("10.0.0.0"), ip("10.0.0.255")) == {
        "prefix": {"addr": "10.0.0.0", "len": 24}
    }
    assert address_element(ip("0.0.0.0"), ip("255.255.255.255")) == {
        "prefix": {"addr": "0.0.0.0", "len": 0}
    }
    assert address_element(ip("10.0.0.1"), ip("10.0.0.2")) == {"range": ["10.0.0.1", "10.0.0.2"]}
    assert address_element(ip("::"), ip("::1")) == {"prefix": {"addr": "::", "len": 127}}


def test_the_evaluator_catches_a_wrong_table() -> None:
    """The central test is only as good as the evaluator: tables compiled without the
    policy, or with a class chain's sets emptied, must disagree with the oracle."""
    pods = [pod_dict(1, {"app": "db"}), pod_dict(2, {"app": "web"})]
    spec = {
        "podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 80}]}
        ],
    }
    view = build_view(
        pods=pods,
        policies=[{"metadata": {"namespace": "a", "name": "p"}, "spec": spec}],
        node_addresses=NODES,
    )
    web, db = ip("10.1.0.2"), ip("10.1.0.1")
    assert allowed_ips(view, web, db, "TCP", 80) and not allowed_ips(view, web, db, "TCP", 81)
    assert cluster_allows(view, tables(view), web, db, "TCP", 80)
    assert not cluster_allows(view, tables(view), web, db, "TCP", 81)
    assert cluster_allows(
        view, tables(build_view(pods=pods, node_addresses=NODES)), web, db, "TCP", 81
    )
    broken = tables(view)
    for name in broken["n1"].sets:
        if name.endswith("-ports"):
            broken["n1"].sets[name] = []
    assert not cluster_allows(view, broken, web, db, "TCP", 80)
