"""KubeNodeSource against the API-server double: sync, events, and every fault."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from tests.apiserver import ApiServerDouble
from tests.kube.helpers import RecordingSink, running, wait_until
from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.core.values import Annotations
from xcluster_cni_lib.sources.watching import KubeNodeSource
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.testing.nodes import make_node

CIDR_KEY = "example.com/pod-cidrs"


def _source(api_client: Any, **kwargs: Any) -> KubeNodeSource:
    kwargs.setdefault("page_size", 4)
    kwargs.setdefault("backoff_base", 0.05)
    kwargs.setdefault("backoff_max", 0.3)
    return KubeNodeSource(api_client, annotations=Annotations(cidr=CIDR_KEY), **kwargs)


def _populate(api: ApiServerDouble, count: int = 10) -> None:
    api.set_nodes(make_node(f"n{i}", index=i) for i in range(count))


def _synced(sink: RecordingSink, api: ApiServerDouble) -> bool:
    want = {}
    for name in api.node_names():
        node = api.get_node(name)
        if node is not None:
            want[name] = extract_facts(node, annotations=Annotations(cidr=CIDR_KEY))
    with sink.lock:
        return sink.nodes == want


def test_initial_sync_in_pages(api: ApiServerDouble, api_client: Any, sink: RecordingSink) -> None:
    _populate(api, 10)
    source = _source(api_client)
    with running(source, sink):
        wait_until(lambda: sink.count("replace_all") == 1, what="the first list")
        wait_until(lambda: api.active_watches == 1, what="the watch")
    assert sink.calls[:2] == [("replace_all", 10), ("healthy", True)]
    assert _synced(sink, api)
    assert api.list_requests == 3  # 10 nodes in pages of 4
    assert source.lists == 1 and source.relists == 0
    assert source.resource_version == api.resource_version


def test_add_modify_delete_events(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink
) -> None:
    _populate(api, 3)
    with running(_source(api_client), sink):
        wait_until(lambda: api.active_watches == 1)
        api.add_node(make_node("new", index=50))
        api.patch_node("n1", {"metadata": {"annotations": {CIDR_KEY: "10.9.0.0/24"}}})
        api.patch_node("n2", {"spec": {"podCIDRs": ["10.8.0.0/24"]}})
        api.delete_node("n0")
        wait_until(lambda: _synced(sink, api), what="the events")
    n1 = sink.get("n1")
    assert n1 is not None and n1.cidr_annotation == "10.9.0.0/24"
    n2 = sink.get("n2")
    assert n2 is not None and n2.pod_cidrs == ("10.8.0.0/24",)
    assert sink.get("n0") is None and sink.get("new") is not None
    assert ("delete", "n0") in sink.calls
    assert sink.count("replace_all") == 1


def test_heartbeat_yields_equal_facts(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink
) -> None:
    _populate(api, 2)
    with running(_source(api_client), sink):
        wait_until(lambda: api.active_watches == 1)
        cached = sink.get("n1")
        api.heartbeat("n1")
        wait_until(lambda: sink.count("upsert") == 1, what="the heartbeat event")
    assert sink.calls[-1] == ("upsert", cached)  # equal: the sink can drop it


def test_gone_relists(api: ApiServerDouble, api_client: Any, sink: RecordingSink) -> None:
    _populate(api, 5)
    source = _source(api_client)
    with running(source, sink):
        wait_until(lambda: api.active_watches == 1)
        lists_before = api.list_requests
        api.delete_node("n4")  # happens while the watcher is told it is too old
        api.gone_watches()
        api.add_node(make_node("late", index=60))
        wait_until(lambda: source.relists == 1, what="a re-list")
        wait_until(lambda: _synced(sink, api))
    assert api.list_requests > lists_before
    assert sink.count("replace_all") == 2
    assert sink.get("n4") is None and sink.get("late") is not None


def test_watch_from_expired_version_relists(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink
) -> None:
    _populate(api, 3)
    source = _source(api_client)
    with running(source, sink):
        wait_until(lambda: api.active_watches == 1)
        api.stall_watches()  # our stream holds back the next event ...
        api.heartbeat("n0")
        api.expire_history()  # ... which then falls out of the server's window
        api.release_watches()
        wait_until(lambda: source.relists == 1, what="a re-list after 410")
        wait_until(lambda: api.active_watches == 1)
    assert _synced(sink, api)


def test_cut_stream_reconnects_without_losing_events(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink
) -> None:
    _populate(api, 3)
    source = _source(api_client)
    with running(source, sink):
        wait_until(lambda: api.active_watches == 1)
        for round_ in range(3):
            assert api.cut_watches() == 1
            # changes made while nobody is watching arrive after the reconnect
            api.add_node(make_node(f"added-{round_}", index=70 + round_))
            api.delete_node(f"n{round_}")
            wait_until(lambda: api.active_watches == 1, what="the reconnect")
        wait_until(lambda: _synced(sink, api), what="the missed events")
    assert source.restarts >= 3 and source.relists == 0
    assert api.list_requests == 1  # resumed from the last resourceVersion, no re-list


def test_stalled_stream_reconnects_after_idle_timeout(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink, caplog: pytest.LogCaptureFixture
) -> None:
    _populate(api, 3)
    source = _source(api_client, idle_timeout=1.0)
    with (
        running(source, sink),
        caplog.at_level(logging.WARNING, "xcluster_cni_lib.sources.watching"),
    ):
        wait_until(lambda: api.active_watches == 1)
        assert api.stall_watches() == 1  # open but silent: no events, no bookmarks
        api.add_node(make_node("during-stall", index=80))
        started = time.monotonic()
        wait_until(lambda: sink.get("during-stall") is not None, timeout=5, what="the reconnect")
        waited = time.monotonic() - started
    assert 0.8 < waited < 4
    assert api.watch_requests >= 2 and source.relists == 0
    assert any("no event or bookmark" in jsonlog.render(r) for r in caplog.records)


def test_bookmarks_keep_a_quiet_stream_alive(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink
) -> None:
    _populate(api, 2)
    source = _source(api_client, idle_timeout=1.0)  # bookmarks come every 0.3 s
    with running(source, sink):
        wait_until(lambda: api.active_watches == 1)
        start_events = source.events
        wait_until(lambda: source.events >= start_events + 6, what="bookmarks")
    assert api.watch_requests == 1 and source.restarts == 0


def test_api_down_then_back(api: ApiServerDouble, api_client: Any, sink: RecordingSink) -> None:
    _populate(api, 3)
    source = _source(api_client)
    with running(source, sink):
        wait_until(lambda: api.active_watches == 1)
        api.stop()
        wait_until(lambda: sink.healthy is False, what="unhealthy while down")
        cache_while_down = dict(sink.nodes)
        # the data changes behind the daemon's back; the server comes back on its port
        api.delete_node("n0")
        api.heartbeat("n1")
        api.start()
        wait_until(lambda: sink.healthy is True and _synced(sink, api), what="recovery")
    assert len(cache_while_down) == 3  # nothing was dropped while the API was away
    assert ("healthy", False) in sink.calls and source.errors >= 1


def test_server_errors_back_off_and_recover(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink
) -> None:
    _populate(api, 3)
    api.fail_requests(3, status=500, verbs={"list"})
    source = _source(api_client)
    with running(source, sink):
        wait_until(lambda: sink.count("replace_all") == 1, what="the list after errors")
    assert sink.calls[0] == ("healthy", False)
    assert source.errors == 3 and api.list_requests == 4  # 3 failed + 1 page of 3


def test_stop_is_prompt_even_mid_stream(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink
) -> None:
    _populate(api, 2)
    source = _source(api_client, idle_timeout=60)
    with running(source, sink) as stop:
        wait_until(lambda: api.active_watches == 1)
        api.stall_watches()
        started = time.monotonic()
        stop.set()
    assert time.monotonic() - started < 1.5  # running() asserts the thread returned


def test_max_iterations_bounds_the_loop(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink
) -> None:
    import threading

    _populate(api, 2)
    source = _source(api_client, watch_timeout=1, max_iterations=2)
    stop = threading.Event()
    source.run(sink, stop)  # list + watch (1 s), watch again (1 s), then return
    assert api.watch_requests == 2 and sink.count("replace_all") == 1


def test_stop_is_prompt_while_a_slow_server_answers(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink
) -> None:
    _populate(api, 2)
    api.set_latency(10)  # every request waits 10 s before its answer
    source = _source(api_client)
    with running(source, sink) as stop:
        wait_until(lambda: api.list_requests == 1, what="the list request")
        started = time.monotonic()
        stop.set()
    assert time.monotonic() - started < 1.5
    assert sink.calls == []
