"""Shared fixtures. Kernel tests get throwaway namespaces from ``netns``."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from xcluster_cni_lib.testing.netns import netns as _netns


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace, deleted after the test (also on failure)."""
    with _netns("t") as name:
        yield name


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def plugins_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The static host shims, ``<dir>/<arch>/xcluster-cni-shim``, built from this checkout
    with `make plugins` (tests/shim, and the shim front door of tests/ipamserver)."""
    if shutil.which("make") is None:
        pytest.fail("make is needed to build the shim")
    out = tmp_path_factory.mktemp("plugins")
    subprocess.run(
        ["make", "-s", "-C", str(REPO), "plugins", f"PLUGINS_OUT={out}"],
        check=True,
        timeout=300,
    )
    return out
