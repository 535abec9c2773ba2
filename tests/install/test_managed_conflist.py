"""The installer manages the conflist it writes: marked as its own, rewritten atomically
when what it would write changes (MTU, overlay, clusterCIDRs, the format of another
version, a file an earlier version wrote), never a config a user wrote; one JSON log
line per decision.

Real files in temporary directories; ``write_conflist`` directly, and the ``install``
subcommand for the log lines (with stand-in shims: nothing here needs ``make plugins``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import platform
import threading
from pathlib import Path
from typing import Any

import pytest
from xcluster_cni_daemon import cli

from xcluster_cni_lib.core.errors import InputError, TemporaryError
from xcluster_cni_lib.install import files, plan, service
from xcluster_cni_lib.install.service import Action

NODE = "node-a"
NAME = plan.CONFLIST_NAME
# the keys of a conflist's top level that libcni reads (libcni/conf.go,
# NetworkConfFromBytes); any other is ignored and never reaches a plugin
LIBCNI_KEYS = {
    "name",
    "cniVersion",
    "cniVersions",
    "disableCheck",
    "disableGC",
    "loadOnlyInlinedPlugins",
    "plugins",
}


class Detector:
    """``detect_mtu``: the interface MTU less the vxlan encapsulation when the settings
    ask for the overlay (as ``service.node_mtu`` does), or an error."""

    def __init__(self, interface_mtu: int = 1500) -> None:
        self.interface_mtu = interface_mtu
        self.overlay = "none"
        self.calls = 0
        self.error: Exception | None = None

    def __call__(self) -> int:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.interface_mtu - (50 if self.overlay == "vxlan" else 0)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "etc-cni-net.d"
    path.mkdir()
    return path


@pytest.fixture
def detector() -> Detector:
    return Detector()


def run(conf: Path, detector: Detector, *, version: str = "0.1.0", **settings: Any) -> Action:
    options = plan.InstallSettings(node_name=NODE, **settings)
    detector.overlay = options.overlay
    return service.write_conflist(conf, options, detect_mtu=detector, version=version)


def stat_of(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def read(conf: Path) -> dict[str, object]:
    value = json.loads((conf / NAME).read_text())
    assert isinstance(value, dict)
    return value


def bridge(conf: Path) -> dict[str, object]:
    plugins = read(conf)["plugins"]
    assert isinstance(plugins, list)
    first = plugins[0]
    assert isinstance(first, dict)
    return first


def old_conflist(*, mtu: int = 1500, cidrs: list[str] | None = None, node: str = NODE) -> bytes:
    """Byte for byte what the installer of 0.1.0 before the served IPAM wrote (94b0374,
    4c65f30: ``nodeName`` and the plugins' ``kubeconfig`` in the IPAM section)."""
    ipam: dict[str, object] = {
        "type": "kube-node",
        "nodeName": node,
        "kubeconfig": "/etc/cni/net.d/xcluster-cni-kubeconfig",
    }
    if cidrs:
        ipam["clusterCIDRs"] = cidrs
    text = f"""{{
  "cniVersion": "1.0.0",
  "name": "xcluster-cni",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "cbr0",
      "isGateway": true,
      "isDefaultGateway": true,
      "hairpinMode": true,
      "mtu": {mtu},
      "ipam": {json.dumps(ipam, indent=2).replace(chr(10), chr(10) + "      ")}
    }},
    {{
      "type": "portmap",
      "capabilities": {{
        "portMappings": true
      }}
    }}
  ]
}}
"""
    return text.encode()


# -- the marker


def test_the_marker_is_a_key_runtimes_ignore_and_its_digest_covers_the_rest() -> None:
    config = plan.managed_conflist(mtu=1450, overlay="vxlan", version="9.9.9")
    assert plan.MARKER_KEY not in LIBCNI_KEYS
    assert list(config)[-1] == plan.MARKER_KEY
    marker = config.pop(plan.MARKER_KEY)
    assert marker["sha256"] == plan.content_digest(config)
    assert config == plan.conflist(mtu=1450)  # the network itself: what it always was


def test_the_old_shape_helper_is_what_the_old_installer_rendered() -> None:
    """``old_conflist`` spelled out by hand equals the old code's rendering."""
    config = plan.conflist(mtu=1500, cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),))
    config["plugins"][0]["ipam"] = {
        "type": "kube-node",
        "nodeName": NODE,
        "kubeconfig": "/etc/cni/net.d/xcluster-cni-kubeconfig",
        "clusterCIDRs": ["10.244.0.0/16"],
    }
    assert plan.render_json(config) == old_conflist(cidrs=["10.244.0.0/16"])


