"""The daemon end to end: the real kernel in a throwaway namespace, the API-server double
over real HTTP, the official client. Each daemon runs in a thread of the test process
(its netlink sockets live in the namespace; its HTTP client talks to the double on
loopback)."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import pytest

from tests.apiserver import ApiServerDouble
from tests.daemon.harness import (
    expected,
    http_get,
    metric,
    routes,
    running_daemon,
    wait_for,
    wait_routes,
    with_address,
)
from xcluster_cni_lib.sources.kube import load_api_client
from xcluster_cni_lib.sources.watching import KubeNodeSource
from xcluster_cni_lib.sync.reconciler import SyncResult
from xcluster_cni_lib.testing.netns import add_netns, del_netns, run_in, unique_name
from xcluster_cni_lib.testing.nodes import default_internal_ips, default_pod_cidrs, make_node

pytestmark = pytest.mark.root

LATENCIES: dict[str, float] = {}


def fast_source(kubeconfig: str, **kw: Any) -> KubeNodeSource:
    """A Kube source with short backoff, so fault tests stay short."""
    return KubeNodeSource(
        load_api_client(kubeconfig, timeout=5), backoff_base=0.05, backoff_max=0.5, **kw
    )


def timed(step: str, api_call: Any, ns: str, want: set[tuple[str, str]]) -> None:
    """Make one API change and wait for the kernel to follow; records the latency of an
    isolated change (paced past the 100 ms coalescing window of the previous one)."""
    time.sleep(0.15)
    t0 = time.monotonic()
    api_call()
    wait_routes(ns, 202, want, timeout=3)
    LATENCIES[step] = time.monotonic() - t0


def test_routes_follow_node_changes_in_both_families(
    ns: str, api: ApiServerDouble, kubeconfig: str
) -> None:
    with running_daemon(ns, KUBECONFIG=kubeconfig, NODE_NAME="n0") as daemon:
        wait_routes(ns, 202, expected({1, 2, 3}))  # n0 is this node: no route to itself

        want = expected({1, 2, 3, 4})
        timed("node added", lambda: api.add_node(make_node("n4", index=4, images=2)), ns, want)

        moved = with_address(make_node("n2", index=2, images=2), "192.168.100.2", "fd00::100:2")
        want = expected({1, 3, 4}) | {
            ("10.244.2.0/24", "192.168.100.2"),
            ("fd00:10:244:2::/64", "fd00::100:2"),
        }
        timed("address changed", lambda: api.update_node(moved), ns, want)

        cidrs = ["10.250.3.0/24", "fd00:250:3::/64"]
        patch = {"spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}}
        want = (want - expected({3})) | {
            ("10.250.3.0/24", "192.168.0.4"),
            ("fd00:250:3::/64", "fd00::c0a8:4"),
        }
        timed("CIDR changed", lambda: api.patch_node("n3", patch), ns, want)

        want = want - expected({1})
        timed("node deleted", lambda: api.delete_node("n1"), ns, want)

        # Heartbeats change nothing routing uses: no reconcile, no netlink call.
        wait_for(lambda: not daemon.reconciler.pending, what="idle reconciler")
        time.sleep(0.3)  # let the monitor's echo of our own last change settle
        syncs = daemon.reconciler.syncs
        seen = daemon.cache.unchanged_events
        for _ in range(20):
            api.heartbeat("n2")
        wait_for(lambda: daemon.cache.unchanged_events >= seen + 20, what="heartbeats seen")
        assert daemon.reconciler.syncs == syncs
        assert not daemon.reconciler.pending


def test_annotations_and_two_daemons_never_touch_each_others_routes(
    ns: str, api: ApiServerDouble, kubeconfig: str
) -> None:
    def annotated(i: int, cidr4: str) -> dict[str, Any]:
        return make_node(
            f"n{i}",
            index=i,
            images=2,
            annotations={
                "b.example.com/pod-cidrs": f"{cidr4},fd00:200:{i}::/64",
                "b.example.com/addresses": f"172.20.0.{i + 1},fd00::ac14:{i + 1}",
            },
        )

    api.set_nodes(annotated(i, f"10.200.{i}.0/24") for i in range(4))
    run_in(ns, ["ip", "route", "add", "10.123.0.0/24", "via", "192.168.0.9", "proto", "99"])
    run_in(ns, ["ip", "route", "add", "10.124.0.0/24", "via", "192.168.0.9"])
    # A stale route of B's protocol: B prunes it, A leaves it alone.
    run_in(ns, ["ip", "-6", "route", "add", "fd00:123::/64", "via", "fd00::9", "proto", "203"])
    hand = {("10.123.0.0/24", "192.168.0.9")}

    def b_routes(indexes: set[int], override: dict[int, str] | None = None) -> set[tuple[str, str]]:
        out = set()
        for i in indexes:
            cidr4 = (override or {}).get(i, f"10.200.{i}.0/24")
            out |= {(cidr4, f"172.20.0.{i + 1}"), (f"fd00:200:{i}::/64", f"fd00::ac14:{i + 1}")}
        return out

    b_settings = {
        "PROTOCOL": "203",
        "CIDR_ANNOTATION": "b.example.com/pod-cidrs",
        "ADDRESS_ANNOTATION": "b.example.com/addresses",
    }
    with (
        running_daemon(ns, KUBECONFIG=kubeconfig, NODE_NAME="n0", PROTOCOL="202"),
        running_daemon(ns, KUBECONFIG=kubeconfig, NODE_NAME="n0", **b_settings),
    ):
        wait_routes(ns, 202, expected({1, 2, 3}))
        wait_routes(ns, 203, b_routes({1, 2, 3}))
        api.update_node(annotated(2, "10.201.2.0/24"))  # only B's annotation changed
        wait_routes(ns, 203, b_routes({1, 2, 3}, {2: "10.201.2.0/24"}))
        api.delete_node("n3")
        wait_routes(ns, 202, expected({1, 2}))
        wait_routes(ns, 203, b_routes({1, 2}, {2: "10.201.2.0/24"}))
        assert routes(ns, 99) == hand
        assert ("10.124.0.0/24", "192.168.0.9") in routes(ns, "boot")
    # Stopping both leaves every route in place.
    assert routes(ns, 202) == expected({1, 2})
    assert routes(ns, 99) == hand


def test_a_route_deleted_or_changed_by_hand_comes_back_within_a_second(
    ns: str, api: ApiServerDouble, kubeconfig: str
) -> None:
    settings = {"KUBECONFIG": kubeconfig, "NODE_NAME": "n0", "HTTP_ADDRESS": "127.0.0.1:0"}
    with running_daemon(ns, **settings) as daemon:
        want = expected({1, 2, 3})
        wait_routes(ns, 202, want)
        run_in(ns, ["ip", "route", "del", "10.244.1.0/24", "proto", "202"])
        LATENCIES["restored after delete"] = wait_routes(ns, 202, want, timeout=1.0)
        changed = ["fd00:10:244:2::/64", "via", "fd00::99", "proto", "202"]
        run_in(ns, ["ip", "-6", "route", "replace", *changed])
        LATENCIES["restored after change"] = wait_routes(ns, 202, want, timeout=1.0)
        wait_for(
            lambda: metric(http_get(daemon, "/metrics")[1], "xcluster_routes_restored_total") == 2
        )
        # a node's CIDR changes: its route moves, which is not a restore
        rec = daemon.reconciler
        wait_for(lambda: not rec.pending, what="idle reconciler")
        seen: list[SyncResult | None] = []
        rec.on_iteration = seen.append
        v6 = default_pod_cidrs(3)[1]
        api.update_node(make_node("n3", index=3, images=2, pod_cidrs=("10.244.33.0/24", v6)))
        moved = {r for r in want if not r[0].startswith("10.244.3.")}
        moved.add(("10.244.33.0/24", default_internal_ips(3)[0]))
        wait_routes(ns, 202, moved)
        wait_for(lambda: any(r is not None and r.plan for r in seen), what="the reconcile")
        work = [r for r in seen if r is not None and r.plan]
        assert [(r.added, r.deleted, r.restored) for r in work] == [(1, 1, 0)]
        assert metric(http_get(daemon, "/metrics")[1], "xcluster_routes_restored_total") == 2


def test_changes_between_resyncs_are_incremental_and_our_echoes_free(
    ns: str, api: ApiServerDouble, kubeconfig: str
) -> None:
    with running_daemon(ns, KUBECONFIG=kubeconfig, NODE_NAME="n0") as daemon:
        wait_routes(ns, 202, expected({1, 2, 3}))
        rec = daemon.reconciler
        wait_for(lambda: not rec.pending, what="idle reconciler")
        seen: list[SyncResult | None] = []
        rec.on_iteration = seen.append
        api.add_node(make_node("n4", index=4, images=2))
        wait_routes(ns, 202, expected({1, 2, 3, 4}))
        run_in(ns, ["ip", "route", "del", "10.244.2.0/24", "proto", "202"])
        wait_routes(ns, 202, expected({1, 2, 3, 4}), timeout=1.0)
        time.sleep(0.3)  # the monitor's report of our own writes: no reconcile
        assert None not in seen
        work = [r for r in seen if r is not None and r.plan]
        assert [(r.full, r.added, r.restored) for r in work] == [(False, 2, 0), (False, 1, 1)]
        # besides, only full reconciles with nothing to do (a late IPv6 link-local
        # address makes the tracked view unknown), never one for our own writes' events
        assert all(r.full for r in seen if r is not None and not r.plan), seen


def _pods_come_and_go(ns: str, count: int) -> None:
    """``count`` pods start and stop on the node as the ptp plugin wires them: a veth
    whose host side gets an IPv6 link-local address (after DAD), a /32 gateway address
    and a host route to the pod; then the pod's namespace is deleted, taking the veth,
    its addresses and routes along."""
    pods = [unique_name("pod") for _ in range(count)]
    veths = [unique_name("vp") for _ in range(count)]
    try:
        for i, (pod, veth) in enumerate(zip(pods, veths, strict=True)):
            add_netns(pod)
            run_in(ns, ["ip", "link", "add", veth, "type", "veth", "peer", "eth0", "netns", pod])
            run_in(ns, ["ip", "link", "set", veth, "up"])
            run_in(pod, ["ip", "link", "set", "eth0", "up"])
            run_in(ns, ["ip", "addr", "add", "10.244.0.1/32", "dev", veth])
            run_in(ns, ["ip", "route", "add", f"10.244.0.{10 + i}/32", "dev", veth])

        def link_local_ready(veth: str) -> bool:
            text = run_in(ns, ["ip", "-6", "-j", "addr", "show", "dev", veth])
            infos = [a for link in json.loads(text or "[]") for a in link.get("addr_info", [])]
            return any(a.get("scope") == "link" and not a.get("tentative") for a in infos)

        wait_for(lambda: all(link_local_ready(v) for v in veths), what="pod link-local addresses")
    finally:
        for pod in pods:
            del_netns(pod)
    wait_for(
        lambda: not any(v in run_in(ns, ["ip", "-o", "link", "show"]) for v in veths),
        what="pod veths gone",
    )


def test_pods_coming_and_going_wake_no_reconcile_while_real_changes_do(
    ns: str, api: ApiServerDouble, kubeconfig: str
) -> None:
    """Only kernel changes that can change our routes wake the reconciler: a pod's veth
    (its link-local and /32 addresses, its fe80::/64 and host routes) is not one; our
    route deleted by hand, or an address removed from the node interface, are."""
    with running_daemon(ns, KUBECONFIG=kubeconfig, NODE_NAME="n0") as daemon:
        assert daemon.monitor is daemon.table.track()  # type: ignore[attr-defined]
        want = expected({1, 2, 3})
        wait_routes(ns, 202, want)
        rec = daemon.reconciler
        wait_for(lambda: not rec.pending, what="idle reconciler")
        syncs = rec.syncs
        _pods_come_and_go(ns, 3)
        # a real change after the pods: its reconcile is the only one
        run_in(ns, ["ip", "route", "del", "10.244.1.0/24", "proto", "202"])
        wait_routes(ns, 202, want, timeout=1.0)
        wait_for(lambda: rec.syncs > syncs and not rec.pending, what="reconcile of the deletion")
        assert rec.syncs == syncs + 1, "pod veths woke the reconciler"

        # the node interface loses an address: IPv4 may have dropped routes silently,
        # so the reconciler must look (a full reconcile, which finds the routes in place)
        syncs = rec.syncs
        run_in(ns, ["ip", "addr", "del", "172.20.255.254/16", "dev", "gw0"])
        wait_for(lambda: rec.syncs > syncs, what="reconcile after the address removal")
        assert rec.last_result is not None and rec.last_result.full
        wait_routes(ns, 202, want)


def test_a_route_of_another_protocol_is_a_reported_conflict_never_touched(
    ns: str, api: ApiServerDouble, kubeconfig: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    run_in(ns, ["ip", "route", "add", "10.244.1.0/24", "via", "192.168.0.77", "proto", "99"])
    settings = {"KUBECONFIG": kubeconfig, "NODE_NAME": "n0", "HTTP_ADDRESS": "127.0.0.1:0"}
    with running_daemon(ns, **settings) as daemon:
        wait_routes(ns, 202, expected({1, 2, 3}) - {("10.244.1.0/24", "192.168.0.2")})
        wait_for(
            lambda: metric(http_get(daemon, "/metrics")[1], "xcluster_route_conflicts_total") >= 2,
            what="conflict retried",
        )
        assert routes(ns, 99) == {("10.244.1.0/24", "192.168.0.77")}
        lines = [r for r in caplog.records if "conflict" in r.getMessage()]
        assert lines and lines[0].fields["dst"] == "10.244.1.0/24"  # type: ignore[attr-defined]
        run_in(ns, ["ip", "route", "del", "10.244.1.0/24", "proto", "99"])
        wait_routes(ns, 202, expected({1, 2, 3}), timeout=3)


def test_api_outage_keeps_routes_and_converges_after(
    ns: str, api: ApiServerDouble, kubeconfig: str
) -> None:
    settings = {"NODE_NAME": "n0", "HTTP_ADDRESS": "127.0.0.1:0"}
    with running_daemon(ns, fast_source(kubeconfig), **settings) as daemon:
        wait_routes(ns, 202, expected({1, 2, 3}))
        wait_for(lambda: http_get(daemon, "/readyz")[0] == 200, what="ready")
        api.stop()
        wait_for(lambda: http_get(daemon, "/readyz")[0] == 503, what="not ready")
        assert "node source unhealthy" in http_get(daemon, "/readyz")[1]
        assert http_get(daemon, "/healthz")[0] == 200
        api.delete_node("n2")
        api.add_node(make_node("n5", index=5, images=2))
        # Down: nothing is flushed, and a route removed meanwhile comes back all the same.
        run_in(ns, ["ip", "route", "del", "10.244.1.0/24", "proto", "202"])
        wait_routes(ns, 202, expected({1, 2, 3}), timeout=1.0)
        api.start()
        wait_routes(ns, 202, expected({1, 3, 5}), timeout=5)
        wait_for(lambda: http_get(daemon, "/readyz")[0] == 200, what="ready again")


def test_410_gone_relists_and_a_silent_stream_reconnects(
    ns: str, api: ApiServerDouble, kubeconfig: str
) -> None:
    source = fast_source(kubeconfig, idle_timeout=1.5)
    settings = {"NODE_NAME": "n0", "HTTP_ADDRESS": "127.0.0.1:0"}
    with running_daemon(ns, source, **settings) as daemon:
        wait_routes(ns, 202, expected({1, 2, 3}))
        api.gone_watches()  # 410 on the stream and on resuming from its RV
        api.add_node(make_node("n4", index=4, images=2))
        wait_routes(ns, 202, expected({1, 2, 3, 4}))
        wait_for(lambda: source.relists >= 1, what="a re-list")

        restarts = source.restarts
        api.stall_watches()  # open but silent: no events, no bookmarks
        api.delete_node("n4")
        wait_routes(ns, 202, expected({1, 2, 3}), timeout=5)
        assert source.restarts > restarts
        text = http_get(daemon, "/metrics")[1]
        assert metric(text, "xcluster_watch_relists_total") >= 1
        assert metric(text, "xcluster_watch_restarts_total") >= 1


def test_nodes_deleted_while_the_daemon_was_down_lose_their_routes_at_start(
    ns: str, api: ApiServerDouble, kubeconfig: str
) -> None:
    with running_daemon(ns, KUBECONFIG=kubeconfig, NODE_NAME="n0"):
        wait_routes(ns, 202, expected({1, 2, 3}))
        t0 = time.monotonic()
    LATENCIES["stop (in-process, API source)"] = time.monotonic() - t0
    assert time.monotonic() - t0 < 2.0
    assert routes(ns, 202) == expected({1, 2, 3})  # stopping left them
    api.delete_node("n2")
    api.delete_node("n3")
    with running_daemon(ns, KUBECONFIG=kubeconfig, NODE_NAME="n0"):
        wait_routes(ns, 202, expected({1}))


def test_a_malformed_annotation_skips_only_that_node(
    ns: str, api: ApiServerDouble, kubeconfig: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = "b.example.com/pod-cidrs"
    api.set_nodes(
        make_node(f"n{i}", index=i, images=2, annotations={key: f"10.200.{i}.0/24"})
        for i in range(4)
    )
    api.patch_node("n2", {"metadata": {"annotations": {key: "10.200.2.0/33"}}})
    settings = {"CIDR_ANNOTATION": key, "NODE_NAME": "n0", "HTTP_ADDRESS": "127.0.0.1:0"}
    with running_daemon(ns, KUBECONFIG=kubeconfig, **settings) as daemon:
        wait_routes(ns, 202, {("10.200.1.0/24", "192.168.0.2"), ("10.200.3.0/24", "192.168.0.4")})
        skipped = [r for r in caplog.records if r.msg == "node skipped"]
        assert [r.fields["node"] for r in skipped] == ["n2"]  # type: ignore[attr-defined]
        assert skipped[0].fields["value"] == "10.200.2.0/33"  # type: ignore[attr-defined]
        text = http_get(daemon, "/metrics")[1]
        assert metric(text, 'xcluster_nodes_skipped{reason="invalid_annotation"}') == 1
        api.patch_node("n2", {"metadata": {"annotations": {key: "10.200.2.0/24"}}})
        wait_routes(
            ns,
            202,
            {(f"10.200.{i}.0/24", f"192.168.0.{i + 1}") for i in (1, 2, 3)},
        )


def test_nodes_file_mode_converges_on_edits(ns: str, tmp_path: Any) -> None:
    import json

    path = os.path.join(tmp_path, "nodes.json")

    def write(indexes: list[int]) -> None:
        doc = {
            "kind": "NodeList",
            "items": [make_node(f"n{i}", index=i, images=1) for i in indexes],
        }
        with open(path + ".tmp", "w") as f:
            json.dump(doc, f)
        os.replace(path + ".tmp", path)

    write([0, 1, 2])
    with running_daemon(ns, NODES_FILE=path, NODE_NAME="n0"):
        wait_routes(ns, 202, expected({1, 2}))
        write([0, 2, 3])
        wait_routes(ns, 202, expected({2, 3}), timeout=5)


def test_readiness_and_metrics_tell_the_truth(
    ns: str, api: ApiServerDouble, kubeconfig: str
) -> None:
    api.fail_requests(10_000, 500, verbs={"list"})
    settings = {"NODE_NAME": "n0", "HTTP_ADDRESS": "127.0.0.1:0"}
    with running_daemon(ns, fast_source(kubeconfig), **settings) as daemon:
        wait_for(lambda: api.list_requests >= 2, what="failing lists")
        code, body = http_get(daemon, "/readyz")
        assert code == 503 and "node list not synced yet" in body
        assert http_get(daemon, "/healthz")[0] == 200
        assert routes(ns, 202) == set()

        api.clear_failures()
        wait_routes(ns, 202, expected({1, 2, 3}))
        wait_for(lambda: http_get(daemon, "/readyz")[0] == 200, what="ready")
        text = http_get(daemon, "/metrics")[1]
        assert metric(text, "xcluster_routes_desired") == 6
        assert metric(text, "xcluster_routes_installed") == 6
        assert metric(text, "xcluster_nodes") == 4
        assert metric(text, "xcluster_ready") == 1
        assert metric(text, 'xcluster_syncs_total{result="ok"}') >= 1
        assert metric(text, "xcluster_sync_duration_seconds_count") >= 1
        assert metric(text, 'xcluster_route_operations_total{op="add"}') == 6

        api.stop()
        wait_for(lambda: http_get(daemon, "/readyz")[0] == 503, what="not ready")
        assert metric(http_get(daemon, "/metrics")[1], "xcluster_ready") == 0
        assert metric(http_get(daemon, "/metrics")[1], "xcluster_source_healthy") == 0
        assert http_get(daemon, "/nope")[0] == 404


def test_zz_report_latencies() -> None:
    """Prints the convergence latencies measured above (run with -s to see them)."""
    for step, seconds in LATENCIES.items():
        print(f"convergence {step}: {seconds * 1000:.1f} ms")
