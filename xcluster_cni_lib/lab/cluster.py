"""``Lab``: a multi-node cluster in network namespaces running the real daemon and
plugins. Use it as a context manager (or through ``lab.fixtures`` in pytest)::

    with Lab(LabSpec(nodes=3)) as lab:
        assert lab.connectivity().ok
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import attrs

from xcluster_cni_lib.core.addresses import parse_address
from xcluster_cni_lib.core.values import IPAddress, Route
from xcluster_cni_lib.lab import topology, whoami
from xcluster_cni_lib.lab.cleanup import save_state, shielded, teardown_lab
from xcluster_cni_lib.lab.connectivity import Matrix, check_connectivity, ping
from xcluster_cni_lib.lab.daemons import Daemon, start_daemon, stop_daemon
from xcluster_cni_lib.lab.nodes import LabNode, node_list, plan_node, write_json_atomically
from xcluster_cni_lib.lab.pods import Pod, invoke, network_config, new_pod, result_addresses
from xcluster_cni_lib.lab.routes import expected_routes, kernel_routes, route_events
from xcluster_cni_lib.lab.shell import list_netns, run
from xcluster_cni_lib.lab.spec import LabError, LabSpec, NetworkSpec, check_pod_name, node_name

T = TypeVar("T")
POLL = 0.02


def default_bin_dir() -> Path:
    """Where this project's executables are: beside the running Python (a virtualenv),
    else where ``kube-node`` is on ``PATH`` (a system-wide install)."""
    beside = Path(sys.executable).parent
    if (beside / "kube-node").exists():
        return beside
    found = shutil.which("kube-node")
    return Path(found).parent if found else beside


class Lab:
    """A lab built from a ``LabSpec``. ``up()`` builds it (nodes, nodes file, daemons,
    pods) and waits until every daemon's routes are right; ``down()`` removes everything
    it made. Both also run as ``with Lab(spec) as lab:``, which tears down on any error
    or Ctrl-C."""

    def __init__(self, spec: LabSpec | None = None, **kwargs: Any) -> None:
        self.spec = spec if spec is not None else LabSpec(**kwargs)
        self.state_dir = self.spec.state_dir
        self.nodes_file = self.state_dir / "nodes.json"
        self.bin_dir = self.spec.bin_dir or default_bin_dir()
        self.nodes: dict[str, LabNode] = {}
        self.pods: dict[str, Pod] = {}
        self.daemons: dict[tuple[str, str], Daemon] = {}
        self._namespaces: list[str] = []
        self._servers: list[subprocess.Popen[str]] = []
        self._lock = threading.RLock()
        self._owner = False

    # -- life cycle -------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> Lab:
        """Build the lab described by the spec."""
        self._preflight()
        self.state_dir.mkdir(parents=True)
        self._owner = True  # from here on, down() removes what is ours
        self._save()
        topology.build_switch(self.spec, record=self._record)
        for index in range(1, self.spec.nodes + 1):
            node = plan_node(self.spec, index)
            topology.build_node(self.spec, node, record=self._record)
            self.nodes[node.name] = node
        self.write_nodes_file()
        if self.spec.start_daemons:
            self.start_daemons()
        names = [
            (node, f"{node}-pod{k}")
            for node in self.nodes
            for k in range(1, self.spec.pods_per_node + 1)
        ]
        self._parallel(lambda nn: self.add_pod(nn[0], name=nn[1]), names)
        if self.spec.start_daemons:
            self.wait_converged(timeout=10.0)  # the daemons' first start, on a busy machine
        return self

    def down(self) -> None:
        """Stop the daemons, DEL every pod through its plugins (as a runtime does),
        delete every namespace and the state dir. Safe to call twice and after a
        failed ``up`` (but never a lab of the same id that this one did not make)."""
        if not self._owner:
            return
        with shielded():
            for server in self._servers:
                server.kill()
                server.wait()
            self._servers.clear()
            self._parallel(stop_daemon, list(self.daemons.values()), workers=8)
            self.daemons.clear()
            if self.state_dir.exists():
                self._parallel(self._delete_pod_quietly, list(self.pods.values()))
            self.pods.clear()
            teardown_lab(self.spec.prefix, self.spec.lab_id, self.spec.state_root)
            self._namespaces.clear()
            self._owner = False

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (it creates network namespaces)")
        leftovers = [n for n in list_netns() if n.startswith(self.spec.ns_prefix)]
        if self.state_dir.exists() or leftovers:
            raise LabError(
                f"lab {self.spec.lab_id!r} already exists ({self.state_dir}); "
                f"remove it with: {self.spec.down_command}"
            )
        needed = [self.spec.cni_bin_dir / "bridge"]
        if self.spec.start_daemons:
            needed.append(self.bin_dir / "xcluster-cni")
        if self.spec.ipam == "kube-node":
            needed.append(self.bin_dir / "kube-node")
        else:
            needed.append(self.spec.cni_bin_dir / self.spec.ipam)
        for path in needed:
            if not os.access(path, os.X_OK):
                raise LabError(
                    f"missing executable {path} (install the project and the CNI plugins)"
                )

    def _record(self, namespace: str) -> None:
        with self._lock:
            self._namespaces.append(namespace)
            self._save()

    def _save(self) -> None:
        with self._lock:
            save_state(
                self.state_dir,
                {
                    "lab_id": self.spec.lab_id,
                    "prefix": self.spec.prefix,
                    "owner_pid": os.getpid(),
                    "created": time.time(),
                    "nodes_file": str(self.nodes_file),
                    "namespaces": list(self._namespaces),
                    "pids": [d.pid for d in self.daemons.values()],
                    "nodes": sorted(self.nodes),
                    "pods": {p.name: p.node for p in self.pods.values()},
                    "networks": {n.name: n.protocol for n in self.spec.networks},
                },
            )

    @staticmethod
    def _parallel(fn: Callable[[T], object], items: Sequence[T], workers: int = 4) -> None:
        if not items:
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(fn, items):
                pass

    # -- nodes and the nodes file -----------------------------------------------------

    def node(self, name: str) -> LabNode:
        try:
            return self.nodes[name]
        except KeyError:
            raise LabError(f"no node {name!r} in lab {self.spec.lab_id}") from None

    def write_nodes_file(self) -> None:
        """Write the present nodes to the nodes file (atomically: temp file + rename)."""
        with self._lock:
            write_json_atomically(
                self.nodes_file, node_list(self.nodes.values(), self.spec.networks)
            )

    def _update(self, name: str, **changes: Any) -> LabNode:
        with self._lock:
            node = attrs.evolve(self.node(name), **changes)
            self.nodes[name] = node
            self.write_nodes_file()
            return node

    def remove_node(self, name: str) -> None:
        """Delete the node's object from the nodes file (its namespace, pods and daemons
        stay, as a node removed from the API keeps running)."""
        self._update(name, present=False)

    def restore_node(self, name: str) -> None:
        """Put a removed node's object back in the nodes file."""
        self._update(name, present=True)

    def annotate_node(self, name: str, annotations: Mapping[str, str | None]) -> None:
        """Set (or, with ``None``, remove) annotations on the node's object."""
        merged = dict(self.node(name).annotations)
        for key, value in annotations.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        self._update(name, annotations=merged)

    def readdress_node(self, name: str, network: str, addresses: Iterable[str]) -> None:
        """Give the node's uplink on ``network`` new addresses (one per family) and
        update its object, as when a node is re-addressed."""
        net = self.spec.network(network)
        node = self.node(name)
        new = tuple(sorted((parse_address(a) for a in addresses), key=lambda a: a.version))
        topology.readdress_uplink(node, net, new)
        self._update(name, addresses={**node.addresses, network: new})

    # -- daemons ----------------------------------------------------------------------

    def start_daemons(self) -> None:
        """Start a daemon for every node and network that has none running."""
        for node in self.nodes:
            for net in self.spec.networks:
                if (node, net.name) not in self.daemons:
                    self.start_daemon(node, net.name)

    def start_daemon(
        self, node: str, network: str, *, extra_env: Mapping[str, str] | None = None
    ) -> Daemon:
        """Start ``xcluster-cni daemon`` for one node and network (log:
        ``<state dir>/logs/<node>-<network>.log``)."""
        net = self.spec.network(network)
        daemon = start_daemon(
            self.spec,
            net,
            node=node,
            node_ns=self.node(node).namespace,
            nodes_file=self.nodes_file,
            log=self.state_dir / "logs" / f"{node}-{net.name}.log",
            executable=self.bin_dir / "xcluster-cni",
            extra_env=dict(extra_env or {}),
        )
        with self._lock:
            self.daemons[(node, network)] = daemon
            self._save()
        return daemon

    def stop_daemon(self, node: str, network: str, *, sig: int = signal.SIGTERM) -> int | None:
        """Stop one daemon with ``sig`` (SIGKILL simulates a crash); returns its exit
        status. Its routes stay in the kernel, as they would on a real node."""
        daemon = self.daemons.pop((node, network), None)
        if daemon is None:
            raise LabError(f"no daemon runs for node {node} network {network}")
        status = stop_daemon(daemon, sig=sig)
        self._save()
        return status

    # -- routes -----------------------------------------------------------------------

    def routes(self, node: str, network: str) -> frozenset[Route]:
        """The routes ``network``'s daemon installed on ``node`` (by its protocol)."""
        return kernel_routes(self.node(node).namespace, self.spec.network(network).protocol)

    def expected_routes(self, node: str, network: str) -> frozenset[Route]:
        """The routes ``node`` should have on ``network``, per the nodes file."""
        return expected_routes(self.nodes.values(), node, self.spec.network(network))

    def route_events(self, node: str) -> AbstractContextManager[list[str]]:
        """``with lab.route_events("n1") as events:`` collects the node's kernel route
        events (``ip monitor route`` lines) while the block runs."""
        return route_events(self.node(node).namespace)

    def wait_converged(
        self,
        *,
        timeout: float = 5.0,
        nodes: Iterable[str] | None = None,
        networks: Iterable[str] | None = None,
    ) -> float:
        """Wait until every running daemon's node has exactly the expected routes;
        return the seconds it took. On timeout raise ``LabError`` with the difference
        and the daemons' log tails."""
        wanted_nodes = set(nodes) if nodes is not None else set(self.nodes)
        wanted_nets = (
            set(networks) if networks is not None else {n.name for n in self.spec.networks}
        )
        pairs = [(n, w) for (n, w) in self.daemons if n in wanted_nodes and w in wanted_nets]
        start = time.monotonic()
        deadline = start + timeout
        while True:
            pending = [p for p in pairs if self.routes(*p) != self.expected_routes(*p)]
            if not pending:
                return time.monotonic() - start
            if time.monotonic() > deadline:
                raise LabError(self._describe_divergence(pending, timeout))
            time.sleep(POLL)

    def _describe_divergence(self, pending: list[tuple[str, str]], timeout: float) -> str:
        lines = [f"routes did not converge within {timeout:g} s:"]
        for node, network in pending:
            have, want = self.routes(node, network), self.expected_routes(node, network)
            daemon = self.daemons[(node, network)]
            state = "running" if daemon.alive() else f"exited ({daemon.process.returncode})"
            lines.append(f"  {node}/{network} (daemon {state}):")
            lines += [f"    missing {r.dst} via {r.gateway}" for r in sorted(want - have, key=str)]
            lines += [f"    extra   {r.dst} via {r.gateway}" for r in sorted(have - want, key=str)]
            lines += [f"    | {line}" for line in daemon.log_tail(8).splitlines()]
        return "\n".join(lines)

    # -- pods -------------------------------------------------------------------------

    def pod(self, name: str) -> Pod:
        try:
            return self.pods[name]
        except KeyError:
            raise LabError(f"no pod {name!r} in lab {self.spec.lab_id}") from None

    def add_pod(
        self,
        node: str,
        *,
        name: str | None = None,
        k8s_namespace: str = "default",
        networks: Iterable[str] | None = None,
    ) -> Pod:
        """Create a pod on ``node``: a namespace attached to every network (or the
        ones named) by the bridge plugin and its IPAM. A failed attachment is undone."""
        with self._lock:
            pod_name = check_pod_name(name or f"{node}-pod{len(self.pods) + 1}")
            if pod_name in self.pods:
                raise LabError(f"pod {pod_name!r} exists")
            host = self.node(node)
            pod = new_pod(self.spec, name=pod_name, node=node, k8s_namespace=k8s_namespace)
            self.pods[pod_name] = pod
        topology.add_namespace(pod.netns, sysctls=topology.POD_SYSCTLS, record=self._record)
        nets = (
            [self.spec.network(n) for n in networks] if networks is not None else self.spec.networks
        )
        addresses: dict[str, tuple[IPAddress, ...]] = {}
        try:
            for net in nets:
                result = self._cni(pod, net, "ADD", host)
                addresses[net.name] = result_addresses(result)
                pod = attrs.evolve(pod, addresses=dict(addresses))
                with self._lock:
                    self.pods[pod_name] = pod
        except BaseException:
            self._delete_pod_quietly(pod)
            with self._lock:
                self.pods.pop(pod_name, None)
            raise
        self._save()
        return pod

    def delete_pod(self, name: str) -> None:
        """DEL the pod's attachments through the plugins and delete its namespace."""
        pod = self.pod(name)
        host = self.node(pod.node)
        for net in self.spec.networks:
            if net.name in pod.addresses:
                self._cni(pod, net, "DEL", host)
        run(None, ["ip", "netns", "del", pod.netns])
        with self._lock:
            self.pods.pop(name, None)
        self._save()

    def _delete_pod_quietly(self, pod: Pod) -> None:
        host = self.nodes.get(pod.node)
        if host is not None:
            for net in self.spec.networks:
                with suppress(LabError):
                    self._cni(pod, net, "DEL", host)
        run(None, ["ip", "netns", "del", pod.netns], check=False)

    def _cni(self, pod: Pod, net: NetworkSpec, command: str, host: LabNode) -> dict[str, Any]:
        config = network_config(
            self.spec,
            net,
            node=host.name,
            nodes_file=self.nodes_file,
            ipam_dir=self.state_dir / "ipam" / host.name / net.name,
        )
        return invoke(
            self.spec,
            pod,
            config,
            command=command,
            ifname=net.pod_ifname,
            node_ns=host.namespace,
            bin_dir=self.bin_dir,
        )

    # -- traffic ----------------------------------------------------------------------

    def connectivity(
        self,
        pods: Iterable[str] | None = None,
        *,
        networks: Iterable[str] | None = None,
        families: Iterable[int] = (4, 6),
        deadline: float = 3.0,
        workers: int = 8,
    ) -> Matrix:
        """Ping every pod from every other pod on every network and family both have,
        ``workers`` pings at a time, each given up after ``deadline`` seconds."""
        chosen = [self.pod(p) for p in pods] if pods is not None else list(self.pods.values())
        nets = list(networks) if networks is not None else [n.name for n in self.spec.networks]
        return check_connectivity(
            chosen, nets, families=families, deadline=deadline, workers=workers
        )

    def ping(
        self,
        src: str,
        dst: str,
        *,
        network: str | None = None,
        family: int = 4,
        deadline: float = 3.0,
        size: int | None = None,
        dont_fragment: bool = False,
    ) -> bool:
        """One ping from pod ``src`` to pod ``dst``'s address on ``network``."""
        net = network or self.spec.main.name
        address = self.pod(dst).address(net, family)
        if address is None:
            raise LabError(f"pod {dst} has no IPv{family} address on {net}")
        return ping(
            self.pod(src).netns, address, deadline=deadline, size=size, dont_fragment=dont_fragment
        )

    def run(self, name: str, argv: Sequence[str], *, check: bool = True) -> str:
        """Run a command inside a node's, pod's or (``out``) the outside host's namespace;
        return its stdout."""
        return run(self.namespace_of(name), argv, check=check).stdout

    def namespace_of(self, name: str) -> str:
        """The namespace of a node, a pod, or ``out`` (the outside host)."""
        if name == "out":
            if not self.spec.outside:
                raise LabError("this lab has no outside host (LabSpec(outside=True))")
            return self.spec.outside_ns
        return self.nodes[name].namespace if name in self.nodes else self.pod(name).netns

    def serve_whoami(self, name: str) -> None:
        """Start the "who am I" UDP server (``lab.whoami``) in a node, pod or ``out``."""
        proc = whoami.start_server(self.namespace_of(name))
        with self._lock:
            self._servers.append(proc)

    def whoami(self, src: str, address: IPAddress | str, *, deadline: float = 3.0) -> str | None:
        """The source address the "who am I" server at ``address`` saw when ``src`` (a
        node, pod or ``out``) asked it; None when it did not answer."""
        return whoami.ask(self.namespace_of(src), address, deadline=deadline)

    def names(self) -> list[str]:
        """Node names in order."""
        return [node_name(i) for i in range(1, self.spec.nodes + 1) if node_name(i) in self.nodes]
