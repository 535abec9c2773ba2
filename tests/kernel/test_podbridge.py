"""The pods' bridge's address pinned, and the br_netfilter check, in a namespace."""

from __future__ import annotations

import json

import pytest

from xcluster_cni_lib.kernel.podbridge import PodBridge, bridge_nf_calls
from xcluster_cni_lib.testing.netns import del_netns, run_in, unique_name

pytestmark = pytest.mark.root

NET_ADDR_SET = "3"  # addr_assign_type of an address set explicitly


def test_bridge_address_pinned(netns: str) -> None:
    bridge = PodBridge("cbr0", netns=netns)
    try:
        assert bridge.mac() is None  # no such link yet
        run_in(netns, ["ip", "link", "add", "cbr0", "type", "bridge"])
        shown = json.loads(run_in(netns, ["ip", "-j", "link", "show", "cbr0"]))[0]
        assert bridge.mac() == shown["address"]
        pinned = run_in(netns, ["cat", "/sys/class/net/cbr0/addr_assign_type"]).strip()
        assert pinned == NET_ADDR_SET
        assert bridge.mac() == shown["address"]  # seen again: not set again
    finally:
        bridge.close()


def test_bridge_nf_calls_in_namespace(netns: str) -> None:
    assert isinstance(bridge_nf_calls(netns), bool)
    missing = unique_name("miss")
    try:
        assert bridge_nf_calls(missing) is False
    finally:
        del_netns(missing)
