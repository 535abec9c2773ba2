"""The host shim installed as kube-node and node-annotation (built once per session by
the ``plugins_dir`` fixture of ``tests/conftest.py``)."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import pytest

# the architecture the tests run the shim on directly (the other one runs under qemu)
NATIVE = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "amd64")


@pytest.fixture(scope="session")
def shim_dir(plugins_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the native shim installed as kube-node and node-annotation."""
    d = tmp_path_factory.mktemp("bin")
    for name in ("kube-node", "node-annotation"):
        shutil.copy2(plugins_dir / NATIVE / "xcluster-cni-shim", d / name)
    return d
