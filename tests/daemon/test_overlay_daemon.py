"""The daemon with OVERLAY=vxlan in a namespace: its routes go through the device, and a
device deleted by hand is back with every route through it within a second."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.daemon.harness import running_daemon, wait_for
from xcluster_cni_lib.testing.netns import run_in
from xcluster_cni_lib.testing.nodes import make_node

pytestmark = pytest.mark.root

DEV = "xcvx202"


def _overlay_routes(ns: str) -> int:
    count = 0
    for family in ("-4", "-6"):
        argv = ["ip", "-j", family, "route", "show", "proto", "202", "dev", DEV]
        text = run_in(ns, argv, check=False)  # empty while the device is not there
        count += len(json.loads(text or "[]"))
    return count


def test_a_deleted_device_is_back_with_its_routes_within_a_second(ns: str, tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.json"
    items = [make_node(f"n{i}", index=i, images=0) for i in range(40)]
    nodes.write_text(json.dumps({"kind": "NodeList", "items": items}))
    run_in(ns, ["ip", "addr", "add", "192.168.0.1/32", "dev", "gw0"])  # n0's underlay
    settings = {"NODES_FILE": str(nodes), "NODE_NAME": "n0", "OVERLAY": "vxlan"}
    with running_daemon(ns, **settings):
        wait_for(lambda: _overlay_routes(ns) == 78, timeout=10, what="39 nodes x 2 routes")
        for _ in range(3):
            t0 = time.monotonic()
            run_in(ns, ["ip", "link", "del", DEV])
            wait_for(lambda: _overlay_routes(ns) == 78, timeout=5, what="routes back")
            assert time.monotonic() - t0 < 1.0
