"""Hostile stdin, env and node data against the real plugins and the real host-local:
the right CNI error codes, pod ranges the daemon's rule refuses are refused here too, and
the cache survives races and crashes (issue 12, findings 10-12)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ipam._cni import HOST_LOCAL, invoke, reserved, tree, write_nodes
from xcluster_cni_lib.support.atomicfile import TMP_PREFIX
from xcluster_cni_lib.testing.nodes import make_node

Conf = Callable[..., dict[str, Any]]
KEY = "x.io/ranges"


# --- error codes ----------------------------------------------------------------------


def test_deeply_nested_stdin_is_a_decoding_error(data_dir: Path, exe: bool) -> None:
    stdin = b'{"cniVersion": "1.0.0", "name": "net", "ipam": ' + b"[" * 100_000
    stdin += b"]" * 100_000 + b"}"
    err = invoke(stdin, "ADD", exe=exe).error()
    assert err["code"] == 6 and "nested" in err.get("details", ""), err
    assert tree(data_dir) == []


@pytest.mark.parametrize("key", ["dataDir", "nodesFile", "resolvConf", "logfile", "kubeconfig"])
def test_nul_bytes_in_a_path_are_invalid_config(
    conf: Conf, data_dir: Path, key: str, exe: bool
) -> None:
    err = invoke(conf(**{key: f"{data_dir}/a\x00b"}), "ADD", exe=exe).error()
    assert err["code"] == 7 and key in err["msg"] and "NUL" in err["msg"], err
    assert tree(data_dir) == []


def test_nul_byte_in_the_network_name_is_invalid_config(conf: Conf, data_dir: Path) -> None:
    err = invoke(conf(name="net\x00x"), "ADD").error()
    assert err["code"] == 7 and "name" in err["msg"], err
    assert tree(data_dir) == []


@pytest.mark.parametrize(
    "args", ["junk", "K8S_POD_NAMESPACE=default;junk", "=x;K8S_POD_NAME=p", "IgnoreUnknown=0;x"]
)
def test_malformed_cni_args_are_invalid_env(conf: Conf, data_dir: Path, args: str) -> None:
    for exe in (False, True):
        err = invoke(conf(), "ADD", args=args, exe=exe).error()
        assert err["code"] == 4 and "CNI_ARGS" in err["msg"], err
    assert reserved(data_dir / "net") == {}


def test_malformed_items_with_ignore_unknown_are_dropped_not_passed_on(conf: Conf) -> None:
    """With IgnoreUnknown the plugin skips a malformed item; host-local (which fails on
    one even then) gets only the well-formed pairs."""
    args = "IgnoreUnknown=1;junk;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"
    out = invoke(conf(), "ADD", args=args, exe=True)
    assert out.rc == 0, out
    assert invoke(conf(), "DEL", args=args).rc == 0


# --- pod ranges: the daemon's rule ------------------------------------------------------

REFUSED = ["127.0.0.0/8", "224.0.0.0/24", "169.254.0.0/16", "0.0.0.0/0", "::/0", "fe80::/64"]


@pytest.mark.parametrize("subnet", REFUSED)
def test_node_annotation_refuses_ranges_that_are_never_pods(
    conf: Conf, nodes_file: Path, data_dir: Path, subnet: str, exe: bool
) -> None:
    value = json.dumps({"ranges": [[{"subnet": subnet}]]})
    write_nodes(nodes_file, [make_node("n1", annotations={KEY: value}, images=0)])
    out = invoke(conf(plugin="node-annotation", annotation=KEY), "ADD", plugin="node-annotation")
    err = out.error()
    assert err["code"] == 100, err  # the node's data, as every unusable node (docs/ipam.md)
    assert "node n1" in err["msg"] and KEY in err["msg"] and subnet in err["msg"], err
    assert "refused" in err["msg"], err
    assert tree(data_dir) == []  # host-local never saw it


@pytest.mark.parametrize("cidr", ["127.0.0.0/8", "224.0.0.0/24", "169.254.0.0/16", "0.0.0.0/0"])
def test_kube_node_refuses_pod_cidrs_that_are_never_pods(
    conf: Conf, nodes_file: Path, data_dir: Path, cidr: str
) -> None:
    write_nodes(nodes_file, [make_node("n1", pod_cidrs=[cidr], images=0)])
    err = invoke(conf(), "ADD").error()
    # the daemon's words: "no pod CIDR", and why each one was not taken
    assert err["code"] == 100 and "node n1" in err["msg"], err
    assert cidr in err["details"] and "spec.podCIDRs" in err["details"], err
    assert tree(data_dir) == []


def test_an_annotation_value_is_shortened_in_the_error(
    conf: Conf, nodes_file: Path, data_dir: Path
) -> None:
    value = json.dumps({"ranges": [[{"subnet": "127.0.0.0/8", "gateway": "127.0.0.1"}]]})
    value += " " * 300_000
    write_nodes(nodes_file, [make_node("n1", annotations={KEY: value}, images=0)])
    out = invoke(conf(plugin="node-annotation", annotation=KEY), "ADD", plugin="node-annotation")
    assert out.error()["code"] == 100
    assert len(out.out) < 2000, len(out.out)


def test_cluster_cidrs_allow_only_their_ranges(conf: Conf, data_dir: Path) -> None:
    inside = conf(clusterCIDRs=["10.244.0.0/16", "fd00:10:244::/48"])
    out = invoke(inside, "ADD", cid="a")
    assert out.rc == 0, out
    assert len(out.json["ips"]) == 2
    cache = json.loads((data_dir / "net" / "kube-node.json").read_text())
    assert cache["inputs"]["clusterCIDRs"] == ["10.244.0.0/16", "fd00:10:244::/48"]

    # another allow-list is another input: the cache is rebuilt and the node refused
    err = invoke(conf(clusterCIDRs=["10.96.0.0/12"]), "ADD", cid="b").error()
    assert err["code"] == 100 and "node n1" in err["msg"], err
    assert "outside the cluster CIDRs (10.96.0.0/12)" in err["details"], err

    # an IPv4-only allow-list: the IPv6 pod CIDR is dropped (as the daemon drops it)
    out = invoke(conf(clusterCIDRs=["10.244.0.0/16"]), "ADD", cid="c")
    assert out.rc == 0, out
    assert [ip["address"].count(":") for ip in out.json["ips"]] == [0]


def test_node_annotation_ranges_outside_the_cluster_cidrs(conf: Conf, nodes_file: Path) -> None:
    value = json.dumps([[{"subnet": "10.9.0.0/24"}]])
    write_nodes(nodes_file, [make_node("n1", annotations={KEY: value}, images=0)])
    c = conf(plugin="node-annotation", annotation=KEY, clusterCIDRs=["10.244.0.0/16"])
    err = invoke(c, "ADD", plugin="node-annotation").error()
    assert err["code"] == 100 and "10.9.0.0/24" in err["msg"] and "n1" in err["msg"], err
    c = conf(plugin="node-annotation", annotation=KEY, clusterCIDRs=["10.9.0.0/16"])
    assert invoke(c, "ADD", plugin="node-annotation").rc == 0


@pytest.mark.parametrize("value", [["banana"], "10.0.0.0/8", ["10.0.0.0/8", 5], [""]])
def test_a_bad_cluster_cidrs_key_is_invalid_config(
    conf: Conf, data_dir: Path, value: object
) -> None:
    err = invoke(conf(clusterCIDRs=value), "ADD").error()
    assert err["code"] == 7 and "clusterCIDRs" in err["msg"], err
    assert reserved(data_dir / "net") == {}


# --- cache housekeeping -----------------------------------------------------------------


def test_concurrent_cold_adds_leave_one_valid_cache(conf: Conf, data_dir: Path) -> None:
    c = conf()
    results: dict[int, Any] = {}

    def add(i: int) -> None:
        results[i] = invoke(c, "ADD", cid=f"p{i}", exe=True)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r.rc == 0 for r in results.values()), [r for r in results.values() if r.rc]
    assert len(results) == 16
    network = data_dir / "net"
    assert [p.name for p in network.iterdir() if p.name.endswith(".json")] == ["kube-node.json"]
    assert json.loads((network / "kube-node.json").read_text())["node"] == "n1"
    assert not [p for p in network.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert invoke(c, "ADD", cid="after").rc == 0


def test_a_failed_add_does_not_remove_a_cache_another_add_wrote(
    conf: Conf, data_dir: Path, tmp_path: Path
) -> None:
    """A cold ADD whose host-local fails removes only the cache it wrote itself. Here a
    concurrent ADD rewrites the cache while host-local runs (the shim does it at that
    moment, then runs the real host-local, which finds the range full)."""
    shim_dir = tmp_path / "cni"
    shim_dir.mkdir()
    shim = shim_dir / "host-local"
    cache = data_dir / "net" / "kube-node.json"
    shim.write_text(
        "#!/bin/sh\n"
        f'cp "{cache}" "{cache}.winner" && mv "{cache}.winner" "{cache}"\n'
        f"exec {HOST_LOCAL}\n"
    )
    shim.chmod(0o755)
    c = conf(rangeStart="10.244.1.1", rangeEnd="10.244.1.1")  # only the gateway: full
    out = invoke(c, "ADD", path=str(shim_dir))
    assert out.error()["code"] != 0
    assert cache.exists(), "the concurrent ADD's cache was removed"
    assert json.loads(cache.read_text())["node"] == "n1"


def test_stale_temp_files_are_swept_on_a_miss(conf: Conf, data_dir: Path) -> None:
    network = data_dir / "net"
    network.mkdir(parents=True)
    stale = network / f"{TMP_PREFIX}123-dead"
    fresh = network / f"{TMP_PREFIX}456-busy"
    stale.write_text("{half a cache")
    fresh.write_text("{being written")
    not_a_file = network / f"{TMP_PREFIX}dir"
    not_a_file.mkdir()
    old = time.time() - 120
    for p in (stale, not_a_file):
        os.utime(p, (old, old))
    out = invoke(conf(logfile=str(data_dir / "log")), "ADD")
    assert out.rc == 0, out
    assert not stale.exists()
    assert fresh.exists()  # a writer may still be busy with it
    assert not_a_file.is_dir()  # only files are swept
    assert stale.name in (data_dir / "log").read_text()
