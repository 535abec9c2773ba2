"""kube-node against the API-server double over real HTTP: cache misses, the API server
down, node lookups, paged machine-id search."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apiserver import ApiServerDouble
from tests.ipam._cni import invoke, netconf, reserved
from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.core.ownnode import find_own, several_nodes_message
from xcluster_cni_lib.core.values import NodeFacts
from xcluster_cni_lib.testing.nodes import make_node

Conf = Callable[..., dict[str, Any]]


@pytest.fixture
def api() -> Iterator[ApiServerDouble]:
    with ApiServerDouble(token="s3cret") as server:
        server.add_node(make_node("n1", index=1, images=5))
        server.add_node(make_node("n2", index=2, images=5))
        yield server


@pytest.fixture
def kubeconfig(api: ApiServerDouble, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    api.write_kubeconfig(path)
    return path


@pytest.fixture
def conf(kubeconfig: Path, data_dir: Path) -> Conf:
    def make(**ipam: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"kubeconfig": str(kubeconfig), "nodeName": "n1", "timeout": 2}
        base.update(ipam)
        version = base.pop("version", "1.0.0")
        plugin = base.pop("plugin", "kube-node")
        return netconf(
            data_dir,
            version=version,
            plugin=plugin,
            **{k: v for k, v in base.items() if v is not None},
        )

    return make


def test_add_reads_the_node_from_the_api(
    api: ApiServerDouble, conf: Conf, data_dir: Path, exe: bool
) -> None:
    out = invoke(conf(), "ADD", exe=exe)
    assert out.rc == 0, out
    assert out.json["ips"][0]["address"].startswith("10.244.1.")
    assert api.requests["get"] == 1
    assert invoke(conf(), "ADD", cid="c2", exe=exe).rc == 0
    assert api.requests["get"] == 1  # the second ADD was a cache hit


def test_kubeconfig_from_env(api: ApiServerDouble, conf: Conf, kubeconfig: Path) -> None:
    out = invoke(conf(kubeconfig=None), "ADD", KUBECONFIG=str(kubeconfig))
    assert out.rc == 0, out


def test_yaml_kubeconfig_with_token_file(api: ApiServerDouble, conf: Conf, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    yaml_config = tmp_path / "kubeconfig.yaml"
    yaml_config.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: {api.url}
users:
- name: u
  user:
    tokenFile: token
contexts:
- name: x
  context: {{cluster: c, user: u}}
current-context: x
"""
    )
    out = invoke(conf(kubeconfig=str(yaml_config)), "ADD")
    assert out.rc == 0, out


def test_wrong_token_is_a_clear_error(api: ApiServerDouble, conf: Conf, tmp_path: Path) -> None:
    path = tmp_path / "bad"
    doc = json.loads(Path(conf()["ipam"]["kubeconfig"]).read_text())
    doc["users"][0]["user"]["token"] = "wrong"
    path.write_text(json.dumps(doc))
    err = invoke(conf(kubeconfig=str(path)), "ADD").error()
    # refused credentials are configuration (7), naming the kubeconfig and the status:
    # retrying with the same token cannot help
    assert err["code"] == 7 and "401" in err["msg"], err
    assert str(path) in err["msg"]


def test_forbidden_is_a_configuration_error(
    api: ApiServerDouble, conf: Conf, kubeconfig: Path
) -> None:
    api.fail_requests(1, status=403)
    err = invoke(conf(), "ADD").error()
    assert err["code"] == 7 and "403" in err["msg"], err
    assert str(kubeconfig) in err["msg"]


def test_server_errors_are_still_try_again_later(api: ApiServerDouble, conf: Conf) -> None:
    api.fail_requests(1, status=500)
    assert invoke(conf(), "ADD").error()["code"] == 11


def test_node_missing_from_the_api(api: ApiServerDouble, conf: Conf, data_dir: Path) -> None:
    err = invoke(conf(nodeName="n7"), "ADD").error()
    assert err["code"] == 101 and "n7" in err["msg"]
    assert not data_dir.exists()


def test_api_error_is_try_again_later(api: ApiServerDouble, conf: Conf, data_dir: Path) -> None:
    api.fail_requests(1, status=500)
    err = invoke(conf(), "ADD").error()
    assert err["code"] == 11
    assert not data_dir.exists()
    assert invoke(conf(), "ADD").rc == 0  # the retry works


def test_api_server_down(api: ApiServerDouble, conf: Conf, data_dir: Path, exe: bool) -> None:
    assert invoke(conf(), "ADD", cid="a").rc == 0
    api.stop()
    out = invoke(conf(), "ADD", cid="b", exe=exe)  # with a cache: fine
    assert out.rc == 0, out
    assert invoke(conf(), "CHECK", cid="b", exe=exe).rc == 0
    started = time.monotonic()
    assert invoke(conf(), "DEL", cid="b", exe=exe).rc == 0
    assert time.monotonic() - started < 2
    (data_dir / "net" / "kube-node.json").unlink()
    started = time.monotonic()
    err = invoke(conf(), "ADD", cid="c", exe=exe).error()
    assert err["code"] == 11 and api.url in err.get("details", "") + err["msg"]
    assert time.monotonic() - started < 2  # refused: no waiting
    # DEL without cache and without the API server: releases and exits 0
    assert invoke(conf(), "DEL", cid="a", exe=exe).rc == 0
    assert reserved(data_dir / "net") == {}


