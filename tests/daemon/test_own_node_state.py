"""``daemon.ownnode.OwnNode``: the served IPAM's view of its own Node, persisted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xcluster_cni_lib.daemon.ownnode import NodesFileOwnNode, OwnNode
from xcluster_cni_lib.plugin.protocol import CniError
from xcluster_cni_lib.testing.nodes import make_node


def _node(name: str, rv: str, **annotations: str) -> dict[str, object]:
    node = make_node(name, index=1, images=0, annotations=annotations)
    node["metadata"]["resourceVersion"] = rv
    return node


def test_unknown_until_listed_then_persisted_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "state" / "own.json"
    own = OwnNode("n1", str(path))
    with pytest.raises(CniError) as e:
        own()
    assert e.value.code == 11 and "n1" in e.value.msg and "not listed yet" in e.value.msg
    own.set_healthy(False, "connection refused")
    with pytest.raises(CniError, match="connection refused"):
        own()
    own.replace_all([_node("n0", "1"), _node("n1", "2")])
    assert own()["metadata"]["resourceVersion"] == "2"
    own.upsert(_node("n2", "3"))  # another node's event: ignored
    own.upsert(_node("n1", "4", mark="x"))
    assert json.loads(path.read_text())["metadata"]["annotations"]["mark"] == "x"
    assert path.stat().st_mode & 0o777 == 0o600
    again = OwnNode("n1", str(path))  # a restart: serves before the API answers
    assert again()["metadata"]["resourceVersion"] == "4"
    again.delete("n1")
    assert not path.exists()
    with pytest.raises(CniError, match="deleted"):
        again()


def test_a_list_without_the_node_forgets_it(tmp_path: Path) -> None:
    own = OwnNode("n1", str(tmp_path / "own.json"))
    own.replace_all([_node("n1", "1")])
    own.replace_all([_node("n0", "2")])
    with pytest.raises(CniError, match="no such node"):
        own()


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", json.dumps(make_node("n9", images=0)).encode(), b"x" * (5 << 20)],
)
def test_a_bad_persisted_file_is_ignored_with_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "own.json"
    path.write_bytes(content)
    own = OwnNode("n1", str(path))
    assert not own.known
    assert any("persisted own node ignored" in r.getMessage() for r in caplog.records)


def test_nodes_file_lookup(tmp_path: Path) -> None:
    path = tmp_path / "nodes.json"
    path.write_text(json.dumps({"kind": "NodeList", "items": [make_node("n1", images=0)]}))
    assert NodesFileOwnNode(str(path), "n1", None)()["metadata"]["name"] == "n1"
    with pytest.raises(CniError) as e:
        NodesFileOwnNode(str(path), "n2", None)()
    assert e.value.code == 11 and "n2" in e.value.msg
    assert not NodesFileOwnNode(str(tmp_path / "missing.json"), "n1", None).known
