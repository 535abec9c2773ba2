"""The CNI verbs of kube-node with a nodes file and the real host-local: the checklist in
../shared/CNI-CHECKLIST.md, in-process and as the installed executable."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ipam._cni import cni_env, invoke, reserved, tree, write_nodes
from xcluster_cni_lib.plugin.verbs import run
from xcluster_cni_lib.testing.nodes import make_node

Conf = Callable[..., dict[str, Any]]
VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def test_version_with_empty_stdin(exe: bool) -> None:
    out = invoke(b"", "VERSION", exe=exe, cid="", ifname="", netns=None, path="")
    assert out.rc == 0
    assert out.json["supportedVersions"] == VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
def test_add_answers_in_the_config_version(
    conf: Conf, data_dir: Path, version: str, exe: bool
) -> None:
    out = invoke(conf(version=version), "ADD", exe=exe)
    assert out.rc == 0, out
    result = out.json
    assert result["cniVersion"] == version
    assert "interfaces" not in result
    addresses = [ip["address"] for ip in result["ips"]]
    assert addresses[0].startswith("10.244.1.") and addresses[0].endswith("/24")
    assert addresses[1].startswith("fd00:10:244:1::") and addresses[1].endswith("/64")
    assert [ip["gateway"] for ip in result["ips"]] == ["10.244.1.1", "fd00:10:244:1::1"]
    for ip in result["ips"]:
        assert "interface" not in ip
        if version.startswith("0."):
            assert ip["version"] == ("6" if ":" in ip["address"] else "4")
        else:
            assert "version" not in ip
    assert len(reserved(data_dir / "net")) == 2


def test_cache_is_written_and_used(conf: Conf, data_dir: Path, nodes_file: Path) -> None:
    assert invoke(conf(), "ADD", cid="a").rc == 0
    cache = json.loads((data_dir / "net" / "kube-node.json").read_text())
    assert cache["node"] == "n1"
    assert cache["ranges"] == [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]
    nodes_file.unlink()  # a hit does not read the node again
    out = invoke(conf(), "ADD", cid="b", exe=True)
    assert out.rc == 0, out
    assert len(reserved(data_dir / "net")) == 4


@pytest.mark.parametrize(
    "garbage",
    [b"", b"not json", b"[1, 2]", b'{"cniVersion": "1.0.0", "name": "net"'],
)
def test_garbage_stdin_is_code_6_and_writes_nothing(
    garbage: bytes, tmp_path: Path, exe: bool
) -> None:
    before = tree(tmp_path)
    out = invoke(garbage, "ADD", exe=exe)
    assert out.error()["code"] == 6
    assert tree(tmp_path) == before


def test_unknown_version_is_code_1(conf: Conf, data_dir: Path, exe: bool) -> None:
    out = invoke(conf(version="0.2.0"), "ADD", exe=exe)
    err = out.error()
    assert err["code"] == 1 and "1.1.0" in err["details"]
    assert not data_dir.exists()


@pytest.mark.parametrize(
    ("ipam", "key"),
    [
        ({"timeout": "soon"}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"ipv4-namespaces": "default"}, "ipv4-namespaces"),
        ({"routes": {"dst": "0.0.0.0/0"}}, "routes"),
        ({"dataDir": 5}, "dataDir"),
        ({"rangeStart": 7}, "rangeStart"),
        ({"rangeStart": "10.9.9.9"}, "rangeStart"),  # not in the node's subnet
        ({"rangeStart": "banana"}, "rangeStart"),
        ({"nodesFile": "/nonexistent/nodes.json"}, "nodesFile"),
    ],
)
def test_invalid_config_is_code_7_naming_the_key(
    conf: Conf, data_dir: Path, ipam: dict[str, Any], key: str
) -> None:
    err = invoke(conf(**ipam), "ADD").error()
    assert err["code"] == 7
    assert key in err["msg"]
    assert not data_dir.exists()


def test_missing_ipam_or_name_is_code_7(conf: Conf) -> None:
    c = conf()
    del c["ipam"]
    assert invoke(c, "ADD").error()["code"] == 7
    c = conf()
    c["name"] = "../escape"
    assert invoke(c, "ADD").error()["code"] == 7


def test_missing_env_is_code_4_naming_them(conf: Conf, data_dir: Path, exe: bool) -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0"}
    err = invoke(conf(), "ADD", env=env, exe=exe).error()
    assert err["code"] == 4
    for name in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_PATH"):
        assert name in err["msg"]
    assert not data_dir.exists()
    assert invoke(conf(), "ADD", env={}).error()["code"] == 4  # no CNI_COMMAND


def test_missing_host_local_is_a_clear_error_writing_nothing(
    conf: Conf, data_dir: Path, tmp_path: Path, exe: bool
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    err = invoke(conf(), "ADD", path=str(empty), exe=exe).error()
    assert err["code"] == 102 and "host-local" in err["msg"]
    assert not data_dir.exists()


@pytest.mark.parametrize(
    "args",
    [
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=x;"
        "K8S_POD_UID=u",
        "K8S_POD_UID=u;K8S_POD_NAME=a;K8S_POD_NAMESPACE=web;IgnoreUnknown=1",
        "IgnoreUnknown=true;K8S_POD_NAMESPACE=web;K8S_POD_NAME=a;MAC=02:00:00:00:00:01",
        "K8S_POD_NAMESPACE=web;K8S_POD_NAME=a",  # no IgnoreUnknown: we add it for host-local
        "",
    ],
)
def test_cni_args_of_every_runtime_work(conf: Conf, args: str, exe: bool) -> None:
    out = invoke(conf(), "ADD", args=args, exe=exe)
    assert out.rc == 0, out


@pytest.mark.parametrize(
    ("args", "families"),
    [
        ("IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=a", {4, 6}),
        ("IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=a", {6}),
        ("IgnoreUnknown=1", {4, 6}),  # no namespace passed: IPv4 too
    ],
)
def test_ipv4_namespaces(conf: Conf, args: str, families: set[int], exe: bool) -> None:
    c = conf(**{"ipv4-namespaces": ["kube-system", "infra"]})
    for cid in ("c1", "c2"):  # a miss, then a hit
        out = invoke(c, "ADD", args=args, cid=cid, exe=exe)
        assert out.rc == 0, out
        got = {6 if ":" in ip["address"] else 4 for ip in out.json["ips"]}
        assert got == families


def test_ipv4_namespaces_on_an_ipv4_only_node(conf: Conf, nodes_file: Path, data_dir: Path) -> None:
    write_nodes(nodes_file, [make_node("n1", pod_cidrs=["10.5.0.0/24"], images=0)])
    c = conf(**{"ipv4-namespaces": ["infra"]})
    err = invoke(c, "ADD", args="IgnoreUnknown=1;K8S_POD_NAMESPACE=web").error()
    assert err["code"] == 103 and "web" in err["msg"]
    assert reserved(data_dir / "net") == {}


def test_eth0_and_net1_of_one_container_are_distinct(conf: Conf, data_dir: Path) -> None:
    a = invoke(conf(), "ADD", ifname="eth0")
    b = invoke(conf(), "ADD", ifname="net1")
    assert a.rc == b.rc == 0
    assert not {ip["address"] for ip in a.json["ips"]} & {ip["address"] for ip in b.json["ips"]}
    assert invoke(conf(), "DEL", ifname="net1").rc == 0
    left = reserved(data_dir / "net")
    assert len(left) == 2 and all(v.endswith("eth0") for v in left.values())


def test_del_is_idempotent_and_needs_no_netns(conf: Conf, data_dir: Path, exe: bool) -> None:
    assert invoke(conf(), "ADD", exe=exe).rc == 0
    for _ in range(2):
        out = invoke(conf(), "DEL", netns=None, exe=exe)
        assert (out.rc, out.out) == (0, b"")
    assert invoke(conf(), "DEL", cid="never-seen", exe=exe).rc == 0
    assert reserved(data_dir / "net") == {}


def test_del_without_cache_or_node_releases_by_id(
    conf: Conf, data_dir: Path, nodes_file: Path, exe: bool
) -> None:
    assert invoke(conf(), "ADD", cid="keep").rc == 0
    assert invoke(conf(), "ADD", cid="gone").rc == 0
    (data_dir / "net" / "kube-node.json").unlink()
    nodes_file.unlink()  # the node is gone too
    out = invoke(conf(), "DEL", cid="gone", exe=exe)
    assert (out.rc, out.out) == (0, b"")
    assert {v.split("\r\n")[0] for v in reserved(data_dir / "net").values()} == {"keep"}
    assert (data_dir / "net" / "lock").exists()


def test_del_without_data_dir_at_all(conf: Conf, data_dir: Path) -> None:
    assert invoke(conf(), "DEL").rc == 0
    assert not data_dir.exists()


def test_check_after_add_and_after_del(conf: Conf, exe: bool) -> None:
    assert invoke(conf(), "ADD").rc == 0
    out = invoke(conf(), "CHECK", exe=exe)
    assert (out.rc, out.out) == (0, b"")
    assert invoke(conf(), "DEL").rc == 0
    assert invoke(conf(), "CHECK", exe=exe).error()


def test_check_without_cache_uses_the_data_dir(conf: Conf, data_dir: Path) -> None:
    assert invoke(conf(), "ADD").rc == 0
    (data_dir / "net" / "kube-node.json").unlink()
    assert invoke(conf(), "CHECK").rc == 0
    assert invoke(conf(), "CHECK", cid="other").error()["code"] == 3


def test_host_local_errors_are_one_error_object(conf: Conf, exe: bool) -> None:
    assert invoke(conf(), "ADD").rc == 0
    out = invoke(conf(), "ADD", exe=exe)  # the same (id, ifname) again
    err = out.error()
    assert "c1" in err["msg"]


# --- cache rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b'{"format": 1}',
        b'{"format": 1, "plugin": "kube-node", "node": "n1", "inputs": {}, "ranges": []}',
        json.dumps(
            {
                "format": 1,
                "plugin": "kube-node",
                "node": "n1",
                "inputs": {},
                "ranges": [[{"subnet": "10.1.2.3/24"}]],  # host bits set
            }
        ).encode(),
        b"\xff\xfe garbage",
    ],
)
def test_corrupt_cache_is_rebuilt_from_the_node(
    conf: Conf, data_dir: Path, content: bytes, exe: bool
) -> None:
    cache = data_dir / "net" / "kube-node.json"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(content)
    out = invoke(conf(logfile=str(data_dir / "log")), "ADD", exe=exe)
    assert out.rc == 0, out
    assert out.json["ips"][0]["address"].startswith("10.244.1.")
    assert json.loads(cache.read_text())["node"] == "n1"
    assert "ignoring" in (data_dir / "log").read_text()


def test_changed_config_rebuilds_the_cache(conf: Conf, data_dir: Path) -> None:
    assert invoke(conf(), "ADD", cid="a").rc == 0
    out = invoke(conf(rangeStart="10.244.1.100"), "ADD", cid="b")
    assert out.rc == 0, out
    assert out.json["ips"][0]["address"] == "10.244.1.100/24"
    cache = json.loads((data_dir / "net" / "kube-node.json").read_text())
    assert cache["inputs"]["rangeStart"] == ["10.244.1.100"]


def test_cache_of_another_node_is_not_used(conf: Conf, data_dir: Path) -> None:
    assert invoke(conf(), "ADD", cid="a").rc == 0
    out = invoke(conf(nodeName="n2"), "ADD", cid="b")
    assert out.json["ips"][0]["address"].startswith("10.244.2.")


def test_failed_delegation_after_a_miss_removes_the_cache(conf: Conf, data_dir: Path) -> None:
    # rangeStart == rangeEnd == the gateway: host-local has nothing to give.
    c = conf(rangeStart="10.244.1.1", rangeEnd="10.244.1.1")
    err = invoke(c, "ADD").error()
    assert err["cniVersion"] == "1.0.0"
    assert not (data_dir / "net" / "kube-node.json").exists()
    assert reserved(data_dir / "net") == {}


def test_per_family_keys_reach_host_local(conf: Conf) -> None:
    c = conf(
        rangeStart=["10.244.1.50", "fd00:10:244:1::50"],
        rangeEnd="10.244.1.60",
        gateway=["10.244.1.254"],
        routes=[{"dst": "0.0.0.0/0"}],
    )
    out = invoke(c, "ADD")
    assert out.rc == 0, out
    ips = out.json["ips"]
    assert ips[0] == {"address": "10.244.1.50/24", "gateway": "10.244.1.254"}
    assert ips[1]["address"] == "fd00:10:244:1::50/64"
    assert out.json["routes"] == [{"dst": "0.0.0.0/0"}]


def test_default_data_dir_holds_the_cache(conf: Conf, tmp_path: Path) -> None:
    """Without dataDir the cache lives in host-local's /var/lib/cni/networks/<name>."""
    name = f"xc-test-{tmp_path.name}"[:60]
    c = conf(name=name)
    del c["ipam"]["dataDir"]
    network_dir = Path("/var/lib/cni/networks") / name
    try:
        assert invoke(c, "ADD").rc == 0
        assert (network_dir / "kube-node.json").exists()
        assert len(reserved(network_dir)) == 2
        assert invoke(c, "DEL").rc == 0
        assert reserved(network_dir) == {}
    finally:
        for p in network_dir.glob("*"):
            p.unlink()
        if network_dir.exists():
            network_dir.rmdir()