# -- each path of the decision


def test_fresh_install_writes_a_marked_conflist(conf: Path, detector: Detector) -> None:
    action = run(conf, detector)
    assert action == Action(
        str(conf / NAME), "written", "mtu 1500, overlay none: no xcluster config was there"
    )
    assert bridge(conf)["mtu"] == 1500
    found = plan.recognise_conflist((conf / NAME).read_bytes(), node_name=NODE)
    assert found.ours and found.marker is not None and found.marker["version"] == "0.1.0"
    assert [p.name for p in conf.iterdir()] == [NAME]


def test_rerun_unchanged_writes_nothing(conf: Path, detector: Detector) -> None:
    run(conf, detector)
    before = stat_of(conf / NAME)
    action = run(conf, detector)
    assert action.what == "unchanged"
    assert "already as wanted" in action.detail
    assert stat_of(conf / NAME) == before
    assert detector.calls == 2


def test_another_mtu_is_rewritten_atomically(conf: Path, detector: Detector) -> None:
    run(conf, detector)
    before = stat_of(conf / NAME)
    detector.interface_mtu = 9000
    action = run(conf, detector)
    assert action.what == "rewritten"
    assert action.detail == "mtu 9000, overlay none: mtu 1500 -> 9000"
    assert bridge(conf)["mtu"] == 9000
    assert stat_of(conf / NAME)[0] != before[0]  # a new file renamed over the old one
    assert [p.name for p in conf.iterdir()] == [NAME]  # no temporary left
    # an explicit MTU wins over the detected one, without a look-up
    calls = detector.calls
    assert run(conf, detector, mtu=1400).detail == "mtu 1400, overlay none: mtu 9000 -> 1400"
    assert detector.calls == calls


def test_overlay_switch_is_rewritten_with_the_mtu_it_needs(conf: Path, detector: Detector) -> None:
    run(conf, detector)
    action = run(conf, detector, overlay="vxlan")
    assert action.what == "rewritten"
    assert action.detail == "mtu 1450, overlay vxlan: mtu 1500 -> 1450; overlay none -> vxlan"
    assert bridge(conf)["mtu"] == 1450
    assert read(conf)[plan.MARKER_KEY]["overlay"] == "vxlan"  # type: ignore[index]
    # and back
    assert run(conf, detector).detail == (
        "mtu 1500, overlay none: mtu 1450 -> 1500; overlay vxlan -> none"
    )


def test_overlay_switch_with_a_fixed_mtu_rewrites_the_marker(
    conf: Path, detector: Detector
) -> None:
    run(conf, detector, mtu=1400)
    action = run(conf, detector, mtu=1400, overlay="vxlan")
    assert (action.what, action.detail) == (
        "rewritten",
        "mtu 1400, overlay vxlan: overlay none -> vxlan",
    )
    assert bridge(conf)["mtu"] == 1400


def test_cluster_cidrs_change_is_rewritten(conf: Path, detector: Detector) -> None:
    run(conf, detector)
    cidrs = (ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("fd00:10:244::/48"))
    action = run(conf, detector, cluster_cidrs=cidrs)
    assert action.what == "rewritten"
    assert action.detail.endswith("clusterCIDRs none -> 10.244.0.0/16,fd00:10:244::/48")
    assert bridge(conf)["ipam"] == {
        "type": "kube-node",
        "clusterCIDRs": ["10.244.0.0/16", "fd00:10:244::/48"],
    }


def test_another_version_with_the_same_content_is_not_rewritten(
    conf: Path, detector: Detector
) -> None:
    """An upgrade that changes nothing in the conflist does not touch it (a runtime
    watching the directory sees no event); the marker keeps naming the writer."""
    run(conf, detector, version="0.1.0")
    before = stat_of(conf / NAME)
    action = run(conf, detector, version="0.2.0")
    assert action.what == "unchanged"
    assert "written by the installer 0.1.0" in action.detail
    assert stat_of(conf / NAME) == before


