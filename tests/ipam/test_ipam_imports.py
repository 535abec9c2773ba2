"""What a pod start pays for: the modules the installed executable imports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.apiserver import ApiServerDouble
from tests.ipam._cni import BIN, cni_env, invoke, netconf
from xcluster_cni_lib.testing.nodes import make_node

Conf = Callable[..., dict[str, Any]]
HEAVY = ("kubernetes", "pyroute2", "attr", "attrs", "yaml", "urllib3", "prometheus_client")

# Everything a cache-hit ADD may import beyond what the interpreter's start-up imports.
# Not ``json`` (it imports ``re``), not ``ipaddress`` (``functools``, ``collections``), not
# ``collections.abc`` (all of ``collections``).
ALLOWED_ON_HIT = {
    "__future__",
    "_json",
    "zlib",
    "xcluster_cni_ipam",
    "xcluster_cni_ipam.kube_node",
    "xcluster_cni_lib",
    "xcluster_cni_lib.plugin",
    "xcluster_cni_lib.plugin.protocol",
    "xcluster_cni_lib.plugin.fastjson",
    "xcluster_cni_lib.plugin.delegate",
    "xcluster_cni_lib.plugin.cache",
    "xcluster_cni_lib.plugin.config",
    "xcluster_cni_lib.plugin.log",
    "xcluster_cni_lib.plugin.verbs",
}


def _imported(argv: list[str], stdin: bytes, env: dict[str, str]) -> tuple[int, bytes, set[str]]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        input=stdin,
        env=env,
        capture_output=True,
        check=False,
        timeout=30,
    )
    names = set(re.findall(rb"\|\s+([\w.]+)\s*$", proc.stderr, re.MULTILINE))
    return proc.returncode, proc.stdout, {n.decode() for n in names}


def test_cache_hit_add_imports_only_the_light_modules(conf: Conf) -> None:
    c = conf()
    assert invoke(c, "ADD", cid="warm").rc == 0  # builds the cache
    _, _, baseline = _imported(["-c", "pass"], b"", {})
    rc, out, names = _imported(
        [str(BIN / "kube-node")], json.dumps(c).encode(), cni_env("ADD", cid="hit")
    )
    assert rc == 0, out
    assert json.loads(out)["ips"]  # host-local answered through the exec
    added = names - baseline
    assert "xcluster_cni_lib.plugin.verbs" in added
    assert added <= ALLOWED_ON_HIT, sorted(added - ALLOWED_ON_HIT)
    assert not any(n.split(".")[0] in HEAVY for n in names)


# A cache miss runs the core's rules (the daemon's own parsing and own-node choice), which
# costs ``attrs``; nothing else heavy.
HEAVY_ON_MISS = tuple(n for n in HEAVY if n not in ("attr", "attrs"))


def test_cache_miss_via_the_api_imports_no_client_library(tmp_path: Path) -> None:
    with ApiServerDouble() as api:
        api.add_node(make_node("n1", index=1, images=5))
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        c = netconf(tmp_path / "data", kubeconfig=kubeconfig, nodeName="n1")
        rc, out, names = _imported([str(BIN / "kube-node")], json.dumps(c).encode(), cni_env("ADD"))
    assert rc == 0, out
    assert "xcluster_cni_lib.plugin.kubelite" in names
    assert {"xcluster_cni_lib.core.nodes", "xcluster_cni_lib.core.ownnode"} <= names
    assert not any(n.split(".")[0] in HEAVY_ON_MISS for n in names), sorted(names)
    library = {n.split(".")[1] for n in names if n.startswith("xcluster_cni_lib.")}
    assert library <= {"core", "support", "plugin"}, sorted(library)
