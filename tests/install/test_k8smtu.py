"""The bridge MTU follows the interface that holds the node's address, and the
``install``/``k8smtu`` subcommands as a user runs them."""

from __future__ import annotations

import ipaddress
import json
import platform
from pathlib import Path

import pytest
from xcluster_cni_daemon import cli

from tests.apiserver import ApiServerDouble
from xcluster_cni_lib.core.errors import InputError, InvalidNode
from xcluster_cni_lib.core.values import InterfaceAddress
from xcluster_cni_lib.install import plan, service
from xcluster_cni_lib.testing.netns import run_in
from xcluster_cni_lib.testing.nodes import make_node

INTERFACES = [
    InterfaceAddress(
        "eth0", 1500, ipaddress.ip_network("192.168.1.0/24"), ipaddress.ip_address("192.168.1.10")
    ),
    InterfaceAddress(
        "vxlan0", 1450, ipaddress.ip_network("10.200.0.0/16"), ipaddress.ip_address("10.200.0.1")
    ),
    InterfaceAddress(
        "eth1", 9000, ipaddress.ip_network("fd00:1::/64"), ipaddress.ip_address("fd00:1::10")
    ),
]


def test_mtu_of_the_interface_holding_the_internal_ip() -> None:
    node = make_node("n1", internal_ips=["192.168.1.10", "fd00:1::10"])
    assert service.node_mtu(node, INTERFACES, address_annotation=None) == (1500, None)


def test_mtu_follows_the_address_annotation_for_overlays() -> None:
    node = make_node(
        "n1", internal_ips=["192.168.1.10"], annotations={"example.com/overlay": "10.200.0.1"}
    )
    mtu, warning = service.node_mtu(node, INTERFACES, address_annotation="example.com/overlay")
    assert (mtu, warning) == (1450, None)


def test_vxlan_overlay_leaves_room_for_the_encapsulation() -> None:
    v4 = make_node("n1", internal_ips=["192.168.1.10"])
    v6 = make_node("n1", internal_ips=["fd00:1::10"])
    assert service.node_mtu(v4, INTERFACES, address_annotation=None, overlay="vxlan") == (
        1450,
        None,
    )
    assert service.node_mtu(v6, INTERFACES, address_annotation=None, overlay="vxlan") == (
        8930,
        None,
    )
    assert service.settings_from_env({"OVERLAY": "VXLAN"}).overlay == "vxlan"
    assert service.settings_from_env({}).overlay == "none"
    with pytest.raises(InputError, match="OVERLAY='geneve': use none or vxlan"):
        service.settings_from_env({"OVERLAY": "geneve"})


def test_missing_annotation_names_node_and_key() -> None:
    node = make_node("n1", internal_ips=["192.168.1.10"])
    with pytest.raises(InvalidNode, match=r"node n1: .*example.com/overlay"):
        service.node_mtu(node, INTERFACES, address_annotation="example.com/overlay")


def test_no_interface_holds_the_address_gives_default_and_warning() -> None:
    node = make_node("n1", internal_ips=["172.16.0.5"])
    mtu, warning = service.node_mtu(node, INTERFACES, address_annotation=None)
    assert mtu == 1500 and warning and "172.16.0.5" in warning


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, True), ("", True), ("no", False), ("No", False), ("false", False), ("yes", True)],
)
def test_install_k8s_net_values(value: str | None, expected: bool) -> None:
    assert plan.parse_yes_no("INSTALL_K8S_NET", value, default=True) is expected


def test_bad_settings_are_named() -> None:
    with pytest.raises(InputError, match="INSTALL_K8S_NET='maybe'"):
        plan.parse_yes_no("INSTALL_K8S_NET", "maybe", default=True)
    with pytest.raises(InputError, match="MTU='100'"):
        plan.parse_mtu("MTU", "100")


