"""The nft adapter and the masquerade reconciler against the real ``nft`` in a namespace:
the table and its sets, incremental element updates, other tables untouched, the safety
rules, self-heal after tampering within 1 s, stop and remove."""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Iterator

import pytest

from tests.masquerade.nftlab import (
    TABLE,
    Capture,
    facts,
    filled_cache,
    foreign_tables,
    read_state,
    ruleset_without,
    running,
    wait_for,
)
from xcluster_cni_lib.core import masquerade as m
from xcluster_cni_lib.core.nodes import parse_facts
from xcluster_cni_lib.core.values import NodeNetwork
from xcluster_cni_lib.kernel.nftables import Nft, NftError
from xcluster_cni_lib.kernel.nftevents import NftTableEvents
from xcluster_cni_lib.sync.masquerade import MasqueradeReconciler
from xcluster_cni_lib.sync.metrics import DaemonMetrics
from xcluster_cni_lib.sync.nodecache import NodeCache
from xcluster_cni_lib.testing.netns import run_in

pytestmark = pytest.mark.root

NON_MASQ = (ipaddress.ip_network("172.16.0.0/12"),)


@pytest.fixture
def nft(netns: str) -> Iterator[Nft]:
    with Nft(netns=netns) as n:
        yield n


def desired(cache: NodeCache, own: str = "n1") -> m.MasqueradeSets:
    return m.desired_sets(cache.snapshot().networks, own=own, non_masquerade=NON_MASQ)


def reconciler(cache: NodeCache, nft: Nft, **kw: object) -> MasqueradeReconciler:
    return MasqueradeReconciler(
        cache,
        nft,
        node_name="n1",
        non_masquerade=NON_MASQ,
        protocol=202,
        **kw,  # type: ignore[arg-type]
    )


# -- the adapter -------------------------------------------------------------------------


def test_apply_and_read_back(nft: Nft) -> None:
    sets = m.MasqueradeSets.of(local=[ipaddress.ip_network("10.244.1.0/24")], cluster=NON_MASQ)
    assert nft.read_table(TABLE) is None
    nft.apply(m.table_document(TABLE, sets))
    objects = nft.read_table(TABLE)
    assert objects is not None
    state = m.parse_table(objects, TABLE)
    assert state.intact, state.mismatches
    assert state.sets == sets


def test_errors_name_the_table_and_what_nft_said(nft: Nft) -> None:
    diff = m.SetsDiff(delete={"cluster4": NON_MASQ})
    with pytest.raises(NftError, match=rf"table inet {TABLE}.*nft said: .*No such file"):
        nft.apply(m.update_document(TABLE, diff))
    nft.apply(m.table_document(TABLE, m.MasqueradeSets()))
    with pytest.raises(NftError, match=rf"delete in table inet {TABLE} failed.*does not exist"):
        nft.apply(m.update_document(TABLE, diff))
    with Nft(netns="/nonexistent/netns") as bad, pytest.raises(NftError, match="namespace"):
        bad.read_table(TABLE)
    with Nft(command="/nonexistent/nft") as missing, pytest.raises(NftError, match="not found"):
        missing.read_table(TABLE)


def test_apply_refuses_other_tables(nft: Nft, netns: str) -> None:
    foreign_tables(netns)
    before = ruleset_without(netns)
    for doc in (
        {"nftables": [{"delete": {"table": {"family": "ip", "name": "nat"}}}]},
        {"nftables": [{"delete": {"table": {"family": "inet", "name": "filter"}}}]},
        {"nftables": [{"flush": {"set": {"family": "ip", "table": "nat", "name": "x"}}}]},
    ):
        with pytest.raises(ValueError, match="refusing"):
            nft.apply(doc)
    assert ruleset_without(netns) == before


def test_table_events_report_our_table_only_and_not_our_own_writes(nft: Nft, netns: str) -> None:
    """The daemon's kernel monitor (nf_tables notifications): another table's changes
    wake nobody, nor do our own transactions (told by the nft process id); someone
    else's change to our table does."""
    monitor = NftTableEvents(TABLE, own_pids=nft.started, netns=netns)
    calls: list[int] = []
    try:
        with running(lambda stop: monitor.run(lambda: calls.append(1), stop)):
            foreign_tables(netns)
            run_in(netns, ["nft", "flush", "set", "inet", "filter", "allowed"])
            nft.apply(m.table_document(TABLE, m.MasqueradeSets.of(cluster=NON_MASQ)))
            wait_for(lambda: monitor.echoes >= 1, what="the echo of our own write")
            assert calls == [] and monitor.events == 0
            run_in(netns, ["nft", "delete", "table", "inet", TABLE])
            wait_for(lambda: bool(calls), what="the delete to be reported")
            assert monitor.events >= 1
    finally:
        monitor.close()


