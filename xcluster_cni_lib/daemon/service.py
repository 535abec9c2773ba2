"""The router daemon as a service: wires a node source, the compact cache, a route table
bound to our protocol (whose tracker is the kernel monitor), the reconciler and the
status server.

Threads: ``source`` (LIST+WATCH or file polling into the cache), ``monitor`` (the route
table's tracker: kernel events that can change our routes -> reconcile), ``reconciler``
(the loop), ``http`` and, with ``IPAM_SOCKET``, ``ipam`` (``daemon.ipamserver``: the IPAM
verbs for the host shim, a thread per call). The caller's thread waits for a stop request
(SIGTERM/SIGINT or ``Daemon.stop``). Stopping never touches routes: a restarted daemon
finds them in place and only fixes differences.

The pod-CIDR rule (``core.ranges.RangePolicy``): the settings' part (``CLUSTER_CIDRS``,
the minimum prefixes, the deny-list) is applied when nodes are parsed into the cache; the
host's part (its connected subnets and own addresses, ``host_view``) is read from the
kernel at start and at every full reconcile (each resync interval, and whenever the
incremental path falls back), and applied by the planner. An address change on the host
is therefore picked up within one resync interval.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any

from xcluster_cni_lib.core.masquerade import delete_document
from xcluster_cni_lib.core.overlay import default_device
from xcluster_cni_lib.core.ports import KernelMonitor, NodeSource, RouteTable
from xcluster_cni_lib.core.ranges import RangePolicy, host_view
from xcluster_cni_lib.core.values import IPAddress, IPNetwork
from xcluster_cni_lib.daemon.config import DaemonConfig, format_address
from xcluster_cni_lib.daemon.http import StatusServer
from xcluster_cni_lib.daemon.ownnode import NodesFileOwnNode, OwnNode, node_selector
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.support.memory import ALLOCATOR_ENV, limit_arenas, map_large_blocks
from xcluster_cni_lib.sync.metrics import DaemonMetrics
from xcluster_cni_lib.sync.nodecache import NodeCache
from xcluster_cni_lib.sync.reconciler import Reconciler

if TYPE_CHECKING:
    from xcluster_cni_lib.daemon.admission import PolicyAdmission
    from xcluster_cni_lib.daemon.ipamserver import IpamServer
    from xcluster_cni_lib.kernel.nftables import Nft
    from xcluster_cni_lib.kernel.nftevents import NftTableEvents
    from xcluster_cni_lib.kernel.podbridge import PodBridge
    from xcluster_cni_lib.kernel.vxlan import VxlanKernel
    from xcluster_cni_lib.sync.masquerade import MasqueradeReconciler
    from xcluster_cni_lib.sync.overlay import OverlayReconciler
    from xcluster_cni_lib.sync.policy import PolicyReconciler
    from xcluster_cni_lib.sync.policystore import PolicyStore

log = jsonlog.get_logger(__name__)

STOP_DEADLINE = 1.5  # seconds to wait for threads on stop (the contract is "within 2 s")
LIVENESS_STALE = 30.0  # the reconcile loop must tick at least this often to be healthy


#: What the daemon needs of a kernel monitor (the route table's tracker by default).
Monitor = KernelMonitor
#: This host's connected subnets and own addresses (``core.ranges.host_view``).
HostView = tuple[tuple[IPNetwork, ...], frozenset[IPAddress]]


def kernel_host_view(netns: str | None = None) -> Callable[[], HostView]:
    """A reader of the host's connected subnets and addresses from the kernel (in
    ``netns``)."""

    def read() -> HostView:
        from xcluster_cni_lib.kernel.links import list_interface_addresses

        return host_view(list_interface_addresses(netns))

    return read


class HostPolicy:
    """The configured rule plus the host's current view, read on each call (the
    reconciler calls it at every full reconcile). A failed read keeps the last view and
    logs a warning: a transient netlink error must not stop routing."""

    def __init__(self, base: RangePolicy, read: Callable[[], HostView] | None) -> None:
        self.base = base
        self.read = read
        self.policy = base

    def __call__(self) -> RangePolicy:
        if self.read is None:
            return self.policy
        try:
            subnets, addresses = self.read()
        except Exception as e:
            log.warning("host addresses not read; keeping the last ones", error=f"{e}")
            return self.policy
        policy = self.base.with_host(subnets, addresses)
        if policy != self.policy:
            log.info(
                "host subnets",
                subnets=",".join(str(s) for s in subnets) or None,
                addresses=len(addresses),
            )
            self.policy = policy
        return self.policy  # the same object while nothing changed (it remembers answers)


def make_source(config: DaemonConfig) -> NodeSource:
    """The node source the config asks for: a nodes file, or the Kubernetes API."""
    if config.nodes_file is not None:
        from xcluster_cni_lib.sources.nodesfile import FileNodeSource

        return FileNodeSource(config.nodes_file, annotations=config.annotations)
    from xcluster_cni_lib.sources.kube import load_api_client
    from xcluster_cni_lib.sources.watching import KubeNodeSource

    client = load_api_client(config.kubeconfig)
    source: NodeSource = KubeNodeSource(client, annotations=config.annotations)
    return source


def _counter(store: PolicyStore, kind: str) -> Callable[[], float]:
    return lambda: float(store.counts()[kind])


def make_policy_sources(config: DaemonConfig) -> dict[str, NodeSource]:
    """The NetworkPolicy agent's watches: Pods (those that can matter: not hostNetwork,
    not finished), Namespaces, NetworkPolicies, through one API client."""
    from xcluster_cni_lib.sources.kube import load_api_client
    from xcluster_cni_lib.sources.watching import KubeNodeSource
    from xcluster_cni_lib.sync.policystore import KINDS, POD_FIELD_SELECTOR, converter

    client = load_api_client(config.kubeconfig)
    return {
        kind: KubeNodeSource(
            client,
            resource=kind,
            convert=converter(kind),
            field_selector=POD_FIELD_SELECTOR if kind == "pods" else None,
        )
        for kind in KINDS
    }


def make_own_node(
    config: DaemonConfig, machine_id: str | None, source: NodeSource | None = None
) -> tuple[OwnNode | NodesFileOwnNode, NodeSource | None]:
    """The served IPAM's own node: from the nodes file, or a watch on that one node
    (``source`` replaces the watch, for tests), persisted to ``IPAM_NODE_FILE``."""
    if config.nodes_file is not None and source is None:
        return NodesFileOwnNode(config.nodes_file, config.node_name, machine_id), None
    assert config.node_name is not None  # load_config requires it with IPAM_SOCKET
    own = OwnNode(config.node_name, config.ipam_node_file)
    if source is None:
        from xcluster_cni_lib.sources.kube import load_api_client
        from xcluster_cni_lib.sources.watching import KubeNodeSource

        source = KubeNodeSource(
            load_api_client(config.kubeconfig),
            field_selector=node_selector(config.node_name),
            convert=OwnNode.keep_whole,
        )
    return own, source


class Daemon:
    """One daemon instance. Pass ``source``/``table``/``monitor`` to replace the real
    adapters (tests, users' harnesses); ``netns`` runs the kernel side in a named network
    namespace (tests)."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        source: NodeSource | None = None,
        table: RouteTable | None = None,
        monitor: Monitor | None = None,
        netns: str | None = None,
        machine_id: str | None = None,
        coalesce: float = 0.1,
        host: Callable[[], HostView] | None = None,
        own_node_source: NodeSource | None = None,
        policy_sources: Mapping[str, NodeSource] | None = None,
    ) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.exit_code = 0
        self.metrics = DaemonMetrics()
        self.cache = NodeCache(policy=config.range_policy)
        self.source = source if source is not None else make_source(config)
        own_table = table is None
        # the kernel the daemon owns: None = this namespace, a name, False = injected
        self._kernel_netns: str | bool | None = netns if (own_table or netns) else False
        if table is None:
            from xcluster_cni_lib.kernel.routetable import NetlinkRouteTable

            table = NetlinkRouteTable(config.protocol, netns=netns, device=config.overlay_device)
        if monitor is None:
            track = getattr(table, "track", None)
            if callable(track):
                # the table's own tracker is the monitor: one kernel listener, one view
                monitor = track()
        self.table = table
        self.monitor = monitor
        if host is None and (own_table or netns is not None):
            host = kernel_host_view(netns)
        # without a kernel (an injected table, no netns) and no `host`: no host view
        self.host_policy = HostPolicy(config.range_policy, host)
        if machine_id is None:
            from xcluster_cni_lib.support.hostinfo import read_machine_id

            machine_id = read_machine_id()
        self.reconciler = Reconciler(
            self.cache,
            self.table,
            node_name=config.node_name,
            machine_id=machine_id,
            resync_interval=config.resync_interval,
            coalesce=coalesce,
            metrics=self.metrics,
            range_policy=self.host_policy,
            overlay=config.overlay_device,
        )
        self.cache.subscribe(self.reconciler.notify)
        self.metrics.watch_source(
            self._source_counters,
            malformed=lambda: int(getattr(self.source, "malformed_events", 0)),
        )
        self.metrics.ready.set_function(lambda: 0.0 if self.readyz() else 1.0)
        self.metrics.source_healthy.set_function(lambda: 1.0 if self.cache.healthy else 0.0)
        self.http: StatusServer | None = None
        if config.http_address is not None:
            self.http = StatusServer(
                config.http_address,
                healthz=self.healthz,
                readyz=self.readyz,
                metrics=self.metrics.render,
                warnings=self.warnings,
            )
        self.overlay: OverlayReconciler | None = None
        self._overlay_kernel: VxlanKernel | None = None
        if config.overlay_device is not None and (own_table or netns is not None):
            self._make_overlay(config, netns, machine_id)
        self.masquerade: MasqueradeReconciler | None = None
        self._nft: Nft | None = None
        self._nft_monitor: NftTableEvents | None = None
        if config.masquerade and (own_table or netns is not None):
            self._make_masquerade(config, netns, machine_id)
        self.policy: PolicyReconciler | None = None
        self.policy_store: PolicyStore | None = None
        self.policy_sources: dict[str, NodeSource] = {}
        self._policy_nft: Nft | None = None
        self._policy_monitor: NftTableEvents | None = None
        self._pod_bridge: PodBridge | None = None
        if config.network_policy and (own_table or netns is not None):
            self._make_policy(config, netns, policy_sources)
        self.ipam: IpamServer | None = None
        self.admission: PolicyAdmission | None = None
        self.own_node: OwnNode | NodesFileOwnNode | None = None
        self.own_node_source: NodeSource | None = None
        if config.ipam_socket is not None:
            from xcluster_cni_lib.daemon.ipamserver import IpamServer

            self.own_node, self.own_node_source = make_own_node(config, machine_id, own_node_source)
            if self.policy is not None and self.policy_store is not None:
                from xcluster_cni_lib.daemon.admission import PolicyAdmission

                self.admission = PolicyAdmission(self.policy_store, self.policy)
            self.ipam = IpamServer(
                config.ipam_socket,
                metrics=self.metrics,
                own_node=self.own_node,
                cni_path=config.ipam_cni_path,
                after=self.admission.after_call if self.admission is not None else None,
            )
        self._threads: list[threading.Thread] = []

    def _make_overlay(self, config: DaemonConfig, netns: str | None, mid: str | None) -> None:
        from xcluster_cni_lib.core.overlay import OverlaySettings
        from xcluster_cni_lib.kernel.vxlan import VxlanKernel
        from xcluster_cni_lib.sync.overlay import OverlayMetrics, OverlayReconciler

        assert config.overlay_device is not None
        self._overlay_kernel = VxlanKernel(netns)
        self.overlay = OverlayReconciler(
            self.cache,
            self._overlay_kernel,
            settings=OverlaySettings(config.overlay_device, config.vni, config.vxlan_port),
            node_name=config.node_name,
            machine_id=mid,
            metrics=OverlayMetrics(self.metrics.registry),
            resync_interval=config.resync_interval,
        )
        self.cache.subscribe(self.overlay.notify)
        # the device was (re)made: the routes through it go back at once, not at the
        # route reconciler's next retry
        self.overlay.on_device = self.reconciler.request_full

    def _make_masquerade(self, config: DaemonConfig, netns: str | None, mid: str | None) -> None:
        from xcluster_cni_lib.kernel.nftables import Nft
        from xcluster_cni_lib.kernel.nftevents import NftTableEvents
        from xcluster_cni_lib.sync.masquerade import MasqueradeReconciler

        # one Nft for the reconciler and the monitor: the monitor then knows the events of
        # the reconciler's own updates and does not take them for tampering
        self._nft = Nft(netns=netns)
        self.masquerade = MasqueradeReconciler(
            self.cache,
            self._nft,
            node_name=config.node_name,
            machine_id=mid,
            non_masquerade=config.non_masquerade_cidrs,
            protocol=config.protocol,
            resync_interval=config.resync_interval,
            metrics=self.metrics,
        )
        # the kernel's nf_tables notifications, our own transactions told by the nft
        # process id: not ``nft monitor``, which nft 1.0.6 crashes in when another table of
        # the namespace (a policy table) changes elements of a concatenated interval set
        self._nft_monitor = NftTableEvents(
            self.masquerade.table, own_pids=self._nft.started, netns=netns
        )
        self.cache.subscribe(self.masquerade.notify)

    def _make_policy(
        self,
        config: DaemonConfig,
        netns: str | None,
        sources: Mapping[str, NodeSource] | None,
    ) -> None:
        from xcluster_cni_lib.kernel.nftables import Nft
        from xcluster_cni_lib.kernel.nftevents import NftTableEvents
        from xcluster_cni_lib.kernel.podbridge import PodBridge
        from xcluster_cni_lib.sync.policy import PolicyReconciler
        from xcluster_cni_lib.sync.policystore import PolicyStore

        assert config.node_name is not None  # load_config requires it
        self.policy_store = store = PolicyStore()
        self.policy_sources = dict(sources) if sources is not None else make_policy_sources(config)
        self._policy_nft = Nft(netns=netns)
        if config.policy_bridge is not None:
            self._pod_bridge = PodBridge(config.policy_bridge, netns=netns)
        self.policy = PolicyReconciler(
            store,
            self._policy_nft,
            node_name=config.node_name,
            protocol=config.protocol,
            bridge=self._pod_bridge,
            log_denied=config.policy_log_denied,
            same_node=config.policy_same_node,
            resync_interval=config.resync_interval,
            metrics=self.metrics,
        )
        self._policy_monitor = NftTableEvents(
            self.policy.table,
            own_pids=self._policy_nft.started,
            netns=netns,
            families=("inet", "bridge"),
        )
        store.subscribe(self.policy.notify)
        metrics = self.policy.policy_metrics
        if metrics is not None:
            for kind in store.sinks:
                metrics.objects.labels(kind=kind).set_function(_counter(store, kind))
            metrics.problems.set_function(lambda: float(len(store.problems())))

    def _remove_leftover_tables(self) -> None:
        """The nftables tables of a feature that is off (MASQUERADE=false,
        NETWORK_POLICY=false) that an earlier run made go: one ``nft list tables``, and
        a delete only when there is something to delete."""
        from xcluster_cni_lib.core.masquerade import table_name as masquerade_table
        from xcluster_cni_lib.core.policynft import delete_document as delete_policy
        from xcluster_cni_lib.core.policynft import table_name as policy_table
        from xcluster_cni_lib.kernel.nftables import Nft, NftError

        protocol = self.config.protocol
        off: list[tuple[str, set[tuple[str, str]], Any]] = []
        if self.masquerade is None:
            name = masquerade_table(protocol)
            off.append(("masquerade", {("inet", name)}, delete_document(name)))
        if self.policy is None:
            name = policy_table(protocol)
            off.append(("network policy", {("inet", name), ("bridge", name)}, delete_policy(name)))
        if not off:
            return
        netns = self._kernel_netns if isinstance(self._kernel_netns, str) else None
        nft = Nft(netns=netns)
        try:
            present = set(nft.list_tables())
            for feature, tables, document in off:
                if tables & present:
                    nft.apply(document)
                    log.info(f"{feature} off: nftables tables removed", tables=sorted(tables))
        except NftError as e:  # e.g. no nft here: nothing of ours can be there either
            log.debug("leftover nftables tables not checked", error=str(e))
        finally:
            nft.close()

    # -- checks ----------------------------------------------------------------------------

    def healthz(self) -> list[str]:
        """Why the daemon is not alive (empty when it is)."""
        out = [f"thread {t.name} ended" for t in self._threads if not t.is_alive()]
        if not self._threads:
            out.append("not started")
        if self.ipam is not None and self._threads and not self.ipam.alive:
            out.append("IPAM server ended")
        stale = time.monotonic() - self.reconciler.last_tick
        if stale > LIVENESS_STALE:
            out.append(f"reconcile loop stuck for {stale:.0f}s")
        return out

    def readyz(self) -> list[str]:
        """Why the daemon is not ready (empty when it is)."""
        out = self.healthz()
        if not self.cache.synced:
            out.append("node list not synced yet")
        if not self.cache.healthy:
            reason = self.cache.health_reason
            out.append(f"node source unhealthy: {reason}" if reason else "node source unhealthy")
        parts: tuple[tuple[str, Any], ...] = (
            ("overlay", self.overlay),
            ("masquerade", self.masquerade),
            ("network policy", self.policy),
        )
        for name, part in parts:
            if part is not None and not part.ready:
                why = "; ".join(str(p) for p in part.problems[:3]) or "no successful sync yet"
                out.append(f"{name} not ready: {why}")
        unresolved = self.reconciler.unresolved
        if unresolved:
            shown = "; ".join(f"{o.route.dst}: {o.status} ({o.reason})" for o in unresolved[:3])
            more = f" and {len(unresolved) - 3} more" if len(unresolved) > 3 else ""
            out.append(f"{len(unresolved)} routes not in place: {shown}{more}")
        if not self.reconciler.first_sync_done:
            out.append("no successful sync yet")
        elif self.reconciler.failed_syncs:
            out.append(f"last {self.reconciler.failed_syncs} syncs failed")
        return out

    def warnings(self) -> list[str]:
        """What is wrong but does not make the daemon unready (a problem of some nodes'
        data, not of this daemon): contested pod CIDRs, as of the last reconcile."""
        contested = self.reconciler.contested
        if not contested:
            return []
        shown = "; ".join(str(p) for p in contested[:5])
        more = f" (and {len(contested) - 5} more)" if len(contested) > 5 else ""
        return [f"{len(contested)} contested pod CIDRs get no route: {shown}{more}"]

    def _source_counters(self) -> tuple[int, int]:
        return (int(getattr(self.source, "restarts", 0)), int(getattr(self.source, "relists", 0)))

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start every thread (and the HTTP server); returns at once."""
        limit_arenas()  # before the threads: their freed memory then stays reusable
        map_large_blocks()  # LIST pages and nft documents unmapped when freed
        log.info(
            "starting",
            version=_version(),
            allocator=os.environ.get(ALLOCATOR_ENV, "pymalloc"),
            **self.config.to_log(),
        )
        for warning in self.config.warnings:
            log.warning(warning)
        if self.ipam is not None:  # first: a socket it cannot take fails the start cleanly
            self.ipam.start()
        overlay, vxlan = self.overlay, self._overlay_kernel
        if overlay is not None and vxlan is not None:
            self._spawn("overlay", lambda: overlay.run(self.stop_event))
            vx_monitor = vxlan.monitor
            if vx_monitor is not None:
                self._spawn(
                    "overlay-monitor",
                    lambda: vx_monitor.run(overlay.notify_kernel, self.stop_event),
                )
        elif self._kernel_netns is not False:
            self._remove_overlay_device()
        masquerade, nft_monitor = self.masquerade, self._nft_monitor
        if masquerade is not None and nft_monitor is not None:
            self._spawn("masquerade", lambda: masquerade.run(self.stop_event))
            self._spawn(
                "masquerade-monitor",
                lambda: nft_monitor.run(masquerade.notify_kernel, self.stop_event),
            )

        policy, policy_monitor = self.policy, self._policy_monitor
        if policy is not None and policy_monitor is not None and self.policy_store is not None:
            self._spawn("policy", lambda: policy.run(self.stop_event))
            self._spawn(
                "policy-monitor",
                lambda: policy_monitor.run(policy.notify_kernel, self.stop_event),
            )
            if policy.follows_bridge_hooks:
                self._spawn(
                    "policy-bridge-hooks", lambda: policy.follow_bridge_hooks(self.stop_event)
                )
            for kind, source in self.policy_sources.items():
                self._spawn(
                    f"policy-{kind}",
                    partial(source.run, self.policy_store.sinks[kind], self.stop_event),
                )
        if self._kernel_netns is not False:
            self._remove_leftover_tables()
        own_source, own_node = self.own_node_source, self.own_node
        if own_source is not None and isinstance(own_node, OwnNode):
            self._spawn("own-node", lambda: own_source.run(own_node, self.stop_event))
        self._spawn("reconciler", self._run_reconciler)
        self._spawn("source", lambda: self.source.run(self.cache, self.stop_event))
        monitor = self.monitor
        if monitor is not None:
            self._spawn(
                "monitor", lambda: monitor.run(self.reconciler.notify_kernel, self.stop_event)
            )
        if self.http is not None:
            self.http.start()
            log.info("http listening", address=format_address(self.http.address))

    def _remove_overlay_device(self) -> None:
        """OVERLAY=none: the device an earlier run with the overlay made goes (and with it
        its neighbour and FDB entries); its routes are replaced by direct ones."""
        from xcluster_cni_lib.kernel.vxlan import VxlanKernel

        config = self.config
        name = config.vxlan_device or default_device(config.protocol)
        netns = self._kernel_netns if isinstance(self._kernel_netns, str) else None
        try:
            kernel = VxlanKernel(netns, monitor=False)
            try:
                if kernel.delete_device(name):
                    log.info("overlay off: vxlan device removed", device=name)
            finally:
                kernel.close()
        except Exception as e:  # never stops routing
            log.warning("overlay off: vxlan device not removed", device=name, error=str(e))

    def _run_reconciler(self) -> None:
        self.reconciler.run(self.stop_event)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def body() -> None:
            try:
                target()
            except Exception as e:
                if not self.stop_event.is_set():
                    log.error(f"{name} failed", error=f"{type(e).__name__}: {e}")
            if not self.stop_event.is_set():
                log.error(f"{name} ended unexpectedly; stopping (routes stay in place)")
                self.exit_code = 1
                self.stop_event.set()
                self.reconciler.notify()

        thread = threading.Thread(target=body, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def request_stop(self) -> None:
        """Ask the daemon to stop (safe from a signal handler)."""
        self.stop_event.set()
        self.reconciler.notify()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a stop was requested; true when it was."""
        return self.stop_event.wait(timeout)

    def stop(self) -> None:
        """Stop and join every thread (at most ``STOP_DEADLINE`` in all). Routes stay."""
        self.request_stop()
        deadline = time.monotonic() + STOP_DEADLINE
        if self.http is not None:
            self.http.stop()
        if self.ipam is not None:
            self.ipam.stop(timeout=max(0.0, deadline - time.monotonic()) / 2)
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        things: tuple[tuple[str, object], ...] = (
            ("reconciler", self.table),
            ("monitor", self.monitor),
            ("overlay-monitor", self._overlay_kernel),
            ("masquerade-monitor", self._nft_monitor),
            ("masquerade", self._nft),
            ("policy-monitor", self._policy_monitor),
            ("policy", self._policy_nft),
            ("policy", self._pod_bridge),
        )
        for name, thing in things:
            close = getattr(thing, "close", None)
            if callable(close) and name not in stuck:
                close()
        log.info("stopped; routes left in place", stuck_threads=stuck or None)


def _version() -> str:
    from xcluster_cni_lib import __version__

    return __version__


def run(config: DaemonConfig, **kwargs: Any) -> int:
    """Run a daemon until SIGTERM/SIGINT; the process's exit code. ``kwargs`` go to
    :class:`Daemon`."""
    daemon = Daemon(config, **kwargs)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal received, stopping", signal=signal.Signals(signum).name)
        daemon.request_stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    daemon.start()
    try:
        while not daemon.wait(1.0):
            pass
    finally:
        daemon.stop()
    return daemon.exit_code