@pytest.mark.root
def test_k8smtu_reads_the_node_from_the_api_and_the_kernel(netns: str, tmp_path: Path) -> None:
    run_in(
        netns,
        ["ip", "link", "add", "uplink0", "mtu", "1380", "type", "veth", "peer", "name", "uplink0p"],
    )
    run_in(netns, ["ip", "addr", "add", "192.168.77.10/24", "dev", "uplink0"])
    run_in(netns, ["ip", "link", "set", "uplink0", "up"])
    with ApiServerDouble() as api:
        api.add_node(make_node("n1", internal_ips=["192.168.77.10"]))
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        mtu = service.detect_mtu("n1", address_annotation=None, kubeconfig=kubeconfig, netns=netns)
        assert mtu == (1380, None)
        with pytest.raises(InputError, match="node gone does not exist"):
            service.detect_mtu("gone", address_annotation=None, kubeconfig=kubeconfig)


def _cli_host(tmp_path: Path, shims: Path) -> tuple[list[str], Path]:
    bin_dir, conf_dir, reference = (tmp_path / n for n in ("bin", "conf", "reference"))
    for d in (bin_dir, conf_dir, reference):
        d.mkdir()
    for name in ("bridge", "host-local", "loopback", "portmap"):
        (reference / name).write_bytes(b"\x7fELF " + name.encode())
        (reference / name).chmod(0o755)
    (conf_dir / "xcluster-cni-kubeconfig").write_text("users: [{user: {token: tok}}]")
    argv = [
        "install",
        f"--cni-bin-dir={bin_dir}",
        f"--cni-conf-dir={conf_dir}",
        f"--shim-dir={shims}",
        f"--reference-dir={reference}",
    ]
    return argv, tmp_path


def test_install_subcommand(
    tmp_path: Path,
    plugins_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv, root = _cli_host(tmp_path, plugins_dir)
    monkeypatch.setenv("NODE_NAME", "node-b")
    monkeypatch.setenv("MTU", "1400")
    assert cli.main(argv) == 0
    conflist = json.loads((root / "conf" / "10-xcluster-cni.conflist").read_text())
    assert conflist["plugins"][0]["ipam"] == {"type": "kube-node"}
    assert conflist["plugins"][0]["mtu"] == 1400
    assert (root / "bin" / "loopback").exists()
    arch = plan.shim_arch(platform.machine())
    shim = (plugins_dir / arch / "xcluster-cni-shim").read_bytes()
    assert (root / "bin" / "kube-node").read_bytes() == shim
    assert (root / "bin" / "node-annotation").read_bytes() == shim
    assert not (root / "conf" / "xcluster-cni-kubeconfig").exists()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[-1]["msg"] == "install done"
    said = {(line.get("path", "").rsplit("/", 1)[-1], line.get("action")) for line in lines}
    assert ("kube-node", "installed") in said
    assert ("loopback", "installed") in said
    assert ("xcluster-cni-kubeconfig", "removed") in said
    assert "tok" not in json.dumps(lines)  # the old token is never logged


def test_install_subcommand_bad_setting_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, root = _cli_host(tmp_path, tmp_path / "no-shims")
    monkeypatch.setenv("NODE_NAME", "node-b")
    monkeypatch.setenv("INSTALL_K8S_NET", "maybe")
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "INSTALL_K8S_NET='maybe'" in err[0]
    assert list((root / "bin").iterdir()) == []  # nothing installed


def test_install_settings_from_the_environment_and_flags() -> None:
    env = {"NODE_NAME": "n1", "INSTALL_K8S_NET": "no", "MTU": "1400"}
    settings = service.settings_from_env(env)
    assert settings == plan.InstallSettings(node_name="n1", install_k8s_net=False, mtu=1400)
    settings = service.settings_from_env(env, mtu="9000")
    assert settings.mtu == 9000
    assert service.settings_from_env({}).install_k8s_net is True


def test_an_annotation_key_the_daemon_refuses_stops_the_installer() -> None:
    with pytest.raises(InputError, match="'bad key!!'"):
        service.settings_from_env({"NODE_NAME": "n1", "ADDRESS_ANNOTATION": "bad key!!"})
    assert service.address_annotation_setting("", {"ADDRESS_ANNOTATION": "a.io/x"}) is None
    assert service.address_annotation_setting(None, {"ADDRESS_ANNOTATION": "a.io/x"}) == "a.io/x"
