"""Fixtures for the Kubernetes adapter tests: an API-server double, a client for it and a
recording sink (helpers in ``tests.kube.helpers``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apiserver import ApiServerDouble
from tests.kube.helpers import RecordingSink
from xcluster_cni_lib.sources.kube import load_api_client


@pytest.fixture
def api() -> Iterator[ApiServerDouble]:
    double = ApiServerDouble(bookmark_interval=0.3, token="s3cret")
    double.start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def api_client(api: ApiServerDouble, tmp_path: Path) -> Iterator[Any]:
    client = load_api_client(api.write_kubeconfig(tmp_path / "kubeconfig"), timeout=10)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()
