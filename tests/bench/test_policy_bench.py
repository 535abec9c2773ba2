"""The NetworkPolicy benchmarks (``bench/policy_*.py``): the generated cluster, the parsing
and summaries, and one tiny run of each scenario against the real pieces (kernel, nft,
daemon), so that they cannot rot unnoticed. Not timed tests: nothing here asserts a
speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import policy_cluster as pc
from bench.policy_datapath import parse_sockperf, summarize
from xcluster_cni_lib.core.addresses import parse_address
from xcluster_cni_lib.core.policy import allowed
from xcluster_cni_lib.core.policynft import compile_node


def test_the_generated_cluster_is_valid_and_isolates_the_probes_as_documented() -> None:
    c = pc.cluster(pods_n=200, policies_n=40, nodes=5)
    view = c.view()
    assert not view.problems
    assert len(view.pods) == 200 and len(view.policies) == 40
    client, server, remote = (parse_address(p.ipv4) for p in pc.PROBES)
    for dst in (server, remote):
        assert allowed(view, client, dst, "TCP", pc.RR_PORT)
        assert allowed(view, client, dst, "TCP", 12050)
        assert not allowed(view, client, dst, "TCP", pc.DENIED_PORT)
        assert not allowed(view, client, dst, "ICMP", None)
        assert allowed(view, dst, client, "ICMP", None)  # ping runs from the servers
    state = compile_node(view, node=pc.node_name(0))
    assert {client, server} <= state.ingress and {client, server} <= state.egress
    assert pc.cluster(pods_n=200, policies_n=40, nodes=5) == c  # deterministic


def test_every_policy_shape_occurs() -> None:
    shapes = {p["metadata"]["name"].rsplit("-s", 1)[1] for p in pc.policies(20, probes=False)}
    assert shapes == {str(s) for s in range(10)}


SOCKPERF = """sockperf: [Total Run] RunTime=3.001 sec; SentMessages=52654; ReceivedMessages=52653
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=2.500 sec; SentMessages=31714; ReceivedMessages=31700
sockperf: \x1b[2;35m====> avg-latency=78.8 (std-dev=21.390)\x1b[0m
sockperf: ---> percentile 99.000 =   159.792
sockperf: ---> percentile 50.000 =    71.911
"""


def test_sockperf_output_gives_rate_and_percentiles() -> None:
    r = parse_sockperf(SOCKPERF)
    assert r["rate"] == pytest.approx(31700 / 2.5)
    assert (r["rtt_p50_us"], r["rtt_p99_us"]) == (71.911, 159.792)


def test_summaries_compare_each_condition_with_none() -> None:
    samples = {
        c: {
            p: {
                "rr": [100.0, 90.0],
                "rr_p50_us": [],
                "crr": [10.0],
                "ping": [20.0, 30.0],
                "ping_p50_us": [25.0],
            }
            for p in ("same_node",)
        }
        for c in ("none", "policy")
    }
    samples["policy"]["same_node"]["rr"] = [80.0, 76.0]
    out = summarize(samples)
    assert out["policy"]["same_node"]["vs_none"]["rr_rate"] == pytest.approx(78 / 95, abs=1e-3)
    assert "vs_none" not in out["none"]["same_node"]


@pytest.mark.root
def test_datapath_scenario_runs_and_the_tables_are_in_the_path() -> None:
    from bench.policy_datapath import run

    result = run(
        rounds=1,
        seconds=0.3,
        ping=5,
        pods_n=60,
        policies_n=20,
        nodes_n=4,
        conditions=("none", "policy"),
        use_sockperf=False,
    )
    assert result["checks_ok"] == 4  # the denied port: refused without, dropped with policy
    assert result["ttl_seen_by_ping"]["policy"]["same_node"] == [63]  # redirected: routed
    assert result["ttl_seen_by_ping"]["none"]["same_node"] == [64]  # bridged
    assert result["results"]["policy"]["cross_node"]["rr_per_s"]["median"] > 0
    json.dumps(result)


@pytest.mark.root
def test_sync_scenario_runs_the_real_daemon_and_sees_every_change(tmp_path: Path) -> None:
    from bench.policy_sync import measure

    result = measure(
        pods=60,
        policies=20,
        nodes=3,
        changes=4,
        starts=1,
        served=1,
        timeout=20,
        log_dir=str(tmp_path),
    )
    assert result["missed"] == 0
    assert result["changes"]["n"] == 4 and result["pod_start"]["n"] == 1
    assert all(s["elements_changed"] > 0 for s in result["samples"])
    served = result["served_add"]
    assert served["policed"]["n"] == 1 and served["not_enforced_at_answer"] == 0


@pytest.mark.root
def test_memory_scenario_measures_both_settings(tmp_path: Path) -> None:
    from bench.policy_memory import measure

    result = measure(pods=60, policies=20, nodes=3, repeat=1, log_dir=str(tmp_path))
    assert [r["policy"] for r in result["runs"]] == [False, True]
    assert result["rss_on_kb"] > 0 and result["rss_off_kb"] > 0
    assert result["runs"][1]["policy_metrics"]['xcluster_policy_objects{kind="pods"}'] == 60
