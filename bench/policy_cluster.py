"""A generated, realistic cluster for the NetworkPolicy benchmarks (issue 16): Namespaces,
Pods and NetworkPolicies as the API returns them (``tests.apiserver.objects``), plus the
*probe* pods the data-path and sync benchmarks use.

Deterministic for a given size (no randomness: pod ``i`` and policy ``j`` are always the
same), so the three benchmarks and their smoke tests measure the same cluster.

- Nodes ``node-<k>``: pod CIDRs ``10.244.<k>.0/24`` and ``fd00:10:244:<k>::/64`` (k < 256),
  addresses ``192.168.<k//250>.<k%250+1>`` and ``fd00::<k+1>``. Pods are spread round-robin
  over the nodes; a node's pods take ``.10`` upwards (``.2``-``.9`` are the probes').
- 20 namespaces ``ns-00`` .. ``ns-19`` (labels ``team``, ``env``, and the
  ``kubernetes.io/metadata.name`` a server adds) and ``bench`` (the probes').
- Pods: labels ``app`` (10 apps), ``tier``, ``version``, app and namespace drawn from a
  multiplicative hash of the pod's number (so every node has a mix); named container ports per app
  (``http``, ``grpc``, ``metrics``, and ``db``/``cache`` for those apps); dual-stack.
- Policies, ten per namespace, round-robin over ten shapes: default-deny ingress;
  pod selector with a named port; namespace selector with a port range; namespace *and*
  pod selector; ``ipBlock`` with ``except``; egress to pods by named port plus DNS over
  UDP; egress to an ``ipBlock`` with two ``except``s; ingress from a monitoring namespace
  by named port; ``matchExpressions`` (``In``/``NotIn``) with a range; an IPv6
  ``ipBlock``. Two of the ``policies`` are the probes' (``bench/probe-server``,
  ``bench/probe-client``), which isolate the probe pods for ingress and egress and allow
  exactly their traffic.

The probe pods (namespace ``bench``): ``client`` (``10.244.0.2``) and ``server``
(``10.244.0.3``) on ``node-0``, ``remote`` (``10.244.1.2``) on ``node-1``; the servers
name the port ``rr`` (``RR_PORT``). The client may open TCP connections to the servers on
``rr`` and on 12000-12100 only (``DENIED_PORT`` is denied: the data-path benchmark checks
it); the servers may reach the client with anything (a rule without ``ports``, the only
way a NetworkPolicy allows ICMP), so ``ping`` runs from a server to the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import attrs

from tests.apiserver.objects import make_namespace, make_network_policy, make_pod
from xcluster_cni_lib.core.policyfacts import PolicyView, build_view

Json = dict[str, Any]

APPS = ("web", "api", "db", "cache", "queue", "worker", "auth", "search", "metrics", "frontend")
TIERS = {"web": "frontend", "frontend": "frontend", "db": "data", "cache": "data"}
PORTS: dict[str, dict[str, int | tuple[int, str]]] = {
    "db": {"db": 5432, "metrics": 9100},
    "cache": {"cache": 6379, "metrics": 9100},
}
DEFAULT_PORTS: dict[str, int | tuple[int, str]] = {"http": 8080, "grpc": 9090, "metrics": 9100}
NAMESPACES = 20
PROBE_NAMESPACE = "bench"
RR_PORT = 11111
DENIED_PORT = 11112
PROBE_POLICIES = 2


@attrs.frozen
class Probe:
    name: str
    node: int
    host: int  # the last octet of its IPv4 address (and the last group of its IPv6)
    role: str

    @property
    def ipv4(self) -> str:
        return f"10.244.{self.node}.{self.host}"

    @property
    def ipv6(self) -> str:
        return f"fd00:10:244:{self.node:x}::{self.host:x}"


PROBES = (
    Probe("client", 0, 2, "client"),
    Probe("server", 0, 3, "server"),
    Probe("remote", 1, 2, "server"),
)


def node_name(k: int) -> str:
    return f"node-{k}"


def node_addresses(k: int) -> tuple[str, str]:
    return f"192.168.{k // 250}.{k % 250 + 1}", f"fd00::{k + 1:x}"


def pod_ips(node: int, slot: int) -> list[str]:
    """The addresses of the pod in ``slot`` (0-based) of ``node``: from ``.10`` on."""
    if node > 255:
        raise ValueError("at most 256 nodes")
    host = 10 + slot
    v4 = ipaddress.IPv4Address(f"10.244.{node}.0") + host
    if host > 254:  # a /24 is full: spill into the node's upper /16 half (10.244+128)
        raise ValueError("at most 245 pods per node")
    return [str(v4), f"fd00:10:244:{node:x}::{host:x}"]


def namespace_name(i: int) -> str:
    return f"ns-{i:02d}"


def namespaces() -> list[Json]:
    out = [
        make_namespace(
            namespace_name(i),
            labels={
                "team": f"t{i % 5}",
                "env": "prod" if i % 2 == 0 else "staging",
                "kubernetes.io/metadata.name": namespace_name(i),
            },
        )
        for i in range(NAMESPACES)
    ]
    out.append(
        make_namespace(
            PROBE_NAMESPACE,
            labels={"team": "bench", "kubernetes.io/metadata.name": PROBE_NAMESPACE},
        )
    )
    return out


def pod(i: int, *, nodes: int, labels: dict[str, str] | None = None) -> Json:
    """Generated pod ``i`` (``labels`` replaces its labels, for relabelling)."""
    node, slot = i % nodes, i // nodes
    h = (i * 2654435761) & 0xFFFFFFFF  # spreads apps and namespaces over the nodes
    app = APPS[(h >> 8) % len(APPS)]
    ns = namespace_name((h >> 16) % NAMESPACES)
    return make_pod(
        f"{app}-{i}",
        ns,
        node=node_name(node),
        ips=pod_ips(node, slot),
        labels=labels
        if labels is not None
        else {
            "app": app,
            "tier": TIERS.get(app, "backend"),
            "version": "v1" if (h >> 4) % 3 else "v2",
        },
        ports=PORTS.get(app, DEFAULT_PORTS),
    )


def probe_pod(p: Probe) -> Json:
    ports: dict[str, int | tuple[int, str]] = {"rr": RR_PORT} if p.role == "server" else {}
    return make_pod(
        p.name,
        PROBE_NAMESPACE,
        node=node_name(p.node),
        ips=[p.ipv4, p.ipv6],
        labels={"role": p.role},
        ports=ports,
    )


def pods(n: int, *, nodes: int, probes: bool = True) -> list[Json]:
    """``n`` pods in all (the probes included when ``probes``)."""
    extra = len(PROBES) if probes else 0
    out = [pod(i, nodes=nodes) for i in range(n - extra)]
    if probes:
        out += [probe_pod(p) for p in PROBES]
    return out


def policy(j: int) -> Json:
    """Generated policy ``j``: shape ``j % 10`` in namespace ``ns-<(j // 10) % 20>``."""
    ns = namespace_name((j // 10) % NAMESPACES)
    shape = j % 10
    app = APPS[(j // 10) % len(APPS)]
    other = APPS[(j // 10 + 3) % len(APPS)]
    team = f"t{(j // 10 + 1) % 5}"
    name = f"p{j}-s{shape}"
    if shape == 0:
        return make_network_policy(name, ns, pod_selector={}, policy_types=["Ingress"])
    if shape == 1:
        return make_network_policy(
            name,
            ns,
            pod_selector={"matchLabels": {"app": app}},
            ingress=[
                {
                    "from": [{"podSelector": {"matchLabels": {"app": other}}}],
                    "ports": [{"port": "http"}],
                }
            ],
        )
    if shape == 2:
        return make_network_policy(
            name,
            ns,
            pod_selector={"matchLabels": {"app": app}},
            ingress=[
                {
                    "from": [{"namespaceSelector": {"matchLabels": {"team": team}}}],
                    "ports": [{"port": 8000, "endPort": 8100, "protocol": "TCP"}],
                }
            ],
        )
    if shape == 3:
        return make_network_policy(
            name,
            ns,
            pod_selector={"matchLabels": {"tier": "backend"}},
            ingress=[
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"env": "prod"}},
                            "podSelector": {"matchLabels": {"app": "frontend"}},
                        }
                    ],
                    "ports": [{"port": "grpc"}, {"port": 9090, "protocol": "TCP"}],
                }
            ],
        )
    if shape == 4:
        k = (j // 10) % 20
        return make_network_policy(
            name,
            ns,
            pod_selector={"matchLabels": {"app": app}},
            ingress=[
                {
                    "from": [
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": [f"10.244.{k}.0/24"]}},
                        {"ipBlock": {"cidr": "192.168.0.0/16"}},
                    ],
                    "ports": [{"port": 443}],
                }
            ],
        )
    if shape == 5:
        return make_network_policy(
            name,
            ns,
            pod_selector={"matchLabels": {"app": app}},
            policy_types=["Egress"],
            egress=[
                {
                    "to": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                    "ports": [{"port": "db"}],
                },
                {
                    "to": [{"namespaceSelector": {"matchLabels": {"team": "t0"}}}],
                    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
                },
            ],
        )
    if shape == 6:
        return make_network_policy(
            name,
            ns,
            pod_selector={"matchLabels": {"app": app}},
            policy_types=["Egress"],
            egress=[
                {
                    "to": [
                        {
                            "ipBlock": {
                                "cidr": "0.0.0.0/0",
                                "except": ["10.0.0.0/8", "192.168.0.0/16"],
                            }
                        }
                    ],
                    "ports": [{"port": 443}, {"port": 53, "protocol": "UDP"}],
                }
            ],
        )
    if shape == 7:
        return make_network_policy(
            name,
            ns,
            pod_selector={},
            ingress=[
                {
                    "from": [{"namespaceSelector": {"matchLabels": {"team": "t4"}}}],
                    "ports": [{"port": "metrics"}],
                }
            ],
        )
    if shape == 8:
        return make_network_policy(
            name,
            ns,
            pod_selector={
                "matchExpressions": [{"key": "app", "operator": "In", "values": [app, other]}]
            },
            ingress=[
                {
                    "from": [
                        {
                            "podSelector": {
                                "matchExpressions": [
                                    {"key": "version", "operator": "NotIn", "values": ["v1"]}
                                ]
                            }
                        }
                    ],
                    "ports": [{"port": 6379, "endPort": 6380}],
                }
            ],
        )
    return make_network_policy(
        name,
        ns,
        pod_selector={"matchLabels": {"app": app}},
        ingress=[
            {
                "from": [
                    {
                        "ipBlock": {
                            "cidr": "fd00:10:244::/48",
                            "except": [f"fd00:10:244:{(j // 10) % 20:x}::/64"],
                        }
                    }
                ],
                "ports": [{"port": 8080}],
            }
        ],
    )


def probe_policies() -> list[Json]:
    """The probes' two policies: both probe roles isolated for ingress and egress. The
    client may open TCP connections to the servers on ``rr`` and 12000-12100 only; the
    servers may reach the client with anything (a rule without ``ports``: the only way a
    NetworkPolicy allows ICMP), which ``ping`` from a server uses."""
    client = {"podSelector": {"matchLabels": {"role": "client"}}}
    server = {"podSelector": {"matchLabels": {"role": "server"}}}
    both = ["Ingress", "Egress"]
    tcp = [{"port": "rr"}, {"port": 12000, "endPort": 12100, "protocol": "TCP"}]
    return [
        make_network_policy(
            "probe-server",
            PROBE_NAMESPACE,
            pod_selector=server["podSelector"],
            policy_types=both,
            ingress=[{"from": [client], "ports": tcp}],
            egress=[{"to": [client]}],  # no ports: every protocol
        ),
        make_network_policy(
            "probe-client",
            PROBE_NAMESPACE,
            pod_selector=client["podSelector"],
            policy_types=both,
            ingress=[
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "bench"}}, **server}]}
            ],
            egress=[{"to": [server], "ports": tcp}],
        ),
    ]


