"""A new pod's NetworkPolicy is enforced before its served ADD returns: the agent binds
the allocated addresses to the pod (from ``CNI_ARGS``) and answers once its policy tables
hold them; a DEL takes the binding away; other interfaces than ``eth0`` bind nothing."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiserver import ApiServerDouble
from tests.apiserver.objects import make_namespace, make_network_policy, make_pod
from tests.daemon.harness import http_get, wait_for
from tests.ipamserver.test_own_node import agent, call, served_conf
from xcluster_cni_lib.core.policynft import table_name
from xcluster_cni_lib.testing.nodes import make_node

pytestmark = pytest.mark.root

ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=new;K8S_POD_INFRA_CONTAINER_ID=c1"


def _ingress4(ns: str) -> set[str]:
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "nft",
            "-j",
            "list",
            "set",
            "inet",
            table_name(202),
            "ingress4",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return set()
    sets = [o["set"] for o in json.loads(proc.stdout)["nftables"] if "set" in o]
    return {e for s in sets for e in s.get("elem", []) if isinstance(e, str)}


@pytest.fixture
def api() -> Iterator[ApiServerDouble]:
    with ApiServerDouble(bookmark_interval=0.5) as double:
        double.set_nodes(make_node(f"n{i}", index=i) for i in range(3))
        yield double


@pytest.fixture
def root(short_dir: Path) -> Path:
    path = short_dir / "root"
    path.mkdir()
    return path


def test_a_new_pods_policy_is_in_place_when_its_add_returns(
    netns: str, api: ApiServerDouble, root: Path, tmp_path: Path
) -> None:
    api.add_namespace(make_namespace("shop"))
    api.add_pod(make_pod("new", "shop", node="n1", labels={"app": "new"}))  # no IPs yet
    api.add_network_policy(
        make_network_policy("deny-new", "shop", pod_selector={"matchLabels": {"app": "new"}})
    )
    conf = served_conf(tmp_path / "data")
    with agent(netns, api, root, NETWORK_POLICY="true", HTTP_ADDRESS="127.0.0.1:0") as daemon:
        assert daemon.policy is not None and daemon.admission is not None
        policy = daemon.policy
        wait_for(lambda: policy.first_sync_done, timeout=10, what="policy synced")
        wait_for(lambda: call(daemon, conf, "STATUS").rc == 0, timeout=10, what="STATUS ok")
        out = call(daemon, conf, "ADD", args=ARGS)
        assert out.rc == 0, out
        [v4] = [i["address"].split("/")[0] for i in out.json["ips"] if ":" not in i["address"]]
        assert v4 in _ingress4(netns)  # at once: no waiting after the ADD
        assert daemon.admission.waits == 1 and daemon.admission.timeouts == 0
        _, metrics = http_get(daemon, "/metrics")
        assert "xcluster_policy_pod_start_wait_seconds_count 1.0" in metrics
        # a secondary interface binds nothing
        other = call(daemon, conf, "ADD", args=ARGS, ifname="net1", cid="c2")
        assert other.rc == 0 and daemon.admission.waits == 1
        # the DEL takes the binding away (the API never showed the address)
        assert call(daemon, conf, "DEL", args=ARGS).rc == 0
        wait_for(lambda: v4 not in _ingress4(netns), what="binding gone")
