"""Interface addresses and MTUs against the real kernel."""

from __future__ import annotations

import pytest

from tests.kernel.helpers import MTU
from xcluster_cni_lib.kernel.links import interface_mtu, list_interface_addresses

pytestmark = pytest.mark.root


def test_interface_addresses_and_mtu(gw_netns: str) -> None:
    found = {
        (a.interface, a.mtu, str(a.network), str(a.address))
        for a in list_interface_addresses(gw_netns)
    }
    assert ("va", MTU, "192.168.77.0/24", "192.168.77.1") in found
    assert ("va", MTU, "fd00:77::/64", "fd00:77::1") in found
    assert ("lo", 65536, "127.0.0.0/8", "127.0.0.1") in found
    assert interface_mtu("va", netns=gw_netns) == MTU
    with pytest.raises(LookupError, match="nope"):
        interface_mtu("nope", netns=gw_netns)
