"""An in-memory nftables for the masquerade reconciler's unit tests: applies the JSON
documents of ``core.masquerade`` as one transaction each (all or nothing, with nft's
errors for a missing element and overlapping intervals) and lists a table as
``nft -j list table`` does."""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Mapping
from typing import Any

from xcluster_cni_lib.core import masquerade as m
from xcluster_cni_lib.core.values import IPNetwork


class FakeNftError(RuntimeError):
    pass


class _Table:
    def __init__(self) -> None:
        self.chains: list[dict[str, Any]] = []
        self.sets: dict[str, dict[str, Any]] = {}  # name -> spec without elem
        self.elements: dict[str, list[IPNetwork]] = {}
        self.rules: list[dict[str, Any]] = []


def _overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


class FakeNft:
    """Implements ``sync.masquerade.NftPort``. ``fail_next``: the next ``apply`` raises it."""

    def __init__(self) -> None:
        self.tables: dict[str, _Table] = {}
        self.applied: list[dict[str, Any]] = []
        self.reads = 0
        self.fail_next: Exception | None = None

    # -- NftPort -------------------------------------------------------------------------

    def apply(self, document: Mapping[str, Any]) -> None:
        if self.fail_next is not None:
            e, self.fail_next = self.fail_next, None
            raise e
        work = copy.deepcopy(self.tables)
        for command in document["nftables"]:
            verb, body = next(iter(command.items()))
            if verb != "metainfo":
                self._do(work, verb, *next(iter(body.items())))
        self.tables = work
        self.applied.append(dict(document))

    def read_table(self, name: str) -> list[dict[str, Any]] | None:
        self.reads += 1
        t = self.tables.get(name)
        if t is None:
            return None
        out: list[dict[str, Any]] = [{"table": {"family": "inet", "name": name, "handle": 1}}]
        for set_name, spec in t.sets.items():
            listed = dict(spec)
            elements = sorted(t.elements[set_name], key=lambda n: int(n.network_address))
            if elements:
                listed["elem"] = [m.element(n) for n in elements]
            out.append({"set": listed})
        out += [{"chain": c} for c in t.chains]
        out += [{"rule": r} for r in t.rules]
        return out

    # -- tampering -----------------------------------------------------------------------

    def tamper(self, table: str, how: str) -> None:
        t = self.tables.get(table)
        if t is None:
            return
        if how == "delete table":
            del self.tables[table]
        elif how == "flush cluster4":
            t.elements["cluster4"] = []
        elif how == "flush local6":
            t.elements["local6"] = []
        elif how == "delete rules":
            t.rules = []
        elif how == "junk element":
            junk = ipaddress.ip_network("203.0.113.0/24")
            if not any(_overlaps(junk, n) for n in t.elements["cluster4"]):
                t.elements["cluster4"].append(junk)
        else:
            raise ValueError(how)

    def sets(self, table: str) -> m.MasqueradeSets | None:
        t = self.tables.get(table)
        if t is None:
            return None
        return m.parse_table(self.read_table(table) or [], table).sets

    # -- the commands --------------------------------------------------------------------

    def _do(self, work: dict[str, _Table], verb: str, kind: str, spec: dict[str, Any]) -> None:
        name = spec["name"] if kind == "table" else spec["table"]
        if kind == "table":
            if verb == "add":
                work.setdefault(name, _Table())
            elif verb == "delete":
                if name not in work:
                    raise FakeNftError(f"No such file or directory: table {name}")
                del work[name]
            return
        t = work.get(name)
        if t is None:
            raise FakeNftError(f"No such file or directory: table {name}")
        if kind == "chain" and verb == "add":
            t.chains.append({k: v for k, v in spec.items() if k != "comment"})
        elif kind == "rule" and verb == "add":
            t.rules.append(dict(spec))
        elif kind == "set" and verb == "add":
            t.sets[spec["name"]] = {k: v for k, v in spec.items() if k != "elem"}
            t.elements[spec["name"]] = []
            self._elements(t, "add", spec["name"], spec.get("elem", []))
        elif kind == "set" and verb == "flush":
            if spec["name"] not in t.sets:
                raise FakeNftError(f"No such file or directory: set {spec['name']}")
            t.elements[spec["name"]] = []
        elif kind == "element" and verb in ("add", "delete"):
            if spec["name"] not in t.sets:
                raise FakeNftError(f"No such file or directory: set {spec['name']}")
            self._elements(t, verb, spec["name"], spec["elem"])
        else:
            raise FakeNftError(f"unsupported: {verb} {kind}")

    @staticmethod
    def _elements(t: _Table, verb: str, set_name: str, items: list[Any]) -> None:
        family = m.set_family(set_name)
        present = t.elements[set_name]
        for item in items:
            (net,), _ = m.parse_element(item, family)
            if verb == "add":
                if any(_overlaps(net, n) for n in present):
                    raise FakeNftError("interval overlaps with an existing one")
                present.append(net)
            else:
                if net not in present:
                    raise FakeNftError("element does not exist")
                present.remove(net)
