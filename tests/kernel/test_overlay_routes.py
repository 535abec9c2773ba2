"""Routes through the vxlan overlay device: on-link via a VTEP address, read back with
their device, tracked, and failing cleanly while the device is missing."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator

import pytest

from tests.kernel.helpers import PROTO
from xcluster_cni_lib.core.values import Plan, Route
from xcluster_cni_lib.kernel.routetable import NetlinkRouteTable

pytestmark = pytest.mark.root

DEV = "xcvxtest"
V4 = Route(ipaddress.ip_network("10.244.5.0/24"), ipaddress.ip_address("10.244.5.0"), device=DEV)
V6 = Route(
    ipaddress.ip_network("fd00:10:244:5::/64"),
    ipaddress.ip_address("fd00:10:244:5::"),
    device=DEV,
)


def _ip(ns: str, *args: str) -> str:
    return subprocess.run(
        ["ip", "-n", ns, *args], check=True, capture_output=True, text=True
    ).stdout


def _add_device(ns: str) -> None:
    _ip(ns, "link", "add", DEV, "type", "vxlan", "id", "42", "dstport", "8472", "nolearning")
    _ip(ns, "link", "set", DEV, "up")


@pytest.fixture
def vx_table(gw_netns: str) -> Iterator[NetlinkRouteTable]:
    _add_device(gw_netns)
    with NetlinkRouteTable(PROTO, netns=gw_netns, device=DEV) as t:
        yield t


def test_overlay_routes_are_onlink_on_the_device_and_read_back(
    gw_netns: str, vx_table: NetlinkRouteTable
) -> None:
    outcomes = vx_table.apply(Plan(add=(V4, V6)))
    assert all(o.ok for o in outcomes), outcomes
    shown = _ip(gw_netns, "route", "show", "proto", str(PROTO)) + _ip(
        gw_netns, "-6", "route", "show", "proto", str(PROTO)
    )
    assert f"10.244.5.0/24 via 10.244.5.0 dev {DEV}" in shown and "onlink" in shown
    assert f"fd00:10:244:5::/64 via fd00:10:244:5:: dev {DEV}" in shown
    assert sorted(vx_table.list_routes(), key=str) == sorted([V4, V6], key=str)
    # a direct route to the same place is another route: the planner's replace fixes it
    direct = Route(V4.dst, V4.gateway)
    assert direct != V4 and direct not in vx_table.list_routes()


def test_tracked_view_knows_the_device(gw_netns: str, vx_table: NetlinkRouteTable) -> None:
    vx_table.track()
    vx_table.list_routes()
    vx_table.apply(Plan(add=(V4,)))
    assert vx_table.routes_to([V4.dst]) == [V4]
    assert vx_table.routes_to([V4.dst])[0].device == DEV
    # a route re-added by hand on the device is seen as ours-with-device by its event
    _ip(gw_netns, "route", "del", str(V4.dst), "proto", str(PROTO))
    _ip(gw_netns, "route", "add", str(V4.dst), "via", str(V4.gateway), "dev", DEV, "onlink",
        "proto", str(PROTO))  # fmt: skip
    vx_table.changed_destinations()
    assert [r.device for r in vx_table.routes_to([V4.dst])] == [DEV]


def test_missing_device_fails_its_routes_only(gw_netns: str) -> None:
    other = Route(ipaddress.ip_network("10.244.9.0/24"), ipaddress.ip_address("192.168.77.9"))
    with NetlinkRouteTable(PROTO, netns=gw_netns, device=DEV) as t:
        outcomes = {o.route: o for o in t.apply(Plan(add=(V4, other)))}
    assert outcomes[other].ok
    assert outcomes[V4].status == "error"
    assert outcomes[V4].reason == f"ENODEV: no device {DEV}"


def test_switching_ipv6_onto_the_device_and_a_foreign_holder_is_a_conflict(
    gw_netns: str, vx_table: NetlinkRouteTable
) -> None:
    """IPv6 checks an on-link gateway against the routes present: over our direct route
    to the same CIDR (switching the overlay on) the kernel answers EINVAL, not EEXIST;
    the table swaps ours, and calls another program's route a conflict."""
    direct = Route(V6.dst, ipaddress.ip_address("fd00:77::2"))
    assert all(o.ok for o in vx_table.apply(Plan(add=(direct,))))
    for plan in (Plan(replace=(V6,)), Plan(add=(V6,))):
        vx_table.apply(Plan(delete=(V6,), add=(direct,)))  # back to the direct route
        outcomes = vx_table.apply(plan)
        assert [o.status for o in outcomes] == ["ok"], outcomes
        assert vx_table.list_routes() == [V6]
    other = Route(
        ipaddress.ip_network("fd00:10:244:6::/64"),
        ipaddress.ip_address("fd00:10:244:6::"),
        device=DEV,
    )
    _ip(gw_netns, "-6", "route", "add", str(other.dst), "via", "fd00:77::3", "proto", "static")
    for plan in (Plan(add=(other,)), Plan(replace=(other,))):
        [outcome] = vx_table.apply(plan)
        assert outcome.status == "conflict", outcome
        assert "protocol 4 (static)" in outcome.reason
