"""The pure CNI protocol helpers: versions, CNI_ARGS, env checks, result shapes."""

from __future__ import annotations

import pytest

from xcluster_cni_lib.plugin import protocol as p


def test_supported_versions_are_the_promised_ones() -> None:
    assert p.version_info("1.0.0") == {
        "cniVersion": "1.0.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


@pytest.mark.parametrize("version", ["0.2.0", "0.1.0", "2.0.0", "1.0", "x"])
def test_unknown_version_is_code_1_listing_supported(version: str) -> None:
    with pytest.raises(p.CniError) as e:
        p.check_version(version)
    assert e.value.code == 1
    assert "1.1.0" in e.value.details and version in e.value.msg


@pytest.mark.parametrize("version", [None, "", 1])
def test_missing_version_is_invalid_config(version: object) -> None:
    with pytest.raises(p.CniError) as e:
        p.check_version(version)
    assert e.value.code == 7


@pytest.mark.parametrize(
    ("text", "namespace"),
    [
        # containerd
        (
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=a-1;"
            "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1",
            "web",
        ),
        # CRI-O: another order
        ("K8S_POD_UID=u;IgnoreUnknown=1;K8S_POD_NAME=a;K8S_POD_NAMESPACE=web", "web"),
        # Multus adds its own keys
        (
            "IgnoreUnknown=true;K8S_POD_NAMESPACE=web;K8S_POD_NAME=a;"
            "K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=u;MAC=02:00:00:00:00:01",
            "web",
        ),
        # podman passes no namespace at all
        ("IgnoreUnknown=1", None),
        ("", None),
        # a value may contain '='
        ("IgnoreUnknown=1;K8S_POD_NAMESPACE=a=b", "a=b"),
        # junk items are skipped under IgnoreUnknown
        ("IgnoreUnknown=1;junk;K8S_POD_NAMESPACE=web;;", "web"),
    ],
)
def test_cni_args_from_every_runtime(text: str, namespace: str | None) -> None:
    assert p.parse_cni_args(text).get("K8S_POD_NAMESPACE") == namespace


def test_malformed_cni_args_without_ignore_unknown_is_code_4() -> None:
    with pytest.raises(p.CniError) as e:
        p.parse_cni_args("K8S_POD_NAMESPACE=web;junk")
    assert e.value.code == 4 and "junk" in e.value.msg


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        ("ADD", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]),
        ("CHECK", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]),
        ("DEL", ["CNI_CONTAINERID", "CNI_IFNAME"]),
    ],
)
def test_missing_env_is_code_4_naming_each(command: str, missing: list[str]) -> None:
    with pytest.raises(p.CniError) as e:
        p.check_env(command, {"CNI_COMMAND": command})
    assert e.value.code == 4
    for name in missing:
        assert name in e.value.msg
    p.check_env(command, dict.fromkeys(missing, "x"))  # complete: fine


def test_del_does_not_need_netns_or_path() -> None:
    p.check_env("DEL", {"CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0"})


@pytest.mark.parametrize("command", ["", "ADDX", "add"])
def test_bad_command_is_code_4(command: str) -> None:
    with pytest.raises(p.CniError) as e:
        p.parse_command({"CNI_COMMAND": command})
    assert e.value.code == 4


RESULT_1_0 = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0"}],
    "ips": [
        {"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 0},
        {"address": "fd00::2/64", "gateway": "fd00::1"},
    ],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_legacy_results_carry_ip_versions(version: str) -> None:
    out = p.convert_result(RESULT_1_0, version)
    assert out["cniVersion"] == version
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert "interfaces" not in out
    assert all("interface" not in ip for ip in out["ips"])
    assert out["routes"] == [{"dst": "0.0.0.0/0"}]


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_1x_results_have_no_ip_versions_and_no_interfaces(version: str) -> None:
    legacy = p.convert_result(RESULT_1_0, "0.4.0")
    out = p.convert_result(legacy, version)
    assert out == {
        "cniVersion": version,
        "ips": [
            {"address": "10.0.0.2/24", "gateway": "10.0.0.1"},
            {"address": "fd00::2/64", "gateway": "fd00::1"},
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    }


def test_error_object_shape() -> None:
    err = p.CniError(101, "node n1 not found", "x").to_json("1.0.0")
    assert err == {"cniVersion": "1.0.0", "code": 101, "msg": "node n1 not found", "details": "x"}
