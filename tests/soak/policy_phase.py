"""The soak campaign's policy phase: the main daemons restarted with
``NETWORK_POLICY=true``; pods (network namespaces on a ``cbr0`` bridge in each node
namespace, static addresses from the node's pod CIDRs) registered as Pods in the API
double with labels and named ports; Namespaces and NetworkPolicies; and churn of all of
them, between the campaign's faults.

Each step makes one or two random changes (policy added, updated, made malformed or
deleted; pod relabelled, added or deleted; namespace relabelled; a pod of a virtual node
relabelled), waits until each policy daemon's two tables are exactly what
``compile_node`` makes of the API's objects (``read_tables`` against ``wanted_tables``,
bounded by ``ENFORCE_BOUND``), then probes the whole matrix between the live pods
(same-node and cross-node, IPv4 and IPv6, TCP 80, TCP 8080 and UDP 53, in-process from
threads in the pods' namespaces: ``tests/policy/probe.py``) and compares it with the
oracle (``core.policy.allowed_ips``). Any difference is a violation.

While a policy daemon is down or restarting (SIGKILL, SIGTERM, the overlay switch) and
while the API server is down, the matrix is probed again and again: a denied probe that
passes is a violation (the tables must stay and keep enforcing); an allowed probe that
is blocked there is counted, not judged (the overlay switch moves the cross-node routes).
See docs/reliability.md."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from tests.apiserver import ApiServerDouble
from tests.apiserver.objects import make_namespace, make_network_policy, make_pod
from tests.policy.matrix import Comparison, all_probes, expected, measure
from tests.policy.probe import Endpoint, Probe, Prober
from tests.soak.daemons import DaemonProc
from xcluster_cni_lib.core.policyfacts import PolicyView, build_view
from xcluster_cni_lib.core.policynft import (
    BRIDGE,
    INET,
    ListedTables,
    compile_node,
    read_tables,
    table_name,
    wanted_tables,
)
from xcluster_cni_lib.core.values import IPAddress
from xcluster_cni_lib.kernel.channel import run_in_netns
from xcluster_cni_lib.kernel.nftables import Nft
from xcluster_cni_lib.testing.netns import add_netns, del_netns, unique_name
from xcluster_cni_lib.testing.nodes import default_internal_ips, default_pod_cidrs

POLICY_SWITCH = "policy_switch_on"
POD_BRIDGE = "cbr0"
SLOTS_PER_NODE = 4  # pod namespaces per node; three live at the start
PORTS = (("TCP", 80), ("TCP", 8080), ("UDP", 53))
NAMESPACES = ("pol-a", "pol-b", "pol-c")
APPS = ("web", "db", "cli")
TEAMS = ("a", "b", "c")
ENVS = ("prod", "dev")
POD_PORTS: tuple[dict[str, int | tuple[int, str]], ...] = (
    {"http": 8080, "dns": (53, "UDP")},
    {"http": 80},
    {"http": 8080},
    {},
)
VIRTUAL_PODS = 40  # Pods on virtual nodes: in the sets, never probed
MAX_POLICIES = 6
ENFORCE_BOUND = 10.0  # seconds from an API change to the tables as wanted
WINDOW_EVERY = 0.75  # at most one probe round this often in a fault window
# A prober gives each probe a source port its address never used (20000-32767): one with
# PORT_RENEW used on some address is replaced (ports from 20000 again) once it is
# PROBER_AGE old; a round that would pass PORT_BUDGET is skipped (fault windows) or gets
# a new prober at once (matrices). A replaced prober's flows are flushed from conntrack
# in every node (an allowed UDP flow stays "established" for 120 s: a new prober's probe
# on the same ports would pass as an old flow, not be judged as new).
PORT_RENEW = 6000
PORT_BUDGET = 12000
PROBER_AGE = 150.0
RESTART_ROUND_EVERY = 0.2  # probe rounds while a daemon comes up: at most this often
# br_netfilter's "call the IP hooks for bridged frames" per node namespace (when the host
# has the module): on in n0, as Kubernetes nodes usually have it, off in n1, so both
# shapes of same-node traffic run. ``SOAK_BRIDGE_NF_CALL=0|1`` sets every node alike.
BRIDGE_NF_CALL = {"n0": "1", "n1": "0"}
#: The policy daemons' ``POLICY_SAME_NODE`` (``SOAK_SAME_NODE``): the component's choice.
SAME_NODE = os.environ.get("SOAK_SAME_NODE") or "br-netfilter"
NODE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
}


def _batch(ns: str, lines: Sequence[str]) -> None:
    proc = subprocess.run(
        ["ip", "-n", ns, "-batch", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ip -n {ns} -batch failed: {proc.stderr.strip()}")


def _index(node: str) -> int:
    """The ``make_node`` index of a real node (``n<k>``)."""
    return int(node[1:])


def _sysctl(ns: str, values: dict[str, str]) -> None:
    argv = ["ip", "netns", "exec", ns, "sysctl", "-q", "-w"]
    subprocess.run(argv + [f"{k}={v}" for k, v in values.items()], check=True)


@attrs.define
class Slot:
    """A pod's network namespace on a node; ``pod`` is the Pod it is now (None: no pod,
    its veth is off the bridge)."""

    endpoint: str  # the probe endpoint's name, e.g. n0-p1
    node: str
    netns: str
    host_if: str
    addresses: tuple[IPAddress, IPAddress]
    pod: dict[str, Any] | None = None
    generation: int = 0

    def key(self) -> tuple[str, str]:
        assert self.pod is not None
        meta = self.pod["metadata"]
        return meta["namespace"], meta["name"]


# -- random objects ------------------------------------------------------------------------


def _pod_selector(rng: random.Random) -> dict[str, Any]:
    r = rng.random()
    if r < 0.2:
        return {}
    if r < 0.7:
        return {"matchLabels": {"app": rng.choice(APPS)}}
    values = rng.sample(APPS, rng.randint(1, 2))
    return {
        "matchExpressions": [
            {"key": "app", "operator": rng.choice(("In", "NotIn")), "values": values}
        ]
    }


def _namespace_selector(rng: random.Random) -> dict[str, Any]:
    r = rng.random()
    if r < 0.15:
        return {}
    if r < 0.6:
        return {"matchLabels": {"team": rng.choice(TEAMS)}}
    if r < 0.8:
        return {"matchLabels": {"env": rng.choice(ENVS)}}
    operator = rng.choice(("Exists", "DoesNotExist"))
    return {"matchExpressions": [{"key": "env", "operator": operator}]}


class Generator:
    """Random NetworkPolicies, pod and namespace labels over the phase's pods."""

    def __init__(self, rng: random.Random, slots: Sequence[Slot], nodes: int) -> None:
        self.rng = rng
        self.slots = slots
        self.nodes = nodes

    def ip_block(self) -> dict[str, Any]:
        rng = self.rng
        family = rng.choice((4, 6))
        node = rng.randrange(self.nodes)
        cidr = ipaddress.ip_network(default_pod_cidrs(node)[0 if family == 4 else 1])
        r = rng.random()
        block: Any
        if r < 0.4:
            block = cidr
        elif r < 0.7:
            block = cidr.supernet(prefixlen_diff=1)  # both real nodes' pods
        else:
            block = next(cidr.subnets(new_prefix=cidr.max_prefixlen - 4))  # .0-.15: the slots
        out: dict[str, Any] = {"cidr": str(block)}
        inside = [a for s in self.slots for a in s.addresses if a.version == family and a in block]
        if inside and rng.random() < 0.5:
            address = rng.choice(inside)
            length = address.max_prefixlen - rng.choice((0, 0, 1))
            out["except"] = [str(ipaddress.ip_network(f"{address}/{length}", strict=False))]
        return out

    def peer(self) -> dict[str, Any]:
        r = self.rng.random()
        if r < 0.35:
            return {"podSelector": _pod_selector(self.rng)}
        if r < 0.6:
            return {"namespaceSelector": _namespace_selector(self.rng)}
        if r < 0.8:
            return {
                "namespaceSelector": _namespace_selector(self.rng),
                "podSelector": _pod_selector(self.rng),
            }
        return {"ipBlock": self.ip_block()}

    def ports(self) -> list[dict[str, Any]] | None:
        rng = self.rng
        if rng.random() < 0.3:
            return None
        options: list[list[dict[str, Any]]] = [
            [{"port": "http"}],
            [{"protocol": "TCP", "port": 80}],
            [{"port": 8080}],
            [{"port": 8000, "endPort": 8100}],
            [{"protocol": "UDP", "port": "dns"}],
            [{"protocol": "UDP"}],
            [{"port": "http"}, {"protocol": "UDP", "port": 53}],
        ]
        return rng.choice(options)

    def rules(self, peers_key: str) -> list[dict[str, Any]]:
        rng = self.rng
        out = []
        for _ in range(rng.choice((0, 1, 1, 2))):  # none: deny all in that direction
            rule: dict[str, Any] = {}
            if rng.random() < 0.85:
                rule[peers_key] = [self.peer() for _ in range(rng.randint(1, 2))]
            ports = self.ports()
            if ports:
                rule["ports"] = ports
            out.append(rule)
        return out

    def policy(self, name: str, namespace: str) -> dict[str, Any]:
        r = self.rng.random()
        types = ["Ingress"] if r < 0.5 else ["Egress"] if r < 0.75 else ["Ingress", "Egress"]
        return make_network_policy(
            name,
            namespace,
            pod_selector=_pod_selector(self.rng),
            policy_types=types,
            ingress=self.rules("from") if "Ingress" in types else (),
            egress=self.rules("to") if "Egress" in types else (),
        )

    def malformed(self, name: str, namespace: str) -> dict[str, Any]:
        """A policy every reader must skip (an impossible CIDR)."""
        return make_network_policy(
            name,
            namespace,
            pod_selector={},
            ingress=[{"from": [{"ipBlock": {"cidr": "10.244.999.0/24"}}]}],
        )

    def pod_labels(self) -> dict[str, str]:
        labels = {"app": self.rng.choice(APPS)}
        if self.rng.random() < 0.3:
            labels["tier"] = self.rng.choice(("front", "back"))
        return labels

    def namespace_labels(self) -> dict[str, str]:
        labels = {"team": self.rng.choice(TEAMS)}
        if self.rng.random() < 0.8:
            labels["env"] = self.rng.choice(ENVS)
        return labels