# --- node problems ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "ipam", "code", "words"),
    [
        (make_node("n1", pod_cidrs=(), images=0), {}, 100, ["n1", "no pod CIDR"]),
        (make_node("n1", images=0), {"annotation": "x.io/net3"}, 100, ["n1", "x.io/net3"]),
        (
            make_node("n1", annotations={"x.io/net3": "10.0.0.0/24,10.1.0.0/24"}, images=0),
            {"annotation": "x.io/net3"},
            100,
            ["n1", "two IPv4", "10.1.0.0/24"],
        ),
        (
            make_node("n1", pod_cidrs=["10.0.0.0/33"], images=0),
            {},
            100,
            ["n1", "10.0.0.0/33"],
        ),
        (
            make_node("n1", pod_cidrs=["10.0.0.0/31"], images=0),
            {},
            100,
            ["n1", "too small"],
        ),
        (
            make_node("n1", annotations={"x.io/net3": "10.0.0.0/24,banana"}, images=0),
            {"annotation": "x.io/net3"},
            100,
            ["n1", "banana", "x.io/net3"],
        ),
        (make_node("n9", images=0), {}, 101, ["n1", "not found"]),
    ],
)
def test_unusable_node_is_a_clear_error(
    conf: Conf,
    nodes_file: Path,
    data_dir: Path,
    node: dict[str, Any],
    ipam: dict[str, Any],
    code: int,
    words: list[str],
) -> None:
    write_nodes(nodes_file, [node])
    err = invoke(conf(**ipam), "ADD").error()
    assert err["code"] == code
    text = err["msg"] + " " + err.get("details", "")
    for word in words:
        assert word in text
    assert not data_dir.exists()


