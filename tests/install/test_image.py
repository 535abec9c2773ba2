"""The image: ``podman build`` of the Dockerfile, then its ``install`` entrypoint run as the
DaemonSet's init container runs it (read-only root, no capabilities) against temporary
host directories.

No registry but Debian's and PyPI is reachable here, so the base image is a local
``debootstrap --variant=minbase`` of Debian 12 imported into podman (kept as
``localhost/xcluster-cni-test-base:bookworm`` and rebuilt when missing: ~30 s). The build
takes 1-2 minutes (apt and pip downloads, the bundle). Build RUN steps reach PyPI with the
host's CA bundle mounted (this network inspects TLS).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
BASE = "localhost/xcluster-cni-test-base:bookworm"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# podman's default limits exceed this sandbox's hard limits; runc refuses those.
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
PODMAN = ["podman", "--runtime", "runc"]


def _podman(*args: str, timeout: float = 60, check: bool = True) -> str:
    proc = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def _ensure_base(tmp: Path) -> None:
    if subprocess.run([*PODMAN, "image", "exists", BASE], check=False).returncode == 0:
        return
    rootfs = tmp / "rootfs"
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "bookworm",
            str(rootfs),
            "http://deb.debian.org/debian",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run([*PODMAN, "import", "-", BASE], stdin=tar.stdout, check=True, timeout=300)
    assert tar.wait() == 0
    shutil.rmtree(rootfs)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _ensure_base(tmp_path_factory.mktemp("base"))
    tag = f"localhost/xcluster-cni-test:{uuid.uuid4().hex[:8]}"
    _podman(
        "build",
        "--network", "host",
        "--layers=false",
        *LIMITS,
        "--build-arg", f"BASE_IMAGE={BASE}",
        "-v", f"{HOST_CA}:/host-ca.crt:ro",
        "--build-arg", "PIP_CERT=/host-ca.crt",
        "-t", tag,
        str(REPO),
        timeout=900,
    )  # fmt: skip
    try:
        yield tag
    finally:
        _podman("rmi", "-f", tag, check=False)


def _host(tmp_path: Path) -> dict[str, Path]:
    dirs = {n: tmp_path / n for n in ("bin", "conf", "sa")}
    for d in dirs.values():
        d.mkdir()
    (dirs["sa"] / "token").write_text("image-test-token")
    pem = re.search(
        r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", HOST_CA.read_text(), re.S
    )
    assert pem
    (dirs["sa"] / "ca.crt").write_text(pem.group(0))
    return dirs


def _run_install(image: str, dirs: dict[str, Path], *env: str) -> str:
    return _podman(
        "run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL", *LIMITS,
        "-v", f"{dirs['bin']}:/cni/bin",
        "-v", f"{dirs['conf']}:/cni/net.d",
        "-v", f"{dirs['sa']}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
        "-e", "NODE_NAME=node-x",
        "-e", "KUBERNETES_SERVICE_HOST=10.96.0.1",
        "-e", "KUBERNETES_SERVICE_PORT=443",
        *[a for e in env for a in ("-e", e)],
        image, "install",
    )  # fmt: skip


def test_install_entrypoint_populates_the_host_dirs(image: str, tmp_path: Path) -> None:
    dirs = _host(tmp_path)
    out = _run_install(image, dirs, "MTU=1400")
    assert '"install done"' in out

    names = sorted(p.name for p in dirs["bin"].iterdir())
    assert names == [
        "bridge", "host-local", "kube-node", "loopback", "node-annotation", "portmap",
        "xcluster-cni",
    ]  # fmt: skip
    conflist = json.loads((dirs["conf"] / "10-xcluster-cni.conflist").read_text())
    assert conflist["plugins"][0]["mtu"] == 1400
    assert conflist["plugins"][0]["ipam"]["nodeName"] == "node-x"
    assert oct((dirs["conf"] / "xcluster-cni-kubeconfig").stat().st_mode & 0o777) == "0o600"

    # The kube-node the image installed runs here, outside any container, as a host would.
    nodes = {"items": [{"metadata": {"name": "node-x"}, "spec": {"podCIDRs": ["10.250.3.0/24"]}}]}
    (tmp_path / "nodes.json").write_text(json.dumps(nodes))
    config = {
        "cniVersion": "1.0.0",
        "name": "imagetest",
        "ipam": {
            "type": "kube-node",
            "nodeName": "node-x",
            "nodesFile": str(tmp_path / "nodes.json"),
            "dataDir": str(tmp_path / "data"),
        },
    }
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/proc/self/ns/net",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(dirs["bin"]),
    }
    proc = subprocess.run(
        [str(dirs["bin"] / "kube-node")],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["ips"][0]["address"] == "10.250.3.2/24"
    env["CNI_COMMAND"] = "DEL"
    subprocess.run(
        [str(dirs["bin"] / "kube-node")], input=json.dumps(config), text=True, env=env, check=True
    )

    # A second run (a restarted pod) changes nothing.
    before = {p: os.lstat(p).st_ino for p in dirs["bin"].rglob("*")}
    out = _run_install(image, dirs, "MTU=1400")
    assert '"action":"installed"' not in out.replace(" ", "")
    assert {p: os.lstat(p).st_ino for p in dirs["bin"].rglob("*")} == before


def test_secondary_instance_writes_no_conflist(image: str, tmp_path: Path) -> None:
    dirs = _host(tmp_path)
    _run_install(image, dirs, "INSTALL_K8S_NET=no")
    assert sorted(p.name for p in dirs["conf"].iterdir()) == [
        "xcluster-cni-kubeconfig",
        "xcluster-cni-node-name",
    ]


def test_daemon_runs_with_the_manifests_security_context(image: str, tmp_path: Path) -> None:
    """Read-only root filesystem, every capability dropped but NET_ADMIN: the daemon
    starts, reads its nodes and reconciles (in an empty network namespace)."""
    nodes = {
        "items": [
            {
                "metadata": {"name": "a"},
                "spec": {"podCIDRs": ["10.250.1.0/24"]},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]},
            }
        ]
    }
    (tmp_path / "nodes.json").write_text(json.dumps(nodes))
    name = f"xcluster-cni-test-{uuid.uuid4().hex[:8]}"
    _podman(
        "run", "-d", "--name", name, "--network", "none", "--read-only",
        "--cap-drop", "ALL", "--cap-add", "NET_ADMIN", *LIMITS,
        "-v", f"{tmp_path / 'nodes.json'}:/nodes.json:ro",
        "-e", "NODES_FILE=/nodes.json", "-e", "NODE_NAME=b",
        "-e", "HTTP_ADDRESS=127.0.0.1:9202",
        image,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        logs = ""
        while '"msg":"sync"' not in logs.replace(" ", ""):
            assert time.monotonic() < deadline, f"no sync within 30 s:\n{logs}"
            time.sleep(0.2)
            logs = _podman("logs", name)
        assert '"http listening"' in logs
        assert '"level":"error"' not in logs.replace(" ", "")
    finally:
        _podman("rm", "-f", "-t", "2", name, check=False)