def test_creates_the_table_with_the_sets(nft: Nft, netns: str) -> None:
    foreign_tables(netns)
    before = ruleset_without(netns)
    cache = filled_cache(range(4))
    r = reconciler(cache, nft)
    result = r.run_once()
    assert result.action == "replace" and not result.restored
    state = read_state(netns)
    assert state is not None and state.intact, state
    assert state.sets == desired(cache)
    assert state.sets.local4 == (ipaddress.ip_network("10.244.1.0/24"),)
    assert r.ready and r.problems == []
    text = run_in(netns, ["nft", "list", "table", "inet", TABLE])
    assert "ip saddr @local4 ip daddr != @cluster4 masquerade" in text
    assert "ip6 saddr @local6 ip6 daddr != @cluster6 masquerade" in text
    assert "type nat hook postrouting priority srcnat" in text
    # nothing to do the second time
    assert r.run_once().action == "none"
    assert ruleset_without(netns) == before


def test_incremental_updates_change_only_elements(nft: Nft, netns: str) -> None:
    foreign_tables(netns)
    before = ruleset_without(netns)
    cache = filled_cache([1, 2, 3, 7])
    r = reconciler(cache, nft)
    r.run_once()
    handles = run_in(netns, ["nft", "-a", "list", "chain", "inet", TABLE, "postrouting"])
    capture = Capture(netns)
    try:
        cache.upsert(facts(9))
        result = r.run_changes()
        assert result is not None and not result.full and result.action == "update"
        assert read_state(netns).sets == desired(cache)  # type: ignore[union-attr]
        cache.delete("n2")
        cache.delete("n9")
        result = r.run_changes()
        assert result is not None and result.action == "update"
        assert read_state(netns).sets == desired(cache)  # type: ignore[union-attr]
        assert r.run_changes() is None  # nothing changed since
        wait_for(lambda: len(capture.of(TABLE)) >= 4, what="the element events")
        assert {kind for _, kind in capture.of(TABLE)} == {"element"}, capture.of(TABLE)
    finally:
        capture.close()
    assert run_in(netns, ["nft", "-a", "list", "chain", "inet", TABLE, "postrouting"]) == handles
    assert ruleset_without(netns) == before


def test_no_element_leaves_a_set_before_sync_or_while_unhealthy(nft: Nft, netns: str) -> None:
    # left by an earlier run: node n5 (since deleted) and this node n1
    old = m.desired_sets((facts_network(1), facts_network(5)), own="n1", non_masquerade=NON_MASQ)
    nft.apply(m.table_document(TABLE, old))
    cache = NodeCache()  # not synced: nothing listed yet
    r = reconciler(cache, nft)
    result = r.run_once()
    assert result.action == "none" and result.deferred > 0  # nothing known yet: all kept
    assert read_state(netns).sets == old  # type: ignore[union-attr]
    assert not r.ready
    cache.replace_all([facts(1), facts(2)])  # synced, but not healthy
    result = r.run_once()
    assert result.deferred > 0 and result.deleted == 0
    state = read_state(netns)
    assert state is not None
    for name, elements in old.items():
        assert set(elements) <= set(state.sets.get(name)) or set(
            m.collapse((*elements, *state.sets.get(name)))
        ) == set(state.sets.get(name))
    cache.set_healthy(True)
    r.run_changes()
    assert read_state(netns).sets == desired(cache)  # type: ignore[union-attr]
    assert r.ready


def facts_network(i: int) -> NodeNetwork:
    return parse_facts(facts(i))


def handle_of_rule(ns: str, payload: str) -> int:
    objects = json.loads(run_in(ns, ["nft", "-a", "-j", "list", "chain", "inet", TABLE, CHAIN]))
    for o in objects["nftables"]:
        rule = o.get("rule")
        if rule and rule["expr"][0]["match"]["left"]["payload"]["protocol"] == payload:
            return int(rule["handle"])
    raise AssertionError(f"no {payload} rule")


