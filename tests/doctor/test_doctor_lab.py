"""``xcluster-cni doctor`` on a lab node, as a user runs it (``ip netns exec <node>
xcluster-cni doctor ...``): all OK on a healthy node, and FAIL with the right hint after
each of: conflist removed, plugin removed, route deleted (agent stopped first, so it
cannot put it back), API server unreachable (the API-server double, stopped).

The CNI dirs are temporary ones the real installer fills (``run_install`` with the shim
built from this checkout); the node's agent is restarted with ``IPAM_SOCKET`` so the
IPAM check has a socket to ask."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.apiserver import ApiServerDouble
from tests.daemon.harness import wait_for
from xcluster_cni_lib.daemon.config import SETTINGS
from xcluster_cni_lib.install.plan import CONFLIST_NAME, InstallSettings
from xcluster_cni_lib.install.service import InstallPaths, run_install
from xcluster_cni_lib.lab import MAIN, Lab, LabSpec

pytestmark = pytest.mark.root

PREFIX = "xct"
CLI = str(Path(sys.executable).parent / "xcluster-cni")
REFERENCE = Path("/usr/lib/cni")


def install(tmp: Path, plugins_dir: Path, *, mtu: int, overlay: str = "none") -> tuple[Path, Path]:
    """A CNI bin and conf dir as the installer leaves them on node n1."""
    bin_dir, conf_dir = tmp / "bin", tmp / "net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    run_install(
        InstallSettings(node_name="n1", overlay=overlay),
        InstallPaths(
            bin_dir=bin_dir, conf_dir=conf_dir, shim_dir=plugins_dir, reference_dir=REFERENCE
        ),
        detect_mtu=lambda: mtu,
    )
    return bin_dir, conf_dir


def serve_ipam(lab: Lab, socket: Path) -> None:
    """Restart n1's main agent with IPAM_SOCKET; wait until it answers and converged."""
    if ("n1", "main") in lab.daemons:
        lab.stop_daemon("n1", "main")
    lab.start_daemon("n1", "main", extra_env={"IPAM_SOCKET": str(socket)})
    wait_for(socket.exists, timeout=10, what=f"{socket}", every=0.02)
    lab.wait_converged(timeout=10)


def doctor(
    lab: Lab | None,
    *args: str,
    env: dict[str, str] | None = None,
) -> tuple[int, dict[str, dict[str, Any]], dict[str, Any]]:
    """Run doctor in n1's namespace (``lab`` None: here); exit code, checks by name,
    the whole JSON report."""
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    clean.update(env or {})
    argv = [CLI, "doctor", "-o", "json", *args]
    if lab is not None:
        argv = ["ip", "netns", "exec", lab.node("n1").namespace, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, env=clean, timeout=60)
    assert proc.returncode in (0, 1, 2), proc.stderr
    report = json.loads(proc.stdout)
    assert report["exitCode"] == proc.returncode
    return proc.returncode, {c["check"]: c for c in report["checks"]}, report


def not_ok(checks: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {n: c["status"] for n, c in checks.items() if c["status"] != "OK"}


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(LabSpec(nodes=3, pods_per_node=0, prefix=PREFIX, networks=(MAIN,))) as lab:
        yield lab


def test_doctor_in_the_lab(lab: Lab, plugins_dir: Path, tmp_path: Path) -> None:
    bin_dir, conf_dir = install(tmp_path, plugins_dir, mtu=1500)
    socket = tmp_path / "ipam.sock"
    serve_ipam(lab, socket)
    flags = (
        f"--cni-conf-dir={conf_dir}",
        f"--cni-bin-dir={bin_dir}",
        f"--socket={socket}",
        f"--nodes-file={lab.nodes_file}",
        "--node=n1",
    )

    code, checks, report = doctor(lab, *flags)
    assert not_ok(checks) == {}, report
    assert code == 0 and report["status"] == "OK"
    assert checks["routes"]["summary"] == "4 wanted, 4 present (protocol 202): equal"
    assert checks["ipam"]["summary"].endswith("answers STATUS: ready")

    # the table a person reads: one row per check, the default on a terminal and here
    table = subprocess.run(
        ["ip", "netns", "exec", lab.node("n1").namespace, CLI, "doctor", *flags],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in SETTINGS},
        timeout=60,
    )
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "SUMMARY"]
    assert [line.split()[:2] for line in lines[1:]] == [[name, "OK"] for name in checks]

    # 1. the conflist removed
    conflist = conf_dir / CONFLIST_NAME
    saved = conflist.read_bytes()
    conflist.unlink()
    code, checks, _ = doctor(lab, *flags)
    assert code == 2
    assert checks["conflist"]["status"] == "FAIL"
    assert CONFLIST_NAME in checks["conflist"]["summary"]
    assert "the installer writes it" in checks["conflist"]["hint"]
    conflist.write_bytes(saved)

    # 2. a plugin removed
    (bin_dir / "portmap").unlink()
    code, checks, _ = doctor(lab, *flags)
    assert code == 2
    assert not_ok(checks) == {"plugins": "FAIL"}
    assert checks["plugins"]["summary"] == f"missing in {bin_dir}: portmap"
    assert "restart the xcluster-cni pod" in checks["plugins"]["hint"]
    shutil.copy2(REFERENCE / "portmap", bin_dir / "portmap")
    assert doctor(lab, *flags)[0] == 0

    # 3. a route deleted, with the agent stopped so it cannot put it back
    lab.stop_daemon("n1", "main")
    gone = next(iter(sorted(lab.expected_routes("n1", "main"), key=lambda r: str(r.dst))))
    lab.run("n1", ["ip", "route", "del", str(gone.dst), "proto", "202"])
    code, checks, _ = doctor(lab, *flags)
    assert code == 2
    assert checks["routes"]["status"] == "FAIL"
    assert checks["routes"]["details"] == [f"missing: {gone.dst} via {gone.gateway} ({gone.node})"]
    assert "is it running here" in checks["routes"]["hint"]
    assert checks["ipam"]["status"] == "FAIL"  # the agent serves the socket too
    assert "IPAM_SOCKET" in checks["ipam"]["hint"]
    serve_ipam(lab, socket)  # the agent puts the route back
    assert doctor(lab, *flags)[0] == 0


