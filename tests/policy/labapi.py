"""The API-server double inside a lab, holding the lab's pods, for the NetworkPolicy suite.

The double runs in the lab's outside host (``LabSpec(outside=True)``: namespace ``out``,
203.0.113.10), which every node reaches through the lab's router: the server is started
from a thread that entered that namespace, so its listening socket (and every connection
it accepts) lives there. The daemons get a kubeconfig pointing at it (``KUBECONFIG``) and
``NETWORK_POLICY=true`` (``enable_policy``); their nodes still come from the lab's nodes
file.

``LabApi`` registers the lab's pods as Pod objects with their real addresses, node,
labels and named container ports (``PodSpec``), and their Namespaces; ``reset()`` puts
that baseline's pods and labels back and deletes every policy. ``view()`` is the oracle's
view of what the API holds; ``wait_enforced()`` polls each node's two policy tables until
they are exactly what ``compile_node`` makes of that view (``read_tables`` against
``wanted_tables``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from tests.apiserver import ApiServerDouble
from tests.apiserver.objects import make_namespace, make_pod
from tests.soak.nsutil import NetnsExecutor
from xcluster_cni_lib.core.addresses import parse_address
from xcluster_cni_lib.core.policyfacts import PolicyView, build_view
from xcluster_cni_lib.core.policynft import (
    BRIDGE,
    INET,
    ListedTables,
    compile_node,
    read_tables,
    table_name,
)
from xcluster_cni_lib.core.policynft import wanted_tables as wanted_listing
from xcluster_cni_lib.core.values import IPAddress
from xcluster_cni_lib.kernel.nftables import Nft
from xcluster_cni_lib.kernel.podbridge import bridge_nf_calls
from xcluster_cni_lib.lab import Lab
from xcluster_cni_lib.lab.shell import ip_json

API_PORT = 6443
POLL = 0.05


@attrs.frozen
class PodSpec:
    """A lab pod as the API knows it: its Kubernetes namespace, labels and named
    container ports (name -> port, or (port, protocol))."""

    name: str
    node: str
    namespace: str
    labels: Mapping[str, str] = attrs.field(factory=dict)
    ports: Mapping[str, int | tuple[int, str]] = attrs.field(factory=dict)


class NotEnforced(AssertionError):
    """A node's tables did not become what the API's state compiles to in time."""


class LabApi:
    """The double in ``lab``'s outside host, with ``pods`` (lab pods, already added to
    the lab with the same names and Kubernetes namespaces) and ``namespaces`` (name ->
    labels) as the baseline; ``extra_pods`` are more Pod objects of the baseline (e.g. a
    hostNetwork pod, which has no namespace of its own in the lab)."""

    def __init__(
        self,
        lab: Lab,
        *,
        pods: Sequence[PodSpec],
        namespaces: Mapping[str, Mapping[str, str]],
        extra_pods: Iterable[Mapping[str, Any]] = (),
        workdir: Path,
        port: int = API_PORT,
        same_node: str = "redirect",
    ) -> None:
        if not lab.spec.outside:
            raise ValueError("the policy lab needs an outside host (LabSpec(outside=True))")
        self.lab = lab
        self.network = lab.spec.main
        self.table = table_name(self.network.protocol)
        self.pod_specs = {p.name: p for p in pods}
        self.namespace_labels = {k: dict(v) for k, v in namespaces.items()}
        self.extra_pods = [dict(p) for p in extra_pods]
        self.workdir = workdir
        #: the daemons' POLICY_SAME_NODE
        self.same_node = same_node
        self.api = ApiServerDouble(
            host=str(lab.spec.outside_address(4)), port=port, bookmark_interval=5.0
        )
        self.kubeconfig = ""
        self._outside = NetnsExecutor(lab.spec.outside_ns, workers=1)
        self._nft: dict[str, Nft] = {}
        self._macs: dict[str, str] = {}
        self._node_addresses: dict[str, frozenset[IPAddress]] = {}

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> LabApi:
        self._outside.call(self.api.start)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = self.api.write_kubeconfig(self.workdir / "kubeconfig")
        self.load()
        return self

    def stop(self) -> None:
        self._outside.call(self.api.stop)
        self._outside.shutdown()
        for nft in self._nft.values():
            nft.close()
        self._nft.clear()

    def __enter__(self) -> LabApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def enable_policy(self, extra_env: Mapping[str, str] | None = None) -> None:
        """Restart every node's main daemon with ``NETWORK_POLICY=true`` and the
        double's kubeconfig."""
        env = {
            "NETWORK_POLICY": "true",
            "KUBECONFIG": self.kubeconfig,
            "POLICY_SAME_NODE": self.same_node,
            **(extra_env or {}),
        }
        for node in self.lab.names():
            if (node, self.network.name) in self.lab.daemons:
                self.lab.stop_daemon(node, self.network.name)
            self.lab.start_daemon(node, self.network.name, extra_env=env)

    # -- objects --------------------------------------------------------------------------

    def pod_object(self, spec: PodSpec, **changes: Any) -> dict[str, Any]:
        """The Pod object of a lab pod (``changes``: other ``labels``/``ports``)."""
        spec = attrs.evolve(spec, **changes)
        pod = self.lab.pod(spec.name)
        if pod.node != spec.node or pod.k8s_namespace != spec.namespace:
            raise ValueError(f"pod {spec.name}: the lab has it on {pod.node}/{pod.k8s_namespace}")
        ips = [str(a) for a in pod.addresses.get(self.network.name, ())]
        return make_pod(
            spec.name,
            spec.namespace,
            node=spec.node,
            ips=ips,
            labels=spec.labels,
            ports=spec.ports,
        )

    def load(self) -> None:
        """Store the baseline's objects (every one written again)."""
        self.api.set_network_policies([])
        self.api.set_namespaces(
            make_namespace(name, labels=labels) for name, labels in self.namespace_labels.items()
        )
        self.api.set_pods(
            [*(self.pod_object(p) for p in self.pod_specs.values()), *self.extra_pods]
        )

    def reset(self) -> None:
        """Back to the baseline, writing only what differs from it: every policy deleted,
        deleted pods added, changed namespace and pod labels put back (few events, so
        that the daemons are soon done with them)."""
        for policy in self.api.objects("networkpolicies"):
            meta = policy["metadata"]
            self.api.delete_network_policy(meta["namespace"], meta["name"])
        for name, labels in self.namespace_labels.items():
            ns = self.api.get_namespace(name)
            have = dict((ns or {}).get("metadata", {}).get("labels") or {})
            have.pop("kubernetes.io/metadata.name", None)
            if have != labels:
                self.api.update_namespace(make_namespace(name, labels=labels))
        for spec in self.pod_specs.values():
            pod = self.api.get_pod(spec.namespace, spec.name)
            if pod is None:
                self.api.add_pod(self.pod_object(spec))
            elif pod.get("metadata", {}).get("labels") != dict(spec.labels):
                self.api.update_pod(self.pod_object(spec))

    def relabel_pod(self, name: str, labels: Mapping[str, str]) -> None:
        spec = self.pod_specs[name]
        self.api.update_pod(self.pod_object(spec, labels=dict(labels)))

    def relabel_namespace(self, name: str, labels: Mapping[str, str]) -> None:
        self.api.update_namespace(make_namespace(name, labels=labels))

    def node_addresses(self, node: str) -> frozenset[IPAddress]:
        """Every global address of the node's namespace (uplink, pod bridge)."""
        if node not in self._node_addresses:
            found = set()
            for link in ip_json(self.lab.node(node).namespace, ["address", "show"]):
                for info in link.get("addr_info", []):
                    if info.get("scope") == "global":
                        found.add(parse_address(str(info["local"])))
            self._node_addresses[node] = frozenset(found)
        return self._node_addresses[node]

    def view(self) -> PolicyView:
        """What the oracle decides on: the API's objects now, and the nodes' addresses."""
        return build_view(
            pods=self.api.objects("pods"),
            namespaces=self.api.objects("namespaces"),
            policies=self.api.objects("networkpolicies"),
            node_addresses={n: self.node_addresses(n) for n in self.lab.names()},
        )

    # -- enforcement ----------------------------------------------------------------------

    def bridge_mac(self, node: str) -> str | None:
        """The address the node's bridge table redirects to; None: no bridge table (the
        br-netfilter mode on a node that passes bridged frames to the IP hooks)."""
        namespace = self.lab.node(node).namespace
        if self.same_node == "br-netfilter" and bridge_nf_calls(namespace):
            return None
        if node not in self._macs:
            links = ip_json(namespace, ["link", "show", self.network.bridge])
            self._macs[node] = str(links[0]["address"])
        return self._macs[node]

    def listed(self, node: str) -> ListedTables:
        """Both policy tables of ``node`` as the kernel lists them."""
        nft = self._nft.get(node)
        if nft is None:
            nft = self._nft[node] = Nft(netns=self.lab.node(node).namespace)
        objects = []
        for family in (INET, BRIDGE):
            objects += nft.read_table(self.table, family=family) or []
        return read_tables(objects)

    def wanted(self, node: str, view: PolicyView | None = None) -> ListedTables:
        state = compile_node(view if view is not None else self.view(), node=node)
        return wanted_listing(self.table, state, bridge_mac=self.bridge_mac(node))

    def wait_enforced(self, timeout: float = 10.0) -> float:
        """Wait until every node's tables are what the API's current state compiles to;
        the seconds it took. ``NotEnforced`` (with the difference and the daemon's log
        tail) after ``timeout``."""
        start = time.monotonic()
        view = self.view()
        wanted = {n: self.wanted(n, view) for n in self.lab.names()}
        pending = set(wanted)
        while True:
            pending = {n for n in pending if self.listed(n) != wanted[n]}
            if not pending:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise NotEnforced(self._describe(sorted(pending), wanted, timeout))
            time.sleep(POLL)

    def _describe(
        self, nodes: list[str], wanted: Mapping[str, ListedTables], timeout: float
    ) -> str:
        lines = [f"policy tables not as the API's state wants after {timeout:g} s:"]
        for node in nodes:
            have, want = self.listed(node), wanted[node]
            lines.append(f"  {node}:")
            if not have.structure and not have.elements:
                lines.append(f"    no table {self.table}")
            for s in sorted(want.structure - have.structure)[:10]:
                lines.append(f"    missing {s[:300]}")
            for s in sorted(have.structure - want.structure)[:10]:
                lines.append(f"    extra   {s[:300]}")
            for name in sorted(set(want.elements) | set(have.elements)):
                w, h = want.elements.get(name, frozenset()), have.elements.get(name, frozenset())
                for e in sorted(w - h)[:10]:
                    lines.append(f"    set {name}: missing {e}")
                for e in sorted(h - w)[:10]:
                    lines.append(f"    set {name}: extra   {e}")
            daemon = self.lab.daemons.get((node, self.network.name))
            if daemon is not None:
                state = "running" if daemon.alive() else f"exited ({daemon.process.returncode})"
                lines.append(f"    daemon {state}, log tail:")
                lines += [f"    | {line}" for line in daemon.log_tail(15).splitlines()]
        return "\n".join(lines)
