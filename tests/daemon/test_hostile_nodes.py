"""Hostile node data against the real daemon in a network namespace, fed by the API-server
double (issue 12, findings 1, 2, 9, 12): a node cannot take another node's route, claim
the host's own subnet or a range outside ``CLUSTER_CIDRS``, point a route at this host,
or flood the log; contested CIDRs are logged once as errors and counted."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.apiserver import ApiServerDouble
from tests.daemon.harness import (
    expected,
    http_get,
    metric,
    running_daemon,
    wait_for,
    wait_routes,
)
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.testing.netns import run_in
from xcluster_cni_lib.testing.nodes import make_node

pytestmark = pytest.mark.root


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return dict(getattr(record, "fields", {}))


def test_a_wider_cidr_does_not_take_another_nodes_route(
    ns: str, api: ApiServerDouble, kubeconfig: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = {
        "KUBECONFIG": kubeconfig,
        "NODE_NAME": "n0",
        "HTTP_ADDRESS": "127.0.0.1:0",
        "RESYNC_INTERVAL": "300ms",  # full reconciles keep coming: they must not log again
    }
    with running_daemon(ns, **settings) as daemon:
        wait_routes(ns, 202, expected({1, 2, 3}))

        evil = make_node(
            "a-evil",
            index=66,
            images=2,
            pod_cidrs=["10.244.2.0/23", "fd00:66::/64"],
        )
        api.add_node(evil)
        # the /23 covers n2's and n3's CIDRs: their IPv4 routes go, a-evil gets no IPv4
        # route either; their IPv6 routes and n1 stay
        lost = {("10.244.2.0/24", "192.168.0.3"), ("10.244.3.0/24", "192.168.0.4")}
        want = (expected({1, 2, 3}) - lost) | {("fd00:66::/64", "fd00::c0a8:43")}
        wait_routes(ns, 202, want)

        def contested() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.msg == "contested pod CIDR: no route"]

        wait_for(lambda: len(contested()) == 3, what="three contested-CIDR errors")
        lines = contested()
        assert all(r.levelno == logging.ERROR for r in lines)
        by_node = {_fields(r)["node"]: _fields(r) for r in lines}
        assert by_node["a-evil"]["cidr"] == "10.244.2.0/23"
        assert "node n2's pod CIDR 10.244.2.0/24" in by_node["a-evil"]["reason"]
        assert "node n3's pod CIDR 10.244.3.0/24" in by_node["a-evil"]["reason"]
        assert by_node["n2"]["cidr"] == "10.244.2.0/24"
        assert "node a-evil's pod CIDR 10.244.2.0/23" in by_node["n2"]["reason"]
        text = http_get(daemon, "/metrics")[1]
        assert metric(text, "xcluster_contested_cidrs") == 3
        [warning] = daemon.warnings()
        assert "3 contested pod CIDRs" in warning and "a-evil" in warning
        assert http_get(daemon, "/readyz") == (200, f"ok\nwarning: {warning}\n")  # ready

        # once per change: more reconciles (another node changes, resyncs) log nothing new
        api.add_node(make_node("n4", index=4, images=2))
        wait_routes(ns, 202, want | expected({4}))
        syncs = daemon.reconciler.syncs
        wait_for(lambda: daemon.reconciler.syncs >= syncs + 3, what="three more reconciles")
        assert len(contested()) == 3

        # the claim goes away: n2's route is back, and that is logged too
        api.delete_node("a-evil")
        wait_routes(ns, 202, expected({1, 2, 3, 4}))
        wait_for(
            lambda: any(r.msg == "pod CIDR no longer contested" for r in caplog.records),
            what="the end of the contest logged",
        )
        wait_for(lambda: daemon.warnings() == [], what="no warning")
        assert metric(http_get(daemon, "/metrics")[1], "xcluster_contested_cidrs") == 0


def test_hostile_ranges_and_gateways_get_no_route(
    ns: str, api: ApiServerDouble, kubeconfig: str
) -> None:
    hostile = [
        # the node LAN of this host (gw0 holds 192.168.0.0/16)
        make_node("lan", index=10, images=2, pod_cidrs=["192.168.50.0/24"]),
        # outside CLUSTER_CIDRS
        make_node("outside", index=11, images=2, pod_cidrs=["10.99.0.0/24", "fd00:99::/64"]),
        # the deny-list: metadata, multicast, loopback, half of IPv6
        make_node("meta", index=12, images=2, pod_cidrs=["169.254.169.254/32", "::/1"]),
        make_node("mcast", index=13, images=2, pod_cidrs=["224.0.0.0/24", "ff02::/64"]),
        # a gateway that is this host's own address (gw0's), or the LAN's broadcast
        make_node(
            "me-too",
            index=14,
            images=2,
            internal_ips=["192.168.255.254", "fd00::ffff:fffe"],
        ),
        make_node("bcast", index=15, images=2, internal_ips=["192.168.255.255"]),
    ]
    for node in hostile:
        api.add_node(node)
    outside = {("10.99.0.0/24", "192.168.0.12"), ("fd00:99::/64", "fd00::c0a8:c")}
    with running_daemon(ns, KUBECONFIG=kubeconfig, NODE_NAME="n0") as daemon:
        # no allow-list: only the deny-list, the host's subnets and addresses refuse
        wait_routes(ns, 202, expected({1, 2, 3}) | outside)
        state = daemon.reconciler._state
        assert state is not None
        reasons = {(p.node, p.value): p.reason for p in state.problems()}
        assert "connected to this host" in reasons[("lan", "192.168.50.0/24")]
        assert "192.168.255.254 is an address of this host" in reasons[("me-too", "10.244.14.0/24")]
        assert (
            "fd00::ffff:fffe is an address of this host"
            in reasons[("me-too", "fd00:10:244:e::/64")]
        )
        assert "broadcast address of 192.168.0.0/16" in reasons[("bcast", "10.244.15.0/24")]
        # the deny-list refuses already when parsing: no usable pod CIDR at all
        skipped = {p.node for p in state.problems() if "no pod CIDR" in p.reason}
        assert {"meta", "mcast"} <= skipped

    settings = {
        "KUBECONFIG": kubeconfig,
        "NODE_NAME": "n0",
        "CLUSTER_CIDRS": "10.244.0.0/16, fd00:10:244::/48",
        "MIN_POD_PREFIX_V4": "16",
    }
    with running_daemon(ns, **settings):
        # with the allow-list the routes outside it go
        wait_routes(ns, 202, expected({1, 2, 3}))


def test_a_256_kib_annotation_value_makes_small_log_lines(
    ns: str, api: ApiServerDouble, kubeconfig: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    key = "b.example.com/pod-cidrs"
    huge = "10.200.9.0/24," + "7" * (256 * 1024)
    api.set_nodes(
        make_node(f"n{i}", index=i, images=2, annotations={key: f"10.200.{i}.0/24"})
        for i in range(3)
    )
    api.add_node(make_node("big", index=9, images=2, annotations={key: huge}))
    with running_daemon(ns, KUBECONFIG=kubeconfig, NODE_NAME="n0", CIDR_ANNOTATION=key):
        wait_routes(ns, 202, {("10.200.1.0/24", "192.168.0.2"), ("10.200.2.0/24", "192.168.0.3")})
        wait_for(
            lambda: any(_fields(r).get("node") == "big" for r in caplog.records),
            what="the big node's log line",
        )
    lines = [jsonlog.render(r) for r in caplog.records]
    about = [line for line in lines if '"big"' in line or "big" in line]
    assert about and max(len(line) for line in lines) < 2048
    assert any(f"({len(huge)} characters)" in line for line in about)


def test_host_subnets_are_read_again_at_the_resync(
    ns: str, api: ApiServerDouble, kubeconfig: str
) -> None:
    settings = {"KUBECONFIG": kubeconfig, "NODE_NAME": "n0", "RESYNC_INTERVAL": "300ms"}
    later = make_node("later", index=77, images=2, pod_cidrs=["10.77.0.0/24"])
    api.add_node(later)
    with running_daemon(ns, **settings) as daemon:
        routed = expected({1, 2, 3}) | {("10.77.0.0/24", "192.168.0.78")}
        wait_routes(ns, 202, routed)
        # the host gets an address in that CIDR: within a resync the route goes
        run_in(ns, ["ip", "addr", "add", "10.77.0.1/24", "dev", "gw0"])
        wait_routes(ns, 202, expected({1, 2, 3}), timeout=5)
        state = daemon.reconciler._state
        assert state is not None
        assert any("10.77.0.0/24 overlaps 10.77.0.0/24" in p.reason for p in state.problems())
        # and it comes back when the address goes
        run_in(ns, ["ip", "addr", "del", "10.77.0.1/24", "dev", "gw0"])
        wait_routes(ns, 202, routed, timeout=5)
