"""The three patch flavours the API server accepts, applied to plain dicts.

Merge patch is RFC 7386. Strategic merge is the subset Node objects need: maps merge
recursively, ``null`` deletes, ``$patch: replace|delete`` on maps, and the lists that
Kubernetes merges by key (``conditions`` and ``addresses`` by ``type``, ``taints`` by
``key``) are merged element-wise; other lists are replaced. JSON patch is RFC 6902 without
``move``/``copy`` (``add``, ``replace``, ``remove``, ``test``).
"""

from __future__ import annotations

import copy
from typing import Any

MERGE_KEYS = {"conditions": "type", "addresses": "type", "taints": "key"}


class PatchError(ValueError):
    """A patch that cannot be applied (the server answers 422/400)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns the new value (``target`` is not modified)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, key: str | None = None) -> Any:
    """A strategic merge patch restricted to what Node objects use (see module doc)."""
    if isinstance(patch, dict):
        directive = patch.get("$patch")
        if directive == "delete":
            return None
        body = {k: v for k, v in patch.items() if k != "$patch"}
        if directive == "replace":
            return copy.deepcopy(body)
        result = dict(target) if isinstance(target, dict) else {}
        for k, value in body.items():
            if k.startswith("$"):
                continue
            if value is None:
                result.pop(k, None)
                continue
            merged = strategic_merge_patch(result.get(k), value, k)
            if merged is None:
                result.pop(k, None)
            else:
                result[k] = merged
        return result
    if isinstance(patch, list) and key in MERGE_KEYS and isinstance(target, list):
        merge_key = MERGE_KEYS[key]
        result_list = [dict(item) if isinstance(item, dict) else item for item in target]
        for item in patch:
            if not isinstance(item, dict) or merge_key not in item:
                raise PatchError(f"list {key} item lacks merge key {merge_key}")
            index = next(
                (
                    i
                    for i, old in enumerate(result_list)
                    if isinstance(old, dict) and old.get(merge_key) == item[merge_key]
                ),
                None,
            )
            if item.get("$patch") == "delete":
                if index is not None:
                    del result_list[index]
            elif index is None:
                result_list.append(copy.deepcopy(item))
            else:
                result_list[index] = strategic_merge_patch(result_list[index], item)
        return result_list
    return copy.deepcopy(patch)


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _walk(doc: Any, path: str) -> tuple[Any, str]:
    if not path.startswith("/"):
        raise PatchError(f"bad JSON pointer {path!r}")
    parts = [_unescape(p) for p in path[1:].split("/")]
    parent = doc
    for part in parts[:-1]:
        try:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise PatchError(f"path {path!r} not found") from exc
    return parent, parts[-1]


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 ``add``/``replace``/``remove``/``test``; returns a new document."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"bad JSON patch operation {op!r}")
        parent, last = _walk(doc, op["path"])
        kind = op["op"]
        try:
            if kind in ("add", "replace"):
                value = copy.deepcopy(op.get("value"))
                if isinstance(parent, list):
                    if last == "-":
                        parent.append(value)
                    elif kind == "add":
                        parent.insert(int(last), value)
                    else:
                        parent[int(last)] = value
                else:
                    if kind == "replace" and last not in parent:
                        raise PatchError(f"path {op['path']!r} not found")
                    parent[last] = value
            elif kind == "remove":
                if isinstance(parent, list):
                    del parent[int(last)]
                else:
                    del parent[last]
            elif kind == "test":
                current = parent[int(last)] if isinstance(parent, list) else parent[last]
                if current != op.get("value"):
                    raise PatchError(f"test failed at {op['path']!r}")
            else:
                raise PatchError(f"unsupported JSON patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            if isinstance(exc, PatchError):
                raise
            raise PatchError(f"cannot {kind} at {op['path']!r}") from exc
    return doc
