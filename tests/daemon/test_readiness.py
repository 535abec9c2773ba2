"""/readyz means something: not ready while a route this instance is responsible for is
held by another protocol (a conflict) or cannot be written, naming them; ready once every
route is in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.daemon.harness import http_get, running_daemon, wait_for
from xcluster_cni_lib.testing.netns import run_in
from xcluster_cni_lib.testing.nodes import default_pod_cidrs, make_node

pytestmark = pytest.mark.root


def test_readyz_is_not_ready_while_routes_are_in_conflict(ns: str, tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.json"
    items = [make_node(f"n{i}", index=i, images=0) for i in range(3)]
    nodes.write_text(json.dumps({"kind": "NodeList", "items": items}))
    held = default_pod_cidrs(2)[0]  # n2's IPv4 pod CIDR, taken by another program
    run_in(ns, ["ip", "route", "add", held, "via", "192.168.255.1", "proto", "static"])
    settings = {"NODES_FILE": str(nodes), "NODE_NAME": "n0", "HTTP_ADDRESS": "127.0.0.1:0"}
    with running_daemon(ns, **settings) as daemon:

        def status() -> tuple[int, str]:
            return http_get(daemon, "/readyz")

        wait_for(lambda: "routes not in place" in status()[1], timeout=10, what="conflict")
        code, text = status()
        assert code == 503
        assert f"1 routes not in place: {held}: conflict" in text
        assert "held by a route of protocol 4 (static)" in text
        run_in(ns, ["ip", "route", "del", held, "proto", "static"])
        wait_for(lambda: status()[0] == 200, timeout=10, what="ready once the route is ours")
