"""The masquerade reconciler against an in-memory nftables (no root): its loop, its safety
rules and, as a hypothesis state machine, that any sequence of node changes, health
changes, tampering and failures ends, once the view is complete, with exactly the
desired table, and never loses an address from a set on an incomplete view."""

from __future__ import annotations

import ipaddress
import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.masquerade.fakenft import FakeNft, FakeNftError
from tests.masquerade.nftlab import running, wait_for
from xcluster_cni_lib.core import masquerade as m
from xcluster_cni_lib.core.values import NodeFacts
from xcluster_cni_lib.sync.masquerade import MasqueradeReconciler
from xcluster_cni_lib.sync.metrics import DaemonMetrics
from xcluster_cni_lib.sync.nodecache import NodeCache

TABLE = m.table_name(202)
NON_MASQ = (ipaddress.ip_network("172.16.0.0/12"),)


def node(name: str, v4: str, v6: str | None = None) -> NodeFacts:
    cidrs = (v4,) if v6 is None else (v4, v6)
    return NodeFacts(name=name, pod_cidrs=cidrs, internal_ips=("192.168.0.1",))


def desired(cache: NodeCache, own: str | None = "a") -> m.MasqueradeSets:
    return m.desired_sets(cache.snapshot().networks, own=own, non_masquerade=NON_MASQ)


def make(cache: NodeCache, nft: FakeNft, **kw: object) -> MasqueradeReconciler:
    return MasqueradeReconciler(
        cache,
        nft,
        node_name="a",
        non_masquerade=NON_MASQ,
        protocol=202,
        **kw,  # type: ignore[arg-type]
    )


def synced(*nodes: NodeFacts, healthy: bool = True) -> NodeCache:
    cache = NodeCache()
    cache.replace_all(nodes)
    cache.set_healthy(healthy)
    return cache


def test_first_reconcile_creates_then_changes_only_elements() -> None:
    cache = synced(node("a", "10.244.0.0/24", "fd00:10:244::/64"), node("b", "10.244.1.0/24"))
    nft = FakeNft()
    r = make(cache, nft)
    assert r.run_once().action == "replace"
    assert nft.sets(TABLE) == desired(cache)
    cache.upsert(node("c", "10.244.2.0/24"))
    result = r.run_changes()
    assert result is not None and result.action == "update" and not result.full
    verbs = {next(iter(c)) for c in nft.applied[-1]["nftables"][1:]}
    kinds = {next(iter(next(iter(c.values())))) for c in nft.applied[-1]["nftables"][1:]}
    assert verbs <= {"add", "delete"} and kinds == {"element"}
    assert nft.sets(TABLE) == desired(cache)
    reads = nft.reads
    assert r.run_changes() is None  # nothing changed
    assert nft.reads == reads  # and the incremental path never lists


def test_a_node_change_that_changes_no_set_writes_nothing() -> None:
    cache = synced(node("a", "10.244.0.0/24"), node("b", "10.244.1.0/24"))
    nft = FakeNft()
    r = make(cache, nft)
    r.run_once()
    writes = len(nft.applied)
    cache.upsert(NodeFacts(name="b", pod_cidrs=("10.244.1.0/24",), internal_ips=("192.168.0.9",)))
    result = r.run_changes()
    assert result is not None and result.action == "none"
    assert len(nft.applied) == writes


def test_own_node_by_machine_id_and_its_problems() -> None:
    cache = NodeCache()
    cache.replace_all(
        [
            NodeFacts(name="x", pod_cidrs=("10.244.7.0/24",), machine_id="M1"),
            NodeFacts(name="y", pod_cidrs=("10.244.8.0/24",), machine_id="m2"),
        ]
    )
    cache.set_healthy(True)
    nft = FakeNft()
    r = MasqueradeReconciler(cache, nft, machine_id="m1", protocol=202)
    r.run_once()
    sets = nft.sets(TABLE)
    assert sets is not None and sets.local4 == (ipaddress.ip_network("10.244.7.0/24"),)
    assert r.own == "x" and r.problems == []
    # a clone: two nodes with this machine id -> own unknown, nothing removed
    cache.upsert(NodeFacts(name="z", pod_cidrs=("10.244.9.0/24",), machine_id="m1"))
    result = r.run_changes()
    assert result is not None and result.deferred == 1  # local4 keeps its CIDR
    assert nft.sets(TABLE).local4 == (ipaddress.ip_network("10.244.7.0/24"),)  # type: ignore[union-attr]
    assert any("several nodes" in p for p in r.problems)


def test_unknown_own_node_is_a_problem_and_masquerades_nothing() -> None:
    cache = synced(node("b", "10.244.1.0/24"))
    nft = FakeNft()
    r = make(cache, nft)
    r.run_once()
    assert nft.sets(TABLE).local4 == ()  # type: ignore[union-attr]
    assert r.ready
    assert r.problems == ["masquerade: node a is not among the nodes"]


def test_loop_coalesces_retries_and_stops() -> None:
    cache = synced(node("a", "10.244.0.0/24"))
    nft = FakeNft()
    metrics = DaemonMetrics()
    r = make(cache, nft, coalesce=0.2, retry_min=0.01, metrics=metrics)
    cache.subscribe(r.notify)
    with running(r.run):
        wait_for(lambda: r.ready)
        writes = len(nft.applied)
        for i in range(1, 30):
            cache.upsert(node(f"n{i}", f"10.245.{i}.0/24"))
        wait_for(lambda: nft.sets(TABLE) == desired(cache))
        assert len(nft.applied) - writes <= 3  # a burst: a few transactions, not 29
        nft.fail_next = FakeNftError("element does not exist")
        cache.delete("n7")
        # the retry's write shows before its loop clears the failure count: wait for both
        wait_for(
            lambda: nft.sets(TABLE) == desired(cache) and r.failed_syncs == 0, what="the retry"
        )
        assert r.ready
    assert nft.sets(TABLE) == desired(cache)  # stopping left it
    text = metrics.render().decode()
    assert 'xcluster_masquerade_syncs_total{result="error"} 1.0' in text
    assert 'xcluster_masquerade_writes_total{kind="replace"} 1.0' in text


