"""What a reconcile did, and how it is told: the ``SyncResult`` value, which routes it
restored and how many are installed, the log lines of failed route operations and the
daemon's metrics. Split from ``reconciler`` (the loop and the planning of a reconcile),
which imports it."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

import attrs

from xcluster_cni_lib.core.nodes import FIELD_KEYS
from xcluster_cni_lib.core.values import IPNetwork, Plan, Problem, Route, RouteOutcome
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.sync.metrics import DaemonMetrics

log = jsonlog.get_logger("xcluster_cni_lib.sync.reconciler")  # the reconciler's events


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
    full: bool = True  # a full reconcile (else an incremental one)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def conflicts(self) -> int:
        return sum(1 for f in self.failures if f.status == "conflict")


#: The route the previous reconcile wanted to a destination, if any.
WantedBefore = Callable[[IPNetwork], Route | None]


def restored_routes(
    plan: Plan,
    failures: Iterable[RouteOutcome],
    wanted_before: WantedBefore | None,
    *,
    failed_before: Mapping[IPNetwork, RouteOutcome],
) -> list[Route]:
    """The routes this plan put back: added or replaced now, exactly as the last
    reconcile wanted them (``wanted_before``: ``None`` at start), and not failing then
    (then they were in place, so someone removed or changed them). A route the nodes
    changed (another gateway, another CIDR) is new, not restored."""
    if wanted_before is None or not (plan.add or plan.replace):
        return []
    failed = {o.route for o in failures}
    out = []
    for r in (*plan.add, *plan.replace):
        if r in failed or wanted_before(r.dst) != r:
            continue
        before = failed_before.get(r.dst)
        if before is None or before.op == "delete":
            out.append(r)
    return out


def installed_after(present: Iterable[Route], outcomes: Iterable[RouteOutcome]) -> int:
    """How many routes of ours a table holds after ``outcomes``, from what a list showed
    before them (``present``): for a table that does not count them itself."""
    by_dst: dict[IPNetwork, set[Route]] = {}
    for r in present:
        by_dst.setdefault(r.dst, set()).add(r)
    for o in outcomes:
        if not o.ok:
            continue
        if o.op == "delete":
            by_dst.get(o.route.dst, set()).discard(o.route)
        else:
            by_dst[o.route.dst] = {o.route}  # an add or replace leaves it alone there
    return sum(len(routes) for routes in by_dst.values())


MAX_FAILURES_LOGGED = 20


def report_failures(
    failures: Sequence[RouteOutcome], *, known_conflicts: Collection[Route]
) -> None:
    """Log failed route operations: a conflict warns once while it persists
    (``known_conflicts``: the routes in conflict at the previous reconcile); other
    failures one line each up to ``MAX_FAILURES_LOGGED`` per reconcile, then one line
    counting the rest by reason (thousands of routes through a vxlan device that is being
    made again must not cost thousands of log lines)."""
    logged = 0
    rest: Counter[str] = Counter()
    for f in failures:
        fields = {"op": f.op, "status": f.status, "reason": f.reason, **f.route.to_json()}
        if f.status == "conflict":
            # Warn once per destination while it persists; retries log at debug.
            if f.route in known_conflicts:
                log.debug("route conflict persists", **fields)
            else:
                log.warning("route conflict: another protocol holds the destination", **fields)
        elif logged < MAX_FAILURES_LOGGED:
            logged += 1
            log.warning("route operation failed", **fields)
        else:
            rest[f"{f.status}: {f.reason}"] += 1
    if rest:
        log.warning(
            "more route operations failed",
            count=sum(rest.values()),
            reasons="; ".join(f"{n} x {why}" for why, n in rest.most_common(5)),
        )


def record_metrics(
    metrics: DaemonMetrics,
    result: SyncResult,
    *,
    nodes: int,
    conflicts_current: int,
    skipped: Sequence[Problem],
    problems: Sequence[Problem],
) -> None:
    """Count one reconcile in the daemon's metrics."""
    m = metrics
    m.syncs.labels(result="ok" if result.ok else "partial").inc()
    m.sync_duration.observe(result.duration)
    m.routes_desired.set(result.desired)
    m.routes_installed.set(result.installed)
    m.nodes.set(nodes)
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
    m.conflicts_current.set(conflicts_current)
    if result.restored:
        m.routes_restored.inc(result.restored)
    annotations = {p.key for p in skipped if p.key is not None and p.key not in FIELD_KEYS}
    m.set_skipped(skip_reasons(skipped, problems, annotations=annotations))
    m.last_sync.set(time.time())


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


def report_contested(
    before: Sequence[Problem], now: Sequence[Problem], metrics: DaemonMetrics | None
) -> tuple[Problem, ...]:
    """Log each contested pod CIDR once when it appears (an error: a node claims another's
    traffic) and once when it is resolved; count them. Returns the new set to keep."""
    seen = set(before)
    for p in now:
        if p not in seen:
            log.error("contested pod CIDR: no route", node=p.node, cidr=p.value, reason=p.reason)
    current = set(now)
    for p in before:
        if p not in current:
            log.info("pod CIDR no longer contested", node=p.node, cidr=p.value)
    if metrics is not None:
        metrics.contested_cidrs.set(len(now))
    return tuple(now)
