"""PNG plots of a results dict (matplotlib, the ``bench`` extra; Agg backend, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import Json
from bench.report import scaling_points

MB = 1024.0


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_all(results: Json, where: Path) -> list[Path]:
    """Draw every plot the results allow; returns the files written."""
    where.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for draw in (scaling, route_install, convergence, daemon_timeline, memory, ipam):
        path = draw(results, where)
        if path is not None:
            out.append(path)
    return out


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def scaling(results: Json, where: Path) -> Path | None:
    """Item 7: cost against N for route install, idle reconcile and convergence."""
    pts = scaling_points(results)
    if not pts:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    ax = axes[0]
    for name, series in pts.items():
        if name.startswith("route install"):
            xs, ys = zip(*series, strict=True)
            ax.plot(xs, [y * 1000 for y in ys], marker="o", label=name.split(": ")[1])
    ax.set(title="1 route install", xlabel="routes", ylabel="ms", xscale="log", yscale="log")
    ax.legend()
    ax = axes[1]
    if "idle reconcile CPU" in pts:
        xs, ys = zip(*pts["idle reconcile CPU"], strict=True)
        ax.plot(xs, [y * 1000 for y in ys], marker="o", label="CPU per idle reconcile")
    if "reconcile after a change CPU" in pts:
        xs, ys = zip(*pts["reconcile after a change CPU"], strict=True)
        ax.plot(xs, [y * 1000 for y in ys], marker="s", label="CPU after one node change")
        ax.axhline(500, color="red", linestyle=":", label="target (5,000 nodes)")
    ax.set(title="2 idle reconcile", xlabel="nodes", ylabel="ms CPU")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax = axes[2]
    for name in ("convergence p50", "convergence p99"):
        if name in pts:
            xs, ys = zip(*pts[name], strict=True)
            ax.plot(xs, [y * 1000 for y in ys], marker="o", label=name.split()[1])
    ax.axhline(100, color="red", linestyle=":", label="p99 target")
    ax.set(title="3 convergence", xlabel="nodes in the cache", ylabel="ms (log)", yscale="log")
    ax.legend()
    ax = axes[3]
    daemons = list((results.get("daemon_scaling") or {}).get("by_nodes") or [])
    if results.get("daemon"):
        daemons.append(results["daemon"])
    daemons = sorted((d for d in daemons if "rss_after_sync_kb" in d), key=lambda d: d["nodes"])
    if daemons:
        sizes = [d["nodes"] for d in daemons]
        ax.plot(sizes, [d["rss_after_sync_kb"] / MB for d in daemons], marker="o", label="RSS")
        ax.plot(sizes, [d["hwm_kb"] / MB for d in daemons], marker="s", label="peak (VmHWM)")
        base = daemons[0].get("rss_with_kubernetes_kb")
        if base:
            ax.axhline(base / MB, color="grey", linestyle="--", label="no nodes (imports)")
        ax.axhline(90, color="orange", linestyle=":", label="steady target")
    ax.set(title="5 daemon memory", xlabel="nodes", ylabel="MB")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return _save(fig, where / "bench-scaling.png")


def route_install(results: Json, where: Path) -> Path | None:
    """Item 1: per-route install cost of each method at each N."""
    entries = (results.get("route_install") or {}).get("by_routes") or []
    if not entries:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    methods = [
        m
        for m in ("library", "ip -batch", "ip per route")
        if m in entries[0].get("median_seconds", {})
    ]
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        xs = [j + i * width for j in range(len(entries))]
        ys = [e["median_seconds"][method] / e["routes"] * 1e6 for e in entries]
        bars = ax.bar(xs, ys, width, label=method)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(entries))])
    ax.set_xticklabels([f"{e['routes']:,}" for e in entries])
    ax.set(
        title="1 route install: µs per route (median)",
        xlabel="routes (half IPv4, half IPv6)",
        ylabel="µs per route (log)",
        yscale="log",
    )
    ax.legend()
    return _save(fig, where / "bench-route-install.png")


def convergence(results: Json, where: Path) -> Path | None:
    """Item 3: the distribution of change-to-kernel latencies."""
    d = results.get("daemon") or {}
    samples = d.get("convergence_samples")
    if not samples:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    series = [(f"daemon: change -> route in the kernel ({len(samples)})", samples)]
    delivery = d.get("watch_delivery_samples")
    if delivery:
        series.append(("reference: change -> event at a bare watcher", delivery))
    for label, values in series:
        xs = sorted(max(v, 1e-5) * 1000 for v in values)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=label)
    ax.axvline(100, color="red", linestyle=":", label="p99 target")
    ax.set(
        title=f"3 convergence with {d['nodes']:,} nodes in the cache",
        xlabel="ms (log)",
        ylabel="fraction of changes",
        xscale="log",
    )
    ax.legend(loc="lower right")
    return _save(fig, where / "bench-convergence.png")


def daemon_timeline(results: Json, where: Path) -> Path | None:
    """Items 4-5: daemon CPU and RSS over its whole run, phases marked."""
    d = results.get("daemon") or {}
    series = d.get("series")
    if not series or len(series) < 3:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ts = [s[0] for s in series]
    rss = [s[2] / MB for s in series]
    cpu = [
        100 * (series[i][1] - series[i - 1][1]) / max(1e-9, series[i][0] - series[i - 1][0])
        for i in range(1, len(series))
    ]
    ax1.plot(ts[1:], cpu, linewidth=0.8)
    ax1.axhline(25, color="red", linestyle=":", label="storm target 25%")
    ax1.set(ylabel="daemon CPU % of a core", title=f"4-5 the daemon with {d['nodes']:,} nodes")
    ax1.set_ylim(0, 110)
    ax1.legend(loc="upper right")
    ax2.plot(ts, rss, color="tab:green")
    ax2.axhline(90, color="orange", linestyle=":", label="steady target 90 MB")
    ax2.axhline(150, color="red", linestyle=":", label="peak target 150 MB")
    ax2.set(ylabel="RSS (MB)", xlabel="seconds since start")
    ax2.set_ylim(bottom=0)
    ax2.legend(loc="lower right")
    marks = d.get("marks") or {}
    for ax in (ax1, ax2):
        for i, (name, label) in enumerate(
            (
                ("synced", "synced"),
                ("convergence", "changes"),
                ("storm", "storm"),
                ("storm_done", "" if "churn" in marks else "storm end"),
                ("churn", "churn"),
                ("churn_done", "end"),
            )
        ):
            if name in marks:
                ax.axvline(marks[name], color="grey", linewidth=0.6)
                if ax is ax1 and label:
                    ax.text(marks[name], 108 - 9 * (i % 2), f" {label}", fontsize=7, va="top")
    return _save(fig, where / "bench-daemon-timeline.png")


def memory(results: Json, where: Path) -> Path | None:
    """Item 5: the daemon's RSS against the client-model watcher's."""
    d = results.get("daemon") or {}
    if "rss_after_sync_kb" not in d:
        return None
    cm = d.get("client_model") or {}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = ["after sync", "after churn", "peak (VmHWM)"]
    keys = ["rss_after_sync_kb", "rss_after_churn_kb", "hwm_kb"]
    width = 0.38
    xs = list(range(len(labels)))
    ours = [d.get(k, 0) / MB for k in keys]
    bars = ax.bar([x - width / 2 for x in xs], ours, width, label="xcluster-cni daemon")
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
    if cm:
        theirs = [cm.get(k, 0) / MB for k in keys]
        bars = ax.bar(
            [x + width / 2 for x in xs], theirs, width, label="kubernetes client, V1Node kept"
        )
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        if cm.get("rss_baseline_kb"):
            ax.axhline(
                cm["rss_baseline_kb"] / MB,
                color="grey",
                linestyle="--",
                label="python + kubernetes import",
            )
    ax.axhline(90, color="orange", linestyle=":", label="steady target")
    ax.axhline(150, color="red", linestyle=":", label="peak target")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels)
    ax.set(title=f"5 memory with {d['nodes']:,} realistic nodes", ylabel="RSS (MB)")
    top = max([*ours, *(cm.get(k, 0) / MB for k in keys), 150.0])
    ax.set_ylim(0, top * 1.45)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    return _save(fig, where / "bench-memory.png")


def ipam(results: Json, where: Path) -> Path | None:
    """Item 6: median and p90 ADD latency of each case against host-local."""
    ipam_results: Json = results.get("ipam") or {}
    cases: dict[str, Any] = dict(ipam_results.get("results") or {})
    if not cases:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 4.5))
    names = list(cases)
    xs = list(range(len(names)))
    width = 0.38
    med = [cases[k]["median_ms"] for k in names]
    p90 = [cases[k]["p90_ms"] for k in names]
    bars = ax.bar([x - width / 2 for x in xs], med, width, label="median")
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.bar([x + width / 2 for x in xs], p90, width, label="p90", alpha=0.6)
    ref = cases.get("host-local", {}).get("median_ms")
    if ref:
        ax.axhline(3 * ref, color="orange", linestyle=":", label="hit target (3x host-local)")
        ax.axhline(20 * ref, color="red", linestyle=":", label="miss target (20x)")
    ax.set_xticks(xs)
    ax.set_xticklabels([n.replace(": ", ":\n") for n in names], fontsize=8)
    rounds = (results.get("ipam") or {}).get("rounds", "?")
    ax.set(title=f"6 IPAM ADD latency ({rounds} interleaved ADDs per case)", ylabel="ms")
    ax.legend(fontsize=8)
    return _save(fig, where / "bench-ipam.png")
