"""A smaller run of ``scale.py`` in CI: a full sync of 1,000 realistic nodes through the
API double into the kernel, heartbeats that cost nothing, an idle reconcile that writes
nothing. (``python -m tests.daemon.scale --nodes 5000`` for the numbers in docs/daemon.md.)"""

from __future__ import annotations

import pytest

from tests.daemon.scale import measure

pytestmark = pytest.mark.root


def test_a_thousand_nodes_sync_fast_and_idle_cheaply() -> None:
    out = measure(1000, idle_seconds=0.5, samples=2)
    assert out["routes"] == 1998
    assert out["first_full_sync_s"] < 10
    assert out["syncs_caused_by_heartbeats"] == 0
    assert out["idle_reconcile_cpu_ms"] < 500
    assert max(out["change_latency_ms"]) < 1000
