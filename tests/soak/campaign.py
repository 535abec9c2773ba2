"""The soak and fault campaign: real daemons in node namespaces, an API-server double
holding thousands of nodes under continuous churn, faults at random times, IPAM load, and
invariants checked throughout. ``run_campaign(Options(...))`` returns the report (a dict);
``tests/soak/run.py`` is the command line. See docs/reliability.md."""

from __future__ import annotations

import json
import random
import re
import shutil
import statistics
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from tests.apiserver import ApiServerDouble
from tests.soak.cluster import ADDRESS_ANNOTATION, CIDR_ANNOTATION, Cluster, DaemonView
from tests.soak.daemons import DaemonProc
from tests.soak.ipam_load import IpamLoad
from tests.soak.nsutil import HUB_V4, NetnsExecutor, Topology, ip, kernel_routes
from tests.soak.overlay_phase import (
    SET_NAMES,
    OverlayState,
    device_name,
    expected_overlay,
    read_device_mac,
    read_fdb,
    read_neighbours,
    read_overlay,
    read_sets,
    table_name,
)
from tests.soak.policy_phase import POLICY_SWITCH, PolicyPhase
from xcluster_cni_lib.core.planning import route_sort_key
from xcluster_cni_lib.core.values import IPNetwork, Route
from xcluster_cni_lib.kernel.routetable import NetlinkRouteTable
from xcluster_cni_lib.testing.netns import run_in
from xcluster_cni_lib.testing.nodes import default_internal_ips, default_pod_cidrs

API_PORT = 6443
MAIN_PROTOCOL = 202
SECOND_PROTOCOL = 203
FOREIGN_GW = {4: "192.168.255.253", 6: "fd00::ffff:fffd"}
OTHER_GW = {4: "192.168.255.252", 6: "fd00::ffff:fffc"}
IDLE_TIMEOUT = 90.0  # the daemon's watch idle timeout (kube.DEFAULT_IDLE_TIMEOUT)
RETRY_MAX = 10.0  # the reconciler's longest retry delay (conflicts are retried with it)
READY_BOUND = 60.0  # a daemon not ready this long after a fault is healed is a violation
SETTLE_BOUND = 30.0  # after a divergence, how long we keep watching for late convergence
API_GRACE = 15.0  # seconds after an API fault in which a plugin may still answer code 11
CHANGE_SHARE = 0.3  # of the event rate: node changes while churning; the rest heartbeats

FAULTS = (
    "churn_only",
    "api_restart",
    "watch_cut",
    "watch_stall",
    "watch_410",
    "api_500",
    "api_slow",
    "route_deleted",
    "route_replaced",
    "foreign_route_added",
    "foreign_route_removed",
    "daemon_sigkill",
    "daemon_sigterm_sync",
)
LONG_FAULTS = ("watch_stall_dead",)  # only in runs of 10 minutes or more
# The overlay phase (OVERLAY=vxlan, MASQUERADE=true): switched on once, then these join
# the deck; each damage must be repaired within OVERLAY_RESTORE_BOUND.
OVERLAY_SWITCH = "overlay_switch_on"
OVERLAY_FAULTS = (
    "vxlan_device_deleted",
    "fdb_entry_deleted",
    "neighbour_deleted",
    "nft_set_flushed",
    "nft_table_deleted",
)
OVERLAY_RESTORE_BOUND = 1.0
# The policy phase (tests/soak/policy_phase.py): when it starts, the restarts of n0's
# main daemon come first (probed while it is down and while it comes up).
POLICY_FIRST = ("daemon_sigkill", "daemon_sigterm_sync")


@attrs.define
class Options:
    duration: float = 1800.0
    seed: int = 0
    nodes: int = 2000
    real: int = 2
    rate: float = 50.0
    burst: int = 100
    bulk: int = 300
    churn_window: tuple[float, float] = (1.0, 4.0)
    # the last share of ``duration`` runs with OVERLAY=vxlan and MASQUERADE=true (0: never)
    overlay_share: float = 0.3
    # the last share of ``duration`` runs with NETWORK_POLICY=true, pods and policy churn
    policy_share: float = 0.5
    workdir: str | None = None
    keep: bool = False
    log: Callable[[str], None] = print


def _dsts(routes: set[Route]) -> set[IPNetwork]:
    return {r.dst for r in routes}


def _show(items: set[Route] | set[IPNetwork], n: int = 4) -> str:
    return ", ".join(
        sorted(str(i if not isinstance(i, Route) else f"{i.dst} via {i.gateway}") for i in items)[
            :n
        ]
    )


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, round(p * (len(s) - 1)))], 3)