def test_ipv4_mapped_subnet_counts_as_ipv4(conf: Conf, nodes_file: Path) -> None:
    node = make_node("n1", annotations={"x.io/n": "::ffff:10.7.0.0/120,fd00:7::/64"}, images=0)
    write_nodes(nodes_file, [node])
    out = invoke(conf(annotation="x.io/n"), "ADD")
    assert out.rc == 0, out
    assert out.json["ips"][0]["address"].startswith("10.7.0.")


# --- own node -----------------------------------------------------------------------------


def test_node_name_from_env(conf: Conf) -> None:
    c = conf(nodeName=None)
    out = invoke(c, "ADD", NODE_NAME="n2")
    assert out.json["ips"][0]["address"].startswith("10.244.2.")


def test_node_name_file_beside_the_kubeconfig(conf: Conf, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kube" / "kubeconfig"
    kubeconfig.parent.mkdir()
    kubeconfig.write_text("{}")
    (kubeconfig.parent / "xcluster-cni-node-name").write_text("n2\n")
    out = invoke(conf(nodeName=None, kubeconfig=str(kubeconfig)), "ADD")
    assert out.json["ips"][0]["address"].startswith("10.244.2.")
    # the config key wins over the env, which wins over the file
    out = invoke(conf(kubeconfig=str(kubeconfig), name="b"), "ADD", NODE_NAME="n2")
    assert out.json["ips"][0]["address"].startswith("10.244.1.")


def test_node_by_machine_id(conf: Conf, nodes_file: Path) -> None:
    machine_id = Path("/etc/machine-id").read_text().strip()
    write_nodes(
        nodes_file,
        [make_node("a", index=3, images=0), make_node("me", index=4, machine_id=machine_id)],
    )
    out = invoke(conf(nodeName=None), "ADD")
    assert out.rc == 0, out
    assert out.json["ips"][0]["address"].startswith("10.244.4.")


# --- node-annotation ------------------------------------------------------------------------


RANGES = {
    "ranges": [
        [{"subnet": "10.9.0.0/24", "rangeStart": "10.9.0.10", "rangeEnd": "10.9.0.20"}],
        [{"subnet": "fd00:9::/64"}],
    ]
}


@pytest.mark.parametrize("value", [RANGES, RANGES["ranges"]], ids=["object", "bare-list"])
def test_node_annotation_delegates_the_annotated_ranges(
    conf: Conf, nodes_file: Path, data_dir: Path, value: object, exe: bool
) -> None:
    node = make_node("n1", annotations={"x.io/ranges": json.dumps(value)}, images=0)
    write_nodes(nodes_file, [node])
    c = conf(plugin="node-annotation", annotation="x.io/ranges")
    out = invoke(c, "ADD", plugin="node-annotation", exe=exe)
    assert out.rc == 0, out
    assert [ip["address"] for ip in out.json["ips"]] == ["10.9.0.10/24", "fd00:9::2/64"]
    assert (data_dir / "net" / "node-annotation.json").exists()
    assert invoke(c, "DEL", plugin="node-annotation", exe=exe).rc == 0
    assert reserved(data_dir / "net") == {}


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        '{"ranges": "10.0.0.0/24"}',
        '[[{"subnet": "10.0.0.0/33"}]]',
        '[[{"subnet": "10.0.0.0/24", "rangeStart": "10.1.0.1"}]]',
        '[[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/24"}]]',
        '[[{"subnet": "10.0.0.0/24", "bogus": "1"}]]',
        '[[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]',
        "[]",
    ],
)
def test_malformed_annotation_is_a_clear_error(
    conf: Conf, nodes_file: Path, data_dir: Path, value: str
) -> None:
    write_nodes(nodes_file, [make_node("n1", annotations={"x.io/ranges": value}, images=0)])
    c = conf(plugin="node-annotation", annotation="x.io/ranges")
    err = invoke(c, "ADD", plugin="node-annotation").error()
    assert err["code"] == 100
    assert "n1" in err["msg"] and "x.io/ranges" in err["msg"]
    assert not data_dir.exists()


