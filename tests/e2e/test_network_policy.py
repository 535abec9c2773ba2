"""NetworkPolicy end to end: a lab of two nodes (three pods each, two Kubernetes
namespaces, an outside host with two addresses) whose daemons run with
``NETWORK_POLICY=true`` against the API-server double running inside the lab
(``tests/policy/labapi.py``).

Each case is one or more steps; a step changes the API's objects (policies, pod labels,
namespace labels), waits until both nodes' policy tables are exactly what ``compile_node``
makes of the API's state, then probes the *full* reachability matrix once: every pod to
every other pod, node and outside address and back, IPv4 and IPv6, TCP 80/8080/9090 and
UDP 53, all at once (``tests/policy/probe.py``), and compares it with the oracle
(``core.policy.allowed_ips``) over a view of the same objects. A failure prints every
probe that differs and the source x destination grid of each port that has one.

Same-node (bridged on ``cbr0``) and cross-node pairs are in every matrix; every case
runs in two labs: nodes on one segment with direct routes, and nodes on separate subnets
whose pods reach each other only through the vxlan overlay. SCTP is probed when the
kernel has it (else that case is skipped, saying why). A hostNetwork pod (on n2,
labelled like a web pod) is in the API all along: it is neither policed nor selected by
a pod selector.

``XCLUSTER_POLICY_E2E_SELF=1`` makes the test write the compiled tables itself instead of
the daemon (to tell a daemon bug from a compiler or probe bug).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
import pytest

from tests.apiserver.objects import make_network_policy, make_pod
from tests.policy.labapi import LabApi, PodSpec
from tests.policy.matrix import Comparison, all_probes, expected, measure, summary
from tests.policy.probe import Endpoint, Probe, Prober, unsupported
from xcluster_cni_lib.core.overlay import DEVICE_PREFIX
from xcluster_cni_lib.core.policynft import compile_node, table_document
from xcluster_cni_lib.lab import MAIN, Lab, LabSpec
from xcluster_cni_lib.lab.shell import ip_batch, run

pytestmark = pytest.mark.root

PREFIX = "xct"
SELF_ENFORCE = os.environ.get("XCLUSTER_POLICY_E2E_SELF") == "1"

WEB = {"app": "web"}
DB = {"app": "db"}
PODS = (
    PodSpec("a1", "n1", "alpha", WEB, {"http": 8080, "dns": (53, "UDP")}),
    PodSpec("a2", "n1", "alpha", DB, {"http": 80, "metrics": 9090}),
    PodSpec("b1", "n1", "beta", WEB, {"http": 8080}),
    PodSpec("a3", "n2", "alpha", WEB, {"http": 8080, "dns": (53, "UDP")}),
    PodSpec("b2", "n2", "beta", {"app": "cli"}),
    PodSpec("b3", "n2", "beta", DB, {"http": (80, "UDP"), "metrics": 9090}),
)
NAMESPACES = {"alpha": {"team": "a", "env": "prod"}, "beta": {"team": "b", "env": "prod"}}
PORTS = (("TCP", 80), ("TCP", 8080), ("TCP", 9090), ("UDP", 53))
# the outside host: its own address (where the API double listens too) and a second one
EXT2 = ("203.0.113.20", "2001:db8:1::20")


@attrs.define
class PolicyLab:
    lab: Lab
    api: LabApi
    prober: Prober
    endpoints: dict[str, Endpoint]
    pods: frozenset[str]
    results: list[Comparison] = attrs.field(factory=list)

    def cidr(self, node: str, family: int) -> str:
        return str(self.lab.node(node).cidr("main", family))

    def ip(self, name: str, family: int) -> str:
        address = self.endpoints[name].address(family)
        assert address is not None
        return str(address)


def _spec(**main: Any) -> LabSpec:
    net = attrs.evolve(MAIN, **main) if main else MAIN
    return LabSpec(nodes=2, pods_per_node=0, networks=(net,), outside=True, prefix=PREFIX)


def _self_enforce(env: PolicyLab) -> None:
    view = env.api.view()
    for node in env.lab.names():
        doc = table_document(
            env.api.table, compile_node(view, node=node), bridge_mac=env.api.bridge_mac(node)
        )
        run(env.lab.node(node).namespace, ["nft", "-j", "-f", "-"], stdin=json.dumps(doc))


# "direct": both nodes on one segment, direct routes; "vxlan": each node on its own
# subnet behind the router, pods reach each other only through the vxlan overlay
SHAPES = {"direct": {}, "vxlan": {"routed": True, "overlay": "vxlan", "mtu": 1450}}
# POLICY_SAME_NODE per shape: the daemon's default in one, the kustomize component's in
# the other (bridged and judged through br_netfilter where the host has it, as the lab's
# nodes then pass bridged frames to the IP hooks; the redirect by itself where not)
SAME_NODE = {"direct": "redirect", "vxlan": "br-netfilter"}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def policy_lab(request: pytest.FixtureRequest) -> Iterator[PolicyLab]:
    yield from _policy_lab(_spec(**SHAPES[request.param]), same_node=SAME_NODE[request.param])


def _policy_lab(spec: LabSpec, *, same_node: str = "redirect") -> Iterator[PolicyLab]:
    with Lab(spec) as lab:
        if spec.main.overlay == "vxlan":  # the other node's pods only through the overlay
            for node in lab.names():
                devices = {r.device for r in lab.routes(node, "main")}
                assert devices == {f"{DEVICE_PREFIX}{spec.main.protocol}"}, devices
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(
                pool.map(
                    lambda p: lab.add_pod(p.node, name=p.name, k8s_namespace=p.namespace), PODS
                )
            )
        # the outside host's second address, and the router's way to the pods (so that
        # outside addresses can reach pods, and pods them, without masquerade)
        ip_batch(
            spec.outside_ns,
            [f"address add {EXT2[0]}/24 dev eth0", f"address add {EXT2[1]}/64 dev eth0 nodad"],
        )
        ip_batch(
            spec.switch_ns,
            [
                f"route add {node.cidr('main', f)} via {node.address('main', f)}"
                for node in lab.nodes.values()
                for f in (4, 6)
            ],
        )
        endpoints = [
            Endpoint(p.name, lab.pod(p.name).netns, lab.pod(p.name).addresses["main"]) for p in PODS
        ]
        endpoints += [
            Endpoint(n, lab.node(n).namespace, lab.node(n).addresses["main"]) for n in lab.names()
        ]
        endpoints += [
            Endpoint("ext", spec.outside_ns, (spec.outside_address(4), spec.outside_address(6))),
            Endpoint("ext2", spec.outside_ns, tuple(ipaddress.ip_address(a) for a in EXT2)),
        ]
        # not policed, and no pod selector selects it, whatever its labels
        hostnet = make_pod(
            "hostnet",
            "alpha",
            node="n2",
            ips=[str(a) for a in lab.node("n2").addresses["main"]],
            labels=WEB,
            host_network=True,
        )
        ports = list(PORTS)
        if unsupported("SCTP") is None:
            ports.append(("SCTP", 80))
        with (
            LabApi(
                lab,
                pods=PODS,
                namespaces=NAMESPACES,
                extra_pods=[hostnet],
                workdir=lab.state_dir / "policy",
                same_node=same_node,
            ) as api,
            Prober(endpoints, ports) as prober,
        ):
            env = PolicyLab(
                lab, api, prober, {e.name: e for e in endpoints}, frozenset(p.name for p in PODS)
            )
            if not SELF_ENFORCE:
                api.enable_policy()
                api.wait_enforced(timeout=30.0)  # the daemons' first start, on a busy machine
            yield env


def _policy(name: str, namespace: str, selector: dict[str, Any], **spec: Any) -> dict[str, Any]:
    types = spec.pop("types", ["Ingress"])
    return make_network_policy(
        name,
        namespace,
        pod_selector={"matchLabels": selector} if selector else {},
        policy_types=types,
        **spec,
    )


Step = Callable[[PolicyLab], None]


def run_case(
    env: PolicyLab,
    name: str,
    steps: Sequence[tuple[str, Step]],
    *,
    ports: Sequence[tuple[str, int]] = PORTS,
) -> list[Comparison]:
    """Reset the API to the baseline, then per step: change, wait for enforcement, probe
    the whole matrix, compare. Asserts after the last step, with every step's report."""
    probes = all_probes(env.endpoints.values(), ports, involves=lambda e: e.name in env.pods)
    # the baseline enforced first: no step then takes the tables a case left behind
    # (with the reset's events still on their way) for its own
    env.api.reset()
    _enforced(env)
    done = []
    for label, step in steps:
        step(env)
        took = _enforced(env)
        want = expected(env.api.view(), env.endpoints, probes)
        got = measure(env.prober, want)
        done.append(Comparison(f"{name}: {label}", want, got, enforced_after=took))
    env.results += done
    failed = [c for c in done if not c.ok]
    assert not failed, "\n\n".join(c.report() for c in failed)
    return done


