"""Render a campaign report (the JSON ``run.py --report`` writes) as the Markdown tables
of docs/reliability.md: ``.venv/bin/python tests/soak/run.py --render report.json``."""

from __future__ import annotations

from typing import Any


def _row(cells: list[object]) -> str:
    return "| " + " | ".join("" if c is None else str(c) for c in cells) + " |"


def render(report: dict[str, Any]) -> str:
    out: list[str] = []
    o = report["options"]
    out.append(
        f"Seed {report['seed']}; {o['nodes']} nodes, {o['real']} node namespaces, "
        f"{report['campaign_seconds']:g} s of campaign ({report['phases']} phases, "
        f"{report['churn_seconds']:g} s of node changes), IPAM bursts of {o['burst']}."
    )
    overlay = report.get("overlay") or {}
    if overlay.get("started_at_s") is not None:
        out.append(
            f"Overlay phase (OVERLAY=vxlan, MASQUERADE=true) from {overlay['started_at_s']:g} s "
            f"on: {overlay['phases']} phases."
        )
    policy = report.get("policy") or {}
    if policy.get("started_at_s") is not None and policy.get("on"):
        enforced = policy.get("enforced_s") or {}
        out.append(
            f"Policy phase (NETWORK_POLICY=true) from {policy['started_at_s']:g} s on: "
            f"{policy['phases']} phases, {policy.get('policy_changes', 0)} policy changes, "
            f"{policy.get('matrices', 0)} matrices of {policy.get('probes', 0)} probes "
            f"({policy.get('probes_allowed', 0)} allowed, {policy.get('probes_denied', 0)} "
            f"denied), {policy.get('window_probes', 0)} probes in fault windows "
            f"({policy.get('restart_rounds', 0)} restart rounds); tables as wanted after "
            f"p50 {enforced.get('p50')} s, max {enforced.get('max')} s."
        )
    out.append("")
    out.append("| fault | injected | recovery p50 (s) | p99 (s) | max (s) |")
    out.append("|---|---|---|---|---|")
    rec = report["recovery_s"]
    for kind in sorted(set(report["faults"]) | {"initial_sync", "final"}):
        r = rec.get(kind, {})
        out.append(
            _row([kind, report["faults"].get(kind, "-"), r.get("p50"), r.get("p99"), r.get("max")])
        )
    out.append("")
    out.append("| events | count |")
    out.append("|---|---|")
    for kind, n in sorted(report["events"].items(), key=lambda kv: -kv[1]):
        out.append(_row([kind, n]))
    out.append(_row(["**total**", report["events_total"]]))
    out.append("")
    out.append(
        f"Events per second over the whole campaign: {report['events_per_second_overall']}; "
        f"node changes per second while churning: {report['changes_per_second_while_churning']}; "
        f"rate shortfalls: {report['rate_shortfalls']}."
    )
    out.append("")
    out.append("| invariant check | times checked |")
    out.append("|---|---|")
    for kind, n in sorted(report["checks"].items()):
        out.append(_row([kind, n]))
    out.append("")
    out.append("| violation | count |")
    out.append("|---|---|")
    for kind, n in sorted(report["violations_by_kind"].items()):
        out.append(_row([kind, n]))
    out.append(_row(["**total**", report["violations_total"]]))
    out.append("")
    out.append("| IPAM | value |")
    out.append("|---|---|")
    for key, value in report["ipam"].items():
        out.append(_row([key, value]))
    out.append("")
    out.append("| daemon | starts | RSS early (MB) | RSS late (MB) | growth (MB) | max (MB) |")
    out.append("|---|---|---|---|---|---|")
    for key, r in report["daemon_rss"].items():
        out.append(
            _row(
                [
                    key,
                    r.get("starts"),
                    r.get("early_mb"),
                    r.get("late_mb"),
                    r.get("growth_mb"),
                    r.get("max_mb"),
                ]
            )
        )
    out.append("")
    out.append("| log | lines | tracebacks | error messages |")
    out.append("|---|---|---|---|")
    for key, r in report["logs"].items():
        errors = r.get("error_messages", r.get("errors"))
        out.append(_row([key, r.get("lines"), r.get("tracebacks"), errors or "none"]))
    return "\n".join(out)