def test_node_annotation_needs_an_annotation_key(conf: Conf) -> None:
    err = invoke(conf(plugin="node-annotation"), "ADD", plugin="node-annotation").error()
    assert err["code"] == 7 and "annotation" in err["msg"]
    c = conf(plugin="node-annotation", annotation="a", rangeStart="10.0.0.1")
    assert invoke(c, "ADD", plugin="node-annotation").error()["code"] == 2


# --- GC / STATUS -----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_releases_what_is_not_listed(conf: Conf, data_dir: Path, key: str, exe: bool) -> None:
    for cid in ("keep", "drop"):
        assert invoke(conf(), "ADD", cid=cid).rc == 0
    assert invoke(conf(), "ADD", cid="keep", ifname="net1").rc == 0
    c = conf(version="1.1.0")
    c[key] = [{"containerID": "keep", "ifname": "eth0"}]
    out = invoke(c, "GC", exe=exe, cid="", ifname="", netns=None)
    assert (out.rc, out.out) == (0, b"")
    left = reserved(data_dir / "net")
    assert sorted(left.values()) == ["keep\r\neth0", "keep\r\neth0"]
    names = {p.name for p in (data_dir / "net").iterdir()}
    assert {"lock", "last_reserved_ip.0", "last_reserved_ip.1", "kube-node.json"} <= names