def test_api_server_not_answering_fails_within_the_timeout(
    api: ApiServerDouble, conf: Conf, data_dir: Path
) -> None:
    api.set_latency(5.0)
    started = time.monotonic()
    err = invoke(conf(timeout=0.5), "ADD", exe=True).error()
    elapsed = time.monotonic() - started
    assert err["code"] == 11
    assert elapsed < 2.5, elapsed
    assert not (data_dir / "net" / "kube-node.json").exists()


def test_node_deleted_then_del_still_works(
    api: ApiServerDouble, conf: Conf, data_dir: Path
) -> None:
    assert invoke(conf(), "ADD").rc == 0
    api.delete_node("n1")
    (data_dir / "net" / "kube-node.json").unlink()
    assert invoke(conf(), "DEL").rc == 0
    assert reserved(data_dir / "net") == {}


def test_machine_id_search_pages_through_the_nodes(api: ApiServerDouble, conf: Conf) -> None:
    machine_id = Path("/etc/machine-id").read_text().strip()
    api.set_nodes(
        [make_node(f"x{i}", index=10 + i, images=0) for i in range(230)]
        + [make_node("zz-me", index=5, images=0, machine_id=machine_id)]
    )
    api.reset_counters()
    out = invoke(conf(nodeName=None), "ADD")
    assert out.rc == 0, out
    assert out.json["ips"][0]["address"].startswith("10.244.5.")
    assert api.requests["list"] == 3  # 231 nodes in pages of 100


def test_annotation_changes_are_not_seen_until_the_cache_is_reset(
    api: ApiServerDouble, conf: Conf, data_dir: Path
) -> None:
    """The documented behaviour: the cache pins the subnets; removing it picks up new ones."""
    c = conf(annotation="x.io/net3")
    api.patch_node("n1", {"metadata": {"annotations": {"x.io/net3": "192.168.55.0/26"}}})
    assert invoke(c, "ADD", cid="a").json["ips"][0]["address"].startswith("192.168.55.")
    api.patch_node("n1", {"metadata": {"annotations": {"x.io/net3": "192.168.66.0/26"}}})
    assert invoke(c, "ADD", cid="b").json["ips"][0]["address"].startswith("192.168.55.")
    (data_dir / "net" / "kube-node.json").unlink()
    assert invoke(c, "ADD", cid="c").json["ips"][0]["address"].startswith("192.168.66.")


def test_node_annotation_from_the_api(api: ApiServerDouble, conf: Conf) -> None:
    ranges = [[{"subnet": "10.30.0.0/28"}]]
    api.patch_node("n1", {"metadata": {"annotations": {"x.io/r": json.dumps(ranges)}}})
    c = conf(plugin="node-annotation", annotation="x.io/r")
    out = invoke(c, "ADD", plugin="node-annotation", exe=True)
    assert out.rc == 0, out
    assert out.json["ips"] == [{"address": "10.30.0.2/28", "gateway": "10.30.0.1"}]


def test_exec_credentials_are_a_config_error_naming_the_file(
    api: ApiServerDouble, conf: Conf, tmp_path: Path, data_dir: Path
) -> None:
    """No fallback to another client: an unsupported kubeconfig is refused, saying which
    file and what in it."""
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "kind": "ExecCredential",
        "status": {"token": "s3cret"},
    }
    path = tmp_path / "exec-kubeconfig"
    doc = json.loads(Path(conf()["ipam"]["kubeconfig"]).read_text())
    doc["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "/bin/echo",
            "args": [json.dumps(credential)],
        }
    }
    path.write_text(json.dumps(doc))
    for exe in (False, True):
        err = invoke(conf(kubeconfig=str(path)), "ADD", exe=exe).error()
        assert err["code"] == 7
        assert str(path) in err["msg"] and "exec" in err["msg"]
        assert "not supported" in err["msg"]
    assert api.requests["get"] == 0
    assert not (data_dir / "net" / "kube-node.json").exists()


def test_duplicate_machine_id_is_refused(api: ApiServerDouble, conf: Conf) -> None:
    machine_id = Path("/etc/machine-id").read_text().strip()
    api.set_nodes(
        [
            make_node("a", index=3, images=0, machine_id=machine_id.upper()),
            make_node("b", index=4, images=0, machine_id=machine_id),
        ]
    )
    err = invoke(conf(nodeName=None), "ADD").error()
    # the daemon's own words (core.ownnode), whatever the case of the ids
    assert err["code"] == 101
    assert err["msg"] == several_nodes_message(machine_id, ["a", "b"])
    with pytest.raises(InputError, match=re.escape(err["msg"])):
        find_own(
            [NodeFacts("a", machine_id=machine_id.upper()), NodeFacts("b", machine_id=machine_id)],
            name=None,
            machine_id=machine_id,
        )


def test_nad_without_kubeconfig_uses_the_installed_one_and_its_node_name_file(
    api: ApiServerDouble, conf: Conf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster-wide NAD names neither kubeconfig nor node: the installer's files do."""
    from xcluster_cni_lib.plugin import resolve

    installed = tmp_path / "net.d" / "xcluster-cni-kubeconfig"
    installed.parent.mkdir()
    api.write_kubeconfig(installed)
    (installed.parent / "xcluster-cni-node-name").write_text("n2\n")
    monkeypatch.setattr(resolve, "DEFAULT_KUBECONFIG", str(installed))
    out = invoke(conf(kubeconfig=None, nodeName=None, annotation=None), "ADD")
    assert out.rc == 0, out
    assert out.json["ips"][0]["address"].startswith("10.244.2.")
