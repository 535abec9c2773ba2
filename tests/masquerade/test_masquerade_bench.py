"""One tiny run of bench/masquerade_sets.py against the real pieces, so that it cannot rot
unnoticed. Not a timed test: nothing here asserts a speed."""

from __future__ import annotations

import pytest

from bench.masquerade_sets import run

pytestmark = pytest.mark.root


@pytest.mark.parametrize("layout", ["adjacent", "scattered"])
def test_bench_runs(layout: str) -> None:
    out = run(20, 4, 1, layout)
    assert out["nodes"] == 20 and out["layout"] == layout
    assert out["elements"] == (7 if layout == "adjacent" else 43)
    for key in ("full_load", "node_change", "compute", "nft_update", "full_compare"):
        assert out[key]["n"] >= 1 and out[key]["p50_ms"] > 0
