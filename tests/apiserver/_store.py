"""The double's state, as etcd and the API server's watch cache hold it: one collection per
kind (objects kept serialized, with their labels and selectable fields), one
resourceVersion sequence across all kinds, a retained event history per kind, and the
snapshots behind continue tokens. Everything here runs under ``Store.cond``; callers hold
it."""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
import uuid
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from ._kinds import KINDS, Fields, Kind, object_key
from ._select import Selector

JSON_SEPARATORS = (",", ":")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=JSON_SEPARATORS).encode()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Conflict(Exception):
    """A create of an existing name, or an update with a stale resourceVersion."""


class Attrs:
    """What selectors look at: an object's labels and selectable fields."""

    __slots__ = ("fields", "labels")

    def __init__(self, labels: dict[str, str], fields: Fields) -> None:
        self.labels = labels
        self.fields = fields


class Event:
    """One change. ``data`` is the object's JSON (shared with the store); ``prev`` and
    ``prev_data`` the state before a MODIFIED or DELETED, so that a watch with a selector
    sees an object enter (ADDED) or leave (DELETED) its selection, as a real server's
    watch cache sends. ``prev_data`` is kept only when labels or fields changed."""

    __slots__ = ("attrs", "data", "key", "prev", "prev_data", "rv", "type")

    def __init__(
        self,
        rv: int,
        type: str,
        key: str,
        attrs: Attrs,
        data: bytes,
        prev: Attrs | None = None,
        prev_data: bytes | None = None,
    ) -> None:
        self.rv = rv
        self.type = type
        self.key = key
        self.attrs = attrs
        self.data = data
        self.prev = prev
        self.prev_data = prev_data

    def line(self, selector: Selector) -> bytes | None:
        """This event as a watcher with ``selector`` sees it (None: not at all)."""
        if selector.everything:
            return _line(self.type, self.data)
        now = self.type != "DELETED" and selector.matches(self.attrs.labels, self.attrs.fields)
        before = self.prev is not None and selector.matches(self.prev.labels, self.prev.fields)
        if now:
            return _line("MODIFIED" if before else "ADDED", self.data)
        if not before:
            return None
        if self.type == "DELETED" or self.prev_data is None:
            return _line("DELETED", self.data)
        # left the selection: the last state it matched in, at this event's version
        obj = json.loads(self.prev_data)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return _line("DELETED", dumps(obj))


def _line(type: str, data: bytes) -> bytes:
    return b'{"type":"%s","object":%s}\n' % (type.encode(), data)


class Collection:
    """The objects of one kind, and that kind's retained history."""

    def __init__(self, kind: Kind, *, floor: int) -> None:
        self.kind = kind
        self.objects: dict[str, bytes] = {}  # key -> JSON
        self.attrs: dict[str, Attrs] = {}
        self.meta: dict[str, tuple[str, str]] = {}  # key -> (uid, creationTimestamp)
        self.versions: dict[str, str] = {}  # key -> resourceVersion
        self.history: list[Event] = []
        self.history_rvs: list[int] = []
        self.floor = floor  # a watch can resume from any RV >= floor

    def key_range(self, keys: list[str], namespace: str | None) -> tuple[int, int]:
        """The slice of sorted ``keys`` in ``namespace`` (all of them for None)."""
        if namespace is None or not self.kind.namespaced:
            return 0, len(keys)
        # "0" sorts right after "/": [ns/, ns0) holds exactly the keys "ns/<name>"
        return bisect_left(keys, f"{namespace}/"), bisect_left(keys, f"{namespace}0")


class Snapshot:
    """A collection as it was when a paged LIST began."""

    __slots__ = ("attrs", "data", "keys", "resource", "rv")

    def __init__(self, coll: Collection, rv: int, keys: list[str]) -> None:
        self.resource = coll.kind.resource
        self.rv = rv
        self.keys = keys
        self.data = dict(coll.objects)
        self.attrs = dict(coll.attrs)


