"""The installer against temporary directories: what lands on the host, and that a re-run
or an upgrade never shows a runtime a half-written file."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.install import files, plan, service
from xcluster_cni_lib.install.service import Action, InstallPaths
from xcluster_cni_lib.plugin import kubelite
from xcluster_cni_lib.plugin.config import parse_config
from xcluster_cni_lib.support import atomicfile

NODE = "node-a"


def _first_pem_certificate() -> bytes:
    bundle = Path("/etc/ssl/certs/ca-certificates.crt").read_text()
    m = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", bundle, re.S)
    assert m, "no CA certificate on this machine"
    return m.group(0).encode()


def make_bundle(directory: Path, *, version: str, payload: bytes) -> Path:
    """A stand-in plugin bundle: the layout and BUNDLE.json of packaging/build_bundle.py."""
    directory.mkdir(parents=True)
    launcher = directory / service.LAUNCHER
    launcher.write_bytes(b"#!/bin/sh\n# " + payload + b"\n")
    launcher.chmod(0o755)
    (directory / "lib").mkdir()
    (directory / "lib" / "libpython.so").write_bytes(payload * 100)
    digest = files.file_digest(directory / "lib" / "libpython.so")
    info = {"version": version, "digest": digest, "plugins": ["kube-node", "node-annotation"]}
    (directory / service.BUNDLE_INFO).write_text(json.dumps(info))
    return directory


class Host:
    """A host's CNI directories, an image's plugin dir and a pod's service account."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "host" / "opt-cni-bin"
        self.conf = root / "host" / "etc-cni-net.d"
        self.plugins = root / "image" / "plugins"
        self.sa = root / "sa"
        for d in (self.bin, self.conf, self.plugins, self.sa):
            d.mkdir(parents=True)
        for name in ("bridge", "host-local", "loopback", "portmap"):
            self.set_plugin(name, f"{name} v1".encode())
        make_bundle(self.plugins / "xcluster-cni", version="0.1.0", payload=b"one")
        (self.sa / "token").write_text("the-token\n")
        self.ca = _first_pem_certificate()
        (self.sa / "ca.crt").write_bytes(self.ca)
        self.env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
        self.mtu_calls = 0

    def set_plugin(self, name: str, content: bytes) -> None:
        path = self.plugins / name
        path.write_bytes(b"\x7fELF" + content)
        path.chmod(0o755)

    @property
    def paths(self) -> InstallPaths:
        return InstallPaths(
            bin_dir=self.bin, conf_dir=self.conf, service_account_dir=self.sa,
            plugin_dir=self.plugins,
        )  # fmt: skip

    def detect_mtu(self) -> int:
        self.mtu_calls += 1
        return 1450

    def install(self, **settings: object) -> list[Action]:
        options = plan.InstallSettings(node_name=NODE, **settings)  # type: ignore[arg-type]
        return service.run_install(options, self.paths, env=self.env, detect_mtu=self.detect_mtu)

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
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def test_fresh_install_puts_plugins_kubeconfig_node_name_and_conflist(host: Host) -> None:
    host.install()

    for name in ("bridge", "host-local", "loopback", "portmap"):
        assert (host.bin / name).read_bytes() == (host.plugins / name).read_bytes()
        assert os.access(host.bin / name, os.X_OK)
    for name in ("kube-node", "node-annotation"):
        link = host.bin / name
        assert os.readlink(link) == "xcluster-cni/current/xcluster-cni-plugin"
        assert link.resolve().read_bytes().endswith(b"one\n")  # resolves to the launcher
    assert (host.conf / "xcluster-cni-node-name").read_text() == "node-a\n"

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
        "ipam": {
            "type": "kube-node",
            "nodeName": "node-a",
            "kubeconfig": "/etc/cni/net.d/xcluster-cni-kubeconfig",
        },
    }
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}
    assert host.leftovers() == []


def test_kubeconfig_is_private_and_loadable_by_the_plugins_client(host: Host) -> None:
    host.install()
    path = host.conf / "xcluster-cni-kubeconfig"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ep = kubelite.from_kubeconfig(str(path))
    assert ep.server == "https://10.96.0.1:443"
    assert ep.headers == {"Authorization": "Bearer the-token"}
    assert ep.ssl_context is not None and ep.ssl_context.get_ca_certs()


def test_ipv6_api_server_gets_brackets(host: Host) -> None:
    host.env = {"KUBERNETES_SERVICE_HOST": "fd00:96::1", "KUBERNETES_SERVICE_PORT": "6443"}
    host.install()
    ep = kubelite.from_kubeconfig(str(host.conf / "xcluster-cni-kubeconfig"))
    assert ep.server == "https://[fd00:96::1]:6443"
    assert (ep.host, ep.port) == ("fd00:96::1", 6443)


def test_rerun_with_same_versions_touches_nothing(host: Host) -> None:
    host.install()
    before = host.snapshot()
    actions = host.install()
    assert host.snapshot() == before
    assert {a.what for a in actions} <= {"unchanged", "skipped"}
    assert host.mtu_calls == 1  # the conflist is there: no second API/kernel look-up


