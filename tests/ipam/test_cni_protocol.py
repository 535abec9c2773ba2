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


# -- pinned numbers: runtimes and users branch on these ------------------------------


@pytest.mark.parametrize(
    ("name", "code"),
    [
        # the CNI spec's well-known codes
        ("INCOMPATIBLE_VERSION", 1),
        ("UNSUPPORTED_FIELD", 2),
        ("UNKNOWN_CONTAINER", 3),
        ("INVALID_ENV", 4),
        ("IO_FAILURE", 5),
        ("DECODE_FAILURE", 6),
        ("INVALID_CONFIG", 7),
        ("TRY_AGAIN_LATER", 11),
        ("NOT_AVAILABLE", 50),
        # ours, 100 and up, as documented in docs/ipam.md
        ("NODE_UNUSABLE", 100),
        ("NODE_NOT_FOUND", 101),
        ("NO_DELEGATE", 102),
        ("NO_FAMILY", 103),
        ("DELEGATE_FAILED", 104),
        ("INTERNAL_ERROR", 105),
    ],
)
def test_error_codes_are_the_documented_numbers(name: str, code: int) -> None:
    assert getattr(p, name) == code


def test_error_code_constants_are_all_pinned() -> None:
    names = {
        n
        for n, v in vars(p).items()
        if n.isupper() and type(v) is int  # not TYPE_CHECKING
    }
    assert names == {
        "INCOMPATIBLE_VERSION",
        "UNSUPPORTED_FIELD",
        "UNKNOWN_CONTAINER",
        "INVALID_ENV",
        "IO_FAILURE",
        "DECODE_FAILURE",
        "INVALID_CONFIG",
        "TRY_AGAIN_LATER",
        "NOT_AVAILABLE",
        "NODE_UNUSABLE",
        "NODE_NOT_FOUND",
        "NO_DELEGATE",
        "NO_FAMILY",
        "DELEGATE_FAILED",
        "INTERNAL_ERROR",
    }


def test_commands_and_latest_version() -> None:
    assert p.COMMANDS == ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
    assert p.LATEST_VERSION == "1.1.0" == p.SUPPORTED_VERSIONS[-1]
    assert p.version_info() == {
        "cniVersion": "1.1.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_check_version_returns_the_supported_version(version: str) -> None:
    assert p.check_version(version) == version


def test_check_version_messages() -> None:
    with pytest.raises(p.CniError) as e:
        p.check_version("0.2.0")
    assert (e.value.code, e.value.msg, e.value.details) == (
        1,
        "incompatible CNI version '0.2.0'",
        "supported versions: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0",
    )
    with pytest.raises(p.CniError) as e:
        p.check_version(None)
    assert (e.value.code, e.value.msg, e.value.details) == (
        7,
        "network config has no cniVersion string",
        "None",
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [("0.4.0", (0, 4, 0)), ("1.10.2", (1, 10, 2)), ("10.0.0", (10, 0, 0))],
)
def test_version_key_orders_numerically(text: str, key: tuple[int, ...]) -> None:
    assert p.version_key(text) == key


@pytest.mark.parametrize("text", ["1.0", "1.0.0.0", "1.x.0", "", "1..0", "-1.0.0"])
def test_version_key_rejects_other_shapes(text: str) -> None:
    with pytest.raises(ValueError, match="not a CNI version"):
        p.version_key(text)


def test_every_command_parses_and_only_the_documented_env_is_required() -> None:
    for command in p.COMMANDS:
        assert p.parse_command({"CNI_COMMAND": command}) == command
    for command in ("GC", "STATUS", "VERSION"):
        p.check_env(command, {})  # nothing needed
    with pytest.raises(p.CniError) as e:
        p.parse_command({})
    assert e.value.msg == "missing environment variables: CNI_COMMAND"
    with pytest.raises(p.CniError) as e:
        p.parse_command({"CNI_COMMAND": "add"})
    assert e.value.msg == "unknown CNI_COMMAND 'add'"
    with pytest.raises(p.CniError) as e:
        p.check_env("DEL", {"CNI_CONTAINERID": "", "CNI_IFNAME": "eth0"})  # empty = missing
    assert e.value.msg == "missing environment variables: CNI_CONTAINERID"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("A=1;B=2", {"A": "1", "B": "2"}),
        ("A=1;A=2", {"A": "2"}),  # the last one wins
        ("A=", {"A": ""}),
        ("IgnoreUnknown=TRUE;=x;A=1", {"IgnoreUnknown": "TRUE", "A": "1"}),  # no key: skipped
    ],
)
def test_cni_args_exact(text: str, parsed: dict[str, str]) -> None:
    assert p.parse_cni_args(text) == parsed


@pytest.mark.parametrize(
    "text", ["=x;A=1", "IgnoreUnknown=0;junk", "IgnoreUnknown=yes;junk", "junk;=y;also-junk"]
)
def test_cni_args_errors_name_the_first_bad_item(text: str) -> None:
    with pytest.raises(p.CniError) as e:
        p.parse_cni_args(text)
    bad = text.split(";")[0] if text.startswith("=") else "junk"
    assert (e.value.code, e.value.msg, e.value.details) == (
        4,
        f"CNI_ARGS: malformed item {bad!r}",
        text,
    )


def test_convert_result_keeps_only_known_keys_and_tolerates_missing_ips() -> None:
    assert p.convert_result({"cniVersion": "1.0.0"}, "0.4.0") == {"cniVersion": "0.4.0", "ips": []}
    out = p.convert_result({"ips": [{"address": "10.0.0.2/24"}], "other": 1}, "1.1.0")
    assert out == {"cniVersion": "1.1.0", "ips": [{"address": "10.0.0.2/24"}]}
    # the version is decided by the address, not by a gateway
    legacy = p.convert_result({"ips": [{"address": "10.0.0.2/24", "gateway": "fd00::1"}]}, "0.3.1")
    assert legacy["ips"] == [{"version": "4", "address": "10.0.0.2/24", "gateway": "fd00::1"}]
    assert list(legacy["ips"][0]) == ["version", "address", "gateway"]


def test_error_object_without_details_has_no_details_key() -> None:
    err = p.CniError(7, "bad config")
    assert str(err) == "bad config"
    assert err.to_json("0.4.0") == {"cniVersion": "0.4.0", "code": 7, "msg": "bad config"}
