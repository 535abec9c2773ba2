"""Median ADD latency of the installed ``kube-node`` next to ``host-local`` alone.

Runs, interleaved, ``--rounds`` times each (every ADD followed by its DEL, untimed):

- ``host-local``: the reference plugin with the same ranges, called directly;
- ``kube-node hit``: the installed executable with its cache in place;
- ``kube-node miss (api)``: the cache removed before each ADD, the node fetched from the
  API-server double over HTTP;
- ``kube-node miss (nodesFile)``: the same from a nodes file.

Each kube-node case runs twice: the ``.venv`` executable (an editable install, whose
import hook alone costs ~8 ms per start) and a plain install as a node would have it (a
fresh virtualenv with the packages and ``attrs``, which a cache miss imports, copied in and
byte-compiled; the nodes-file case runs from ``.venv`` only).

These are the standalone front door (the console script). The host shim forwarding to the
node agent is measured by ``bench/ipam_served.py``.

Usage: ``.venv/bin/python bench/ipam_latency.py [--rounds 100] [--json]``
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.apiserver import ApiServerDouble  # noqa: E402
from xcluster_cni_lib.plugin.delegate import run_plugin  # noqa: E402
from xcluster_cni_lib.testing.nodes import make_node  # noqa: E402

HOST_LOCAL = "/usr/lib/cni/host-local"
KUBE_NODE = str(Path(sys.executable).parent / "kube-node")


def _node_install(root: str) -> str:
    """A plain (non-editable) install of the plugin in a new virtualenv; its kube-node."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root], check=True)
    site = next(Path(root).glob("lib/python3*/site-packages"))
    import attr
    import attrs

    # the plugin's dependency (the core's values, imported on a cache miss only)
    packages = (Path(attr.__file__).parent, Path(attrs.__file__).parent)
    for source in (ROOT / "xcluster_cni_lib", ROOT / "wrappers/ipam/xcluster_cni_ipam", *packages):
        shutil.copytree(source, site / source.name, ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(str(site), quiet=1)
    script = Path(root) / "bin" / "kube-node"
    script.write_text(
        f"#!{root}/bin/python3\n"
        "import sys\n"
        "from xcluster_cni_ipam.kube_node import main\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(main())\n"
    )
    script.chmod(0o755)
    return str(script)


def cni_env(command: str, cid: str) -> dict[str, str]:
    """The CNI environment of one benchmark call (also used by ``ipam_served``)."""
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": "/var/run/netns/bench",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/usr/lib/cni",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=bench",
    }


def _conf(data_dir: str, name: str, ipam: dict[str, object]) -> bytes:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": name,
            "type": "bridge",
            "ipam": {"dataDir": data_dir, **ipam},
        }
    ).encode()


def _timed_add(path: str, conf: bytes, cid: str) -> float:
    start = time.perf_counter()
    code, out = run_plugin(path, stdin=conf, env=cni_env("ADD", cid))
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{path} ADD failed: {out.decode()}")
    code, out = run_plugin(path, stdin=conf, env=cni_env("DEL", cid))
    if code != 0:
        raise SystemExit(f"{path} DEL failed: {out.decode()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, ApiServerDouble() as api:
        node = make_node("bench-node", index=1)
        api.add_node(node)
        kubeconfig = api.write_kubeconfig(os.path.join(tmp, "kubeconfig"))
        nodes_file = os.path.join(tmp, "nodes.json")
        with open(nodes_file, "w") as f:
            json.dump({"kind": "NodeList", "items": [node]}, f)
        data = os.path.join(tmp, "data")
        ranges = [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]
        node_kube_node = _node_install(os.path.join(tmp, "node-venv"))
        api_ipam: dict[str, object] = {
            "type": "kube-node",
            "kubeconfig": kubeconfig,
            "nodeName": "bench-node",
        }
        cases = {
            "host-local": (HOST_LOCAL, _conf(data, "hl", {"type": "host-local", "ranges": ranges})),
            "node install: hit": (node_kube_node, _conf(data, "nhit", api_ipam)),
            "node install: miss (api)": (node_kube_node, _conf(data, "napi", api_ipam)),
            ".venv: hit": (
                KUBE_NODE,
                _conf(
                    data,
                    "hit",
                    {"type": "kube-node", "kubeconfig": kubeconfig, "nodeName": "bench-node"},
                ),
            ),
            ".venv: miss (api)": (
                KUBE_NODE,
                _conf(
                    data,
                    "api",
                    {"type": "kube-node", "kubeconfig": kubeconfig, "nodeName": "bench-node"},
                ),
            ),
            ".venv: miss (nodesFile)": (
                KUBE_NODE,
                _conf(
                    data,
                    "file",
                    {"type": "kube-node", "nodesFile": nodes_file, "nodeName": "bench-node"},
                ),
            ),
        }
        caches = {
            "node install: miss (api)": os.path.join(data, "napi", "kube-node.json"),
            ".venv: miss (api)": os.path.join(data, "api", "kube-node.json"),
            ".venv: miss (nodesFile)": os.path.join(data, "file", "kube-node.json"),
        }
        samples: dict[str, list[float]] = {k: [] for k in cases}
        for i in range(args.rounds + 3):  # 3 warm-up rounds (bytecode, page cache)
            for label, (path, conf) in cases.items():
                if label in caches and os.path.exists(caches[label]):
                    os.unlink(caches[label])
                elapsed = _timed_add(path, conf, f"bench-{i}")
                if i >= 3:
                    samples[label].append(elapsed)
        gets = api.requests["get"]

    base = statistics.median(samples["host-local"])
    report = {
        label: {
            "median_ms": round(statistics.median(s) * 1000, 2),
            "p90_ms": round(statistics.quantiles(s, n=10)[-1] * 1000, 2),
            "x_host_local": round(statistics.median(s) / base, 1),
        }
        for label, s in samples.items()
    }
    if args.json:
        print(json.dumps({"rounds": args.rounds, "api_gets": gets, "results": report}, indent=1))
    else:
        print(f"{args.rounds} interleaved ADDs each (DEL after each, untimed); API GETs: {gets}")
        for label, r in report.items():
            print(
                f"  {label:28} median {r['median_ms']:7.2f} ms  p90 {r['p90_ms']:7.2f} ms"
                f"  {r['x_host_local']:5.1f}x host-local"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
