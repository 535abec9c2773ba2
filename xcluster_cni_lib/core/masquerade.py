"""Egress masquerade, pure: which addresses go in the nftables sets, how two states of the
sets differ, and the ``nft -j -f -`` documents that create, update and delete the table.

One table per instance, ``inet xcluster-cni-<protocol>``, owned entirely by the instance::

    table inet xcluster-cni-202 {
        set local4   { type ipv4_addr; flags interval; }   # this node's pod CIDRs
        set local6   { type ipv6_addr; flags interval; }
        set cluster4 { type ipv4_addr; flags interval; }   # every node's pod CIDRs
        set cluster6 { type ipv6_addr; flags interval; }   #   + NON_MASQUERADE_CIDRS
        chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr @local4 ip daddr != @cluster4 masquerade
            ip6 saddr @local6 ip6 daddr != @cluster6 masquerade
        }
    }

Traffic from this node's pods to anything outside the cluster sets leaves with the node's
address; pod-to-pod traffic (and traffic to ``NON_MASQUERADE_CIDRS``) keeps the pod's.

Set contents are *canonical*: per family, the CIDRs collapsed (``collapse``, the result of
``ipaddress.collapse_addresses``: overlapping and adjacent networks merged into the
fewest prefixes), sorted. An nft
interval set refuses overlapping elements, and one canonical form per address set makes
"is the kernel as wanted" a plain equality. Node changes are element changes (a set of
CIDRs, never a rule per node); the rules never change.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import attrs

from xcluster_cni_lib.core.values import IPNetwork, NodeNetwork

FAMILY: Final = "inet"
TABLE_PREFIX: Final = "xcluster-cni-"
CHAIN: Final = "postrouting"
#: ``srcnat``: the priority of source NAT in the postrouting hook.
NAT_PRIORITY: Final = 100
OWNER: Final = "owned by xcluster-cni"
#: The sets, in the order they are created and listed.
SET_NAMES: Final = ("local4", "local6", "cluster4", "cluster6")
_SET_TYPES: Final = {4: "ipv4_addr", 6: "ipv6_addr"}
_PAYLOAD: Final = {4: "ip", 6: "ip6"}

#: One JSON object of an nft document (``{"add": {"set": {...}}}``).
Command = dict[str, Any]
#: An nft JSON document (``{"nftables": [...]}``).
Document = dict[str, Any]


def table_name(protocol: int) -> str:
    """The masquerade table of the instance with this route protocol."""
    return f"{TABLE_PREFIX}{protocol}"


def set_family(name: str) -> int:
    """The address family of one of ``SET_NAMES``."""
    return int(name[-1])


def collapse(networks: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """The canonical form of a set of networks: per family (IPv4 first) the fewest
    networks covering exactly the same addresses, sorted.

    The same result as ``ipaddress.collapse_addresses`` per family (a property test
    compares them), five to ten times faster (10,000 CIDRs: 5-6 ms against 30-50 ms,
    measured by ``bench/masquerade_sets.py``; it runs at every node change): one sort
    and one sweep over integers, and a network that merges with nothing is kept as the
    very object given (``diff_sets`` then compares identities first)."""
    v4: list[IPNetwork] = []
    v6: list[IPNetwork] = []
    for n in networks:
        (v4 if n.version == 4 else v6).append(n)
    return (*_collapse_family(v4, 32), *_collapse_family(v6, 128))


def _collapse_family(networks: list[IPNetwork], bits: int) -> list[IPNetwork]:
    if not networks:
        return []
    make = ipaddress.IPv4Network if bits == 32 else ipaddress.IPv6Network
    out: list[IPNetwork] = []
    start = end = -1  # the merged run of addresses [start, end) being built
    first: IPNetwork | None = None  # the run's first network
    pieces = 0  # networks that extended the run (contained ones do not count)

    def emit() -> None:
        if pieces == 1:
            assert first is not None
            out.append(first)
            return
        s = start
        while s < end:
            align = (s & -s).bit_length() - 1 if s else bits
            k = min(align, (end - s).bit_length() - 1)
            out.append(make((s, bits - k)))
            s += 1 << k

    for n in sorted(networks, key=lambda n: (int(n.network_address), n.prefixlen)):
        s = int(n.network_address)
        e = s + (1 << (bits - n.prefixlen))
        if s <= end:  # overlaps the run or adjoins it
            if e > end:
                end = e
                pieces += 1
        else:
            if pieces:
                emit()
            start, end, first, pieces = s, e, n, 1
    emit()
    return out


@attrs.frozen
class MasqueradeSets:
    """The elements of the four sets, each canonical (``collapse``) and of its family."""

    local4: tuple[IPNetwork, ...] = ()
    local6: tuple[IPNetwork, ...] = ()
    cluster4: tuple[IPNetwork, ...] = ()
    cluster6: tuple[IPNetwork, ...] = ()

    def get(self, name: str) -> tuple[IPNetwork, ...]:
        """The elements of the set ``name`` (one of ``SET_NAMES``)."""
        if name not in SET_NAMES:
            raise KeyError(name)
        elements: tuple[IPNetwork, ...] = getattr(self, name)
        return elements

    def items(self) -> Iterator[tuple[str, tuple[IPNetwork, ...]]]:
        for name in SET_NAMES:
            yield name, self.get(name)

    def count(self) -> int:
        """Elements in all four sets."""
        return sum(len(e) for _, e in self.items())

    @classmethod
    def of(
        cls, *, local: Iterable[IPNetwork] = (), cluster: Iterable[IPNetwork] = ()
    ) -> MasqueradeSets:
        """The canonical sets of these local and cluster networks (any families, any
        overlaps)."""
        lo, cl = collapse(local), collapse(cluster)
        return cls(
            local4=tuple(n for n in lo if n.version == 4),
            local6=tuple(n for n in lo if n.version == 6),
            cluster4=tuple(n for n in cl if n.version == 4),
            cluster6=tuple(n for n in cl if n.version == 6),
        )


def desired_sets(
    networks: Iterable[NodeNetwork],
    *,
    own: str | None,
    non_masquerade: Iterable[IPNetwork] = (),
) -> MasqueradeSets:
    """The sets for the node named ``own`` (``None``: unknown, nothing is masqueraded):
    ``local`` its pod CIDRs, ``cluster`` every node's pod CIDRs and ``non_masquerade``."""
    local: list[IPNetwork] = []
    cluster: list[IPNetwork] = list(non_masquerade)
    for n in networks:
        cluster.extend(n.cidrs)
        if own is not None and n.name == own:
            local.extend(n.cidrs)
    return MasqueradeSets.of(local=local, cluster=cluster)


