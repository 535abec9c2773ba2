"""Read a file of Node objects: what ``kubectl get nodes -o json`` (or ``-o yaml``) prints.

A ``NodeList``/``List`` (``{"kind": "NodeList", "items": [...]}``), a plain list of Node
objects, or a single Node. JSON is tried first (the fast path, standard library only);
YAML (PyYAML, imported only then) when the text is not JSON. Used by the file node source
(``sources.nodesfile``), the ``plan`` command and the IPAM plugins' ``nodesFile``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from xcluster_cni_lib.core.errors import InputError


def _decode(path: str, text: str) -> object:
    """JSON first (the fast path); YAML when the text is not JSON."""
    try:
        return json.loads(text)
    except ValueError as json_error:
        looks_like_json = text.lstrip()[:1] in ("{", "[")
        import yaml  # lazily: only YAML files pay for it

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as yaml_error:
            if looks_like_json:
                raise InputError(f"nodes file {path}: invalid JSON: {json_error}") from None
            detail = " ".join(str(yaml_error).split())
            raise InputError(f"nodes file {path}: neither JSON nor YAML: {detail}") from None


def _items(path: str, doc: object) -> list[object]:
    if doc is None:
        raise InputError(f"nodes file {path}: empty, expected a NodeList, a list or a Node")
    if isinstance(doc, list):
        return doc
    if not isinstance(doc, Mapping):
        raise InputError(
            f"nodes file {path}: expected a NodeList, a list or a Node, got a {type(doc).__name__}"
        )
    if "items" in doc:
        items = doc["items"]
        if items is None:  # `kubectl get nodes -o yaml` on an empty cluster: "items: []"
            return []
        if not isinstance(items, list):
            raise InputError(f"nodes file {path}: 'items' is a {type(items).__name__}, not a list")
        return items
    kind = doc.get("kind")
    if kind in (None, "Node") and isinstance(doc.get("metadata"), Mapping):
        return [doc]
    if kind is not None and kind != "Node":
        raise InputError(f"nodes file {path}: kind {kind!r} has no 'items' and is not a Node")
    raise InputError(f"nodes file {path}: a mapping without 'items' or 'metadata' is not a Node")


def load_node_list(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The Node objects in a JSON or YAML nodes file, as dicts.

    Raises ``InputError`` naming the file and what is wrong: unreadable, not JSON/YAML,
    not a node list, or an item that is not a Node object.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise InputError(f"nodes file {name}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"nodes file {name}: not UTF-8 text: {e.reason}") from None
    nodes: list[dict[str, Any]] = []
    for index, item in enumerate(_items(name, _decode(name, text))):
        if not isinstance(item, Mapping):
            raise InputError(
                f"nodes file {name}: item {index} is a {type(item).__name__}, not a Node object"
            )
        kind = item.get("kind")
        if kind is not None and kind != "Node":
            raise InputError(f"nodes file {name}: item {index} is a {kind}, not a Node")
        nodes.append(dict(item))
    return nodes
