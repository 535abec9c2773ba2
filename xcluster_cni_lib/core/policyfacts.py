"""NetworkPolicy inputs, pure: compact, frozen facts of Pods, Namespaces and
``networking.k8s.io/v1`` NetworkPolicies, parsed from the dicts the API returns, and the
label selectors they use.

Parsing is strict where a mistake would change what is allowed: a malformed policy is
*skipped* with a ``PolicyProblem`` naming the object and the field (``build_view``), never
half-read, and never stops the other objects. A skipped policy allows nothing and selects
nothing: the agent reports it; what it would have allowed stays denied if another policy
isolates the same pods (the API server validates policies, so this is for hostile or
future input).

Selectors follow ``metav1.LabelSelector``: ``matchLabels`` and ``matchExpressions``
(``In``, ``NotIn``, ``Exists``, ``DoesNotExist``) are ANDed; an empty selector (``{}``)
selects everything; a *missing* selector (``None``) is kept apart where the API gives
it a meaning (a peer's ``podSelector``/``namespaceSelector``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeAlias, TypeGuard

import attrs

from xcluster_cni_lib.core.addresses import parse_address, parse_cidr
from xcluster_cni_lib.core.errors import InputError, shorten
from xcluster_cni_lib.core.values import IPAddress, IPNetwork

#: Protocols a NetworkPolicy port names (``protocol``, default TCP).
PROTOCOLS: Final = ("TCP", "UDP", "SCTP")
OPERATORS: Final = ("In", "NotIn", "Exists", "DoesNotExist")
#: Pod phases whose IPs are no longer the pod's (they may be reused by another pod).
DONE_PHASES: Final = ("Succeeded", "Failed")
MAX_PORT: Final = 65535

Labels: TypeAlias = Mapping[str, str]


class InvalidObject(InputError):
    """An API object that cannot be used; names its kind, namespace/name and the field."""

    def __init__(self, kind: str, key: str, reason: str, *, field: str | None = None):
        self.kind, self.key, self.reason, self.field = kind, shorten(key), reason, field
        where = "" if field is None else f" ({field})"
        super().__init__(f"{kind} {self.key}: {reason}{where}")


@attrs.frozen
class PolicyProblem:
    """An object skipped from the view, reported but not stopping the others."""

    kind: str  # "Pod" | "Namespace" | "NetworkPolicy"
    key: str = attrs.field(converter=shorten)  # "namespace/name" (a Namespace: its name)
    reason: str
    field: str | None = None

    def __str__(self) -> str:
        where = "" if self.field is None else f" ({self.field})"
        return f"{self.kind} {self.key}: {self.reason}{where}"


class FieldError(InputError):
    """A bad field of an object being parsed (``parse_selector``); the object's parser
    turns it into ``InvalidObject`` with the object's name."""

    def __init__(self, reason: str, field: str):
        super().__init__(f"{field}: {reason}")
        self.reason, self.field = reason, field


# -- selectors ---------------------------------------------------------------------------


@attrs.frozen
class Requirement:
    """One ``matchExpressions`` entry (``matchLabels`` entries become ``In`` with one value)."""

    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Labels) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present  # DoesNotExist


@attrs.frozen
class Selector:
    """A label selector: every requirement must hold. No requirement selects everything."""

    requirements: frozenset[Requirement] = frozenset()

    def matches(self, labels: Labels) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def everything(self) -> bool:
        return not self.requirements


#: The empty selector ``{}``.
EVERYTHING: Final = Selector()


