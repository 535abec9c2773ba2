"""The HTTP side of the API-server double: routing, request handler, watch streams,
discovery, faults and the test-side API."""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ._kinds import GROUP_VERSIONS, KINDS, Kind, kind_at, object_key
from ._patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from ._select import Selector
from ._store import (
    Conflict,
    Event,
    Store,
    decode_continue,
    dumps,
    encode_continue,
    now_iso,
)

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

CHUNK_BYTES = 1 << 20


def status_object(code: int, message: str, *, reason: str | None = None) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or REASONS.get(code, "Unknown"),
        "code": code,
    }


class _Stream:
    """One open watch stream, as the test-side API sees it."""

    def __init__(self, sock: socket.socket, resource: str, stalled: bool) -> None:
        self.sock = sock
        self.resource = resource
        self.stalled_until = math.inf if stalled else 0.0
        self.cut = False
        self.gone = False
        self.bookmark_now = False


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], double: ApiServerDouble) -> None:
        self.double = double
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.double._conn_lock:
            self.double._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.double._conn_lock:
            self.double._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # client went away mid-response: normal for a fault-injecting server


def _flag(query: dict[str, list[str]], key: str) -> bool:
    return query.get(key, ["false"])[-1].lower() in ("true", "1")


class _Route:
    """What a request path names: a collection (``name`` None) or one object."""

    __slots__ = ("kind", "name", "namespace", "subresource", "watch")

    def __init__(
        self,
        kind: Kind,
        *,
        namespace: str | None,
        name: str | None,
        subresource: str,
        watch: bool,
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.subresource = subresource
        self.watch = watch

    @property
    def key(self) -> str:
        assert self.name is not None
        return object_key(self.kind, self.name, self.namespace)


def _route(segments: list[str]) -> _Route | None:
    """Parse ``/api/v1/...`` and ``/apis/<group>/<version>/...``: ``[watch/]``,
    ``[namespaces/<ns>/]<resource>[/<name>[/<subresource>]]``."""
    if segments[:2] == ["api", "v1"]:
        api_version, rest = "v1", segments[2:]
    elif segments[:1] == ["apis"] and len(segments) >= 4:
        api_version, rest = f"{segments[1]}/{segments[2]}", segments[3:]
    else:
        return None
    watch = rest[:1] == ["watch"]
    if watch:
        rest = rest[1:]
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        inner = kind_at(api_version, rest[2])
        if inner is not None and inner.namespaced:
            namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    kind = kind_at(api_version, rest[0])
    if kind is None:
        return None
    name = rest[1] if len(rest) > 1 else None
    if kind.namespaced and name is not None and namespace is None:
        return None  # /api/v1/pods/<name> does not exist
    subresource = rest[2] if len(rest) > 2 else ""
    if subresource and subresource not in kind.subresources:
        return None
    return _Route(kind, namespace=namespace, name=name, subresource=subresource, watch=watch)


def _discovery_document(path: str, url: str) -> dict[str, Any] | None:
    if path == "/version":
        return {
            "major": "1",
            "minor": "31",
            "gitVersion": "v1.31.0-xcluster-double",
            "platform": "linux/amd64",
        }
    if path == "/api":
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": url.split("://", 1)[-1]}
            ],
        }
    groups = {gv.split("/")[0]: gv for gv in GROUP_VERSIONS if "/" in gv}

    def group(name: str) -> dict[str, Any]:
        version = {"groupVersion": groups[name], "version": groups[name].split("/")[1]}
        return {"name": name, "versions": [version], "preferredVersion": version}

    if path == "/apis":
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [group(name) for name in sorted(groups)],
        }
    if path.startswith("/apis/") and path[6:] in groups:
        return {"kind": "APIGroup", "apiVersion": "v1", **group(path[6:])}
    group_version = "v1" if path == "/api/v1" else path[6:]
    kinds = GROUP_VERSIONS.get(group_version) if path.startswith(("/api/v1", "/apis/")) else None
    if kinds is None:
        return None
    resources: list[dict[str, Any]] = []
    for kind in kinds:
        resources.append(
            {
                "name": kind.resource,
                "singularName": kind.singular,
                "namespaced": kind.namespaced,
                "kind": kind.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                "shortNames": list(kind.short_names),
            }
        )
        for sub in kind.subresources:
            resources.append(
                {
                    "name": f"{kind.resource}/{sub}",
                    "singularName": "",
                    "namespaced": kind.namespaced,
                    "kind": kind.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


DISCOVERY_PATHS = frozenset(
    ["/api", "/version", "/apis", "/healthz", "/readyz", "/livez"]
    + [f"/api/{gv}" if "/" not in gv else f"/apis/{gv}" for gv in GROUP_VERSIONS]
    + [f"/apis/{gv.split('/')[0]}" for gv in GROUP_VERSIONS if "/" in gv]
)


def _visible(events: Iterable[Event], selector: Selector) -> list[bytes]:
    lines = (event.line(selector) for event in events)
    return [line for line in lines if line is not None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    resource = ""  # the resource the request names ("pods", ...), "" for none

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- plumbing -----------------------------------------------------------------------

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_parts(self, code: int, parts: Iterable[bytes]) -> None:
        body = b"".join(parts)
        self._send(code, body)

    def _status(self, code: int, message: str, *, reason: str | None = None) -> None:
        self._send(code, dumps(status_object(code, message, reason=reason)))

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def _dispatch(self, method: str) -> None:
        double = self.server.double
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/")
        query = parse_qs(parts.query)
        try:
            body = self._read_body() if method in ("POST", "PUT", "PATCH") else None
        except ValueError as exc:
            self._status(400, f"invalid JSON body: {exc}")
            return
        segments = path.split("/")[1:]
        route: _Route | None = None
        if path in DISCOVERY_PATHS:
            verb = "discovery"
        else:
            route = _route(segments)
            if route is None:
                verb = "unknown"
            elif route.watch:
                verb = "watch" if method == "GET" else "unsupported"
                if route.name is not None:  # /watch/<resource>/<name>: one object
                    query.setdefault("fieldSelector", [f"metadata.name={route.name}"])
                    route.name = None
                    if route.subresource:
                        verb = "unknown"
            elif route.name is None:
                verb = {"GET": "list", "POST": "create"}.get(method, "unsupported")
                if verb == "list" and _flag(query, "watch"):
                    verb = "watch"
                if verb == "create" and route.kind.namespaced and route.namespace is None:
                    verb = "unsupported"  # POST /api/v1/pods: create needs a namespace
            else:
                verb = {
                    "GET": "get",
                    "PUT": "update",
                    "PATCH": "patch",
                    "DELETE": "delete",
                }.get(method, "unsupported")
        self.resource = route.kind.resource if route is not None else ""
        double._count(verb, self.resource)

        authorized = double.token is None or verb == "discovery"
        if not authorized and self.headers.get("Authorization") != f"Bearer {double.token}":
            self._status(401, "Unauthorized")
            return
        latency = double._latency
        if latency > 0 and double._stopping.wait(latency):
            self.close_connection = True
            return
        failure = double._take_failure(verb, self.resource)
        if failure is not None:
            self._status(failure, f"injected failure ({failure})")
            return
        intercept = double.intercept  # raw answers (tests.apiserver.hostile)
        if intercept is not None and intercept(verb, self):
            return

        if verb == "discovery":
            self._discovery(path)
            return
        if verb == "unknown" or route is None:
            self._status(404, "the server could not find the requested resource")
        elif verb == "unsupported":
            self._status(405, f"{method} is not supported on {path}")
        elif verb == "list":
            self._list(route, query)
        elif verb == "watch":
            self._watch(route, query)
        elif verb == "create":
            self._create(route, body)
        else:
            self._item(verb, route, body)

    def _discovery(self, path: str) -> None:
        doc = _discovery_document(path, self.server.double.url)
        if doc is None:
            self._send(200, b"ok", "text/plain")
        else:
            self._send(200, dumps(doc))

    # -- collection ---------------------------------------------------------------------

    def _selector(
        self, route: _Route, query: dict[str, list[str]], *, namespace: str | None
    ) -> Selector | None:
        try:
            return Selector(
                route.kind,
                namespace=namespace,
                field_selector=query.get("fieldSelector", [None])[-1],
                label_selector=query.get("labelSelector", [None])[-1],
            )
        except ValueError as exc:
            self._status(400, str(exc))
            return None

    def _list(self, route: _Route, query: dict[str, list[str]]) -> None:
        double = self.server.double
        store = double._store
        kind = route.kind
        coll = store[kind.resource]
        try:
            limit = int(query.get("limit", ["0"])[-1] or 0)
        except ValueError:
            self._status(400, f"invalid limit in {self.path}")
            return
        token = query.get("continue", [""])[-1]
        # the namespace of the path is a key range, as in etcd; selectors filter
        selector = self._selector(route, query, namespace=None)
        if selector is None:
            return
        with store.cond:
            if token:
                try:
                    key, rv, start = decode_continue(token)
                except ValueError as exc:
                    self._status(400, str(exc))
                    return
                snap = store.snapshots.get(key)
                if snap is None:
                    self._status(
                        410,
                        "The provided continue parameter is too old to display a consistent "
                        "list result. You can start a new list without the continue parameter.",
                    )
                    return
                if snap.resource != kind.resource:
                    self._status(400, f"the continue token is not for {kind.resource}")
                    return
                keys, data, attrs_of = snap.keys, snap.data, snap.attrs
            else:
                key, rv = "", store.rv
                keys, data, attrs_of = sorted(coll.objects), coll.objects, coll.attrs
            low, high = coll.key_range(keys, route.namespace)
            start = max(start, low) if token else low
            items: list[bytes] = []
            index = start
            while index < high and (not limit or len(items) < limit):
                item_key = keys[index]
                index += 1
                if not selector.everything:
                    attrs = attrs_of[item_key]
                    if not selector.matches(attrs.labels, attrs.fields):
                        continue
                items.append(data[item_key])
            remaining = high - index
            metadata: dict[str, Any] = {"resourceVersion": str(rv)}
            if limit and remaining > 0:
                if not key:
                    key = store.snapshot(kind.resource, keys)
                metadata["continue"] = encode_continue(key, rv, index)
                if selector.everything:
                    metadata["remainingItemCount"] = remaining
            elif key:
                store.snapshots.pop(key, None)  # the last page: the snapshot is done
        head = b'{"kind":"%s","apiVersion":"%s","metadata":%s,"items":[' % (
            kind.list_kind.encode(),
            kind.api_version.encode(),
            dumps(metadata),
        )
        self._send_parts(200, [head, b",".join(items), b"]}"])

    def _create(self, route: _Route, body: Any) -> None:
        double = self.server.double
        kind = route.kind
        if not isinstance(body, dict):
            self._status(400, f"the body must be a {kind.kind} object")
            return
        if route.namespace is not None:
            metadata = dict(body.get("metadata") or {})
            if metadata.get("namespace") not in (None, "", route.namespace):
                self._status(
                    400,
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request",
                    reason="BadRequest",
                )
                return
            body = {**body, "metadata": {**metadata, "namespace": route.namespace}}
        try:
            with double._store.cond:
                if route.namespace is not None and (
                    route.namespace not in double._store["namespaces"].objects
                ):
                    self._status(404, f'namespaces "{route.namespace}" not found')
                    return
                data = double._store.create(kind.resource, body)
        except Conflict as exc:
            self._status(409, str(exc), reason="AlreadyExists")
            return
        except ValueError as exc:
            self._status(422, str(exc))
            return
        self._send(201, data)

    # -- one object -----------------------------------------------------------------------

    def _item(self, verb: str, route: _Route, body: Any) -> None:
        store = self.server.double._store
        kind = route.kind
        name = route.name
        key = route.key
        with store.cond:
            current = store[kind.resource].objects.get(key)
            if current is None:
                self._status(404, f'{kind.resource} "{name}" not found')
                return
            naming = {"name": name}
            if route.namespace is not None:
                naming["namespace"] = route.namespace
            try:
                if verb == "get":
                    data = current
                elif verb == "delete":
                    data = store.delete(kind.resource, key)
                elif verb == "update":
                    metadata = body.get("metadata") if isinstance(body, dict) else None
                    if not isinstance(body, dict) or any(
                        (metadata or {}).get(k) not in (None, "", v) for k, v in naming.items()
                    ):
                        self._status(400, f"the body must be the {kind.kind} named in the path")
                        return
                    body = {**body, "metadata": {**(metadata or {}), **naming}}
                    data = store.update(kind.resource, body, check_rv=True)
                else:
                    patched = self._apply_patch(json.loads(current), body)
                    if patched is None:
                        return
                    patched["metadata"] = {**(patched.get("metadata") or {}), **naming}
                    data = store.update(kind.resource, patched, check_rv=True)
            except Conflict as exc:
                self._status(409, str(exc))
                return
            except ValueError as exc:
                self._status(422, str(exc))
                return
        self._send(200, data)

    def _apply_patch(self, current: dict[str, Any], body: Any) -> dict[str, Any] | None:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            if content_type == "application/merge-patch+json":
                patched = merge_patch(current, body)
            elif content_type == "application/strategic-merge-patch+json":
                patched = strategic_merge_patch(current, body)
            elif content_type == "application/json-patch+json":
                patched = json_patch(current, body)
            else:
                self._status(415, f"the media type {content_type!r} is not supported")
                return None
        except PatchError as exc:
            self._status(422, str(exc))
            return None
        if not isinstance(patched, dict):
            self._status(422, "the patch must leave an object")
            return None
        return patched

    # -- watch --------------------------------------------------------------------------

    def _chunk(self, payload: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))

    def _write_lines(self, lines: Iterable[bytes]) -> None:
        batch: list[bytes] = []
        size = 0
        for line in lines:
            batch.append(line)
            size += len(line)
            if size >= CHUNK_BYTES:
                self._chunk(b"".join(batch))
                batch, size = [], 0
        if batch:
            self._chunk(b"".join(batch))

    def _watch(self, route: _Route, query: dict[str, list[str]]) -> None:
        double = self.server.double
        store = double._store
        kind = route.kind
        coll = store[kind.resource]
        rv_param = query.get("resourceVersion", [""])[-1]
        bookmarks = _flag(query, "allowWatchBookmarks")
        selector = self._selector(route, query, namespace=route.namespace)
        if selector is None:
            return
        try:
            timeout = float(query.get("timeoutSeconds", [""])[-1] or double.watch_timeout)
            start_rv = int(rv_param) if rv_param not in ("", "0") else None
        except ValueError:
            self._status(400, f"invalid resourceVersion or timeoutSeconds in {self.path}")
            return

        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        stream = _Stream(self.connection, kind.resource, kind.resource in double._stall_new)
        self.close_connection = True
        with double._conn_lock:
            double._streams.add(stream)
        try:
            with store.cond:
                floor = coll.floor
                if start_rv is None:
                    initial = [
                        Event(store.rv, "ADDED", key, coll.attrs[key], data)
                        for key, data in coll.objects.items()
                    ]
                    cursor = store.rv
                elif start_rv < floor:
                    initial = []
                    cursor = -1
                else:
                    initial = []
                    cursor = min(start_rv, store.rv)
            if cursor < 0:
                self._error_event(f"too old resource version: {start_rv} ({floor})")
                return
            self._write_lines(_visible(initial, selector))
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + double.bookmark_interval
            while True:
                lines: list[bytes] = []
                with store.cond:
                    while True:
                        if double._stopping.is_set() or stream.cut:
                            return
                        now = time.monotonic()
                        if now < stream.stalled_until:
                            store.cond.wait(min(stream.stalled_until - now, 1.0))
                            continue
                        if stream.gone:
                            break
                        if store.rv > cursor or now >= deadline:
                            break
                        if bookmarks and (stream.bookmark_now or now >= next_bookmark):
                            break
                        wake = deadline if not bookmarks else min(deadline, next_bookmark)
                        store.cond.wait(max(0.0, min(wake - now, 5.0)))
                    events = None if stream.gone else store.events_after(kind.resource, cursor)
                    floor = coll.floor
                    if events is not None:
                        lines = _visible(events, selector)
                        cursor = store.rv
                if events is None:
                    self._error_event(f"too old resource version: {cursor} ({floor})")
                    return
                if lines:
                    self._write_lines(lines)
                now = time.monotonic()
                if bookmarks and (stream.bookmark_now or now >= next_bookmark):
                    stream.bookmark_now = False
                    next_bookmark = now + double.bookmark_interval
                    bookmark = {
                        "kind": kind.kind,
                        "apiVersion": kind.api_version,
                        "metadata": {"resourceVersion": str(cursor), "creationTimestamp": None},
                    }
                    self._chunk(b'{"type":"BOOKMARK","object":%s}\n' % dumps(bookmark))
                if now >= deadline:
                    self._chunk(b"")
                    return
        except OSError:
            return
        finally:
            with double._conn_lock:
                double._streams.discard(stream)

    def _error_event(self, message: str) -> None:
        status = status_object(410, message)
        self._chunk(b'{"type":"ERROR","object":%s}\n' % dumps(status))
        self._chunk(b"")


class ApiServerDouble:
    """See the package docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        bookmark_interval: float = 60.0,
        watch_timeout: float = 1800.0,
        history_size: int = 2000,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.watch_timeout = watch_timeout
        self._store = Store(history_size=history_size)
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._streams: set[_Stream] = set()
        self._stall_new: frozenset[str] = frozenset()  # resources whose new streams stall
        self._latency = 0.0
        self._failures: collections.deque[
            tuple[int, frozenset[str] | None, frozenset[str] | None]
        ] = collections.deque()
        self.requests: collections.Counter[str] = collections.Counter()
        self.resource_requests: collections.Counter[tuple[str, str]] = collections.Counter()
        # (verb, handler) -> True when it answered the request itself
        self.intercept: Callable[[str, Any], bool] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> ApiServerDouble:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _HTTPServer((self.host, self.port), self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"apiserver-double:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        with self._store.cond:
            self._store.cond.notify_all()
        server.shutdown()
        server.server_close()
        with self._conn_lock:
            connections = list(self._connections)
            self._connections.clear()
            self._streams.clear()
        for conn in connections:
            _abort(conn)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def restart(self, *, downtime: float = 0.0) -> None:
        """Stop, stay down ``downtime`` seconds, come back on the same port with the same
        nodes and history (like an API server in front of the same etcd)."""
        self.stop()
        if downtime > 0:
            time.sleep(downtime)
        self.start()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ApiServerDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: str | os.PathLike[str]) -> str:
        user: dict[str, Any] = {"token": self.token} if self.token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "double", "user": user}],
            "contexts": [{"name": "double", "context": {"cluster": "double", "user": "double"}}],
            "current-context": "double",
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1)  # JSON is YAML
        return os.fspath(path)

    # -- objects of any kind ---------------------------------------------------------------

    def add(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj`` (ADDED event); ``Conflict`` if it exists. Returns it as stored."""
        with self._store.cond:
            return dict(json.loads(self._store.create(resource, obj)))

    def update(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace ``obj`` (named by its metadata; MODIFIED event); ``KeyError`` if absent."""
        with self._store.cond:
            return dict(json.loads(self._store.update(resource, obj)))

    def patch(
        self, resource: str, name: str, patch: dict[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        """Apply a JSON merge patch (RFC 7386) to one object."""
        with self._store.cond:
            coll = self._store[resource]
            current = json.loads(coll.objects[object_key(coll.kind, name, namespace)])
            patched = merge_patch(current, patch)
            patched["metadata"]["name"] = name
            if namespace is not None:
                patched["metadata"]["namespace"] = namespace
            return dict(json.loads(self._store.update(resource, patched)))

    def touch(self, resource: str, name: str, *, namespace: str | None = None) -> None:
        """Store the object again unchanged: a new resourceVersion, a MODIFIED event."""
        with self._store.cond:
            coll = self._store[resource]
            self._store.update(
                resource, json.loads(coll.objects[object_key(coll.kind, name, namespace)])
            )

    def delete(self, resource: str, name: str, *, namespace: str | None = None) -> None:
        """Delete one object (DELETED event); ``KeyError`` if absent. A namespace's pods
        and network policies go with it (their DELETED events come first)."""
        with self._store.cond:
            coll = self._store[resource]
            self._store.delete(resource, object_key(coll.kind, name, namespace))

    def get(
        self, resource: str, name: str, *, namespace: str | None = None
    ) -> dict[str, Any] | None:
        with self._store.cond:
            coll = self._store[resource]
            data = coll.objects.get(object_key(coll.kind, name, namespace))
        return None if data is None else dict(json.loads(data))

    def names(self, resource: str, *, namespace: str | None = None) -> list[str]:
        """Sorted names (``namespace/name`` for namespaced kinds unless ``namespace`` is
        given: then the names in it)."""
        with self._store.cond:
            keys = sorted(self._store[resource].objects)
        if namespace is None:
            return keys
        prefix = f"{namespace}/"
        return [k[len(prefix) :] for k in keys if k.startswith(prefix)]

    def objects(self, resource: str, *, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every object of ``resource`` (in ``namespace``), in key order."""
        with self._store.cond:
            coll = self._store[resource]
            keys = sorted(coll.objects)
            low, high = coll.key_range(keys, namespace)
            data = [coll.objects[k] for k in keys[low:high]]
        return [dict(json.loads(d)) for d in data]

    def set_objects(self, resource: str, objs: Iterable[dict[str, Any]]) -> None:
        """Make the objects of ``resource`` exactly ``objs``: ADDED for new ones, MODIFIED
        for every existing one, then DELETED for those not given. ``objs`` is consumed one
        at a time (pass a generator for thousands: only their JSON is kept)."""
        store = self._store
        coll = store[resource]
        seen: set[str] = set()
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            with store.cond:
                for obj in batch:
                    md = obj.get("metadata") or {}
                    key = object_key(coll.kind, str(md.get("name")), md.get("namespace"))
                    seen.add(key)
                    if key in coll.objects:
                        store.update(resource, obj)
                    else:
                        store.create(resource, obj)
            batch.clear()

        for obj in objs:
            batch.append(obj)
            if len(batch) >= 100:
                flush()
        flush()
        with store.cond:
            for key in [k for k in coll.objects if k not in seen]:
                if key in coll.objects:  # a namespace's delete may have taken it already
                    store.delete(resource, key)

    # -- per-kind shorthands ------------------------------------------------------------------

    def add_node(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.add("nodes", obj)

    def update_node(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.update("nodes", obj)

    def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Apply a JSON merge patch (RFC 7386) to one node."""
        return self.patch("nodes", name, patch)

    def delete_node(self, name: str) -> None:
        self.delete("nodes", name)

    def get_node(self, name: str) -> dict[str, Any] | None:
        return self.get("nodes", name)

    def node_names(self) -> list[str]:
        return self.names("nodes")

    def set_nodes(self, nodes: Iterable[dict[str, Any]]) -> None:
        """``set_objects("nodes", nodes)``."""
        self.set_objects("nodes", nodes)

    def heartbeat(self, name: str) -> None:
        """What a kubelet status update does: new ``lastHeartbeatTime`` on every condition,
        a new resourceVersion, a MODIFIED event; nothing routing cares about changes."""
        stamp = now_iso()
        with self._store.cond:
            obj = json.loads(self._store["nodes"].objects[name])
            for condition in (obj.get("status") or {}).get("conditions") or ():
                condition["lastHeartbeatTime"] = stamp
            self._store.update("nodes", obj)

    def add_pod(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.add("pods", obj)

    def update_pod(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.update("pods", obj)

    def patch_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.patch("pods", name, patch, namespace=namespace)

    def delete_pod(self, namespace: str, name: str) -> None:
        self.delete("pods", name, namespace=namespace)

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get("pods", name, namespace=namespace)

    def set_pods(self, pods: Iterable[dict[str, Any]]) -> None:
        self.set_objects("pods", pods)

    def add_namespace(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.add("namespaces", obj)

    def update_namespace(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.update("namespaces", obj)

    def patch_namespace(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.patch("namespaces", name, patch)

    def delete_namespace(self, name: str) -> None:
        self.delete("namespaces", name)

    def get_namespace(self, name: str) -> dict[str, Any] | None:
        return self.get("namespaces", name)

    def set_namespaces(self, namespaces: Iterable[dict[str, Any]]) -> None:
        self.set_objects("namespaces", namespaces)

    def add_network_policy(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.add("networkpolicies", obj)

    def update_network_policy(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.update("networkpolicies", obj)

    def patch_network_policy(
        self, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        return self.patch("networkpolicies", name, patch, namespace=namespace)

    def delete_network_policy(self, namespace: str, name: str) -> None:
        self.delete("networkpolicies", name, namespace=namespace)

    def get_network_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get("networkpolicies", name, namespace=namespace)

    def set_network_policies(self, policies: Iterable[dict[str, Any]]) -> None:
        self.set_objects("networkpolicies", policies)

    @property
    def resource_version(self) -> str:
        with self._store.cond:
            return str(self._store.rv)

    # -- faults -----------------------------------------------------------------------------
    # ``resources`` (e.g. ``{"pods"}``), where taken, narrows a fault to those kinds.

    def _streams_of(self, resources: Iterable[str] | None) -> list[_Stream]:
        wanted = None if resources is None else frozenset(resources)
        with self._conn_lock:
            return [s for s in self._streams if wanted is None or s.resource in wanted]

    def cut_watches(self, *, resources: Iterable[str] | None = None) -> int:
        """Drop every open watch stream abruptly (no terminating chunk); returns how many."""
        streams = self._streams_of(resources)
        with self._conn_lock:
            self._streams.difference_update(streams)
        for stream in streams:
            stream.cut = True
            _abort(stream.sock)
        with self._store.cond:
            self._store.cond.notify_all()
        return len(streams)

    def stall_watches(
        self,
        seconds: float | None = None,
        *,
        new_streams: bool = False,
        resources: Iterable[str] | None = None,
    ) -> int:
        """Keep the open watch streams open but silent (no events, no bookmarks) for
        ``seconds`` or until ``release_watches()``; with ``new_streams`` also streams opened
        meanwhile. Events are delivered once a stream is released. Returns how many."""
        until = math.inf if seconds is None else time.monotonic() + seconds
        streams = self._streams_of(resources)
        with self._conn_lock:
            for stream in streams:
                stream.stalled_until = until
            if new_streams:
                self._stall_new = frozenset(KINDS if resources is None else resources)
            else:
                self._stall_new = frozenset()
        return len(streams)

    def release_watches(self) -> None:
        with self._conn_lock:
            for stream in self._streams:
                stream.stalled_until = 0.0
            self._stall_new = frozenset()
        with self._store.cond:
            self._store.cond.notify_all()

    def expire_history(self, *, resources: Iterable[str] | None = None) -> None:
        """Forget the event history and every continue token: a watch from any RV older
        than now, and a list continued from an older page, get 410 Gone."""
        with self._store.cond:
            self._store.expire(resources)

    def gone_watches(self, *, expire: bool = True, resources: Iterable[str] | None = None) -> int:
        """End every open watch stream with an ERROR event carrying a 410 Status (what a
        real server does when a watcher falls out of its window); by default also
        ``expire_history()`` so that resuming from the last RV fails too."""
        chosen = None if resources is None else frozenset(resources)
        with self._store.cond:
            if expire:
                self._store.expire(chosen)
            streams = self._streams_of(chosen)
            for stream in streams:
                stream.gone = True
            self._store.cond.notify_all()
        return len(streams)

    def send_bookmarks(self, *, resources: Iterable[str] | None = None) -> None:
        """Send a BOOKMARK now on every stream that asked for bookmarks."""
        with self._store.cond:
            for stream in self._streams_of(resources):
                stream.bookmark_now = True
            self._store.cond.notify_all()

    def fail_requests(
        self,
        n: int,
        status: int = 500,
        *,
        verbs: Iterable[str] | None = None,
        resources: Iterable[str] | None = None,
    ) -> None:
        """Answer the next ``n`` requests (of ``verbs`` only, e.g. ``{"list"}``, and of
        ``resources`` only, when given) with a Status of code ``status``."""
        only = frozenset(verbs) if verbs is not None else None
        kinds = frozenset(resources) if resources is not None else None
        with self._conn_lock:
            self._failures.extend([(status, only, kinds)] * n)

    def clear_failures(self) -> None:
        with self._conn_lock:
            self._failures.clear()

    def set_latency(self, seconds: float) -> None:
        """Delay every later request by ``seconds`` before it is answered."""
        self._latency = max(0.0, seconds)

    # -- counters ---------------------------------------------------------------------------

    @property
    def list_requests(self) -> int:
        return self.requests["list"]

    @property
    def watch_requests(self) -> int:
        return self.requests["watch"]

    @property
    def active_watches(self) -> int:
        with self._conn_lock:
            return len(self._streams)

    def active_watches_of(self, resource: str) -> int:
        """Open watch streams on ``resource`` (``"pods"``, ...)."""
        return len(self._streams_of((resource,)))

    def reset_counters(self) -> None:
        with self._conn_lock:
            self.requests.clear()
            self.resource_requests.clear()

    # -- internal -----------------------------------------------------------------------------

    def _count(self, verb: str, resource: str) -> None:
        with self._conn_lock:
            self.requests[verb] += 1
            if resource:
                self.resource_requests[resource, verb] += 1

    def _take_failure(self, verb: str, resource: str) -> int | None:
        with self._conn_lock:
            for i, (status, only, kinds) in enumerate(self._failures):
                if (only is None or verb in only) and (kinds is None or resource in kinds):
                    del self._failures[i]
                    return status
        return None


def _abort(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
