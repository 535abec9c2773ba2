"""``xcluster-cni daemon`` with ``IPAM_SOCKET``: the setting, and the agent as a process
serving the IPAM verbs next to its routes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon.harness import wait_for
from tests.ipam._cni import cni_env
from tests.ipamserver import client
from xcluster_cni_lib.daemon.config import ConfigError, load_config
from xcluster_cni_lib.testing.nodes import make_node

CLI = os.path.join(os.path.dirname(sys.executable), "xcluster-cni")


def test_ipam_socket_setting() -> None:
    assert load_config({}, rt_protos={}).ipam_socket is None
    assert load_config({"IPAM_SOCKET": " "}, rt_protos={}).ipam_socket is None  # empty = off
    node = {"NODE_NAME": "n1"}
    config = load_config({**node, "IPAM_SOCKET": "/run/x/ipam.sock"}, rt_protos={})
    assert config.ipam_socket == "/run/x/ipam.sock"
    assert config.to_log()["ipam_socket"] == "/run/x/ipam.sock"
    assert config.ipam_node_file == "/var/lib/cni/xcluster-cni/own-node.json"
    assert config.ipam_cni_path == "/opt/xcluster-cni/reference:/usr/lib/cni"
    for bad, why in [("run/ipam.sock", "absolute"), ("/" + "a" * 107, "107"), ("/tmp", "dir")]:
        with pytest.raises(ConfigError, match=why) as e:
            load_config({**node, "IPAM_SOCKET": bad}, rt_protos={})
        assert e.value.name == "IPAM_SOCKET"
    # the server watches its own node by name (a nodes file may find it by machine id)
    with pytest.raises(ConfigError, match="set NODE_NAME"):
        load_config({"IPAM_SOCKET": "/run/x/ipam.sock"}, rt_protos={})
    assert load_config({"IPAM_SOCKET": "/run/x/i.sock", "NODES_FILE": "/n.json"}, rt_protos={})


def test_ipam_node_file_and_cni_path_settings() -> None:
    base = {"NODE_NAME": "n1", "IPAM_SOCKET": "/run/x/ipam.sock"}
    config = load_config(
        {**base, "IPAM_NODE_FILE": "/state/n.json", "IPAM_CNI_PATH": "/a::/b:"}, rt_protos={}
    )
    assert (config.ipam_node_file, config.ipam_cni_path) == ("/state/n.json", "/a:/b")
    bad_values = [
        ("IPAM_NODE_FILE", "state.json"),
        ("IPAM_NODE_FILE", "/tmp"),
        ("IPAM_CNI_PATH", "/a:bin"),
        ("IPAM_CNI_PATH", ":"),
    ]
    for name, bad in bad_values:
        with pytest.raises(ConfigError) as e:
            load_config({**base, name: bad}, rt_protos={})
        assert e.value.name == name


def _start(netns: str, tmp_path: Path, **extra: str) -> subprocess.Popen[str]:
    path = tmp_path / "nodes.json"
    path.write_text(json.dumps({"kind": "NodeList", "items": [make_node("n0", index=0)]}))
    env = {"PATH": os.environ["PATH"], "NODES_FILE": str(path), "NODE_NAME": "n0", **extra}
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, CLI, "daemon"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _healthy(netns: str) -> bool:
    """The daemon's start-up is over (its signal handlers are in place)."""
    probe = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9202/healthz')"
    cmd = ["ip", "netns", "exec", netns, sys.executable, "-c", probe]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def _stop(proc: subprocess.Popen[str]) -> tuple[int, list[dict[str, object]]]:
    try:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    return code, [json.loads(line) for line in stderr.splitlines()]


@pytest.mark.root
def test_daemon_serves_ipam_when_configured(netns: str, tmp_path: Path, short_dir: Path) -> None:
    sock = str(short_dir / "run" / "ipam.sock")
    proc = _start(
        netns, tmp_path, IPAM_SOCKET=sock, LOG_LEVEL="debug", HTTP_ADDRESS="127.0.0.1:9202"
    )
    try:
        wait_for(lambda: os.path.exists(sock), timeout=15, what="the IPAM socket")
        out = client.call(sock, cni_env("VERSION"), b'{"cniVersion": "1.0.0"}')
        assert out.rc == 0 and out.json["cniVersion"] == "1.0.0"
        wait_for(lambda: _healthy(netns), timeout=15, what="healthz")
    finally:
        code, lines = _stop(proc)
    assert code == 0, lines
    assert not os.path.lexists(sock)  # removed on a clean stop
    assert any(line["msg"] == "ipam serving" and line["socket"] == sock for line in lines)
    [call] = [line for line in lines if line["msg"] == "ipam call"]
    assert (call["verb"], call["code"]) == ("VERSION", 0)


@pytest.mark.root
def test_daemon_without_the_setting_has_no_socket(
    netns: str, tmp_path: Path, short_dir: Path
) -> None:
    proc = _start(netns, tmp_path, HTTP_ADDRESS="127.0.0.1:9202")
    try:
        ready = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9202/healthz')"
        wait_for(
            lambda: (
                subprocess.run(
                    ["ip", "netns", "exec", netns, sys.executable, "-c", ready],
                    capture_output=True,
                    check=False,
                ).returncode
                == 0
            ),
            timeout=15,
            what="healthz",
        )
    finally:
        code, lines = _stop(proc)
    assert code == 0, lines
    assert not any(str(line["msg"]).startswith("ipam") for line in lines)
    assert os.listdir(short_dir) == []


@pytest.mark.root
def test_daemon_refuses_to_start_over_a_non_socket_file(netns: str, tmp_path: Path) -> None:
    victim = tmp_path / "ipam.sock"
    victim.write_text("keep me")
    proc = _start(netns, tmp_path, IPAM_SOCKET=str(victim))
    code = proc.wait(timeout=15)
    lines = [json.loads(line) for line in (proc.stderr.read() if proc.stderr else "").splitlines()]
    assert code == 1
    assert any(str(victim) in str(line.get("error")) for line in lines), lines
    assert victim.read_text() == "keep me"