# -- the phase -----------------------------------------------------------------------------


class PolicyPhase:
    """The pods, the objects, their churn and the checks. ``daemons``: the main daemon of
    each real node (``node_ns[d.view.own]`` its namespace), the ones switched to
    ``NETWORK_POLICY=true``."""

    def __init__(
        self,
        *,
        api: ApiServerDouble,
        node_ns: dict[str, str],
        daemons: list[DaemonProc],
        rng: random.Random,
        violate: Callable[[str, str], None],
        checks: Counter[str],
        log: Callable[[str], None],
    ) -> None:
        self.api = api
        self.node_ns = node_ns
        self.daemons = daemons
        self.rng = rng
        self.violate = violate
        self.checks = checks
        self.log = log
        self.on = False
        self.slots: list[Slot] = []
        self.policies: dict[tuple[str, str], dict[str, Any]] = {}
        self.namespace_labels: dict[str, dict[str, str]] = {}
        self.virtual_pods: list[dict[str, Any]] = []
        self.changes: Counter[str] = Counter()
        self.enforced_s: list[float] = []
        self.prober: Prober | None = None
        self._prober_born = 0.0
        self._ports_used: Counter[str] = Counter()  # source endpoint -> ports taken
        self._last_window = 0.0
        self._made_ns: list[str] = []
        self._nft: dict[str, Nft] = {}
        self._policy_seq = 0
        self.gen = Generator(rng, self.slots, len(node_ns))
        self.log_denied = {d.key: d.view.own == "n1" for d in daemons}
        self.bridge_nf: dict[str, str] = {}  # node -> bridge-nf-call-ip(6)tables, if any
        self.windows: Counter[str] = Counter()  # probe rounds in fault windows, by kind
        self.window_blocked: Counter[str] = Counter()  # allowed probes blocked there

    # -- building ---------------------------------------------------------------------

    def build(self) -> None:
        """cbr0 and the pod namespaces in every node namespace, the objects in the API,
        the prober's servers in every pod."""
        for node, ns in sorted(self.node_ns.items()):
            k = _index(node)
            _sysctl(ns, NODE_SYSCTLS)
            call = os.environ.get("SOAK_BRIDGE_NF_CALL") or BRIDGE_NF_CALL.get(node, "0")
            if os.path.exists("/proc/sys/net/bridge"):  # br_netfilter is loaded
                names = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables")
                _sysctl(ns, {f"net.bridge.{n}": call for n in names})
                self.bridge_nf[node] = call
            cidrs = [ipaddress.ip_network(c) for c in default_pod_cidrs(k)]
            _batch(
                ns,
                [
                    f"link add {POD_BRIDGE} type bridge mcast_snooping 0",
                    f"address add {cidrs[0][1]}/{cidrs[0].prefixlen} dev {POD_BRIDGE}",
                    f"address add {cidrs[1][1]}/{cidrs[1].prefixlen} dev {POD_BRIDGE} nodad",
                    f"link set {POD_BRIDGE} up",
                ],
            )
            for j in range(SLOTS_PER_NODE):
                pod_ns = unique_name("sp")
                self._made_ns.append(pod_ns)
                add_netns(pod_ns)
                _sysctl(pod_ns, {"net.ipv6.conf.all.accept_dad": "0"})
                host_if = f"pv{j}"
                v4, v6 = cidrs[0][10 + j], cidrs[1][10 + j]
                _batch(ns, [f"link add {host_if} type veth peer name eth0 netns {pod_ns}"])
                _batch(
                    pod_ns,
                    [
                        f"address add {v4}/{cidrs[0].prefixlen} dev eth0",
                        f"address add {v6}/{cidrs[1].prefixlen} dev eth0 nodad",
                        "link set eth0 up",
                        f"route add default via {cidrs[0][1]}",
                        f"route add default via {cidrs[1][1]}",
                    ],
                )
                self.slots.append(Slot(f"{node}-p{j}", node, pod_ns, host_if, (v4, v6)))
        self.namespace_labels = {n: self.gen.namespace_labels() for n in NAMESPACES}
        for name, labels in self.namespace_labels.items():
            self.api.add_namespace(make_namespace(name, labels=labels))
        for slot in self.slots:
            if not slot.endpoint.endswith(f"p{SLOTS_PER_NODE - 1}"):
                self._plug(slot)
        for i in range(VIRTUAL_PODS):
            index = 2 + i
            cidrs = [ipaddress.ip_network(c) for c in default_pod_cidrs(index)]
            pod = make_pod(
                f"remote-{i}",
                self.rng.choice(NAMESPACES),
                node=f"v{index}",
                ips=[str(cidrs[0][5]), str(cidrs[1][5])],
                labels=self.gen.pod_labels(),
                ports=self.rng.choice(POD_PORTS),
            )
            self.virtual_pods.append(pod)
            self.api.add_pod(pod)
        for _ in range(2):
            self._add_policy()
        self._new_prober()

    def _new_prober(self) -> None:
        if self.prober is not None:
            self.prober.close()
            for ns in self.node_ns.values():
                run_in_netns(ns, _flush_conntrack, name=f"ct-flush-{ns}")
            self.checks["policy_conntrack_flushes"] += 1
        endpoints = [Endpoint(s.endpoint, s.netns, s.addresses) for s in self.slots]
        self.prober = Prober(endpoints, PORTS).start()
        self._prober_born = time.monotonic()
        self._ports_used = Counter()
        self.checks["policy_probers"] += 1

    def switch_on(self) -> None:
        """Build everything, then restart each policy daemon with NETWORK_POLICY=true
        (SIGTERM, as a rolling update does)."""
        self.build()
        self.on = True
        for d in self.daemons:
            took, code = d.terminate(timeout=10.0)
            if code != 0:
                self.violate("sigterm_exit_code", f"{d.key}: exit {code} after {took:.2f}s")
            d.env["NETWORK_POLICY"] = "true"
            d.env["POLICY_BRIDGE"] = POD_BRIDGE
            d.env["POLICY_LOG_DENIED"] = "true" if self.log_denied[d.key] else "false"
            # as the kustomize component deploys it: bridged and judged through
            # br_netfilter where the node passes bridged frames to the IP hooks (n0), the
            # redirect where it does not (n1)
            d.env["POLICY_SAME_NODE"] = SAME_NODE
            d.start()
        self.log(
            f"  policy on: {len(self.live())} pods in {len(self.node_ns)} nodes, "
            f"{len(self.policies)} policies"
        )

    def teardown(self) -> None:
        if self.prober is not None:
            self.prober.close()
            self.prober = None
        for nft in self._nft.values():
            nft.close()
        for name in self._made_ns:
            del_netns(name)
        self._made_ns.clear()

    # -- the API objects --------------------------------------------------------------

    def live(self) -> list[Slot]:
        return [s for s in self.slots if s.pod is not None]

    def _plug(self, slot: Slot) -> None:
        """A new pod in ``slot``: its veth on the bridge, then its Pod (new name, labels,
        ports), as a kubelet does after the CNI ADD."""
        _batch(
            self.node_ns[slot.node],
            [f"link set {slot.host_if} master {POD_BRIDGE}", f"link set {slot.host_if} up"],
        )
        slot.generation += 1
        slot.pod = make_pod(
            f"{slot.endpoint}-{slot.generation}",
            self.rng.choice(NAMESPACES),
            node=slot.node,
            ips=[str(a) for a in slot.addresses],
            labels=self.gen.pod_labels(),
            ports=self.rng.choice(POD_PORTS),
        )
        self.api.add_pod(slot.pod)

    def _unplug(self, slot: Slot) -> None:
        namespace, name = slot.key()
        self.api.delete_pod(namespace, name)
        slot.pod = None
        _batch(
            self.node_ns[slot.node],
            [f"link set {slot.host_if} down", f"link set {slot.host_if} nomaster"],
        )

    def _add_policy(self) -> None:
        self._policy_seq += 1
        namespace = self.rng.choice(NAMESPACES)
        name = f"pol-{self._policy_seq}"
        obj = self.gen.policy(name, namespace)
        self.policies[(namespace, name)] = obj
        self.api.add_network_policy(obj)

    def change(self) -> str:
        """One random change to the API's objects (and pods); its kind."""
        rng = self.rng
        live = self.live()
        free = [s for s in self.slots if s.pod is None]
        choices: list[tuple[str, float]] = [
            ("policy_added", 0.25 if len(self.policies) < MAX_POLICIES else 0.0),
            ("policy_updated", 0.2 if self.policies else 0.0),
            ("policy_malformed", 0.03 if self.policies else 0.0),
            ("policy_deleted", (0.12 if len(self.policies) < MAX_POLICIES else 0.4)),
            ("pod_relabelled", 0.15),
            ("namespace_relabelled", 0.1),
            ("pod_deleted", 0.06 if len(live) > 4 else 0.0),
            ("pod_added", 0.06 if free else 0.0),
            ("remote_pod_relabelled", 0.03),
        ]
        if not self.policies:
            choices = [(k, w) for k, w in choices if not k.startswith("policy_d")]
        kinds = [k for k, w in choices if w > 0]
        kind = rng.choices(kinds, weights=[w for k, w in choices if w > 0])[0]
        if kind == "policy_added":
            self._add_policy()
        elif kind in ("policy_updated", "policy_malformed"):
            namespace, name = rng.choice(sorted(self.policies))
            make = self.gen.policy if kind == "policy_updated" else self.gen.malformed
            obj = make(name, namespace)
            self.policies[(namespace, name)] = obj
            self.api.update_network_policy(obj)
        elif kind == "policy_deleted":
            namespace, name = rng.choice(sorted(self.policies))
            del self.policies[(namespace, name)]
            self.api.delete_network_policy(namespace, name)
        elif kind == "pod_relabelled":
            slot = rng.choice(live)
            assert slot.pod is not None
            slot.pod["metadata"]["labels"] = self.gen.pod_labels()
            self.api.update_pod(slot.pod)
        elif kind == "namespace_relabelled":
            name = rng.choice(NAMESPACES)
            self.namespace_labels[name] = self.gen.namespace_labels()
            self.api.update_namespace(make_namespace(name, labels=self.namespace_labels[name]))
        elif kind == "pod_deleted":
            self._unplug(rng.choice(live))
        elif kind == "pod_added":
            self._plug(rng.choice(free))
        else:
            pod = rng.choice(self.virtual_pods)
            pod["metadata"]["labels"] = self.gen.pod_labels()
            self.api.update_pod(pod)
        self.changes[kind] += 1
        return kind

    # -- expectations and the kernel --------------------------------------------------

    def view(self) -> PolicyView:
        addresses: dict[str, list[IPAddress]] = {}
        for node in self.node_ns:
            k = _index(node)
            cidrs = [ipaddress.ip_network(c) for c in default_pod_cidrs(k)]
            addresses[node] = [ipaddress.ip_address(a) for a in default_internal_ips(k)]
            addresses[node] += [c[1] for c in cidrs]
        return build_view(
            pods=self.api.objects("pods"),
            namespaces=self.api.objects("namespaces"),
            policies=self.api.objects("networkpolicies"),
            node_addresses=addresses,
        )

    def _bridge_mac(self, d: DaemonProc) -> str | None:
        """The address the bridge table redirects to; None: no bridge table (the
        br-netfilter mode on a node whose bridged frames pass the IP hooks)."""
        if SAME_NODE == "br-netfilter" and self.bridge_nf.get(d.view.own) == "1":
            return None
        ns = self.node_ns[d.view.own]
        out = subprocess.run(
            ["ip", "-n", ns, "-j", "link", "show", POD_BRIDGE], capture_output=True, text=True
        ).stdout
        found = json.loads(out or "[]")
        return str(found[0]["address"]) if found else None

    def listed(self, d: DaemonProc) -> ListedTables:
        nft = self._nft.get(d.key)
        if nft is None:
            nft = self._nft[d.key] = Nft(netns=self.node_ns[d.view.own])
        table = table_name(d.protocol)
        objects: list[dict[str, Any]] = []
        for family in (INET, BRIDGE):
            objects += nft.read_table(table, family=family) or []
        return read_tables(objects)

    def wanted(self, d: DaemonProc, view: PolicyView) -> ListedTables:
        return wanted_tables(
            table_name(d.protocol),
            compile_node(view, node=d.view.own),
            bridge_mac=self._bridge_mac(d),
            log_denied=self.log_denied[d.key],
        )

    def wait_enforced(self, view: PolicyView, since: float) -> bool:
        """Poll each policy daemon's tables until they are what ``view`` compiles to;
        records the time from ``since``; a violation after ``ENFORCE_BOUND``."""
        pending = {d.key: d for d in self.daemons}
        wanted = {d.key: self.wanted(d, view) for d in self.daemons}
        while pending:
            for key in [k for k, d in pending.items() if self.listed(d) == wanted[k]]:
                del pending[key]
            if not pending:
                break
            if time.monotonic() - since > ENFORCE_BOUND:
                for key, d in pending.items():
                    self.violate(
                        "policy_not_enforced", f"{key}: {_diff(wanted[key], self.listed(d))}"
                    )
                return False
            time.sleep(0.05)
        self.enforced_s.append(time.monotonic() - since)
        return True

    # -- probing ----------------------------------------------------------------------

    def _ports(self, probes: Sequence[Probe], *, optional: bool) -> bool:
        """Take source ports for ``probes`` (each may be tried twice); False when the
        round is ``optional`` and the prober has too few left."""
        need = Counter(p.src for p in probes for _ in range(2))
        young = time.monotonic() - self._prober_born <= PROBER_AGE
        if max(self._ports_used.values(), default=0) > PORT_RENEW and not young:
            self._new_prober()
        elif max((self._ports_used[k] + n for k, n in need.items()), default=0) > PORT_BUDGET:
            if optional:
                self.checks["policy_window_rounds_skipped"] += 1
                return False
            self._new_prober()
            self.checks["policy_probers_replaced_young"] += 1
        self._ports_used.update(need)
        return True

    def _probe(
        self, view: PolicyView, *, retry: float | None = 2.0, optional: bool = False
    ) -> Comparison | None:
        """Probe every pair of live pods (``retry``: the longer timeout that allowed
        probes which did not pass get once more; None: one round only). None when an
        ``optional`` round is skipped for want of fresh source ports."""
        assert self.prober is not None
        endpoints = {s.endpoint: self.prober.endpoints[s.endpoint] for s in self.live()}
        probes = all_probes(endpoints.values(), PORTS, involves=lambda e: True)
        if not self._ports(probes, optional=optional):
            return None
        want = expected(view, endpoints, probes)
        got: Mapping[Probe, bool]
        if retry is None:
            got = self.prober.probe(want, timeout=0.5)
        else:
            got = measure(self.prober, want, timeout=0.5, retry_timeout=retry)
        comparison = Comparison(self.label(), want, got)
        return comparison

    def label(self) -> str:
        live = self.live()
        same = sum(1 for a in live for b in live if a is not b and a.node == b.node)
        return f"{len(live)} pods ({same} same-node pairs), {len(self.policies)} policies"

    def step(self, changes: int | None = None) -> None:
        """Change (1-2 random changes unless told), wait for enforcement, probe, compare."""
        count = self.rng.randint(1, 2) if changes is None else changes
        kinds = [self.change() for _ in range(count)]
        since = time.monotonic()
        view = self.view()
        self.checks["policy_steps"] += 1
        if not self.wait_enforced(view, since):
            return
        c = self._probe(view)
        assert c is not None
        self.checks["policy_matrices"] += 1
        allowed, denied = c.counts()
        self.checks["policy_probes"] += len(c.want)
        self.checks["policy_probes_allowed"] += allowed
        self.checks["policy_probes_denied"] += denied
        if not c.ok:
            self.violate(
                "policy_reachability",
                f"after {', '.join(kinds) or 'no change'}: {c.report()}",
            )

    def window(self, label: str, *, force: bool = False, kind: str = "other") -> bool:
        """One probe round in a fault window (a policy daemon down or restarting, the API
        down): nothing the API's objects deny may pass. At most one round per
        ``WINDOW_EVERY`` unless ``force``. Whether it probed."""
        if not self.on:
            return False
        now = time.monotonic()
        if not force and now - self._last_window < WINDOW_EVERY:
            return False
        self._last_window = now
        # one round: a leak is a leak, and there is no time for retries
        c = self._probe(self.view(), retry=None, optional=True)
        if c is None:
            return False
        self.checks["policy_window_rounds"] += 1
        self.checks["policy_window_probes"] += len(c.want)
        self.windows[kind] += 1
        if c.missing:
            self.checks["policy_window_allowed_blocked"] += len(c.missing)
            self.window_blocked[kind] += len(c.missing)
        if c.leaks:
            lines = [f"{label}: {len(c.leaks)} denied probes passed"]
            lines += [f"  LEAKED {p}" for p in c.leaks[:20]]
            self.violate("policy_leak_in_fault_window", "\n".join(lines))
        return True

    def restart_window(self, d: DaemonProc, *, kind: str = "restart", bound: float = 10.0) -> None:
        """Probe rounds while ``d`` (just started) comes up, until it is ready (at least
        two rounds; at most ``bound`` seconds)."""
        if not self.on or d not in self.daemons:
            return
        start = time.monotonic()
        rounds = 0
        while True:
            began = time.monotonic()
            if not self.window(f"{d.key} restarting", force=True, kind=kind):
                break
            rounds += 1
            # paced: back-to-back rounds burn source ports (a readiness of 10 s took 495)
            time.sleep(max(0.0, began + RESTART_ROUND_EVERY - time.monotonic()))
            self.checks["policy_restart_rounds"] += 1
            if rounds >= 2 and (d.ready() or time.monotonic() - start > bound):
                break

    def summary(self) -> dict[str, Any]:
        s = sorted(self.enforced_s)

        def pct(p: float) -> float | None:
            return round(s[min(len(s) - 1, round(p * (len(s) - 1)))], 3) if s else None

        return {
            "on": self.on,
            "pods_live": len(self.live()),
            "pod_slots": len(self.slots),
            "bridge_nf_call": self.bridge_nf,
            "virtual_pods": len(self.virtual_pods),
            "policies_now": len(self.policies),
            "changes": dict(self.changes),
            "policy_changes": sum(v for k, v in self.changes.items() if k.startswith("policy_")),
            "matrices": self.checks.get("policy_matrices", 0),
            "probes": self.checks.get("policy_probes", 0),
            "probes_allowed": self.checks.get("policy_probes_allowed", 0),
            "probes_denied": self.checks.get("policy_probes_denied", 0),
            "window_rounds": self.checks.get("policy_window_rounds", 0),
            "window_rounds_skipped": self.checks.get("policy_window_rounds_skipped", 0),
            "probers": self.checks.get("policy_probers", 0),
            "window_probes": self.checks.get("policy_window_probes", 0),
            "restart_rounds": self.checks.get("policy_restart_rounds", 0),
            "window_rounds_by_kind": dict(self.windows),
            "window_allowed_blocked": dict(self.window_blocked),
            "enforced_s": {"n": len(s), "p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        }


def _diff(want: ListedTables, have: ListedTables) -> str:
    parts = []
    if not have.structure and not have.elements:
        return "no policy tables"
    missing, extra = want.structure - have.structure, have.structure - want.structure
    if missing or extra:
        parts.append(
            f"structure: {len(missing)} missing, {len(extra)} extra; e.g. "
            f"{sorted(missing)[:1]} / {sorted(extra)[:1]}"
        )
    for name in sorted(set(want.elements) | set(have.elements)):
        w, h = want.elements.get(name, frozenset()), have.elements.get(name, frozenset())
        if w != h:
            parts.append(f"{name}: missing {sorted(w - h)[:3]}, extra {sorted(h - w)[:3]}")
    return "; ".join(parts)[:1500] or "equal now (late)"


def _flush_conntrack() -> None:
    """Forget every conntrack entry of the calling thread's namespace."""
    from pyroute2 import NFCTSocket

    ct = NFCTSocket()
    try:
        ct.flush()
    finally:
        ct.close()
