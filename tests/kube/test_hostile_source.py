"""KubeNodeSource against hostile API answers (issue 12, findings 5-7): answers over the
caps, malformed events, requests that never answer, 410 loops. Real HTTP against the
API-server double with ``tests.apiserver.hostile``; the official client unchanged.

Each test states what a user relies on: the source stays alive, reads no more than its
caps, and tells ``/readyz`` (through ``sink.set_healthy(False, reason)``) within a
bounded time."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.apiserver import ApiServerDouble
from tests.apiserver.hostile import (
    Hostile,
    MiB,
    event,
    hang,
    huge_error,
    huge_list_page,
    huge_watch_line,
    watch_lines,
)
from tests.kube.helpers import RecordingSink, running, wait_until
from xcluster_cni_lib.core.values import Annotations
from xcluster_cni_lib.sources.events import LineReader, TooLarge
from xcluster_cni_lib.sources.watching import KubeNodeSource
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.testing.nodes import make_node

CIDR_KEY = "example.com/pod-cidrs"
HUGE = 100 * MiB  # what the review sent


def _source(api_client: Any, **kwargs: Any) -> KubeNodeSource:
    kwargs.setdefault("page_size", 4)
    kwargs.setdefault("backoff_base", 0.05)
    kwargs.setdefault("backoff_max", 0.3)
    return KubeNodeSource(api_client, annotations=Annotations(cidr=CIDR_KEY), **kwargs)


@pytest.fixture
def hostile(api: ApiServerDouble) -> Iterator[Hostile]:
    h = Hostile(api)
    try:
        yield h
    finally:
        h.clear()
        h.release()


def _populate(api: ApiServerDouble, count: int = 3) -> None:
    api.set_nodes(make_node(f"n{i}", index=i) for i in range(count))


def _synced_and_watching(api: ApiServerDouble, sink: RecordingSink) -> None:
    wait_until(lambda: sink.count("replace_all") >= 1, what="the first list")
    wait_until(lambda: api.active_watches == 1, what="the watch")
    wait_until(lambda: sink.healthy is True, what="healthy")


# -- bounded reading ------------------------------------------------------------------------


@pytest.mark.parametrize("content_length", [False, True], ids=["chunked", "content-length"])
def test_huge_list_page_is_refused_then_retried(
    api: ApiServerDouble,
    api_client: Any,
    sink: RecordingSink,
    hostile: Hostile,
    content_length: bool,
) -> None:
    _populate(api)
    hostile.on("list", huge_list_page(HUGE, content_length=content_length), times=2)
    source = _source(api_client, max_page_bytes=8 * MiB)
    with running(source, sink):
        wait_until(lambda: source.errors >= 1, timeout=20, what="the refused page")
        assert sink.healthy is False and sink.count("replace_all") == 0
        assert sink.reason is not None and "too large" in sink.reason, sink.reason
        # retried with backoff: the third LIST is a normal one
        _synced_and_watching(api, sink)
    assert source.errors == 2 and set(sink.nodes) == {"n0", "n1", "n2"}
    # each read stopped at the cap (8 MiB), plus what the sockets buffer
    assert hostile.sent["list"] < 2 * 30 * MiB


def test_default_caps() -> None:
    source = KubeNodeSource(None)
    assert source.max_page_bytes == 64 * MiB and source.max_line_bytes == 4 * MiB
    assert source.request_timeout == 30 and source.idle_timeout == 90


def test_huge_watch_line_is_refused_and_the_watch_resumes(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink, hostile: Hostile
) -> None:
    _populate(api)
    source = _source(api_client)
    with running(source, sink):
        _synced_and_watching(api, sink)
        hostile.on("watch", huge_watch_line(HUGE), times=2)
        api.cut_watches()
        started = time.monotonic()
        wait_until(lambda: sink.healthy is False, timeout=10, what="unhealthy")
        assert "watch line too large" in (sink.reason or ""), sink.reason
        api.add_node(make_node("after", index=20))
        wait_until(lambda: sink.get("after") is not None, timeout=10, what="the next event")
        wait_until(lambda: sink.healthy is True, what="healthy again")
        took = time.monotonic() - started
    assert hostile.served["watch"] == 2 and source.errors == 2
    assert source.relists == 0  # resumed from the last resourceVersion
    assert hostile.sent["watch"] < 2 * 20 * MiB  # 4 MiB cap each, plus socket buffers
    assert took < 8


def test_line_reader_is_linear_and_bounded() -> None:
    # a line arriving one byte at a time: linear (the old buffer re-joined on every
    # chunk, quadratic), and refused once past the cap
    reader = LineReader(limit=64 * 1024)
    data = b"x" * 200_000
    started = time.monotonic()
    with pytest.raises(TooLarge):
        for i in range(len(data)):
            list(reader.feed(data[i : i + 1]))
    assert time.monotonic() - started < 2
    reader = LineReader(limit=1 << 20)
    chunks = [b'{"a":', b"1}\n{", b'"b":2}\n\n', b'{"c":3}']
    assert list(reader.lines(chunks)) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


def test_huge_error_body_is_not_read(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink, hostile: Hostile
) -> None:
    _populate(api)
    hostile.on("list", huge_error(HUGE, status=500), times=1)
    source = _source(api_client)
    with running(source, sink):
        _synced_and_watching(api, sink)
    assert source.errors == 1
    assert hostile.sent["list"] < 20 * MiB  # 64 KiB read, then the connection closed


# -- malformed events -----------------------------------------------------------------------

BAD_LINES = {
    "not an object": b"[1,2]",
    "object is not an object": b'{"type":"ADDED","object":"str"}',
    "metadata is not an object": b'{"type":"MODIFIED","object":{"metadata":"x"}}',
    "no type": b'{"object":{"metadata":{"name":"n1"}}}',
    "no metadata.name": b'{"type":"DELETED","object":{"metadata":{}}}',
    "unknown type": b'{"type":"EXPLODED","object":{"metadata":{"name":"n1"}}}',
    "not JSON": b'{"type":"ADDED",',
    "not UTF-8": b'{"type":"ADDED","object":{"metadata":{"name":"\xff\xfe"}}}',
    "too deeply nested": b"[" * 100_000,
    "long value": b'{"type":"ADDED","object":' + b'"' + b"v" * 10_000 + b'"}',
}


def test_malformed_events_are_skipped_counted_and_logged(
    api: ApiServerDouble,
    api_client: Any,
    sink: RecordingSink,
    hostile: Hostile,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _populate(api)
    source = _source(api_client)
    with (
        running(source, sink),
        caplog.at_level(logging.WARNING, "xcluster_cni_lib.sources.watching"),
    ):
        _synced_and_watching(api, sink)
        rv = api.resource_version
        good = make_node("between", index=30)
        good["metadata"]["resourceVersion"] = rv
        lines = [*BAD_LINES.values(), event("ADDED", good), b'{"type":"ADDED","object":[]}']
        hostile.on("watch", watch_lines(lines), times=1)
        api.cut_watches()
        # the valid event among the bad ones arrives; the stream ends; the next watch
        # (a normal one) delivers later changes
        wait_until(lambda: sink.get("between") is not None, what="the valid event")
        wait_until(lambda: hostile.served["watch"] == 1 and api.active_watches == 1)
        api.add_node(make_node("later", index=31))
        wait_until(lambda: sink.get("later") is not None, what="a later event")
        assert sink.healthy is True
    assert source.malformed_events == len(BAD_LINES) + 1
    assert source.errors == 0 and source.relists == 0
    messages = [
        jsonlog.render(r) for r in caplog.records if r.msg == "malformed watch event skipped"
    ]
    assert len(messages) == 10  # ten per stream are logged, the rest counted
    assert all(len(m) < 1000 for m in messages)  # values shortened
    logged = " ".join(messages)
    for reason in (
        "not an object",
        "object is not an object",
        "metadata is not an object",
        "no type",
        "no metadata.name",
        "unknown type",
        "not JSON",
        "too deeply nested",
    ):
        assert f'"reason":"{reason}' in logged, reason


def test_non_dict_items_of_a_list_do_not_stop_the_source(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink, hostile: Hostile
) -> None:
    def odd_page(handler: Any) -> None:
        body = json.dumps(
            {
                "kind": "NodeList",
                "metadata": {"resourceVersion": api.resource_version},
                "items": [1, "x", [2], {"metadata": "x"}, make_node("ok", index=40)],
            }
        ).encode()
        handler._send(200, body)

    hostile.on("list", odd_page, times=1)
    source = _source(api_client)
    with running(source, sink):
        wait_until(lambda: sink.count("replace_all") == 1)
        _synced_and_watching(api, sink)
    assert "ok" in sink.nodes


# -- readiness follows the source -----------------------------------------------------------


@pytest.mark.parametrize("verb", ["list", "watch"])
def test_request_that_never_answers_marks_unhealthy_within_the_timeout(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink, hostile: Hostile, verb: str
) -> None:
    _populate(api)
    source = _source(api_client, request_timeout=1.0)
    with running(source, sink):
        _synced_and_watching(api, sink)
        hostile.on(verb, hang())
        started = time.monotonic()
        if verb == "list":
            api.gone_watches()  # re-list: the LIST hangs
        else:
            api.cut_watches()  # reconnect: the new watch hangs
        wait_until(lambda: sink.healthy is False, timeout=5, what="unhealthy")
        took = time.monotonic() - started
        assert 0.8 < took < 2.5, took  # request_timeout (1 s) + one poll
        assert "did not answer within 1 s" in (sink.reason or ""), sink.reason
        hostile.clear()
        hostile.release()
        wait_until(lambda: sink.healthy is True, timeout=5, what="recovery")
    assert source.errors >= 1


def test_list_that_keeps_answering_410_marks_unhealthy(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink
) -> None:
    _populate(api)
    source = _source(api_client)
    with running(source, sink):
        _synced_and_watching(api, sink)
        api.fail_requests(1000, status=410, verbs={"list"})
        api.gone_watches()
        wait_until(lambda: sink.healthy is False, timeout=5, what="unhealthy")
        assert "410" in (sink.reason or ""), sink.reason
        assert api.list_requests <= 1 + 3 + 1
        api.clear_failures()
        wait_until(lambda: sink.healthy is True, timeout=5, what="recovery")
    assert source.relists >= 1


def test_watch_that_keeps_answering_410_marks_unhealthy(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink, hostile: Hostile
) -> None:
    _populate(api)
    source = _source(api_client)
    with running(source, sink):
        _synced_and_watching(api, sink)
        gone = event("ERROR", {"kind": "Status", "code": 410, "message": "too old"})
        hostile.on("watch", watch_lines([gone]))
        api.cut_watches()
        wait_until(lambda: sink.healthy is False, timeout=5, what="unhealthy")
        assert "410" in (sink.reason or ""), sink.reason
        # every LIST succeeded meanwhile: it must not flip readiness back on
        lists = source.lists
        wait_until(lambda: source.lists >= lists + 2, timeout=5, what="more re-lists")
        assert sink.healthy is False
        hostile.clear()
        wait_until(lambda: sink.healthy is True, timeout=5, what="recovery")


def test_silent_watch_marks_unhealthy_until_the_stream_speaks(
    api: ApiServerDouble, api_client: Any, sink: RecordingSink
) -> None:
    _populate(api)
    source = _source(api_client, idle_timeout=1.0)
    with running(source, sink):
        _synced_and_watching(api, sink)
        api.stall_watches(new_streams=True)
        wait_until(lambda: sink.healthy is False, timeout=4, what="unhealthy")
        assert "silent" in (sink.reason or ""), sink.reason
        api.release_watches()
        wait_until(lambda: sink.healthy is True, timeout=4, what="recovery")