def test_another_versions_format_is_rewritten(conf: Path, detector: Detector) -> None:
    """A version that wrote something else (here: an extra bridge key), untouched since
    (its digest matches): the new version's content replaces it."""
    config = plan.conflist(mtu=1500)
    config["plugins"][0]["promiscMode"] = True
    config[plan.MARKER_KEY] = {
        "managedBy": plan.MANAGED_BY,
        "version": "0.0.9",
        "overlay": "none",
        "sha256": plan.content_digest(config),
    }
    (conf / NAME).write_bytes(plan.render_json(config))
    action = run(conf, detector, version="0.1.0")
    assert action.what == "rewritten"
    assert action.detail == "mtu 1500, overlay none: the format of 0.1.0 differs from 0.0.9's"
    assert "promiscMode" not in bridge(conf)
    assert read(conf)[plan.MARKER_KEY]["version"] == "0.1.0"  # type: ignore[index]


@pytest.mark.parametrize("cidrs", [None, ["10.244.0.0/16", "fd00:10:244::/48"]])
def test_an_older_versions_conflist_is_rewritten(
    conf: Path, detector: Detector, cidrs: list[str] | None
) -> None:
    """Exactly what the installer of the plugin-bundle days wrote (nodeName and the
    plugins' kubeconfig, no marker): the installer's, rewritten to today's content."""
    (conf / NAME).write_bytes(old_conflist(mtu=1500, cidrs=cidrs))
    settings: dict[str, Any] = {}
    if cidrs:
        settings["cluster_cidrs"] = tuple(ipaddress.ip_network(c) for c in cidrs)
    action = run(conf, detector, **settings)
    assert action.what == "rewritten"
    assert action.detail == (
        "mtu 1500, overlay none: written by an earlier version (nodeName and kubeconfig "
        "in ipam), now marked as the installer's"
    )
    ipam = bridge(conf)["ipam"]
    assert isinstance(ipam, dict)
    assert "nodeName" not in ipam and "kubeconfig" not in ipam
    assert ipam.get("clusterCIDRs") == cidrs
    assert plan.recognise_conflist((conf / NAME).read_bytes(), node_name=NODE).marker


def test_an_unmarked_conflist_of_the_served_ipam_is_rewritten(
    conf: Path, detector: Detector
) -> None:
    """What the versions between the served IPAM and the marker wrote: today's content
    without the marker."""
    (conf / NAME).write_bytes(plan.render_json(plan.conflist(mtu=1400)))
    action = run(conf, detector)
    assert action.what == "rewritten"
    assert action.detail == (
        "mtu 1500, overlay none: written by an earlier version (no marker), now marked "
        "as the installer's; mtu 1400 -> 1500"
    )


def _user_variants() -> dict[str, bytes]:
    marked = plan.render_json(plan.managed_conflist(mtu=1500, version="0.1.0"))
    return {
        # a user's own variant under our name: another IPAM setting
        "variant": plan.render_json(
            {
                "cniVersion": "1.0.0",
                "name": "xcluster-cni",
                "plugins": [{"type": "bridge", "ipam": {"type": "kube-node", "dataDir": "/x"}}],
            }
        ),
        # the old shape, reformatted by hand (one line)
        "old, reformatted": json.dumps(json.loads(old_conflist())).encode(),
        # the old shape with one more key
        "old, one key more": old_conflist().replace(
            b'"hairpinMode"', b'"ipMasq": true,\n"hairpinMode"'
        ),
        # the old shape for another node (copied from elsewhere)
        "old, another node": old_conflist(node="node-b"),
        # the old shape with an MTU no installer writes
        "old, impossible mtu": old_conflist(mtu=100),
        # ours, its MTU edited in place (the digest no longer matches)
        "marked, edited": marked.replace(b'"mtu": 1500', b'"mtu": 9000'),
        # ours, reformatted
        "marked, reformatted": json.dumps(json.loads(marked)).encode(),
        # a marker key we did not write
        "foreign marker": plan.render_json(
            {**plan.conflist(mtu=1500), plan.MARKER_KEY: {"managedBy": "someone else"}}
        ),
        "not json": b"{ this is not json",
        "a list": b"[]\n",
    }


@pytest.mark.parametrize("variant", sorted(_user_variants()))
def test_a_users_conflist_under_our_name_is_untouched(
    conf: Path, detector: Detector, variant: str
) -> None:
    content = _user_variants()[variant]
    path = conf / NAME
    path.write_bytes(content)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = stat_of(path)
    action = run(conf, detector, mtu=1450, overlay="vxlan")
    assert path.read_bytes() == content
    assert stat_of(path) == before
    assert action.what == "skipped"
    assert action.detail.startswith("a user's: ")
    assert action.detail.endswith("; not touched")
    assert [p.name for p in conf.iterdir()] == [NAME]