def test_gc_without_attachments_is_refused(conf: Conf, data_dir: Path) -> None:
    assert invoke(conf(), "ADD").rc == 0
    assert invoke(conf(version="1.1.0"), "GC").error()["code"] == 7
    assert len(reserved(data_dir / "net")) == 2


def test_status(conf: Conf, nodes_file: Path, data_dir: Path, exe: bool) -> None:
    small = conf(version="1.1.0", rangeStart="10.244.1.10", rangeEnd="10.244.1.11")
    out = invoke(small, "STATUS", exe=exe, cid="", ifname="", netns=None)
    assert (out.rc, out.out) == (0, b"")  # known from the node, nothing used
    assert invoke(small, "ADD", cid="a").rc == 0
    assert invoke(small, "STATUS").rc == 0  # from the cache, one left
    assert invoke(small, "ADD", cid="b").rc == 0
    err = invoke(small, "STATUS", exe=exe).error()
    assert err["code"] == 50 and "10.244.1.0/24" in err["msg"]
    assert invoke(small, "DEL", cid="b").rc == 0
    assert invoke(small, "STATUS").rc == 0
    (data_dir / "net" / "kube-node.json").unlink()
    nodes_file.unlink()
    err = invoke(small, "STATUS").error()
    assert err["code"] == 50 and "nodesFile" in err["msg"]


