"""The level-triggered route reconciler.

Events only *notify*; the reconciler then works from the current cache, never from the
events. A *full* reconcile (at start, every ``resync_interval``, and whenever the
narrower kind cannot be trusted) takes the whole cache: desired routes from the core
planner, present routes listed from the table, a plan, one batched apply. With a table
that tracks the kernel's changes (``TrackingRouteTable``, e.g. ``NetlinkRouteTable``),
the reconciles in between are *incremental*: they plan only the destinations of the
nodes that changed (the cache's journal says which) and those the kernel reports as
changed by someone else, against the table's tracked view, without a dump. Our own
writes' events are known to the table and cost nothing. Rules that keep it safe:

- nothing is deleted before the node view has completed its first full list (``synced``),
  nor while the source is unhealthy (the view may be stale): deletes are held back and
  counted, adds and replaces from the last known view still go in (so a route removed by
  hand comes back even while the API server is away);
- routes of other protocols are never touched (the table filters on its protocol); a
  destination held by one is a *conflict*: logged, counted and retried;
- failed route operations are logged with the route and the kernel's reason and retried
  soon (exponential backoff from ``retry_min`` to ``retry_max``), not only at the resync.

A route put back as the previous reconcile wanted it, which did not fail then, counts as
*restored* (someone removed or changed it); the reconciler keeps no copy of the installed
routes for that, nor for their number (a tracking table counts them, else the full
reconcile's list does).

Timing: an isolated change is reconciled at once (leading edge); further notifications
within ``coalesce`` seconds after a reconcile started are batched into the next one, so a
burst of 100 node changes costs a couple of reconciles, not 100.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from xcluster_cni_lib.core.ownnode import find_own, machine_id_key
from xcluster_cni_lib.core.planning import DesiredRoutes, plan_routes
from xcluster_cni_lib.core.ports import RouteTable, TrackingRouteTable
from xcluster_cni_lib.core.ranges import RangePolicy
from xcluster_cni_lib.core.values import IPNetwork, NodeNetwork, Plan, Problem, Route, RouteOutcome
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.sync.loop import ReconcileLoop
from xcluster_cni_lib.sync.metrics import DaemonMetrics
from xcluster_cni_lib.sync.nodecache import CachedNode, CacheView, NodeCache
from xcluster_cni_lib.sync.outcomes import (
    SyncResult,
    WantedBefore,
    installed_after,
    record_metrics,
    report_contested,
    report_failures,
    restored_routes,
    skip_reasons,
)

__all__ = ["Reconciler", "SyncResult", "skip_reasons"]  # the last two from ``outcomes``

log = jsonlog.get_logger(__name__)


class Reconciler(ReconcileLoop):
    """Keeps a ``RouteTable`` in line with a ``NodeCache``.

    ``node_name``/``machine_id`` identify the own node, which gets no route; with
    ``overlay`` (a vxlan device name) routes go through that device (``core.overlay``). Call
    :meth:`run_once` (full) or :meth:`run_changes` (incremental) yourself, or :meth:`run`
    in a thread until ``stop`` is set; :meth:`notify` (subscribe it to the cache) and
    :meth:`notify_kernel` (give it to a route monitor) wake the loop.
    """

    def __init__(
        self,
        cache: NodeCache,
        table: RouteTable,
        *,
        node_name: str | None = None,
        machine_id: str | None = None,
        resync_interval: float = 60.0,
        coalesce: float = 0.1,
        retry_min: float = 0.2,
        retry_max: float = 10.0,
        metrics: DaemonMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        range_policy: Callable[[], RangePolicy] | None = None,
        overlay: str | None = None,
    ) -> None:
        self.cache = cache
        self.table = table
        # the vxlan device routes go through (OVERLAY=vxlan), else direct routes
        self.overlay = overlay
        self.node_name = node_name
        self.machine_id = machine_id
        self.resync_interval = resync_interval
        self.coalesce = coalesce
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.metrics = metrics
        self.clock = clock
        # the pod-CIDR rule with the host's subnets, read at every full reconcile
        self.range_policy = range_policy
        # contested pod CIDRs as of the last reconcile (logged once per change; /readyz)
        self.contested: tuple[Problem, ...] = ()
        self._wake = threading.Event()
        self._node_change = False
        self._tracking = isinstance(table, TrackingRouteTable)
        # what the last reconcile left: desired routes as of cache generation `_generation`
        self._state: DesiredRoutes | None = None
        self._generation = -1
        self._by_machine_id: frozenset[str] = frozenset()  # nodes with our machine id
        self._skipped: dict[str, Problem] = {}
        # The kernel holds what `_state` wants, but for `_failed`: a reconcile ended
        # without raising since `_state` last changed. Not at start: nothing counts as
        # restored then. (The installed routes are not kept here: a tracking table
        # counts them, otherwise the full reconcile's list does.)
        self._settled = False
        self._failed: dict[IPNetwork, RouteOutcome] = {}  # by destination, until fixed
        # the table's tracked view is valid since our last full pass, and every change it
        # reported since was reconciled (not so after a reconcile that raised)
        self._tracked = False
        self._view_flags = (False, False)  # (synced, healthy) at the last full reconcile
        self._last_full = -1e9  # when the last full reconcile started
        self._retry_delay = 0.0
        self._conflicts_seen: frozenset[Route] = frozenset()
        self.syncs = 0
        self.failed_syncs = 0  # consecutive reconciles that raised
        self.last_result: SyncResult | None = None
        self.first_sync_done = False  # a reconcile on a synced view succeeded
        self.last_tick = clock()  # the loop's heartbeat, for liveness
        self.on_iteration: Callable[[SyncResult | None], None] | None = None

    @property
    def unresolved(self) -> tuple[RouteOutcome, ...]:
        """The wanted routes not in place after the last reconcile: held by another
        protocol (``conflict``), gateway not reachable, or a failed write; by destination."""
        failed = self._failed
        return tuple(failed[d] for d in sorted(failed, key=lambda n: (n.version, n)))

    # -- one reconcile ---------------------------------------------------------------------

    def run_once(self) -> SyncResult:
        """Reconcile everything, now (a full reconcile). Raises only when listing the
        table fails."""
        state = self._state
        return self._full(state.routes.get if state is not None and self._settled else None)

    def _full(self, wanted_before: WantedBefore | None) -> SyncResult:
        """A full reconcile; ``wanted_before``: the route wanted to a destination when
        the last reconcile ended (``None``: unknown, nothing counts as restored)."""
        started = self.clock()
        self._last_full = started
        view = self.cache.snapshot()
        before = self._state
        state = self._desired(view)
        if state is not before:
            self._settled = False  # until the new desired routes are in place
        self._tracked = False  # until this reconcile is done
        if self._tracking:
            # start tracking (first call) or drop the changes seen so far: the list covers them
            self.table.changed_destinations()  # type: ignore[attr-defined]
        present = self.table.list_routes()
        plan = plan_routes(state.routes.values(), present)

        deferred = 0
        if plan.delete and not (view.synced and view.healthy):
            deferred = len(plan.delete)
            log.info(
                "deletes deferred",
                count=deferred,
                reason="node list not synced yet" if not view.synced else "node source unhealthy",
            )
            plan = Plan(add=plan.add, replace=plan.replace)

        outcomes = self.table.apply(plan) if plan else []
        failures = tuple(o for o in outcomes if not o.ok)
        restored = restored_routes(plan, failures, wanted_before, failed_before=self._failed)
        if self._tracking:
            installed = self.table.installed_count()  # type: ignore[attr-defined]
        else:
            installed = installed_after(present, outcomes)
        self._failed = {f.route.dst: f for f in failures}
        self._skipped = {p.node: p for p in view.skipped}
        self._tracked = self._tracking
        self._view_flags = (view.synced, view.healthy)
        self._settled = True
        return self._finish(
            started=started,
            plan=plan,
            outcomes=outcomes,
            deferred=deferred,
            restored=restored,
            installed=installed,
            synced=view.synced,
            full=True,
        )

    def run_changes(self, *, retry: bool = False) -> SyncResult | None:
        """Reconcile what changed since the last reconcile: the destinations of the nodes
        that changed in the cache and those the table reports as changed in the kernel
        (and, with ``retry``, those whose route operations failed). ``None`` when nothing
        changed. Falls back to :meth:`run_once` when that is not known exactly: the
        table does not track, the cache was replaced by a full list, the node view is not
        synced or healthy (deletes are then deferred), the own node or an overlap is
        involved, or the kernel's events were lost."""
        state = self._state
        started = self.clock()
        changes = self._incremental_changes(
            state is not None,
            lambda entries: state is not None and self._own_affected(state, entries),
        )
        if changes is None or state is None:
            return self.run_once()
        generation, entries = changes
        table: TrackingRouteTable = self.table  # type: ignore[assignment]
        self._tracked = False  # until the changes taken now are reconciled
        kernel = table.changed_destinations()
        if kernel is None:
            return self.run_once()
        dirty = set(kernel)
        wanted_before: WantedBefore = state.routes.get
        if entries:
            networks: dict[str, NodeNetwork | None] = {}
            for name, entry in entries.items():
                problem = entry.problem if entry is not None else None
                if problem is None:
                    self._skipped.pop(name, None)
                else:
                    self._skipped[name] = problem
                networks[name] = entry.network if entry is not None else None
            # What was wanted at the changed nodes' CIDRs, old and new, before the update
            # changes it there; elsewhere `state.routes` keeps it (a local update changes
            # no other destination; after an overlap it is rebuilt into a new dict).
            before = state.routes
            changed = {
                cidr: before.get(cidr)
                for name, new in networks.items()
                for n in (state.networks.get(name), new)
                if n is not None
                for cidr in n.cidrs
            }

            def wanted_before(dst: IPNetwork) -> Route | None:
                return changed[dst] if dst in changed else before.get(dst)

            self._settled = False
            touched = state.update(networks)
            self._generation = generation
            if touched is None:  # an overlap: everything was computed again
                return self._full(wanted_before)
            dirty |= touched
        if retry:
            dirty |= self._failed.keys()
        if not dirty and not entries:
            self._tracked = True
            return None

        wanted = state.routes
        present = table.routes_to(dirty)
        plan = plan_routes((wanted[d] for d in dirty if d in wanted), present)
        outcomes = table.apply(plan) if plan else []
        failures = tuple(o for o in outcomes if not o.ok)
        restored = restored_routes(plan, failures, wanted_before, failed_before=self._failed)
        for dst in dirty:
            self._failed.pop(dst, None)
        for f in failures:
            self._failed[f.route.dst] = f
        self._tracked = self._settled = True
        return self._finish(
            started=started,
            plan=plan,
            outcomes=outcomes,
            deferred=0,
            restored=restored,
            installed=table.installed_count(),
            synced=True,
            full=False,
        )

    def _finish(
        self,
        *,
        started: float,
        plan: Plan,
        outcomes: Sequence[RouteOutcome],
        deferred: int,
        restored: Sequence[Route],
        installed: int,
        synced: bool,
        full: bool,
    ) -> SyncResult:
        """Log, count and report one reconcile."""
        state = self._state
        assert state is not None
        for r in restored:
            log.info("route restored", dst=str(r.dst), gateway=str(r.gateway), node=r.node)
        failures = tuple(o for o in outcomes if not o.ok)
        self._report_failures(failures)
        self._conflicts_seen = frozenset(
            f.route for f in self._failed.values() if f.status == "conflict"
        )
        problems = state.problems()
        self._report_contested(state.contested())
        moved = {r.dst for r in plan.replace}  # their old-gateway deletes are part of the replace
        skipped = len(self._skipped) + len({p.node for p in problems})
        duration = self.clock() - started
        result = SyncResult(
            desired=len(state.routes),
            installed=installed,
            added=sum(1 for o in outcomes if o.op == "add" and o.ok),
            replaced=sum(1 for o in outcomes if o.op == "replace" and o.ok),
            deleted=sum(
                1 for o in outcomes if o.op == "delete" and o.ok and o.route.dst not in moved
            ),
            deferred_deletes=deferred,
            restored=len(restored),
            failures=failures,
            skipped_nodes=skipped,
            duration=duration,
            plan=plan,
            full=full,
        )
        self.syncs += 1
        self.last_result = result
        if synced:
            self.first_sync_done = True
        self._record(result, list(self._skipped.values()), problems)
        level = jsonlog.INFO if plan or failures else jsonlog.DEBUG
        if log.enabled(level):
            log.log(
                level,
                "sync",
                added=result.added,
                replaced=result.replaced,
                deleted=result.deleted,
                deferred_deletes=deferred,
                failed=len(failures),
                desired=result.desired,
                installed=result.installed,
                nodes=len(state.networks),
                full=full,
                duration_s=round(duration, 6),
            )
        if log.enabled(jsonlog.TRACE):
            for o in outcomes:
                log.trace("route op", op=o.op, status=o.status, **o.route.to_json())
        return result

    def _desired(self, view: CacheView) -> DesiredRoutes:
        """The desired routes of a cache view; computed again only when the cache changed."""
        policy = self.range_policy() if self.range_policy is not None else None
        state = self._state
        if state is not None and self._generation == view.generation and state.policy == policy:
            return state
        own = find_own(view.facts, name=self.node_name, machine_id=self.machine_id)
        self._state = DesiredRoutes(
            view.networks, own=own.name if own else None, policy=policy, overlay=self.overlay
        )
        self._generation = view.generation
        wanted = machine_id_key(self.machine_id)
        if not self.node_name and wanted:
            self._by_machine_id = frozenset(
                f.name for f in view.facts if machine_id_key(f.machine_id) == wanted
            )
        return self._state

    def _own_affected(self, state: DesiredRoutes, entries: dict[str, CachedNode | None]) -> bool:
        """Whether these node changes may change which node is this one (or its CIDRs)."""
        if state.own is not None and state.own in entries:
            return True
        if self.node_name:
            return self.node_name in entries
        wanted = machine_id_key(self.machine_id)
        if not wanted:
            return False
        for name, entry in entries.items():
            if name in self._by_machine_id:
                return True
            if entry is not None and machine_id_key(entry.facts.machine_id) == wanted:
                return True
        return False

    def _report_contested(self, contested: list[Problem]) -> None:
        self.contested = report_contested(self.contested, contested, self.metrics)

    def _report_failures(self, failures: tuple[RouteOutcome, ...]) -> None:
        report_failures(failures, known_conflicts=self._conflicts_seen)

    def _record(
        self, result: SyncResult, skipped: Sequence[Problem], problems: Sequence[Problem]
    ) -> None:
        if self.metrics is not None:
            record_metrics(
                self.metrics,
                result,
                nodes=len(self.cache),
                conflicts_current=len(self._conflicts_seen),
                skipped=skipped,
                problems=problems,
            )

    # -- the loop --------------------------------------------------------------------------

    # (``run``: the loop of ``sync.loop.ReconcileLoop``)

    def _retries_pending(self) -> bool:
        return bool(self._failed)
