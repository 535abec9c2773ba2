"""The vxlan overlay reconciler: the device, its neighbour and FDB entries, kept in line
with the node cache, incrementally, and put back when someone changes them.

Like the route reconciler (``sync.reconciler``), events only *notify*: the work is done
from the cache and the kernel port. A *full* reconcile (at start, every
``resync_interval``, after a reconcile that raised, and whenever an event cannot be
attributed to single entries: the device deleted or changed, the underlay interface
changed, events lost) plans the device (``core.overlay.DesiredOverlay``), makes it right
(``ensure_device``), lists every entry on it and applies the difference. In between,
*incremental* reconciles take the nodes that changed (``cache.changes_since``) and the
entries the kernel reported as changed (``take_changes``), and plan only those keys
against the reconciler's tracked copy of the device's entries, without a dump.

Safety rules, as for routes:

- nothing is deleted before the node view has completed its first full list
  (``synced``), nor while the source is unhealthy: deletes are held back and counted;
  puts from the last known view still go in (so an entry removed by hand comes back
  even while the API server is away);
- only the device of the settings and the entries on it are touched;
- failed entry operations are logged and retried with backoff (``retry_min`` to
  ``retry_max``); a device that cannot be made (no interface holds the node address,
  the name belongs to another kind of link) is a problem for ``/readyz``, retried the
  same way;
- on stop, everything stays in place.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge

from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.core.overlay import (
    DesiredOverlay,
    DeviceOutcome,
    Entries,
    EntryOutcome,
    EntryPlan,
    Fdb,
    KernelChanges,
    Neighbour,
    OverlaySettings,
    VxlanDevice,
    plan_entries,
)
from xcluster_cni_lib.core.ownnode import find_own, machine_id_key
from xcluster_cni_lib.core.values import IPAddress, Problem
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.sync.loop import ReconcileLoop
from xcluster_cni_lib.sync.nodecache import CachedNode, NodeCache

log = jsonlog.get_logger(__name__)

PREFIX = "xcluster_overlay_"


class OverlayKernel(Protocol):
    """The kernel side (``kernel.vxlan.VxlanKernel``)."""

    def ensure_device(self, want: VxlanDevice) -> DeviceOutcome: ...

    def list_entries(self, ifindex: int) -> Entries: ...

    def apply(self, ifindex: int, plan: EntryPlan) -> list[EntryOutcome]: ...

    def take_changes(self) -> KernelChanges | None: ...


class OverlayMetrics:
    """The overlay reconciler's metrics, registered in ``registry`` (the daemon's)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.entries_desired = Gauge(
            PREFIX + "entries_desired", "Neighbour and FDB entries the nodes call for.", registry=r
        )
        self.entries_installed = Gauge(
            PREFIX + "entries_installed",
            "Neighbour and FDB entries on the vxlan device after the last reconcile.",
            registry=r,
        )
        self.syncs = Counter(
            PREFIX + "syncs",
            "Overlay reconciles by result (ok; partial: some entries failed; error).",
            ["result"],
            registry=r,
        )
        self.entry_failures = Counter(
            PREFIX + "entry_failures", "Neighbour and FDB operations that failed.", registry=r
        )
        self.entries_restored = Counter(
            PREFIX + "entries_restored",
            "Entries put back after someone removed or changed them.",
            registry=r,
        )
        self.device_restored = Counter(
            PREFIX + "device_restored",
            "Times the vxlan device was created again (deleted by hand or attributes changed).",
            registry=r,
        )
        self.nodes_skipped = Gauge(
            PREFIX + "nodes_skipped",
            "Other nodes that get no overlay entries (no address of the underlay family, "
            "a shared underlay or VTEP address).",
            registry=r,
        )


@attrs.frozen
class OverlayResult:
    """What one reconcile did."""

    full: bool
    desired: int
    installed: int
    put: int = 0
    deleted: int = 0
    deferred_deletes: int = 0
    restored: int = 0
    failures: tuple[EntryOutcome, ...] = ()
    device: str = "unchanged"  # DeviceOutcome.action, "none" without a device
    duration: float = 0.0
    generation: int = -1  # the cache generation reconciled


