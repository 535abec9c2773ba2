"""The level-triggered route reconciler.

Events only *notify*; a reconcile always starts from the whole current cache: desired
routes from the core planner, present routes listed from the table, a plan, one batched
apply. Rules that keep it safe:

- nothing is deleted before the node view has completed its first full list (``synced``),
  nor while the source is unhealthy (the view may be stale): deletes are held back and
  counted, adds and replaces from the last known view still go in (so a route removed by
  hand comes back even while the API server is away);
- routes of other protocols are never touched (the table filters on its protocol); a
  destination held by one is a *conflict*: logged, counted and retried;
- failed route operations are logged with the route and the kernel's reason and retried
  soon (exponential backoff from ``retry_min`` to ``retry_max``), not only at the resync.

Timing: an isolated change is reconciled at once (leading edge); further notifications
within ``coalesce`` seconds after a reconcile started are batched into the next one, so a
burst of 100 node changes costs a couple of reconciles, not 100.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence

import attrs

from xcluster_cni_lib import jsonlog
from xcluster_cni_lib.core.ownnode import find_own
from xcluster_cni_lib.core.planning import desired_routes, plan_routes
from xcluster_cni_lib.core.values import IPNetwork, Plan, Problem, Route, RouteOutcome
from xcluster_cni_lib.metrics import DaemonMetrics
from xcluster_cni_lib.nodecache import CacheView, NodeCache
from xcluster_cni_lib.protocols import RouteTable

log = jsonlog.get_logger(__name__)


@attrs.frozen
class SyncResult:
    """What one reconcile did."""

    desired: int
    installed: int
    added: int = 0
    replaced: int = 0
    deleted: int = 0
    deferred_deletes: int = 0
    restored: int = 0
    failures: tuple[RouteOutcome, ...] = ()
    skipped_nodes: int = 0
    duration: float = 0.0
    plan: Plan = attrs.field(factory=Plan)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def conflicts(self) -> int:
        return sum(1 for f in self.failures if f.status == "conflict")


class Reconciler:
    """Keeps a ``RouteTable`` in line with a ``NodeCache``.

    ``node_name``/``machine_id`` identify the own node, which gets no route. Call
    :meth:`run_once` yourself, or :meth:`run` in a thread until ``stop`` is set;
    :meth:`notify` (subscribe it to the cache, give it to a route monitor) wakes the loop.
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
    ) -> None:
        self.cache = cache
        self.table = table
        self.node_name = node_name
        self.machine_id = machine_id
        self.resync_interval = resync_interval
        self.coalesce = coalesce
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.metrics = metrics
        self.clock = clock
        self._wake = threading.Event()
        self._node_change = False
        self._desired_cache: tuple[tuple[int, int], list[Route], list[Problem]] | None = None
        self._installed: frozenset[Route] = frozenset()
        self._retry_delay = 0.0
        self._conflicts_seen: frozenset[Route] = frozenset()
        self.syncs = 0
        self.failed_syncs = 0  # consecutive reconciles that raised
        self.last_result: SyncResult | None = None
        self.first_sync_done = False  # a reconcile on a synced view succeeded
        self.last_tick = clock()  # the loop's heartbeat, for liveness
        self.on_iteration: Callable[[SyncResult | None], None] | None = None

    # -- waking ----------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """A notification arrived that no reconcile has consumed yet."""
        return self._wake.is_set()

    def notify(self) -> None:
        """A node or the source's health changed: reconcile soon (bursts are coalesced)."""
        self._node_change = True
        self._wake.set()

    def notify_kernel(self) -> None:
        """The kernel's table changed (a route monitor calls this): reconcile at once.

        Not held back by the coalescing window: restoring a removed route is urgent, and
        the echo of our own writes (the monitor reports them too) must not delay the
        next node change. A reconcile on an unchanged table costs one list and no write."""
        self._wake.set()

    # -- one reconcile ---------------------------------------------------------------------

    def run_once(self) -> SyncResult:
        """Reconcile once, now. Raises only when listing the table fails."""
        started = self.clock()
        view = self.cache.snapshot()
        desired, problems = self._desired(view)
        present = self.table.list_routes()
        plan = plan_routes(desired, present)

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
        failed = {o.route for o in failures}

        restored = [r for r in (*plan.add, *plan.replace) if r in self._installed]
        restored = [r for r in restored if r not in failed]
        for r in restored:
            log.info("route restored", dst=str(r.dst), gateway=str(r.gateway), node=r.node)

        # What our protocol holds now: present, minus what was deleted, plus what went in.
        if outcomes:
            by_dst: dict[IPNetwork, set[Route]] = {}
            for p in present:
                by_dst.setdefault(p.dst, set()).add(p)
            for o in outcomes:
                if not o.ok:
                    continue
                if o.op == "delete":
                    by_dst.get(o.route.dst, set()).discard(o.route)
                else:
                    by_dst[o.route.dst] = {o.route}
            self._installed = frozenset(r for rs in by_dst.values() for r in rs)
        else:
            self._installed = frozenset(present)
        now_present = self._installed

        self._report_failures(failures)
        moved = {r.dst for r in plan.replace}  # their old-gateway deletes are part of the replace
        skipped = len(view.skipped) + len({p.node for p in problems})
        duration = self.clock() - started
        result = SyncResult(
            desired=len(desired),
            installed=len(now_present),
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
        )
        self.syncs += 1
        self.last_result = result
        if view.synced:
            self.first_sync_done = True
        self._record(result, view.skipped, problems)
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
                nodes=len(view.networks),
                duration_s=round(duration, 6),
            )
        if log.enabled(jsonlog.TRACE):
            for o in outcomes:
                log.trace("route op", op=o.op, status=o.status, **o.route.to_json())
        return result

    def _desired(self, view: CacheView) -> tuple[list[Route], list[Problem]]:
        """Desired routes of a cache view; computed again only when the cache changed."""
        key = (view.generation, id(self.cache))
        if self._desired_cache is not None and self._desired_cache[0] == key:
            return self._desired_cache[1], self._desired_cache[2]
        own = find_own(view.facts, name=self.node_name, machine_id=self.machine_id)
        desired, problems = desired_routes(view.networks, own=own.name if own else None)
        self._desired_cache = (key, desired, problems)
        return desired, problems

    def _report_failures(self, failures: tuple[RouteOutcome, ...]) -> None:
        conflicts = frozenset(f.route for f in failures if f.status == "conflict")
        for f in failures:
            fields = {"op": f.op, "status": f.status, "reason": f.reason, **f.route.to_json()}
            if f.status == "conflict":
                # Warn once per destination while it persists; retries log at debug.
                if f.route in self._conflicts_seen:
                    log.debug("route conflict persists", **fields)
                else:
                    log.warning("route conflict: another protocol holds the destination", **fields)
            else:
                log.warning("route operation failed", **fields)
        self._conflicts_seen = conflicts

    def _record(
        self, result: SyncResult, skipped: Sequence[Problem], problems: Sequence[Problem]
    ) -> None:
        m = self.metrics
        if m is None:
            return
        m.syncs.labels(result="ok" if result.ok else "partial").inc()
        m.sync_duration.observe(result.duration)
        m.routes_desired.set(result.desired)
        m.routes_installed.set(result.installed)
        m.nodes.set(len(self.cache))
        m.deletes_deferred.set(result.deferred_deletes)
        for op, count in (
            ("add", result.added),
            ("replace", result.replaced),
            ("delete", result.deleted),
        ):
            if count:
                m.route_ops.labels(op=op).inc(count)
        for f in result.failures:
            m.route_op_errors.labels(op=f.op, reason=f.status).inc()
        if result.conflicts:
            m.conflicts.inc(result.conflicts)
        m.conflicts_current.set(result.conflicts)
        if result.restored:
            m.routes_restored.inc(result.restored)
        annotations = (self.cache.cidr_annotation, self.cache.address_annotation)
        m.set_skipped(skip_reasons(skipped, problems, annotations=annotations))
        m.last_sync.set(time.time())

    # -- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, max_failures: int = 10) -> None:
        """Reconcile until ``stop`` is set: at once on the first call, then on every
        notification (coalesced), on retry deadlines and every ``resync_interval``.

        After ``max_failures`` consecutive reconciles that raised, the loop returns (the
        caller reports unhealthy and the platform restarts the process; routes stay)."""
        next_resync = self.clock()
        retry_at: float | None = None
        last_start = -1e9  # of the last reconcile a node change asked for
        self._node_change = True
        self._wake.set()
        while not stop.is_set():
            self.last_tick = self.clock()
            due = min(next_resync, retry_at if retry_at is not None else next_resync)
            timeout = max(0.0, min(due - self.clock(), 0.5))
            if not self._wake.wait(timeout) and self.clock() < due:
                continue
            if stop.is_set():
                break
            # Leading edge: a node change goes at once unless another one started a
            # reconcile less than `coalesce` ago; then it waits for the window's end and
            # takes everything that arrived meanwhile along.
            if self._node_change:
                hold = last_start + self.coalesce - self.clock()
                if hold > 0 and stop.wait(hold):
                    break
            self._wake.clear()
            started = self.clock()
            if self._node_change:
                self._node_change = False
                last_start = started
            result: SyncResult | None = None
            try:
                result = self.run_once()
            except Exception as e:
                self.failed_syncs += 1
                if self.metrics is not None:
                    self.metrics.syncs.labels(result="error").inc()
                log.error(
                    "sync failed", error=f"{type(e).__name__}: {e}", consecutive=self.failed_syncs
                )
                if self.failed_syncs >= max_failures:
                    log.error("giving up after repeated sync failures", failures=self.failed_syncs)
                    return
                retry_at = self.clock() + self._next_retry_delay()
            else:
                self.failed_syncs = 0
                if result.failures:
                    retry_at = self.clock() + self._next_retry_delay()
                else:
                    retry_at = None
                    self._retry_delay = 0.0
            next_resync = started + self.resync_interval  # every reconcile is a full one
            if self.on_iteration is not None:
                self.on_iteration(result)

    def _next_retry_delay(self) -> float:
        self._retry_delay = min(
            self.retry_max, self._retry_delay * 2 if self._retry_delay else self.retry_min
        )
        return self._retry_delay


def skip_reasons(
    skipped: Sequence[Problem], problems: Sequence[Problem], *, annotations: Collection[str | None]
) -> dict[str, int]:
    """Count skipped nodes by a short label for the ``nodes_skipped`` metric:
    ``invalid_annotation`` (a configured annotation is missing or malformed),
    ``invalid`` (another field is unusable), ``unroutable`` (the planner could not route
    the node, e.g. no address of its CIDR's family)."""
    counts: Counter[str] = Counter()
    for p in skipped:
        counts[
            "invalid_annotation" if p.key is not None and p.key in annotations else "invalid"
        ] += 1
    for _ in {p.node for p in problems}:
        counts["unroutable"] += 1
    return dict(counts)
