"""Served IPAM (issue 13): median ADD latency of ``host-local`` alone, of the agent's
socket server (``IPAM_SOCKET``) through the Python test client and through the C host
shim (when built: ``build/plugins/amd64/xcluster-cni-shim``), and of the standalone
``kube-node`` console script; interleaved round by round, each ADD followed by its DEL
(untimed). Also the agent's resident memory (VmRSS) with the IPAM server idle vs. off.

The agent is ``xcluster-cni daemon`` as a process in a throwaway network namespace, fed
by a nodes file. Needs root.

    .venv/bin/python -m bench.ipam_served --rounds 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ipam_latency import cni_env  # noqa: E402
from tests.ipamserver import client  # noqa: E402
from xcluster_cni_lib.plugin.delegate import run_plugin  # noqa: E402
from xcluster_cni_lib.testing.netns import netns  # noqa: E402
from xcluster_cni_lib.testing.nodes import make_node  # noqa: E402

HOST_LOCAL = "/usr/lib/cni/host-local"
BIN = Path(sys.executable).parent
SHIM = ROOT / "build" / "plugins" / "amd64" / "xcluster-cni-shim"


def _conf(data_dir: str, name: str, ipam: dict[str, object]) -> bytes:
    doc = {"cniVersion": "1.0.0", "name": name, "type": "bridge", "ipam": {"dataDir": data_dir}}
    doc["ipam"].update(ipam)  # type: ignore[attr-defined]
    return json.dumps(doc).encode()


def _vmrss_kb(pid: int) -> int:
    """VmRSS of the daemon: ``ip netns exec`` execs it, so the pid is the daemon's."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _daemon(ns: str, nodes_file: str, sock: str | None) -> subprocess.Popen[bytes]:
    env = {"PATH": os.environ["PATH"], "NODES_FILE": nodes_file, "NODE_NAME": "bench-node"}
    if sock:
        env["IPAM_SOCKET"] = sock
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, str(BIN / "xcluster-cni"), "daemon"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _settled_rss(proc: subprocess.Popen[bytes], wait: float = 3.0) -> int:
    time.sleep(wait)  # a benchmark, not a test: let start-up finish before reading
    return _vmrss_kb(proc.pid)


def measure_rss(ns: str, nodes_file: str, sock: str) -> dict[str, int]:
    """VmRSS (KiB) of the daemon without the server, with it idle, and after 100 calls."""
    out: dict[str, int] = {}
    proc = _daemon(ns, nodes_file, None)
    try:
        out["off_kb"] = _settled_rss(proc)
    finally:
        _stop(proc)
    proc = _daemon(ns, nodes_file, sock)
    try:
        out["idle_kb"] = _settled_rss(proc)
        for _ in range(100):
            client.call(sock, cni_env("VERSION", ""), b"")
        out["after_100_calls_kb"] = _vmrss_kb(proc.pid)
    finally:
        _stop(proc)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="xipam-bench-", dir="/tmp")  # short: sun_path
    try:
        with netns("b") as ns:
            report = _run(ns, tmp, args.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{args.rounds} interleaved ADDs each (DEL after each, untimed)")
        for label, r in report["add"].items():
            print(
                f"  {label:34} median {r['median_ms']:7.2f} ms  p90 {r['p90_ms']:7.2f} ms"
                f"  {r['x_host_local']:5.2f}x host-local"
            )
        print("agent VmRSS (KiB):", report["rss"])
    return 0


def _run(ns: str, tmp: str, rounds: int) -> dict[str, object]:
    nodes_file = os.path.join(tmp, "nodes.json")
    with open(nodes_file, "w") as f:
        json.dump({"kind": "NodeList", "items": [make_node("bench-node", index=1)]}, f)
    data = os.path.join(tmp, "data")
    sock = os.path.join(tmp, "run", "ipam.sock")
    ranges = [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]
    ipam = {"type": "kube-node", "nodesFile": nodes_file, "nodeName": "bench-node"}

    def via_exe(path: str, conf: bytes) -> Callable[[str, str], tuple[int, bytes]]:
        return lambda command, cid: run_plugin(path, stdin=conf, env=cni_env(command, cid))

    def via_socket(conf: bytes) -> Callable[[str, str], tuple[int, bytes]]:
        def call(command: str, cid: str) -> tuple[int, bytes]:
            out = client.call(sock, cni_env(command, cid), conf)
            return out.rc, out.out

        return call

    cases = {
        "host-local alone": via_exe(
            HOST_LOCAL, _conf(data, "hl", {"type": "host-local", "ranges": ranges})
        ),
        "served: Python client": via_socket(_conf(data, "py", ipam)),
        "standalone kube-node (.venv)": via_exe(str(BIN / "kube-node"), _conf(data, "exe", ipam)),
    }
    if SHIM.exists():
        link = os.path.join(tmp, "shim", "kube-node")
        os.makedirs(os.path.dirname(link))
        os.symlink(SHIM, link)
        cases["served: C shim"] = via_exe(link, _conf(data, "shim", {**ipam, "socket": sock}))
    samples: dict[str, list[float]] = {k: [] for k in cases}
    dels: dict[str, list[float]] = {k: [] for k in cases}
    agent = _daemon(ns, nodes_file, sock)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):
            if time.monotonic() > deadline:
                raise SystemExit("the agent did not create its socket")
            time.sleep(0.01)
        order = list(cases.items())
        for i in range(rounds + 3):  # 3 warm-up rounds
            # rotated each round: no case always runs right after the heavy standalone one
            for label, call in order[i % len(order) :] + order[: i % len(order)]:
                t0 = time.perf_counter()
                rc, out = call("ADD", f"b-{i}")
                t1 = time.perf_counter()
                if rc != 0:
                    raise SystemExit(f"{label} ADD failed: {out.decode()}")
                rc, out = call("DEL", f"b-{i}")
                t2 = time.perf_counter()
                if rc != 0:
                    raise SystemExit(f"{label} DEL failed: {out.decode()}")
                if i >= 3:
                    samples[label].append(t1 - t0)
                    dels[label].append(t2 - t1)
    finally:
        _stop(agent)
    down: list[float] = []
    if SHIM.exists():  # the agent is gone: the shim's "try again later"
        call = cases["served: C shim"]
        for i in range(50):
            t0 = time.perf_counter()
            rc, out = call("ADD", f"down-{i}")
            down.append(time.perf_counter() - t0)
            assert rc != 0 and json.loads(out)["code"] == 11, out
    base = statistics.median(samples["host-local alone"])
    report: dict[str, object] = {
        "rounds": rounds,
        "add": {
            label: {
                "median_ms": round(statistics.median(s) * 1000, 2),
                "p90_ms": round(statistics.quantiles(s, n=10)[-1] * 1000, 2),
                "x_host_local": round(statistics.median(s) / base, 2),
                "del_median_ms": round(statistics.median(dels[label]) * 1000, 2),
            }
            for label, s in samples.items()
        },
        "rss": measure_rss(ns, nodes_file, sock),
    }
    if down:
        report["shim_agent_down_median_ms"] = round(statistics.median(down) * 1000, 2)
    return report


if __name__ == "__main__":
    raise SystemExit(main())