class OverlayReconciler(ReconcileLoop):
    """Keeps the vxlan device and its entries in line with a ``NodeCache``.

    ``node_name``/``machine_id`` identify the own node (its address is the device's
    local address; it gets no entries). :meth:`notify` is the cache listener,
    :meth:`notify_kernel` the kernel monitor's; :meth:`run` the loop."""

    loop_name = "overlay"
    #: called as soon as the device is made (again): the daemon wakes the route reconciler
    on_device: Callable[[], None] | None = None

    def __init__(
        self,
        cache: NodeCache,
        kernel: OverlayKernel,
        *,
        settings: OverlaySettings,
        node_name: str | None = None,
        machine_id: str | None = None,
        metrics: OverlayMetrics | None = None,
        resync_interval: float = 60.0,
        coalesce: float = 0.1,
        retry_min: float = 0.2,
        retry_max: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.kernel = kernel
        self.settings = settings
        self.node_name = node_name
        self.machine_id = machine_id
        self.metrics = metrics
        self.resync_interval = resync_interval
        self.coalesce = coalesce
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.clock = clock
        self._wake = threading.Event()
        self._node_change = False
        self._desired: DesiredOverlay | None = None
        self._generation = -1
        self._own_problem: Problem | None = None
        self._kernel_problem: Problem | None = None
        self._device: DeviceOutcome | None = None
        # the device's entries as the kernel holds them (listed at the last full
        # reconcile, then kept from our outcomes and the kernel's events)
        self._neighbours: dict[IPAddress, str] = {}
        self._fdb: dict[str, IPAddress] = {}
        self._tracked = False  # the copy above is valid
        self._view_flags = (False, False)
        self._failed_n: set[IPAddress] = set()
        self._failed_f: set[str] = set()
        self._last_full = -1e9
        self._retry_delay = 0.0
        self._logged_problems: frozenset[Problem] = frozenset()
        self.syncs = 0
        self.failed_syncs = 0  # consecutive reconciles that raised
        self.entries_restored = 0
        self.device_restored = 0
        self.entry_failures = 0
        self.first_sync_done = False
        self.last_result: OverlayResult | None = None
        self.last_tick = clock()
        self.on_iteration: Callable[[OverlayResult | None], None] | None = None

    # -- status ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The device is in place and a reconcile on a synced node view succeeded."""
        return (
            self.first_sync_done
            and self._device is not None
            and self._kernel_problem is None
            and self.failed_syncs == 0
        )

    @property
    def problems(self) -> list[Problem]:
        """Why the overlay is not (fully) working: the device's problem, then skipped nodes."""
        out = [p for p in (self._own_problem, self._kernel_problem) if p is not None]
        if self._desired is not None:
            out.extend(self._desired.problems())
        return out

    @property
    def entries_installed(self) -> int:
        return len(self._neighbours) + len(self._fdb)

    # -- reconciles ------------------------------------------------------------------------

    def run_once(self) -> OverlayResult:
        """A full reconcile. Raises when the kernel cannot be read or the device made."""
        started = self.clock()
        self._last_full = started
        self._tracked = False
        view = self.cache.snapshot()
        before = self._desired
        # what the last reconcile wanted (a new plan is a new object: this one stays)
        old = before.entries() if before is not None else Entries()
        had_device = self._device is not None
        try:
            own = find_own(view.networks, name=self.node_name, machine_id=self.machine_id)
        except InputError as e:
            own = None
            self._own_problem = Problem(self.node_name or "?", str(e))
        else:
            self._own_problem = None
        own_name = own.name if own is not None else self.node_name
        if before is not None and before.own == own_name and self._generation == view.generation:
            desired = before  # nothing changed in the cache: the plan stands
        else:
            desired = DesiredOverlay(view.networks, own=own_name, settings=self.settings)
        self._desired = desired
        self._generation = view.generation
        self._view_flags = (view.synced, view.healthy)
        if desired.device is None:
            # nothing can be planned without the own address; everything stays as it is
            self._device = None
            return self._finish(
                OverlayResult(True, 0, 0, device="none", generation=view.generation), started
            )
        try:
            device = self.kernel.ensure_device(desired.device)
        except Exception as e:
            self._kernel_problem = Problem(own_name or "?", f"overlay device: {e}")
            self._device = None
            raise
        self._kernel_problem = None
        self._device = device
        if device.action != "unchanged":
            log.info(
                "overlay device " + device.action,
                device=desired.device.name,
                vni=desired.device.vni,
                port=desired.device.port,
                local=str(desired.device.local),
                underlay=device.lower,
                mtu=device.mtu,
                mac=desired.device.mac,
            )
            if had_device and device.action in ("created", "recreated"):
                self.device_restored += 1
                if self.metrics is not None:
                    self.metrics.device_restored.inc()
            if device.action in ("created", "recreated") and self.on_device is not None:
                self.on_device()  # the routes through it can go back now, before the entries
        self.kernel.take_changes()  # the list below covers what happened so far
        present = self.kernel.list_entries(device.ifindex)
        self._neighbours = dict(present.neighbours)
        self._fdb = dict(present.fdb)
        wanted = desired.entries()
        plan = plan_entries(wanted, present)
        deferred = 0
        if (plan.delete_neighbours or plan.delete_fdb) and not (view.synced and view.healthy):
            deferred = len(plan.delete_neighbours) + len(plan.delete_fdb)
            log.info(
                "overlay deletes deferred",
                count=deferred,
                reason="node list not synced yet" if not view.synced else "node source unhealthy",
            )
            plan = plan.without_deletes()

        def was_wanted(entry: Neighbour | Fdb) -> bool:
            if isinstance(entry, Neighbour):
                return (
                    old.neighbours.get(entry.address) == entry.mac
                    and entry.address not in self._failed_n
                )
            return old.fdb.get(entry.mac) == entry.dst and entry.mac not in self._failed_f

        restorable = before is not None and device.action == "unchanged"
        result = self._apply(plan, device, restored=was_wanted if restorable else None)
        self._tracked = True
        return self._finish(
            attrs.evolve(result, full=True, deferred_deletes=deferred, generation=view.generation),
            started,
            synced=view.synced,
        )

    def run_changes(self, *, retry: bool = False) -> OverlayResult | None:
        """Reconcile only what changed (nodes in the cache, entries in the kernel, and
        with ``retry`` the entries that failed); None when nothing did. Falls back to
        :meth:`run_once` whenever that is not known exactly."""
        desired, device = self._desired, self._device
        started = self.clock()
        changes = self._incremental_changes(
            desired is not None and device is not None,
            lambda entries: desired is not None and self._own_affected(desired, entries),
        )
        if changes is None or desired is None or device is None:
            return self.run_once()
        generation, entries = changes
        self._tracked = False
        kernel = self.kernel.take_changes()
        if kernel is None or kernel.device:
            return self.run_once()
        dirty_n: set[IPAddress] = set()
        dirty_f: set[str] = set()
        for addr, mac in kernel.neighbours.items():
            if mac is None:
                self._neighbours.pop(addr, None)
            else:
                self._neighbours[addr] = mac
            dirty_n.add(addr)
        for mac_key, dst in kernel.fdb.items():
            if dst is None:
                self._fdb.pop(mac_key, None)
            else:
                self._fdb[mac_key] = dst
            dirty_f.add(mac_key)
        node_n: set[IPAddress] = set()
        node_f: set[str] = set()
        if entries:
            node_n, node_f = desired.update(
                {name: e.network if e is not None else None for name, e in entries.items()}
            )
            self._generation = generation
        dirty_n |= node_n
        dirty_f |= node_f
        if retry:
            dirty_n |= self._failed_n
            dirty_f |= self._failed_f
        if not dirty_n and not dirty_f and not entries:
            self._tracked = True
            return None
        plan = plan_entries(
            desired.entries(),
            Entries(self._neighbours, self._fdb),
            neighbours=dirty_n,
            fdb=dirty_f,
        )

        def restored(entry: Neighbour | Fdb) -> bool:
            if isinstance(entry, Neighbour):
                return entry.address not in node_n and entry.address not in self._failed_n
            return entry.mac not in node_f and entry.mac not in self._failed_f

        result = self._apply(plan, device, restored=restored)
        self._tracked = True
        return self._finish(
            attrs.evolve(result, generation=generation, device="unchanged"), started
        )

    def _apply(
        self,
        plan: EntryPlan,
        device: DeviceOutcome,
        *,
        restored: Callable[[Neighbour | Fdb], bool] | None,
    ) -> OverlayResult:
        outcomes = self.kernel.apply(device.ifindex, plan) if plan else []
        put = deleted = back = 0
        failures: list[EntryOutcome] = []
        for o in outcomes:
            entry = o.entry
            key_n = entry.address if isinstance(entry, Neighbour) else None
            # asked before the failed sets change: a failed entry that now went in is
            # no restore
            was_restored = o.ok and o.op == "put" and restored is not None and restored(entry)
            if not o.ok:
                failures.append(o)
                if key_n is not None:
                    self._failed_n.add(key_n)
                else:
                    assert isinstance(entry, Fdb)
                    self._failed_f.add(entry.mac)
                continue
            if isinstance(entry, Neighbour):
                self._failed_n.discard(entry.address)
                if o.op == "put":
                    self._neighbours[entry.address] = entry.mac
                else:
                    self._neighbours.pop(entry.address, None)
            else:
                self._failed_f.discard(entry.mac)
                if o.op == "put":
                    self._fdb[entry.mac] = entry.dst
                else:
                    self._fdb.pop(entry.mac, None)
            if o.op == "put":
                put += 1
                if was_restored:
                    back += 1
                    log.info("overlay entry restored", **_describe(entry))
            else:
                deleted += 1
        for f in failures:
            log.warning("overlay entry failed", op=f.op, reason=f.reason, **_describe(f.entry))
        desired = self._desired
        assert desired is not None
        wanted = desired.entries()
        return OverlayResult(
            full=False,
            desired=len(wanted.neighbours) + len(wanted.fdb),
            installed=self.entries_installed,
            put=put,
            deleted=deleted,
            restored=back,
            failures=tuple(failures),
            device=device.action,
        )

    def _finish(
        self, result: OverlayResult, started: float, *, synced: bool = True
    ) -> OverlayResult:
        result = attrs.evolve(result, duration=self.clock() - started)
        self.syncs += 1
        self.entries_restored += result.restored
        self.entry_failures += len(result.failures)
        self.last_result = result
        if synced and result.device != "none":
            self.first_sync_done = True
        problems = frozenset(self.problems)
        for p in problems - self._logged_problems:
            log.warning("overlay problem", node=p.node, reason=p.reason, key=p.key, value=p.value)
        self._logged_problems = problems
        m = self.metrics
        if m is not None:
            m.entries_desired.set(result.desired)
            m.entries_installed.set(result.installed)
            m.syncs.labels(result="partial" if result.failures else "ok").inc()
            m.entry_failures.inc(len(result.failures))
            m.entries_restored.inc(result.restored)
            skipped = self._desired.skipped if self._desired is not None else {}
            m.nodes_skipped.set(len(skipped))
        changed = result.put or result.deleted or result.failures or result.device != "unchanged"
        level = jsonlog.INFO if changed else jsonlog.DEBUG
        if log.enabled(level):
            log.log(
                level,
                "overlay sync",
                put=result.put,
                deleted=result.deleted,
                deferred_deletes=result.deferred_deletes,
                restored=result.restored,
                failed=len(result.failures),
                desired=result.desired,
                installed=result.installed,
                device=result.device,
                full=result.full,
                duration_s=round(result.duration, 6),
            )
        return result

    def _own_affected(self, desired: DesiredOverlay, entries: dict[str, CachedNode | None]) -> bool:
        if desired.own is not None and desired.own in entries:
            return True
        if self.node_name:
            return self.node_name in entries
        wanted = machine_id_key(self.machine_id)
        if not wanted:
            return False
        return any(
            e is not None and machine_id_key(e.facts.machine_id) == wanted for e in entries.values()
        )

    # -- the loop --------------------------------------------------------------------------

    # (``run``: the loop of ``sync.loop.ReconcileLoop``)

    def _retries_pending(self) -> bool:
        return bool(self._failed_n or self._failed_f)

    def _counts_as_failure(self) -> bool:
        # the device's own problem is reported and retried; it never ends the loop
        return self._kernel_problem is None


def _describe(entry: Neighbour | Fdb) -> dict[str, str]:
    if isinstance(entry, Neighbour):
        return {"kind": "neighbour", "address": str(entry.address), "mac": entry.mac}
    return {"kind": "fdb", "mac": entry.mac, "dst": str(entry.dst)}
