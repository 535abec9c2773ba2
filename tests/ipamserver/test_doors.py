"""The CNI protocol suite through both front doors: the standalone executable
(``.venv/bin/kube-node``, ``node-annotation``) and the agent's socket server. One set of
tests, the same expectations; where results are deterministic the two doors' stdout and
exit codes are compared byte for byte."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ipam._cni import Outcome, reserved, write_nodes
from tests.ipamserver.conftest import Door, make_door
from xcluster_cni_lib.daemon.ipamserver import IpamServer
from xcluster_cni_lib.testing.nodes import make_node

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
PLUGINS = ["kube-node", "node-annotation"]
RANGES = [
    [{"subnet": "10.9.0.0/24", "rangeStart": "10.9.0.10", "rangeEnd": "10.9.0.20"}],
    [{"subnet": "fd00:9::/64"}],
]
EXPECTED = {  # first addresses handed out
    "kube-node": ["10.244.1.2/24", "fd00:10:244:1::2/64"],
    "node-annotation": ["10.9.0.10/24", "fd00:9::2/64"],
}
Conf = Callable[..., dict[str, Any]]


@pytest.fixture
def pconf(conf: Conf, nodes_file: Path) -> Callable[..., dict[str, Any]]:
    """A config for either plugin type (node-annotation: ranges from an annotation)."""
    node = make_node("n1", index=1, images=2, annotations={"x.io/ranges": json.dumps(RANGES)})
    write_nodes(nodes_file, [node])

    def make(plugin: str, **kw: Any) -> dict[str, Any]:
        if plugin == "node-annotation":
            kw.setdefault("annotation", "x.io/ranges")
        return conf(plugin=plugin, **kw)

    return make


@pytest.fixture
def doors(server: IpamServer) -> dict[str, Door]:
    """Both front doors, to compare their answers to the same calls."""
    return {kind: make_door(kind, server.path) for kind in ("exe", "socket")}


def _normal(out: Outcome) -> tuple[int, Any]:
    """Exit code and parsed stdout, without the two differences the standalone's fast
    path makes (on a cache hit it *becomes* host-local, ``allow_exec``, which the server
    never does): host-local prints an empty ``"dns": {}`` and its error objects have no
    ``cniVersion``. Everything else must be equal."""
    if not out.out:
        return out.rc, None
    doc = json.loads(out.out)
    if isinstance(doc, dict):
        if doc.get("dns") == {}:
            del doc["dns"]
        if "code" in doc:
            doc.pop("cniVersion", None)
    return out.rc, doc


def _same(a: Outcome, b: Outcome) -> None:
    assert _normal(a) == _normal(b), (a, b)


# --- one suite, each door -----------------------------------------------------------------


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_cycle(
    door: Door, pconf: Conf, data_dir: Path, plugin: str, version: str
) -> None:
    c = pconf(plugin, version=version)
    out = door(c, "ADD", plugin=plugin)
    assert out.rc == 0, out
    result = out.json
    assert result["cniVersion"] == version
    assert [ip["address"] for ip in result["ips"]] == EXPECTED[plugin]
    for ip in result["ips"]:
        assert ("version" in ip) == version.startswith("0.")
    assert len(reserved(data_dir / "net")) == 2
    check = door(c, "CHECK", plugin=plugin)
    if version in ("0.3.0", "0.3.1"):
        err = check.error()
        assert err["cniVersion"] == version and "CHECK" in err["msg"]
    else:
        assert (check.rc, check.out) == (0, b""), check
    for _ in range(2):  # DEL is idempotent
        gone = door(c, "DEL", plugin=plugin, netns=None)
        assert (gone.rc, gone.out) == (0, b""), gone
    assert reserved(data_dir / "net") == {}
    if version not in ("0.3.0", "0.3.1"):
        err = door(c, "CHECK", plugin=plugin).error()
        assert "c1" in err["msg"]  # nothing reserved for it


@pytest.mark.parametrize("plugin", PLUGINS)
def test_version(door: Door, plugin: str) -> None:
    out = door(b"", "VERSION", plugin=plugin, cid="", ifname="", netns=None, path="")
    assert out.rc == 0, out
    assert out.json == {"cniVersion": "1.1.0", "supportedVersions": VERSIONS}
    out = door(b'{"cniVersion": "0.4.0"}', "VERSION", plugin=plugin)
    assert out.json["cniVersion"] == "0.4.0"


@pytest.mark.parametrize("plugin", PLUGINS)
def test_gc_and_status(door: Door, pconf: Conf, data_dir: Path, plugin: str) -> None:
    c = pconf(plugin, version="1.1.0")
    for cid in ("keep", "drop"):
        assert door(c, "ADD", plugin=plugin, cid=cid).rc == 0
    status = door(c, "STATUS", plugin=plugin, cid="", ifname="", netns=None)
    assert (status.rc, status.out) == (0, b""), status
    gc = dict(c, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    out = door(gc, "GC", plugin=plugin, cid="", ifname="", netns=None)
    assert (out.rc, out.out) == (0, b""), out
    assert sorted(reserved(data_dir / "net").values()) == ["keep\r\neth0"] * 2
    assert door(c, "GC", plugin=plugin).error()["code"] == 7


@pytest.mark.parametrize(
    ("stdin", "code"),
    [
        (b"not json", 6),
        (b"[1]", 6),
        (b'{"cniVersion": "9.9.9", "name": "n", "ipam": {"type": "kube-node"}}', 1),
        (b'{"cniVersion": "1.0.0", "name": "n"}', 7),
    ],
)
def test_bad_configs(door: Door, data_dir: Path, stdin: bytes, code: int) -> None:
    assert door(stdin, "ADD").error()["code"] == code
    assert not data_dir.exists()


def test_missing_env_and_missing_host_local(door: Door, pconf: Conf, data_dir: Path) -> None:
    c = pconf("kube-node")
    err = door(c, "ADD", env={"CNI_COMMAND": "ADD"}).error()
    assert err["code"] == 4 and "CNI_CONTAINERID" in err["msg"]
    err = door(c, "ADD", path="/nonexistent").error()
    assert "host-local" in err["msg"]
    assert reserved(data_dir / "net") == {}


# --- the two doors side by side -----------------------------------------------------------


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("version", VERSIONS)
def test_doors_answer_identically(
    doors: dict[str, Door], pconf: Conf, tmp_path: Path, plugin: str, version: str
) -> None:
    """ADD/CHECK/DEL/STATUS/VERSION and errors on two separate data directories: the
        same exit codes and results from both doors (byte for byte where the standalone does
    not hand over to host-local)."""
    calls: list[tuple[str, dict[str, Any]]] = [
        ("VERSION", {"cid": "", "ifname": "", "netns": None, "path": ""}),
        ("ADD", {}),
        ("ADD", {"cid": "c2", "ifname": "net1"}),
        ("CHECK", {}),
        ("STATUS", {"cid": "", "ifname": "", "netns": None}),
        ("DEL", {"netns": None}),
        ("DEL", {"netns": None}),
        ("CHECK", {}),
        ("ADD", {"path": "/nonexistent"}),
        ("ADD", {"args": "K8S_POD_NAMESPACE=web;junk"}),
    ]
    answers: dict[str, list[Outcome]] = {}
    for kind, door in doors.items():
        c = pconf(plugin, version=version, dataDir=str(tmp_path / kind))
        answers[kind] = [door(c, command, plugin=plugin, **kw) for command, kw in calls]
    for (command, _), a, b in zip(calls, answers["exe"], answers["socket"], strict=True):
        assert (command, *_normal(a)) == (command, *_normal(b)), (a, b)
        if not (command in ("ADD", "CHECK") and a.rc == b.rc):  # no fast path: byte-equal
            assert (a.rc, a.out) == (b.rc, b.out), (a, b)


def test_bad_input_answers_identically(doors: dict[str, Door]) -> None:
    for stdin in (b"", b"{", b'{"cniVersion": "0.1.0"}', b'{"cniVersion": 1}'):
        for command in ("ADD", "DEL", "CHECK", "GC", "STATUS", "BOGUS"):
            _same(doors["exe"](stdin, command), doors["socket"](stdin, command))
