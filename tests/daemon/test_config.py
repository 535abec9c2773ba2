"""Daemon settings: every invalid value stops start-up with a message naming the variable."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

from xcluster_cni_lib.core.ranges import RangePolicy
from xcluster_cni_lib.daemon.config import (
    ConfigError,
    DaemonConfig,
    load_config,
    parse_http_address,
    read_rt_protos,
)

RUN_SUBCOMMAND = """
import argparse, sys
from xcluster_cni_daemon import daemon_cmd
parser = argparse.ArgumentParser()
daemon_cmd.register(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""
PROTOS = {0: "unspec", 2: "kernel", 4: "static", 12: "bird", 186: "bgp", 201: "xcluster"}


def load(**env: str) -> DaemonConfig:
    return load_config(env, rt_protos=PROTOS)


def test_defaults() -> None:
    c = load()
    assert (c.protocol, c.resync_interval, c.log_level, c.http_address) == (202, 60.0, "info", None)
    assert c.kubeconfig is None and c.nodes_file is None


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PROTOCOL", "0"),
        ("PROTOCOL", "4"),
        ("PROTOCOL", "static"),
        ("PROTOCOL", "256"),
        ("PROTOCOL", "nosuchproto"),
        ("PROTOCOL", "-3"),
        ("LOG_LEVEL", "verbose"),
        ("RESYNC_INTERVAL", "soon"),
        ("RESYNC_INTERVAL", "0"),
        ("RESYNC_INTERVAL", "2d"),
        ("HTTP_ADDRESS", "9202"),
        ("HTTP_ADDRESS", "::1:9202"),
        ("HTTP_ADDRESS", "127.0.0.1:http"),
        ("HTTP_ADDRESS", "127.0.0.1:70000"),
        ("HTTP_ADDRESS", "[localhost]:80"),
        ("HTTP_ADDRESS", "[]:80"),
        ("LOG_LEVEL", "1.5"),
        ("CIDR_ANNOTATION", "bad key/with/slashes"),
        ("ADDRESS_ANNOTATION", "-leading-dash"),
        ("NODE_NAME", "Not_A_Node"),
        ("KUBECONFIG", "/nonexistent/kubeconfig"),
        ("NODES_FILE", "/"),
        ("CLUSTER_CIDRS", "10.244.0.0/16,banana"),
        ("CLUSTER_CIDRS", "10.244.0.0/16,,fd00::/48"),
        ("CLUSTER_CIDRS", "0.0.0.0/0"),
        ("MIN_POD_PREFIX_V4", "0"),
        ("MIN_POD_PREFIX_V4", "31"),
        ("MIN_POD_PREFIX_V4", "eight"),
        ("MIN_POD_PREFIX_V6", "127"),
        ("MIN_POD_PREFIX_V6", "-1"),
    ],
)
def test_invalid_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(**{var: value})
    assert e.value.name == var
    assert str(e.value).startswith(f"{var}={value!r}: ")


def test_kernel_protocols_are_refused_with_a_clear_reason() -> None:
    with pytest.raises(ConfigError, match="kernel's own protocol 'boot'"):
        load(PROTOCOL="3")


def test_protocol_by_name_and_warning_for_a_registered_number() -> None:
    assert load(PROTOCOL="xcluster").protocol == 201
    assert not any("rt_protos" in w for w in load(PROTOCOL="xcluster").warnings)
    c = load(PROTOCOL="186")
    assert c.protocol == 186
    assert any("'bgp'" in w for w in c.warnings)
    assert not any("rt_protos" in w for w in load(PROTOCOL="202").warnings)


def test_flags_override_env() -> None:
    c = load_config(
        {"PROTOCOL": "150", "LOG_LEVEL": "debug"}, {"PROTOCOL": "151", "LOG_LEVEL": None}
    )
    assert (c.protocol, c.log_level) == (151, "debug")