def covering(present: MasqueradeSets, desired: MasqueradeSets) -> MasqueradeSets:
    """Sets that keep every address of ``present`` and add those of ``desired``: the
    target while removals are held back (the node view is not complete or not healthy).
    Nothing leaves a set, so no pod-to-pod traffic starts being masqueraded and no pod
    loses its masquerade on a stale view."""
    return MasqueradeSets(
        **{
            name: collapse((*present.get(name), *desired.get(name)))
            for name in SET_NAMES  # keyword names are the attribute names
        }
    )


@attrs.frozen
class SetsDiff:
    """Element changes per set: ``delete`` what is no longer wanted, ``add`` what is
    missing (only sets with changes appear)."""

    add: Mapping[str, tuple[IPNetwork, ...]] = attrs.field(factory=dict)
    delete: Mapping[str, tuple[IPNetwork, ...]] = attrs.field(factory=dict)

    def __bool__(self) -> bool:
        return bool(self.add or self.delete)

    @property
    def added(self) -> int:
        return sum(len(e) for e in self.add.values())

    @property
    def deleted(self) -> int:
        return sum(len(e) for e in self.delete.values())


def diff_sets(present: MasqueradeSets, desired: MasqueradeSets) -> SetsDiff:
    """What changes ``present`` into ``desired``, element by element. Both canonical: the
    deleted and the added elements of a set may overlap (a /24 becomes part of a /23),
    so an update must delete before it adds, in one transaction (``update_document``)."""
    add: dict[str, tuple[IPNetwork, ...]] = {}
    delete: dict[str, tuple[IPNetwork, ...]] = {}
    for name in SET_NAMES:
        old, new = present.get(name), desired.get(name)
        if old is new:
            continue
        # Most elements are the very same objects in both (``collapse`` keeps a network
        # that merges with nothing): compare identities first (cheap), values after.
        old_ids, new_ids = {id(n) for n in old}, {id(n) for n in new}
        old_rest = [n for n in old if id(n) not in new_ids]
        new_rest = [n for n in new if id(n) not in old_ids]
        old_set, new_set = set(old_rest), set(new_rest)
        gone = tuple(n for n in old_rest if n not in new_set)
        fresh = tuple(n for n in new_rest if n not in old_set)
        if gone:
            delete[name] = gone
        if fresh:
            add[name] = fresh
    return SetsDiff(add=add, delete=delete)


