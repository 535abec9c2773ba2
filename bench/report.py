"""The results table: one row per measured figure, with its reference and target."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from bench.common import Json

MB = 1024.0  # KiB per MiB


@attrs.frozen
class Verdict:
    item: str
    measure: str
    value: str
    reference: str = ""
    target: str = ""
    met: bool | None = None  # None: no target (context only)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _mb(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / MB:.1f} MB"


def _at(entries: Sequence[Json], key: str, n: int) -> Json | None:
    """The entry of ``entries`` whose ``key`` is ``n``, else the largest below it."""
    exact = [e for e in entries if e.get(key) == n]
    if exact:
        return exact[0]
    below = [e for e in entries if e.get(key, 0) <= n]
    return max(below, key=lambda e: e[key]) if below else None


def growth_exponent(points: Sequence[tuple[float, float]]) -> float | None:
    """The slope of log(cost) against log(N) by least squares: 1 is linear."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def scaling_points(results: Json) -> dict[str, list[tuple[float, float]]]:
    """(N, cost) series of items 1-3, for the scaling table and plot."""
    out: dict[str, list[tuple[float, float]]] = {}
    ri = (results.get("route_install") or {}).get("by_routes") or []
    for method in ("library", "ip -batch", "ip per route"):
        pts = [
            (e["routes"], e["median_seconds"][method])
            for e in ri
            if method in e.get("median_seconds", {})
        ]
        if pts:
            out[f"route install: {method}"] = sorted(pts)
    idle = (results.get("idle_reconcile") or {}).get("by_nodes") or []
    if idle:
        out["idle reconcile CPU"] = sorted((e["nodes"], e["cpu"]) for e in idle)
        changed = [(e["nodes"], e["change"]["cpu"]) for e in idle if "change" in e]
        if changed:
            out["reconcile after a change CPU"] = sorted(changed)
    daemons = list((results.get("daemon_scaling") or {}).get("by_nodes") or [])
    if results.get("daemon"):
        daemons.append(results["daemon"])
    conv = [(d["nodes"], d["convergence"]["p50"]) for d in daemons if "convergence" in d]
    if conv:
        out["convergence p50"] = sorted(conv)
    conv99 = [(d["nodes"], d["convergence"]["p99"]) for d in daemons if "convergence" in d]
    if conv99:
        out["convergence p99"] = sorted(conv99)
    sync = [(d["nodes"], d["sync_seconds"]) for d in daemons if "sync_seconds" in d]
    if sync:
        out["daemon initial sync"] = sorted(sync)
    return out


