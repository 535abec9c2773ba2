"""Run every benchmark of xcluster-cni, print the table, write the results and the plots.

    make bench                      # everything (6-11 minutes on 2 cores)
    make bench BENCH_ARGS=--quick   # the short run, under 2 minutes (also: make bench-quick)
    .venv/bin/python bench/run.py --only route,idle --quick

Results go to ``bench/results/<UTC time>-<profile>.json`` and ``bench/results/latest.json``
(the table also as Markdown in ``bench/results/latest.md``); plots to
``docs/img/`` (full run) or ``bench/results/img/`` (``--quick``, so the committed plots
only change on a full run), or ``--plots DIR``. ``--replot FILE`` redraws table and plots
from a results file without measuring. Needs root (network namespaces) and iproute2.
The method is described in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, RESULTS, Json, progress, run_in_netns
from bench.report import format_table, markdown_table, update_docs

# What each profile runs. N values are node counts (routes = 2 x (N - 1)) or, for the
# route install, route counts.
PROFILES: dict[str, Json] = {
    "full": {
        "route_install": {"routes": [1000, 2000, 5000, 10000], "repeat": 5, "per_process": 300},
        "idle": {"nodes": [1000, 2000, 5000, 10000], "repeats": 5},
        "daemon": {
            "nodes": 5000,
            "changes": 200,
            "storm_seconds": 60,
            "rate": 500,
            "churn_events": 60000,  # 5,000 nodes x 12 status reports (one per 5 min) = 1 h
            "client_model": True,
        },
        "daemon_scaling": {"nodes": [1000, 2000, 10000], "changes": 60},
        "ipam": {"adds": 200},  # per case, interleaved
    },
    "quick": {
        "route_install": {"routes": [1000, 5000, 10000], "repeat": 3, "per_process": 100},
        "idle": {"nodes": [1000, 2000, 5000], "repeats": 3},
        "daemon": {
            "nodes": 2000,
            "changes": 30,
            "storm_seconds": 8,
            "rate": 500,
            "churn_events": 0,
            "client_model": True,
        },
        "daemon_scaling": {"nodes": [], "changes": 30},
        "ipam": {"adds": 10},
    },
}

ALL = ("route", "idle", "daemon", "scaling", "ipam")


def machine() -> Json:
    """Where the numbers were taken."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if "model name" in ln), "")
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration):
        pass
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "iproute2": subprocess.run(["ip", "-V"], capture_output=True, text=True).stdout.strip(),
        "loadavg_at_start": os.getloadavg(),
        "git": rev,
    }


# -- the benchmarks ------------------------------------------------------------------------


def bench_route_install(cfg: Json) -> Json:
    from bench.route_install import measure

    out = []
    for n in cfg["routes"]:
        progress(f"route install: {n} routes")
        out.append(measure(n, repeat=cfg["repeat"], per_process=cfg["per_process"]))
    return {"by_routes": out}


def bench_idle(cfg: Json) -> Json:
    out = []
    for n in cfg["nodes"]:
        progress(f"idle reconcile: {n} nodes")
        out.append(
            run_in_netns("idle_reconcile", {"nodes": n, "repeats": cfg["repeats"]}, timeout=900)
        )
    return {"by_nodes": out}


def bench_daemon(cfg: Json) -> Json:
    progress(f"daemon: {cfg['nodes']} nodes, convergence, storm, memory")
    params = {**cfg, "log_dir": str(RESULTS)}
    return run_in_netns("daemon_bench", params, timeout=1800)


def bench_daemon_scaling(cfg: Json) -> Json:
    out = []
    for n in cfg["nodes"]:
        progress(f"daemon scaling: {n} nodes")
        params = {"nodes": n, "changes": cfg["changes"], "log_dir": str(RESULTS)}
        res = run_in_netns("daemon_bench", params, timeout=1800)
        res.pop("series", None)
        out.append(res)
    return {"by_nodes": out}