# -- nft JSON ----------------------------------------------------------------------------


def element(network: IPNetwork) -> dict[str, Any]:
    """One set element: a prefix."""
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


def rule_expressions(family: int) -> list[dict[str, Any]]:
    """``ip saddr @local4 ip daddr != @cluster4 masquerade`` (``ip6`` for family 6), as
    nft lists it back."""
    payload = _PAYLOAD[family]
    return [
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": payload, "field": "saddr"}},
                "right": f"@local{family}",
            }
        },
        {
            "match": {
                "op": "!=",
                "left": {"payload": {"protocol": payload, "field": "daddr"}},
                "right": f"@cluster{family}",
            }
        },
        {"masquerade": None},
    ]


def _table(name: str, **extra: Any) -> dict[str, Any]:
    return {"table": {"family": FAMILY, "name": name, **extra}}


def _chain(table: str) -> dict[str, Any]:
    return {
        "family": FAMILY,
        "table": table,
        "name": CHAIN,
        "type": "nat",
        "hook": "postrouting",
        "prio": NAT_PRIORITY,
        "policy": "accept",
    }


def _elements(table: str, name: str, networks: Sequence[IPNetwork]) -> dict[str, Any]:
    return {
        "element": {
            "family": FAMILY,
            "table": table,
            "name": name,
            "elem": [element(n) for n in networks],
        }
    }


def document(commands: Iterable[Command]) -> Document:
    """An nft JSON document of these commands (one transaction when given to ``nft -f``)."""
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]}


def table_document(table: str, sets: MasqueradeSets) -> Document:
    """Create the whole table with these set contents, replacing any table of that name,
    atomically (``add`` makes sure it exists, so that ``delete`` cannot fail)."""
    commands: list[Command] = [
        {"add": _table(table)},
        {"delete": _table(table)},
        # Table and set comments: kept by nft versions that read them from JSON (Debian
        # 12's 1.0.6 ignores both; the rules carry the same comment).
        {"add": _table(table, comment=f"{OWNER}: egress masquerade")},
        {"add": {"chain": _chain(table)}},
    ]
    for name, networks in sets.items():
        spec: dict[str, Any] = {
            "family": FAMILY,
            "table": table,
            "name": name,
            "type": _SET_TYPES[set_family(name)],
            "flags": ["interval"],
            "comment": OWNER,
        }
        if networks:
            spec["elem"] = [element(n) for n in networks]
        commands.append({"add": {"set": spec}})
    for family in (4, 6):
        rule = {
            "family": FAMILY,
            "table": table,
            "chain": CHAIN,
            "comment": OWNER,
            "expr": rule_expressions(family),
        }
        commands.append({"add": {"rule": rule}})
    return document(commands)


def update_document(table: str, diff: SetsDiff) -> Document:
    """Change only elements: every delete first, then every add, in one transaction."""
    commands: list[Command] = [
        {"delete": _elements(table, name, nets)} for name, nets in diff.delete.items() if nets
    ]
    commands += [{"add": _elements(table, name, nets)} for name, nets in diff.add.items() if nets]
    return document(commands)


def fill_document(table: str, sets: Mapping[str, Sequence[IPNetwork]]) -> Document:
    """Empty these sets and fill them anew, in one transaction (a repair when a set holds
    elements that are not CIDRs, so they cannot be deleted one by one as read)."""
    commands: list[Command] = []
    for name, networks in sets.items():
        commands.append({"flush": {"set": {"family": FAMILY, "table": table, "name": name}}})
        if networks:
            commands.append({"add": _elements(table, name, networks)})
    return document(commands)


def delete_document(table: str) -> Document:
    """Delete the table, whether it exists or not (masquerade switched off)."""
    return document([{"add": _table(table)}, {"delete": _table(table)}])