def policies(n: int, *, probes: bool = True) -> list[Json]:
    """``n`` policies in all (the probes' two included when ``probes``)."""
    extra = PROBE_POLICIES if probes else 0
    return [policy(j) for j in range(n - extra)] + (probe_policies() if probes else [])


@attrs.frozen
class Cluster:
    pods: list[Json]
    namespaces: list[Json]
    policies: list[Json]
    nodes: int

    def node_addresses(self) -> dict[str, list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
        return {
            node_name(k): [ipaddress.ip_address(a) for a in node_addresses(k)]
            for k in range(self.nodes)
        }

    def view(self) -> PolicyView:
        return build_view(
            pods=self.pods,
            namespaces=self.namespaces,
            policies=self.policies,
            node_addresses=self.node_addresses(),
        )


def cluster(
    *, pods_n: int = 1000, policies_n: int = 200, nodes: int = 20, probes: bool = True
) -> Cluster:
    return Cluster(
        pods=pods(pods_n, nodes=nodes, probes=probes),
        namespaces=namespaces(),
        policies=policies(policies_n, probes=probes),
        nodes=nodes,
    )


def local_pods(c: Cluster, node: int) -> Iterator[Json]:
    """The pods of ``node-<node>``."""
    want = node_name(node)
    return (p for p in c.pods if p["spec"].get("nodeName") == want)
