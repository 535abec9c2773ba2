"""Incremental reconciles against the real kernel: after any mix of node changes and
changes made by hand (ours deleted or rewritten, another protocol's routes added and
removed), a reconcile of what changed leaves the kernel exactly as a full reconcile
would, without listing the table; it counts the routes put back after a hand change as
restored (and no other) and reports as installed what the kernel holds."""

from __future__ import annotations

import ipaddress
import random

import pytest

from tests.daemon.harness import add_gateways
from xcluster_cni_lib.core.planning import desired_routes
from xcluster_cni_lib.core.values import NodeFacts, Route
from xcluster_cni_lib.kernel.routetable import NetlinkRouteTable
from xcluster_cni_lib.sync.nodecache import NodeCache
from xcluster_cni_lib.sync.reconciler import Reconciler
from xcluster_cni_lib.testing.netns import run_in

pytestmark = pytest.mark.root

PROTO = 202
OTHER = 99


def facts(i: int, *, gw: int = 0, cidr: str | None = None) -> NodeFacts:
    return NodeFacts(
        name=f"n{i:02}",
        pod_cidrs=(cidr or f"10.50.{i}.0/24", f"fd00:50:{i:x}::/64"),
        internal_ips=(f"192.168.{gw}.{i + 1}", f"fd00::{gw:x}:{i + 1:x}"),
    )


def test_incremental_reconciles_agree_with_a_full_one(netns: str) -> None:
    add_gateways(netns)
    rng = random.Random(20261128)
    cache = NodeCache()
    nodes = {i: facts(i) for i in range(20)}
    cache.replace_all(nodes.values())
    cache.set_healthy(True)
    foreign: set[str] = set()
    with (
        NetlinkRouteTable(PROTO, netns=netns) as table,
        NetlinkRouteTable(PROTO, netns=netns) as observer,
    ):
        rec = Reconciler(cache, table, node_name="n00")
        first = rec.run_once()
        assert (first.added, first.restored, first.installed) == (38, 0, 38)
        expected = set(observer.list_routes())
        lists = restores = 0

        def count_lists() -> None:
            nonlocal lists
            lists += 1

        real_list = table.list_routes

        def listing() -> list[Route]:
            count_lists()
            return real_list()

        table.list_routes = listing  # type: ignore[method-assign]
        for step in range(80):
            i = rng.randrange(1, 24)
            action = rng.choice(["move", "cidr", "delete", "upsert", "hand", "foreign"])
            taken = False
            if action == "move":
                nodes[i] = facts(i, gw=rng.randrange(1, 4))
                cache.upsert(nodes[i])
            elif action == "cidr":  # sometimes an overlap with another node's CIDR
                nodes[i] = facts(i, cidr=f"10.50.{rng.randrange(0, 30)}.0/24")
                cache.upsert(nodes[i])
            elif action == "delete":
                nodes.pop(i, None)
                cache.delete(f"n{i:02}")
            elif action == "upsert":
                nodes[i] = facts(i)
                cache.upsert(nodes[i])
            elif action == "hand":
                dst = f"10.50.{i}.0/24"
                # ours, as wanted, taken away (the other gateway is never a node's)
                taken = any(str(r.dst) == dst for r in expected)
                if rng.random() < 0.5:
                    run_in(netns, ["ip", "route", "del", dst, "proto", str(PROTO)], check=False)
                else:
                    via = ["via", f"192.168.9.{i + 1}", "proto", str(PROTO)]
                    run_in(netns, ["ip", "route", "replace", dst, *via], check=False)
            else:
                dst = f"fd00:50:{i:x}::/64"
                if dst in foreign:
                    foreign.discard(dst)
                    run_in(netns, ["ip", "-6", "route", "del", dst, "proto", str(OTHER)])
                else:
                    # a replace: it takes our route's place if we had one
                    via = ["via", "fd00::99", "proto", str(OTHER)]
                    run_in(netns, ["ip", "-6", "route", "replace", dst, *via])
                    foreign.add(dst)
            result = rec.run_changes(retry=True)

            networks = cache.snapshot().networks
            wanted, _ = desired_routes(networks, own="n00")
            expected = {r for r in wanted if str(r.dst) not in foreign}
            present = observer.list_routes()
            assert set(present) == expected, f"step {step}: {action} {i}"
            restored = result.restored if result is not None else 0
            assert restored == taken, f"step {step}: {action} {i}"
            restores += restored
            assert rec.last_result is not None and rec.last_result.installed == len(present)
        # most steps were handled without listing the table: only overlaps and the own
        # node force a full reconcile
        print(f"{lists} lists in 80 steps, {restores} restored")
        assert restores >= 5, restores
        assert lists < 30, lists
    assert ipaddress.ip_network("10.50.0.0/24") not in {r.dst for r in expected}  # own node


def test_a_route_taken_away_is_restored_once_and_a_node_change_is_not(netns: str) -> None:
    add_gateways(netns)
    cache = NodeCache()
    cache.replace_all(facts(i) for i in range(1, 4))
    cache.set_healthy(True)
    with NetlinkRouteTable(PROTO, netns=netns) as table:
        run_in(netns, f"ip route add 10.50.1.0/24 via 192.168.0.2 proto {PROTO}".split())
        rec = Reconciler(cache, table)
        first = rec.run_once()  # at start nothing counts as restored
        assert (first.added, first.restored, first.installed) == (5, 0, 6)
        run_in(netns, ["ip", "route", "del", "10.50.1.0/24", "proto", str(PROTO)])
        result = rec.run_changes()
        assert result is not None and not result.full
        assert (result.added, result.restored, result.installed) == (1, 1, 6)
        assert rec.run_changes() is None  # our own write's event: nothing more
        assert rec.run_once().restored == 0
        # rewritten by hand (another gateway, our protocol): put back, restored
        run_in(netns, f"ip -6 route replace fd00:50:2::/64 via fd00::9:3 proto {PROTO}".split())
        result = rec.run_changes()
        assert result is not None and (result.replaced, result.restored) == (1, 1)
        # a full reconcile restores a route taken away as well
        run_in(netns, ["ip", "route", "del", "10.50.2.0/24", "proto", str(PROTO)])
        assert (rec.run_once().restored, rec.run_changes()) == (1, None)
        # a node's CIDR changes: a new route and a delete, nothing restored
        cache.upsert(facts(3, cidr="10.50.33.0/24"))
        result = rec.run_changes()
        assert result is not None and not result.full
        assert (result.added, result.deleted, result.restored, result.installed) == (1, 1, 0, 6)
        # a node's addresses change while its route was deleted by hand: not restored
        run_in(netns, ["ip", "route", "del", "10.50.1.0/24", "proto", str(PROTO)])
        cache.upsert(facts(1, gw=1))
        result = rec.run_changes()
        assert result is not None and (result.added, result.replaced) == (1, 1)
        assert (result.restored, result.installed) == (0, 6)
        assert set(table.list_routes()) == set(
            desired_routes(cache.snapshot().networks, own=None)[0]
        )