def _enforced(env: PolicyLab) -> float:
    if SELF_ENFORCE:
        _self_enforce(env)
    return env.api.wait_enforced(timeout=10.0)


def add(*policies: dict[str, Any]) -> Step:
    def step(env: PolicyLab) -> None:
        for p in policies:
            env.api.api.add_network_policy(p)

    return step


def nothing(env: PolicyLab) -> None:
    pass


_p = Probe


# -- the cases -----------------------------------------------------------------------------


def test_no_policy_allows_everything(policy_lab: PolicyLab) -> None:
    (c,) = run_case(policy_lab, "no policy", [("baseline", nothing)])
    assert all(c.want.values())


def test_default_deny_ingress(policy_lab: PolicyLab) -> None:
    (c,) = run_case(
        policy_lab, "default deny ingress", [("alpha", add(_policy("deny", "alpha", {})))]
    )
    # alpha's pods are reached by nobody but their own node; they still reach everyone
    assert not c.want[_p("b1", "a1", 4, "TCP", 80)] and c.want[_p("a1", "b1", 6, "UDP", 53)]
    assert c.want[_p("n1", "a1", 4, "TCP", 80)] and not c.want[_p("n2", "a1", 4, "TCP", 80)]


def test_default_deny_egress(policy_lab: PolicyLab) -> None:
    (c,) = run_case(
        policy_lab,
        "default deny egress",
        [("beta", add(_policy("deny-out", "beta", {}, types=["Egress"])))],
    )
    assert not c.want[_p("b1", "a1", 4, "TCP", 80)] and c.want[_p("a1", "b1", 6, "TCP", 80)]
    assert not c.want[_p("b2", "ext", 6, "TCP", 80)] and c.want[_p("b2", "n2", 4, "TCP", 80)]


