"""The overlay reconciler's rules with a fake kernel (no root): retries of failed
entries, full reconciles where incremental ones cannot be trusted, the own node by
machine id, a device that cannot be made."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import threading

from xcluster_cni_lib.core.overlay import (
    DeviceOutcome,
    Entries,
    EntryOutcome,
    EntryPlan,
    KernelChanges,
    Neighbour,
    OverlaySettings,
    VxlanDevice,
)
from xcluster_cni_lib.core.values import IPAddress, NodeFacts
from xcluster_cni_lib.sync.nodecache import NodeCache
from xcluster_cni_lib.sync.overlay import OverlayReconciler

ip = ipaddress.ip_address
S = OverlaySettings("xcvx1", 1)


class FakeKernel:
    def __init__(self) -> None:
        self.device: VxlanDevice | None = None
        self.neighbours: dict[IPAddress, str] = {}
        self.fdb: dict[str, IPAddress] = {}
        self.fail: set[IPAddress] = set()
        self.broken: str | None = None
        self.changes: KernelChanges | None = KernelChanges()
        self.lists = 0
        self.applied: list[EntryPlan] = []

    def ensure_device(self, want: VxlanDevice) -> DeviceOutcome:
        if self.broken:
            raise RuntimeError(self.broken)
        action = "unchanged" if self.device == want else "created"
        self.device = want
        return DeviceOutcome(action, 7, "eth0", 2, 1450, 1500)

    def list_entries(self, ifindex: int) -> Entries:
        self.lists += 1
        return Entries(dict(self.neighbours), dict(self.fdb))

    def apply(self, ifindex: int, plan: EntryPlan) -> list[EntryOutcome]:
        self.applied.append(plan)
        out = []
        for n in plan.put_neighbours:
            if n.address in self.fail:
                out.append(EntryOutcome("put", n, errno.EINVAL, "refused"))
            else:
                self.neighbours[n.address] = n.mac
                out.append(EntryOutcome("put", n))
        for n in plan.delete_neighbours:
            self.neighbours.pop(n.address, None)
            out.append(EntryOutcome("delete", n))
        for f in plan.put_fdb:
            self.fdb[f.mac] = f.dst
            out.append(EntryOutcome("put", f))
        for f in plan.delete_fdb:
            self.fdb.pop(f.mac, None)
            out.append(EntryOutcome("delete", f))
        return out

    def take_changes(self) -> KernelChanges | None:
        changes, self.changes = self.changes, KernelChanges()
        return changes


def facts(i: int, machine_id: str | None = None) -> NodeFacts:
    return NodeFacts(
        f"n{i}",
        pod_cidrs=(f"10.244.{i}.0/24",),
        internal_ips=(f"192.168.0.{i + 1}",),
        machine_id=machine_id,
    )


def cache_of(count: int) -> NodeCache:
    cache = NodeCache()
    cache.replace_all(facts(i, machine_id=f"M{i}") for i in range(count))
    cache.set_healthy(True)
    return cache


def test_failed_entries_are_retried_until_they_succeed() -> None:
    cache, k = cache_of(3), FakeKernel()
    k.fail = {ip("10.244.2.0")}
    rec = OverlayReconciler(cache, k, settings=S, node_name="n0")
    r = rec.run_once()
    assert len(r.failures) == 1 and rec.entry_failures == 1
    assert rec.run_changes() is None  # nothing changed, no retry asked
    r2 = rec.run_changes(retry=True)
    assert r2 is not None and len(r2.failures) == 1
    k.fail = set()
    r3 = rec.run_changes(retry=True)
    assert r3 is not None and r3.put == 1 and not r3.failures and not r3.full
    assert r3.restored == 0  # a first success is no restore
    assert k.lists == 1


def test_the_loop_retries_with_backoff() -> None:
    cache, k = cache_of(2), FakeKernel()
    k.fail = {ip("10.244.1.0")}
    rec = OverlayReconciler(cache, k, settings=S, node_name="n0", retry_min=0.01)
    stop = threading.Event()
    seen: list[int] = []

    def on_iteration(result: object) -> None:
        seen.append(len(k.applied))
        if len(seen) == 2:
            k.fail = set()
        if k.neighbours.get(ip("10.244.1.0")):
            stop.set()

    rec.on_iteration = on_iteration  # type: ignore[assignment]
    thread = threading.Thread(target=rec.run, args=(stop,), daemon=True)
    thread.start()
    thread.join(5)
    assert stop.is_set() and not thread.is_alive()
    assert ip("10.244.1.0") in k.neighbours


def test_kernel_events_update_the_tracked_view() -> None:
    cache, k = cache_of(2), FakeKernel()
    rec = OverlayReconciler(cache, k, settings=S, node_name="n0")
    rec.run_once()
    vtep = ip("10.244.1.0")
    mac = k.neighbours.pop(vtep)
    k.changes = KernelChanges(neighbours={vtep: None})
    r = rec.run_changes()
    assert r is not None and not r.full and r.put == 1 and r.restored == 1
    assert k.neighbours[vtep] == mac and rec.entries_restored == 1
    # an event that cannot be attributed: a full reconcile
    k.changes = KernelChanges(device=True)
    assert (r := rec.run_changes()) is not None and r.full
    k.changes = None  # events lost
    assert (r := rec.run_changes()) is not None and r.full


def test_incremental_falls_back_to_full_where_needed() -> None:
    cache, k = cache_of(3), FakeKernel()
    rec = OverlayReconciler(cache, k, settings=S, node_name="n0")
    rec.run_once()
    cache.upsert(NodeFacts("n0", pod_cidrs=("10.244.0.0/24",), internal_ips=("192.168.0.99",)))
    r = rec.run_changes()
    assert r is not None and r.full  # the own node changed: the device changes
    assert k.device is not None and k.device.local == ip("192.168.0.99")
    cache.set_healthy(False)
    cache.delete("n2")
    r = rec.run_changes()
    assert r is not None and r.full and r.deferred_deletes == 2 and r.deleted == 0


def test_own_node_by_machine_id() -> None:
    cache, k = cache_of(3), FakeKernel()
    rec = OverlayReconciler(cache, k, settings=S, machine_id="m1")
    rec.run_once()
    assert k.device is not None and k.device.local == ip("192.168.0.2")
    assert set(k.neighbours) == {ip("10.244.0.0"), ip("10.244.2.0")}
    cache.upsert(facts(1, machine_id="M1"))  # unchanged facts: no notification
    cache.upsert(NodeFacts("n1", ("10.244.1.0/24",), ("192.168.0.50",), machine_id="M1"))
    r = rec.run_changes()
    assert r is not None and r.full and k.device.local == ip("192.168.0.50")


def test_device_problem_is_reported_and_retried() -> None:
    cache, k = cache_of(2), FakeKernel()
    k.broken = "no interface holds the node address 192.168.0.1"
    rec = OverlayReconciler(cache, k, settings=S, node_name="n0", retry_min=0.01)
    stop = threading.Event()
    calls: list[object] = []

    def on_iteration(result: object) -> None:
        calls.append(result)
        if len(calls) == 3:
            k.broken = None
        if result is not None:
            stop.set()

    rec.on_iteration = on_iteration  # type: ignore[assignment]
    thread = threading.Thread(target=rec.run, args=(stop,), daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive() and calls[:3] == [None, None, None]
    assert rec.ready and rec.problems == []
    broken = OverlayReconciler(cache, FakeKernel(), settings=S, node_name="n0")
    broken.kernel.broken = "boom"  # type: ignore[attr-defined]
    with contextlib.suppress(RuntimeError):
        broken.run_once()
    assert not broken.ready and "boom" in broken.problems[0].reason


def test_stray_entries_of_ours_are_deleted_once_synced() -> None:
    cache, k = cache_of(2), FakeKernel()
    k.neighbours[ip("10.9.9.0")] = "0e:04:01:02:03:04"
    rec = OverlayReconciler(cache, k, settings=S, node_name="n0")
    r = rec.run_once()
    assert r.deleted == 1 and ip("10.9.9.0") not in k.neighbours
    assert Neighbour(ip("10.9.9.0"), "0e:04:01:02:03:04") in k.applied[0].delete_neighbours