# -- reading the table back --------------------------------------------------------------


@attrs.frozen
class TableState:
    """The table as ``nft -j list table`` shows it: its set contents and what differs in
    its structure from ours (``mismatches``, empty when the table is ours as created)."""

    sets: MasqueradeSets
    mismatches: tuple[str, ...] = ()
    #: sets holding elements that are not CIDRs (address ranges): repaired by a refill
    irregular: frozenset[str] = frozenset()

    @property
    def intact(self) -> bool:
        return not self.mismatches


_NETWORKS: Final[dict[int, Callable[[Any], IPNetwork]]] = {
    4: ipaddress.IPv4Network,
    6: ipaddress.IPv6Network,
}


def parse_element(item: Any, family: int) -> tuple[list[IPNetwork], bool]:
    """One listed element as networks, and whether it was exactly one CIDR (``False``:
    an address range, listed as several networks). ``ValueError`` when unreadable (also
    an address of the other family)."""
    make = _NETWORKS[family]
    if isinstance(item, dict) and "elem" in item:  # an element with options (comment, ...)
        item = item["elem"].get("val") if isinstance(item["elem"], dict) else None
    if isinstance(item, str):  # one address
        return [make(item)], True
    if isinstance(item, dict) and isinstance(item.get("prefix"), dict):
        prefix = item["prefix"]
        return [make((str(prefix["addr"]), int(prefix["len"])))], True
    if isinstance(item, dict) and isinstance(item.get("range"), list) and len(item["range"]) == 2:
        first = make(str(item["range"][0])).network_address
        last = make(str(item["range"][1])).network_address
        nets: list[IPNetwork] = list(ipaddress.summarize_address_range(first, last))
        return nets, len(nets) == 1
    raise ValueError(f"unknown set element {item!r}")


def _strip(spec: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in keys}


def parse_table(objects: Iterable[Mapping[str, Any]], table: str) -> TableState:
    """The state of ``table`` from the objects of ``nft -j list table inet <table>``."""
    mismatches: list[str] = []
    found: dict[str, list[IPNetwork]] = {}
    irregular: set[str] = set()
    chains: list[dict[str, Any]] = []
    rules: list[list[Any]] = []
    for obj in objects:
        if "metainfo" in obj or "table" in obj:
            continue
        if "chain" in obj:
            chains.append(_strip(obj["chain"], "handle", "comment"))
        elif "rule" in obj:
            rule = obj["rule"]
            if rule.get("chain") != CHAIN:
                mismatches.append(f"rule in chain {rule.get('chain')!r}")
            rules.append(rule.get("expr", []))
        elif "set" in obj:
            spec = obj["set"]
            name = spec.get("name")
            if name not in SET_NAMES:
                mismatches.append(f"unknown set {name!r}")
                continue
            family = set_family(name)
            if spec.get("type") != _SET_TYPES[family] or "interval" not in spec.get("flags", []):
                mismatches.append(f"set {name} is not an interval set of {_SET_TYPES[family]}")
                continue
            networks: list[IPNetwork] = []
            try:
                for item in spec.get("elem", []):
                    nets, regular = parse_element(item, family)
                    networks.extend(nets)
                    if not regular:
                        irregular.add(name)
            except (ValueError, KeyError, TypeError) as e:
                mismatches.append(f"set {name}: {e}")
                continue
            found[name] = networks
        else:
            mismatches.append(f"unexpected object {next(iter(obj), '?')}")
    for name in SET_NAMES:
        if name not in found and not any(m.startswith(f"set {name}") for m in mismatches):
            mismatches.append(f"set {name} missing")
    if chains != [_chain(table)]:
        mismatches.append("chain postrouting missing" if not chains else "chains differ from ours")
    if sorted(rules, key=repr) != sorted((rule_expressions(f) for f in (4, 6)), key=repr):
        mismatches.append("rules differ from ours")
    sets = MasqueradeSets(
        **{name: tuple(sorted(found.get(name, ()), key=_sort_key)) for name in SET_NAMES}
    )
    return TableState(sets=sets, mismatches=tuple(mismatches), irregular=frozenset(irregular))


def _sort_key(n: IPNetwork) -> tuple[int, int, int]:
    return (n.version, int(n.network_address), n.prefixlen)