def parse_selector(raw: object, where: str) -> Selector:
    """A ``metav1.LabelSelector`` dict as a ``Selector`` (``None``: the empty one);
    ``FieldError`` naming the field below ``where``."""
    if raw is None:
        return EVERYTHING
    if not isinstance(raw, Mapping):
        raise FieldError(f"{where} is not an object", where)
    reqs: set[Requirement] = set()
    labels = raw.get("matchLabels")
    labels = {} if labels is None else labels
    if not isinstance(labels, Mapping):
        raise FieldError("matchLabels is not an object", f"{where}.matchLabels")
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise FieldError("matchLabels keys and values must be strings", f"{where}.matchLabels")
        reqs.add(Requirement(k, "In", frozenset((v,))))
    exprs = raw.get("matchExpressions")
    exprs = [] if exprs is None else exprs
    if not isinstance(exprs, list):
        raise FieldError("matchExpressions is not a list", f"{where}.matchExpressions")
    for i, e in enumerate(exprs):
        at = f"{where}.matchExpressions[{i}]"
        if not isinstance(e, Mapping):
            raise FieldError("not an object", at)
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if not isinstance(key, str) or not key:
            raise FieldError("key missing", f"{at}.key")
        if op not in OPERATORS:
            raise FieldError(f"unknown operator {op!r}", f"{at}.operator")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise FieldError("values must be a list of strings", f"{at}.values")
        if op in ("In", "NotIn") and not values:
            raise FieldError(f"{op} needs values", f"{at}.values")
        if op in ("Exists", "DoesNotExist") and values:
            raise FieldError(f"{op} takes no values", f"{at}.values")
        reqs.add(Requirement(key, str(op), frozenset(values)))
    return Selector(frozenset(reqs))


# -- pods and namespaces -----------------------------------------------------------------


@attrs.frozen
class PodFacts:
    """What policy needs of a Pod. ``named_ports``: container port name -> (protocol, port)."""

    namespace: str
    name: str
    labels: Mapping[str, str] = attrs.field(factory=dict)
    ips: tuple[IPAddress, ...] = ()
    named_ports: Mapping[str, tuple[str, int]] = attrs.field(factory=dict)
    node: str = ""
    host_network: bool = False
    phase: str = "Running"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def policed(self) -> bool:
        """Whether policy applies to this pod at all: it has its own addresses and is not
        done (hostNetwork pods share the node's; a finished pod's IPs may be reused)."""
        return not self.host_network and self.phase not in DONE_PHASES and bool(self.ips)

    def ip(self, family: int) -> IPAddress | None:
        return next((a for a in self.ips if a.version == family), None)


@attrs.frozen
class NamespaceFacts:
    name: str
    labels: Mapping[str, str] = attrs.field(factory=dict)


def _meta(obj: Mapping[str, Any], kind: str, *, namespaced: bool = True) -> tuple[str, str]:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        raise InvalidObject(kind, "?", "no name", field="metadata.name")
    if not namespaced:
        return "", str(meta["name"])
    ns = meta.get("namespace")
    if not isinstance(ns, str) or not ns:
        raise InvalidObject(kind, str(meta["name"]), "no namespace", field="metadata.namespace")
    return ns, str(meta["name"])


class _Shared:
    """One copy of each equal value (label sets, named ports, namespace and node names):
    the pods of one workload share their labels, so 10,000 pods hold a few hundred label
    dicts instead of 10,000. The values handed out are never changed (facts are frozen).
    The memo is dropped whole when it reaches ``limit`` entries (workloads come and go;
    sharing is only a saving, never a meaning)."""

    def __init__(self, limit: int = 65536) -> None:
        self.limit = limit
        self._memo: dict[Any, Any] = {}

    def get(self, key: Any, make: Any) -> Any:
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= self.limit:
                self._memo = {}
            found = self._memo[key] = make()
        return found


_SHARED = _Shared()


def _share_dict(d: dict[str, Any]) -> dict[str, Any]:
    if not d:
        return _EMPTY
    key = ("dict", tuple(sorted(d.items())))
    shared: dict[str, Any] = _SHARED.get(key, lambda: d)
    return shared


def _share_text(text: str) -> str:
    shared: str = _SHARED.get(("text", text), lambda: text)
    return shared


_EMPTY: dict[str, Any] = {}


