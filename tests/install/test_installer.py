"""The installer against temporary directories: what lands on the host, and that a re-run
or an upgrade never shows a runtime a half-written file.

The shims are the real ones (`make plugins`, the session fixture ``plugins_dir``), laid
out as in the image; the reference plugins are stand-ins with marker content."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

import xcluster_cni_lib
from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.install import files, plan, service
from xcluster_cni_lib.install.service import Action, InstallPaths
from xcluster_cni_lib.plugin.config import parse_config
from xcluster_cni_lib.support import atomicfile

NODE = "node-a"
REFERENCE = ("bridge", "host-local", "loopback", "portmap")
SHIM_NAMES = ("kube-node", "node-annotation")


class Host:
    """A host's CNI directories and an image's shims and reference plugins."""

    def __init__(self, root: Path, shims: Path) -> None:
        self.root = root
        self.bin = root / "host" / "opt-cni-bin"
        self.conf = root / "host" / "etc-cni-net.d"
        self.shims = shims
        self.reference = root / "image" / "reference"
        for d in (self.bin, self.conf, self.reference):
            d.mkdir(parents=True)
        for name in REFERENCE:
            path = self.reference / name
            path.write_bytes(b"\x7fELF image's " + name.encode())
            path.chmod(0o755)
        self.mtu_calls = 0

    def shim(self, arch: str) -> bytes:
        return (self.shims / arch / "xcluster-cni-shim").read_bytes()

    @property
    def paths(self) -> InstallPaths:
        return InstallPaths(
            bin_dir=self.bin, conf_dir=self.conf, shim_dir=self.shims,
            reference_dir=self.reference,
        )  # fmt: skip

    def detect_mtu(self) -> int:
        self.mtu_calls += 1
        return 1450

    def install(self, *, machine: str = "x86_64", **settings: object) -> list[Action]:
        options = plan.InstallSettings(node_name=NODE, **settings)  # type: ignore[arg-type]
        return service.run_install(options, self.paths, detect_mtu=self.detect_mtu, machine=machine)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """(inode, mtime_ns) of everything under the host dirs, symlinks not followed."""
        out = {}
        for path in sorted((self.root / "host").rglob("*")):
            st = path.lstat()
            out[str(path.relative_to(self.root))] = (st.st_ino, st.st_mtime_ns)
        return out

    def leftovers(self) -> list[str]:
        return [p.name for p in (self.root / "host").rglob(f"{files.TMP_PREFIX}*")]


@pytest.fixture
def host(tmp_path: Path, plugins_dir: Path) -> Host:
    return Host(tmp_path, plugins_dir)


@pytest.mark.parametrize(("machine", "arch"), [("x86_64", "amd64"), ("aarch64", "arm64")])
def test_the_shim_for_the_machine_lands_under_both_plugin_names(
    host: Host, machine: str, arch: str
) -> None:
    actions = host.install(machine=machine)
    for name in SHIM_NAMES:
        path = host.bin / name
        assert not path.is_symlink()
        assert path.read_bytes() == host.shim(arch)
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
        assert Action(str(path), "installed", f"shim {arch}") in actions
    other = "arm64" if arch == "amd64" else "amd64"
    assert host.shim(other) != host.shim(arch)
    assert host.leftovers() == []


def test_an_unknown_machine_is_a_clear_error_before_anything_is_written(host: Host) -> None:
    with pytest.raises(InputError, match=r"'riscv64'.*x86-64.*arm64"):
        host.install(machine="riscv64")
    assert not (host.bin / "kube-node").exists()
    assert not (host.conf / plan.CONFLIST_NAME).exists()


def test_arm64_is_also_known_as_arm64() -> None:
    assert plan.shim_arch("arm64") == "arm64"
    assert plan.shim_arch("x86_64") == "amd64"


def test_the_installed_kube_node_is_the_shim(host: Host, tmp_path: Path) -> None:
    """Without an agent, the installed kube-node answers VERSION with the shim's CNI
    error 11 at once: it is the shim, not a Python plugin."""
    host.install()
    conf = {"cniVersion": "1.0.0", "name": "t", "ipam": {"type": "kube-node",
            "socket": str(tmp_path / "no-agent" / "ipam.sock")}}  # fmt: skip
    env = {"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"}
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(host.bin / "kube-node")],
        input=json.dumps(conf).encode(),
        capture_output=True,
        env=env,
        timeout=10,
        check=False,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    answer = json.loads(proc.stdout)
    assert answer["code"] == 11, answer
    assert elapsed < 1.0


def test_fresh_install_puts_missing_reference_plugins_and_the_conflist(host: Host) -> None:
    actions = host.install()
    for name in REFERENCE:
        path = host.bin / name
        assert path.read_bytes() == (host.reference / name).read_bytes()
        assert os.access(path, os.X_OK)
        assert Action(str(path), "installed", "reference plugin") in actions

    conflist = json.loads((host.conf / "10-xcluster-cni.conflist").read_text())
    assert conflist["cniVersion"] == "1.0.0"
    bridge, portmap = conflist["plugins"]
    assert bridge == {
        "type": "bridge",
        "bridge": "cbr0",
        "isGateway": True,
        "isDefaultGateway": True,
        "hairpinMode": True,
        "mtu": 1450,
        "ipam": {"type": "kube-node"},  # no node, no kubeconfig: the agent knows both
    }
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}
    # the installer's marker, a top-level key the runtimes ignore (test_managed_conflist.py)
    marker = conflist.pop(plan.MARKER_KEY)
    assert marker == {
        "managedBy": "xcluster-cni install",
        "version": xcluster_cni_lib.__version__,
        "overlay": "none",
        "sha256": plan.content_digest(conflist),
    }
    path = host.conf / "10-xcluster-cni.conflist"
    written = [a for a in actions if a.path == str(path)]
    assert [a.what for a in written] == ["written"] and "mtu 1450" in written[0].detail
    assert sorted(p.name for p in host.conf.iterdir()) == ["10-xcluster-cni.conflist"]
    assert host.leftovers() == []


def test_the_nodes_own_reference_plugins_are_never_replaced(host: Host) -> None:
    """A node that has its own bridge (maybe built for an older glibc) keeps it, byte for
    byte; only the missing host-local is installed."""
    own = host.bin / "bridge"
    own.write_bytes(b"the node's own bridge, marker 7f3a")
    own.chmod(0o755)
    (host.bin / "loopback").symlink_to("/usr/lib/cni/loopback-elsewhere")  # dangling
    (host.bin / "portmap").symlink_to(own)
    before = own.stat()
    actions = host.install()

    assert own.read_bytes() == b"the node's own bridge, marker 7f3a"
    assert (own.stat().st_ino, own.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert os.readlink(host.bin / "loopback") == "/usr/lib/cni/loopback-elsewhere"
    assert (host.bin / "portmap").is_symlink()
    for name in ("bridge", "loopback", "portmap"):
        assert Action(str(host.bin / name), "skipped", "kept the node's own") in actions
    assert (host.bin / "host-local").read_bytes() == (host.reference / "host-local").read_bytes()
    assert Action(str(host.bin / "host-local"), "installed", "reference plugin") in actions


def test_rerun_touches_nothing(host: Host) -> None:
    (host.bin / "bridge").write_bytes(b"the node's own bridge")
    host.install()
    before = host.snapshot()
    actions = host.install()
    assert host.snapshot() == before
    # the conflist too: the installer's own, already what this run would write
    assert {a.what for a in actions if a.path != str(host.bin / "bridge")} == {"unchanged"}
    assert [a.what for a in actions if "reference" in a.detail or "shim" in a.detail] == [
        "unchanged"
    ] * 5
    assert host.mtu_calls == 2  # looked up again to compare: same MTU, nothing written


def test_an_upgrade_replaces_the_old_bundle_and_its_files(host: Host) -> None:
    """What earlier versions left: kube-node/node-annotation as symlinks into the bundle
    directory, the bundle, the plugins' kubeconfig and node-name file."""
    home = host.bin / "xcluster-cni"
    version = home / "0.1.0-abcdef012345"
    (version / "lib").mkdir(parents=True)
    (version / "xcluster-cni-plugin").write_bytes(b"an old launcher")
    (version / "lib" / "libpython3.11.so").write_bytes(b"x" * 1000)
    (home / "current").symlink_to(version.name)
    for name in SHIM_NAMES:
        (host.bin / name).symlink_to("xcluster-cni/current/xcluster-cni-plugin")
    # the conflist exactly as the installer of that version wrote it
    old_conflist = plan.conflist(mtu=1500)
    old_conflist["plugins"][0]["ipam"] = {
        "type": "kube-node",
        "nodeName": NODE,
        "kubeconfig": "/etc/cni/net.d/xcluster-cni-kubeconfig",
    }
    (host.conf / plan.CONFLIST_NAME).write_bytes(plan.render_json(old_conflist))
    (host.conf / "xcluster-cni-kubeconfig").write_text("token: old")
    (host.conf / "xcluster-cni-node-name").write_text("node-a\n")

    actions = host.install()
    for name in SHIM_NAMES:
        assert not (host.bin / name).is_symlink()
        assert (host.bin / name).read_bytes() == host.shim("amd64")
        assert Action(str(host.bin / name), "replaced", "shim amd64") in actions
    assert not home.exists() and not home.is_symlink()
    assert Action(str(home), "removed", "the plugin bundle of an earlier version") in actions
    assert sorted(p.name for p in host.conf.iterdir()) == [plan.CONFLIST_NAME]
    for name in ("xcluster-cni-kubeconfig", "xcluster-cni-node-name"):
        assert Action(str(host.conf / name), "removed", "not needed by the served IPAM") in (
            actions
        )
    # the names point at the shim before the bundle goes
    order = [a.path for a in actions]
    assert order.index(str(host.bin / "node-annotation")) < order.index(str(home))
    # the conflist an earlier installer wrote is the installer's: rewritten, marked
    conflist = json.loads((host.conf / plan.CONFLIST_NAME).read_text())
    assert conflist["plugins"][0]["ipam"] == {"type": "kube-node"}
    assert conflist["plugins"][0]["mtu"] == 1450
    assert plan.MARKER_KEY in conflist
    (rewritten,) = [a for a in actions if a.path == str(host.conf / plan.CONFLIST_NAME)]
    assert rewritten.what == "rewritten"
    assert "nodeName and kubeconfig" in rewritten.detail and "mtu 1500 -> 1450" in (
        rewritten.detail
    )
    # ... last, after the plugins it names are in place
    assert order.index(str(host.bin / "kube-node")) < order.index(rewritten.path)
    assert host.leftovers() == []