class Campaign:
    def __init__(self, opts: Options) -> None:
        self.o = opts
        self.rng = random.Random(opts.seed)
        self.log = opts.log
        self.t0 = time.monotonic()
        self.violations: list[dict[str, Any]] = []
        self.checks: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.recovery: dict[str, list[float]] = {}
        self.api_fault_intervals: list[tuple[float, float]] = []
        self.foreign: dict[str, dict[IPNetwork, str]] = {}  # daemon key -> dst -> gateway
        self.tables: dict[str, NetlinkRouteTable] = {}
        self._dump_phases: set[int] = set()
        self.phase = 0
        self.kind = "setup"
        self.churn_on = threading.Event()
        self.churn_lock = threading.Lock()
        self.churn_time = 0.0
        self.stop = threading.Event()
        self.harness_errors: list[str] = []
        self.daemons: list[DaemonProc] = []
        self.notes: list[str] = []
        self.rate_shortfall = 0
        self.root = Path(__file__).resolve().parents[2]
        self.edits_during_violations = 0
        self.overlay_on = False
        self.overlay_started: float | None = None  # campaign seconds
        self.overlay_phases = 0
        self.policy: PolicyPhase | None = None  # made when the policy phase starts
        self.policy_started: float | None = None
        self.policy_phases = 0

    # -- bookkeeping -----------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _recent_edits(self, window: float = 15.0) -> list[str]:
        """Project source files changed in the last ``window`` seconds: the campaign runs
        the live checkout, and a module caught half-written breaks whatever starts then."""
        now = time.time()
        out = []
        for base in (self.root / "xcluster_cni_lib", self.root / "wrappers"):
            for path in base.rglob("*.py"):
                try:
                    if now - path.stat().st_mtime < window:
                        out.append(str(path.relative_to(self.root)))
                except OSError:
                    continue
        return out

    def violate(self, kind: str, detail: str) -> None:
        edits = self._recent_edits()
        if edits:
            detail += f" [source files changed in the last 15 s: {', '.join(edits[:5])}]"
            self.edits_during_violations += 1
        entry = {
            "t": round(self.now(), 2),
            "phase": self.phase,
            "fault": self.kind,
            "kind": kind,
            "detail": detail[:2000],
        }
        self.violations.append(entry)
        self.log(f"VIOLATION {kind} (phase {self.phase} {self.kind}): {detail[:500]}")

    def api_faulty(self, start: float, end: float) -> bool:
        """Whether the API server was down or faulty at some time in [start, end]
        (monotonic), with a grace after each fault ended: right after a restart three
        daemons re-list 2,000 nodes from the double, and a plugin's request can then time
        out (code 11, "try again later", is the right answer)."""
        for a, b in self.api_fault_intervals:
            if start <= b + API_GRACE and end >= a:
                return True
        return bool(self.api_fault_intervals) and self.api_fault_intervals[-1][1] == float("inf")

    @contextmanager
    def api_fault(self) -> Iterator[None]:
        self.api_fault_intervals.append((time.monotonic(), float("inf")))
        try:
            yield
        finally:
            a, _ = self.api_fault_intervals[-1]
            self.api_fault_intervals[-1] = (a, time.monotonic())

    # -- churn ---------------------------------------------------------------------------------

    def _churn_loop(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            if not self.churn_on.wait(0.2):
                next_at = time.monotonic()
                continue
            with self.churn_lock:
                if not self.churn_on.is_set():
                    continue
                self.cluster.churn_one(time.monotonic())
            next_at += 1.0 / (self.o.rate * CHANGE_SHARE)
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                self.rate_shortfall += 1
                next_at = time.monotonic()

    def _heartbeat_loop(self) -> None:
        """Kubelet heartbeats all the time (also in quiet periods: they change nothing
        routing uses, so a daemon must hold them without touching a route)."""
        interval = 1.0 / (self.o.rate * (1 - CHANGE_SHARE))
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.cluster.heartbeat_one(time.monotonic())
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            elif delay < -1.0:
                self.rate_shortfall += 1
                next_at = time.monotonic()

    def churn(self, seconds: float, during: Callable[[], None] | None = None) -> None:
        """Churn for ``seconds`` (calling ``during`` about every 0.25 s meanwhile)."""
        start = time.monotonic()
        self.churn_on.set()
        try:
            end = start + seconds
            while time.monotonic() < end and not self.stop.is_set():
                if during is not None:
                    during()
                time.sleep(min(0.25, max(0.0, end - time.monotonic())))
        finally:
            self.pause_churn()
            self.churn_time += time.monotonic() - start

    def pause_churn(self) -> None:
        self.churn_on.clear()
        with self.churn_lock:
            pass

    # -- expectations ----------------------------------------------------------------------

    def expected(self, d: DaemonProc) -> set[Route]:
        return self.want(d)[0]

    def want(self, d: DaemonProc) -> tuple[set[Route], OverlayState | None]:
        """The routes (and, in the overlay phase, the overlay state) the current node
        list implies for ``d``."""
        held = self.foreign.get(d.key, {})
        if not self.overlay_on:
            return {r for r in self.cluster.expected(d.view) if r.dst not in held}, None
        routes, state = expected_overlay(
            self.cluster.networks(d.view), own=d.view.own, device=device_name(d.protocol)
        )
        return {r for r in routes if r.dst not in held}, state

    def overlay_state(self, d: DaemonProc) -> OverlayState:
        return read_overlay(d.ns.ns, d.protocol)

    def _equal(self, d: DaemonProc, want: tuple[set[Route], OverlayState | None]) -> bool:
        routes, state = want
        if self.kernel(d) != routes:
            return False
        return state is None or self.overlay_state(d) == state

    def kernel(self, d: DaemonProc) -> set[Route]:
        """The daemon's routes in the kernel. Dumped until two dumps agree: the kernel's
        IPv6 route dumps skip or repeat routes when the table changes meanwhile (and
        do not flag it), which ``NetlinkRouteTable.list_routes`` passes on unchecked."""
        table = self.tables[d.key]
        previous: set[Route] | None = None
        current: set[Route] = set()
        for _ in range(20):
            listed = table.list_routes()
            current = set(listed)
            duplicates = len(listed) != len(current)
            if not duplicates and current == previous:
                return current
            if previous is not None and not duplicates:
                self.checks["dump_changed_between_reads"] += 1
            if duplicates:
                # Proof of an inconsistent dump (a route listed twice); the same kernel
                # behaviour silently drops routes too (see docs/reliability.md).
                self.checks["inconsistent_dumps"] += 1
                if self.phase not in self._dump_phases:
                    self._dump_phases.add(self.phase)
                    self.violate(
                        "netlink_inconsistent_ipv6_dump",
                        f"{d.key}: list_routes returned {len(listed)} routes "
                        f"({len(current)} distinct), the previous dump "
                        f"{len(previous) if previous is not None else '-'}",
                    )
            previous = current
        self.notes.append(f"phase {self.phase}: no two agreeing dumps for {d.key} in 20 tries")
        return current

    def check_foreign(self) -> None:
        for d in self.daemons:
            for dst, gw in self.foreign.get(d.key, {}).items():
                self.checks["foreign_route_untouched"] += 1
                present = kernel_routes(d.ns.ns, "static")
                if (str(dst), gw) not in present:
                    self.violate(
                        "foreign_route_touched", f"{d.key}: {dst} via {gw} proto static gone"
                    )

    def no_flush_sampler(self, label: str) -> Callable[[], None]:
        """A check for API-unavailable windows: a wanted route that is in the kernel when
        the window opens, to a node that nobody touches meanwhile, never disappears (the
        daemon may lag behind changes, but must not flush)."""
        since = time.monotonic()
        base: dict[str, dict[IPNetwork, str]] = {}
        for d in self.daemons:
            present = _dsts(self.kernel(d))
            base[d.key] = {r.dst: r.node for r in self.expected(d) if r.dst in present}
        reported: set[tuple[str, IPNetwork]] = set()

        def sample() -> None:
            for d in self.daemons:
                if not d.alive():
                    continue
                present = _dsts(self.kernel(d))
                touched = self.cluster.touched_since(since)  # after the read: no race
                # Still wanted now: a node that takes an untouched node's CIDR makes it
                # contested, and a contested CIDR is routed to neither (docs/node-data.md).
                wanted = _dsts(self.expected(d))
                keep = {
                    dst
                    for dst, node in base[d.key].items()
                    if node not in touched and dst in wanted
                }
                self.checks["no_flush_sample"] += 1
                missing = keep - present
                new = {(d.key, m) for m in missing} - reported
                if new:
                    reported.update(new)
                    nodes = sorted({base[d.key][m] for _, m in new})[:3]
                    history = {n: self.cluster.history.get(n, []) for n in nodes}
                    self.violate(
                        "routes_flushed_while_api_unavailable",
                        f"{label}: {d.key} lost {len(missing)} wanted routes, "
                        f"e.g. {_show(missing)} of nodes {nodes}; their history {history}",
                    )

        return sample

    def ready(self, d: DaemonProc) -> bool:
        """Whether ``d`` is ready, or not ready only because of the foreign routes the
        campaign holds in its namespace (/readyz names routes that are not in place,
        conflicts included: that is right, and all it may name then)."""
        if not d.alive():
            return False
        code, body = d.get("/readyz")
        if code == 200:
            return True
        held = self.foreign.get(d.key, {})
        if code != 503 or not held:
            return False
        lines = [line for line in body.splitlines() if line.strip()]
        head = re.match(r"(\d+) routes not in place: ", lines[0]) if len(lines) == 1 else None
        # (a held destination the node list no longer routes is not named)
        if head is None or not 1 <= int(head.group(1)) <= len(held):
            return False
        # "<dst>: <status> (<reason>)" per route, "; " between them (and in reasons)
        named = re.findall(r"(?:^|; )([0-9a-f.:]+/\d+): (\w+) \(", lines[0][head.end() :])
        held_dsts = {str(dst) for dst in held}
        if len(named) != min(3, int(head.group(1))):
            return False
        for dst, status in named:
            if status != "conflict" or dst not in held_dsts:
                return False
        self.checks["unready_only_for_foreign_routes"] += 1
        return True

    def wait_converged(self, d: DaemonProc, timeout: float = 10.0) -> bool:
        want = self.expected(d)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.kernel(d) == want:
                return True
            time.sleep(0.05)
        return False

    def verify(
        self,
        t_ref: float,
        *,
        quiet_from: float | None = None,
        allow: float = 1.0,
        record: bool = True,
    ) -> None:
        """The quiet-period invariant. ``t_ref`` (monotonic) is when the fault was healed or
        the last change made; recovery is measured from it. Once every daemon is ready and
        ``allow`` seconds passed since ``quiet_from`` (default ``t_ref``), each daemon's
        routes must equal the routes the current node list implies."""
        quiet_from = t_ref if quiet_from is None else quiet_from
        want = {d.key: self.want(d) for d in self.daemons}
        first_equal: dict[str, float] = {}
        ready_at: dict[str, float] = {}
        deadline_ready = max(time.monotonic(), quiet_from) + READY_BOUND
        rounds = 0
        while True:
            rounds += 1
            for d in self.daemons:
                if d.key not in first_equal and self._equal(d, want[d.key]):
                    first_equal[d.key] = time.monotonic()
            for d in self.daemons:
                # Probe readiness once equal (or now and then): probes cost CPU that the
                # daemons need, and the routes are what is measured.
                probe = d.key in first_equal or rounds % 5 == 1
                if d.key not in ready_at and probe and self.ready(d):
                    ready_at[d.key] = time.monotonic()
            now = time.monotonic()
            if len(ready_at) == len(self.daemons):
                if now >= max(quiet_from, max(ready_at.values())) + allow:
                    break
            elif now > deadline_ready:
                for d in self.daemons:
                    if d.key not in ready_at:
                        self.violate("daemon_not_ready", f"{d.key}: {d.get('/readyz')}")
                break
            time.sleep(0.02)
        late: list[DaemonProc] = []
        for d in self.daemons:
            self.checks["quiet_period_routes_equal"] += 1
            want_routes, want_state = want[d.key]
            have = self.kernel(d)
            ok = have == want_routes
            if not ok:
                missing, extra = want_routes - have, have - want_routes
                self.violate(
                    "divergence_after_quiet_period",
                    f"{d.key}: missing {len(missing)} {_show(missing)}, "
                    f"extra {len(extra)} {_show(extra)}",
                )
            if want_state is not None:
                self.checks["quiet_period_overlay_equal"] += 1
                found = self.overlay_state(d)
                if found != want_state:
                    ok = False
                    self.violate(
                        "overlay_divergence_after_quiet_period",
                        f"{d.key}: {want_state.diff(found)}",
                    )
            if ok:
                first_equal.setdefault(d.key, time.monotonic())
            else:
                late.append(d)
        settle_end = time.monotonic() + SETTLE_BOUND
        while late and time.monotonic() < settle_end:
            for d in list(late):
                if self._equal(d, want[d.key]):
                    first_equal[d.key] = time.monotonic()
                    late.remove(d)
            time.sleep(0.1)
        for d in late:
            detail = ""
            want_routes, want_state = want[d.key]
            if want_state is not None:
                routes_ok = self.kernel(d) == want_routes
                detail = f" (routes {'equal' if routes_ok else 'differ'}; overlay: "
                detail += f"{want_state.diff(self.overlay_state(d))})"
            self.violate(
                "no_convergence",
                f"{d.key}: still wrong {SETTLE_BOUND:g}s after the check{detail}",
            )
        self.check_foreign()
        if first_equal and record:
            took = max(first_equal.values()) - t_ref
            self.recovery.setdefault(self.kind, []).append(max(0.0, took))

    # -- faults ----------------------------------------------------------------------------

    def _api_call(self, fn: Callable[[], Any]) -> Any:
        return self.hub.call(fn)

    def fault_churn_only(self) -> float:
        self.churn(self.rng.uniform(*self.o.churn_window))
        return time.monotonic()

    def fault_api_restart(self) -> float:
        self.churn(self.rng.uniform(*self.o.churn_window))
        with self.api_fault():
            self._api_call(self.api.stop)
            time.sleep(0.5)
            base = {d.key: _dsts(self.kernel(d)) for d in self.daemons}
            self.ipam.api_down_done.clear()
            self.ipam.api_down_request.set()

            def sample() -> None:
                for d in self.daemons:
                    self.checks["no_flush_sample"] += 1
                    gone = base[d.key] - _dsts(self.kernel(d))
                    if gone:
                        self.violate(
                            "routes_flushed_while_api_unavailable",
                            f"API down: {d.key} lost {len(gone)}, e.g. {_show(gone)}",
                        )
                        base[d.key] -= gone
                self.policy_window("API down", "api_down")

            self.churn(self.rng.uniform(1.0, 5.0), sample)
            end = time.monotonic() + 60
            while not self.ipam.api_down_done.wait(0.25) and time.monotonic() < end:
                sample()
            if not self.ipam.api_down_done.is_set():
                self.ipam.api_down_request.clear()
                self.notes.append(f"phase {self.phase}: IPAM API-down round did not run in time")
            sample()
            self._api_call(self.api.start)
        return time.monotonic()

    def fault_watch_cut(self) -> float:
        self.churn(self.rng.uniform(0.3, 1.0))
        self.api.cut_watches()
        self.churn(self.rng.uniform(0.5, 2.0))
        return time.monotonic()

    def fault_watch_410(self) -> float:
        self.churn(self.rng.uniform(0.3, 1.0))
        self.api.gone_watches(expire=True)
        self.churn(self.rng.uniform(0.5, 2.0))
        return time.monotonic()

    def fault_watch_stall(self) -> float:
        self.churn(self.rng.uniform(0.3, 1.0))
        with self.api_fault():
            self.api.stall_watches(None)
            self.churn(self.rng.uniform(2.0, 6.0), self.no_flush_sampler("watch stalled"))
            self.api.release_watches()
        return time.monotonic()

    def fault_watch_stall_dead(self) -> float:
        """Streams stall for good (not even bookmarks): the daemon must find the stream
        dead by its idle timeout and reconnect. The quiet period starts after that."""
        self.churn(self.rng.uniform(0.3, 1.0))
        start = time.monotonic()
        with self.api_fault():
            self.api.stall_watches(None)
            self.churn(self.rng.uniform(2.0, 5.0))
            self.verify(start, quiet_from=start + IDLE_TIMEOUT + 5.0)
            self.api.release_watches()
        return -1.0  # verified already

    def fault_api_500(self) -> float:
        self.churn(self.rng.uniform(0.3, 1.0))
        with self.api_fault():
            self.api.fail_requests(self.rng.randint(3, 12), 500)
            self.api.cut_watches()
            self.churn(self.rng.uniform(1.0, 3.0), self.no_flush_sampler("API answering 500"))
            self.api.clear_failures()
        return time.monotonic()

    def fault_api_slow(self) -> float:
        self.churn(self.rng.uniform(0.3, 1.0))
        with self.api_fault():
            self.api.set_latency(self.rng.uniform(1.0, 2.5))
            self.api.cut_watches()
            self.churn(self.rng.uniform(2.0, 5.0), self.no_flush_sampler("API slow"))
            self.api.set_latency(0.0)
        return time.monotonic()

    def _pick_route(self) -> tuple[DaemonProc, Route] | None:
        """A route of a random daemon (every phase ends converged, so it is a wanted one)."""
        d = self.rng.choice(self.daemons)
        routes = sorted(self.kernel(d), key=route_sort_key)
        return (d, self.rng.choice(routes)) if routes else None

    def _restored(self, d: DaemonProc, r: Route, t0: float) -> None:
        """Poll one destination (an exact lookup, cheap and precise) until the daemon has
        put ``r`` back; records the recovery time, a violation after 5 s."""
        family = "-6" if r.family == 6 else "-4"
        args = [family, "-j", "route", "show", "exact", str(r.dst), "proto", str(d.protocol)]
        while time.monotonic() - t0 < 5.0:
            found = json.loads(ip(d.ns.ns, args) or "[]")
            if any(x.get("gateway") == str(r.gateway) for x in found):
                self.recovery.setdefault(self.kind, []).append(time.monotonic() - t0)
                return
            time.sleep(0.01)
        self.violate("route_not_restored", f"{d.key}: {r.dst} via {r.gateway} not back after 5 s")

    def fault_route_deleted(self) -> float:
        picked = self._pick_route()
        if picked is not None:
            d, r = picked
            args = ["route", "del", str(r.dst), "via", str(r.gateway), "proto", str(d.protocol)]
            ip(d.ns.ns, args)
            self._restored(d, r, time.monotonic())
        self.verify(time.monotonic(), record=False)
        return -1.0

    def fault_route_replaced(self) -> float:
        picked = self._pick_route()
        if picked is not None:
            d, r = picked
            gw = OTHER_GW[r.family]
            ip(d.ns.ns, ["route", "replace", str(r.dst), "via", gw, "proto", str(d.protocol)])
            self._restored(d, r, time.monotonic())
        self.verify(time.monotonic(), record=False)
        return -1.0

    def fault_foreign_route_added(self) -> float:
        free = [d for d in self.daemons if not self.foreign.get(d.key)]
        d = self.rng.choice(free or self.daemons)
        routes = sorted(self.kernel(d), key=route_sort_key)
        if not routes:
            return time.monotonic()
        r = self.rng.choice(routes)
        gw = FOREIGN_GW[r.family]
        with self.cluster.lock:
            ip(d.ns.ns, ["route", "replace", str(r.dst), "via", gw, "proto", "static"])
            self.foreign.setdefault(d.key, {})[r.dst] = gw
        self.log(f"  foreign route {r.dst} via {gw} in {d.key}'s namespace")
        self.verify(time.monotonic())
        reported = any(
            k.endswith("route_conflicts_current") and v >= 1 for k, v in d.metrics().items()
        )
        self.checks["conflict_reported"] += 1
        if not reported:
            self.violate("conflict_not_reported", f"{d.key}: {r.dst} held by a foreign route")
        return -1.0

    def fault_foreign_route_removed(self) -> float:
        held = [(d, dst) for d in self.daemons for dst in self.foreign.get(d.key, {})]
        if not held:
            self.kind = "churn_only"
            return self.fault_churn_only()
        d, dst = self.rng.choice(held)
        gw = self.foreign[d.key][dst]
        with self.cluster.lock:
            ip(d.ns.ns, ["route", "del", str(dst), "via", gw, "proto", "static"])
            del self.foreign[d.key][dst]
        # A blocked destination is retried with the reconciler's backoff (up to RETRY_MAX),
        # so ours comes back within that bound, not within 1 s.
        self.verify(time.monotonic(), allow=RETRY_MAX + 1.0)
        return -1.0

    def fault_daemon_sigkill(self) -> float:
        d = self.daemons[0]
        self.churn(self.rng.uniform(0.3, 1.5))
        self.wait_converged(d)  # or a change in flight would look like a loss
        base = _dsts(self.kernel(d))
        d.kill()
        self.churn(
            self.rng.uniform(0.5, 3.0), lambda: self.policy_window(f"{d.key} killed", "daemon_down")
        )
        gone = base - _dsts(self.kernel(d))
        self.checks["routes_kept_while_daemon_down"] += 1
        if gone:
            self.violate("routes_lost_while_daemon_down", f"{d.key}: {_show(gone)}")
        d.start()
        healed = time.monotonic()
        self.policy_restart_window(d)
        return healed

    def fault_daemon_sigterm_sync(self) -> float:
        d = self.daemons[0]
        self.churn(self.rng.uniform(0.3, 1.0))
        before = _dsts(self.kernel(d)) & _dsts(self.expected(d))  # installed and wanted
        self.cluster.bulk_readdress(self.o.bulk, time.monotonic())
        want = self.expected(d)
        time.sleep(self.rng.uniform(0.0, 0.3))
        mid_sync = self.kernel(d) != want
        took, code = d.terminate(timeout=10.0)
        self.checks["sigterm_stop"] += 1
        if mid_sync:
            self.checks["sigterm_landed_before_convergence"] += 1
        if code is None or took > 2.0:
            self.violate("sigterm_slow", f"{d.key}: exit {code} after {took:.2f}s (limit 2 s)")
        elif code != 0:
            self.violate("sigterm_exit_code", f"{d.key}: exit code {code}")
        lost = (before & _dsts(want)) - _dsts(self.kernel(d))
        if lost:
            self.violate("routes_lost_on_sigterm", f"{d.key}: {len(lost)}, e.g. {_show(lost)}")
        self.policy_window(f"{d.key} stopped", "daemon_down")
        d.start()
        healed = time.monotonic()
        self.policy_restart_window(d)
        return healed

    # -- the overlay phase ---------------------------------------------------------------

    def fault_overlay_switch_on(self) -> float:
        """Every daemon restarted (SIGTERM, as a rolling update does) with OVERLAY=vxlan
        and MASQUERADE=true, while the nodes churn: each direct route must become its
        overlay route, and the device, its entries and the nft table appear."""
        self.churn(self.rng.uniform(0.3, 1.0))
        self.overlay_on = True
        self.overlay_started = round(self.now(), 1)
        for d in self.daemons:
            took, code = d.terminate(timeout=10.0)
            if code != 0:
                self.violate("sigterm_exit_code", f"{d.key}: exit {code} after {took:.2f}s")
            d.env.update({"OVERLAY": "vxlan", "MASQUERADE": "true"})
            self.tables[d.key].close()
            self.tables[d.key] = NetlinkRouteTable(
                d.protocol, netns=d.ns.ns, device=device_name(d.protocol)
            )
            d.start()
            self.policy_restart_window(d, "overlay_switch")
        self.churn(self.rng.uniform(*self.o.churn_window))
        return time.monotonic()

    def _overlay_restored(
        self, d: DaemonProc, what: str, check: Callable[[], bool], t0: float
    ) -> None:
        """Poll ``check`` until the daemon has repaired the damage; records the time, a
        violation when it took more than OVERLAY_RESTORE_BOUND (or never came, 5 s)."""
        while time.monotonic() - t0 < 5.0:
            if check():
                took = time.monotonic() - t0
                self.recovery.setdefault(self.kind, []).append(took)
                self.checks["overlay_restored"] += 1
                if took > OVERLAY_RESTORE_BOUND:
                    self.violate(
                        "overlay_restore_slow",
                        f"{d.key}: {what} restored after {took:.2f}s "
                        f"(limit {OVERLAY_RESTORE_BOUND:g} s)",
                    )
                return
            time.sleep(0.01)
        self.violate("overlay_not_restored", f"{d.key}: {what} not back after 5 s")

    def _overlay_damage(self, damage: Callable[[DaemonProc, OverlayState], str | None]) -> float:
        """Damage one daemon's overlay (every phase ends converged, so what is there is
        wanted), wait for the repair, then the quiet-period check."""
        d = self.rng.choice(self.daemons)
        _, state = self.want(d)
        assert state is not None
        what = damage(d, state)
        if what is not None:
            self.log(f"  {what} in {d.key}'s namespace")
        self.verify(time.monotonic(), record=False)
        return -1.0

    def fault_vxlan_device_deleted(self) -> float:
        def damage(d: DaemonProc, state: OverlayState) -> str:
            device = device_name(d.protocol)
            routes = self.expected(d)
            ip(d.ns.ns, ["link", "del", device])
            t0 = time.monotonic()

            # One part at a time, each read only until it is right (a whole read takes a
            # few hundred ms on a busy machine: too coarse to time a 1 s bound).
            parts = [
                lambda: read_device_mac(d.ns.ns, device) == state.device_mac,
                lambda: read_fdb(d.ns.ns, device) == state.fdb,
                lambda: read_neighbours(d.ns.ns, device) == state.neighbours,
                lambda: self.kernel(d) == routes,
            ]

            def back() -> bool:
                while parts and parts[0]():
                    parts.pop(0)
                return not parts

            self._overlay_restored(d, f"{device} (deleted) with its entries and routes", back, t0)
            return f"{device} deleted"

        return self._overlay_damage(damage)

    def fault_fdb_entry_deleted(self) -> float:
        def damage(d: DaemonProc, state: OverlayState) -> str | None:
            if not state.fdb:
                return None
            device = device_name(d.protocol)
            mac, dst = self.rng.choice(sorted(state.fdb, key=str))
            run_in(d.ns.ns, ["bridge", "fdb", "del", mac, "dev", device, "dst", str(dst)])
            t0 = time.monotonic()
            entry = (mac, dst)
            self._overlay_restored(
                d, f"fdb {mac} dst {dst}", lambda: entry in read_fdb(d.ns.ns, device), t0
            )
            return f"fdb entry {mac} dst {dst} deleted"

        return self._overlay_damage(damage)

    def fault_neighbour_deleted(self) -> float:
        def damage(d: DaemonProc, state: OverlayState) -> str | None:
            if not state.neighbours:
                return None
            device = device_name(d.protocol)
            vtep, mac = self.rng.choice(sorted(state.neighbours, key=str))
            ip(d.ns.ns, ["neigh", "del", str(vtep), "dev", device])
            t0 = time.monotonic()
            args = ["-j", "neigh", "show", "to", str(vtep), "dev", device, "nud", "permanent"]

            def back() -> bool:
                found = json.loads(ip(d.ns.ns, args, check=False) or "[]")
                return any(e.get("lladdr") == mac for e in found)

            self._overlay_restored(d, f"neighbour {vtep} lladdr {mac}", back, t0)
            return f"neighbour {vtep} deleted"

        return self._overlay_damage(damage)

    def fault_nft_set_flushed(self) -> float:
        def damage(d: DaemonProc, state: OverlayState) -> str | None:
            wanted = dict(state.sets or ())
            names = [n for n in SET_NAMES if wanted.get(n)]
            if not names:
                return None
            name = self.rng.choice(names)
            table = table_name(d.protocol)
            run_in(d.ns.ns, ["nft", "flush", "set", "inet", table, name])
            t0 = time.monotonic()
            self._overlay_restored(
                d,
                f"nft set {name} (flushed)",
                lambda: dict(read_sets(d.ns.ns, table) or ()).get(name) == wanted[name],
                t0,
            )
            return f"nft set {table} {name} flushed"

        return self._overlay_damage(damage)

    def fault_nft_table_deleted(self) -> float:
        def damage(d: DaemonProc, state: OverlayState) -> str:
            table = table_name(d.protocol)
            run_in(d.ns.ns, ["nft", "delete", "table", "inet", table])
            t0 = time.monotonic()
            self._overlay_restored(
                d,
                f"nft table {table} (deleted)",
                lambda: read_sets(d.ns.ns, table) == state.sets,
                t0,
            )
            return f"nft table {table} deleted"

        return self._overlay_damage(damage)

    # -- the policy phase (tests/soak/policy_phase.py) -----------------------------------

    def fault_policy_switch_on(self) -> float:
        """Pods, namespaces and policies in the API, pods on cbr0 in the node
        namespaces, the main daemons restarted with NETWORK_POLICY=true, while the nodes
        churn. From now on each phase ends with a policy step (change, enforce, probe)."""
        self.churn(self.rng.uniform(0.3, 1.0))
        self.policy_started = round(self.now(), 1)
        self.policy = PolicyPhase(
            api=self.api,
            node_ns={f"n{k}": ns for k, ns in enumerate(self.topo.nodes)},
            daemons=[d for d in self.daemons if d.protocol == MAIN_PROTOCOL],
            rng=random.Random(self.rng.random()),
            violate=self.violate,
            checks=self.checks,
            log=self.log,
        )
        self.policy.switch_on()
        self.churn(self.rng.uniform(*self.o.churn_window))
        return time.monotonic()

    def policy_window(self, label: str, kind: str) -> None:
        """In a fault window of the policy phase: a probe round (nothing denied passes)."""
        if self.policy is not None:
            self.policy.window(label, kind=kind)

    def policy_restart_window(self, d: DaemonProc, kind: str = "restart") -> None:
        """Probe rounds while ``d`` (just started) comes up, in the policy phase."""
        if self.policy is not None:
            self.policy.restart_window(d, kind=kind)

    # -- the run ---------------------------------------------------------------------------

    def setup(self) -> None:
        o = self.o
        self.workdir = Path(o.workdir or tempfile.mkdtemp(prefix="xcluster-soak-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log(
            f"soak: seed {o.seed}, {o.nodes} nodes, {o.real} node namespaces, "
            f"{o.rate:g} events/s, IPAM bursts of {o.burst}, {o.duration:g} s; "
            f"logs in {self.workdir}"
        )
        self.topo = Topology(o.real)
        self.topo.build()
        self.hub = NetnsExecutor(self.topo.hub, workers=4)
        self.node_ex = [NetnsExecutor(ns, workers=2) for ns in self.topo.nodes]
        self.api = ApiServerDouble(host=HUB_V4, port=API_PORT, bookmark_interval=5.0)
        self.hub.call(self.api.start)
        kubeconfig = self.api.write_kubeconfig(self.workdir / "kubeconfig")
        self.cluster = Cluster(self.api, real=o.real, total=o.nodes, rng=self.rng)
        self.cluster.load()
        for k in range(o.real):
            v4, _ = default_internal_ips(k)
            self.daemons.append(
                DaemonProc(
                    f"n{k}-main",
                    ns=self.node_ex[k],
                    hub=self.hub,
                    view=DaemonView(own=f"n{k}"),
                    protocol=MAIN_PROTOCOL,
                    kubeconfig=kubeconfig,
                    http=(v4, 9202),
                    log_path=self.workdir / f"daemon-n{k}-main.log",
                )
            )
            if k == 0:
                self.daemons.append(
                    DaemonProc(
                        "n0-second",
                        ns=self.node_ex[0],
                        hub=self.hub,
                        view=DaemonView(
                            own="n0",
                            cidr_annotation=CIDR_ANNOTATION,
                            address_annotation=ADDRESS_ANNOTATION,
                        ),
                        protocol=SECOND_PROTOCOL,
                        kubeconfig=kubeconfig,
                        http=(v4, 9203),
                        log_path=self.workdir / "daemon-n0-second.log",
                    )
                )
        for d in self.daemons:
            self.tables[d.key] = NetlinkRouteTable(d.protocol, netns=d.ns.ns)
            d.start()
        self.ipam = IpamLoad(
            ns=self.node_ex[0],
            kubeconfig=kubeconfig,
            data_dir=self.workdir / "ipam",
            log_path=self.workdir / "kube-node.log",
            node="n0",
            subnets=default_pod_cidrs(0),
            burst=o.burst,
            rng=random.Random(self.rng.random()),
            violate=self.violate,
            api_faulty=self.api_faulty,
        )

    def _thread(self, name: str, target: Callable[[], None]) -> threading.Thread:
        def body() -> None:
            try:
                target()
            except Exception:
                self.harness_errors.append(traceback.format_exc())
                self.log(f"harness thread {name} failed:\n{traceback.format_exc()}")

        t = threading.Thread(target=body, name=name, daemon=True)
        t.start()
        return t

    def _rss_loop(self) -> None:
        while not self.stop.wait(2.0):
            for d in self.daemons:
                d.sample_rss()

    def deck(self, first: tuple[str, ...] = ()) -> Iterator[str]:
        """Every fault once per deck, shuffled; a long fault (about 100 s of waiting) in
        every seventh deck only, in runs of 10 minutes or more. ``first``: faults dealt
        (shuffled) before the first deck: a new deck starts when the overlay phase starts
        (its faults first, then all of them mixed) and when the policy phase starts (the
        daemon restarts first)."""
        decks = 0
        head = list(first)
        self.rng.shuffle(head)
        yield from head
        while True:
            long = self.o.duration >= 600 and decks % 7 == 0
            decks += 1
            order = list(FAULTS) + (list(LONG_FAULTS) if long else [])
            if self.overlay_on:
                order += OVERLAY_FAULTS
            self.rng.shuffle(order)
            yield from order

    def overlay_due(self, elapsed: float) -> bool:
        share = self.o.overlay_share
        return share > 0 and not self.overlay_on and elapsed >= self.o.duration * (1 - share)

    def policy_due(self, elapsed: float) -> bool:
        share = self.o.policy_share
        return share > 0 and self.policy is None and elapsed >= self.o.duration * (1 - share)

    def run(self) -> dict[str, Any]:
        o = self.o
        threads: list[threading.Thread] = []
        try:
            self.setup()
            self.kind = "initial_sync"
            self.verify(time.monotonic())
            self.log(f"initial sync done at {self.now():.1f}s; campaign starts")
            threads.append(self._thread("churn", self._churn_loop))
            threads.append(self._thread("heartbeats", self._heartbeat_loop))
            threads.append(self._thread("rss", self._rss_loop))
            threads.append(self._thread("ipam", lambda: self.ipam.run(self.stop)))
            start = time.monotonic()
            deck = self.deck()
            kinds = set(FAULTS)
            if o.overlay_share > 0:
                kinds |= {OVERLAY_SWITCH, *OVERLAY_FAULTS}
            if o.policy_share > 0:
                kinds.add(POLICY_SWITCH)
            while (
                time.monotonic() - start < o.duration or not kinds <= set(self.faults)
            ) and not self.harness_errors:
                self.phase += 1
                missing = sorted(kinds - set(self.faults))
                late = time.monotonic() - start >= o.duration
                if late and time.monotonic() - start > o.duration + 600:
                    self.notes.append(f"stopped before covering {missing}: out of time")
                    break
                if self.policy_due(time.monotonic() - start):
                    self.kind = POLICY_SWITCH
                elif self.overlay_due(time.monotonic() - start):
                    self.kind = OVERLAY_SWITCH
                else:
                    self.kind = missing[0] if late else next(deck)
                held = sum(map(len, self.foreign.values()))
                if self.kind == "foreign_route_removed" and not held:
                    self.kind = "foreign_route_added"
                elif self.kind == "foreign_route_added" and held >= 2:
                    self.kind = "foreign_route_removed"
                p0 = time.monotonic()
                t_heal = getattr(self, f"fault_{self.kind}")()
                self.faults[self.kind] += 1
                self.overlay_phases += self.overlay_on
                if t_heal >= 0:
                    self.verify(max(t_heal, self.cluster.last_change))
                if self.policy is not None:
                    self.policy_phases += 1
                    self.policy.step()  # change, wait for enforcement, probe the matrix
                if self.kind == OVERLAY_SWITCH:
                    deck = self.deck(OVERLAY_FAULTS)  # the overlay faults come next
                elif self.kind == POLICY_SWITCH:
                    deck = self.deck(POLICY_FIRST)  # restarts with policies in place
                last = self.recovery.get(self.kind, [None])[-1]
                rec = None if last is None else round(last, 3)
                self.log(
                    f"[{self.now():7.1f}s] phase {self.phase:4d} {self.kind:24s} "
                    f"{time.monotonic() - p0:5.1f}s recovery {rec}s "
                    f"violations {len(self.violations)}"
                )
            self.kind = "final"
            for dst_map in list(self.foreign.values()):
                dst_map.clear()  # the removal below is not a fault to measure
            self._remove_foreign()
            self.verify(time.monotonic(), allow=RETRY_MAX + 1.0)
            if self.policy is not None:
                self.policy.step(changes=0)
            self.stop.set()
            for t in threads:
                t.join(timeout=120)
            self.ipam.cleanup()
            self.checks["ipam_final_no_leak"] += 1
            if self.ipam.reservations():
                self.violate("ipam_leak", f"at the end: {sorted(self.ipam.reservations())[:5]}")
            self.final_metrics = {d.key: d.metrics() for d in self.daemons}
            return self.report(time.monotonic() - start)
        finally:
            self.stop.set()
            self.pause_churn()
            self.teardown()

    def _remove_foreign(self) -> None:
        for d in self.daemons:
            for line in json.loads(ip(d.ns.ns, ["-j", "route", "show", "proto", "static"]) or "[]"):
                ip(d.ns.ns, ["route", "del", line["dst"], "proto", "static"], check=False)
            for line in json.loads(
                ip(d.ns.ns, ["-j", "-6", "route", "show", "proto", "static"]) or "[]"
            ):
                ip(d.ns.ns, ["-6", "route", "del", line["dst"], "proto", "static"], check=False)

    def teardown(self) -> None:
        for d in self.daemons:
            try:
                d.stop()
            except Exception:
                d.kill()
        if self.policy is not None:
            self.policy.teardown()
        for table in self.tables.values():
            table.close()
        api = getattr(self, "api", None)
        if api is not None:
            api.stop()
        for ex in [getattr(self, "hub", None), *getattr(self, "node_ex", [])]:
            if ex is not None:
                ex.shutdown()
        topo = getattr(self, "topo", None)
        if topo is not None:
            topo.destroy()
        workdir = getattr(self, "workdir", None)
        if workdir is not None and not self.o.keep and not self.violations and not self.o.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    # -- the report ------------------------------------------------------------------------------

    def scan_logs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in self.daemons:
            text = d.log_path.read_text(errors="replace") if d.log_path.exists() else ""
            levels: Counter[str] = Counter()
            errors: Counter[str] = Counter()
            bad = 0
            for line in text.splitlines():
                try:
                    doc = json.loads(line)
                except ValueError:
                    bad += 1
                    continue
                if "soak" in doc:
                    continue
                levels[str(doc.get("level"))] += 1
                if doc.get("level") in ("error", "critical"):
                    errors[str(doc.get("msg"))] += 1
            tracebacks = text.count("Traceback")
            if tracebacks:
                self.violate("traceback_in_log", f"{d.log_path.name}: {tracebacks}")
            if bad:
                self.violate("non_json_log_line", f"{d.log_path.name}: {bad} lines")
            out[d.key] = {
                "lines": sum(levels.values()),
                "levels": dict(levels),
                "error_messages": dict(errors.most_common(8)),
                "tracebacks": tracebacks,
            }
        plog = self.workdir / "kube-node.log"
        ptext = plog.read_text(errors="replace") if plog.exists() else ""
        if "Traceback" in ptext:
            self.violate("traceback_in_log", f"kube-node.log: {ptext.count('Traceback')}")
        out["kube-node"] = {
            "lines": ptext.count("\n"),
            "errors": ptext.count(" error "),
            "tracebacks": ptext.count("Traceback"),
        }
        return out

    def rss_report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        warmup = 30.0
        for d in self.daemons:
            by_pid: dict[int, list[tuple[float, int]]] = {}
            for t, pid, kb in d.rss:
                by_pid.setdefault(pid, []).append((t, kb))
            longest = max(by_pid.values(), key=len, default=[])
            entry: dict[str, Any] = {
                "starts": d.starts,
                "max_mb": round(max((kb for _, _, kb in d.rss), default=0) / 1024, 1),
            }
            if len(longest) >= 8:
                t_start = longest[0][0]
                steady = [kb for t, kb in longest if t - t_start >= warmup] or [
                    kb for _, kb in longest
                ]
                q = max(1, len(steady) // 4)
                first = statistics.median(steady[:q]) / 1024
                last = statistics.median(steady[-q:]) / 1024
                entry.update(
                    {
                        "lifetime_s": round(longest[-1][0] - t_start),
                        "early_mb": round(first, 1),
                        "late_mb": round(last, 1),
                        "growth_mb": round(last - first, 1),
                    }
                )
                self.checks["rss_no_growth"] += 1
                if last - first > max(16.0, 0.15 * first):
                    self.violate(
                        "daemon_memory_growth", f"{d.key}: {first:.1f} MB -> {last:.1f} MB"
                    )
                    # where it grew: about 40 samples of that process (seconds, MB)
                    step = max(1, len(longest) // 40)
                    entry["series"] = [
                        (round(t - t_start, 1), round(kb / 1024, 1)) for t, kb in longest[::step]
                    ]
            out[d.key] = entry
        return out

    def report(self, campaign_s: float) -> dict[str, Any]:
        logs = self.scan_logs()
        rss = self.rss_report()
        if self.harness_errors:
            self.notes.append(f"{len(self.harness_errors)} harness errors (see output)")
        kinds = Counter(v["kind"] for v in self.violations)
        metrics_keep = (
            "watch_restarts",
            "watch_relists",
            "routes_restored",
            "route_conflicts",
            "syncs",
            "route_operation_errors",
            "route_deletes_deferred",
            "policy_syncs",
            "policy_writes",
            "policy_restored",
        )
        return {
            "seed": self.o.seed,
            "options": {k: v for k, v in attrs.asdict(self.o).items() if k != "log"},
            "campaign_seconds": round(campaign_s, 1),
            "churn_seconds": round(self.churn_time, 1),
            "events": dict(self.cluster.events),
            "events_total": self.cluster.total_events,
            "events_per_second_overall": round(
                self.cluster.total_events / max(campaign_s, 1e-9), 1
            ),
            "changes_per_second_while_churning": round(
                (self.cluster.total_events - self.cluster.events.get("heartbeat", 0))
                / max(self.churn_time, 1e-9),
                1,
            ),
            "rate_shortfalls": self.rate_shortfall,
            "nodes_at_end": len(self.cluster.specs),
            "phases": self.phase,
            "faults": dict(self.faults),
            "recovery_s": {
                k: {"n": len(v), "p50": _pct(v, 0.5), "p99": _pct(v, 0.99), "max": _pct(v, 1.0)}
                for k, v in sorted(self.recovery.items())
            },
            "checks": dict(self.checks),
            "overlay": {
                "share": self.o.overlay_share,
                "started_at_s": self.overlay_started,
                "phases": self.overlay_phases,
            },
            "policy": {
                "share": self.o.policy_share,
                "started_at_s": self.policy_started,
                "phases": self.policy_phases,
                **(self.policy.summary() if self.policy is not None else {"on": False}),
            },
            "violations_total": len(self.violations),
            "violations_by_kind": dict(kinds),
            "violations": self.violations[:200],
            "ipam": self.ipam.summary(),
            "daemon_rss": rss,
            "logs": logs,
            "daemon_metrics": {
                k: {n: v for n, v in m.items() if any(s in n for s in metrics_keep)}
                for k, m in self.final_metrics.items()
            },
            "api_requests": dict(self.api.requests),
            "violations_with_source_edits_nearby": self.edits_during_violations,
            "harness_errors": self.harness_errors[:5],
            "notes": self.notes,
            "workdir": str(self.workdir),
        }


def run_campaign(opts: Options) -> dict[str, Any]:
    return Campaign(opts).run()