def verdicts(results: Json) -> Iterator[Verdict]:
    """Every row of the table."""
    # 1. route install
    ri = (results.get("route_install") or {}).get("by_routes") or []
    top = _at(ri, "routes", 10000)
    if top is not None:
        med = top["median_seconds"]
        ratio = top["ratio_vs_ip_batch"]
        n = top["routes"]
        yield Verdict(
            "1 route install",
            f"{n} routes, library",
            _ms(med["library"]),
            f"ip -batch {_ms(med['ip -batch'])}",
            "<= 1.5x ip -batch",
            ratio["library"] <= 1.5 if n >= 10000 else None,
        )
        yield Verdict("1 route install", "library / ip -batch", f"{ratio['library']:.2f}x")
        if "ip per route" in med:
            yield Verdict(
                "1 route install",
                f"{n} routes, ip route replace per route",
                f"{med['ip per route']:.1f} s",
                f"{ratio['ip per route']:.0f}x ip -batch",
                "(reference)",
            )
    # 2. idle reconcile
    idle = (results.get("idle_reconcile") or {}).get("by_nodes") or []
    at = _at(idle, "nodes", 5000)
    if at is not None:
        n = at["nodes"]
        yield Verdict(
            "2 idle reconcile",
            f"{n} nodes, CPU per reconcile",
            _ms(at["cpu"]),
            f"of which dump {_ms(at['split']['list_routes'])}, plan {_ms(at['split']['plan'])}",
            "< 500 ms",
            at["cpu"] < 0.5 if n >= 5000 else None,
        )
        yield Verdict(
            "2 idle reconcile",
            f"{n} nodes, netlink writes",
            f"{at['netlink_writes']}",
            f"kernel changes {at['kernel_route_changes']}",
            "0",
            at["netlink_writes"] == 0 and at["kernel_route_changes"] == 0,
        )
        if "change" in at:
            yield Verdict(
                "2 idle reconcile",
                f"{n} nodes, CPU of the reconcile after one node change"
                + (" (incremental)" if at["change"].get("incremental") else " (full)"),
                _ms(at["change"]["cpu"]),
                f"wall {_ms(at['change']['wall'])}, "
                f"{at['change']['writes_per_change']:.0f} route ops",
                "(context for 3)",
            )
    d: Json = results.get("daemon") or {}
    n = d.get("nodes", 0)
    full = n >= 5000
    # 3. convergence
    if "convergence" in d:
        c = d["convergence"]
        yield Verdict(
            "3 convergence",
            f"{n} nodes, p50 of {c['n']}",
            _ms(c["p50"]),
            f"min {_ms(c['min'])}",
        )
        if d.get("watch_delivery", {}).get("n"):
            w = d["watch_delivery"]
            yield Verdict(
                "3 convergence",
                "reference: event delivered to a bare watcher",
                f"p50 {_ms(w['p50'])}",
                f"p99 {_ms(w['p99'])}",
                "(floor)",
            )
        if d.get("reconciles_per_change"):
            yield Verdict(
                "3 convergence",
                "daemon reconciles per change, mean duration",
                f"{d['reconciles_per_change']:.2f}",
                f"{_ms(d['reconcile_mean_seconds'])} each",
            )
        yield Verdict(
            "3 convergence",
            f"{n} nodes, p99 of {c['n']}",
            _ms(c["p99"]),
            f"max {_ms(c['max'])}",
            "< 100 ms",
            c["p99"] < 0.1 if full else None,
        )
    # 4. storm
    if "storm" in d:
        s = d["storm"]
        yield Verdict(
            "4 heartbeat storm",
            f"{n} nodes, {s['rate']:.0f} ev/s for {s['seconds']:.0f} s, daemon CPU",
            f"{s['cpu_percent']:.1f}% of a core",
            f"idle {d.get('idle_cpu_percent', math.nan):.1f}%",
            "< 25%",
            s["cpu_percent"] < 25 if full else None,
        )
        cm_storm: Json = d.get("client_model") or {}
        if s.get("cpu_per_event"):
            ref = (
                f"client models {cm_storm['cpu_per_event'] * 1e6:.0f} µs"
                if cm_storm.get("cpu_per_event")
                else ""
            )
            yield Verdict(
                "4 heartbeat storm",
                "daemon CPU per heartbeat event",
                f"{s['cpu_per_event'] * 1e6:.0f} µs",
                ref,
            )
        yield Verdict(
            "4 heartbeat storm",
            "netlink writes",
            f"{s['netlink_writes']:.0f}",
            f"kernel changes {s['kernel_route_changes']}",
            "0",
            s["netlink_writes"] == 0 and s["kernel_route_changes"] == 0,
        )
        if s.get("rss_start_kb") and s.get("rss_end_kb"):
            grow = s["rss_end_kb"] - s["rss_start_kb"]
            yield Verdict(
                "4 heartbeat storm",
                "RSS start -> end",
                f"{_mb(s['rss_start_kb'])} -> {_mb(s['rss_end_kb'])}",
                f"max {_mb(s['rss_max_kb'])}",
                "flat (< 2 MB growth)",
                grow < 2 * MB,
            )
    # 5. memory
    if "rss_after_sync_kb" in d:
        cm: Json = d.get("client_model") or {}
        if d.get("rss_with_kubernetes_kb"):
            yield Verdict(
                "5 daemon memory",
                "no nodes: Python with the daemon's modules",
                _mb(d["rss_with_kubernetes_kb"]),
                f"{_mb(d['rss_with_kubernetes_kb'] - d['rss_daemon_modules_kb'])} of it "
                "the kubernetes client",
                "(baseline)",
            )
        yield Verdict(
            "5 daemon memory",
            f"{n} nodes, RSS after sync",
            _mb(d["rss_after_sync_kb"]),
            f"client models {_mb(cm.get('rss_after_sync_kb'))}" if cm else "",
            "< 90 MB",
            d["rss_after_sync_kb"] < 90 * MB if full else None,
        )
        if "rss_after_churn_kb" in d:
            ch = d.get("churn") or {}
            yield Verdict(
                "5 daemon memory",
                f"RSS after churn ({ch.get('heartbeats', 0)} heartbeats, "
                f"{ch.get('changes', 0)} changes)",
                _mb(d["rss_after_churn_kb"]),
                f"client models {_mb(cm.get('rss_after_churn_kb'))} ({cm.get('events', 0)} events)"
                if cm
                else "",
                "< 90 MB",
                d["rss_after_churn_kb"] < 90 * MB if full else None,
            )
        yield Verdict(
            "5 daemon memory",
            "peak RSS (VmHWM)",
            _mb(d["hwm_kb"]),
            f"client models {_mb(cm.get('hwm_kb'))}" if cm else "",
            "< 150 MB",
            d["hwm_kb"] < 150 * MB if full else None,
        )
    # 6. IPAM
    ipam: Json = results.get("ipam") or {}
    yield from _ipam_rows(ipam)
    # 7. scaling
    for name, pts in scaling_points(results).items():
        k = growth_exponent(pts)
        if k is None:
            continue
        linear = name.startswith(
            ("route install: library", "idle", "reconcile after", "convergence")
        )
        yield Verdict(
            "7 scaling",
            f"{name}, N {int(pts[0][0])}..{int(pts[-1][0])}",
            f"cost ~ N^{k:.2f}",
            "",
            "<= linear" if linear else "",
            (k <= 1.15) if linear and len(pts) >= 3 else None,
        )


