"""kube-node inside a real ``bridge`` conflist: the bridge and the host side live in a
throwaway namespace, the pod in another. Needs root."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ipam._cni import BIN, CNI_PATH, reserved, write_nodes
from xcluster_cni_lib.testing.netns import netns, run_in
from xcluster_cni_lib.testing.nodes import make_node

pytestmark = pytest.mark.root


@pytest.fixture
def cni_path(tmp_path: Path) -> str:
    """A CNI_PATH with the installed kube-node first, then the reference plugins."""
    bin_dir = tmp_path / "cni-bin"
    bin_dir.mkdir()
    (bin_dir / "kube-node").symlink_to(BIN / "kube-node")
    return f"{bin_dir}:{CNI_PATH}"


@pytest.fixture
def spaces() -> Iterator[tuple[str, str]]:
    """(host-side namespace, pod namespace), DAD off so IPv6 works at once."""
    with netns("h") as host, netns("p") as pod:
        for ns in (host, pod):
            for conf in ("all", "default"):
                run_in(ns, ["sysctl", "-qw", f"net.ipv6.conf.{conf}.accept_dad=0"])
        yield host, pod


def bridge(
    host: str, pod: str, conf: dict[str, Any], command: str, *, ifname: str, cni_path: str
) -> subprocess.CompletedProcess[bytes]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "pod-1",
        "CNI_NETNS": f"/run/netns/{pod}",
        "CNI_IFNAME": ifname,
        "CNI_PATH": cni_path,
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    return subprocess.run(
        ["ip", "netns", "exec", host, f"{CNI_PATH}/bridge"],
        input=json.dumps(conf).encode(),
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )


def addresses(pod: str, ifname: str) -> set[str]:
    out = run_in(pod, ["ip", "-j", "addr", "show", "dev", ifname], check=False)
    if not out.strip():
        return set()
    return {
        f"{a['local']}/{a['prefixlen']}"
        for link in json.loads(out)
        for a in link["addr_info"]
        if a.get("scope") == "global"
    }


def ping(pod: str, address: str, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while True:
        done = subprocess.run(
            ["ip", "netns", "exec", pod, "ping", "-c1", "-W1", address],
            capture_output=True,
            check=False,
        )
        if done.returncode == 0:
            return
        assert time.monotonic() < end, f"{address} unreachable from {pod}"
        time.sleep(0.1)


Conflist = Callable[..., dict[str, Any]]


@pytest.fixture
def bridge_conf(tmp_path: Path) -> Conflist:
    nodes = tmp_path / "nodes.json"
    node = make_node(
        "n1", index=1, images=0, annotations={"x.io/net3": "192.168.55.0/26,fd00:5::1:0/112"}
    )
    write_nodes(nodes, [node])

    def make(name: str, br: str, **ipam: Any) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": name,
            "type": "bridge",
            "bridge": br,
            "isGateway": True,
            "ipam": {
                "type": "kube-node",
                "nodesFile": str(nodes),
                "nodeName": "n1",
                "dataDir": str(tmp_path / f"data-{name}"),
                **ipam,
            },
        }

    return make


def test_bridge_gives_a_working_dual_stack_interface(
    spaces: tuple[str, str], bridge_conf: Conflist, cni_path: str, tmp_path: Path
) -> None:
    host, pod = spaces
    conf = bridge_conf("net", "xcbr0")
    done = bridge(host, pod, conf, "ADD", ifname="eth0", cni_path=cni_path)
    assert done.returncode == 0, done
    result = json.loads(done.stdout)
    got = addresses(pod, "eth0")
    assert {ip["address"] for ip in result["ips"]} == got
    v4 = next(a for a in got if ":" not in a)
    v6 = next(a for a in got if ":" in a)
    assert v4.startswith("10.244.1.") and v6.startswith("fd00:10:244:1::")
    ping(pod, "10.244.1.1")
    ping(pod, "fd00:10:244:1::1")
    assert len(reserved(tmp_path / "data-net" / "net")) == 2

    check = {**conf, "prevResult": result}
    done = bridge(host, pod, check, "CHECK", ifname="eth0", cni_path=cni_path)
    assert done.returncode == 0, done
    done = bridge(host, pod, conf, "DEL", ifname="eth0", cni_path=cni_path)
    assert done.returncode == 0, done
    assert addresses(pod, "eth0") == set()
    assert reserved(tmp_path / "data-net" / "net") == {}


def test_secondary_network_beside_the_main_one(
    spaces: tuple[str, str], bridge_conf: Conflist, cni_path: str, tmp_path: Path
) -> None:
    host, pod = spaces
    main = bridge_conf("net", "xcbr0")
    secondary = bridge_conf("net3", "xcbr3", annotation="x.io/net3")
    a = bridge(host, pod, main, "ADD", ifname="eth0", cni_path=cni_path)
    b = bridge(host, pod, secondary, "ADD", ifname="net1", cni_path=cni_path)
    assert a.returncode == 0, a
    assert b.returncode == 0, b
    eth0, net1 = addresses(pod, "eth0"), addresses(pod, "net1")
    assert not eth0 & net1
    assert {a.split("/")[0].rsplit(".", 1)[0] for a in net1 if ":" not in a} == {"192.168.55"}
    assert any(a.startswith("fd00:5::1:") for a in net1)
    ping(pod, "192.168.55.1")
    main_dir, sec_dir = tmp_path / "data-net" / "net", tmp_path / "data-net3" / "net3"
    assert set(reserved(main_dir)) == {a.split("/")[0] for a in eth0}
    assert set(reserved(sec_dir)) == {a.split("/")[0] for a in net1}

    done = bridge(host, pod, secondary, "DEL", ifname="net1", cni_path=cni_path)
    assert done.returncode == 0, done
    assert reserved(sec_dir) == {}
    assert len(reserved(main_dir)) == 2
    assert addresses(pod, "eth0") == eth0
    assert bridge(host, pod, main, "DEL", ifname="eth0", cni_path=cni_path).returncode == 0
    assert reserved(main_dir) == {}
