"""What the NetworkPolicy agent knows of the cluster: Pods, Namespaces and NetworkPolicies
as compact facts (``core.policyfacts``), fed by three sources (``KubeNodeSource`` with
``resource=pods|namespaces|networkpolicies``), one ``KindSink`` each.

Every object is parsed once, where it arrives (``convert``): the sinks keep only the facts,
never the API's dicts. A hostNetwork or finished pod is kept out (nothing can select or
reach it); a pod without addresses yet is kept (its labels are known when the served IPAM
binds its addresses). An event that
changes nothing policy reads (a pod's status conditions, a heartbeat of labels that did
not change) costs one parse and one comparison and notifies nobody. A malformed object is
dropped from the view and kept as a ``PolicyProblem`` (logged once, counted in metrics)
until a valid version of it arrives or it is deleted.

A pod the API does not show addresses for yet can get them from the agent itself
(``bind``): the served IPAM knows a new pod's addresses before the kubelet reports them,
so the pod's policy can be in place before its containers start (``daemon.admission``).
A binding counts only while the API shows no addresses for the pod, and goes with the
pod (or ``unbind``, a DEL).

``synced`` is true once all three kinds have been listed completely (the agent never acts
on a partial view); ``healthy`` while all three sources are. Listeners (the reconciler's
``notify``) run on the sources' threads and must be quick.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs

from xcluster_cni_lib.core.policyfacts import (
    DONE_PHASES,
    InvalidObject,
    NamespaceFacts,
    PodFacts,
    PolicyFacts,
    PolicyProblem,
    PolicyView,
    make_view,
    parse_namespace,
    parse_pod,
    parse_policy,
)
from xcluster_cni_lib.core.values import IPAddress
from xcluster_cni_lib.support import jsonlog

log = jsonlog.get_logger(__name__)

#: The sources' resources, in the order they are started.
KINDS: Final = ("namespaces", "networkpolicies", "pods")
_KIND_NAMES: Final = {"pods": "Pod", "namespaces": "Namespace", "networkpolicies": "NetworkPolicy"}
_PARSERS: Final[dict[str, Callable[[Mapping[str, Any]], Any]]] = {
    "pods": parse_pod,
    "namespaces": parse_namespace,
    "networkpolicies": parse_policy,
}
#: Journal kinds besides the sinks': a binding changed; a whole list replaced the facts.
BINDING: Final = "binding"
EVERYTHING: Final = "everything"
#: How many changes ``pod_changes_since`` can look back over.
JOURNAL_SIZE: Final = 4096
#: The pods' field selector: hostNetwork pods and finished pods never matter to policy.
POD_FIELD_SELECTOR: Final = "spec.hostNetwork=false,status.phase!=Succeeded,status.phase!=Failed"


@attrs.frozen
class Rejected:
    """An object that did not parse: its key and why (what ``convert`` returns for it)."""

    key: str
    problem: PolicyProblem


@attrs.frozen
class Absent:
    """A pod that exists but does not matter to policy (no addresses yet, hostNetwork,
    finished): removed from the view like a deleted one."""

    key: str


Parsed = NamespaceFacts | PodFacts | PolicyFacts | Rejected | Absent


def _key_of(obj: Mapping[str, Any], namespaced: bool) -> str:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return "?"
    name = str(meta.get("name") or "?")
    return f"{meta.get('namespace') or ''}/{name}" if namespaced else name


def converter(kind: str) -> Callable[[Mapping[str, Any]], Parsed]:
    """The ``convert`` of the source of ``kind``: facts, ``Absent`` or ``Rejected``;
    never raises (a list is never lost to one bad object)."""
    parse = _PARSERS[kind]
    name = _KIND_NAMES[kind]
    namespaced = kind != "namespaces"

    def convert(obj: Mapping[str, Any]) -> Parsed:
        try:
            facts = parse(obj)
        except InvalidObject as e:
            return Rejected(e.key, PolicyProblem(name, e.key, e.reason, e.field))
        except (TypeError, AttributeError, ValueError) as e:  # shapes no check foresaw
            key = _key_of(obj, namespaced)
            return Rejected(key, PolicyProblem(name, key, f"unreadable: {e}"))
        if isinstance(facts, PodFacts) and (facts.host_network or facts.phase in DONE_PHASES):
            return Absent(facts.key)  # never policed (kept: pods waiting for addresses)
        assert isinstance(facts, NamespaceFacts | PodFacts | PolicyFacts)
        return facts

    return convert


def _key(item: NamespaceFacts | PodFacts | PolicyFacts) -> str:
    return item.name if isinstance(item, NamespaceFacts) else item.key


class KindSink:
    """The sink of one kind's source (``replace_all``/``upsert``/``delete``/``set_healthy``,
    the ``NodeSink`` methods, taking what ``converter(kind)`` returns)."""

    def __init__(self, store: PolicyStore, kind: str) -> None:
        self.store = store
        self.kind = kind
        self.items: dict[str, Any] = {}
        self.problems: dict[str, PolicyProblem] = {}
        self.listed = False
        self.healthy = False
        self.reason: str | None = "not listed yet"

    # typed ``Any``: a ``NodeSource`` delivers what its ``convert`` returns (``Parsed``)
    def replace_all(self, objects: Iterable[Any]) -> None:
        items: dict[str, Any] = {}
        problems: dict[str, PolicyProblem] = {}
        for obj in objects:
            if isinstance(obj, Rejected):
                problems[obj.key] = obj.problem
            elif not isinstance(obj, Absent):
                items[_key(obj)] = obj
        with self.store.lock:
            changed = items != self.items or not self.listed
            new_problems = problems.keys() - self.problems.keys()
            self.items, self.problems, self.listed = items, problems, True
            if changed:
                self.store.changed(EVERYTHING, "", None)
        for key in sorted(new_problems):
            log.warning("policy input skipped", problem=str(problems[key]))
        if changed:
            self.store.notify()

    def upsert(self, obj: Any) -> None:
        if isinstance(obj, Absent):
            self.delete(obj.key)
            return
        if isinstance(obj, Rejected):
            with self.store.lock:
                fresh = self.problems.get(obj.key) != obj.problem
                self.problems[obj.key] = obj.problem
                old = self.items.pop(obj.key, None)
                changed = old is not None
                if changed:
                    self.store.changed(self.kind, obj.key, old)
            if fresh:
                log.warning("policy input skipped", problem=str(obj.problem))
            if changed:
                self.store.notify()
            return
        key = _key(obj)
        with self.store.lock:
            self.problems.pop(key, None)
            old = self.items.get(key)
            if old == obj:
                return
            self.items[key] = obj
            self.store.changed(self.kind, key, old)
        self.store.notify()

    def delete(self, key: str) -> None:
        with self.store.lock:
            self.problems.pop(key, None)
            bound = self.kind == "pods" and self.store.bindings.pop(key, None) is not None
            old = self.items.pop(key, None)
            if old is None and not bound:
                return
            self.store.changed(BINDING if bound else self.kind, key, old)
        self.store.notify()

    def set_healthy(self, healthy: bool, reason: str | None = None) -> None:
        with self.store.lock:
            was = self.healthy
            self.healthy, self.reason = healthy, (None if healthy else reason)
        if was != healthy:
            self.store.notify()


class PolicyStore:
    """The three kinds' facts; thread-safe. ``sinks[kind]`` feed it; ``view()`` is a
    consistent ``PolicyView`` of them; ``generation`` counts changes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sinks = {kind: KindSink(self, kind) for kind in KINDS}
        self.generation = 0
        self.bindings: dict[str, tuple[IPAddress, ...]] = {}
        self._journal: deque[tuple[int, str, str, Any]] = deque(maxlen=JOURNAL_SIZE)
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def changed(self, kind: str, key: str, old: Any) -> None:
        """Called with ``lock`` held when facts changed: ``kind`` (a sink's, ``BINDING``
        or ``EVERYTHING``), the object's key and its facts before (None: new)."""
        self.generation += 1
        self._journal.append((self.generation, kind, key, old))

    def pod_changes_since(
        self, generation: int
    ) -> tuple[int, list[tuple[PodFacts | None, PodFacts | None]]] | None:
        """When every change since ``generation`` is a pod's (not a binding's): the
        current generation and, per changed pod, its facts then and now. None otherwise
        (or when the journal no longer reaches back that far)."""
        with self.lock:
            if generation == self.generation:
                return generation, []
            journal = self._journal
            if not journal or journal[0][0] > generation + 1:
                return None
            before: dict[str, PodFacts | None] = {}
            for gen, kind, key, old in journal:
                if gen <= generation:
                    continue
                if kind != "pods":
                    return None
                before.setdefault(key, old)
            pods = self.sinks["pods"].items
            return self.generation, [(old, pods.get(key)) for key, old in before.items()]

    def namespaces_view(self) -> PolicyView:
        """A view of the namespaces alone (what peer matching reads of them)."""
        with self.lock:
            return make_view(namespaces=list(self.sinks["namespaces"].items.values()))

    def notify(self) -> None:
        for listener in self._listeners:
            listener()

    def bind(self, key: str, ips: Iterable[IPAddress]) -> tuple[int, bool]:
        """Pod ``key`` (``namespace/name``) has ``ips`` (the served IPAM allocated them);
        the generation that includes it, and whether the pod itself is known."""
        ips = tuple(ips)
        with self.lock:
            known = key in self.sinks["pods"].items
            if self.bindings.get(key) != ips:
                self.bindings[key] = ips
                self.changed(BINDING, key, None)
            generation = self.generation
        self.notify()
        return generation, known

    def unbind(self, key: str) -> None:
        with self.lock:
            if self.bindings.pop(key, None) is None:
                return
            self.changed(BINDING, key, None)
        self.notify()

    @property
    def synced(self) -> bool:
        """Every kind has been listed completely at least once."""
        return all(s.listed for s in self.sinks.values())

    @property
    def healthy(self) -> bool:
        return all(s.healthy for s in self.sinks.values())

    def reasons(self) -> list[str]:
        """Why the view is not synced or not healthy, per kind (empty when it is both)."""
        out = []
        for kind, sink in self.sinks.items():
            if not sink.listed:
                out.append(f"{kind} not listed yet")
            elif not sink.healthy:
                out.append(f"{kind} source unhealthy: {sink.reason or 'unknown'}")
        return out

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {kind: len(s.items) for kind, s in self.sinks.items()}

    def problems(self) -> list[PolicyProblem]:
        with self.lock:
            return [p for s in self.sinks.values() for _, p in sorted(s.problems.items())]

    def view(self) -> tuple[PolicyView, int]:
        """A consistent view and the generation it is of."""
        with self.lock:
            pods = [
                attrs.evolve(p, ips=self.bindings[p.key])
                if not p.ips and p.key in self.bindings
                else p
                for p in self.sinks["pods"].items.values()
            ]
            namespaces = list(self.sinks["namespaces"].items.values())
            policies = list(self.sinks["networkpolicies"].items.values())
            problems = [p for s in self.sinks.values() for p in s.problems.values()]
            generation = self.generation
        view = make_view(pods=pods, namespaces=namespaces, policies=policies, problems=problems)
        return view, generation