def _ipam_rows(ipam: Json) -> Iterator[Verdict]:
    """Rows for item 6: ``bench/ipam_latency.py --json``'s cases, against the host-local
    of the same run."""
    yield from _ipam_cases(ipam, "console script run")


def _ipam_cases(ipam: Json, run: str) -> Iterator[Verdict]:
    cases: dict[str, Any] = ipam.get("results") or {}
    ref = cases.get("host-local")
    if not ref:
        return
    rounds = ipam.get("rounds", "?")
    yield Verdict(
        "6 IPAM ADD",
        f"{run}: host-local, median of {rounds}",
        f"{ref['median_ms']:.1f} ms",
        f"p90 {ref['p90_ms']:.1f} ms",
        "(reference)",
    )
    start = ipam.get("python_start")
    if start:
        yield Verdict(
            "6 IPAM ADD",
            "floor: start and exit the Python interpreter",
            f"{start['median_ms']:.1f} ms",
            f"{start['median_ms'] / ref['median_ms']:.1f}x host-local's ADD",
            "(floor)",
        )
    for label, row in cases.items():
        if label == "host-local":
            continue
        ratio = float(row["x_host_local"])
        if "floor" in label:
            yield Verdict(
                "6 IPAM ADD",
                f"kube-node {label}",
                f"{row['median_ms']:.1f} ms",
                f"{ratio:.1f}x host-local's ADD",
                "(floor)",
            )
            continue
        target = 3.0 if "hit" in label else 20.0
        yield Verdict(
            "6 IPAM ADD",
            f"kube-node {label}",
            f"{row['median_ms']:.1f} ms",
            f"{ratio:.1f}x host-local; p90 {row['p90_ms']:.1f} ms",
            f"<= {target:.0f}x host-local",
            ratio <= target,
        )


def format_table(results: Json) -> str:
    """The table as fixed-width text."""
    rows = [("item", "measure", "value", "reference", "target", "")]
    for v in verdicts(results):
        mark = {True: "met", False: "MISSED", None: ""}[v.met]
        rows.append((v.item, v.measure, v.value, v.reference, v.target, mark))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    errors = results.get("errors") or {}
    for key, message in errors.items():
        lines.append(f"ERROR in {key}: {message}")
    m = results.get("machine") or {}
    if m:
        lines.append(
            f"machine: {m.get('cpu')}, {m.get('cores')} cores, kernel {m.get('kernel')}, "
            f"Python {m.get('python')}; load at start {m.get('loadavg_at_start')}; "
            f"profile {results.get('profile')}"
        )
    return "\n".join(lines)


def markdown_table(results: Json) -> str:
    """The same table in Markdown, for ``docs/performance.md``."""
    out = ["| item | measure | value | reference | target | |", "|---|---|---|---|---|---|"]
    for v in verdicts(results):
        mark = {True: "met", False: "**missed**", None: ""}[v.met]
        out.append(f"| {v.item} | {v.measure} | {v.value} | {v.reference} | {v.target} | {mark} |")
    return "\n".join(out)