def test_a_missing_shim_or_reference_plugin_in_the_image_is_named(host: Host) -> None:
    (host.reference / "portmap").unlink()
    with pytest.raises(InputError, match="portmap"):
        host.install()


def test_leftovers_of_an_interrupted_install_are_removed(host: Host) -> None:
    (host.bin / f"{files.TMP_PREFIX}abc").write_bytes(b"half a plugin")
    (host.conf / f"{files.TMP_PREFIX}x").write_bytes(b"{")
    host.install()
    assert host.leftovers() == []


def test_failed_copy_leaves_the_old_file_and_no_temporary(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    (host.bin / "kube-node").write_bytes(b"an old kube-node")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        host.install()
    assert (host.bin / "kube-node").read_bytes() == b"an old kube-node"
    assert host.leftovers() == []


def test_install_k8s_net_no_writes_no_conflist(host: Host) -> None:
    actions = host.install(install_k8s_net=False)
    assert list(host.conf.iterdir()) == []
    assert (host.bin / "kube-node").read_bytes() == host.shim("amd64")
    assert host.mtu_calls == 0
    assert actions[-1].what == "skipped"


def test_existing_xcluster_config_is_left_alone(host: Host) -> None:
    custom = {
        "cniVersion": "1.0.0",
        "name": "mine",
        "plugins": [{"type": "bridge", "ipam": {"type": "kube-node", "dataDir": "/x"}}],
    }
    path = host.conf / "05-my-xcluster.conflist"
    path.write_text(json.dumps(custom))
    before = path.stat()
    actions = host.install()
    assert not (host.conf / "10-xcluster-cni.conflist").exists()
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    (skipped,) = [a for a in actions if a.path == str(path)]
    assert skipped.what == "skipped" and "a user's xcluster config comes first" in skipped.detail
    assert host.mtu_calls == 0


def test_our_own_conflist_edited_by_hand_is_kept(host: Host) -> None:
    host.install()
    path = host.conf / "10-xcluster-cni.conflist"
    path.write_text('{"edited": true}')
    actions = host.install(mtu=9000)
    assert path.read_text() == '{"edited": true}'
    assert actions[-1].what == "skipped" and "no xclusterCNI marker" in actions[-1].detail


def test_other_networks_configs_do_not_stop_the_install(host: Host) -> None:
    (host.conf / "99-loopback.conf").write_text('{"type": "loopback", "name": "lo"}')
    (host.conf / "00-multus.conf").write_text("not json")
    host.install(mtu=9000)
    conflist = json.loads((host.conf / "10-xcluster-cni.conflist").read_text())
    assert conflist["plugins"][0]["mtu"] == 9000
    assert host.mtu_calls == 0  # an explicit MTU needs no look-up


def test_missing_mounts_and_node_name_are_clear_errors(host: Host) -> None:
    with pytest.raises(InputError, match="NODE_NAME"):
        service.run_install(plan.InstallSettings(node_name=""), host.paths, detect_mtu=lambda: 1500)
    os.rmdir(host.bin)
    with pytest.raises(InputError, match=r"bin directory .* does not exist"):
        host.install()


def test_cluster_cidrs_reach_the_conflist_as_the_plugins_allow_list(host: Host) -> None:
    env = {"NODE_NAME": NODE, "CLUSTER_CIDRS": " 10.244.0.0/16 , fd00:10:244::/48"}
    settings = service.settings_from_env(env, mtu="1500")
    service.run_install(settings, host.paths, detect_mtu=host.detect_mtu, machine="x86_64")
    conflist = json.loads((host.conf / "10-xcluster-cni.conflist").read_text())
    bridge = conflist["plugins"][0]
    assert bridge["ipam"]["clusterCIDRs"] == ["10.244.0.0/16", "fd00:10:244::/48"]
    # the kube-node plugin reads it as its allow-list
    netconf = {**bridge, "cniVersion": conflist["cniVersion"], "name": conflist["name"]}
    parsed = parse_config(netconf, plugin="kube-node", cni_version="1.0.0", env={})
    assert parsed.cluster_cidrs == ("10.244.0.0/16", "fd00:10:244::/48")


@pytest.mark.parametrize("value", [None, "", "  "])
def test_no_cluster_cidrs_writes_no_allow_list(host: Host, value: str | None) -> None:
    env = {"NODE_NAME": NODE} if value is None else {"NODE_NAME": NODE, "CLUSTER_CIDRS": value}
    settings = service.settings_from_env(env, mtu="1500")
    service.run_install(settings, host.paths, detect_mtu=host.detect_mtu, machine="x86_64")
    conflist = json.loads((host.conf / "10-xcluster-cni.conflist").read_text())
    assert "clusterCIDRs" not in conflist["plugins"][0]["ipam"]


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("10.244.0.0/16,banana", "banana"),
        ("10.244.0.0/16,,fd00::/48", "''"),
        ("0.0.0.0/0", "allows everything"),
        ("x" * 100_000, "x" * 50),
    ],
)
def test_a_bad_cluster_cidrs_stops_the_installer_naming_it(
    host: Host, value: str, named: str
) -> None:
    with pytest.raises(InputError, match="CLUSTER_CIDRS") as e:
        service.settings_from_env({"NODE_NAME": NODE, "CLUSTER_CIDRS": value})
    assert named in str(e.value)
    assert len(str(e.value)) < 600  # a huge value is not echoed whole
    assert not (host.conf / "10-xcluster-cni.conflist").exists()