@pytest.mark.parametrize(
    ("text", "seconds"), [("60", 60.0), ("1.5", 1.5), ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert load(RESYNC_INTERVAL=text).resync_interval == seconds


def test_http_addresses() -> None:
    assert parse_http_address("127.0.0.1:9202") == ("127.0.0.1", 9202)
    assert parse_http_address("[::1]:9202") == ("::1", 9202)
    assert parse_http_address(":9202") == ("", 9202)
    assert load(HTTP_ADDRESS="").http_address is None


def test_nodes_file_wins_over_kubeconfig(tmp_path: os.PathLike[str]) -> None:
    kc = os.path.join(tmp_path, "kc")
    open(kc, "w").close()
    c = load(NODES_FILE="/tmp/nodes.json", KUBECONFIG=kc)
    assert c.kubeconfig is None and any("KUBECONFIG is ignored" in w for w in c.warnings)


def test_rt_protos_files_are_read(tmp_path: os.PathLike[str]) -> None:
    main = os.path.join(tmp_path, "rt_protos")
    d = os.path.join(tmp_path, "rt_protos.d")
    os.mkdir(d)
    with open(main, "w") as f:
        f.write("# comment\n186\tbgp\n0x0c bird # hex\n")
    with open(os.path.join(d, "x.conf"), "w") as f:
        f.write("202 xcluster\n")
    assert read_rt_protos([main], [d]) == {186: "bgp", 12: "bird", 202: "xcluster"}


def test_the_command_refuses_a_bad_value_with_a_json_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", RUN_SUBCOMMAND, "daemon"],
        env={**os.environ, "PROTOCOL": "2", "NODES_FILE": "/tmp/x"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    line = json.loads(proc.stderr.strip().splitlines()[-1])
    assert line["level"] == "error" and line["variable"] == "PROTOCOL"
    assert "PROTOCOL='2'" in line["msg"]


def test_prefixed_lookalikes_are_warned_about_not_read() -> None:
    c = load(XCLUSTER_PROTOCOL="150", PROTOCOL="151")
    assert c.protocol == 151
    assert any("XCLUSTER_PROTOCOL is set but not read" in w for w in c.warnings)


ANNOTATION_KEYS = [
    "node-ip.nordix.org/net3",
    "example.com/x_y.z",
    "plain",
    "a" * 63,
    "a" * 64,
    "bad key!!",
    "example.com/",
    "/name",
    "Example.com/x",
    "ex_ample.com/x",
    "-x",
    "x-",
    "a/b/c",
]


@pytest.mark.parametrize("key", ANNOTATION_KEYS)
def test_the_daemon_and_the_tools_accept_the_same_annotation_keys(key: str) -> None:
    """``xcluster-cni plan``/``nodes`` and the installer check keys with the core's
    ``Annotations``: they must refuse exactly what the daemon refuses to start with."""
    from xcluster_cni_lib.core.errors import InputError
    from xcluster_cni_lib.core.values import Annotations

    def daemon_accepts(variable: str) -> bool:
        try:
            load(**{variable: key})
        except ConfigError:
            return False
        return True

    def tools_accept(**kwargs: str) -> bool:
        try:
            Annotations(**kwargs)
        except InputError:
            return False
        return True

    assert daemon_accepts("ADDRESS_ANNOTATION") == tools_accept(address=key)
    assert daemon_accepts("CIDR_ANNOTATION") == tools_accept(cidr=key)


def test_the_pod_cidr_rule_settings() -> None:
    c = load()
    assert c.cluster_cidrs == () and (c.min_pod_prefix_v4, c.min_pod_prefix_v6) == (8, 32)
    assert c.range_policy == RangePolicy()
    c = load(
        CLUSTER_CIDRS=" 10.244.0.0/16 , fd00:10:244::/48",
        MIN_POD_PREFIX_V4="16",
        MIN_POD_PREFIX_V6="48",
    )
    assert [str(n) for n in c.cluster_cidrs] == ["10.244.0.0/16", "fd00:10:244::/48"]
    assert c.range_policy.refusal(ipaddress.ip_network("10.245.0.0/24")) is not None
    assert c.range_policy.refusal(ipaddress.ip_network("10.244.0.0/15")) is not None
    assert c.range_policy.refusal(ipaddress.ip_network("10.244.7.0/24")) is None
    log = c.to_log()
    assert log["cluster_cidrs"] == "10.244.0.0/16,fd00:10:244::/48"
    assert (log["min_pod_prefix_v4"], log["min_pod_prefix_v6"]) == (16, 48)
    assert load(CLUSTER_CIDRS="").cluster_cidrs == ()  # empty: no allow-list


def test_a_cluster_cidr_in_the_deny_list_is_warned_about() -> None:
    c = load(CLUSTER_CIDRS="10.244.0.0/16,169.254.0.0/16")
    assert any("169.254.0.0/16 overlaps the link-local range" in w for w in c.warnings)


def test_a_huge_bad_value_makes_a_short_error() -> None:
    with pytest.raises(ConfigError) as e:
        load(CLUSTER_CIDRS="x" * 300_000)
    assert e.value.name == "CLUSTER_CIDRS" and len(str(e.value)) < 700


def test_overlay_and_masquerade_settings() -> None:
    base = load_config({}, rt_protos={})
    assert (base.overlay, base.overlay_device, base.masquerade) == ("none", None, False)
    config = load_config(
        {
            "OVERLAY": "vxlan",
            "PROTOCOL": "205",
            "MASQUERADE": "true",
            "NON_MASQUERADE_CIDRS": "192.168.0.0/16, fd00:99::/64",
        },
        rt_protos={},
    )
    assert (config.overlay_device, config.vni, config.vxlan_port) == ("xcvx205", 205, 8472)
    assert config.masquerade
    assert [str(c) for c in config.non_masquerade_cidrs] == ["192.168.0.0/16", "fd00:99::/64"]
    named = load_config(
        {"OVERLAY": "vxlan", "VXLAN_ID": "7", "VXLAN_PORT": "4789", "VXLAN_DEVICE": "vx-pods"},
        rt_protos={},
    )
    assert (named.overlay_device, named.vni, named.vxlan_port) == ("vx-pods", 7, 4789)
    for name, bad in [
        ("OVERLAY", "geneve"),
        ("VXLAN_ID", "0"),
        ("VXLAN_ID", "16777216"),
        ("VXLAN_PORT", "70000"),
        ("VXLAN_DEVICE", "a-very-long-device-name"),
        ("VXLAN_DEVICE", "bad/name"),
        ("MASQUERADE", "maybe"),
        ("NON_MASQUERADE_CIDRS", "10.0.0.0/33"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config({name: bad}, rt_protos={})
        assert e.value.name == name


def test_log_levels_upstream_manifests_use() -> None:
    """Names (warn and warning too) and zap's numbers, as upstream manifests set them."""
    cases = {
        "warning": "warning",
        "WARN": "warning",
        " Info ": "info",
        "-1": "debug",
        "0": "info",
        "1": "warning",
        "2": "error",
        "5": "error",
        "-4": "trace",
        "trace": "trace",
    }
    for value, level in cases.items():
        assert load(LOG_LEVEL=value).log_level == level, value
    with pytest.raises(ConfigError, match=r"use one of error, warning \(warn\), info"):
        load(LOG_LEVEL="verbose")


def test_http_address_takes_a_bracketed_ipv4_address() -> None:
    """A manifest can write "[$(HOST_IP)]:9202" whatever the node's family."""
    assert load(HTTP_ADDRESS="[10.0.0.5]:9202").http_address == ("10.0.0.5", 9202)
    assert load(HTTP_ADDRESS="[fd00::5]:9202").http_address == ("fd00::5", 9202)


def test_network_policy_settings(tmp_path: os.PathLike[str]) -> None:
    kubeconfig = os.path.join(tmp_path, "kubeconfig")
    open(kubeconfig, "w").close()
    config = load_config({"NETWORK_POLICY": "true", "NODE_NAME": "n1"}, rt_protos={})
    assert config.network_policy and config.policy_bridge == "cbr0"
    assert not config.policy_log_denied
    config = load_config(
        {"NETWORK_POLICY": "1", "NODE_NAME": "n1", "POLICY_BRIDGE": "", "POLICY_LOG_DENIED": "yes"},
        rt_protos={},
    )
    assert config.policy_bridge is None and config.policy_log_denied
    with pytest.raises(ConfigError, match=r"NETWORK_POLICY.*set NODE_NAME"):
        load_config({"NETWORK_POLICY": "true"}, rt_protos={})
    nodes = {"NETWORK_POLICY": "true", "NODE_NAME": "n1", "NODES_FILE": "/x/nodes.json"}
    with pytest.raises(ConfigError, match=r"NETWORK_POLICY.*set KUBECONFIG"):
        load_config(nodes, rt_protos={})
    # with NODES_FILE, the policy watches keep the kubeconfig (no "ignored" warning)
    config = load_config({**nodes, "KUBECONFIG": kubeconfig}, rt_protos={})
    assert config.kubeconfig == kubeconfig and not config.warnings
    with pytest.raises(ConfigError, match="POLICY_BRIDGE"):
        load_config({"POLICY_BRIDGE": "no/slash"}, rt_protos={})