def bench_ipam(cfg: Json) -> Json:
    """``bench/ipam_latency.py`` (the IPAM plugin's own benchmark), run as it is."""
    progress(f"IPAM ADD latency: {cfg['adds']} interleaved ADDs per case")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "ipam_latency.py"),
            "--rounds",
            str(cfg["adds"]),
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ipam_latency.py failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result: Json = json.loads(proc.stdout)
    result["python_start"] = python_start(rounds=max(20, cfg["adds"] // 2))
    return result


def python_start(*, rounds: int) -> Json:
    """The floor under any Python plugin: starting the interpreter that runs ``kube-node``
    and exiting (``-I -S``: no site, no user paths), median of ``rounds``."""
    python = str(Path(sys.executable))
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([python, "-I", "-S", "-c", "pass"], check=True)
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return {"median_ms": round(samples[len(samples) // 2] * 1000, 2), "rounds": rounds}


BENCHES: dict[str, tuple[str, Callable[[Json], Json], str]] = {
    "route": ("route_install", bench_route_install, "route_install"),
    "idle": ("idle_reconcile", bench_idle, "idle"),
    "daemon": ("daemon", bench_daemon, "daemon"),
    "scaling": ("daemon_scaling", bench_daemon_scaling, "daemon_scaling"),
    "ipam": ("ipam", bench_ipam, "ipam"),
}


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the xcluster-cni benchmarks (see docs/performance.md)."
    )
    parser.add_argument("--quick", action="store_true", help="the short run (< 2 minutes)")
    parser.add_argument(
        "--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}"
    )
    parser.add_argument("--plots", help="directory for the PNG plots")
    parser.add_argument("--no-plots", action="store_true", help="skip the plots")
    parser.add_argument("--replot", metavar="FILE", help="table and plots from a results file")
    parser.add_argument(
        "--docs",
        metavar="MD",
        help="also rewrite the generated parts of this page (docs/performance.md)",
    )
    args = parser.parse_args(argv)

    # SIGTERM unwinds like Ctrl-C, so every namespace and process is cleaned up.
    signal.signal(signal.SIGTERM, _terminate)
    profile = "quick" if args.quick else "full"
    if args.replot:
        results: Json = json.loads(Path(args.replot).read_text())
    else:
        if os.geteuid() != 0:
            print("bench: needs root (network namespaces)", file=sys.stderr)
            return 2
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in BENCHES]
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; choose from {','.join(ALL)}")
        config = PROFILES[profile]
        results = {"profile": profile, "machine": machine(), "config": config, "errors": {}}
        started = time.monotonic()
        for name in ALL:
            if name not in wanted:
                continue
            key, fn, cfg_key = BENCHES[name]
            t0 = time.monotonic()
            try:
                results[key] = fn(config[cfg_key])
            except Exception as e:  # one broken benchmark must not hide the others
                traceback.print_exc()
                results["errors"][key] = f"{type(e).__name__}: {e}"
            progress(f"{name}: {time.monotonic() - t0:.0f} s")
        results["seconds"] = time.monotonic() - started
        results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        text = json.dumps(results, indent=1)
        (RESULTS / f"{stamp}-{profile}.json").write_text(text)
        (RESULTS / "latest.json").write_text(text)
        progress(f"results: bench/results/{stamp}-{profile}.json ({results['seconds']:.0f} s)")

    print(format_table(results))
    if args.docs:
        update_docs(args.docs, results)
        progress(f"updated {args.docs}")
    if not args.replot:
        (RESULTS / "latest.md").write_text(markdown_table(results) + "\n")
    if not args.no_plots:
        from bench import plots

        default = REPO / "docs" / "img" if results.get("profile") == "full" else RESULTS / "img"
        where = Path(args.plots) if args.plots else default
        for path in plots.draw_all(results, where):
            progress(f"plot: {os.path.relpath(path, REPO)}")
    # Missed targets are reported, not failures: the exit code says whether all ran.
    return 1 if results.get("errors") and not args.replot else 0


if __name__ == "__main__":
    sys.exit(main())