def test_default_deny_both_directions(policy_lab: PolicyLab) -> None:
    run_case(
        policy_lab,
        "default deny both",
        [("beta", add(_policy("deny-all", "beta", {}, types=["Ingress", "Egress"])))],
    )


def test_allow_by_pod_selector(policy_lab: PolicyLab) -> None:
    # web pods of alpha accept db pods of alpha only (not beta's db pod b3)
    policy = _policy(
        "web-from-db", "alpha", WEB, ingress=[{"from": [{"podSelector": {"matchLabels": DB}}]}]
    )
    (c,) = run_case(policy_lab, "allow by pod selector", [("web <- db", add(policy))])
    assert c.want[_p("a2", "a3", 6, "TCP", 80)] and not c.want[_p("b3", "a3", 6, "TCP", 80)]
    # the hostNetwork pod on n2 is labelled web, but no pod selector selects it
    assert not c.want[_p("n2", "a1", 4, "TCP", 80)]


def test_allow_by_namespace_selector(policy_lab: PolicyLab) -> None:
    policy = _policy(
        "web-from-beta",
        "alpha",
        WEB,
        ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}],
    )
    (c,) = run_case(policy_lab, "allow by namespace selector", [("web <- ns beta", add(policy))])
    assert c.want[_p("b2", "a1", 4, "UDP", 53)] and not c.want[_p("a2", "a1", 4, "UDP", 53)]