def test_logs_go_to_the_logfile_not_stdout(conf: Conf, data_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "plugin.log"
    out = invoke(conf(logfile=str(log), loglevel="debug"), "ADD", exe=True)
    assert out.rc == 0
    assert json.loads(out.out)  # stdout is exactly the result
    assert "cache miss" in log.read_text()
    assert out.err == b""


def test_del_releases_reservations_a_killed_host_local_left_empty(
    conf: Conf, data_dir: Path
) -> None:
    assert invoke(conf(), "ADD", cid="live").rc == 0
    orphan = data_dir / "net" / "10.244.1.77"
    orphan.write_bytes(b"")  # created, then killed before writing the id
    assert invoke(conf(), "DEL", cid="someone-else").rc == 0
    assert not orphan.exists()
    assert len(reserved(data_dir / "net")) == 2  # the live ones stay
    assert (data_dir / "net" / "lock").exists()


def test_del_with_cache_but_no_host_local_releases_directly(
    conf: Conf, data_dir: Path, tmp_path: Path
) -> None:
    assert invoke(conf(), "ADD").rc == 0
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    out = invoke(conf(), "DEL", path=str(empty), exe=True)
    assert (out.rc, out.out) == (0, b"")
    assert reserved(data_dir / "net") == {}


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1"])
def test_check_is_not_defined_before_0_4_0(conf: Conf, version: str) -> None:
    assert invoke(conf(version=version), "ADD").rc == 0
    assert invoke(conf(version=version), "CHECK").error()["code"] == 1


def test_result_for_1_1_0_comes_through_host_local_1_0_0(conf: Conf, exe: bool) -> None:
    """Debian's host-local speaks up to 1.0.0; a 1.1.0 config still gets a 1.1.0 result,
    and CHECK/DEL work too."""
    c = conf(version="1.1.0")
    out = invoke(c, "ADD", exe=exe)
    assert out.rc == 0, out
    assert out.json["cniVersion"] == "1.1.0"
    assert invoke(c, "CHECK", exe=exe).rc == 0
    assert invoke(c, "DEL", exe=exe).rc == 0


class _FailingFirstWrite(io.BytesIO):
    """A stdout that breaks when the result is written (the runtime went away)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def write(self, data: Any) -> int:
        if not self.failed:
            self.failed = True
            raise BrokenPipeError("stdout closed")
        return super().write(data)


@pytest.mark.parametrize("cached", [False, True])
def test_failure_after_a_delegated_add_releases_the_address(
    conf: Conf, data_dir: Path, cached: bool
) -> None:
    if cached:
        assert invoke(conf(), "ADD", cid="warm").rc == 0
    out = _FailingFirstWrite()
    rc = run(
        "kube-node", env=cni_env("ADD", cid="x"), stdin=json.dumps(conf()).encode(), stdout=out
    )
    assert rc != 0
    assert json.loads(out.getvalue())["code"] == 104
    assert not [v for v in reserved(data_dir / "net").values() if v.startswith("x\r\n")]
