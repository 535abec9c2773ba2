"""The vxlan kernel adapter (kernel.vxlan) against the real kernel, in namespaces."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from tests.overlay.overlay_helpers import (
    LOWER_MTU,
    UNDERLAY4,
    UNDERLAY6,
    entries,
    link,
    same,
    two_nodes,
)
from xcluster_cni_lib.core.overlay import (
    Entries,
    EntryPlan,
    Fdb,
    Neighbour,
    Peer,
    VxlanDevice,
    vtep_mac,
)
from xcluster_cni_lib.kernel.vxlan import OverlayKernelError, VxlanKernel
from xcluster_cni_lib.testing.netns import run_in

pytestmark = pytest.mark.root

ip = ipaddress.ip_address
DEV = "xcvxt"
#: a permanent neighbour entry on another device (the underlay interface)
FOREIGN = "ip neigh add 192.168.50.77 lladdr 02:00:00:00:00:77 dev u0 nud permanent".split()  # noqa: SIM905


def device(local: str, *, vni: int = 42, port: int = 8472) -> VxlanDevice:
    return VxlanDevice(DEV, vni, port, ip(local), vtep_mac(ip(local)))


def peer(node: str, underlay: str, *vteps: str) -> Peer:
    return Peer(node, ip(underlay), vtep_mac(ip(underlay)), tuple(ip(v) for v in vteps))


@pytest.fixture
def nodes() -> Iterator[tuple[str, str]]:
    with two_nodes() as pair:
        yield pair


@pytest.fixture
def kernel(nodes: tuple[str, str]) -> Iterator[VxlanKernel]:
    k = VxlanKernel(nodes[0])
    try:
        yield k
    finally:
        k.close()


@pytest.mark.parametrize(("local", "overhead"), [(UNDERLAY4[0], 50), (UNDERLAY6[0], 70)])
def test_device_is_created_with_derived_attributes(
    nodes: tuple[str, str], kernel: VxlanKernel, local: str, overhead: int
) -> None:
    want = device(local, vni=4242, port=4789)
    made = kernel.ensure_device(want)
    assert made.action == "created" and made.lower == "u0" and made.mtu == LOWER_MTU - overhead
    got = link(nodes[0], DEV)
    assert got is not None
    info = got["linkinfo"]["info_data"]
    assert got["address"] == want.mac and got["mtu"] == LOWER_MTU - overhead
    assert "UP" in got["flags"]
    assert info["id"] == 4242 and info["port"] == 4789 and info["link"] == "u0"
    assert info.get("local", info.get("local6")) == local and info["learning"] is False
    assert kernel.ensure_device(want).action == "unchanged"


def test_device_changed_in_place_or_recreated(nodes: tuple[str, str], kernel: VxlanKernel) -> None:
    ns = nodes[0]
    first = kernel.ensure_device(device(UNDERLAY4[0]))
    run_in(ns, ["ip", "link", "set", DEV, "mtu", "1300", "down"])
    again = kernel.ensure_device(device(UNDERLAY4[0]))
    assert again.action == "updated" and again.ifindex == first.ifindex
    got = link(ns, DEV)
    assert got is not None and got["mtu"] == LOWER_MTU - 50 and "UP" in got["flags"]
    other = kernel.ensure_device(device(UNDERLAY4[0], vni=43))
    assert other.action == "recreated" and other.ifindex != first.ifindex
    got = link(ns, DEV)
    assert got is not None and got["linkinfo"]["info_data"]["id"] == 43
    # the underlay address moved to another family: recreated bound to it
    assert kernel.ensure_device(device(UNDERLAY6[0], vni=43)).action == "recreated"
    assert kernel.delete_device(DEV) is True
    assert link(ns, DEV) is None
    assert kernel.delete_device(DEV) is False


def test_device_errors_are_named(nodes: tuple[str, str], kernel: VxlanKernel) -> None:
    with pytest.raises(OverlayKernelError, match="no interface holds"):
        kernel.ensure_device(device("192.168.99.1"))
    run_in(nodes[0], ["ip", "link", "add", DEV, "type", "veth", "peer", "name", "xcother"])
    with pytest.raises(OverlayKernelError, match="not a vxlan device"):
        kernel.ensure_device(device(UNDERLAY4[0]))
    assert kernel.delete_device(DEV) is False  # never another kind of link
    assert link(nodes[0], DEV) is not None


def test_entries_put_list_delete_on_our_device_only(
    nodes: tuple[str, str], kernel: VxlanKernel
) -> None:
    ns = nodes[0]
    made = kernel.ensure_device(device(UNDERLAY4[0]))
    # somebody else's entry, on the underlay interface
    run_in(
        ns,
        [
            "ip",
            "neigh",
            "add",
            "192.168.50.77",
            "lladdr",
            "02:00:00:00:00:77",
            "dev",
            "u0",
            "nud",
            "permanent",
        ],
    )
    b = peer("b", UNDERLAY4[1], "10.244.1.0", "fd00:10:244:1::")
    c = peer("c", "192.168.50.3", "10.244.2.0")
    plan = EntryPlan(put_neighbours=(*b.neighbours(), *c.neighbours()), put_fdb=(b.fdb(), c.fdb()))
    outcomes = kernel.apply(made.ifindex, plan)
    assert len(outcomes) == 5 and all(o.ok for o in outcomes)
    listed = kernel.list_entries(made.ifindex)
    assert same(listed, entries(ns, DEV))
    assert dict(listed.neighbours) == {
        ip("10.244.1.0"): b.mac,
        ip("fd00:10:244:1::"): b.mac,
        ip("10.244.2.0"): c.mac,
    }
    assert dict(listed.fdb) == {b.mac: ip(UNDERLAY4[1]), c.mac: ip("192.168.50.3")}
    # replace: a new MAC for a VTEP, a new destination for a MAC
    outcomes = kernel.apply(
        made.ifindex,
        EntryPlan(
            put_neighbours=(Neighbour(ip("10.244.2.0"), b.mac),),
            put_fdb=(Fdb(c.mac, ip("192.168.50.9")),),
        ),
    )
    assert all(o.ok for o in outcomes)
    listed = kernel.list_entries(made.ifindex)
    assert listed.neighbours[ip("10.244.2.0")] == b.mac
    assert listed.fdb[c.mac] == ip("192.168.50.9")
    # delete everything of ours; deleting what is gone is fine
    everything = EntryPlan(
        delete_neighbours=tuple(Neighbour(a, m) for a, m in listed.neighbours.items()),
        delete_fdb=tuple(Fdb(m, d) for m, d in listed.fdb.items()),
    )
    assert all(o.ok for o in kernel.apply(made.ifindex, everything))
    assert all(o.ok for o in kernel.apply(made.ifindex, everything))
    assert same(kernel.list_entries(made.ifindex), Entries())
    assert "192.168.50.77" in run_in(ns, ["ip", "neigh", "show", "dev", "u0"])


def test_large_batches(nodes: tuple[str, str], kernel: VxlanKernel) -> None:
    made = kernel.ensure_device(device(UNDERLAY4[0]))
    peers = [
        peer(f"n{i}", f"10.{i // 250}.{i % 250}.1", f"10.{100 + i // 250}.{i % 250}.0")
        for i in range(3000)
    ]
    plan = EntryPlan(
        put_neighbours=tuple(n for p in peers for n in p.neighbours()),
        put_fdb=tuple(p.fdb() for p in peers),
    )
    assert all(o.ok for o in kernel.apply(made.ifindex, plan))
    listed = kernel.list_entries(made.ifindex)
    assert len(listed.neighbours) == 3000 and len(listed.fdb) == 3000


def test_monitor_reports_our_device_only(nodes: tuple[str, str], kernel: VxlanKernel) -> None:
    ns = nodes[0]
    made = kernel.ensure_device(device(UNDERLAY4[0]))
    b = peer("b", UNDERLAY4[1], "10.244.1.0")
    kernel.apply(made.ifindex, EntryPlan(put_neighbours=b.neighbours(), put_fdb=(b.fdb(),)))
    first = kernel.take_changes()
    assert first is not None and not first.device
    assert first.neighbours == {ip("10.244.1.0"): b.mac}  # our own writes, as they are
    run_in(
        ns,
        [
            "ip",
            "neigh",
            "add",
            "192.168.50.77",
            "lladdr",
            "02:00:00:00:00:77",
            "dev",
            "u0",
            "nud",
            "permanent",
        ],
    )
    run_in(ns, ["ip", "neigh", "del", "10.244.1.0", "dev", DEV])
    run_in(ns, ["bridge", "fdb", "del", b.mac, "dev", DEV])
    seen = kernel.take_changes()
    assert seen is not None and not seen.device
    assert seen.neighbours == {ip("10.244.1.0"): None}
    assert seen.fdb == {b.mac: None}
    run_in(ns, ["ip", "link", "set", "u0", "mtu", "1400"])  # the underlay changed
    seen = kernel.take_changes()
    assert seen is not None and seen.device
    run_in(ns, ["ip", "link", "del", DEV])
    seen = kernel.take_changes()
    assert seen is not None and seen.device


@pytest.mark.parametrize("underlay", [UNDERLAY4, UNDERLAY6], ids=["ipv4-underlay", "ipv6-underlay"])
def test_ping_through_the_overlay(nodes: tuple[str, str], underlay: tuple[str, str]) -> None:
    """Entries as planned carry traffic: two namespaces, each with its device and the
    other's entries, routes to the other's "pod" addresses via the VTEP, onlink."""
    ks = [VxlanKernel(ns, monitor=False) for ns in nodes]
    try:
        vteps = (("10.244.1.0", "fd00:10:244:1::"), ("10.244.2.0", "fd00:10:244:2::"))
        for i, (ns, k) in enumerate(zip(nodes, ks, strict=True)):
            made = k.ensure_device(device(underlay[i]))
            o = 1 - i
            p = peer("other", underlay[o], *vteps[o])
            assert all(x.ok for x in k.apply(made.ifindex, EntryPlan(p.neighbours(), (p.fdb(),))))
            run_in(ns, ["ip", "addr", "add", f"10.244.{i + 1}.1/32", "dev", "lo"])
            run_in(ns, ["ip", "addr", "add", f"fd00:10:244:{i + 1}::1/128", "dev", "lo"])
            for dst, via in (
                (f"10.244.{o + 1}.0/24", vteps[o][0]),
                (f"fd00:10:244:{o + 1}::/64", vteps[o][1]),
            ):
                run_in(ns, ["ip", "route", "add", dst, "via", via, "dev", DEV, "onlink"])
        a = nodes[0]
        run_in(a, ["ping", "-c1", "-W2", "-I", "10.244.1.1", "10.244.2.1"])
        run_in(a, ["ping", "-6", "-c1", "-W2", "-I", "fd00:10:244:1::1", "fd00:10:244:2::1"])
    finally:
        for k in ks:
            k.close()
