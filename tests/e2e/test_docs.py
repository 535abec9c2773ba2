"""The library example in docs/lab.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

from xcluster_cni_lib.lab.shell import list_netns

DOC = Path(__file__).resolve().parents[2] / "docs" / "lab.md"


def _labs() -> set[str]:
    return {n for n in list_netns() if n.startswith("xcl-")}


def test_library_example_in_docs_runs() -> None:
    block = re.search(r"## Library\n+```python\n(.*?)```", DOC.read_text(), re.S)
    assert block, f"no library example in {DOC}"
    before = _labs()

    exec(compile(block.group(1), str(DOC), "exec"), {})

    assert _labs() <= before  # everything it made is gone
