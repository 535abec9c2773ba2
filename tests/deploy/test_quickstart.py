"""The quick start is true: the `sed` commands of the README's "In a cluster" steps and of
docs/install.md's "Install" steps, run on a copy of deploy/xcluster-cni.yaml, point every
container at the pushed image and set CLUSTER_CIDRS in both containers, and the result is
still valid; the image they name is the one the manifests name; `make image` takes IMAGE."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from xcluster_cni_lib.install import plan

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "xcluster-cni.yaml"
PUSHED = "registry.example.com/xcluster-cni:0.1.0"
PUBLISHED = "ghcr.io/xcluster-cni/xcluster-cni:0.1.0"


def _section(path: Path, heading: str) -> str:
    text = path.read_text()
    start = text.index(heading)
    level = heading.split(" ")[0]
    rest = text[start + len(heading) :]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def _sed_commands(section: str) -> list[list[str]]:
    """The `sed -i ... deploy/xcluster-cni.yaml` commands of a section's code blocks
    (continuation lines joined), as argument lists."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("sed -i"):
                commands.append(shlex.split(line))
    return commands


def _daemonset(path: Path) -> dict[str, Any]:
    (ds,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "DaemonSet"]
    return ds


@pytest.mark.parametrize(
    ("doc", "heading"),
    [("README.md", "### In a cluster"), ("docs/install.md", "## Install")],
)
def test_the_quick_start_edits_give_a_valid_manifest_with_your_image(
    doc: str, heading: str, tmp_path: Path
) -> None:
    if shutil.which("sed") is None:
        pytest.skip("no sed")
    section = _section(REPO / doc, heading)
    commands = _sed_commands(section)
    assert len(commands) == 2, commands  # the image, CLUSTER_CIDRS
    copy = tmp_path / "deploy" / "xcluster-cni.yaml"
    copy.parent.mkdir()
    shutil.copy(MANIFEST, copy)
    for argv in commands:
        assert argv[-1] == "deploy/xcluster-cni.yaml"
        subprocess.run(argv, cwd=tmp_path, check=True, timeout=30)
    ds = _daemonset(copy)
    kubernetes_validate.validate(ds, "1.30", strict=True)
    spec = ds["spec"]["template"]["spec"]
    assert {c["image"] for c in spec["containers"] + spec["initContainers"]} == {PUSHED}
    values = [
        e["value"]
        for c in spec["containers"] + spec["initContainers"]
        for e in c["env"]
        if e["name"] == "CLUSTER_CIDRS"
    ]
    assert len(values) == 2 and len(set(values)) == 1
    assert plan.parse_cluster_cidrs("CLUSTER_CIDRS", values[0])
    # the push goes where the manifest now points, and make image builds that name
    assert f"make image IMAGE={PUSHED}" in section
    assert f"push {PUSHED}" in section
    assert PUBLISHED in section


def test_the_published_image_is_what_the_manifest_names() -> None:
    spec = _daemonset(MANIFEST)["spec"]["template"]["spec"]
    assert {c["image"] for c in spec["containers"] + spec["initContainers"]} == {PUBLISHED}


def test_make_image_takes_the_image_name() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^IMAGE \?= ", makefile, re.MULTILINE)
    assert "build -t $(IMAGE)" in makefile
