"""NetworkPolicy enforcement on one node: keeps the instance's two policy tables
(``core.policynft``: ``inet`` and ``bridge`` ``xcluster-cni-policy-<protocol>``) as the
``PolicyStore``'s view wants them for the pods of this node.

- **Never on a partial view.** Nothing is written until Pods, Namespaces and
  NetworkPolicies have all been listed completely. Tables an earlier run left keep
  enforcing meanwhile (a restart opens no window: the old tables stay until the new view
  replaces them in one transaction). While a source is unhealthy (API outage) the view
  keeps its last state: nothing changes until the API answers again.
- **Incremental.** Each change recompiles the node's state (``compile_node``: milliseconds
  for thousands of pods) and writes only the element differences from what the last
  reconcile left (``update_document``: one transaction, no listing); a new or vanished
  peer class, or a new bridge address, rewrites both tables atomically
  (``table_document``).
- **Self-healing.** A full reconcile (at start, every resync interval, and at once when
  the ``NftTableEvents`` of the tables report a change) lists both tables back and compares
  them with what is wanted: missing or foreign elements are put right element by element
  (``repair_document``), anything else rewrites the tables.

Runs in the shared ``ReconcileLoop`` (coalescing, retries with backoff, ``max_failures``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
from prometheus_client import Counter, Gauge, Histogram

from xcluster_cni_lib.core.policyfacts import PolicyView
from xcluster_cni_lib.core.policynft import (
    BRIDGE,
    INET,
    PolicyState,
    compile_node,
    delete_document,
    read_tables,
    repair_document,
    table_document,
    table_name,
    update_document,
    wanted_tables,
)
from xcluster_cni_lib.core.policyscope import NodeScope, node_scope
from xcluster_cni_lib.core.protocols import DEFAULT_PROTOCOL
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.support.memory import release_free_memory
from xcluster_cni_lib.sync.loop import TableLoop
from xcluster_cni_lib.sync.metrics import PREFIX, DaemonMetrics
from xcluster_cni_lib.sync.policystore import PolicyStore

log = jsonlog.get_logger(__name__)

#: Seconds between two reads of the bridge hooks' sysctls (``POLICY_SAME_NODE=br-netfilter``).
HOOKS_POLL = 1.0


class PolicyNft(Protocol):
    """What the reconciler needs of nftables (``kernel.nftables.Nft``)."""

    def apply(self, document: Mapping[str, Any]) -> None: ...

    def read_table(self, name: str, *, family: str = ...) -> list[dict[str, Any]] | None: ...


class BridgeAddress(Protocol):
    """The pods' bridge (``kernel.podbridge.PodBridge``): its address, None if absent;
    whether the node shows bridged frames to the IP hooks (``br_netfilter``)."""

    def mac(self) -> str | None: ...

    def br_netfilter(self) -> bool: ...


@attrs.frozen
class PolicyResult:
    """What one reconcile did. ``action``: ``wait`` (the view is not complete: nothing
    written), ``none``, ``update`` (elements changed), ``repair`` (a tampered table's
    elements put back) or ``replace`` (both tables written)."""

    full: bool
    action: str = "none"
    changed: int = 0  # elements added or deleted (a replace: all of them)
    elements: int = 0
    pods: int = 0  # local pods isolated (ingress or egress)
    policies: int = 0  # policies selecting a local pod
    restored: bool = False  # someone had changed the tables; they were put back
    duration: float = 0.0


class PolicyMetrics:
    def __init__(self, metrics: DaemonMetrics) -> None:
        r = metrics.registry
        self.syncs = Counter(
            PREFIX + "policy_syncs", "NetworkPolicy reconciles by result (ok, error).",
            ["result"], registry=r,
        )  # fmt: skip
        self.writes = Counter(
            PREFIX + "policy_writes",
            "Transactions on the policy tables by kind (update, repair, replace, delete).",
            ["kind"],
            registry=r,
        )
        self.restored = Counter(
            PREFIX + "policy_restored",
            "Times the policy tables had been changed by someone else and were put back.",
            registry=r,
        )
        self.duration = Histogram(
            PREFIX + "policy_sync_duration_seconds",
            "Duration of NetworkPolicy reconciles that wrote something (compile and write).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.pods = Gauge(
            PREFIX + "policy_pods",
            "Pods on this node isolated by NetworkPolicy (ingress or egress), as enforced.",
            registry=r,
        )
        self.policies = Gauge(
            PREFIX + "policy_policies",
            "NetworkPolicies that select at least one pod on this node, as enforced.",
            registry=r,
        )
        self.elements = Gauge(
            PREFIX + "policy_elements",
            "Set and map elements in the policy tables after the last reconcile.",
            registry=r,
        )
        self.last_error = Gauge(
            PREFIX + "policy_last_error_timestamp_seconds",
            "When the last NetworkPolicy reconcile failed (Unix time; 0: never).",
            registry=r,
        )
        self.objects = Gauge(
            PREFIX + "policy_objects",
            "Pods (with addresses), Namespaces and NetworkPolicies the agent knows.",
            ["kind"],
            registry=r,
        )
        self.pod_start_wait = Histogram(
            PREFIX + "policy_pod_start_wait_seconds",
            "How long a served ADD waited for the new pod's policy to be enforced.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
            registry=r,
        )
        self.problems = Gauge(
            PREFIX + "policy_problems",
            "Objects skipped because they are malformed (logged with their name and field).",
            registry=r,
        )


class PolicyReconciler(TableLoop):
    """Keeps the policy tables of instance ``protocol`` in line with ``store`` for the
    pods of node ``node_name``. Subscribe :meth:`notify` to the store, give
    :meth:`notify_kernel` to an ``NftTableEvents`` of :attr:`table` (families ``inet``
    and ``bridge``), run :meth:`run` in a thread until ``stop`` is set."""

    loop_name = "policy"

    def __init__(
        self,
        store: PolicyStore,
        nft: PolicyNft,
        *,
        node_name: str,
        protocol: int = DEFAULT_PROTOCOL,
        bridge: BridgeAddress | None = None,
        log_denied: bool = False,
        same_node: str = "redirect",
        resync_interval: float = 60.0,
        coalesce: float = 0.05,
        retry_min: float = 0.2,
        retry_max: float = 10.0,
        metrics: DaemonMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.nft = nft
        self.node_name = node_name
        self.table = table_name(protocol)
        self.bridge = bridge
        self.log_denied = log_denied
        self.same_node = same_node
        self._br_netfilter: bool | None = None  # last seen, with same_node br-netfilter
        self.resync_interval = resync_interval
        self.coalesce = coalesce
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.clock = clock
        self.policy_metrics = PolicyMetrics(metrics) if metrics is not None else None
        self.metrics = self.policy_metrics  # the loop counts errors in ``syncs``
        self.on_iteration: Callable[[Any], None] | None = None
        self.last_tick = clock()
        self.failed_syncs = 0
        self._wake = threading.Event()
        self._node_change = False
        self._last_full = -1e9
        self._retry_delay = 0.0
        # what the kernel holds as the last reconcile left it (None: unknown)
        self._installed: PolicyState | None = None
        self._installed_mac: str | None = None
        self._generation = -1
        self._scope: NodeScope | None = None  # of the last compiled view
        self.skipped = 0  # changes found not to matter to this node (no recompile)
        #: the store generation the tables enforce (``wait_applied``)
        self.applied_generation = -1
        self._applied = threading.Condition()
        self.syncs = 0
        self.full_syncs = 0
        self.restores = 0
        self.first_sync_done = False
        self.last_error: str | None = None
        self.last_result: PolicyResult | None = None

    # -- status ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The tables are as a complete view wants them (as of the last reconcile)."""
        return self.first_sync_done and not self.failed_syncs

    @property
    def problems(self) -> list[str]:
        """Why enforcement is not (or not fully) in place; empty when it is."""
        out = [f"policy: {r}" for r in self.store.reasons()]
        if self.failed_syncs:
            out.append(
                f"policy: last {self.failed_syncs} reconciles of table {self.table} failed: "
                f"{self.last_error}"
            )
        elif not self.first_sync_done and not out:
            out.append(f"policy: table {self.table} not reconciled yet")
        return out

    def wait_applied(self, generation: int, timeout: float) -> bool:
        """Wait until the tables enforce the store's ``generation`` (or a later one);
        false after ``timeout`` seconds."""
        with self._applied:
            return self._applied.wait_for(
                lambda: self.applied_generation >= generation, timeout=timeout
            )

    def _mark_applied(self, generation: int) -> None:
        with self._applied:
            if generation > self.applied_generation:
                self.applied_generation = generation
                self._applied.notify_all()

    # -- one reconcile ---------------------------------------------------------------------

    def _desired(self) -> tuple[PolicyView, PolicyState]:
        view, self._generation = self.store.view()
        desired = compile_node(view, node=self.node_name)
        self._scope = node_scope(view, self.node_name)
        return view, desired

    def _nothing_that_matters(self) -> bool:
        """Only pods changed since the last compile, none of them one this node's state
        depends on (``core.policyscope``): then the state is as it was, for the store's
        current generation (which this records)."""
        scope = self._scope
        found = self.store.pod_changes_since(self._generation) if scope is not None else None
        if scope is None or found is None:
            return False
        generation, pairs = found
        namespaces = self.store.namespaces_view()
        if any(
            scope.pod_matters(namespaces, o) or scope.pod_matters(namespaces, n) for o, n in pairs
        ):
            return False
        self._generation = generation
        self._mark_applied(generation)
        self.skipped += 1
        return True

    def _mac(self, *, full: bool = False) -> str | None:
        """The bridge address the bridge table redirects to; None: no bridge table (no
        bridge, or ``same_node`` br-netfilter on a node that shows bridged frames to the
        IP hooks: read at each full reconcile, which ``follow_bridge_hooks`` asks for at
        once when that changed)."""
        if self.bridge is None:
            return None
        # read (and pinned at first sight) in either mode: a bridge's address follows its
        # ports, and pods whose gateway address changed under them lose the node until
        # their neighbour entry is probed again (found by the soak, br-netfilter mode)
        mac = self.bridge.mac()
        if self.same_node == "br-netfilter":
            if full or self._br_netfilter is None:
                on = self.bridge.br_netfilter()
                if on != self._br_netfilter:
                    how = "bridged, through br_netfilter" if on else "redirected (no br_netfilter)"
                    level = log.info if on else log.warning
                    level("policy: same-node traffic", mode=how, table=self.table)
                self._br_netfilter = on
            if self._br_netfilter:
                return None
        return mac

    @property
    def follows_bridge_hooks(self) -> bool:
        """Whether same-node traffic may stay bridged (``same_node`` br-netfilter, with a
        bridge): then whether the node passes bridged frames to the IP hooks matters."""
        return self.bridge is not None and self.same_node == "br-netfilter"

    def follow_bridge_hooks(self, stop: threading.Event, *, interval: float = HOOKS_POLL) -> None:
        """With ``same_node`` br-netfilter: read whether bridged frames pass the IP hooks
        every ``interval`` seconds, and reconcile fully at once when that changed. Turned
        off, the node would bridge policed pods' frames unjudged until the redirect is
        back: this bounds that to about ``interval`` instead of the resync interval. No
        event tells of a sysctl change, so it polls (two small reads). Returns when
        ``stop`` is set; at once when there is nothing to follow."""
        bridge = self.bridge
        if bridge is None or not self.follows_bridge_hooks:
            return
        while not stop.wait(interval):
            known = self._br_netfilter
            if known is not None and bridge.br_netfilter() != known:
                self.notify_kernel()

    def _failed(self, e: Exception) -> None:
        self.last_error = f"{type(e).__name__}: {e}"
        if self.policy_metrics is not None:
            self.policy_metrics.last_error.set(time.time())

    def _wanted(self, state: PolicyState, mac: str | None) -> Any:
        return wanted_tables(self.table, state, bridge_mac=mac, log_denied=self.log_denied)

    def _full(self) -> PolicyResult:
        started = self.clock()
        self._last_full = started
        self.full_syncs += 1
        if not self.store.synced:
            return self._finish(PolicyResult(full=True, action="wait"), None, quiet=True)
        settled, settled_mac = self._installed, self._installed_mac
        self._installed = None  # until this reconcile is done
        mac = self._mac(full=True)
        view, desired = self._desired()
        objects = [
            o
            for family in (INET, BRIDGE)
            for o in (self.nft.read_table(self.table, family=family) or [])
        ]
        present = bool(objects)
        listed = read_tables(objects)
        del objects  # the listing's dicts (tens of MB with 10,000s of elements)
        # built only when there is something to compare it with (not at a first start)
        wanted = self._wanted(desired, mac) if present else None
        document = None
        if present:
            document = repair_document(
                self.table,
                listed,
                desired,
                bridge_mac=mac,
                log_denied=self.log_denied,
                wanted=wanted,
            )
        if document is None:
            action = "replace"
            changed = desired.count()
            document = table_document(
                self.table, desired, bridge_mac=mac, log_denied=self.log_denied
            )
        else:
            changed = sum(len(c[v]["element"]["elem"]) for c in document["nftables"]
                          for v in ("add", "delete") if v in c)  # fmt: skip
            action = "repair" if changed else "none"
        if action != "none":
            self.nft.apply(document)
        del document
        self._installed, self._installed_mac = desired, mac
        restored = False
        if settled is not None:  # what the last reconcile left: is it still there?
            if wanted is None or (settled, settled_mac) != (desired, mac):
                wanted = self._wanted(settled, settled_mac)
            restored = listed != wanted
        del listed, wanted
        release_free_memory()  # the peak of this reconcile, back to the system
        return self._finish(
            PolicyResult(
                full=True,
                action=action,
                changed=changed,
                elements=desired.count(),
                restored=restored,
                duration=self.clock() - started,
            ),
            view,
        )

    def _changes(self) -> PolicyResult | None:
        installed = self._installed
        assert installed is not None
        started = self.clock()
        mac = self._mac()
        if self.store.generation == self._generation and mac == self._installed_mac:
            return None
        if mac == self._installed_mac and self._nothing_that_matters():
            return None
        view, desired = self._desired()
        generation = self._generation
        document = None
        if mac == self._installed_mac:
            document = update_document(self.table, installed, desired, bridge=mac is not None)
        if document is None:
            action, changed = "replace", desired.count()
            document = table_document(
                self.table, desired, bridge_mac=mac, log_denied=self.log_denied
            )
        else:
            before, after = installed.elements(), desired.elements()
            changed = sum(len(before.get(k, frozenset()) ^ after.get(k, frozenset()))
                          for k in before.keys() | after.keys())  # fmt: skip
            if not changed:
                self._mark_applied(generation)
                return None
            action = "update"
        self._installed = None  # unknown if the transaction fails
        self.nft.apply(document)
        self._installed, self._installed_mac = desired, mac
        if action == "replace":
            del document
            release_free_memory()
        return self._finish(
            PolicyResult(
                full=False,
                action=action,
                changed=changed,
                elements=desired.count(),
                duration=self.clock() - started,
            ),
            view,
        )

    def _finish(
        self, result: PolicyResult, view: PolicyView | None, *, quiet: bool = False
    ) -> PolicyResult:
        self.syncs += 1
        scope = self._scope
        if view is not None and scope is not None:  # the scope of this view (``_desired``)
            self._mark_applied(self._generation)
            policed = self._installed.policed if self._installed is not None else frozenset()
            result = attrs.evolve(
                result,
                pods=sum(1 for p in scope.local if any(a in policed for a in p.ips)),
                policies=len(scope.policies),
            )
            self.first_sync_done = True
        self.last_result = result
        self.last_error = None
        if result.restored:
            self.restores += 1
            log.info("policy tables restored", table=self.table)
        m = self.policy_metrics
        if m is not None:
            m.syncs.labels(result="ok").inc()
            if result.action not in ("none", "wait"):
                m.writes.labels(kind=result.action).inc()
                m.duration.observe(result.duration)
            if result.restored:
                m.restored.inc()
            if view is not None:
                m.elements.set(result.elements)
                m.pods.set(result.pods)
                m.policies.set(result.policies)
        if not quiet:
            level = jsonlog.INFO if result.action != "none" else jsonlog.DEBUG
            if log.enabled(level):
                log.log(
                    level,
                    "policy sync",
                    table=self.table,
                    action=result.action,
                    changed=result.changed,
                    elements=result.elements,
                    pods=result.pods,
                    policies=result.policies,
                    full=result.full,
                    duration_s=round(result.duration, 6),
                )
        return result

    def remove(self) -> bool:
        """Delete both tables (policy switched off): true if there were any."""
        self._installed = None
        present = any(self.nft.read_table(self.table, family=f) is not None for f in (INET, BRIDGE))
        if not present:
            return False
        self.nft.apply(delete_document(self.table))
        log.info("policy tables deleted", table=self.table)
        return True
