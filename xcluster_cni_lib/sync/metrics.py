"""Prometheus metrics of the router daemon, in their own ``CollectorRegistry`` (so several
daemons or tests in one process never share counters). Names are listed in ``docs/daemon.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "xcluster_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _SourceCollector(Collector):
    """Reads the node source's own counters (``restarts``, ``relists``, and
    ``malformed`` when given) at scrape time."""

    def __init__(
        self, read: Callable[[], tuple[int, int]], malformed: Callable[[], int] | None = None
    ) -> None:
        self._read = read
        self._malformed = malformed

    def collect(self) -> Iterator[CounterMetricFamily]:
        if self._malformed is not None:
            yield CounterMetricFamily(
                PREFIX + "watch_malformed_events",
                "Watch events skipped because they were malformed (not JSON, not an object, "
                "no or unknown type, object or metadata not an object, no name).",
                value=self._malformed(),
            )
        restarts, relists = self._read()
        yield CounterMetricFamily(
            PREFIX + "watch_restarts",
            "Node watches that ended early (error, dropped or silent stream) and were restarted.",
            value=restarts,
        )
        yield CounterMetricFamily(
            PREFIX + "watch_relists",
            "Full LISTs of the nodes after the first (410 Gone, reconnects, file re-reads).",
            value=relists,
        )


class _SkippedCollector(Collector):
    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            PREFIX + "nodes_skipped",
            "Nodes not routed (or only partly) by reason, as of the last reconcile.",
            labels=["reason"],
        )
        for reason, count in sorted(self._read().items()):
            family.add_metric([reason], count)
        yield family


class DaemonMetrics:
    """Every metric the daemon exports. Thread-safe (prometheus_client is)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.routes_desired = Gauge(
            PREFIX + "routes_desired", "Routes the nodes call for.", registry=r
        )
        self.routes_installed = Gauge(
            PREFIX + "routes_installed",
            "Routes of our protocol in the kernel after the last reconcile.",
            registry=r,
        )
        self.nodes = Gauge(PREFIX + "nodes", "Nodes in the cache.", registry=r)
        self.syncs = Counter(
            PREFIX + "syncs",
            "Reconciles by result (ok, partial: some routes failed, error: the reconcile failed).",
            ["result"],
            registry=r,
        )
        self.sync_duration = Histogram(
            PREFIX + "sync_duration_seconds",
            "Duration of one reconcile (list, plan, apply).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.route_ops = Counter(
            PREFIX + "route_operations",
            "Route operations applied to the kernel, by operation (add, replace, delete).",
            ["op"],
            registry=r,
        )
        self.route_op_errors = Counter(
            PREFIX + "route_operation_errors",
            "Failed route operations by operation and reason (conflict, unreachable, error).",
            ["op", "reason"],
            registry=r,
        )
        self.routes_restored = Counter(
            PREFIX + "routes_restored",
            "Routes of ours that someone removed or changed and that were put back.",
            registry=r,
        )
        self.conflicts = Counter(
            PREFIX + "route_conflicts",
            "Times a destination we want was held by a route of another protocol.",
            registry=r,
        )
        self.conflicts_current = Gauge(
            PREFIX + "route_conflicts_current",
            "Destinations held by another protocol's route at the last reconcile.",
            registry=r,
        )
        self.contested_cidrs = Gauge(
            PREFIX + "contested_cidrs",
            "Pod CIDRs of other nodes that overlap another node's and get no route, "
            "at the last reconcile.",
            registry=r,
        )
        self.deletes_deferred = Gauge(
            PREFIX + "route_deletes_deferred",
            "Deletes held back at the last reconcile because the node view was not synced "
            "or not healthy.",
            registry=r,
        )
        self.ready = Gauge(PREFIX + "ready", "1 when /readyz answers OK.", registry=r)
        self.source_healthy = Gauge(
            PREFIX + "source_healthy", "1 while the node source reaches its backend.", registry=r
        )
        self.last_sync = Gauge(
            PREFIX + "last_sync_timestamp_seconds",
            "Unix time of the last successful reconcile.",
            registry=r,
        )
        self.ipam_calls = Counter(
            PREFIX + "ipam_calls",
            "IPAM calls served on IPAM_SOCKET by verb and CNI result code (0 = success, "
            "11 = refused: too many at once).",
            ["verb", "code"],
            registry=r,
        )
        self._skipped: dict[str, int] = {}
        r.register(_SkippedCollector(lambda: dict(self._skipped)))

    def ipam_call(self, verb: str, code: int) -> None:
        """Count one served IPAM call."""
        self.ipam_calls.labels(verb, str(code)).inc()

    def set_skipped(self, by_reason: dict[str, int]) -> None:
        self._skipped = dict(by_reason)

    def watch_source(
        self, read: Callable[[], tuple[int, int]], malformed: Callable[[], int] | None = None
    ) -> None:
        """Export a node source's restart and relist counters (and its count of skipped
        malformed events), read at scrape time."""
        self.registry.register(_SourceCollector(read, malformed))

    def render(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)
