"""A small evaluator of the nft JSON documents ``core/policynft.py`` emits: reads the sets,
maps and rules of the ``inet`` policy table from a ``table_document`` and runs a new
connection's first packet through its ``forward`` chain, with nftables' semantics for
``jump``/``goto``/``return``/``accept``/``drop`` and set/vmap lookups (addresses,
prefixes, ranges, concatenations). It knows only the expression forms it is given and
fails loudly on any other, so a change of the emitted rules cannot pass unnoticed.

``cluster_allows`` composes the per-node documents the way packets travel: a connection
crosses the forward hook of the source pod's node and of the destination pod's node,
except where it starts or ends at that node's own address (input/output hooks)."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Mapping
from typing import Any

from xcluster_cni_lib.core.policyfacts import PolicyView
from xcluster_cni_lib.core.values import IPAddress

_NO = object()  # an expression that cannot be loaded (wrong family, no ports)


class Packet:
    def __init__(self, src: IPAddress, dst: IPAddress, protocol: str, port: int | None):
        self.src, self.dst, self.proto, self.port = src, dst, protocol.lower(), port

    def load(self, expr: Any) -> Any:
        if "payload" in expr:
            p = expr["payload"]
            if p["protocol"] in ("ip", "ip6"):
                if (p["protocol"] == "ip") != (self.src.version == 4):
                    return _NO
                return {"saddr": self.src, "daddr": self.dst}[p["field"]]
            if p == {"protocol": "th", "field": "dport"}:
                return self.port if self.proto in ("tcp", "udp", "sctp") else _NO
            if p == {"protocol": "icmpv6", "field": "type"}:
                # a new connection's first packet: an ICMP probe is an echo request
                ipv6_icmp = self.proto == "icmp" and self.src.version == 6
                return "echo-request" if ipv6_icmp else _NO
        if expr == {"meta": {"key": "l4proto"}}:
            return self.proto
        if expr == {"ct": {"key": "state"}}:
            return "new"
        if "concat" in expr:
            parts = tuple(self.load(e) for e in expr["concat"])
            return _NO if _NO in parts else parts
        raise AssertionError(f"unknown expression {expr}")


def _matches(element: Any, value: Any) -> bool:
    """Whether a set element (as written in the document) matches a loaded value."""
    if isinstance(element, dict) and "concat" in element:
        return len(element["concat"]) == len(value) and all(
            _matches(e, v) for e, v in zip(element["concat"], value, strict=True)
        )
    if isinstance(element, dict) and "prefix" in element:
        net = ipaddress.ip_network(f"{element['prefix']['addr']}/{element['prefix']['len']}")
        return isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address) and value in net
    if isinstance(element, dict) and "range" in element:
        lo, hi = element["range"]
        if isinstance(lo, int):
            return isinstance(value, int) and lo <= value <= hi
        first, last = ipaddress.ip_address(lo), ipaddress.ip_address(hi)
        return (
            isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address)
            and value.version == first.version
            and int(first) <= int(value) <= int(last)
        )
    if isinstance(element, int):
        return bool(value == element)
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return isinstance(element, str) and ipaddress.ip_address(element) == value
    return bool(element == value)


class Table:
    """The inet table of one ``table_document``."""

    def __init__(self, document: Mapping[str, Any]):
        self.sets: dict[str, list[Any]] = {}
        self.chains: dict[str, list[list[dict[str, Any]]]] = {}
        self.base: dict[str, str] = {}
        for command in document["nftables"]:
            add = command.get("add")
            if not add:
                continue
            kind, spec = next(iter(add.items()))
            if spec.get("family") != "inet":
                continue
            if kind in ("set", "map"):
                elements = spec.get("elem", [])
                if kind == "map":
                    assert spec["map"] == "verdict"
                    # overlapping interval elements would be refused by the kernel
                    assert _disjoint([e[0] for e in elements]), spec["name"]
                self.sets[spec["name"]] = elements
            elif kind == "chain":
                self.chains[spec["name"]] = []
                if "hook" in spec:
                    self.base[spec["hook"]] = spec["name"]
                    assert spec["policy"] == "accept"
            elif kind == "rule":
                self.chains[spec["chain"]].append(spec["expr"])

    def lookup(self, name: str, value: Any) -> Any:
        for element in self.sets[name]:
            key = element[0] if isinstance(element, list) else element
            if _matches(key, value):
                return element
        return None

    def forward(self, packet: Packet) -> bool:
        """The verdict of the forward hook (True: accept)."""
        stack: list[tuple[str, int]] = []
        chain, index = self.base["forward"], 0
        while True:
            rules = self.chains[chain]
            if index >= len(rules):  # end of a chain: implicit return / base policy
                if not stack:
                    return True
                chain, index = stack.pop()
                continue
            verdict = self._rule(rules[index], packet)
            index += 1
            if verdict is None:
                continue
            kind, target = verdict
            if kind == "accept":
                return True
            if kind == "drop":
                return False
            if kind == "return":
                if not stack:
                    return True
                chain, index = stack.pop()
            elif kind == "jump":
                stack.append((chain, index))
                chain, index = target, 0
            elif kind == "goto":
                chain, index = target, 0

    def _rule(self, expr: list[dict[str, Any]], packet: Packet) -> tuple[str, str] | None:
        for e in expr:
            if "match" in e:
                m = e["match"]
                value = packet.load(m["left"])
                if value is _NO:
                    return None
                right = m["right"]
                if isinstance(right, str) and right.startswith("@"):
                    hit = self.lookup(right[1:], value) is not None
                    if (m["op"] == "==") != hit:
                        return None
                elif m["op"] == "in":
                    if value not in right:
                        return None
                elif m["op"] == "==" and isinstance(right, dict) and "set" in right:
                    if value not in right["set"]:
                        return None
                else:
                    raise AssertionError(f"unknown match {m}")
            elif "vmap" in e:
                value = packet.load(e["vmap"]["key"])
                if value is _NO:
                    return None
                element = self.lookup(e["vmap"]["data"][1:], value)
                if element is None:
                    return None
                ((kind, arg),) = element[1].items()
                return kind, arg["target"]
            else:
                ((kind, arg),) = e.items()
                assert kind in ("accept", "drop", "return", "jump", "goto"), e
                return kind, (arg or {}).get("target", "")
        raise AssertionError(f"rule without a verdict: {expr}")


def _disjoint(keys: list[Any]) -> bool:
    spans = []
    for k in keys:
        if isinstance(k, str):
            a = ipaddress.ip_address(k)
            spans.append((a.version, int(a), int(a)))
        elif "prefix" in k:
            n = ipaddress.ip_network(f"{k['prefix']['addr']}/{k['prefix']['len']}")
            spans.append((n.version, int(n.network_address), int(n.broadcast_address)))
        else:
            lo, hi = (ipaddress.ip_address(x) for x in k["range"])
            spans.append((lo.version, int(lo), int(hi)))
    spans.sort()
    return all(a[0] != b[0] or a[2] < b[1] for a, b in itertools.pairwise(spans))


def cluster_allows(
    view: PolicyView,
    tables: Mapping[str, Table],
    src: IPAddress,
    dst: IPAddress,
    protocol: str,
    port: int | None,
) -> bool:
    """Whether every forward hook the connection's first packet crosses accepts it."""
    pods = view.pod_by_ip()
    nodes = {p.node for p in (pods.get(src), pods.get(dst)) if p is not None}
    packet = Packet(src, dst, protocol, port)
    for node in sorted(nodes):
        own = view.node_addresses.get(node, frozenset())
        if src in own or dst in own:
            continue  # the node's own traffic: input/output, never forward
        if not tables[node].forward(packet):
            return False
    return True