# -- the one atomic writer (support.atomicfile), which the installer, the IPAM cache and
# the lab all use


def test_writer_skips_unchanged_content_but_not_a_changed_mode(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert atomicfile.write_atomic(path, b"one", mode=0o600, skip_unchanged=True)
    before = path.stat()
    assert not atomicfile.write_atomic(path, b"one", mode=0o600, skip_unchanged=True)
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert atomicfile.write_atomic(path, b"one", mode=0o644, skip_unchanged=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.stat().st_ino != before.st_ino
    assert atomicfile.write_atomic(path, b"one", mode=0o644)  # without skip: always written


def test_writer_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"same")
    target.chmod(0o755)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert atomicfile.copy_atomic(target, link, skip_unchanged=True)
    assert not link.is_symlink() and link.read_bytes() == b"same"
    assert target.read_bytes() == b"same"
    assert not atomicfile.copy_atomic(target, link, skip_unchanged=True)


def test_copy_of_a_large_binary_is_whole_or_absent(tmp_path: Path) -> None:
    """A reader polling the target during repeated copies of two big files only ever sees
    one of them complete."""
    import threading

    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"a" * (3 * atomicfile.CHUNK + 17))
    b.write_bytes(b"b" * (2 * atomicfile.CHUNK + 5))
    dst = tmp_path / "dst"
    atomicfile.copy_atomic(a, dst)
    seen: set[bytes] = set()
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            seen.add(dst.read_bytes())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(20):
            atomicfile.copy_atomic(b if i % 2 == 0 else a, dst)
    finally:
        done.set()
        thread.join()
    assert seen <= {a.read_bytes(), b.read_bytes()}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(files.TMP_PREFIX)] == []


def test_symlink_swap_replaces_a_file_and_is_idempotent(tmp_path: Path) -> None:
    link = tmp_path / "l"
    link.write_bytes(b"plain file")
    assert atomicfile.symlink_atomic("somewhere", link)
    assert os.readlink(link) == "somewhere"
    before = link.lstat().st_ino
    assert not atomicfile.symlink_atomic("somewhere", link)
    assert link.lstat().st_ino == before
    assert atomicfile.symlink_atomic("elsewhere", str(link))
    assert os.readlink(link) == "elsewhere"
    assert [p.name for p in tmp_path.iterdir()] == ["l"]


def test_failed_write_keeps_the_old_content_and_no_temporary(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.write_bytes(b"old")
    with pytest.raises(FileNotFoundError):
        atomicfile.copy_atomic(tmp_path / "missing", dst)
    assert dst.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["dst"]
