"""The NetworkPolicy agent's store (what the three watches deliver) and the reading of
nf_tables notifications (whose change, to which table)."""

from __future__ import annotations

import struct

from tests.apiserver.objects import make_namespace, make_network_policy, make_pod
from xcluster_cni_lib.kernel.nftevents import table_events
from xcluster_cni_lib.sync.policystore import Absent, PolicyStore, Rejected, converter


def _store() -> tuple[PolicyStore, list[int]]:
    store = PolicyStore()
    calls: list[int] = []
    store.subscribe(lambda: calls.append(store.generation))
    return store, calls


def _list_all(store: PolicyStore) -> None:
    for sink in store.sinks.values():
        sink.replace_all([])
        sink.set_healthy(True)


def test_synced_only_when_every_kind_is_listed() -> None:
    store, _ = _store()
    for kind in ("pods", "namespaces"):
        store.sinks[kind].replace_all([])
        store.sinks[kind].set_healthy(True)
    assert not store.synced
    assert store.reasons() == ["networkpolicies not listed yet"]
    store.sinks["networkpolicies"].replace_all([])
    store.sinks["networkpolicies"].set_healthy(True)
    assert store.synced and store.reasons() == []
    store.sinks["pods"].set_healthy(False, "connection refused")
    assert store.reasons() == ["pods source unhealthy: connection refused"]


def test_a_pod_without_addresses_hostnetwork_or_finished_is_not_kept() -> None:
    convert = converter("pods")
    assert not isinstance(convert(make_pod("p", "a", node="n1")), Absent)  # waits for IPs
    host = make_pod("h", "a", node="n1", ips=["10.0.0.1"], host_network=True)
    assert isinstance(convert(host), Absent)
    done = make_pod("d", "a", node="n1", ips=["10.0.0.2"], phase="Succeeded")
    assert convert(done) == Absent("a/d")
    store, _ = _store()
    _list_all(store)
    sink = store.sinks["pods"]
    sink.upsert(convert(make_pod("p", "a", node="n1", ips=["10.0.0.3"])))
    assert set(sink.items) == {"a/p"}
    sink.upsert(convert(make_pod("p", "a", node="n1", ips=["10.0.0.3"], phase="Failed")))
    assert sink.items == {}


def test_an_event_that_changes_nothing_policy_reads_notifies_nobody() -> None:
    store, calls = _store()
    _list_all(store)
    convert = converter("pods")
    pod = make_pod("p", "a", node="n1", ips=["10.0.0.3"], labels={"app": "x"})
    store.sinks["pods"].upsert(convert(pod))
    before = list(calls)
    pod["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    store.sinks["pods"].upsert(convert(pod))
    assert calls == before
    pod["metadata"]["labels"] = {"app": "y"}
    store.sinks["pods"].upsert(convert(pod))
    assert len(calls) == len(before) + 1


def test_a_malformed_object_is_dropped_and_named_until_fixed() -> None:
    store, _ = _store()
    _list_all(store)
    sink = store.sinks["networkpolicies"]
    convert = converter("networkpolicies")
    good = make_network_policy("p", "a", ingress=[{"ports": [{"port": 80}]}])
    sink.upsert(convert(good))
    bad = make_network_policy("p", "a", ingress=[{"ports": [{"port": 70000}]}])
    rejected = convert(bad)
    assert isinstance(rejected, Rejected) and rejected.key == "a/p"
    sink.upsert(rejected)
    assert sink.items == {}
    (problem,) = store.problems()
    assert "NetworkPolicy a/p" in str(problem) and "port" in str(problem)
    sink.upsert(convert(good))
    assert store.problems() == [] and set(sink.items) == {"a/p"}
    # a list never fails on one bad object
    ns = converter("namespaces")
    store.sinks["namespaces"].replace_all(
        [ns(make_namespace("ok")), ns({"metadata": {"name": "x", "labels": {"a": 1}}})]
    )
    assert set(store.sinks["namespaces"].items) == {"ok"}
    assert any("Namespace x" in str(p) for p in store.problems())


def test_the_view_is_sorted_and_of_one_generation() -> None:
    store, _ = _store()
    convert = converter("pods")
    store.sinks["pods"].replace_all(
        [convert(make_pod(n, "a", node="n1", ips=[f"10.0.0.{i}"])) for i, n in ((2, "b"), (1, "a"))]
    )
    view, generation = store.view()
    assert [p.name for p in view.pods] == ["a", "b"] and generation == store.generation


def _message(msg: int, family: int, pid: int, table: bytes) -> bytes:
    attr = struct.pack("=HH", 4 + len(table) + 1, 1) + table + b"\0"
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("=BBH", family, 0, 0) + attr
    return struct.pack("=IHHII", 16 + len(body), (10 << 8) | msg, 0, 0, pid) + body


def test_nf_tables_notifications_are_told_by_table_family_and_process() -> None:
    t = "xcluster-cni-policy-202"
    data = b"".join(
        (
            _message(12, 1, 100, t.encode()),  # element of ours, by our nft (pid 100)
            _message(2, 1, 555, t.encode()),  # table deleted by someone else
            _message(12, 7, 555, t.encode()),  # bridge family, someone else
            _message(12, 2, 555, t.encode()),  # ip family: not ours
            _message(12, 1, 555, b"other"),  # another table
        )
    )
    assert table_events(data, t, {1, 7}, {100}) == (2, 1)
    assert table_events(data[:10], t, {1, 7}, {100}) == (0, 0)  # truncated: nothing


def test_pod_changes_since_gives_each_pod_then_and_now_or_none() -> None:
    store, _ = _store()
    _list_all(store)
    convert = converter("pods")
    start = store.generation
    a1 = convert(make_pod("a", "x", node="n2", ips=["10.0.0.1"], labels={"v": "1"}))
    store.sinks["pods"].upsert(a1)
    a2 = convert(make_pod("a", "x", node="n2", ips=["10.0.0.1"], labels={"v": "2"}))
    store.sinks["pods"].upsert(a2)
    store.sinks["pods"].delete("x/gone")  # unknown: no change
    found = store.pod_changes_since(start)
    assert found == (store.generation, [(None, a2)])
    assert store.pod_changes_since(store.generation) == (store.generation, [])
    middle = store.generation
    store.sinks["namespaces"].upsert(converter("namespaces")(make_namespace("x")))
    assert store.pod_changes_since(middle) is None  # not only pods
    later = store.generation
    store.bind("x/a", [])
    assert store.pod_changes_since(later) is None  # a binding: always recompiled
