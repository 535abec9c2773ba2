"""The image: ``podman build`` of the Dockerfile, then its ``install`` entrypoint run as the
DaemonSet's init container runs it (read-only root, no capabilities) against temporary
host directories.

No registry but Debian's and PyPI is reachable here, so the base image is a local
``debootstrap --variant=minbase`` of Debian 12 imported into podman (kept as
``localhost/xcluster-cni-test-base:bookworm`` and rebuilt when missing: ~30 s). The build
takes 1-2 minutes (apt and pip downloads, the two shims). Build RUN steps reach PyPI with
the host's CA bundle mounted (this network inspects TLS).
"""

from __future__ import annotations

import json
import os
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
    dirs = {n: tmp_path / n for n in ("bin", "conf")}
    for d in dirs.values():
        d.mkdir()
    return dirs


def _run_install(image: str, dirs: dict[str, Path], *env: str) -> str:
    return _podman(
        "run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL", *LIMITS,
        "-v", f"{dirs['bin']}:/cni/bin",
        "-v", f"{dirs['conf']}:/cni/net.d",
        "-e", "NODE_NAME=node-x",
        *[a for e in env for a in ("-e", e)],
        image, "install",
    )  # fmt: skip


def _image_file(image: str, path: str) -> bytes:
    proc = subprocess.run(
        [*PODMAN, "run", "--rm", "--network", "none", *LIMITS, "--entrypoint", "cat", image, path],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return proc.stdout


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF", data[:16]
    return int.from_bytes(data[18:20], "little")


def test_image_carries_both_shims_and_the_reference_plugins(image: str) -> None:
    listing = _podman(
        "run", "--rm", "--network", "none", *LIMITS, "--entrypoint", "find", image,
        "/opt/xcluster-cni", "-maxdepth", "3", "-not", "-path", "*/venv/*",
    )  # fmt: skip
    paths = set(listing.split())
    for arch in ("amd64", "arm64"):
        assert f"/opt/xcluster-cni/shim/{arch}/xcluster-cni-shim" in paths
    for name in ("bridge", "host-local", "loopback", "portmap"):
        assert f"/opt/xcluster-cni/reference/{name}" in paths
    assert not any("plugins" in p or "bundle" in p for p in paths), paths
    amd64 = _image_file(image, "/opt/xcluster-cni/shim/amd64/xcluster-cni-shim")
    arm64 = _image_file(image, "/opt/xcluster-cni/shim/arm64/xcluster-cni-shim")
    assert (_elf_machine(amd64), _elf_machine(arm64)) == (62, 183)  # EM_X86_64, EM_AARCH64
    assert len(amd64) < 1_000_000 and len(arm64) < 1_000_000


def test_install_entrypoint_populates_the_host_dirs(image: str, tmp_path: Path) -> None:
    dirs = _host(tmp_path)
    own_bridge = dirs["bin"] / "bridge"
    own_bridge.write_bytes(b"the node's own bridge")
    own_bridge.chmod(0o755)
    # what an earlier version left
    (dirs["bin"] / "xcluster-cni" / "0.1.0-abc").mkdir(parents=True)
    (dirs["bin"] / "kube-node").symlink_to("xcluster-cni/current/xcluster-cni-plugin")
    (dirs["conf"] / "xcluster-cni-kubeconfig").write_text("old")
    (dirs["conf"] / "xcluster-cni-node-name").write_text("node-x\n")

    out = _run_install(image, dirs, "MTU=1400")
    assert '"install done"' in out
    assert "kept the node's own" in out

    names = sorted(p.name for p in dirs["bin"].iterdir())
    assert names == [
        "bridge", "host-local", "kube-node", "loopback", "node-annotation", "portmap",
    ]  # fmt: skip
    assert own_bridge.read_bytes() == b"the node's own bridge"
    shim = _image_file(image, "/opt/xcluster-cni/shim/amd64/xcluster-cni-shim")
    for name in ("kube-node", "node-annotation"):
        assert not (dirs["bin"] / name).is_symlink()
        assert (dirs["bin"] / name).read_bytes() == shim
    host_local = _image_file(image, "/opt/xcluster-cni/reference/host-local")
    assert (dirs["bin"] / "host-local").read_bytes() == host_local
    assert sorted(p.name for p in dirs["conf"].iterdir()) == ["10-xcluster-cni.conflist"]
    conflist = json.loads((dirs["conf"] / "10-xcluster-cni.conflist").read_text())
    assert conflist["plugins"][0]["mtu"] == 1400
    assert conflist["plugins"][0]["ipam"] == {"type": "kube-node"}

    # The kube-node the image installed runs here, outside any container, as a host would:
    # the static shim, which without an agent answers CNI error 11 ("try again later").
    config = {
        "cniVersion": "1.0.0",
        "name": "imagetest",
        "ipam": {"type": "kube-node", "socket": str(tmp_path / "none" / "ipam.sock")},
    }
    proc = subprocess.run(
        [str(dirs["bin"] / "kube-node")],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        env={"CNI_COMMAND": "VERSION"},
        timeout=10,
        check=False,
    )
    assert proc.returncode != 0
    assert json.loads(proc.stdout)["code"] == 11, proc.stdout + proc.stderr

    # A second run (a restarted pod) changes nothing.
    before = {p: (os.lstat(p).st_ino, os.lstat(p).st_mtime_ns) for p in tmp_path.rglob("*")}
    out = _run_install(image, dirs, "MTU=1400")
    compact = out.replace(" ", "")
    assert '"action":"installed"' not in compact and '"action":"replaced"' not in compact
    after = {p: (os.lstat(p).st_ino, os.lstat(p).st_mtime_ns) for p in tmp_path.rglob("*")}
    assert after == before


def test_secondary_instance_writes_no_conflist(image: str, tmp_path: Path) -> None:
    dirs = _host(tmp_path)
    _run_install(image, dirs, "INSTALL_K8S_NET=no")
    assert list(dirs["conf"].iterdir()) == []
    assert (dirs["bin"] / "node-annotation").is_file()


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
