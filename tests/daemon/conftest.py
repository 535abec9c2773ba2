"""Fixtures of the daemon tests that run in a network namespace against the API double:
``ns`` (a namespace whose uplinks make 192.168.0.0/16, 172.20.0.0/16 and fd00::/64
connected), ``api`` (four realistic nodes) and ``kubeconfig`` (pointing at it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.apiserver import ApiServerDouble
from tests.daemon.harness import add_gateways
from xcluster_cni_lib.testing.nodes import make_node


@pytest.fixture
def ns(netns: str) -> str:
    add_gateways(netns)
    return netns


@pytest.fixture
def api() -> Iterator[ApiServerDouble]:
    with ApiServerDouble(bookmark_interval=0.5) as double:
        double.set_nodes(make_node(f"n{i}", index=i, images=2) for i in range(4))
        yield double


@pytest.fixture
def kubeconfig(api: ApiServerDouble, tmp_path: Any) -> str:
    return api.write_kubeconfig(tmp_path / "kubeconfig")
