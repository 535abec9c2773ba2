"""Builds the host shim with `make plugins` into a temporary directory, once per session."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# the architecture the tests run the shim on directly (the other one runs under qemu)
NATIVE = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "amd64")


@pytest.fixture(scope="session")
def plugins_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """build/plugins layout (<arch>/xcluster-cni-shim), built from this checkout."""
    if shutil.which("make") is None:
        pytest.fail("make is needed to build the shim")
    out = tmp_path_factory.mktemp("plugins")
    subprocess.run(
        ["make", "-s", "-C", str(REPO), "plugins", f"PLUGINS_OUT={out}"],
        check=True,
        timeout=300,
    )
    return out


@pytest.fixture(scope="session")
def shim_dir(plugins_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the native shim installed as kube-node and node-annotation."""
    d = tmp_path_factory.mktemp("bin")
    for name in ("kube-node", "node-annotation"):
        shutil.copy2(plugins_dir / NATIVE / "xcluster-cni-shim", d / name)
    return d
