"""A daemon that crashes (SIGKILL) leaves its routes in place, and its restart does not
disturb them: pod traffic keeps flowing through kill and restart."""

from __future__ import annotations

import re
import signal
import subprocess
from contextlib import ExitStack

from xcluster_cni_lib.lab import Lab
from xcluster_cni_lib.lab.shell import in_ns

COUNT, INTERVAL = 150, 0.02  # 3 s of pings, one every 20 ms


def _received(output: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    assert m, output
    return int(m.group(1)), int(m.group(2))


def test_pings_keep_flowing_while_daemons_are_killed_and_restarted(lab: Lab) -> None:
    src, dst = lab.pod("n1-pod1"), lab.pod("n2-pod1")
    nodes = ("n1", "n2")
    with ExitStack() as stack:
        events = [stack.enter_context(lab.route_events(n)) for n in nodes]
        pings = [
            subprocess.Popen(
                in_ns(
                    src.netns, ["ping", "-n", "-q", "-i", str(INTERVAL), "-c", str(COUNT), str(a)]
                ),
                stdout=subprocess.PIPE,
                text=True,
            )
            for a in (dst.address("main", 4), dst.address("main", 6))
        ]
        for p in pings:
            stack.callback(p.kill)

        for node in nodes:
            assert lab.stop_daemon(node, "main", sig=signal.SIGKILL) == -signal.SIGKILL
        for node in nodes:
            assert lab.routes(node, "main") == lab.expected_routes(node, "main")
            lab.start_daemon(node, "main")
        lab.wait_converged(timeout=5.0)
        results = [_received(p.communicate(timeout=30)[0]) for p in pings]

    assert results == [(COUNT, COUNT), (COUNT, COUNT)]
    # the restarted daemons found their routes right and left them alone
    protocol = f"proto {lab.spec.main.protocol}"
    assert [e for e in events[0] + events[1] if e.startswith("Deleted") and protocol in e] == []
