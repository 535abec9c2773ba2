"""The API-server double serves Pods, Namespaces and NetworkPolicies with the same
protocol as Nodes, and the official client runs unchanged against it."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, dynamic
from kubernetes import watch as k8s_watch

from tests.apiserver import ApiServerDouble
from tests.apiserver.hostile import Hostile, watch_lines
from tests.apiserver.objects import make_namespace, make_network_policy, make_pod
from tests.kube.helpers import wait_until
from xcluster_cni_lib.testing.nodes import make_node

Watch: Any = k8s_watch.Watch  # untyped in the client
DynamicClient: Any = dynamic.DynamicClient


@pytest.fixture
def v1(api_client: Any) -> Any:
    return client.CoreV1Api(api_client)


@pytest.fixture
def net(api_client: Any) -> Any:
    return client.NetworkingV1Api(api_client)


def _raw(response: Any) -> Any:
    return json.loads(response.data)


def _lines(response: Any) -> Iterator[dict[str, Any]]:
    """Watch events from a raw ``_preload_content=False`` stream, as the project's own
    watch reads them (pieces as they arrive, split into lines)."""
    pending = b""
    for piece in response.stream(64 * 1024, decode_content=False):
        pending += piece
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if line.strip():
                yield json.loads(line)


def _cluster(api: ApiServerDouble, pods_per_namespace: int = 5) -> None:
    for ns in ("alpha", "beta", "gamma"):
        api.add_namespace(make_namespace(ns, labels={"team": ns}))
    api.set_pods(
        make_pod(
            f"p{i}", ns, node=f"n{i % 2}", ips=[f"10.244.{i % 2}.{i + 2}"], labels={"i": str(i)}
        )
        for ns in ("alpha", "beta", "gamma")
        for i in range(pods_per_namespace)
    )


def test_pods_paged_over_all_namespaces(api: ApiServerDouble, v1: Any) -> None:
    _cluster(api, pods_per_namespace=9)  # 27 pods
    seen: list[tuple[str, str]] = []
    versions = set()
    token = None
    pages = 0
    while True:
        page = v1.list_pod_for_all_namespaces(limit=10, _continue=token)
        pages += 1
        seen += [(p.metadata.namespace, p.metadata.name) for p in page.items]
        versions.add(page.metadata.resource_version)
        token = page.metadata._continue
        if not token:
            break
        assert page.metadata.remaining_item_count == 27 - len(seen)
    assert pages == 3
    # etcd's order: by namespace, then name
    assert seen == [(ns, f"p{i}") for ns in ("alpha", "beta", "gamma") for i in range(9)]
    assert versions == {api.resource_version}
    assert all(p.status.phase == "Running" for p in v1.list_pod_for_all_namespaces().items)


def test_namespaced_pods_paged_with_a_consistent_snapshot(api: ApiServerDouble, v1: Any) -> None:
    _cluster(api)
    first = v1.list_namespaced_pod("beta", limit=2)
    assert [p.metadata.name for p in first.items] == ["p0", "p1"]
    assert first.metadata.remaining_item_count == 3
    api.delete_pod("beta", "p4")  # later pages still show the list's snapshot
    api.add_pod(make_pod("p9", "beta"))
    names = [p.metadata.name for p in first.items]
    token = first.metadata._continue
    while token:
        page = v1.list_namespaced_pod("beta", limit=2, _continue=token)
        assert page.metadata.resource_version == first.metadata.resource_version
        names += [p.metadata.name for p in page.items]
        token = page.metadata._continue
    assert names == ["p0", "p1", "p2", "p3", "p4"]
    assert [p.metadata.name for p in v1.list_namespaced_pod("beta").items] == [
        "p0",
        "p1",
        "p2",
        "p3",
        "p9",
    ]
    assert v1.list_namespaced_pod("nowhere").items == []


def test_continue_tokens_expire_and_stay_with_their_resource(api: ApiServerDouble, v1: Any) -> None:
    _cluster(api)
    api.set_nodes(make_node(f"n{i}", index=i) for i in range(3))
    pods = v1.list_pod_for_all_namespaces(limit=4)
    nodes = v1.list_node(limit=1)
    with pytest.raises(client.ApiException) as caught:
        v1.list_node(limit=1, _continue=pods.metadata._continue)
    assert caught.value.status == 400
    api.expire_history(resources={"pods"})
    with pytest.raises(client.ApiException) as caught:
        v1.list_pod_for_all_namespaces(limit=4, _continue=pods.metadata._continue)
    assert caught.value.status == 410
    assert json.loads(caught.value.body or "{}")["reason"] == "Expired"
    # the nodes' token is untouched by the pods' expiry
    assert len(v1.list_node(limit=1, _continue=nodes.metadata._continue).items) == 1


def test_one_resource_version_sequence_across_kinds(
    api: ApiServerDouble, v1: Any, net: Any
) -> None:
    versions = [
        int(api.add_namespace(make_namespace("a"))["metadata"]["resourceVersion"]),
        int(api.add_pod(make_pod("p", "a"))["metadata"]["resourceVersion"]),
        int(api.add_network_policy(make_network_policy("np", "a"))["metadata"]["resourceVersion"]),
        int(api.add_node(make_node("n0"))["metadata"]["resourceVersion"]),
    ]
    assert versions == sorted(versions) and len(set(versions)) == 4
    assert str(versions[-1]) == api.resource_version
    # every list reports the store's current version, whatever kind last changed
    lists = [
        v1.list_namespace(),
        v1.list_pod_for_all_namespaces(),
        net.list_network_policy_for_all_namespaces(),
        v1.list_node(),
    ]
    assert {item.metadata.resource_version for item in lists} == {api.resource_version}
    # the HTTP write path takes the next number of the same sequence
    created = v1.create_namespaced_pod("a", make_pod("q", "a"))
    assert int(created.metadata.resource_version) == versions[-1] + 1


def test_namespaces_and_network_policies_deserialize(
    api: ApiServerDouble, v1: Any, net: Any
) -> None:
    api.add_namespace(make_namespace("shop", labels={"team": "a"}))
    api.add_network_policy(
        make_network_policy(
            "allow-web",
            "shop",
            pod_selector={"matchLabels": {"app": "web"}},
            policy_types=["Ingress", "Egress"],
            ingress=[
                {
                    "from": [
                        {"namespaceSelector": {"matchLabels": {"team": "a"}}},
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                    ],
                    "ports": [{"protocol": "TCP", "port": "http", "endPort": None}],
                }
            ],
        )
    )
    (namespace,) = v1.list_namespace().items
    assert namespace.metadata.labels == {"team": "a", "kubernetes.io/metadata.name": "shop"}
    assert namespace.status.phase == "Active"
    (policy,) = net.list_network_policy_for_all_namespaces().items
    assert policy.metadata.namespace == "shop"
    assert policy.spec.pod_selector.match_labels == {"app": "web"}
    assert policy.spec.ingress[0]._from[1].ip_block._except == ["10.1.0.0/16"]
    assert policy.spec.ingress[0].ports[0].port == "http"
    assert [p.metadata.name for p in net.list_namespaced_network_policy("shop").items] == [
        "allow-web"
    ]
    assert net.read_namespaced_network_policy("allow-web", "shop").metadata.name == "allow-web"
    assert net.list_namespaced_network_policy("other").items == []
    assert v1.list_namespace(label_selector="kubernetes.io/metadata.name=shop").items


def test_watch_pods_add_modify_delete_and_bookmark(api: ApiServerDouble, v1: Any) -> None:
    api.add_namespace(make_namespace("a"))
    api.add_pod(make_pod("old", "a"))
    rv = v1.list_pod_for_all_namespaces().metadata.resource_version

    done = threading.Event()

    def mutate() -> None:
        wait_until(lambda: api.active_watches_of("pods") == 1, what="the pod watch to open")
        api.add_pod(make_pod("new", "a", labels={"app": "x"}))
        api.add_node(make_node("n0"))  # another kind: not on this stream
        api.add_network_policy(make_network_policy("np", "a"))
        api.patch_pod("a", "old", {"metadata": {"labels": {"app": "y"}}})
        api.delete_pod("a", "new")
        done.set()
        api.send_bookmarks()

    threading.Thread(target=mutate, daemon=True).start()
    seen: list[tuple[str, str]] = []
    final = None
    w: Any = Watch()
    for event in w.stream(
        v1.list_pod_for_all_namespaces,
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    ):
        if event["type"] == "BOOKMARK":  # periodic ones (every 0.3 s) may come any time
            raw = event["raw_object"]
            assert raw["kind"] == "Pod" and raw["apiVersion"] == "v1"
            if done.is_set() and raw["metadata"]["resourceVersion"] == api.resource_version:
                final = raw["metadata"]["resourceVersion"]
                w.stop()
        else:
            assert isinstance(event["object"], client.V1Pod)
            pod: Any = event["object"]
            seen.append((event["type"], pod.metadata.name))
    assert seen == [("ADDED", "new"), ("MODIFIED", "old"), ("DELETED", "new")]
    # a bookmark carries the global version: the node and the policy moved it too
    assert final == api.resource_version == str(int(rv) + 5)


def test_watch_namespaced_network_policies(api: ApiServerDouble, net: Any) -> None:
    for ns in ("a", "b"):
        api.add_namespace(make_namespace(ns))
    api.add_network_policy(make_network_policy("first", "a"))
    api.add_network_policy(make_network_policy("other", "b"))
    # without a resourceVersion: ADDED for what exists, in this namespace only
    response = net.list_namespaced_network_policy(
        "a", watch=True, timeout_seconds=1, _preload_content=False
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in _lines(response)] == [
        ("ADDED", "first")
    ]
    rv = api.resource_version

    def mutate() -> None:
        wait_until(lambda: api.active_watches_of("networkpolicies") == 1)
        api.add_network_policy(make_network_policy("ignored", "b"))
        api.add_network_policy(make_network_policy("second", "a"))
        api.patch_network_policy("a", "first", {"spec": {"policyTypes": ["Egress"]}})
        api.delete_network_policy("a", "second")

    threading.Thread(target=mutate, daemon=True).start()
    seen: list[tuple[str, str, list[str]]] = []
    w: Any = Watch()
    for event in w.stream(
        net.list_namespaced_network_policy, "a", resource_version=rv, timeout_seconds=5
    ):
        assert isinstance(event["object"], client.V1NetworkPolicy)
        policy: Any = event["object"]
        seen.append((event["type"], policy.metadata.name, policy.spec.policy_types))
        if len(seen) == 3:
            w.stop()
    assert seen == [
        ("ADDED", "second", ["Ingress"]),
        ("MODIFIED", "first", ["Egress"]),
        ("DELETED", "second", ["Ingress"]),
    ]


def test_watch_namespaces(api: ApiServerDouble, v1: Any) -> None:
    api.add_namespace(make_namespace("a"))
    rv = api.resource_version
    response = v1.list_namespace(
        watch=True, resource_version=rv, timeout_seconds=5, _preload_content=False
    )
    api.patch_namespace("a", {"metadata": {"labels": {"team": "x"}}})
    api.add_namespace(make_namespace("b"))
    api.delete_namespace("b")
    events = _lines(response)
    got = [next(events) for _ in range(3)]
    response.close()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [
        ("MODIFIED", "a"),
        ("ADDED", "b"),
        ("DELETED", "b"),
    ]
    assert got[0]["object"]["metadata"]["labels"] == {
        "team": "x",
        "kubernetes.io/metadata.name": "a",
    }


def test_watch_from_expired_version_is_410_per_kind(api: ApiServerDouble, v1: Any) -> None:
    api.add_namespace(make_namespace("a"))
    api.add_pod(make_pod("p", "a"))
    api.add_node(make_node("n0"))
    old = api.resource_version
    api.touch("pods", "p", namespace="a")
    api.heartbeat("n0")
    api.expire_history(resources={"pods"})
    response = v1.list_pod_for_all_namespaces(
        watch=True, resource_version=old, timeout_seconds=5, _preload_content=False
    )
    (event,) = list(_lines(response))
    assert event["type"] == "ERROR" and event["object"]["code"] == 410
    assert event["object"]["reason"] == "Expired"
    with pytest.raises(client.ApiException) as caught:
        for _ in Watch().stream(v1.list_namespaced_pod, "a", resource_version=old):
            pass
    assert caught.value.status == 410
    # the nodes' history is their own: the same version still resumes there
    response = v1.list_node(
        watch=True, resource_version=old, timeout_seconds=1, _preload_content=False
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in _lines(response)] == [
        ("MODIFIED", "n0")
    ]


def test_history_is_trimmed_per_kind() -> None:
    with ApiServerDouble(history_size=5) as api:
        api.add_namespace(make_namespace("a"))
        api.add_pod(make_pod("p", "a"))
        api.add_node(make_node("n0"))
        start = api.resource_version
        for _ in range(12):
            api.touch("pods", "p", namespace="a")  # pods overflow their window
        api.heartbeat("n0")
        v1 = client.CoreV1Api(client.ApiClient(client.Configuration(host=api.url)))
        pods = v1.list_pod_for_all_namespaces(
            watch=True, resource_version=start, timeout_seconds=1, _preload_content=False
        )
        assert [e["type"] for e in _lines(pods)] == ["ERROR"]
        nodes = v1.list_node(
            watch=True, resource_version=start, timeout_seconds=1, _preload_content=False
        )
        assert [e["type"] for e in _lines(nodes)] == ["MODIFIED"]


def test_field_selector_spec_node_name(api: ApiServerDouble, v1: Any) -> None:
    _cluster(api)
    on_n1 = v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1")
    assert sorted((p.metadata.namespace, p.metadata.name) for p in on_n1.items) == [
        (ns, f"p{i}") for ns in ("alpha", "beta", "gamma") for i in (1, 3)
    ]
    paged = v1.list_namespaced_pod("beta", field_selector="spec.nodeName=n0", limit=2)
    assert [p.metadata.name for p in paged.items] == ["p0", "p2"]
    rest = v1.list_namespaced_pod(
        "beta", field_selector="spec.nodeName=n0", limit=2, _continue=paged.metadata._continue
    )
    assert [p.metadata.name for p in rest.items] == ["p4"] and not rest.metadata._continue
    assert (
        v1.list_pod_for_all_namespaces(
            field_selector="metadata.namespace=gamma,metadata.name=p2,spec.nodeName!=n1"
        )
        .items[0]
        .metadata.name
        == "p2"
    )

    # the agent's watch: its node's pods only, read as a raw stream
    rv = on_n1.metadata.resource_version
    response = v1.list_pod_for_all_namespaces(
        watch=True,
        field_selector="spec.nodeName=n1",
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=10,
        _preload_content=False,
    )
    api.add_pod(make_pod("pending", "alpha", labels={"app": "x"}))  # not scheduled yet
    api.add_pod(make_pod("elsewhere", "alpha", node="n0"))
    bound = make_pod("pending", "alpha", node="n1", ips=["10.244.1.99"], labels={"app": "x"})
    api.update_pod(bound)  # scheduled here: enters the selection
    api.patch_pod("alpha", "pending", {"metadata": {"labels": {"app": "y"}}})
    api.delete_pod("alpha", "pending")
    api.delete_pod("beta", "p1")
    api.send_bookmarks()
    final = api.resource_version
    got = []
    for event in _lines(response):
        if event["type"] != "BOOKMARK":
            got.append(event)
        elif event["object"]["metadata"]["resourceVersion"] == final:
            break  # caught up (periodic bookmarks, every 0.3 s, may come earlier)
    response.close()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [
        ("ADDED", "pending"),
        ("MODIFIED", "pending"),
        ("DELETED", "pending"),
        ("DELETED", "p1"),
    ]
    assert got[0]["object"]["status"]["podIP"] == "10.244.1.99"


def test_label_selector_transitions_in_watch(api: ApiServerDouble, v1: Any) -> None:
    api.add_namespace(make_namespace("a"))
    api.add_pod(make_pod("p", "a", labels={"app": "web"}))
    api.add_pod(make_pod("q", "a", labels={"app": "db", "tier": "x"}))
    api.add_pod(make_pod("r", "a", labels={"app": "cache"}))
    assert [
        p.metadata.name for p in v1.list_namespaced_pod("a", label_selector="app in (web,db)").items
    ] == ["p", "q"]
    assert [
        p.metadata.name
        for p in v1.list_namespaced_pod("a", label_selector="app notin (web, db),!tier").items
    ] == ["r"]
    rv = api.resource_version
    response = v1.list_namespaced_pod(
        "a",
        watch=True,
        label_selector="app=web",
        resource_version=rv,
        timeout_seconds=10,
        _preload_content=False,
    )
    before = api.get_pod("a", "p")
    assert before is not None
    api.patch_pod("a", "p", {"metadata": {"labels": {"app": "api"}}})  # leaves
    api.patch_pod("a", "r", {"metadata": {"labels": {"app": "web"}}})  # enters
    events = _lines(response)
    left, entered = next(events), next(events)
    response.close()
    assert left["type"] == "DELETED" and left["object"]["metadata"]["name"] == "p"
    # the last state it matched in, at the event's version
    assert left["object"]["metadata"]["labels"] == {"app": "web"}
    assert int(left["object"]["metadata"]["resourceVersion"]) == int(rv) + 1
    assert entered["type"] == "ADDED" and entered["object"]["metadata"]["name"] == "r"


def test_unknown_field_selector_is_400(api: ApiServerDouble, v1: Any, net: Any) -> None:
    with pytest.raises(client.ApiException) as caught:
        v1.list_pod_for_all_namespaces(field_selector="spec.bogus=x")
    assert caught.value.status == 400
    with pytest.raises(client.ApiException) as caught:
        net.list_network_policy_for_all_namespaces(field_selector="spec.nodeName=n1")
    assert caught.value.status == 400


def test_pod_crud_over_http(api: ApiServerDouble, v1: Any) -> None:
    with pytest.raises(client.ApiException) as caught:
        v1.create_namespaced_pod("a", make_pod("p", "a"))
    assert caught.value.status == 404  # no such namespace
    v1.create_namespace(make_namespace("a"))
    created = v1.create_namespaced_pod("a", make_pod("p", "a", labels={"app": "web"}))
    assert created.metadata.uid and created.status.phase == "Pending"
    with pytest.raises(client.ApiException) as caught:
        v1.create_namespaced_pod("a", make_pod("p", "a"))
    assert caught.value.status == 409
    with pytest.raises(client.ApiException) as caught:
        v1.create_namespaced_pod("a", make_pod("x", "b"))
    assert caught.value.status == 400
    v1.patch_namespaced_pod("p", "a", {"metadata": {"labels": {"tier": "1"}}})
    pod = v1.read_namespaced_pod("p", "a")
    assert pod.metadata.labels == {"app": "web", "tier": "1"}
    assert pod.metadata.uid == created.metadata.uid
    body = _raw(v1.read_namespaced_pod_status("p", "a", _preload_content=False))
    body["status"] = {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}]}
    v1.replace_namespaced_pod_status("p", "a", body)
    assert v1.read_namespaced_pod("p", "a").status.pod_ip == "10.0.0.5"
    with pytest.raises(client.ApiException) as caught:
        v1.replace_namespaced_pod("p", "a", body)  # stale resourceVersion
    assert caught.value.status == 409
    with pytest.raises(client.ApiException) as caught:
        v1.read_namespaced_pod("p", "other")
    assert caught.value.status == 404
    v1.delete_namespaced_pod("p", "a")
    assert api.get_pod("a", "p") is None
    assert api.resource_requests["pods", "create"] == 4
    assert api.resource_requests["namespaces", "create"] == 1


def test_namespace_delete_takes_its_objects(api: ApiServerDouble, v1: Any) -> None:
    _cluster(api, pods_per_namespace=2)
    api.add_network_policy(make_network_policy("np", "beta"))
    rv = api.resource_version
    response = v1.list_pod_for_all_namespaces(
        watch=True, resource_version=rv, timeout_seconds=10, _preload_content=False
    )
    v1.delete_namespace("beta")
    events = _lines(response)
    got = [next(events) for _ in range(2)]
    response.close()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [
        ("DELETED", "p0"),
        ("DELETED", "p1"),
    ]
    assert api.names("pods") == ["alpha/p0", "alpha/p1", "gamma/p0", "gamma/p1"]
    assert api.names("networkpolicies") == []
    assert api.names("namespaces") == ["alpha", "gamma"]


def test_set_objects_and_generic_api(api: ApiServerDouble) -> None:
    api.set_namespaces([make_namespace("a"), make_namespace("b")])
    api.set_pods([make_pod("p", "a"), make_pod("q", "b")])
    api.set_pods([make_pod("p", "a", labels={"v": "2"}), make_pod("r", "b")])
    assert api.names("pods") == ["a/p", "b/r"]
    assert api.names("pods", namespace="b") == ["r"]
    assert [o["metadata"]["name"] for o in api.objects("pods", namespace="a")] == ["p"]
    pod = api.get("pods", "p", namespace="a")
    assert pod is not None and pod["metadata"]["labels"] == {"v": "2"}
    rv = api.resource_version
    api.touch("namespaces", "a")
    assert int(api.resource_version) == int(rv) + 1
    api.set_network_policies([make_network_policy("np", "a")])
    api.set_namespaces([make_namespace("b")])  # a goes, with its pod and policy
    assert api.names("pods") == ["b/r"] and api.names("networkpolicies") == []


def test_discovery_serves_the_networking_group(api: ApiServerDouble, api_client: Any) -> None:
    dyn = DynamicClient(api_client)
    api.add_namespace(make_namespace("a"))
    api.add_network_policy(make_network_policy("np", "a"))
    policies = dyn.resources.get(api_version="networking.k8s.io/v1", kind="NetworkPolicy")
    assert policies.namespaced
    assert [p.metadata.name for p in policies.get(namespace="a").items] == ["np"]
    pods = dyn.resources.get(api_version="v1", kind="Pod")
    api.add_pod(make_pod("p", "a"))
    assert [p.metadata.name for p in pods.get().items] == ["p"]
    assert api.requests["discovery"] > 0


def test_faults_scoped_to_a_resource(api: ApiServerDouble, v1: Any) -> None:
    api.add_namespace(make_namespace("a"))
    api.add_node(make_node("n0"))
    api.fail_requests(1, status=503, verbs={"list"}, resources={"pods"})
    assert v1.list_node().items  # not a pods list: served
    with pytest.raises(client.ApiException) as caught:
        v1.list_pod_for_all_namespaces()
    assert caught.value.status == 503
    assert v1.list_pod_for_all_namespaces().items == []
    rv = api.resource_version
    pods = v1.list_pod_for_all_namespaces(
        watch=True, resource_version=rv, timeout_seconds=10, _preload_content=False
    )
    nodes = v1.list_node(
        watch=True, resource_version=rv, timeout_seconds=10, _preload_content=False
    )
    wait_until(lambda: api.active_watches == 2)
    assert api.gone_watches(resources={"pods"}) == 1
    (event,) = list(_lines(pods))
    assert event["type"] == "ERROR" and event["object"]["code"] == 410
    api.heartbeat("n0")  # the node stream lives on, its history too
    assert next(_lines(nodes))["type"] == "MODIFIED"
    nodes.close()
    assert api.resource_requests["pods", "watch"] == 1
    assert api.resource_requests["nodes", "list"] == 1


def test_hostile_answers_scoped_to_a_resource(api: ApiServerDouble, v1: Any) -> None:
    api.add_namespace(make_namespace("a"))
    api.add_node(make_node("n0"))
    hostile = Hostile(api)
    hostile.on("watch", watch_lines([b"not json"]), resource="pods", times=1)
    pods = v1.list_pod_for_all_namespaces(watch=True, timeout_seconds=1, _preload_content=False)
    assert pods.read() == b"not json\n"
    nodes = v1.list_node(watch=True, timeout_seconds=1, _preload_content=False)
    assert [e["type"] for e in _lines(nodes)] == ["ADDED"]
    assert hostile.served["watch"] == 1


def test_paths_that_do_not_exist(api: ApiServerDouble) -> None:
    def status(method: str, path: str) -> int:
        with socket.create_connection(("127.0.0.1", api.port)) as sock:
            sock.sendall(
                f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
                "Content-Length: 2\r\nConnection: close\r\n\r\n{}".encode()
            )
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        return int(reply.split(b" ", 2)[1])

    api.add_namespace(make_namespace("a"))
    assert status("GET", "/api/v1/pods/p") == 404  # a pod is only named in a namespace
    assert status("GET", "/apis/networking.k8s.io/v1/namespaces") == 404
    assert status("GET", "/apis/networking.k8s.io/v1/namespaces/a/pods") == 404
    assert status("GET", "/api/v1/namespaces/a/networkpolicies") == 404
    assert status("POST", "/api/v1/pods") == 405  # a create needs a namespace
    assert status("GET", "/apis/networking.k8s.io/v1/namespaces/a/networkpolicies/x/status") == 404
    assert status("GET", "/api/v1/nodes/x/bogus") == 404
    assert status("GET", "/api/v1/namespaces/a") == 200
    assert status("GET", "/api/v1/namespaces/a/status") == 200
    assert status("GET", "/apis/networking.k8s.io/v1") == 200
    # the legacy watch paths
    assert status("GET", "/api/v1/watch/namespaces/a/pods?timeoutSeconds=0.1") == 200
    assert (
        status("GET", "/apis/networking.k8s.io/v1/watch/networkpolicies?timeoutSeconds=0.1") == 200
    )
    assert status("GET", "/api/v1/watch/namespaces/a?timeoutSeconds=0.1") == 200
    assert api.resource_requests["namespaces", "watch"] == 1
    assert api.resource_requests["pods", "watch"] == 1