def test_allow_by_namespace_and_pod_selector(policy_lab: PolicyLab) -> None:
    both = [
        {"namespaceSelector": {"matchLabels": {"team": "b"}}, "podSelector": {"matchLabels": DB}}
    ]
    either = [
        {"namespaceSelector": {"matchLabels": {"team": "b"}}},
        {"podSelector": {"matchLabels": DB}},
    ]

    def to_either(env: PolicyLab) -> None:
        env.api.api.update_network_policy(
            _policy("web-from", "alpha", WEB, ingress=[{"from": either}])
        )

    c1, c2 = run_case(
        policy_lab,
        "pod and namespace selector",
        [
            (
                "one peer: beta's db pods",
                add(_policy("web-from", "alpha", WEB, ingress=[{"from": both}])),
            ),
            ("two peers: beta's pods or alpha's db pods", to_either),
        ],
    )
    assert c1.want[_p("b3", "a1", 4, "TCP", 80)] and not c1.want[_p("b2", "a1", 4, "TCP", 80)]
    assert not c1.want[_p("a2", "a1", 4, "TCP", 80)]
    assert c2.want[_p("b2", "a1", 4, "TCP", 80)] and c2.want[_p("a2", "a1", 4, "TCP", 80)]


def test_ipblock_with_except_ingress(policy_lab: PolicyLab) -> None:
    env = policy_lab
    peers = [
        {"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.16/28"]}},
        {"ipBlock": {"cidr": "2001:db8:1::/64", "except": ["2001:db8:1::20/124"]}},
        # n2's pods, but b2
        {"ipBlock": {"cidr": env.cidr("n2", 4), "except": [env.ip("b2", 4) + "/32"]}},
        {"ipBlock": {"cidr": env.cidr("n2", 6), "except": [env.ip("b2", 6) + "/128"]}},
    ]
    policy = _policy("from-blocks", "alpha", {}, ingress=[{"from": peers}])
    (c,) = run_case(env, "ipBlock with except, ingress", [("alpha <- blocks", add(policy))])
    assert c.want[_p("ext", "a1", 6, "TCP", 80)] and not c.want[_p("ext2", "a1", 6, "TCP", 80)]
    assert c.want[_p("b3", "a1", 4, "TCP", 80)] and not c.want[_p("b2", "a1", 4, "TCP", 80)]


def test_ipblock_with_except_egress(policy_lab: PolicyLab) -> None:
    env = policy_lab
    peers = [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": [env.cidr("n1", 4), "203.0.113.20/32"]}},
        {"ipBlock": {"cidr": "::/0", "except": [env.cidr("n1", 6), "2001:db8:1::20/128"]}},
    ]
    policy = _policy("to-blocks", "beta", {}, types=["Egress"], egress=[{"to": peers}])
    (c,) = run_case(env, "ipBlock with except, egress", [("beta -> blocks", add(policy))])
    assert c.want[_p("b2", "ext", 4, "TCP", 80)] and not c.want[_p("b2", "ext2", 4, "TCP", 80)]
    assert c.want[_p("b2", "a3", 6, "TCP", 80)] and not c.want[_p("b2", "a1", 6, "TCP", 80)]