CHAIN = m.CHAIN
TAMPERING = {
    "table deleted": ["delete", "table", "inet", TABLE],
    "set flushed": ["flush", "set", "inet", TABLE, "cluster4"],
    "local set flushed": ["flush", "set", "inet", TABLE, "local6"],
    "element added": ["add", "element", "inet", TABLE, "cluster4", "{ 203.0.113.0/24 }"],
    "range added": ["add", "element", "inet", TABLE, "local4", "{ 10.1.0.3-10.1.0.9 }"],
    "chain flushed": ["flush", "chain", "inet", TABLE, CHAIN],
    "rule deleted": ["delete", "rule", "inet", TABLE, CHAIN, "handle", "{ip6}"],
    "rule added": ["add", "rule", "inet", TABLE, CHAIN, "counter", "accept"],
}


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_tampering_is_repaired_within_one_second(nft: Nft, netns: str, how: str) -> None:
    foreign_tables(netns)
    before = ruleset_without(netns)
    cache = filled_cache(range(6))
    metrics = DaemonMetrics()
    r = reconciler(cache, nft, resync_interval=3600.0, metrics=metrics)
    monitor = NftTableEvents(TABLE, own_pids=nft.started, netns=netns)
    want = desired(cache)

    def intact() -> bool:
        state = read_state(netns)
        return state is not None and state.intact and state.sets == want

    try:
        with running(lambda stop: monitor.run(r.notify_kernel, stop)), running(r.run):
            wait_for(intact, what="the table")
            command = [
                a.replace("{ip6}", str(handle_of_rule(netns, "ip6"))) for a in TAMPERING[how]
            ]
            run_in(netns, ["nft", *command])
            took = wait_for(intact, timeout=1.0, what=f"repair after {how}")
            wait_for(lambda: r.restores == 1, timeout=1.0, what="the restore to be counted")
    finally:
        monitor.close()
    assert took < 1.0
    print(f"repaired after {how} in {took * 1000:.0f} ms")
    assert b"xcluster_masquerade_restored_total 1.0" in metrics.render()
    assert ruleset_without(netns) == before


def test_stop_leaves_the_table_and_remove_deletes_it(nft: Nft, netns: str) -> None:
    foreign_tables(netns)
    before = ruleset_without(netns)
    cache = filled_cache(range(3))
    r = reconciler(cache, nft)
    with running(r.run):
        wait_for(lambda: r.ready, what="the first reconcile")
    assert read_state(netns) is not None  # stopping left it
    assert r.remove() is True
    assert read_state(netns) is None
    assert r.remove() is False  # again: nothing to do, no error
    assert ruleset_without(netns) == before


def test_failures_are_reported_and_retried(netns: str) -> None:
    cache = filled_cache(range(3))
    with Nft(netns=netns, command="/nonexistent/nft") as broken:
        r = reconciler(cache, broken, retry_min=0.01, retry_max=0.02)
        stop = threading.Event()
        done = threading.Thread(target=r.run, args=(stop,), kwargs={"max_failures": 3})
        done.start()
        done.join(timeout=5)
        assert not done.is_alive()  # gave up after 3
    assert r.failed_syncs == 3 and not r.ready
    assert any("not found" in p and TABLE in p for p in r.problems)


def test_own_updates_wake_no_full_compare_but_others_do(netns: str) -> None:
    cache = filled_cache(range(4))
    with Nft(netns=netns) as nft:
        r = reconciler(cache, nft, resync_interval=3600.0, coalesce=0.0)
        cache.subscribe(r.notify)
        monitor = NftTableEvents(TABLE, own_pids=nft.started, netns=netns)
        try:
            # the monitor first (its socket is subscribed already), then the reconciler
            with running(lambda stop: monitor.run(r.notify_kernel, stop)), running(r.run):
                wait_for(lambda: r.ready, what="the first reconcile")
                wait_for(lambda: not r.pending)
                fulls = r.full_syncs
                echoes = monitor.echoes
                for i in range(10, 20):
                    cache.upsert(facts(i))
                    wait_for(lambda: read_state(netns).sets == desired(cache))  # type: ignore[union-attr]
                wait_for(lambda: monitor.echoes >= echoes + 10, what="the echoes")
                assert r.full_syncs == fulls and monitor.events == 0
                run_in(netns, ["nft", "flush", "set", "inet", TABLE, "cluster6"])
                wait_for(lambda: r.full_syncs > fulls, timeout=1.0, what="a full compare")
                wait_for(lambda: read_state(netns).sets == desired(cache), timeout=1.0)  # type: ignore[union-attr]
        finally:
            monitor.close()


def test_a_failed_update_falls_back_to_a_full_compare(nft: Nft, netns: str) -> None:
    cache = filled_cache(range(3))
    r = reconciler(cache, nft)
    r.run_once()
    run_in(netns, ["nft", "flush", "set", "inet", TABLE, "cluster4"])  # unseen: no monitor
    cache.delete("n2")
    with pytest.raises(NftError, match="does not exist"):
        r.run_changes()
    result = r.run_changes()  # what the kernel holds is unknown now: read it
    assert result is not None and result.full and result.restored
    assert read_state(netns).sets == desired(cache)  # type: ignore[union-attr]