def test_different_plugin_version_is_replaced_atomically(host: Host) -> None:
    host.install()
    old_bridge = (host.bin / "bridge").stat().st_ino
    old_loopback = host.snapshot()["host/opt-cni-bin/loopback"]
    host.set_plugin("bridge", b"bridge v2")
    actions = host.install()
    assert Action(str(host.bin / "bridge"), "replaced") in actions
    assert (host.bin / "bridge").read_bytes() == b"\x7fELFbridge v2"
    assert (host.bin / "bridge").stat().st_ino != old_bridge  # a new file renamed in
    assert host.snapshot()["host/opt-cni-bin/loopback"] == old_loopback
    assert host.leftovers() == []


def test_bundle_upgrade_swaps_current_and_keeps_the_previous_version(host: Host) -> None:
    host.install()
    home = host.bin / "xcluster-cni"
    first = os.readlink(home / "current")
    links = {n: (host.bin / n).lstat().st_ino for n in ("kube-node", "node-annotation")}

    make_bundle(host.root / "b2", version="0.2.0", payload=b"two")
    os.rename(host.plugins / "xcluster-cni", host.root / "b1")
    os.rename(host.root / "b2", host.plugins / "xcluster-cni")
    host.install()
    second = os.readlink(home / "current")
    assert second.startswith("0.2.0-") and second != first
    assert (host.bin / "kube-node").resolve().read_bytes().endswith(b"two\n")
    # the plugin names were not rewritten; only `current` moved
    assert {n: (host.bin / n).lstat().st_ino for n in links} == links
    # a plugin that started from the first version can still load its files
    assert (home / first / "lib" / "libpython.so").exists()

    make_bundle(host.root / "b3", version="0.3.0", payload=b"three")
    os.rename(host.plugins / "xcluster-cni", host.root / "b2")
    os.rename(host.root / "b3", host.plugins / "xcluster-cni")
    actions = host.install()
    assert Action(str(home / first), "removed", "older version") in actions
    assert sorted(p.name for p in home.iterdir()) == sorted(
        ["current", second, os.readlink(home / "current")]
    )
    assert host.leftovers() == []


def test_old_plain_file_is_replaced_by_the_link(host: Host) -> None:
    (host.bin / "kube-node").write_bytes(b"an old single-file plugin")
    actions = host.install()
    assert Action(str(host.bin / "kube-node"), "replaced") in actions
    assert (host.bin / "kube-node").is_symlink()


def test_leftovers_of_an_interrupted_install_are_removed(host: Host) -> None:
    (host.bin / f"{files.TMP_PREFIX}abc").write_bytes(b"half a plugin")
    (host.bin / "xcluster-cni").mkdir()
    (host.bin / "xcluster-cni" / f"{files.TMP_PREFIX}dir").mkdir()
    (host.conf / f"{files.TMP_PREFIX}x").write_bytes(b"{")
    host.install()
    assert host.leftovers() == []


def test_failed_copy_leaves_the_old_file_and_no_temporary(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.install()
    host.set_plugin("portmap", b"portmap v2")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        host.install()
    assert (host.bin / "portmap").read_bytes() == b"\x7fELFportmap v1"
    assert host.leftovers() == []


def test_install_k8s_net_no_writes_no_conflist(host: Host) -> None:
    actions = host.install(install_k8s_net=False)
    assert not (host.conf / "10-xcluster-cni.conflist").exists()
    assert (host.conf / "xcluster-cni-kubeconfig").exists()
    assert (host.conf / "xcluster-cni-node-name").read_text() == "node-a\n"
    assert (host.bin / "kube-node").is_symlink()
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
    assert Action(str(path), "skipped", "an xcluster config is present") in actions
    assert host.mtu_calls == 0


def test_our_own_conflist_edited_by_hand_is_kept(host: Host) -> None:
    host.install()
    path = host.conf / "10-xcluster-cni.conflist"
    path.write_text('{"edited": true}')
    host.install(mtu=9000)
    assert path.read_text() == '{"edited": true}'


def test_other_networks_configs_do_not_stop_the_install(host: Host) -> None:
    (host.conf / "99-loopback.conf").write_text('{"type": "loopback", "name": "lo"}')
    (host.conf / "00-multus.conf").write_text("not json")
    host.install(mtu=9000)
    conflist = json.loads((host.conf / "10-xcluster-cni.conflist").read_text())
    assert conflist["plugins"][0]["mtu"] == 9000
    assert host.mtu_calls == 0  # an explicit MTU needs no look-up


def test_missing_mounts_and_node_name_are_clear_errors(host: Host) -> None:
    with pytest.raises(InputError, match="NODE_NAME"):
        service.run_install(
            plan.InstallSettings(node_name=""), host.paths, env=host.env, detect_mtu=lambda: 1500
        )
    os.rmdir(host.bin)
    with pytest.raises(InputError, match=r"bin directory .* does not exist"):
        host.install()


def test_missing_service_host_is_named(host: Host) -> None:
    host.env = {}
    with pytest.raises(InputError, match="KUBERNETES_SERVICE_HOST"):
        host.install()


def test_cluster_cidrs_reach_the_conflist_as_the_plugins_allow_list(host: Host) -> None:
    env = {"NODE_NAME": NODE, "CLUSTER_CIDRS": " 10.244.0.0/16 , fd00:10:244::/48"}
    settings = service.settings_from_env(env, mtu="1500")
    service.run_install(settings, host.paths, env=host.env, detect_mtu=host.detect_mtu)
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
    service.run_install(settings, host.paths, env=host.env, detect_mtu=host.detect_mtu)
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
