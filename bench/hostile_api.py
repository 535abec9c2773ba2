"""Hostile API answers against the daemon process: its peak memory and whether it lives.

Each scenario runs in a throwaway network namespace (``run_in_netns``): the API-server
double with ``tests.apiserver.hostile`` answers in this child process, and
``xcluster-cni daemon`` runs as a subprocess in the same namespace with a kubeconfig for
the double. The scenario repeats its hostile answer for every request of its verb until
the daemon has been served it ``rounds`` times (or ``seconds`` passed); then the
daemon's peak resident memory (``VmHWM`` of ``/proc/<pid>/status``), whether it is still
running, its ``/readyz`` answer and its malformed-event counter are recorded.

    sudo .venv/bin/python -m bench.hostile_api                 # the code in this tree
    sudo .venv/bin/python -m bench.hostile_api --lib /tmp/old  # another xcluster_cni_lib

``--lib DIR`` puts DIR first on the daemon's ``PYTHONPATH`` (e.g. an older
``xcluster_cni_lib`` from ``git archive``), to measure the code before a change.
Results: a Markdown table on stdout (copied into docs/reliability.md, "Hostile input").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import (
    Json,
    child_main,
    daemon_process,
    free_port,
    memory_kb,
    progress,
    run_in_netns,
    scrape_metrics,
    wait_until,
)

MiB = 1 << 20
SCENARIOS = (
    "baseline",
    "huge_list_page",
    "huge_watch_line",
    "huge_error_body",
    "malformed",
    "hanging_list",
    "list_410_loop",
)
READINESS = ("hanging_list", "list_410_loop")
BAD_LINES = [
    b"[1,2]",
    b'{"type":"ADDED","object":"str"}',
    b'{"type":"MODIFIED","object":{"metadata":"x"}}',
    b'{"object":{}}',
    b'{"type":"ADDED","object":{"metadata":{}}}',
    b'{"type":"EXPLODED","object":{}}',
    b"{not json",
]


def _readyz(address: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}/readyz", timeout=5) as r:
            return r.status, r.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace").strip()
    except OSError as e:
        return 0, str(e)


def run(params: Json) -> Json:
    """One scenario, inside the namespace (the child process)."""
    from tests.apiserver import ApiServerDouble
    from tests.apiserver.hostile import (
        Hostile,
        hang,
        huge_error,
        huge_list_page,
        huge_watch_line,
        watch_lines,
    )
    from xcluster_cni_lib.testing.nodes import make_node

    scenario: str = params["scenario"]
    size = int(params.get("size_mb", 100)) * MiB
    rounds = int(params.get("rounds", 3))
    seconds = float(params.get("seconds", 60))
    verb = "watch" if scenario in ("huge_watch_line", "malformed") else "list"

    with ApiServerDouble(bookmark_interval=1.0) as api, tempfile.TemporaryDirectory() as tmp:
        api.set_nodes(make_node(f"n{i}", index=i) for i in range(3))
        hostile = Hostile(api)
        if scenario == "huge_list_page":
            hostile.on("list", huge_list_page(size))
        elif scenario == "huge_error_body":
            hostile.on("list", huge_error(size, status=500))
        elif scenario == "huge_watch_line":
            hostile.on("watch", huge_watch_line(size))
        elif scenario == "malformed":
            hostile.on("watch", watch_lines(BAD_LINES))
        kubeconfig = api.write_kubeconfig(Path(tmp) / "kubeconfig")
        address = f"127.0.0.1:{free_port()}"
        env = {
            "KUBECONFIG": kubeconfig,
            "NODE_NAME": "n0",
            "HTTP_ADDRESS": address,
            "LOG_LEVEL": "info",
        }
        if params.get("lib"):
            env["PYTHONPATH"] = f"{params['lib']}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
        log_path = Path(tmp) / "daemon.log"
        started = time.monotonic()
        unready_after = None
        with daemon_process(env, log_path=log_path) as proc:
            if scenario in READINESS:
                # ready first; then the re-list hangs / keeps answering 410
                wait_until(lambda: _readyz(address)[0] == 200, 30)
                if scenario == "hanging_list":
                    hostile.on("list", hang())
                else:
                    api.fail_requests(1_000_000, status=410, verbs={"list"})
                t0 = time.monotonic()
                api.gone_watches()
                if wait_until(lambda: _readyz(address)[0] != 200, seconds, interval=0.2):
                    unready_after = round(time.monotonic() - t0, 1)
            elif scenario == "baseline":
                wait_until(lambda: api.active_watches >= 1, seconds)
                time.sleep(2)  # let it settle: a reconcile, a scrape
            else:
                wait_until(
                    lambda: hostile.served[verb] >= rounds or proc.poll() is not None, seconds
                )
                time.sleep(1)  # the last answer is read (or refused)
            took = time.monotonic() - started
            alive = proc.poll() is None
            peak = memory_kb(proc.pid)["VmHWM"] if alive else None
            status, body = _readyz(address) if alive else (0, "")
            malformed = None
            if alive:
                try:
                    metrics = scrape_metrics(address)
                    malformed = metrics.get("xcluster_watch_malformed_events_total")
                except OSError:
                    pass
            hostile.clear()
            hostile.release()
        log_tail = log_path.read_text(errors="replace").splitlines()[-3:]
    return {
        "scenario": scenario,
        "served": hostile.served[verb],
        "sent_mb": round(hostile.sent[verb] / MiB, 1),
        "seconds": round(took, 1),
        "alive": alive,
        "exit_code": None if alive else proc.returncode,
        "vmhwm_mb": None if peak is None else round(peak / 1024, 1),
        "readyz": status,
        "readyz_body": body[:300],
        "malformed_total": malformed,
        "unready_after_s": unready_after,
        "log_tail": [line[:300] for line in log_tail],
    }


def _after(result: Json) -> str:
    if result["scenario"] not in READINESS:
        return ""
    after = result.get("unready_after_s")
    return f"still ready after {result['seconds']:.0f} s" if after is None else f"{after} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", help="a directory holding the xcluster_cni_lib to measure")
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    ns = parser.parse_args(argv)
    results: list[Json] = []
    for scenario in ns.scenarios:
        progress(f"hostile_api {scenario}")
        params: dict[str, Any] = {
            "scenario": scenario,
            "size_mb": ns.size_mb,
            "rounds": ns.rounds,
            "seconds": ns.seconds,
            "lib": os.path.abspath(ns.lib) if ns.lib else None,
        }
        results.append(run_in_netns("hostile_api", params, timeout=ns.seconds + 60))
    print(
        "| scenario | answers served | MB sent | daemon alive | peak RSS (VmHWM) "
        "| /readyz | not ready after |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        alive = "yes" if r["alive"] else f"no (exit {r['exit_code']})"
        peak = "—" if r["vmhwm_mb"] is None else f"{r['vmhwm_mb']:.0f} MB"
        print(
            f"| {r['scenario']} | {r['served']} | {r['sent_mb']} | {alive} | {peak} "
            f"| {r['readyz']} {r['readyz_body'].splitlines()[-1] if r['readyz_body'] else ''} "
            f"| {_after(r)} |"
        )
    if ns.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    if "--child" in sys.argv:
        child_main(run)
    else:
        sys.exit(main())