def machine_markdown(results: Json) -> str:
    """The machine and run, as a Markdown list."""
    m: Json = results.get("machine") or {}
    load = m.get("loadavg_at_start") or []
    return "\n".join(
        [
            f"- CPU: {m.get('cpu', '?')}, {m.get('cores', '?')} cores (shared), "
            f"{m.get('memory_gb', '?')} GB",
            f"- Linux {m.get('kernel', '?')}, Python {m.get('python', '?')}, "
            f"{m.get('iproute2', '?')}",
            f"- run: profile `{results.get('profile')}`, finished {results.get('finished')}, "
            f"{results.get('seconds', 0):.0f} s, commit {m.get('git', '?')} plus the working tree",
            "- load average at start: " + ", ".join(f"{x:.1f}" for x in load),
        ]
    )


def comparison_markdown(results: Json) -> str:
    """The comparison table: each figure next to its reference, as a ratio."""
    rows: list[str] = ["| what | xcluster-cni | reference | ratio |", "|---|---|---|---|"]
    ri = _at((results.get("route_install") or {}).get("by_routes") or [], "routes", 10000)
    if ri is not None:
        med = ri["median_seconds"]
        rows.append(
            f"| install {ri['routes']:,} routes | {_ms(med['library'])} | ip -batch "
            f"{_ms(med['ip -batch'])} | {ri['ratio_vs_ip_batch']['library']:.2f}x |"
        )
        if "ip per route" in med:
            rows.append(
                f"| install {ri['routes']:,} routes | {_ms(med['library'])} | one ip per "
                f"route {med['ip per route']:.1f} s | "
                f"{med['library'] / med['ip per route']:.4f}x |"
            )
    d: Json = results.get("daemon") or {}
    w = d.get("watch_delivery") or {}
    if d.get("convergence") and w.get("n"):
        c = d["convergence"]
        rows.append(
            f"| convergence p50, {d['nodes']:,} nodes | {_ms(c['p50'])} | event at a bare "
            f"watcher {_ms(w['p50'])} | +{_ms(c['p50'] - w['p50'])} |"
        )
    cm: Json = d.get("client_model") or {}
    s: Json = d.get("storm") or {}
    if s.get("cpu_per_event") and cm.get("cpu_per_event"):
        rows.append(
            f"| CPU per heartbeat event | {s['cpu_per_event'] * 1e6:.0f} µs | V1Node watcher "
            f"{cm['cpu_per_event'] * 1e6:.0f} µs | "
            f"{s['cpu_per_event'] / cm['cpu_per_event']:.2f}x |"
        )
    if d.get("rss_after_sync_kb") and cm.get("rss_after_sync_kb"):
        rows.append(
            f"| RSS after sync, {d['nodes']:,} nodes | {_mb(d['rss_after_sync_kb'])} | V1Node "
            f"watcher {_mb(cm['rss_after_sync_kb'])} | "
            f"{d['rss_after_sync_kb'] / cm['rss_after_sync_kb']:.2f}x |"
        )
    if d.get("hwm_kb") and cm.get("hwm_kb"):
        rows.append(
            f"| peak RSS | {_mb(d['hwm_kb'])} | V1Node watcher {_mb(cm['hwm_kb'])} | "
            f"{d['hwm_kb'] / cm['hwm_kb']:.2f}x |"
        )
    ipam: Json = results.get("ipam") or {}
    cases: dict[str, Any] = ipam.get("results") or {}
    ref: Json = cases.get("host-local") or {}
    for label, row in cases.items():
        if not ref or label == "host-local" or label.startswith(".venv") or "floor" in label:
            continue
        rows.append(
            f"| IPAM ADD, kube-node {label} | {row['median_ms']:.1f} ms | host-local "
            f"{ref['median_ms']:.1f} ms | {row['x_host_local']:.1f}x |"
        )
    return "\n".join(rows)


def update_docs(path: str, results: Json) -> None:
    """Replace the generated parts of ``docs/performance.md`` (between ``<!-- bench:NAME -->``
    and ``<!-- /bench:NAME -->``) with these results."""
    import re

    parts = {
        "machine": machine_markdown(results),
        "table": markdown_table(results),
        "comparison": comparison_markdown(results),
    }
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for name, body in parts.items():
        start, end = f"<!-- bench:{name} -->\n", f"<!-- /bench:{name} -->"
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
        replacement = f"{start}{body}\n{end}"
        text = pattern.sub(lambda _match: replacement, text)  # noqa: B023 (used at once)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