def _labels(obj: Mapping[str, Any], kind: str, key: str) -> dict[str, str]:
    labels = obj.get("metadata", {}).get("labels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise InvalidObject(kind, key, "labels must map strings to strings", field="labels")
    return _share_dict(dict(labels))


def parse_namespace(obj: Mapping[str, Any]) -> NamespaceFacts:
    _, name = _meta(obj, "Namespace", namespaced=False)
    return NamespaceFacts(name=name, labels=_labels(obj, "Namespace", name))


def parse_pod(obj: Mapping[str, Any]) -> PodFacts:
    """A Pod dict as ``PodFacts``; ``InvalidObject`` names the pod and the field."""
    ns, name = _meta(obj, "Pod")
    key = f"{ns}/{name}"
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(spec, Mapping) or not isinstance(status, Mapping):
        raise InvalidObject("Pod", key, "spec/status not objects")
    raw_ips = [p.get("ip") for p in status.get("podIPs") or [] if isinstance(p, Mapping)]
    if not raw_ips and status.get("podIP"):
        raw_ips = [status.get("podIP")]
    ips: list[IPAddress] = []
    for i, text in enumerate(raw_ips):
        try:
            a = parse_address(str(text))
        except ValueError:
            raise InvalidObject(
                "Pod", key, f"bad IP {text!r}", field=f"status.podIPs[{i}]"
            ) from None
        if a not in ips:
            ips.append(a)
    ports: dict[str, tuple[str, int]] = {}
    containers = spec.get("containers") or []
    if not isinstance(containers, list):
        raise InvalidObject("Pod", key, "not a list", field="spec.containers")
    for ci, c in enumerate(containers):
        for pi, p in enumerate((c.get("ports") or []) if isinstance(c, Mapping) else []):
            at = f"spec.containers[{ci}].ports[{pi}]"
            if not isinstance(p, Mapping) or not p.get("name"):
                continue  # unnamed ports cannot be referred to by name
            proto, number = p.get("protocol") or "TCP", p.get("containerPort")
            if proto not in PROTOCOLS or not _is_port(number):
                raise InvalidObject("Pod", key, "bad named port", field=at)
            ports.setdefault(str(p["name"]), (str(proto), int(number)))
    return PodFacts(
        namespace=_share_text(ns),
        name=name,
        labels=_labels(obj, "Pod", key),
        ips=tuple(ips),
        named_ports=_share_dict(ports),
        node=_share_text(str(spec.get("nodeName") or "")),
        host_network=bool(spec.get("hostNetwork")),
        phase=_share_text(str(status.get("phase") or "Pending")),
    )


def _is_port(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_PORT


# -- policies ----------------------------------------------------------------------------


@attrs.frozen
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, address: IPAddress) -> bool:
        return address in self.cidr and not any(address in e for e in self.excepts)


@attrs.frozen
class Peer:
    """One ``from``/``to`` entry: pods (``pods`` given, ``namespaces`` ``None``: the
    policy's namespace), pods of namespaces (both given), or an ``ipblock``."""

    pods: Selector | None = None
    namespaces: Selector | None = None
    ipblock: IPBlock | None = None


@attrs.frozen
class PortSpec:
    """One ``ports`` entry. ``port`` ``None``: every port of ``protocol``; a ``str``: a
    named port, resolved on the pod receiving the connection; ``end`` with a number: a
    range."""

    protocol: str = "TCP"
    port: int | str | None = None
    end: int | None = None


@attrs.frozen
class Rule:
    """One ingress or egress rule. ``peers`` empty: every peer; ``ports`` empty: every
    port and protocol."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PortSpec, ...] = ()


@attrs.frozen
class PolicyFacts:
    namespace: str
    name: str
    pod_selector: Selector = EVERYTHING
    ingress_policy: bool = True
    egress_policy: bool = False
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _parse_network(text: object, field: str) -> IPNetwork:
    if not isinstance(text, str):
        raise FieldError("not a CIDR string", field)
    try:
        return parse_cidr(text)
    except ValueError:
        raise FieldError(f"bad CIDR {text!r}", field) from None


def _parse_peer(raw: object, at: str) -> Peer:
    if not isinstance(raw, Mapping):
        raise FieldError("not an object", at)
    block = raw.get("ipBlock")
    pods, nss = raw.get("podSelector"), raw.get("namespaceSelector")
    if block is not None:
        if pods is not None or nss is not None:
            raise FieldError("ipBlock cannot be combined with selectors", at)
        if not isinstance(block, Mapping):
            raise FieldError("not an object", f"{at}.ipBlock")
        cidr = _parse_network(block.get("cidr"), f"{at}.ipBlock.cidr")
        excepts = []
        excepts_raw = _list_or_empty(block.get("except"))
        if not isinstance(excepts_raw, list):
            raise FieldError("not a list", f"{at}.ipBlock.except")
        for i, e in enumerate(excepts_raw):
            ex = _parse_network(e, f"{at}.ipBlock.except[{i}]")
            if ex.version != cidr.version or not ex.subnet_of(cidr):  # type: ignore[arg-type]
                raise FieldError("except must lie within cidr", f"{at}.ipBlock.except[{i}]")
            excepts.append(ex)
        return Peer(ipblock=IPBlock(cidr, tuple(excepts)))
    if pods is None and nss is None:
        raise FieldError("a peer needs podSelector, namespaceSelector or ipBlock", at)
    return Peer(
        pods=None if pods is None else parse_selector(pods, f"{at}.podSelector"),
        namespaces=None if nss is None else parse_selector(nss, f"{at}.namespaceSelector"),
    )


def _parse_port(raw: object, at: str) -> PortSpec:
    if not isinstance(raw, Mapping):
        raise FieldError("not an object", at)
    proto = raw.get("protocol") or "TCP"
    if proto not in PROTOCOLS:
        raise FieldError(f"unknown protocol {proto!r}", f"{at}.protocol")
    port, end = raw.get("port"), raw.get("endPort")
    if port is not None and not (_is_port(port) or (isinstance(port, str) and port)):
        raise FieldError(f"bad port {port!r}", f"{at}.port")
    if end is not None:
        if not _is_port(port):
            raise FieldError("endPort needs a numeric port", f"{at}.endPort")
        if not _is_port(end) or not _is_port(port) or end < port:
            raise FieldError(f"bad endPort {end!r}", f"{at}.endPort")
    return PortSpec(protocol=str(proto), port=port, end=end)


def _list_or_empty(value: object) -> object:
    """A missing or null list is empty; anything else is checked by the caller."""
    return [] if value is None else value


def _parse_rules(spec: Mapping[str, Any], field: str, peers_field: str) -> tuple[Rule, ...]:
    raw = _list_or_empty(spec.get(field))
    if not isinstance(raw, list):
        raise FieldError("not a list", f"spec.{field}")
    rules = []
    for i, r in enumerate(raw):
        at = f"spec.{field}[{i}]"
        if not isinstance(r, Mapping):
            raise FieldError("not an object", at)
        peers, ports = _list_or_empty(r.get(peers_field)), _list_or_empty(r.get("ports"))
        if not isinstance(peers, list) or not isinstance(ports, list):
            raise FieldError(f"{peers_field} and ports must be lists", at)
        rules.append(
            Rule(
                peers=tuple(
                    _parse_peer(p, f"{at}.{peers_field}[{j}]") for j, p in enumerate(peers)
                ),
                ports=tuple(_parse_port(p, f"{at}.ports[{j}]") for j, p in enumerate(ports)),
            )
        )
    return tuple(rules)


def parse_policy(obj: Mapping[str, Any]) -> PolicyFacts:
    """A NetworkPolicy dict as ``PolicyFacts``, ``policyTypes`` defaulted as the API does
    (Ingress always; Egress when there are egress rules); ``InvalidObject`` names the
    policy and the field."""
    ns, name = _meta(obj, "NetworkPolicy")
    spec = obj.get("spec") or {}
    try:
        if not isinstance(spec, Mapping):
            raise FieldError("not an object", "spec")
        selector = parse_selector(spec.get("podSelector"), "spec.podSelector")
        ingress = _parse_rules(spec, "ingress", "from")
        egress = _parse_rules(spec, "egress", "to")
        types = _list_or_empty(spec.get("policyTypes"))
        if not isinstance(types, list) or not all(t in ("Ingress", "Egress") for t in types):
            raise FieldError(f"bad policyTypes {types!r}", "spec.policyTypes")
        if not types:
            types = ["Ingress", *(["Egress"] if egress else [])]
    except FieldError as e:
        raise InvalidObject("NetworkPolicy", f"{ns}/{name}", e.reason, field=e.field) from None
    return PolicyFacts(
        namespace=ns,
        name=name,
        pod_selector=selector,
        ingress_policy="Ingress" in types,
        egress_policy="Egress" in types,
        ingress=ingress,
        egress=egress,
    )


# -- the view ----------------------------------------------------------------------------


@attrs.frozen
class PolicyView:
    """Everything policy decisions read: pods, namespaces, policies (each sorted by key),
    and the addresses of every node (traffic between a pod and its own node is always
    allowed)."""

    pods: tuple[PodFacts, ...] = ()
    namespaces: Mapping[str, NamespaceFacts] = attrs.field(factory=dict)
    policies: tuple[PolicyFacts, ...] = ()
    node_addresses: Mapping[str, frozenset[IPAddress]] = attrs.field(factory=dict)
    problems: tuple[PolicyProblem, ...] = attrs.field(default=(), eq=False)

    def pod_by_ip(self) -> dict[IPAddress, PodFacts]:
        """The live, non-hostNetwork pod of each address (first by key if two claim one)."""
        out: dict[IPAddress, PodFacts] = {}
        for p in self.pods:
            if p.policed:
                for a in p.ips:
                    out.setdefault(a, p)
        return out

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        ns = self.namespaces.get(name)
        return ns.labels if ns is not None else {}


def _parse_all(
    objects: Iterable[Mapping[str, Any]], kind: str, parse: Any, problems: list[PolicyProblem]
) -> list[Any]:
    out = []
    for obj in objects:
        try:
            out.append(parse(obj))
        except InvalidObject as e:
            problems.append(PolicyProblem(kind, e.key, e.reason, e.field))
        except (TypeError, AttributeError, ValueError) as e:  # shapes no check foresaw
            meta = obj.get("metadata") if isinstance(obj, Mapping) else None
            key = (
                f"{meta.get('namespace', '')}/{meta.get('name', '?')}"
                if isinstance(meta, Mapping)
                else "?"
            )
            problems.append(PolicyProblem(kind, key, f"unreadable: {e}"))
    return out


def build_view(
    *,
    pods: Iterable[Mapping[str, Any]] = (),
    namespaces: Iterable[Mapping[str, Any]] = (),
    policies: Iterable[Mapping[str, Any]] = (),
    node_addresses: Mapping[str, Iterable[IPAddress]] | None = None,
) -> PolicyView:
    """A view from API dicts; malformed objects are skipped and listed in ``problems``."""
    problems: list[PolicyProblem] = []
    p = _parse_all(pods, "Pod", parse_pod, problems)
    n = _parse_all(namespaces, "Namespace", parse_namespace, problems)
    q = _parse_all(policies, "NetworkPolicy", parse_policy, problems)
    return make_view(
        pods=p,
        namespaces=n,
        policies=q,
        node_addresses=node_addresses,
        problems=problems,
    )


def make_view(
    *,
    pods: Iterable[PodFacts] = (),
    namespaces: Iterable[NamespaceFacts] = (),
    policies: Iterable[PolicyFacts] = (),
    node_addresses: Mapping[str, Iterable[IPAddress]] | None = None,
    problems: Iterable[PolicyProblem] = (),
) -> PolicyView:
    """A view from facts (sorted, so equal inputs give equal views)."""
    return PolicyView(
        pods=tuple(sorted(pods, key=lambda x: (x.namespace, x.name))),
        namespaces={ns.name: ns for ns in sorted(namespaces, key=lambda x: x.name)},
        policies=tuple(sorted(policies, key=lambda x: (x.namespace, x.name))),
        node_addresses={k: frozenset(v) for k, v in sorted((node_addresses or {}).items())},
        problems=tuple(problems),
    )
