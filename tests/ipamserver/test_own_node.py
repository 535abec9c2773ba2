"""The agent serving IPAM from its own Node (a watch on that one node, persisted): the
served calls never read the API server or a kubeconfig; STATUS is "not ready" until the
node is known; a restart while the API server is down serves from the persisted node;
and the shim in a chroot holding nothing but itself and the socket, against the agent.

The agent is a ``Daemon`` in this process (routes into a throwaway namespace) watching the
API-server double over real HTTP; calls go through the C shim or the Python client."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.apiserver import ApiServerDouble
from tests.daemon.harness import running_daemon, wait_for
from tests.ipam._cni import CNI_PATH, Outcome, cni_env, netconf
from tests.ipamserver import client
from tests.ipamserver.conftest import NATIVE
from xcluster_cni_lib.daemon.service import Daemon
from xcluster_cni_lib.testing.nodes import make_node

pytestmark = pytest.mark.root

SOCKET = "/run/xcluster-cni/ipam.sock"


@pytest.fixture
def api() -> Iterator[ApiServerDouble]:
    with ApiServerDouble(bookmark_interval=0.5) as double:
        double.set_nodes(make_node(f"n{i}", index=i, images=2) for i in range(3))
        yield double


@contextmanager
def agent(
    netns: str, api: ApiServerDouble, root: Path, node: str = "n1", **extra: str
) -> Iterator[Daemon]:
    """The agent for ``node``, serving on ``<root>/run/xcluster-cni/ipam.sock``."""
    settings = {
        "KUBECONFIG": api.write_kubeconfig(root.parent / "kubeconfig"),
        "NODE_NAME": node,
        "IPAM_SOCKET": str(root / SOCKET.lstrip("/")),
        "IPAM_NODE_FILE": str(root.parent / "state" / "own-node.json"),
        "RESYNC_INTERVAL": "5s",
        **extra,
    }
    with running_daemon(netns, **settings) as daemon:
        yield daemon


def served_conf(data_dir: Path, **ipam: Any) -> dict[str, Any]:
    """What the installer writes: no kubeconfig, no nodeName, no nodes file."""
    return netconf(data_dir, **ipam)


def call(daemon: Daemon, conf: dict[str, Any], command: str, **kw: Any) -> Outcome:
    assert daemon.ipam is not None
    return client.call(daemon.ipam.path, cni_env(command, **kw), json.dumps(conf).encode())


def shim(exe: Path, sock: str, conf: dict[str, Any], command: str, **kw: Any) -> Outcome:
    doc = {**conf, "ipam": {**conf["ipam"], "socket": sock}}
    proc = subprocess.run(
        [str(exe)],
        input=json.dumps(doc).encode(),
        env=cni_env(command, **kw),
        capture_output=True,
        timeout=30,
        check=False,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def root(short_dir: Path) -> Path:
    path = short_dir / "root"
    path.mkdir()
    return path


def _address(out: Outcome) -> ipaddress.IPv4Interface:
    assert out.rc == 0, out
    [v4] = [i for i in out.json["ips"] if ":" not in i["address"]]
    return ipaddress.IPv4Interface(v4["address"])


def test_served_calls_use_the_agents_own_node_from_the_api(
    netns: str, api: ApiServerDouble, root: Path, tmp_path: Path, plugins_dir: Path
) -> None:
    exe = tmp_path / "kube-node"
    shutil.copy2(plugins_dir / NATIVE / "xcluster-cni-shim", exe)
    conf = served_conf(tmp_path / "data")
    with agent(netns, api, root) as daemon:
        assert daemon.ipam is not None
        sock = daemon.ipam.path
        wait_for(lambda: call(daemon, conf, "STATUS").rc == 0, timeout=10, what="STATUS ok")
        out = shim(exe, sock, conf, "ADD")
        n1_cidr = ipaddress.ip_network("10.244.1.0/24")
        assert _address(out) in n1_cidr  # n1's pod CIDR
        assert shim(exe, sock, conf, "CHECK").rc == 0
        assert shim(exe, sock, conf, "DEL").rc == 0
        state = root.parent / "state" / "own-node.json"
        assert json.loads(state.read_text())["metadata"]["name"] == "n1"
        assert state.stat().st_mode & 0o777 == 0o600
        # always fresh: a change of the node reaches the agent (and its file) by the watch
        api.patch_node("n1", {"metadata": {"annotations": {"example.com/mark": "1"}}})

        def marked() -> bool:
            annotations = json.loads(state.read_text())["metadata"]["annotations"]
            return annotations.get("example.com/mark") == "1"

        wait_for(marked, timeout=10, what="the patched node persisted")
        # a config naming another node is refused: the agent allocates for its own only
        other = call(daemon, served_conf(tmp_path / "data2", nodeName="n2"), "ADD")
        assert (other.rc, other.json["code"]) == (1, 7), other
        assert "the agent serves node n1" in other.json["msg"]
        # a conflist an earlier installer wrote (its kubeconfig is gone now) keeps working
        old = served_conf(
            tmp_path / "data3",
            nodeName="n1",
            kubeconfig="/etc/cni/net.d/xcluster-cni-kubeconfig-removed-by-the-installer",
        )
        assert _address(shim(exe, sock, old, "ADD", cid="old")) in n1_cidr
        assert shim(exe, sock, old, "DEL", cid="old").rc == 0


def test_status_is_not_ready_until_the_own_node_is_known_and_a_deleted_node_is_forgotten(
    netns: str, api: ApiServerDouble, root: Path, tmp_path: Path
) -> None:
    conf = served_conf(tmp_path / "data")
    state = root.parent / "state" / "own-node.json"
    with agent(netns, api, root, node="n7") as daemon:
        wait_for(lambda: call(daemon, conf, "STATUS").rc == 1, timeout=10, what="an answer")
        status = call(daemon, conf, "STATUS")
        assert status.json["code"] == 50, status
        assert "node n7" in status.json["msg"]
        add = call(daemon, conf, "ADD")
        assert (add.rc, add.json["code"]) == (1, 11), add  # the runtime retries
        api.add_node(make_node("n7", index=7, images=2))
        wait_for(lambda: call(daemon, conf, "STATUS").rc == 0, timeout=10, what="STATUS ok")
        assert _address(call(daemon, conf, "ADD")) in ipaddress.ip_network("10.244.7.0/24")
        assert state.exists()
        api.delete_node("n7")
        wait_for(lambda: call(daemon, conf, "STATUS").rc == 1, timeout=10, what="not ready")
        assert "deleted" in call(daemon, conf, "STATUS").json["msg"]
        assert not state.exists()


def test_restart_with_the_api_down_serves_from_the_persisted_node(
    netns: str, api: ApiServerDouble, root: Path, tmp_path: Path, plugins_dir: Path
) -> None:
    exe = tmp_path / "kube-node"
    shutil.copy2(plugins_dir / NATIVE / "xcluster-cni-shim", exe)
    sock = str(root / SOCKET.lstrip("/"))
    state = root.parent / "state" / "own-node.json"
    with agent(netns, api, root) as daemon:
        wait_for(state.exists, timeout=10, what="the persisted node")
    # the agent is gone: the shim answers "try again later" at once
    t0 = time.monotonic()
    down = shim(exe, sock, served_conf(tmp_path / "d0"), "ADD")
    assert (down.rc, down.json["code"]) == (1, 11), down
    assert time.monotonic() - t0 < 1.0
    api.stop()
    with agent(netns, api, root) as daemon:
        # no cache anywhere: the ranges come from the persisted node
        out = shim(exe, sock, served_conf(tmp_path / "d1"), "ADD")
        assert _address(out) in ipaddress.ip_network("10.244.1.0/24")
        assert call(daemon, served_conf(tmp_path / "d1"), "STATUS").rc == 0
        assert daemon.own_node is not None and not getattr(daemon.own_node, "healthy", True)


def test_plugin_log_lines_become_agent_log_records(
    netns: str,
    api: ApiServerDouble,
    root: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    conf = served_conf(tmp_path / "data", loglevel="debug")
    caplog.set_level("DEBUG", logger="xcluster_cni_lib.daemon.ipamserver")
    with agent(netns, api, root, LOG_LEVEL="debug") as daemon:
        wait_for(lambda: call(daemon, conf, "STATUS").rc == 0, timeout=10, what="STATUS ok")
        assert call(daemon, conf, "ADD").rc == 0
    assert "kube-node[" not in capfd.readouterr().err  # no plain-text plugin lines
    misses = [
        r
        for r in caplog.records
        if r.name == "xcluster_cni_lib.daemon.ipamserver"
        and r.getMessage().startswith("cache miss")
    ]
    assert len(misses) == 1 and misses[0].levelname == "INFO"


def test_shim_in_an_empty_chroot_against_the_running_agent(
    netns: str, api: ApiServerDouble, root: Path, tmp_path: Path, plugins_dir: Path
) -> None:
    """The host side needs no libc and no Python: the chroot holds the shim and the socket,
    nothing else; host-local runs in the agent."""
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    shutil.copy2(plugins_dir / NATIVE / "xcluster-cni-shim", root / "kube-node")
    data = tmp_path / "data"  # opened by the agent, outside the chroot
    conf = served_conf(data)

    def run(command: str) -> Outcome:
        proc = subprocess.run(
            [chroot, str(root), "/kube-node"],
            input=json.dumps(conf).encode(),  # no "socket": the default path
            env=cni_env(command, path=CNI_PATH),
            capture_output=True,
            timeout=30,
            check=False,
        )
        return Outcome(proc.returncode, proc.stdout, proc.stderr)

    with agent(netns, api, root) as daemon:
        wait_for(lambda: call(daemon, conf, "STATUS").rc == 0, timeout=10, what="STATUS ok")
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())
        assert files == ["kube-node", SOCKET.lstrip("/")]
        address = _address(run("ADD"))
        assert (data / "net" / str(address.ip)).read_text().startswith("c1")
        assert run("CHECK").rc == 0
        assert run("DEL").rc == 0
        assert not (data / "net" / str(address.ip)).exists()