class Store:
    def __init__(self, *, history_size: int, snapshots: int = 16) -> None:
        self.cond = threading.Condition()
        self.rv = 1000
        self.collections = {name: Collection(kind, floor=self.rv) for name, kind in KINDS.items()}
        self.history_size = history_size
        self.max_snapshots = snapshots
        self.snapshots: OrderedDict[str, Snapshot] = OrderedDict()

    def __getitem__(self, resource: str) -> Collection:
        return self.collections[resource]

    # -- writes -------------------------------------------------------------------------

    def _stamp(
        self, coll: Collection, obj: dict[str, Any], *, keep: tuple[str, str] | None = None
    ) -> tuple[str, bytes]:
        kind = coll.kind
        obj = dict(obj)
        obj.setdefault("kind", kind.kind)
        obj.setdefault("apiVersion", kind.api_version)
        metadata = dict(obj.get("metadata") or {})
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {kind.kind} needs metadata.name")
        namespace = metadata.get("namespace")
        if kind.namespaced:
            if not isinstance(namespace, str) or not namespace:
                raise ValueError(f"a {kind.kind} needs metadata.namespace")
        else:
            metadata.pop("namespace", None)
        obj["metadata"] = metadata
        kind.default(obj)
        metadata = obj["metadata"]
        self.rv += 1
        metadata["resourceVersion"] = str(self.rv)
        if keep is not None:
            metadata["uid"], metadata["creationTimestamp"] = keep
        else:
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault("creationTimestamp", now_iso())
        key = object_key(kind, name, namespace)
        coll.meta[key] = (metadata["uid"], metadata["creationTimestamp"])
        coll.versions[key] = metadata["resourceVersion"]
        labels = metadata.get("labels")
        labels = dict(labels) if isinstance(labels, dict) else {}
        coll.attrs[key] = Attrs(labels, kind.selectable(obj))
        return key, dumps(obj)

    def _record(self, coll: Collection, event: Event) -> None:
        coll.history.append(event)
        coll.history_rvs.append(event.rv)
        if len(coll.history) > self.history_size * 2:
            drop = len(coll.history) - self.history_size
            coll.floor = coll.history_rvs[drop - 1]
            del coll.history[:drop]
            del coll.history_rvs[:drop]
        self.cond.notify_all()

    def create(self, resource: str, obj: dict[str, Any]) -> bytes:
        coll = self.collections[resource]
        md = dict(obj.get("metadata") or {})
        key = object_key(coll.kind, str(md.get("name")), md.get("namespace"))
        if key in coll.objects:
            raise Conflict(f'{resource} "{md.get("name")}" already exists')
        md.pop("resourceVersion", None)
        md.pop("uid", None)
        key, data = self._stamp(coll, {**obj, "metadata": md})
        coll.objects[key] = data
        self._record(coll, Event(self.rv, "ADDED", key, coll.attrs[key], data))
        return data

    def update(self, resource: str, obj: dict[str, Any], *, check_rv: bool = False) -> bytes:
        coll = self.collections[resource]
        md = obj.get("metadata") or {}
        name = md.get("name")
        key = object_key(coll.kind, str(name), md.get("namespace"))
        if not isinstance(name, str) or key not in coll.objects:
            raise KeyError(key)
        if check_rv and md.get("resourceVersion") not in (None, "", coll.versions[key]):
            raise Conflict(
                f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again"
            )
        prev = coll.attrs[key]
        prev_data: bytes | None = coll.objects[key]
        key, data = self._stamp(coll, obj, keep=coll.meta[key])
        coll.objects[key] = data
        attrs = coll.attrs[key]
        if attrs.labels == prev.labels and attrs.fields == prev.fields:
            # no selector can see it leave: do not keep the old JSON alive in the history
            # (a heartbeat of 5,000 nodes would double the history's memory)
            prev_data = None
        self._record(coll, Event(self.rv, "MODIFIED", key, attrs, data, prev, prev_data))
        return data

    def delete(self, resource: str, key: str) -> bytes:
        """Delete one object (``KeyError`` when absent). A namespace takes its namespaced
        objects with it (each gets its DELETED event first)."""
        coll = self.collections[resource]
        if key not in coll.objects:
            raise KeyError(key)
        if resource == "namespaces":
            for other in self.collections.values():
                if other.kind.namespaced:
                    for inner in [k for k in other.objects if k.startswith(f"{key}/")]:
                        self.delete(other.kind.resource, inner)
        old = coll.objects.pop(key)
        obj = json.loads(old)
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        data = dumps(obj)
        attrs = coll.attrs.pop(key)
        self._record(coll, Event(self.rv, "DELETED", key, attrs, data, attrs, None))
        coll.meta.pop(key, None)
        coll.versions.pop(key, None)
        return data

    def expire(self, resources: Iterable[str] | None = None) -> None:
        names = set(self.collections if resources is None else resources)
        for name in names:
            coll = self.collections[name]
            coll.floor = self.rv
            coll.history.clear()
            coll.history_rvs.clear()
        for key in [k for k, s in self.snapshots.items() if s.resource in names]:
            del self.snapshots[key]

    # -- reads --------------------------------------------------------------------------

    def events_after(self, resource: str, rv: int) -> list[Event] | None:
        """Events of ``resource`` newer than ``rv``; None when some are no longer kept."""
        coll = self.collections[resource]
        if rv >= self.rv:
            return []
        if rv < coll.floor:
            return None
        return coll.history[bisect_right(coll.history_rvs, rv) :]

    def snapshot(self, resource: str, keys: list[str]) -> str:
        """Keep the current state of ``resource`` (``keys``: its sorted keys) for the
        later pages of a paged LIST; returns the snapshot's id."""
        coll = self.collections[resource]
        key = uuid.uuid4().hex
        snap = Snapshot(coll, self.rv, keys)
        self.snapshots[key] = snap
        while len(self.snapshots) > self.max_snapshots:
            self.snapshots.popitem(last=False)
        return key


def encode_continue(snapshot: str, rv: int, start: int) -> str:
    raw = json.dumps({"s": snapshot, "rv": rv, "i": start}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_continue(token: str) -> tuple[str, int, int]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(raw["s"]), int(raw["rv"]), int(raw["i"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"invalid continue token {token!r}") from exc
