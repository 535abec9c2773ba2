"""The examples in docs/library.md run as documented."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

from xcluster_cni_lib.testing.nodes import make_node

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "library.md")


def blocks() -> list[str]:
    with open(DOC, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_the_overlay_sketch_runs_on_a_nodes_file(tmp_path: Any) -> None:
    script = os.path.join(tmp_path, "overlay_sketch.py")
    with open(script, "w") as f:
        f.write(blocks()[0])
    nodes = os.path.join(tmp_path, "nodes.json")
    with open(nodes, "w") as f:
        json.dump({"items": [make_node(f"n{i}", index=i, images=1) for i in range(3)]}, f)
    proc = subprocess.run(
        [sys.executable, script, nodes, "--once", "--node-name", "n0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "fdb: n1 dst 192.168.0.2; n2 dst 192.168.0.3" in proc.stdout
    assert "routes: +4 ~0 -0" in proc.stdout


def test_the_fakes_example_runs() -> None:
    exec(compile(blocks()[1], "library.md", "exec"), {})
