"""The double's state: Node objects (kept serialized), resource versions, the retained
event history and the snapshots behind continue tokens. Everything here runs under
``Store.cond``; callers hold it."""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
import uuid
from bisect import bisect_right
from collections import OrderedDict
from typing import Any

JSON_SEPARATORS = (",", ":")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=JSON_SEPARATORS).encode()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Conflict(Exception):
    """A create of an existing name, or an update with a stale resourceVersion."""


class Event:
    """One watch event. ``data`` is the object's JSON (shared with the store)."""

    __slots__ = ("data", "kind", "labels", "name", "rv")

    def __init__(self, rv: int, kind: str, name: str, labels: dict[str, str], data: bytes):
        self.rv = rv
        self.kind = kind
        self.name = name
        self.labels = labels
        self.data = data

    def line(self) -> bytes:
        return b'{"type":"%s","object":%s}\n' % (self.kind.encode(), self.data)


class Store:
    def __init__(self, *, history_size: int, snapshots: int = 16) -> None:
        self.cond = threading.Condition()
        self.rv = 1000
        self.floor = self.rv  # a watch can resume from any RV >= floor
        self.nodes: dict[str, bytes] = {}
        self.labels: dict[str, dict[str, str]] = {}
        self.meta: dict[str, tuple[str, str]] = {}  # name -> (uid, creationTimestamp)
        self.versions: dict[str, str] = {}  # name -> resourceVersion
        self.history: list[Event] = []
        self.history_rvs: list[int] = []
        self.history_size = history_size
        self.max_snapshots = snapshots
        self.snapshots: OrderedDict[str, tuple[int, list[str], dict[str, bytes]]] = OrderedDict()

    # -- writes -------------------------------------------------------------------------

    def _stamp(
        self, obj: dict[str, Any], *, keep: tuple[str, str] | None = None
    ) -> tuple[str, bytes]:
        self.rv += 1
        obj = dict(obj)
        obj.setdefault("kind", "Node")
        obj.setdefault("apiVersion", "v1")
        metadata = dict(obj.get("metadata") or {})
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("a Node needs metadata.name")
        metadata["resourceVersion"] = str(self.rv)
        if keep is not None:
            metadata["uid"], metadata["creationTimestamp"] = keep
        else:
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault("creationTimestamp", now_iso())
        self.meta[name] = (metadata["uid"], metadata["creationTimestamp"])
        self.versions[name] = metadata["resourceVersion"]
        obj["metadata"] = metadata
        labels = metadata.get("labels")
        self.labels[name] = dict(labels) if isinstance(labels, dict) else {}
        return name, dumps(obj)

    def _record(self, kind: str, name: str, data: bytes) -> None:
        self.history.append(Event(self.rv, kind, name, self.labels.get(name, {}), data))
        self.history_rvs.append(self.rv)
        if len(self.history) > self.history_size * 2:
            drop = len(self.history) - self.history_size
            self.floor = self.history_rvs[drop - 1]
            del self.history[:drop]
            del self.history_rvs[:drop]
        self.cond.notify_all()

    def create(self, obj: dict[str, Any]) -> bytes:
        name = (obj.get("metadata") or {}).get("name")
        if name in self.nodes:
            raise Conflict(f'nodes "{name}" already exists')
        md = dict(obj.get("metadata") or {})
        md.pop("resourceVersion", None)
        md.pop("uid", None)
        name, data = self._stamp({**obj, "metadata": md})
        self.nodes[name] = data
        self._record("ADDED", name, data)
        return data

    def update(self, obj: dict[str, Any], *, check_rv: bool = False) -> bytes:
        md = obj.get("metadata") or {}
        name = md.get("name")
        if not isinstance(name, str) or name not in self.nodes:
            raise KeyError(name)
        if check_rv and md.get("resourceVersion") not in (None, "", self.versions[name]):
            raise Conflict(
                f'Operation cannot be fulfilled on nodes "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again"
            )
        name, data = self._stamp(obj, keep=self.meta[name])
        self.nodes[name] = data
        self._record("MODIFIED", name, data)
        return data

    def delete(self, name: str) -> bytes:
        old = self.nodes.pop(name)
        obj = json.loads(old)
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        data = dumps(obj)
        self._record("DELETED", name, data)
        self.labels.pop(name, None)
        self.meta.pop(name, None)
        self.versions.pop(name, None)
        return data

    def expire(self) -> None:
        self.floor = self.rv
        self.history.clear()
        self.history_rvs.clear()
        self.snapshots.clear()

    # -- reads --------------------------------------------------------------------------

    def events_after(self, rv: int) -> list[Event] | None:
        """Events newer than ``rv``; None when some of them are no longer retained."""
        if rv >= self.rv:
            return []
        if rv < self.floor:
            return None
        return self.history[bisect_right(self.history_rvs, rv) :]

    def snapshot(self) -> str:
        key = uuid.uuid4().hex
        self.snapshots[key] = (self.rv, sorted(self.nodes), dict(self.nodes))
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
