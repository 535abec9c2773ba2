"""Shared fixtures. Kernel tests get throwaway namespaces from ``netns``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from xcluster_cni_lib.testing.netns import netns as _netns


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace, deleted after the test (also on failure)."""
    with _netns("t") as name:
        yield name