def test_named_ports(policy_lab: PolicyLab) -> None:
    # a name resolves on the pod that receives: web pods' "http" is 8080, a2's is 80,
    # b3's "http" is UDP (no match for TCP), b2 has none; nodes and outside addresses
    # have no named ports
    ingress = _policy("http-in", "alpha", {}, ingress=[{"ports": [{"port": "http"}]}])
    egress = _policy(
        "http-dns-out",
        "beta",
        {},
        types=["Egress"],
        egress=[{"ports": [{"port": "http"}, {"port": "dns", "protocol": "UDP"}]}],
    )
    (c,) = run_case(policy_lab, "named ports", [("alpha in, beta out", add(ingress, egress))])
    assert c.want[_p("ext", "a1", 4, "TCP", 8080)] and not c.want[_p("ext", "a1", 4, "TCP", 80)]
    assert c.want[_p("ext", "a2", 4, "TCP", 80)] and not c.want[_p("ext", "a2", 4, "TCP", 8080)]
    assert c.want[_p("b2", "a3", 6, "TCP", 8080)] and not c.want[_p("b2", "b3", 6, "TCP", 80)]
    assert not c.want[_p("b2", "a3", 6, "UDP", 53)]  # egress allows "dns", a3's ingress not


def test_port_ranges(policy_lab: PolicyLab) -> None:
    ingress = _policy(
        "range-in",
        "alpha",
        {},
        ingress=[
            {"ports": [{"protocol": "TCP", "port": 8000, "endPort": 8080}, {"protocol": "UDP"}]}
        ],
    )
    egress = _policy(
        "range-out",
        "beta",
        {},
        types=["Egress"],
        egress=[{"ports": [{"protocol": "TCP", "port": 9000, "endPort": 9090}]}],
    )
    (c,) = run_case(policy_lab, "port ranges", [("alpha in, beta out", add(ingress, egress))])
    # the ends of each range are in it, the next port is not
    assert c.want[_p("ext", "a1", 4, "TCP", 8080)] and not c.want[_p("ext", "a1", 4, "TCP", 9090)]
    assert c.want[_p("b1", "ext", 6, "TCP", 9090)] and not c.want[_p("b1", "ext", 6, "TCP", 8080)]
    assert c.want[_p("n2", "a1", 4, "UDP", 53)]  # a protocol without a port: all its ports


def test_sctp(policy_lab: PolicyLab) -> None:
    reason = policy_lab.prober.call(policy_lab.endpoints["a1"].netns, lambda: unsupported("SCTP"))
    if reason is not None:
        pytest.skip(f"this kernel has no SCTP: {reason}")
    policy = _policy(
        "sctp-in", "alpha", {}, ingress=[{"ports": [{"protocol": "SCTP", "port": 80}]}]
    )
    run_case(
        policy_lab,
        "SCTP",
        [("alpha <- SCTP/80", add(policy))],
        ports=(("SCTP", 80), ("TCP", 80)),
    )


def test_policy_update_and_delete(policy_lab: PolicyLab) -> None:
    def update(env: PolicyLab) -> None:
        env.api.api.update_network_policy(
            _policy(
                "p",
                "alpha",
                WEB,
                ingress=[
                    {
                        "from": [
                            {
                                "namespaceSelector": {},
                                "podSelector": {"matchLabels": {"app": "cli"}},
                            }
                        ],
                        "ports": [{"port": 8080}],
                    }
                ],
            )
        )

    def delete(env: PolicyLab) -> None:
        env.api.api.delete_network_policy("alpha", "p")

    first = _policy("p", "alpha", WEB, ingress=[{"from": [{"podSelector": {"matchLabels": DB}}]}])
    _, c2, c3 = run_case(
        policy_lab,
        "policy update and delete",
        [("created", add(first)), ("updated", update), ("deleted", delete)],
    )
    assert c2.want[_p("b2", "a1", 4, "TCP", 8080)] and not c2.want[_p("a2", "a1", 4, "TCP", 8080)]
    assert all(c3.want.values())


