"""The campaign's view of the cluster: what every node looks like (as the campaign wrote
it to the API double), the churn that changes it, and the routes each daemon must hold,
computed with the project's own parser and planner from the current node list."""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from typing import Any

import attrs

from tests.apiserver import ApiServerDouble
from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.core.nodes import parse_nodes
from xcluster_cni_lib.core.planning import desired_routes_from_facts
from xcluster_cni_lib.core.values import Annotations, NodeFacts, NodeNetwork, Route
from xcluster_cni_lib.testing.nodes import default_internal_ips, default_pod_cidrs, make_node

CIDR_ANNOTATION = "soak.xcluster.dev/cidrs"
ADDRESS_ANNOTATION = "soak.xcluster.dev/addresses"
_V4_SECONDARY = int(ipaddress.IPv4Address("100.64.0.0"))

# Bad values written by the churn, by field.
BAD_CIDR_ANNOTATIONS = (
    "",
    "not-a-cidr",
    "100.64.0.0/24,,",
    "100.64.1.0/24,100.64.2.0/24",
    "0.0.0.0/0",
    "100.64.0.0/24,fd00:20::/64,fd00:21::/64",
    "100.64.300.0/24",
    " , ",
)
BAD_ADDRESS_ANNOTATIONS = ("", "bogus", "127.0.0.1", "224.0.0.1", "192.168.0.1,,", "::")
BAD_POD_CIDRS = ("10.244.999.0/24", "fd00:zz::/64", "0.0.0.0/0", "")
BAD_INTERNAL_IPS = ("not-an-ip", "0.0.0.0", "ff02::1", "")


def secondary_cidrs(index: int) -> str:
    v4 = ipaddress.IPv4Address(_V4_SECONDARY + (index % 16384) * 256)
    return f"{v4}/24,fd00:20:{index % 65536:x}::/64"


def address_list(index: int) -> str:
    return ",".join(default_internal_ips(index))


@attrs.define
class NodeSpec:
    """What the campaign decided a node looks like (the API holds make_node of it)."""

    name: str
    index: int
    pod_cidrs: tuple[str, ...]
    internal_ips: tuple[str, ...]
    annotations: dict[str, str]

    def build(self, images: int = 50) -> dict[str, Any]:
        return make_node(
            self.name,
            index=self.index,
            pod_cidrs=self.pod_cidrs,
            internal_ips=self.internal_ips,
            annotations=self.annotations,
            images=images,
        )


def new_spec(name: str, index: int) -> NodeSpec:
    return NodeSpec(
        name=name,
        index=index,
        pod_cidrs=default_pod_cidrs(index),
        internal_ips=default_internal_ips(index),
        annotations={
            CIDR_ANNOTATION: secondary_cidrs(index),
            ADDRESS_ANNOTATION: address_list(index),
        },
    )


@attrs.frozen
class DaemonView:
    """How one daemon reads nodes: its own node and its annotations."""

    own: str
    cidr_annotation: str | None = None
    address_annotation: str | None = None


