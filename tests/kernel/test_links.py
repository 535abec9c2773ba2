"""Interface addresses and MTUs against the real kernel."""

from __future__ import annotations

import pytest

from tests.kernel.helpers import MTU
from xcluster_cni_lib.kernel import codec as rc
from xcluster_cni_lib.kernel.channel import Channel, NetlinkError
from xcluster_cni_lib.kernel.links import (
    get_link,
    interface_mtu,
    link_index,
    list_interface_addresses,
    set_link,
)

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


def test_link_by_name_read_and_set(gw_netns: str) -> None:
    chan = Channel(gw_netns)
    try:
        assert get_link(chan, "nope") is None
        assert link_index(chan, "nope") == 0
        link = get_link(chan, "va")
        assert link is not None and link.name == "va" and link.mtu == MTU
        assert link_index(chan, "va") == link.ifindex
        set_link(chan, link.ifindex, mac="02:00:00:00:77:01", mtu=MTU - 100)
        changed = get_link(chan, "va")
        assert changed is not None
        assert (changed.mac, changed.mtu) == ("02:00:00:00:77:01", MTU - 100)
        assert changed.flags & rc.IFF_UP
        with pytest.raises(NetlinkError):
            set_link(chan, link.ifindex, mac="02:00:00:00:77:01", mtu=1)  # below the minimum
    finally:
        chan.close()