def test_pod_relabel(policy_lab: PolicyLab) -> None:
    client = {"role": "client"}
    policy = _policy(
        "web-from-clients",
        "alpha",
        WEB,
        ingress=[{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": client}}]}],
    )

    def clients(env: PolicyLab) -> None:
        env.api.relabel_pod("b2", {"app": "cli", **client})
        env.api.relabel_pod("a2", {**DB, **client})

    def unselect(env: PolicyLab) -> None:
        env.api.relabel_pod("a3", {"app": "other"})

    c1, c2, c3 = run_case(
        policy_lab,
        "pod relabel",
        [
            ("no client yet", add(policy)),
            ("b2 and a2 become clients", clients),
            ("a3 no longer web", unselect),
        ],
    )
    assert not c1.want[_p("b2", "a3", 6, "TCP", 80)] and c2.want[_p("b2", "a3", 6, "TCP", 80)]
    assert not c2.want[_p("b1", "a3", 6, "TCP", 80)] and c3.want[_p("b1", "a3", 6, "TCP", 80)]


def test_namespace_relabel(policy_lab: PolicyLab) -> None:
    staging = {"matchLabels": {"env": "staging"}}
    policy = _policy(
        "web-from-staging", "alpha", WEB, ingress=[{"from": [{"namespaceSelector": staging}]}]
    )

    def beta(env: PolicyLab) -> None:
        env.api.relabel_namespace("beta", {"team": "b", "env": "staging"})

    def alpha(env: PolicyLab) -> None:
        env.api.relabel_namespace("alpha", {"team": "a", "env": "staging"})

    c1, c2, c3 = run_case(
        policy_lab,
        "namespace relabel",
        [("nobody staging", add(policy)), ("beta staging", beta), ("alpha staging too", alpha)],
    )
    assert not c1.want[_p("b1", "a1", 4, "TCP", 80)] and c2.want[_p("b1", "a1", 4, "TCP", 80)]
    assert not c2.want[_p("a2", "a3", 4, "TCP", 80)] and c3.want[_p("a2", "a3", 4, "TCP", 80)]


def test_pod_deleted_and_back(policy_lab: PolicyLab) -> None:
    # alpha's web pods accept every pod of every namespace; b3's object goes away (its
    # address is then no pod's: no selector matches it) and comes back
    policy = _policy("web-from-pods", "alpha", WEB, ingress=[{"from": [{"namespaceSelector": {}}]}])

    def delete(env: PolicyLab) -> None:
        env.api.api.delete_pod("beta", "b3")

    def back(env: PolicyLab) -> None:
        env.api.api.add_pod(env.api.pod_object(env.api.pod_specs["b3"]))

    c1, c2, c3 = run_case(
        policy_lab,
        "pod deleted and back",
        [("every pod", add(policy)), ("b3 deleted", delete), ("b3 back", back)],
    )
    assert c1.want[_p("b3", "a1", 6, "TCP", 80)] and not c2.want[_p("b3", "a1", 6, "TCP", 80)]
    assert c3.want[_p("b3", "a1", 6, "TCP", 80)]


def test_matrices_covered_same_node_cross_node_both_families(policy_lab: PolicyLab) -> None:
    """Across the cases above, pod-to-pod probes were allowed and denied on one node and
    across nodes, in both families (this test runs last in the module)."""
    if not policy_lab.results:
        pytest.skip("run with the cases of this module")
    nodes = {p.name: p.node for p in PODS}
    seen = set()
    for c in policy_lab.results:
        for p, ok in c.want.items():
            if p.src in nodes and p.dst in nodes:
                seen.add((nodes[p.src] == nodes[p.dst], p.family, ok))
    assert seen == {(same, f, ok) for same in (True, False) for f in (4, 6) for ok in (True, False)}
    print(summary(policy_lab.results))  # shown with -s: the matrices and enforcement times