def test_the_reasons_say_why_a_file_is_a_users() -> None:
    variants = _user_variants()
    reasons = {
        name: plan.recognise_conflist(content, node_name=NODE).reason
        for name, content in variants.items()
    }
    assert reasons["variant"] == "not written by the installer (no xclusterCNI marker)"
    assert reasons["marked, edited"] == (
        "edited since the installer wrote it (the content does not match its digest)"
    )
    assert reasons["foreign marker"] == "not written by the installer (a foreign xclusterCNI key)"
    assert reasons["not json"] == "not written by the installer (not JSON)"


def test_a_symlink_under_our_name_is_a_users(conf: Path, detector: Detector) -> None:
    target = conf.parent / "elsewhere.json"
    target.write_bytes(plan.render_json(plan.managed_conflist(mtu=1500, version="0.1.0")))
    (conf / NAME).symlink_to(target)
    action = run(conf, detector, mtu=1400)
    assert action.what == "skipped" and "symlink" in action.detail
    assert (conf / NAME).is_symlink()
    assert bridge(conf)["mtu"] == 1500


def test_a_users_xcluster_config_sorting_first_stops_ours(conf: Path, detector: Detector) -> None:
    """Today's rule stays: with a user's xcluster config in the directory, ours is not
    written (a runtime takes the first file by name, and that is the user's)."""
    mine = conf / "05-mine.conflist"
    content = b'{"cniVersion": "1.0.0", "name": "mine", "plugins": [{"type": "bridge", ' + (
        b'"ipam": {"type": "node-annotation"}}]}'
    )
    mine.write_bytes(content)
    action = run(conf, detector)
    assert action == Action(
        str(mine), "skipped", "a user's xcluster config comes first: not touched"
    )
    assert sorted(p.name for p in conf.iterdir()) == ["05-mine.conflist"]
    assert detector.calls == 0
    # ours behind it (from before the user's): not rewritten either
    (conf / NAME).write_bytes(plan.render_json(plan.managed_conflist(mtu=1500, version="0.1.0")))
    before = stat_of(conf / NAME)
    action = run(conf, detector, mtu=1400)
    assert action.what == "skipped" and action.detail.endswith(f"nor {NAME} behind it")
    assert stat_of(conf / NAME) == before and mine.read_bytes() == content


def test_a_users_xcluster_config_sorting_after_ours_does_not_stop_it(
    conf: Path, detector: Detector
) -> None:
    run(conf, detector)
    later = conf / "20-mine.conflist"
    later.write_text('{"name": "mine", "plugins": [{"type": "b", "ipam": {"type": "kube-node"}}]}')
    assert run(conf, detector, mtu=1400).what == "rewritten"
    assert bridge(conf)["mtu"] == 1400


def test_other_networks_configs_are_no_reason_to_skip(conf: Path, detector: Detector) -> None:
    (conf / "00-multus.conf").write_text('{"type": "multus", "name": "m"}')
    (conf / "99-loopback.conf").write_text("not json")
    assert run(conf, detector).what == "written"
    assert run(conf, detector, mtu=1400).what == "rewritten"


def test_a_failed_mtu_lookup_keeps_our_conflist(conf: Path, detector: Detector) -> None:
    """Without the API server (a node rebooting while the control plane is away) the
    installer keeps its conflist and the node keeps working, as before the rewrite rule;
    a warning says why. With no conflist, the failure stops the install, as before."""
    detector.error = TemporaryError("cannot read node node-a: connection refused")
    with pytest.raises(TemporaryError):
        run(conf, detector)
    assert list(conf.iterdir()) == []
    detector.error = None
    run(conf, detector)
    before = stat_of(conf / NAME)
    for error in (TemporaryError("connection refused"), InputError("node node-a does not exist")):
        detector.error = error
        action = run(conf, detector)
        assert (action.what, action.level) == ("kept", "warning")
        assert action.detail.startswith("written by the installer 0.1.0; left as it is")
        assert str(error) in action.detail
        assert stat_of(conf / NAME) == before


