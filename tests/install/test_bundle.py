"""The self-contained plugin bundle, installed as the init container installs it, runs a
real ADD/DEL with host-local inside a root filesystem that has no Python at all (the
situation on Flatcar, Talos or Bottlerocket nodes).

The bundle is built from this checkout by ``packaging/build_bundle.py`` (about 10 s); the
root filesystem holds only the CNI bin dir and the C library the ELF files need, taken
from this machine with ``ldd``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.apiserver import ApiServerDouble
from xcluster_cni_lib.install import service
from xcluster_cni_lib.testing.nodes import make_node

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
HOST_LOCAL = Path("/usr/lib/cni/host-local")
NODES = {
    "kind": "NodeList",
    "items": [
        {
            "metadata": {"name": "n1"},
            "spec": {"podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.1"}]},
        }
    ],
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "xcluster-cni"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    subprocess.run(
        [sys.executable, str(REPO / "packaging" / "build_bundle.py"), str(out)],
        check=True,
        capture_output=True,
        env=env,
        timeout=240,
    )
    return out


def _elf_files(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    yield path


def _copy_system_libraries(rootfs: Path, bin_dir: Path) -> list[str]:
    """Copy into ``rootfs`` the libraries from outside the bin dir that its ELF files load
    (the C library and its loader), at the same paths."""
    copied = set()
    for elf in _elf_files(bin_dir):
        out = subprocess.run(["ldd", str(elf)], capture_output=True, text=True).stdout
        for lib in re.findall(r"(?:=> )?(/\S+) \(0x", out):
            if lib.startswith(str(bin_dir)) or lib in copied:
                continue
            target = rootfs / lib.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(lib), target)
            copied.add(lib)
    return sorted(copied)


@pytest.fixture(scope="module")
def rootfs(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rootfs")
    plugins = tmp_path_factory.mktemp("image-plugins")
    shutil.copytree(bundle, plugins / "xcluster-cni")
    shutil.copy2(HOST_LOCAL, plugins / "host-local")
    bin_dir = root / "opt" / "cni" / "bin"
    bin_dir.mkdir(parents=True)
    service.install_plugins(plugins, bin_dir)
    libs = _copy_system_libraries(root, bin_dir)
    assert all("python" not in lib for lib in libs), libs
    for d in ("proc", "etc/cni", "var/lib/cni"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "cni" / "nodes.json").write_text(json.dumps(NODES))
    # as in the image: the daemon's command is a link to the same launcher
    (root / "usr" / "local" / "bin").mkdir(parents=True)
    os.symlink(
        "/opt/cni/bin/xcluster-cni/current/xcluster-cni-plugin",
        root / "usr" / "local" / "bin" / "xcluster-cni",
    )
    return root


def _in_root(
    rootfs: Path, argv: list[str], *, env: dict[str, str], stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` in ``rootfs`` (chroot, in a private mount namespace with /proc, as on
    any host)."""
    script = f'mount -t proc proc "{rootfs}/proc" && exec chroot "{rootfs}" "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv],
        input=stdin,
        capture_output=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
        timeout=60,
    )


def _cni(rootfs: Path, command: str, config: Mapping[str, object], **extra: str) -> tuple[int, str]:
    """Run the installed kube-node in ``rootfs``."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/proc/1/ns/net",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
        **extra,
    }
    proc = _in_root(rootfs, ["/opt/cni/bin/kube-node"], env=env, stdin=json.dumps(config).encode())
    return proc.returncode, proc.stdout.decode() + proc.stderr.decode()


def test_rootfs_has_no_python(rootfs: Path) -> None:
    bundle_dir = rootfs / "opt" / "cni" / "bin" / "xcluster-cni"
    pythons = [
        p for p in rootfs.rglob("*python*") if bundle_dir not in p.parents and not p.is_dir()
    ]
    assert pythons == []
    assert (rootfs / "opt" / "cni" / "bin" / "kube-node").is_symlink()


def test_installed_kube_node_runs_add_and_del_without_python(rootfs: Path) -> None:
    config = {
        "cniVersion": "1.0.0",
        "name": "nopython",
        "ipam": {
            "type": "kube-node",
            "nodeName": "n1",
            "nodesFile": "/etc/cni/nodes.json",
            "dataDir": "/var/lib/cni/networks",
        },
    }
    network = rootfs / "var" / "lib" / "cni" / "networks" / "nopython"
    # Python's own variables on the host must not reach the bundled interpreter.
    rc, out = _cni(rootfs, "ADD", config, PYTHONHOME="/nowhere", PYTHONPATH="/nowhere")
    assert rc == 0, out
    result = json.loads(out)
    assert result["cniVersion"] == "1.0.0"
    assert [ip["address"] for ip in result["ips"]] == ["10.244.1.2/24", "fd00:10:244:1::2/64"]
    assert (network / "10.244.1.2").read_text().startswith("c1")

    rc, out = _cni(rootfs, "DEL", config)
    assert rc == 0, out
    assert not (network / "10.244.1.2").exists()
    assert not (network / "fd00:10:244:1::2").exists()


def test_version_answers_from_the_bundle(rootfs: Path) -> None:
    rc, out = _cni(rootfs, "VERSION", {"cniVersion": "1.0.0"})
    assert rc == 0, out
    assert "1.0.0" in json.loads(out)["supportedVersions"]


def test_bundle_loads_the_kubernetes_client_tls_and_netlink_without_python(
    rootfs: Path,
) -> None:
    """The rest of the bundle works there too: ``k8smtu`` imports the full kubernetes
    client (ssl, urllib3, yaml), reads the Node from an API server and lists the kernel's
    interfaces over netlink."""
    with ApiServerDouble() as api:
        api.add_node(make_node("n1", internal_ips=["127.0.0.1"]))
        api.write_kubeconfig(rootfs / "etc" / "cni" / "kubeconfig")
        proc = _in_root(
            rootfs,
            [
                "/usr/local/bin/xcluster-cni",
                "k8smtu",
                "--node=n1",
                "--kubeconfig=/etc/cni/kubeconfig",
            ],
            env={},
        )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "65536"  # the loopback holds 127.0.0.1
