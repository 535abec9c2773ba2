"""The benchmark harness (``bench/``): its pure helpers, and one tiny run of each scenario
against the real pieces, so that ``make bench`` cannot rot unnoticed. Not timed tests:
nothing here asserts a speed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.common import (
    _parse_monitor_line,
    covering_network,
    percentile,
    run_in_netns,
    summary,
)
from bench.report import format_table, growth_exponent, update_docs, verdicts


def test_percentile_interpolates_and_summary_names_the_usual_figures() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))
    s = summary([float(x) for x in range(1, 101)])
    assert (s["n"], s["min"], s["max"]) == (100, 1.0, 100.0)
    assert s["p99"] == pytest.approx(99.01)


def test_monitor_lines_become_canonical_routes_with_their_time() -> None:
    added = _parse_monitor_line(
        "[2026-11-28T21:37:27.780277] fd10:0::/64 via fd00::0002 dev d0 proto 202 metric 1024"
    )
    assert added is not None
    stamp, deleted, dst, gateway, proto = added
    assert (deleted, dst, gateway, proto) == (False, "fd10::/64", "fd00::2", "202")
    assert stamp % 1 == pytest.approx(0.780277, abs=1e-6)
    gone = _parse_monitor_line(
        "[2026-11-28T21:37:27.786649] Deleted 10.9.0.0/24 via 10.0.0.3 dev d0 proto 202 "
    )
    assert gone is not None and gone[1:4] == (True, "10.9.0.0/24", "10.0.0.3")
    assert (
        _parse_monitor_line("[2026-11-28T21:37:29.046850] local fe80::1 dev d1 table local") is None
    )


def test_covering_network_spans_every_address_of_one_family() -> None:
    assert covering_network(["192.168.0.1", "192.168.19.137", "fd00::1"], 4) == "192.168.0.0/19"
    assert covering_network(["192.168.0.1"], 6) is None


def test_growth_exponent_is_one_for_linear_cost() -> None:
    k = growth_exponent([(1000, 0.01), (2000, 0.02), (4000, 0.04)])
    assert k == pytest.approx(1.0)
    assert growth_exponent([(1000, 0.01)]) is None


def test_table_marks_targets_met_and_missed() -> None:
    results = {
        "idle_reconcile": {
            "by_nodes": [
                {
                    "nodes": 5000,
                    "cpu": 0.7,
                    "netlink_writes": 0,
                    "kernel_route_changes": 0,
                    "split": {"list_routes": 0.5, "plan": 0.1},
                }
            ]
        }
    }
    rows = {v.measure: v.met for v in verdicts(results)}
    assert rows["5000 nodes, CPU per reconcile"] is False
    assert rows["5000 nodes, netlink writes"] is True
    assert "MISSED" in format_table(results)


def test_update_docs_replaces_only_the_generated_parts(tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    page.write_text("intro\n<!-- bench:table -->\nold\n<!-- /bench:table -->\nhand-written\n")
    update_docs(str(page), {"route_install": {"by_routes": []}})
    text = page.read_text()
    assert "old" not in text and "| item | measure |" in text
    assert text.startswith("intro\n") and text.endswith("hand-written\n")


@pytest.mark.root
def test_idle_reconcile_scenario_runs_and_counts_no_writes() -> None:
    result = run_in_netns("idle_reconcile", {"nodes": 40, "repeats": 2}, timeout=120)
    assert result["routes"] == 78  # 2 per node, the own node excluded
    assert result["netlink_writes"] == 0 and result["kernel_route_changes"] == 0
    assert result["change"]["writes_per_change"] > 0


@pytest.mark.root
def test_daemon_scenario_runs_the_real_daemon_through_every_phase(tmp_path: Path) -> None:
    params = {
        "nodes": 30,
        "changes": 3,
        "storm_seconds": 1,
        "rate": 100,
        "churn_events": 150,
        "churn_rate": 500,
        "idle_seconds": 0.5,
        "log_dir": str(tmp_path),
    }
    result = run_in_netns("daemon_bench", params, timeout=180)
    assert result["routes"] == 58
    assert result["convergence"]["n"] == 3 and result["convergence"]["max"] < 10
    assert result["storm"]["netlink_writes"] == 0
    assert result["rss_after_sync_kb"] > 0 and result["hwm_kb"] >= result["rss_after_sync_kb"]
    json.dumps(result)  # what run.py writes
