"""The loop every reconciler shares (routes, overlay, masquerade, network policy): when to
reconcile fully, when incrementally, how to coalesce a burst of changes and how to retry.

A reconciler that inherits ``ReconcileLoop`` provides ``run_once`` (full),
``run_changes(retry=...)`` (incremental), ``_retries_pending`` (some of its objects failed
and wait for a retry) and, optionally, ``_counts_as_failure`` (whether a reconcile that
raised counts toward ``max_failures``); its ``__init__`` sets the attributes listed on the
class. ``run`` then:

- reconciles fully at once, every ``resync_interval`` and after a reconcile that raised;
- on a notification (``_wake``), incrementally; a node change goes at once unless another
  one started a reconcile less than ``coalesce`` ago: then it waits for the window's end
  and takes everything that arrived meanwhile along (a due resync follows, at most 1 s
  late);
- ``request_full()`` asks for a full reconcile at once;
- retries failed objects with exponential backoff (``retry_min`` doubling up to
  ``retry_max``), and a reconcile that raised the same way;
- returns after ``max_failures`` consecutive reconciles that raised (the caller reports
  it; what the reconciler installed stays in place).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.sync.nodecache import CachedNode, NodeCache

log = jsonlog.get_logger(__name__)


class ReconcileLoop:
    """The shared ``run`` loop (see the module doc)."""

    #: how the loop's log lines name it (``sync failed``, ``overlay sync failed``)
    loop_name = ""
    clock: Callable[[], float]
    resync_interval: float
    coalesce: float
    retry_min: float
    retry_max: float
    metrics: Any  # with a ``syncs`` counter labelled by result, or None
    on_iteration: Callable[[Any], None] | None
    last_tick: float
    failed_syncs: int
    _wake: threading.Event
    _node_change: bool
    _last_full: float
    _retry_delay: float
    _full_requested = False
    cache: NodeCache
    _tracked: bool
    _view_flags: tuple[bool, bool]
    _generation: int

    # -- waking ----------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """A notification arrived that no reconcile has consumed yet."""
        return self._wake.is_set()

    def notify(self) -> None:
        """A node or the source's health changed (the cache's listener): reconcile soon
        (bursts are coalesced)."""
        self._node_change = True
        self._wake.set()

    def notify_kernel(self) -> None:
        """The kernel changed something of ours (a kernel monitor calls this): reconcile
        at once, not held back by the coalescing window (a repair is urgent)."""
        self._wake.set()

    def _incremental_changes(
        self, ready: bool, own_affected: Callable[[dict[str, CachedNode | None]], bool]
    ) -> tuple[int, dict[str, CachedNode | None]] | None:
        """The cache's changes since the last reconcile, when an incremental reconcile
        can use them; None: reconcile fully (``ready`` false: no previous state; the
        kernel view is not tracked; the node view is not synced or healthy, so deletes
        are deferred; the journal lost track; the own node is among the changes)."""
        cache = self.cache
        if (
            not ready
            or not self._tracked
            or not (cache.synced and cache.healthy)
            or self._view_flags != (True, True)
        ):
            return None
        changes = cache.changes_since(self._generation)
        if changes is None:
            return None
        if changes[1] and own_affected(changes[1]):
            return None
        return changes

    def request_full(self) -> None:
        """Reconcile fully at once (e.g. a device the objects need is back)."""
        self._full_requested = True
        self._wake.set()

    def run_once(self) -> Any:
        raise NotImplementedError

    def run_changes(self, *, retry: bool = False) -> Any:
        raise NotImplementedError

    def _retries_pending(self) -> bool:
        raise NotImplementedError

    def _counts_as_failure(self) -> bool:
        return True

    def run(self, stop: threading.Event, *, max_failures: int = 10) -> None:
        """Reconcile until ``stop`` is set (see the module doc)."""
        prefix = f"{self.loop_name} " if self.loop_name else ""
        retry_at: float | None = None
        last_start = -1e9  # of the last reconcile a node change asked for
        self._node_change = True
        self._wake.set()
        full_next = True  # at start, and after a reconcile that raised
        while not stop.is_set():
            self.last_tick = self.clock()
            next_resync = self._last_full + self.resync_interval
            due = min(next_resync, retry_at if retry_at is not None else next_resync)
            timeout = max(0.0, min(due - self.clock(), 0.5))
            if not self._wake.wait(timeout) and self.clock() < due:
                continue
            if stop.is_set():
                break
            if self._node_change:
                hold = last_start + self.coalesce - self.clock()
                if hold > 0 and stop.wait(hold):
                    break
            self._wake.clear()
            if self._full_requested:
                self._full_requested = False
                full_next = True
            started = self.clock()
            node_change = self._node_change
            if node_change:
                self._node_change = False
                last_start = started
            retrying = retry_at is not None and started >= retry_at
            result: Any = None
            try:
                # a node change does not wait for a resync that is due: the resync
                # follows right after (its deadline stays passed), at most 1 s late
                if full_next or (
                    started >= next_resync and not (node_change and started < next_resync + 1.0)
                ):
                    result = self.run_once()
                else:
                    result = self.run_changes(retry=retrying)
            except Exception as e:
                full_next = True
                if self._counts_as_failure():
                    self.failed_syncs += 1
                if self.metrics is not None:
                    self.metrics.syncs.labels(result="error").inc()
                log.error(
                    f"{prefix}sync failed",
                    error=f"{type(e).__name__}: {e}",
                    consecutive=self.failed_syncs,
                )
                if self.failed_syncs >= max_failures:
                    log.error(
                        f"{prefix}giving up after repeated sync failures",
                        failures=self.failed_syncs,
                    )
                    return
                retry_at = self.clock() + self._next_retry_delay()
                if self.on_iteration is not None:
                    self.on_iteration(None)
                continue
            full_next = False
            self.failed_syncs = 0
            if self._retries_pending():
                # failed objects are retried with backoff (not by every other reconcile)
                if retry_at is None or retrying or (result is not None and result.full):
                    retry_at = self.clock() + self._next_retry_delay()
            else:
                retry_at = None
                self._retry_delay = 0.0
            if result is not None and self.on_iteration is not None:
                self.on_iteration(result)

    def _next_retry_delay(self) -> float:
        self._retry_delay = min(
            self.retry_max, self._retry_delay * 2 if self._retry_delay else self.retry_min
        )
        return self._retry_delay


class TableLoop(ReconcileLoop):
    """The loop of a reconciler that writes one kernel object it can read back whole
    (the masquerade and policy nftables tables): ``_full`` (read back, compare, repair),
    ``_changes`` (from ``_installed``, what the last reconcile left; ``None``: unknown,
    so a full one), ``_failed`` (record an error); a kernel change asks for a full
    reconcile; nothing waits for a per-object retry."""

    _installed: Any

    def _full(self) -> Any:
        raise NotImplementedError

    def _changes(self) -> Any:
        raise NotImplementedError

    def _failed(self, e: Exception) -> None:
        raise NotImplementedError

    def notify_kernel(self) -> None:
        """Our table changed in the kernel (its monitor): compare and repair at once."""
        self.request_full()

    def _retries_pending(self) -> bool:
        return False

    def run_once(self) -> Any:
        """Read back, compare, repair: a full reconcile. Raises when the write fails."""
        try:
            return self._full()
        except Exception as e:
            self._failed(e)
            raise

    def run_changes(self, *, retry: bool = False) -> Any:
        """Write what changed since the last reconcile (no read-back); ``None`` when
        nothing did; a full reconcile when the kernel's state is not known."""
        if self._installed is None:
            return self.run_once()
        try:
            return self._changes()
        except Exception as e:
            self._failed(e)
            raise
