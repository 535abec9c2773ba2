"""The API-server double speaks the protocol the official client expects."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes import watch as k8s_watch

from tests.apiserver import ApiServerDouble
from tests.kube.helpers import wait_until
from xcluster_cni_lib.testing.nodes import make_node

Watch: Any = k8s_watch.Watch  # untyped in the client


@pytest.fixture
def v1(api_client: Any) -> Any:
    return client.CoreV1Api(api_client)


def _raw(response: Any) -> Any:
    return json.loads(response.data)


def test_paged_list_over_three_pages(api: ApiServerDouble, v1: Any) -> None:
    api.set_nodes(make_node(f"n{i:02d}", index=i) for i in range(25))
    names: list[str] = []
    versions = set()
    token = None
    pages = 0
    while True:
        page = _raw(v1.list_node(limit=10, _continue=token, _preload_content=False))
        pages += 1
        names += [item["metadata"]["name"] for item in page["items"]]
        versions.add(page["metadata"]["resourceVersion"])
        token = page["metadata"].get("continue")
        if not token:
            break
        assert page["metadata"]["remainingItemCount"] == 25 - len(names)
    assert pages == 3
    assert names == [f"n{i:02d}" for i in range(25)]
    assert versions == {api.resource_version}
    # the model-object path works too
    node_list = v1.list_node(limit=10)
    assert len(node_list.items) == 10 and node_list.metadata._continue


def test_pages_are_a_consistent_snapshot(api: ApiServerDouble, v1: Any) -> None:
    api.set_nodes(make_node(f"n{i}", index=i) for i in range(4))
    first = _raw(v1.list_node(limit=2, _preload_content=False))
    api.delete_node("n3")
    api.add_node(make_node("n9", index=9))
    rest = _raw(
        v1.list_node(limit=2, _continue=first["metadata"]["continue"], _preload_content=False)
    )
    assert [i["metadata"]["name"] for i in first["items"] + rest["items"]] == [
        "n0",
        "n1",
        "n2",
        "n3",
    ]


def test_expired_continue_token_is_410(api: ApiServerDouble, v1: Any) -> None:
    api.set_nodes(make_node(f"n{i}", index=i) for i in range(4))
    first = _raw(v1.list_node(limit=2, _preload_content=False))
    api.expire_history()
    with pytest.raises(client.ApiException) as caught:
        v1.list_node(limit=2, _continue=first["metadata"]["continue"])
    assert caught.value.status == 410
    assert json.loads(caught.value.body or "{}")["reason"] == "Expired"


def test_watch_events_and_bookmarks(api: ApiServerDouble, v1: Any) -> None:
    api.add_node(make_node("a", index=1))
    api.add_node(make_node("b", index=2))
    rv = api.resource_version

    def mutate() -> None:
        wait_until(lambda: api.active_watches == 1, what="the watch to open")
        api.add_node(make_node("c", index=3))
        api.heartbeat("a")
        api.delete_node("b")
        final[0] = api.resource_version
        api.send_bookmarks()

    final = [""]
    threading.Thread(target=mutate, daemon=True).start()
    seen: list[tuple[str, str]] = []
    w: Any = Watch()
    for event in w.stream(
        v1.list_node, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=5
    ):
        if event["type"] == "BOOKMARK":
            version = event["raw_object"]["metadata"]["resourceVersion"]
            if version != final[0]:  # a periodic bookmark before the last change
                continue
            seen.append(("BOOKMARK", version))
            w.stop()
        else:
            seen.append((event["type"], event["object"].metadata.name))
    assert seen == [
        ("ADDED", "c"),
        ("MODIFIED", "a"),
        ("DELETED", "b"),
        ("BOOKMARK", api.resource_version),
    ]


def test_watch_without_resource_version_starts_with_added(api: ApiServerDouble, v1: Any) -> None:
    api.set_nodes(make_node(f"n{i}", index=i) for i in range(3))
    response = v1.list_node(watch=True, timeout_seconds=1, _preload_content=False)
    lines = [json.loads(line) for line in response.read().splitlines()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [
        ("ADDED", "n0"),
        ("ADDED", "n1"),
        ("ADDED", "n2"),
    ]


def test_watch_from_expired_version_gets_410_error_event(api: ApiServerDouble, v1: Any) -> None:
    api.add_node(make_node("a"))
    old = api.resource_version
    api.heartbeat("a")
    api.expire_history()
    response = v1.list_node(
        watch=True, resource_version=old, timeout_seconds=5, _preload_content=False
    )
    events = [json.loads(line) for line in response.read().splitlines()]
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    assert events[0]["object"]["kind"] == "Status" and events[0]["object"]["code"] == 410
    # the client's own watch helper turns it into an ApiException(410)
    with pytest.raises(client.ApiException) as caught:
        for _ in Watch().stream(v1.list_node, resource_version=old, timeout_seconds=5):
            pass
    assert caught.value.status == 410


def test_patch_annotations_merge_and_strategic(api: ApiServerDouble, v1: Any) -> None:
    api.add_node(make_node("a", annotations={"keep": "1", "drop": "2"}))
    before = api.get_node("a")
    assert before is not None
    v1.patch_node("a", {"metadata": {"annotations": {"new": "3", "drop": None}}})
    node = api.get_node("a")
    assert node is not None
    annotations = node["metadata"]["annotations"]
    assert annotations["new"] == "3" and annotations["keep"] == "1" and "drop" not in annotations
    assert int(node["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert node["metadata"]["uid"] == before["metadata"]["uid"]
    # merge-patch+json, sent explicitly
    v1.api_client.call_api(
        "PATCH",
        f"{api.url}/api/v1/nodes/a",
        header_params={
            "Content-Type": "application/merge-patch+json",
            "Authorization": "Bearer s3cret",
        },
        body={"metadata": {"labels": {"zone": "z1"}}},
    ).read()
    node = api.get_node("a")
    assert node is not None and node["metadata"]["labels"]["zone"] == "z1"
    # JSON patch (a list body)
    v1.patch_node("a", [{"op": "replace", "path": "/metadata/annotations/keep", "value": "x"}])
    node = api.get_node("a")
    assert node is not None and node["metadata"]["annotations"]["keep"] == "x"


def test_get_missing_node_is_404_status(api: ApiServerDouble, v1: Any) -> None:
    with pytest.raises(client.ApiException) as caught:
        v1.read_node("nope")
    assert caught.value.status == 404
    status = json.loads(caught.value.body or "{}")
    assert status["kind"] == "Status" and status["reason"] == "NotFound"
    api.add_node(make_node("here"))
    assert v1.read_node("here").metadata.name == "here"


def test_create_replace_delete(api: ApiServerDouble, v1: Any) -> None:
    created = v1.create_node(make_node("a"))
    assert created.metadata.resource_version == api.resource_version
    with pytest.raises(client.ApiException) as caught:
        v1.create_node(make_node("a"))
    assert caught.value.status == 409
    body = _raw(v1.read_node("a", _preload_content=False))
    body["spec"]["podCIDRs"] = ["10.9.9.0/24"]
    v1.replace_node("a", body)
    node = api.get_node("a")
    assert node is not None and node["spec"]["podCIDRs"] == ["10.9.9.0/24"]
    with pytest.raises(client.ApiException) as caught:
        v1.replace_node("a", body)  # stale resourceVersion
    assert caught.value.status == 409
    v1.delete_node("a")
    assert api.get_node("a") is None
    assert api.requests["create"] == 2 and api.requests["delete"] == 1


def test_token_is_required(api: ApiServerDouble) -> None:
    with socket.create_connection(("127.0.0.1", api.port)) as sock:
        sock.sendall(b"GET /api/v1/nodes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 401")


def test_injected_failures_and_counters(api: ApiServerDouble, v1: Any) -> None:
    api.fail_requests(2, status=503, verbs={"list"})
    for _ in range(2):
        with pytest.raises(client.ApiException) as caught:
            v1.list_node()
        assert caught.value.status == 503
    assert v1.list_node().items == []
    with pytest.raises(client.ApiException):
        v1.read_node("x")  # 404: not an injected failure
    assert api.list_requests == 3 and api.requests["get"] == 1


def test_restart_keeps_port_and_state(api: ApiServerDouble, v1: Any, tmp_path: Path) -> None:
    api.add_node(make_node("a"))
    port, rv = api.port, api.resource_version
    api.restart()
    assert api.port == port and api.resource_version == rv
    assert v1.read_node("a").metadata.name == "a"


def test_stop_closes_streams_and_listener(api: ApiServerDouble, v1: Any) -> None:
    response = v1.list_node(watch=True, timeout_seconds=30, _preload_content=False)
    wait_until(lambda: api.active_watches == 1)
    api.stop()
    with pytest.raises(Exception):  # noqa: B017 - any read error: the stream was cut
        for _ in response.stream(amt=None):
            pass
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", api.port), timeout=1)


def test_selectors_filter_list_and_watch(api: ApiServerDouble, v1: Any) -> None:
    api.add_node(make_node("a"))
    api.add_node(make_node("b"))
    assert [n.metadata.name for n in v1.list_node(field_selector="metadata.name=b").items] == ["b"]
    assert [
        n.metadata.name for n in v1.list_node(label_selector="kubernetes.io/hostname=a").items
    ] == ["a"]
    rv = api.resource_version
    response = v1.list_node(
        watch=True,
        field_selector="metadata.name=b",
        resource_version=rv,
        timeout_seconds=1,
        _preload_content=False,
    )
    api.heartbeat("a")
    api.heartbeat("b")
    events = [json.loads(line) for line in response.read().splitlines()]
    assert [e["object"]["metadata"]["name"] for e in events] == ["b"]


def test_latency_and_stalled_new_streams(api: ApiServerDouble, v1: Any) -> None:
    api.add_node(make_node("a"))
    api.set_latency(0.3)
    started = time.monotonic()
    v1.read_node("a")
    assert time.monotonic() - started >= 0.3
    api.set_latency(0)
    api.stall_watches(new_streams=True)
    response = v1.list_node(
        watch=True,
        resource_version=api.resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=30,
        _preload_content=False,
        _request_timeout=(5, 0.8),
    )
    api.heartbeat("a")
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):  # silent: not even bookmarks
        for _ in response.stream(amt=None):
            pass
    api.release_watches()
    response = v1.list_node(
        watch=True,
        resource_version=api.resource_version,
        timeout_seconds=30,
        _preload_content=False,
    )
    api.heartbeat("a")
    line = next(iter(response.stream(amt=None)))
    assert json.loads(line)["type"] == "MODIFIED"
    response.close()