def test_kernel_notification_compares_at_once() -> None:
    cache = synced(node("a", "10.244.0.0/24"))
    nft = FakeNft()
    r = make(cache, nft, resync_interval=3600.0)
    with running(r.run):
        wait_for(lambda: r.ready)
        nft.tamper(TABLE, "delete rules")
        r.notify_kernel()
        wait_for(lambda: r.restores == 1, timeout=1.0)
    state = m.parse_table(nft.read_table(TABLE) or [], TABLE)
    assert state.intact


def test_resync_repairs_what_no_event_told() -> None:
    cache = synced(node("a", "10.244.0.0/24"))
    nft = FakeNft()
    r = make(cache, nft, resync_interval=0.05)
    with running(r.run):
        wait_for(lambda: r.ready)
        nft.tamper(TABLE, "flush cluster4")
        wait_for(lambda: nft.sets(TABLE) == desired(cache), timeout=1.0)


def test_remove_and_stop() -> None:
    cache = synced(node("a", "10.244.0.0/24"))
    nft = FakeNft()
    r = make(cache, nft)
    stop = threading.Event()
    stop.set()
    r.run(stop)  # returns at once, writes nothing
    assert nft.applied == []
    r.run_once()
    assert r.remove() is True and TABLE not in nft.tables
    assert r.remove() is False


@pytest.mark.parametrize("healthy", [False, True])
def test_nothing_leaves_a_set_on_an_incomplete_view(healthy: bool) -> None:
    nft = FakeNft()
    old = m.MasqueradeSets.of(
        local=[ipaddress.ip_network("10.244.0.0/24")],
        cluster=[ipaddress.ip_network("10.244.0.0/24"), ipaddress.ip_network("10.99.0.0/24")],
    )
    nft.apply(m.table_document(TABLE, old))
    cache = NodeCache()
    if healthy:  # listed nothing yet: not synced
        cache.set_healthy(True)
    else:  # synced, then the source became unhealthy
        cache.replace_all([node("b", "10.244.1.0/24")])
    r = make(cache, nft)
    result = r.run_once()
    assert result.deferred >= 1
    after = nft.sets(TABLE)
    assert after is not None
    for name, elements in old.items():
        assert m.collapse((*elements, *after.get(name))) == after.get(name)


# -- a state machine ---------------------------------------------------------------------

CIDRS4 = [f"10.244.{i}.0/24" for i in range(6)] + ["10.244.0.0/23", "10.244.4.0/22"]
CIDRS6 = [f"fd00:10:244:{i}::/64" for i in range(4)] + ["fd00:10:244::/62"]


class Masquerading(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.cache = NodeCache()
        self.nft = FakeNft()
        self.r = make(self.cache, self.nft)
        self.nodes: dict[str, NodeFacts] = {}

    @rule(
        name=st.sampled_from(["a", "b", "c", "d"]),
        v4=st.sampled_from(CIDRS4),
        v6=st.one_of(st.none(), st.sampled_from(CIDRS6)),
    )
    def upsert(self, name: str, v4: str, v6: str | None) -> None:
        self.nodes[name] = node(name, v4, v6)
        self.cache.upsert(self.nodes[name])

    @rule(name=st.sampled_from(["a", "b", "c", "d"]))
    def delete(self, name: str) -> None:
        self.nodes.pop(name, None)
        self.cache.delete(name)

    @rule()
    def relist(self) -> None:
        self.cache.replace_all(self.nodes.values())

    @rule(healthy=st.booleans())
    def health(self, healthy: bool) -> None:
        self.cache.set_healthy(healthy)

    @rule(
        how=st.sampled_from(
            ["delete table", "flush cluster4", "flush local6", "delete rules", "junk element"]
        )
    )
    def tamper(self, how: str) -> None:
        self.nft.tamper(TABLE, how)

    @rule()
    def fail_next_write(self) -> None:
        self.nft.fail_next = FakeNftError("something went wrong")

    @rule(full=st.booleans())
    def reconcile(self, full: bool) -> None:
        before = self.nft.sets(TABLE)
        try:
            if full:
                self.r.run_once()
            else:
                self.r.run_changes()
        except FakeNftError:
            assert self.nft.sets(TABLE) == before  # all or nothing
            return
        after = self.nft.sets(TABLE)
        complete = self.cache.synced and self.cache.healthy
        if complete and full:
            assert after == desired(self.cache)
            assert m.parse_table(self.nft.read_table(TABLE) or [], TABLE).intact
        if not complete and before is not None and after is not None:
            for name, elements in before.items():  # nothing left a set
                assert m.collapse((*elements, *after.get(name))) == after.get(name)

    @precondition(lambda self: self.cache.synced and self.cache.healthy)
    @rule()
    def converges(self) -> None:
        self.nft.fail_next = None
        self.r.run_once()
        self.r.run_changes()
        assert self.nft.sets(TABLE) == desired(self.cache)

    @invariant()
    def sets_are_canonical(self) -> None:
        sets = self.nft.sets(TABLE)
        if sets is not None:
            for _, elements in sets.items():
                assert m.collapse(elements) == elements


Masquerading.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
test_masquerading = Masquerading.TestCase
