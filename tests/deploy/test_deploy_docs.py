"""The deployment pages link to files and headings that exist (GitHub's anchors), and
every path under deploy/ or .github/ they name in backquotes is there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [
    "README.md",
    "docs/install.md",
    "docs/monitoring.md",
    "docs/comparison.md",
    "docs/faq.md",
]


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for line in path.read_text().splitlines():
        m = re.match(r"#{1,6} (.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


@pytest.mark.parametrize("page", PAGES)
def test_links_resolve(page: str) -> None:
    path = REPO / page
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # an outside address
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{page}: {target}: no such file"
        if anchor:
            assert anchor in _anchors(dest), f"{page}: {target}: no such heading"


@pytest.mark.parametrize("page", PAGES)
def test_named_deploy_paths_exist(page: str) -> None:
    text = (REPO / page).read_text()
    for name in re.findall(r"`((?:deploy|\.github)/[^`\s*<>]+)`", text):
        if "my-cluster" in name:
            continue  # the reader's own copy
        assert (REPO / name.rstrip("/")).exists(), f"{page}: {name}"
