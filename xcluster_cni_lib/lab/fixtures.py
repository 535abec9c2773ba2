"""pytest fixtures for users' own test suites (imports pytest, so only load it from a
``conftest.py``)::

    # conftest.py
    from xcluster_cni_lib.lab import LabSpec
    from xcluster_cni_lib.lab.fixtures import lab_fixture

    lab = lab_fixture(LabSpec(nodes=2, pods_per_node=1), scope="module")

    # test_something.py
    def test_pods_reach_each_other(lab):
        assert lab.connectivity().ok
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

import pytest

from xcluster_cni_lib.lab.cluster import Lab
from xcluster_cni_lib.lab.spec import LabSpec

Scope = Literal["session", "package", "module", "class", "function"]


def lab_fixture(
    spec: LabSpec | Callable[[], LabSpec] | None = None, *, scope: Scope = "module"
) -> Any:
    """A pytest fixture that yields a running ``Lab`` and tears it down afterwards (also
    when tests fail or the run is interrupted). ``spec`` may be a callable so that every
    lab gets a fresh random id."""

    @pytest.fixture(scope=scope)
    def _lab() -> Iterator[Lab]:
        chosen = spec() if callable(spec) else spec
        with Lab(chosen if chosen is not None else LabSpec()) as lab:
            yield lab

    return _lab