class Cluster:
    """The node model, mutated only together with the API double (under ``lock``)."""

    def __init__(self, api: ApiServerDouble, *, real: int, total: int, rng: random.Random) -> None:
        self.api = api
        self.rng = rng
        self.lock = threading.RLock()
        self.specs: dict[str, NodeSpec] = {}
        self.real = [f"n{k}" for k in range(real)]
        self.target = total
        self._next_index = real
        self._free: list[int] = []
        self.events: dict[str, int] = {}
        self.total_events = 0
        self.last_change = 0.0
        self.touched: dict[str, float] = {}
        # pod CIDR text (either source) -> nodes holding it: a change of one holder
        # touches the others too (a shared CIDR is contested: routed to neither)
        self._holders: dict[str, set[str]] = {}
        self.history: dict[str, list[str]] = {}  # name -> its last changes (for reports)
        self._facts: dict[tuple[str, str | None, str | None], NodeFacts] = {}
        for k, name in enumerate(self.real):
            self._set(name, new_spec(name, k))
        for _ in range(total - real):
            index = self._take_index()
            self._set(f"v{index}", new_spec(f"v{index}", index))

    def load(self) -> None:
        self.api.set_nodes(s.build() for s in self.specs.values())

    def _take_index(self) -> int:
        if self._free and self.rng.random() < 0.5:
            return self._free.pop(self.rng.randrange(len(self._free)))
        index = self._next_index
        self._next_index += 1
        return index

    # -- expected routes ----------------------------------------------------------------

    def _facts_of(self, spec: NodeSpec, view: DaemonView) -> NodeFacts:
        key = (spec.name, view.cidr_annotation, view.address_annotation)
        facts = self._facts.get(key)
        if facts is None:
            facts = extract_facts(
                spec.build(images=0),
                annotations=Annotations(cidr=view.cidr_annotation, address=view.address_annotation),
            )
            self._facts[key] = facts
        return facts

    def expected(self, view: DaemonView) -> set[Route]:
        """The routes the current node list implies for ``view``."""
        with self.lock:
            facts = [self._facts_of(s, view) for s in self.specs.values()]
        routes, _ = desired_routes_from_facts(facts, own=view.own)
        return set(routes)

    def networks(self, view: DaemonView) -> list[NodeNetwork]:
        """The usable nodes as ``view`` parses them (the overlay phase's oracle starts
        from these)."""
        with self.lock:
            facts = [self._facts_of(s, view) for s in self.specs.values()]
        return parse_nodes(facts)[0]

    # -- churn ----------------------------------------------------------------------------

    def touched_since(self, since: float) -> set[str]:
        """Nodes added, deleted or edited at or after ``since`` (monotonic), and those
        that shared a pod CIDR with one of them before or after the change."""
        with self.lock:
            return {name for name, t in self.touched.items() if t >= since}

    def _count(self, kind: str, now: float) -> None:
        self.events[kind] = self.events.get(kind, 0) + 1
        self.total_events += 1
        self.last_change = now

    def _set(self, name: str, spec: NodeSpec | None) -> None:
        """Put (None: delete) a node's spec; every other node holding one of its old or
        new pod CIDRs counts as touched: its routes are contested or free again."""
        now = time.monotonic()
        old = self.specs.pop(name, None)
        before, after = _cidr_texts(old), _cidr_texts(spec)
        for cidr in before | after:
            for other in self._holders.get(cidr, ()):
                if other != name:
                    self.touched[other] = now
        for cidr in before:
            holders = self._holders[cidr]
            holders.discard(name)
            if not holders:
                del self._holders[cidr]
        for cidr in after:
            self._holders.setdefault(cidr, set()).add(name)
        if spec is not None:
            self.specs[name] = spec

    def _note(self, name: str, what: str) -> None:
        self.touched[name] = time.monotonic()
        entries = self.history.setdefault(name, [])
        entries.append(f"{time.strftime('%H:%M:%S')} {what}")
        del entries[:-6]

    def _write(self, spec: NodeSpec) -> None:
        self._note(spec.name, f"edit {spec.pod_cidrs} {spec.internal_ips} {spec.annotations}")
        for key in [k for k in self._facts if k[0] == spec.name]:
            del self._facts[key]
        self._set(spec.name, spec)
        self.api.update_node(spec.build())

    def virtual(self) -> list[str]:
        return [n for n in self.specs if n not in self.real]

    def heartbeat_one(self, now: float) -> None:
        """A kubelet status update of a random node: a MODIFIED event routing ignores."""
        with self.lock:
            self.api.heartbeat(self.rng.choice(list(self.specs)))
            self.events["heartbeat"] = self.events.get("heartbeat", 0) + 1
            self.total_events += 1

    def churn_one(self, now: float) -> str:
        """One random change routing cares about (or must ignore as invalid); its kind."""
        rng = self.rng
        with self.lock:
            names = self.virtual()
            r = rng.random()
            count = len(self.specs)
            if r < 1 / 3 and (count < self.target - 50 or (count < self.target + 50 and r < 1 / 6)):
                kind = "node_added"
                index = self._take_index()
                spec = new_spec(f"v{index}", index)
                self._set(spec.name, spec)
                self._note(spec.name, "added")
                self.api.add_node(spec.build())
            elif r < 1 / 3:
                kind = "node_deleted"
                name = rng.choice(names)
                spec = self.specs[name]
                self._set(name, None)
                self._note(name, "deleted")
                for key in [k for k in self._facts if k[0] == name]:
                    del self._facts[key]
                self._free.append(spec.index)
                self.api.delete_node(name)
            else:
                kind, spec = self._edit(self.specs[rng.choice(names)])
                self._write(spec)
            self._count(kind, now)
            return kind

    def _edit(self, old: NodeSpec) -> tuple[str, NodeSpec]:
        rng = self.rng
        spec = attrs.evolve(old, annotations=dict(old.annotations))
        r = rng.random()
        if r < 0.25:
            # A CIDR change: the CIDRs of an unused index, or (rarely) another node's, which
            # overlaps: contested, routed to neither, alike in the daemon and here.
            if rng.random() < 0.1:
                other = self.specs[rng.choice(self.virtual())]
                spec.pod_cidrs = other.pod_cidrs
            else:
                spec.pod_cidrs = default_pod_cidrs(self._next_index + rng.randrange(50_000))
            return "cidr_changed", spec
        if r < 0.5:
            spec.internal_ips = default_internal_ips(rng.randrange(self._next_index, 60_000))
            return "address_changed", spec
        if r < 0.65:
            if rng.random() < 0.5:
                spec.pod_cidrs = (rng.choice(BAD_POD_CIDRS), *old.pod_cidrs[1:])
            else:
                spec.internal_ips = (rng.choice(BAD_INTERNAL_IPS), *old.internal_ips[1:])
            return "invalid_field", spec
        if r < 0.80:
            if rng.random() < 0.5:
                spec.annotations[CIDR_ANNOTATION] = rng.choice(BAD_CIDR_ANNOTATIONS)
            elif rng.random() < 0.5:
                spec.annotations[ADDRESS_ANNOTATION] = rng.choice(BAD_ADDRESS_ANNOTATIONS)
            else:
                spec.annotations.pop(CIDR_ANNOTATION, None)
            return "invalid_annotation", spec
        index = rng.randrange(self._next_index, 60_000)
        spec.annotations[CIDR_ANNOTATION] = secondary_cidrs(index)
        spec.annotations[ADDRESS_ANNOTATION] = (
            ",".join(spec.internal_ips)
            if all(_is_ip(a) for a in spec.internal_ips)
            else address_list(spec.index)
        )
        return "annotation_changed", spec

    def bulk_readdress(self, count: int, now: float) -> int:
        """Give ``count`` virtual nodes new addresses at once (a big sync); how many."""
        with self.lock:
            names = self.rng.sample(self.virtual(), min(count, len(self.virtual())))
            for name in names:
                old = self.specs[name]
                ips = default_internal_ips(self.rng.randrange(self._next_index, 60_000))
                self._write(attrs.evolve(old, internal_ips=ips))
                self._count("bulk_readdress", now)
            return len(names)


def _cidr_texts(spec: NodeSpec | None) -> set[str]:
    """The pod CIDRs a node's fields and CIDR annotation name, as written (the churn
    shares CIDRs by copying them, so equal text finds every sharing)."""
    if spec is None:
        return set()
    texts = {c.strip() for c in spec.pod_cidrs}
    texts.update(c.strip() for c in spec.annotations.get(CIDR_ANNOTATION, "").split(","))
    texts.discard("")
    return texts


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
