"""The daemon (routes in a throwaway namespace, its source talking to the API-server double
over real HTTP) against hostile API answers: it stays up, keeps its routes, and its
``/readyz`` says why it is not ready (issue 12, findings 6 and 7)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.apiserver import ApiServerDouble
from tests.apiserver.hostile import Hostile, event, hang, watch_lines
from tests.daemon.harness import (
    add_gateways,
    expected,
    http_get,
    metric,
    routes,
    running_daemon,
    wait_for,
    wait_routes,
)
from xcluster_cni_lib.sources.kube import load_api_client
from xcluster_cni_lib.sources.watching import KubeNodeSource
from xcluster_cni_lib.testing.nodes import make_node

pytestmark = pytest.mark.root

SETTINGS = {"NODE_NAME": "n0", "HTTP_ADDRESS": "127.0.0.1:0"}


@pytest.fixture
def ns(netns: str) -> str:
    add_gateways(netns)
    return netns


@pytest.fixture
def api() -> Iterator[ApiServerDouble]:
    with ApiServerDouble(bookmark_interval=0.3) as double:
        double.set_nodes(make_node(f"n{i}", index=i, images=2) for i in range(4))
        yield double


def _source(api: ApiServerDouble, tmp_path: Any, **kw: Any) -> KubeNodeSource:
    client = load_api_client(api.write_kubeconfig(tmp_path / "kubeconfig"), timeout=5)
    return KubeNodeSource(client, backoff_base=0.05, backoff_max=0.5, **kw)


def _ready(daemon: Any) -> bool:
    return http_get(daemon, "/readyz")[0] == 200


def test_malformed_events_neither_stop_the_daemon_nor_touch_its_routes(
    ns: str, api: ApiServerDouble, tmp_path: Any
) -> None:
    # before: the first `[1,2]` ended the source thread and the daemon exited 1
    hostile = Hostile(api)
    with running_daemon(ns, _source(api, tmp_path), **SETTINGS) as daemon:
        wait_routes(ns, 202, expected({1, 2, 3}))
        wait_for(lambda: _ready(daemon), what="ready")
        bad = [
            b"[1,2]",
            event("ADDED", "str"),
            event("MODIFIED", {"metadata": "x"}),
            event("DELETED", {"metadata": {}}),
            b"{not json",
        ]
        hostile.on("watch", watch_lines(bad), times=1)
        api.cut_watches()
        wait_for(lambda: hostile.served["watch"] == 1 and api.active_watches == 1)
        api.add_node(make_node("n4", index=4, images=2))
        wait_routes(ns, 202, expected({1, 2, 3, 4}))
        assert not daemon.stop_event.is_set() and daemon.exit_code == 0
        assert daemon.healthz() == []
        _, text = http_get(daemon, "/metrics")
        assert metric(text, "xcluster_watch_malformed_events_total") == len(bad)
        wait_for(lambda: _ready(daemon), what="ready again")


def test_hanging_list_makes_readyz_fail_with_the_reason(
    ns: str, api: ApiServerDouble, tmp_path: Any
) -> None:
    # before: /readyz stayed 200 for 60 s x the client's retries (76 s measured)
    hostile = Hostile(api)
    source = _source(api, tmp_path, request_timeout=1.5)
    with running_daemon(ns, source, **SETTINGS) as daemon:
        wait_routes(ns, 202, expected({1, 2, 3}))
        wait_for(lambda: _ready(daemon), what="ready")
        hostile.on("list", hang())
        api.gone_watches()  # the re-list hangs
        wait_for(lambda: not _ready(daemon), timeout=4, what="not ready")
        status, body = http_get(daemon, "/readyz")
        assert status == 503 and "node source unhealthy: list failed" in body, body
        assert "did not answer within 1.5 s" in body
        assert routes(ns, 202) == expected({1, 2, 3})  # nothing removed meanwhile
        hostile.clear()
        hostile.release()
        wait_for(lambda: _ready(daemon), timeout=5, what="ready again")


def test_list_410_loop_makes_readyz_fail(ns: str, api: ApiServerDouble, tmp_path: Any) -> None:
    # before: 410 after 410 was re-listed forever with /readyz at 200
    with running_daemon(ns, _source(api, tmp_path), **SETTINGS) as daemon:
        wait_routes(ns, 202, expected({1, 2, 3}))
        wait_for(lambda: _ready(daemon), what="ready")
        api.fail_requests(10_000, status=410, verbs={"list"})
        api.gone_watches()
        wait_for(lambda: not _ready(daemon), timeout=5, what="not ready")
        body = http_get(daemon, "/readyz")[1]
        assert "410 Gone" in body, body
        assert routes(ns, 202) == expected({1, 2, 3})
        api.clear_failures()
        wait_for(lambda: _ready(daemon), timeout=5, what="ready again")


@pytest.mark.parametrize("scenario", ["huge_list_page", "huge_watch_line", "huge_error_body"])
def test_daemon_process_memory_stays_under_the_limit(scenario: str) -> None:
    # the `xcluster-cni daemon` process, 4 answers of 100 MB each (bench/hostile_api.py);
    # before: peak RSS 336 MB (page), 362 MB (line), 565 MB (error body); limit 256 Mi
    from bench.common import run_in_netns

    params = {"scenario": scenario, "size_mb": 100, "rounds": 4, "seconds": 40}
    result = run_in_netns("hostile_api", params, timeout=100)
    assert result["alive"], result["log_tail"]
    assert result["served"] >= 4
    assert result["vmhwm_mb"] < 200, result
    assert result["readyz"] == 503
