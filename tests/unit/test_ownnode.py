"""Finding this node: by name, else by machine id; reading /etc/machine-id."""

from __future__ import annotations

from pathlib import Path

import pytest

from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.core.ownnode import (
    find_own,
    find_own_object,
    machine_id_key,
    resolve_own,
    several_nodes_message,
)
from xcluster_cni_lib.core.values import NodeFacts, NodeNetwork
from xcluster_cni_lib.support.hostinfo import read_machine_id

NODES = [
    NodeFacts("a", machine_id="aaaa0000aaaa0000aaaa0000aaaa0000"),
    NodeFacts("b", machine_id="bbbb0000bbbb0000bbbb0000bbbb0000"),
    NodeFacts("c"),
]


def test_by_name() -> None:
    assert find_own(NODES, name="b", machine_id=None) is NODES[1]
    assert find_own(NODES, name="zz", machine_id=None) is None


def test_name_wins_over_machine_id() -> None:
    assert find_own(NODES, name="a", machine_id="bbbb0000bbbb0000bbbb0000bbbb0000") is NODES[0]
    # a name that is not there does not fall back to the machine id
    assert find_own(NODES, name="zz", machine_id="bbbb0000bbbb0000bbbb0000bbbb0000") is None


def test_by_machine_id_tolerates_whitespace_and_case() -> None:
    assert find_own(NODES, name=None, machine_id="bbbb0000bbbb0000bbbb0000bbbb0000\n") is NODES[1]
    assert find_own(NODES, name="", machine_id=" BBBB0000BBBB0000BBBB0000BBBB0000") is NODES[1]
    assert find_own(NODES, name=None, machine_id="ffff") is None
    assert find_own(NODES, name=None, machine_id=None) is None
    assert find_own(NODES, name=None, machine_id="  ") is None  # never matches c's None


def test_works_on_networks_too() -> None:
    nets = [NodeNetwork("a", machine_id="m1"), NodeNetwork("b", machine_id="m2")]
    assert find_own(nets, name=None, machine_id="m2") is nets[1]


def test_cloned_machine_id_is_an_error() -> None:
    clones = [NodeFacts("x", machine_id="same"), NodeFacts("y", machine_id="same")]
    with pytest.raises(InputError, match=r"machine id same belongs to several nodes \(x, y\)"):
        find_own(clones, name=None, machine_id="same")
    assert find_own(clones, name="y", machine_id="same") is clones[1]  # a name settles it


def test_resolve_own() -> None:
    assert resolve_own(NODES, name="a", machine_id=None) == ("a", None)
    assert resolve_own(NODES, name=None, machine_id="aaaa0000aaaa0000aaaa0000aaaa0000") == (
        "a",
        None,
    )
    # an unknown name is still excluded (it may join later) but reported
    own, warning = resolve_own(NODES, name="later", machine_id=None)
    assert own == "later" and warning and "later" in warning
    own, warning = resolve_own(NODES, name=None, machine_id="ffff")
    assert own is None and warning and "ffff" in warning and "every node" in warning
    own, warning = resolve_own(iter(NODES), name=None, machine_id=None)
    assert own is None and warning and "every node" in warning


def test_read_machine_id(tmp_path: Path) -> None:
    f = tmp_path / "machine-id"
    f.write_text("9f2c61d04b6e4c1f8a3b5d7e0c2f4a68\n")
    assert read_machine_id(str(f)) == "9f2c61d04b6e4c1f8a3b5d7e0c2f4a68"
    f.write_text("\n")
    assert read_machine_id(str(f)) is None
    assert read_machine_id(str(tmp_path / "missing")) is None
    assert read_machine_id(str(tmp_path)) is None  # a directory: unreadable


def test_node_objects_by_the_same_rule() -> None:
    """The IPAM plugins search Node dicts (streamed) with the daemon's rule."""
    objects = [
        {"metadata": {"name": "a"}, "status": {"nodeInfo": {"machineID": "AAAA\n"}}},
        {"metadata": {"name": "b"}, "status": {"nodeInfo": {"machineID": "bbbb"}}},
        {"metadata": {"name": "c"}},
        {"status": "garbage"},
    ]
    assert find_own_object(iter(objects), name="b", machine_id="aaaa") is objects[1]
    assert find_own_object(iter(objects), name=None, machine_id=" aaaa") is objects[0]
    assert find_own_object(iter(objects), name=None, machine_id="cccc") is None
    assert find_own_object(iter(objects), name="zz", machine_id="aaaa") is None
    clones = [*objects, {"metadata": {"name": "a2"}, "status": {"nodeInfo": {"machineID": "aaaa"}}}]
    with pytest.raises(InputError) as caught:
        find_own_object(iter(clones), name=None, machine_id="AAAA")
    assert str(caught.value) == several_nodes_message("aaaa", ["a", "a2"])
    assert (
        str(caught.value) == "machine id aaaa belongs to several nodes (a, a2); set the node name"
    )


def test_machine_id_key() -> None:
    assert machine_id_key(" ABC\n") == "abc"
    assert machine_id_key(None) == machine_id_key("") == ""
