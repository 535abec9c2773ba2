"""Fixtures for the IPAM plugin tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ipam._cni import netconf, write_nodes
from xcluster_cni_lib.testing.nodes import make_node


@pytest.fixture(params=[False, True], ids=["inproc", "exe"])
def exe(request: pytest.FixtureRequest) -> bool:
    """Run the plugin in-process and as the installed executable."""
    return bool(request.param)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def nodes_file(tmp_path: Path) -> Path:
    """n1 (index 1: 10.244.1.0/24, fd00:10:244:1::/64) and n2."""
    path = tmp_path / "nodes.json"
    write_nodes(path, [make_node("n1", index=1, images=2), make_node("n2", index=2, images=2)])
    return path


@pytest.fixture
def conf(data_dir: Path, nodes_file: Path) -> Callable[..., dict[str, Any]]:
    """A network config for node n1 from the nodes file; keywords override ipam keys."""

    def make(**ipam: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"nodesFile": str(nodes_file), "nodeName": "n1"}
        version = ipam.pop("version", "1.0.0")
        name = ipam.pop("name", "net")
        plugin = ipam.pop("plugin", "kube-node")
        base.update(ipam)
        return netconf(
            data_dir,
            version=version,
            name=name,
            plugin=plugin,
            **{k: v for k, v in base.items() if v is not None},
        )

    return make