def test_lab_status_json(lab: Lab) -> None:
    """``lab status -o json`` of a running lab (the same renderer as doctor's)."""
    spec = lab.spec
    argv = [CLI, "lab", "status", "--id", spec.lab_id, "--prefix", spec.prefix]
    argv += ["--state-root", str(spec.state_root), "-o", "json"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    [record] = json.loads(proc.stdout)
    assert record["id"] == spec.lab_id
    assert record["daemons"] == {"running": 3, "started": 3}
    assert [n["name"] for n in record["nodes"]] == ["n1", "n2", "n3"]
    assert record["nodes"][0]["routes"] == {"main": 4}
    assert record["pods"] == []


def test_doctor_api_unreachable(lab: Lab, tmp_path: Path) -> None:
    """The API check against a real HTTP API server double (in this namespace: the
    double listens on 127.0.0.1 here), up and then stopped."""
    items = json.loads(lab.nodes_file.read_text())["items"]
    with ApiServerDouble() as api:
        api.set_nodes(items)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        flags = (f"--kubeconfig={kubeconfig}", "--node=n1", "--timeout=2")
        _, checks, _ = doctor(None, *flags)
        assert checks["api"]["status"] == "OK", checks["api"]
        assert checks["api"]["summary"] == f"API server {api.url}: 3 nodes, node n1 found"
        api.stop()
        code, checks, _ = doctor(None, *flags)
    assert code == 2
    assert checks["api"]["status"] == "FAIL"
    assert checks["api"]["summary"].startswith(f"API server {api.url}: ")
    assert "KUBECONFIG" in checks["api"]["hint"]
    assert checks["routes"]["status"] == "WARN"  # not compared without the nodes


def test_doctor_with_overlay_and_masquerade(plugins_dir: Path, tmp_path: Path) -> None:
    """OVERLAY=vxlan and MASQUERADE=true: device, entries and table found, routes via the
    device compared, the conflist MTU less the overlay's 50 bytes; the table gone: FAIL."""
    main = attrs.evolve(MAIN, routed=True, overlay="vxlan", mtu=1450, masquerade=True)
    spec = LabSpec(nodes=2, pods_per_node=0, prefix=PREFIX, networks=(main,), outside=True)
    with Lab(spec) as lab:
        bin_dir, conf_dir = install(tmp_path, plugins_dir, mtu=1450, overlay="vxlan")
        socket = tmp_path / "ipam.sock"
        serve_ipam(lab, socket)
        flags = (
            f"--cni-conf-dir={conf_dir}",
            f"--cni-bin-dir={bin_dir}",
            f"--socket={socket}",
            f"--nodes-file={lab.nodes_file}",
            "--node=n1",
        )
        env = {"OVERLAY": "vxlan", "MASQUERADE": "true"}
        code, checks, report = doctor(lab, *flags, env=env)
        assert not_ok(checks) == {}, report
        assert checks["overlay"]["summary"].startswith("xcvx202: vxlan, up,")
        assert checks["mtu"]["summary"].startswith("conflist mtu 1450 = eth1")

        lab.stop_daemon("n1", "main")
        lab.run("n1", ["nft", "delete", "table", "inet", "xcluster-cni-202"])
        code, checks, _ = doctor(lab, *flags, env=env)
        assert code == 2
        assert checks["masquerade"]["status"] == "FAIL"
        assert "is missing" in checks["masquerade"]["summary"]
