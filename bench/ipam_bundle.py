"""Item 6 on the installed executable as a node has it: ``kube-node`` from the
self-contained plugin bundle (``packaging/build_bundle.py``, linked as the installer links
it), cache hit and cache miss, against ``host-local`` called directly with the same
ranges, interleaved round by round; and its ``VERSION`` call (start, imports, no
``host-local``), the floor under its ADDs. The helpers (configs, timed ADD + untimed DEL) are
``bench/ipam_latency.py``'s, so both measure the same way.

Building the bundle needs a C compiler and ``patchelf`` (as ``make test``'s set-up has
them); without them this returns ``{"skipped": reason}``.

    .venv/bin/python -m bench.ipam_bundle --rounds 100
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, VENV_BIN, Json, progress


def build_bundle(out: Path) -> Path:
    """Build the bundle into ``out``; returns a ``kube-node`` link to its launcher."""
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    subprocess.run(
        [sys.executable, str(REPO / "packaging" / "build_bundle.py"), str(out)],
        check=True,
        capture_output=True,
        env=env,
        timeout=300,
    )
    link = out.parent / "kube-node"
    os.symlink(out / "xcluster-cni-plugin", link)
    return link


VERSION = "bundle: VERSION (floor)"


def _timed_version(path: str) -> float:
    """One ``VERSION`` call: the bundle's start, the plugin's imports, one line of output,
    and no ``host-local``: the floor under every ADD of this executable."""
    from xcluster_cni_lib.plugin.delegate import run_plugin

    start = time.perf_counter()
    code, out = run_plugin(path, stdin=b"", env={"CNI_COMMAND": "VERSION"})
    elapsed = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{path} VERSION failed: {out.decode()}")
    return elapsed


def measure(*, rounds: int, warmup: int = 3) -> Json:
    """Median and p90 ADD latency (ms) of host-local and of the bundle's kube-node."""
    missing = [tool for tool in ("cc", "patchelf") if shutil.which(tool, path=_path()) is None]
    if missing:
        return {"skipped": f"cannot build the bundle without {', '.join(missing)}"}
    from tests.apiserver import ApiServerDouble
    from xcluster_cni_lib.testing.nodes import make_node

    # the IPAM plugin's own benchmark: the same configs and timing (used untyped)
    helpers: Any = importlib.import_module("bench.ipam_latency")
    with tempfile.TemporaryDirectory(prefix="xcbundle") as tmp, ApiServerDouble() as api:
        progress("IPAM: building the plugin bundle")
        kube_node = str(build_bundle(Path(tmp) / "xcluster-cni"))
        node = make_node("bench-node", index=1)
        api.add_node(node)
        kubeconfig = api.write_kubeconfig(os.path.join(tmp, "kubeconfig"))
        data = os.path.join(tmp, "data")
        ranges = [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]
        ipam = {"type": "kube-node", "kubeconfig": kubeconfig, "nodeName": "bench-node"}
        cases = {
            "host-local": (
                helpers.HOST_LOCAL,
                helpers._conf(data, "hl", {"type": "host-local", "ranges": ranges}),
            ),
            "bundle: hit": (kube_node, helpers._conf(data, "hit", ipam)),
            "bundle: miss (api)": (kube_node, helpers._conf(data, "miss", ipam)),
        }
        cache = os.path.join(data, "miss", "kube-node.json")
        samples: dict[str, list[float]] = {k: [] for k in cases}
        samples[VERSION] = []
        progress(f"IPAM: bundle, {rounds} interleaved ADDs per case")
        for i in range(rounds + warmup):
            for label, (path, conf) in cases.items():
                if label.endswith("(api)") and os.path.exists(cache):
                    os.unlink(cache)
                elapsed = helpers._timed_add(path, conf, f"bundle-{i}")
                if i >= warmup:
                    samples[label].append(elapsed)
            elapsed = _timed_version(kube_node)
            if i >= warmup:
                samples[VERSION].append(elapsed)
    base = statistics.median(samples["host-local"])
    return {
        "rounds": rounds,
        "results": {
            label: {
                "median_ms": round(statistics.median(s) * 1000, 2),
                "p90_ms": round(statistics.quantiles(s, n=10)[-1] * 1000, 2),
                "x_host_local": round(statistics.median(s) / base, 2),
            }
            for label, s in samples.items()
        },
    }


def _path() -> str:
    return f"{VENV_BIN}:{os.environ.get('PATH', '')}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(measure(rounds=args.rounds), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
