"""The egress masquerade reconciler: keeps the instance's nftables table
(``core.masquerade``) in line with the node cache.

Like the route reconciler, events only *notify*; a reconcile works from the current cache:

- **incremental** (a node changed): the desired sets from the cache, compared with the
  sets the last reconcile left (kept here, not read back), and one transaction of element
  deletes and adds (``update_document``); no listing, no rule changes;
- **full** (at start, every ``resync_interval``, after a kernel event from the monitor,
  after a failure): the table is read back (``nft -j list table``) and compared with
  the desired state; a missing or altered table is replaced whole, in one transaction;
  sets whose elements differ get exactly the missing and extra elements (or, when they
  hold address ranges, are emptied and filled in the same transaction).

Safety, as for routes: while the node view has not completed its first list, or the
source is unhealthy, or the own node cannot be told, nothing leaves a set (the target
covers what is there and what is wanted: ``covering``), so a stale view never starts
masquerading pod-to-pod traffic nor stops masquerading a pod. Stopping leaves the table
in place; :meth:`remove` deletes it (``MASQUERADE`` switched off).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import attrs
from prometheus_client import Counter, Gauge

from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.core.masquerade import (
    MasqueradeSets,
    SetsDiff,
    TableState,
    covering,
    delete_document,
    desired_sets,
    diff_sets,
    fill_document,
    parse_table,
    table_document,
    table_name,
    update_document,
)
from xcluster_cni_lib.core.ownnode import resolve_own
from xcluster_cni_lib.core.protocols import DEFAULT_PROTOCOL
from xcluster_cni_lib.core.values import IPNetwork
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.sync.loop import TableLoop
from xcluster_cni_lib.sync.metrics import PREFIX, DaemonMetrics
from xcluster_cni_lib.sync.nodecache import NodeCache

__all__ = ["MasqueradeReconciler", "MasqueradeResult", "NftPort"]

log = jsonlog.get_logger(__name__)


class NftPort(Protocol):
    """What the reconciler needs of nftables (``kernel.nftables.Nft``)."""

    def apply(self, document: Mapping[str, Any]) -> None:
        """Commit one JSON document as one transaction, or raise."""
        ...

    def read_table(self, name: str) -> list[dict[str, Any]] | None:
        """The objects of ``nft -j list table inet <name>``; None when it does not exist."""
        ...


@attrs.frozen
class MasqueradeResult:
    """What one reconcile did. ``action``: ``none``, ``update`` (elements changed),
    ``fill`` (sets emptied and filled) or ``replace`` (the whole table written)."""

    full: bool
    action: str = "none"
    added: int = 0
    deleted: int = 0
    deferred: int = 0  # element deletions held back (view not synced/healthy)
    restored: bool = False  # someone had changed the table; it was put back
    reasons: tuple[str, ...] = ()  # what differed, for a restore or a replace
    elements: int = 0  # elements in the sets afterwards
    duration: float = 0.0


class _Metrics:
    def __init__(self, metrics: DaemonMetrics) -> None:
        r = metrics.registry
        self.syncs = Counter(
            PREFIX + "masquerade_syncs",
            "Masquerade reconciles by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.writes = Counter(
            PREFIX + "masquerade_writes",
            "Transactions on the masquerade table by kind (update, fill, replace, delete).",
            ["kind"],
            registry=r,
        )
        self.restored = Counter(
            PREFIX + "masquerade_restored",
            "Times the masquerade table had been changed by someone else and was put back.",
            registry=r,
        )
        self.elements = Gauge(
            PREFIX + "masquerade_elements",
            "Elements (CIDRs) in the masquerade table's sets after the last reconcile.",
            registry=r,
        )
        self.deferred = Gauge(
            PREFIX + "masquerade_deletes_deferred",
            "Set elements held back at the last reconcile (node view not synced or healthy).",
            registry=r,
        )


class MasqueradeReconciler(TableLoop):
    """Keeps the masquerade table of instance ``protocol`` in line with ``cache``.

    ``node_name``/``machine_id`` identify the own node (``core.ownnode``), whose pod
    CIDRs are masqueraded; ``non_masquerade`` are destinations that keep the pod's
    address besides every node's pod CIDRs. Subscribe :meth:`notify` to the cache and give
    :meth:`notify_kernel` to an ``NftTableEvents`` of :attr:`table`; run :meth:`run` (the
    shared ``ReconcileLoop``: fully at once, every ``resync_interval`` and after a kernel
    notification; incrementally on node notifications, coalesced; a failed reconcile is
    retried fully with backoff; after ``max_failures`` in a row it returns) in a thread
    until ``stop`` is set.
    """

    loop_name = "masquerade"

    def __init__(
        self,
        cache: NodeCache,
        nft: NftPort,
        *,
        node_name: str | None = None,
        machine_id: str | None = None,
        non_masquerade: Iterable[IPNetwork] = (),
        protocol: int = DEFAULT_PROTOCOL,
        resync_interval: float = 60.0,
        coalesce: float = 0.1,
        retry_min: float = 0.2,
        retry_max: float = 10.0,
        metrics: DaemonMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.nft = nft
        self.node_name = node_name
        self.machine_id = machine_id
        self.non_masquerade = tuple(non_masquerade)
        self.table = table_name(protocol)
        self.resync_interval = resync_interval
        self.coalesce = coalesce
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.clock = clock
        self._metrics = _Metrics(metrics) if metrics is not None else None
        self.metrics = self._metrics  # the loop counts errors in ``syncs``
        self._wake = threading.Event()
        self._node_change = False
        # what the kernel holds, as the last reconcile left it (None: unknown, read it)
        self._installed: MasqueradeSets | None = None
        # what it should hold unless someone else changed it: the last state written or
        # found, kept across failed transactions (they change nothing: all or nothing)
        self._known: MasqueradeSets | None = None
        self._inputs: tuple[int, bool, bool] | None = None  # (generation, synced, healthy)
        self._last_full = -1e9
        self._retry_delay = 0.0
        self.own: str | None = None
        self.own_warning: str | None = None
        self.syncs = 0
        self.full_syncs = 0  # of them full (the table read back)
        self.failed_syncs = 0
        self.restores = 0  # times the table was found changed by someone else and put back
        self.last_error: str | None = None
        self.last_result: MasqueradeResult | None = None
        self.first_sync_done = False  # a reconcile on a synced, healthy view succeeded
        self.last_tick = clock()
        self.on_iteration: Callable[[MasqueradeResult | None], None] | None = None

    # -- status ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The table is as a complete node view wants it (as of the last reconcile)."""
        return self.first_sync_done and not self.failed_syncs

    @property
    def problems(self) -> list[str]:
        """Why masquerading is not (or not fully) in place; empty when it is."""
        out = []
        if self.failed_syncs:
            out.append(
                f"masquerade: last {self.failed_syncs} reconciles of table inet {self.table} "
                f"failed: {self.last_error}"
            )
        elif not self.first_sync_done:
            out.append(f"masquerade: table inet {self.table} not reconciled yet")
        if self.own_warning:
            out.append(f"masquerade: {self.own_warning}")
        return out

    # -- desired state ---------------------------------------------------------------------

    def _target(self, present: MasqueradeSets | None) -> tuple[MasqueradeSets, int]:
        """The sets to write over ``present`` (None: nothing there) and how many element
        deletions were held back."""
        view = self.cache.snapshot()
        self._inputs = (view.generation, view.synced, view.healthy)
        hold: str | None = None
        try:
            own, warning = resolve_own(view.facts, name=self.node_name, machine_id=self.machine_id)
        except InputError as e:
            own, warning, hold = None, str(e), "own node unknown"
        if warning != self.own_warning:
            if warning:
                log.warning("masquerade: own node", problem=warning)
            self.own_warning = warning
        self.own = own
        desired = desired_sets(view.networks, own=own, non_masquerade=self.non_masquerade)
        if not view.synced:
            hold = "node list not synced yet"
        elif not view.healthy:
            hold = "node source unhealthy"
        if hold is None or present is None:
            return desired, 0
        target = covering(present, desired)
        deferred = diff_sets(target, desired).deleted
        if deferred:
            log.info("masquerade: element deletions deferred", count=deferred, reason=hold)
        return target, deferred

    # -- one reconcile ---------------------------------------------------------------------

    def _failed(self, e: Exception) -> None:
        self._installed = None
        self.last_error = f"{type(e).__name__}: {e}"

    def _full(self) -> MasqueradeResult:
        started = self.clock()
        self._last_full = started
        self.full_syncs += 1
        settled = self._known
        self._installed = None  # until this reconcile is done
        objects = self.nft.read_table(self.table)
        state: TableState | None = None if objects is None else parse_table(objects, self.table)
        present = state.sets if state is not None else None
        target, deferred = self._target(present)
        reasons: tuple[str, ...] = ()
        if state is None or not state.intact:
            reasons = ("table missing",) if state is None else state.mismatches
            self.nft.apply(table_document(self.table, target))
            action = "replace"
            added = target.count()
            deleted = present.count() if present is not None else 0
        else:
            diff = diff_sets(state.sets, target)
            if not diff:
                action, added, deleted = "none", 0, 0
            elif state.irregular & (diff.add.keys() | diff.delete.keys()):
                refill = {n: target.get(n) for n in (diff.add.keys() | diff.delete.keys())}
                self.nft.apply(fill_document(self.table, refill))
                action, added, deleted = "fill", diff.added, diff.deleted
            else:
                self.nft.apply(update_document(self.table, diff))
                action, added, deleted = "update", diff.added, diff.deleted
            if diff:
                reasons = _describe(diff)
        self._installed = self._known = target
        # someone else changed it: the kernel differed from what we had left there
        restored = settled is not None and (
            state is None or not state.intact or state.sets != settled
        )
        return self._finish(
            MasqueradeResult(
                full=True,
                action=action,
                added=added,
                deleted=deleted,
                deferred=deferred,
                restored=restored,
                reasons=reasons,
                elements=target.count(),
                duration=self.clock() - started,
            )
        )

    def _changes(self) -> MasqueradeResult | None:
        installed = self._installed
        assert installed is not None
        cache = self.cache
        if self._inputs == (cache.generation, cache.synced, cache.healthy):
            return None
        started = self.clock()
        target, deferred = self._target(installed)
        diff = diff_sets(installed, target)
        if not diff:
            return self._finish(
                MasqueradeResult(full=False, deferred=deferred, elements=target.count()),
                quiet=True,
            )
        self._installed = None  # unknown if the transaction fails
        self.nft.apply(update_document(self.table, diff))
        self._installed = self._known = target
        return self._finish(
            MasqueradeResult(
                full=False,
                action="update",
                added=diff.added,
                deleted=diff.deleted,
                deferred=deferred,
                elements=target.count(),
                duration=self.clock() - started,
            )
        )

    def _finish(self, result: MasqueradeResult, *, quiet: bool = False) -> MasqueradeResult:
        self.syncs += 1
        self.last_result = result
        self.last_error = None
        if self._inputs is not None and self._inputs[1] and self._inputs[2]:
            self.first_sync_done = True
        if result.restored:
            self.restores += 1
            log.info("masquerade table restored", table=self.table, what="; ".join(result.reasons))
        m = self._metrics
        if m is not None:
            m.syncs.labels(result="ok").inc()
            if result.action != "none":
                m.writes.labels(kind=result.action).inc()
            if result.restored:
                m.restored.inc()
            m.elements.set(result.elements)
            m.deferred.set(result.deferred)
        if not quiet:
            level = jsonlog.INFO if result.action != "none" else jsonlog.DEBUG
            if log.enabled(level):
                log.log(
                    level,
                    "masquerade sync",
                    table=self.table,
                    action=result.action,
                    added=result.added,
                    deleted=result.deleted,
                    deferred=result.deferred,
                    elements=result.elements,
                    full=result.full,
                    duration_s=round(result.duration, 6),
                )
        return result

    def remove(self) -> bool:
        """Delete the table (masquerading switched off): true if there was one. Raises
        ``NftError`` (from the port) when nft fails."""
        self._installed = self._known = None
        if self.nft.read_table(self.table) is None:
            return False
        self.nft.apply(delete_document(self.table))
        if self._metrics is not None:
            self._metrics.writes.labels(kind="delete").inc()
        log.info("masquerade table deleted", table=self.table)
        return True


def _describe(diff: SetsDiff) -> tuple[str, ...]:
    out = []
    for name, nets in diff.add.items():
        out.append(
            f"{name} lacked {', '.join(map(str, nets[:3]))}{' ...' if len(nets) > 3 else ''}"
        )
    for name, nets in diff.delete.items():
        out.append(f"{name} had {', '.join(map(str, nets[:3]))}{' ...' if len(nets) > 3 else ''}")
    return tuple(out)