def test_a_reader_sees_the_old_or_the_new_conflist_whole(conf: Path, detector: Detector) -> None:
    run(conf, detector)
    seen: set[int] = set()
    done = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        while not done.is_set():
            try:
                seen.add(json.loads((conf / NAME).read_bytes())["plugins"][0]["mtu"])
            except Exception as e:  # a torn read: reported below
                errors.append(e)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(40):
            assert run(conf, detector, mtu=1400 + i % 2).what == "rewritten"
    finally:
        done.set()
        thread.join()
    assert errors == []
    assert seen <= {1500, 1400, 1401}
    assert [p.name for p in conf.iterdir()] == [NAME]


# -- through run_install and the command


def test_install_k8s_net_no_leaves_the_directory_alone(tmp_path: Path, conf: Path) -> None:
    """A secondary-network instance shares the directory with the main one: it neither
    writes nor rewrites (even a stale) conflist, and looks nothing up."""
    paths = fake_image(tmp_path, conf)
    stale = plan.render_json(plan.managed_conflist(mtu=1500, version="0.0.1"))
    (conf / NAME).write_bytes(stale)
    before = stat_of(conf / NAME)

    def no_lookup() -> int:
        raise AssertionError("no MTU look-up with INSTALL_K8S_NET=no")

    settings = plan.InstallSettings(node_name=NODE, install_k8s_net=False, mtu=9000)
    actions = service.run_install(settings, paths, detect_mtu=no_lookup, machine="x86_64")
    assert actions[-1] == Action(
        str(conf / NAME), "skipped", "INSTALL_K8S_NET=no: no conflist written or changed"
    )
    assert (conf / NAME).read_bytes() == stale and stat_of(conf / NAME) == before
    (conf / NAME).unlink()
    service.run_install(settings, paths, detect_mtu=no_lookup, machine="x86_64")
    assert list(conf.iterdir()) == []


def fake_image(tmp_path: Path, conf: Path) -> service.InstallPaths:
    """Stand-in shims and reference plugins laid out as in the image."""
    bin_dir, shims, reference = (tmp_path / n for n in ("bin", "shims", "reference"))
    for d in (bin_dir, reference):
        d.mkdir()
    for arch in ("amd64", "arm64"):
        (shims / arch).mkdir(parents=True)
        (shims / arch / plan.SHIM_NAME).write_bytes(b"\x7fELF shim " + arch.encode())
    for name in plan.REFERENCE_PLUGINS:
        (reference / name).write_bytes(b"\x7fELF " + name.encode())
    return service.InstallPaths(
        bin_dir=bin_dir, conf_dir=conf, shim_dir=shims, reference_dir=reference
    )


def test_each_decision_is_one_json_log_line(
    tmp_path: Path,
    conf: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if platform.machine() not in plan.MACHINE_ARCH:
        pytest.skip(f"no shim for {platform.machine()}")
    paths = fake_image(tmp_path, conf)
    argv = [
        "install",
        f"--cni-bin-dir={paths.bin_dir}",
        f"--cni-conf-dir={conf}",
        f"--shim-dir={paths.shim_dir}",
        f"--reference-dir={paths.reference_dir}",
    ]
    monkeypatch.setenv("NODE_NAME", NODE)
    path = str(conf / NAME)

    def conflist_lines(*env: tuple[str, str]) -> list[dict[str, object]]:
        for key, value in env:
            monkeypatch.setenv(key, value)
        assert cli.main(argv) == 0
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
        return [line for line in lines if line.get("path") == path]

    (line,) = conflist_lines(("MTU", "1400"))
    assert (line["action"], line["level"], line["msg"]) == ("written", "info", f"written {path}")
    assert line["detail"] == "mtu 1400, overlay none: no xcluster config was there"
    (line,) = conflist_lines(("MTU", "1400"))
    assert line["action"] == "unchanged"
    (line,) = conflist_lines(("MTU", "1450"), ("OVERLAY", "vxlan"))
    assert (line["action"], line["detail"]) == (
        "rewritten",
        "mtu 1450, overlay vxlan: mtu 1400 -> 1450; overlay none -> vxlan",
    )
    files.write_atomic(conf / NAME, b'{"mine": true}\n')
    (line,) = conflist_lines()
    assert line["action"] == "skipped"
    assert line["detail"] == (
        "a user's: not written by the installer (no xclusterCNI marker); not touched"
    )
    (line,) = conflist_lines(("INSTALL_K8S_NET", "no"))
    assert line["action"] == "skipped" and "INSTALL_K8S_NET=no" in str(line["detail"])
