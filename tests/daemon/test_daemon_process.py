"""The daemon as the DaemonSet runs it: ``xcluster-cni daemon`` as a process inside a
network namespace (``ip netns exec``), here fed by a nodes file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.daemon.harness import add_gateways, expected, routes, wait_for, wait_routes
from xcluster_cni_lib.testing.nodes import make_node

pytestmark = pytest.mark.root

CLI = os.path.join(os.path.dirname(sys.executable), "xcluster-cni")


def test_sigterm_stops_within_2s_and_leaves_the_routes(netns: str, tmp_path: Any) -> None:
    add_gateways(netns)
    path = os.path.join(tmp_path, "nodes.json")
    with open(path, "w") as f:
        json.dump({"kind": "NodeList", "items": [make_node(f"n{i}", index=i) for i in range(3)]}, f)
    env = {
        "PATH": os.environ["PATH"],
        "NODES_FILE": path,
        "NODE_NAME": "n0",
        "PROTOCOL": "202",
        "HTTP_ADDRESS": "127.0.0.1:9202",
        "LOG_LEVEL": "debug",
    }
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, CLI, "daemon"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_routes(netns, 202, expected({1, 2}), timeout=15)
        # Ready as seen from inside the namespace.
        wait_for(
            lambda: (
                subprocess.run(
                    ["ip", "netns", "exec", netns, sys.executable, "-c", READYZ], check=False
                ).returncode
                == 0
            ),
            timeout=5,
            what="ready",
        )
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=5)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 0, stderr
    assert took < 2.0, f"stopping took {took:.2f}s"
    print(f"SIGTERM to exit: {took * 1000:.0f} ms")
    assert routes(netns, 202) == expected({1, 2})
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert all({"time", "level", "msg"} <= line.keys() for line in lines)
    start = next(line for line in lines if line["msg"] == "starting")
    assert (start["protocol"], start["nodes_file"], start["node_name"]) == (202, path, "n0")
    assert start["allocator"] == "pymalloc"  # without NetworkPolicy: Python's own
    assert any(line["msg"] == "sync" and line["added"] == 4 for line in lines)
    assert lines[-1]["msg"] == "stopped; routes left in place"


READYZ = """
import sys, urllib.request
try:
    urllib.request.urlopen("http://127.0.0.1:9202/readyz", timeout=2)
except Exception:
    sys.exit(1)
"""


def test_an_invalid_setting_stops_start_up_naming_it() -> None:
    proc = subprocess.run(
        [CLI, "daemon", "--protocol", "kernel"],
        env={"PATH": os.environ["PATH"], "HTTP_ADDRESS": "nope"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert json.loads(line)["variable"] in ("PROTOCOL", "HTTP_ADDRESS")


def test_the_policy_agent_runs_on_the_c_allocator_unless_told_otherwise(
    netns: str, tmp_path: Any
) -> None:
    """With NETWORK_POLICY the daemon starts itself again (same process) with
    PYTHONMALLOC=malloc, whose freed pages it can give back; an allocator the
    environment chose is kept."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    base = {
        "PATH": os.environ["PATH"],
        "KUBECONFIG": str(kubeconfig),
        "NODE_NAME": "n0",
        "NETWORK_POLICY": "true",
        "HTTP_ADDRESS": "127.0.0.1:0",
    }
    for extra, allocator in (({}, "malloc"), ({"PYTHONMALLOC": "pymalloc"}, "pymalloc")):
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, CLI, "daemon"],
            env={**base, **extra},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()  # the first line is "starting" (after the exec)
            start = json.loads(line)
            assert start["msg"] == "starting", line
            assert start["allocator"] == allocator
            with open(f"/proc/{proc.pid}/environ", "rb") as f:  # the same process
                environ = f.read().split(b"\0")
            assert f"PYTHONMALLOC={allocator}".encode() in environ
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
