"""The HTTP side of the API-server double: request handler, watch streams, faults."""

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

from ._patch import PatchError, json_patch, merge_patch, strategic_merge_patch
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

    def __init__(self, sock: socket.socket, stalled_until: float) -> None:
        self.sock = sock
        self.stalled_until = stalled_until
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


def _selector_matches(
    name: str,
    labels: dict[str, str],
    field_selector: str | None,
    label_selector: str | None,
) -> bool:
    if field_selector:
        for term in field_selector.split(","):
            key, _, value = term.partition("!=") if "!=" in term else term.partition("=")
            value = value.lstrip("=")
            if key.strip() != "metadata.name":
                continue
            if ("!=" in term) == (name == value.strip()):
                return False
    if label_selector:
        for term in label_selector.split(","):
            term = term.strip()
            if "!=" in term:
                key, _, value = term.partition("!=")
                if labels.get(key.strip()) == value.strip():
                    return False
            elif "=" in term:
                key, _, value = term.partition("=")
                if labels.get(key.strip()) != value.lstrip("=").strip():
                    return False
            elif term.startswith("!"):
                if term[1:] in labels:
                    return False
            elif term and term not in labels:
                return False
    return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

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
        name: str | None = None
        subresource = ""
        if path in ("/api", "/api/v1", "/version", "/apis", "/healthz", "/readyz", "/livez"):
            verb = "discovery"
        elif segments[:3] == ["api", "v1", "nodes"] and len(segments) <= 5:
            name = segments[3] if len(segments) > 3 else None
            subresource = segments[4] if len(segments) > 4 else ""
            if name is None:
                verb = {"GET": "list", "POST": "create"}.get(method, "unsupported")
                if verb == "list" and _flag(query, "watch"):
                    verb = "watch"
            else:
                verb = {
                    "GET": "get",
                    "PUT": "update",
                    "PATCH": "patch",
                    "DELETE": "delete",
                }.get(method, "unsupported")
        elif segments[:4] == ["api", "v1", "watch", "nodes"] and method == "GET":
            verb = "watch"
            name = segments[4] if len(segments) > 4 else None
            if name:
                query.setdefault("fieldSelector", [f"metadata.name={name}"])
                name = None
        else:
            verb = "unknown"
        double._count(verb)

        authorized = double.token is None or verb == "discovery"
        if not authorized and self.headers.get("Authorization") != f"Bearer {double.token}":
            self._status(401, "Unauthorized")
            return
        latency = double._latency
        if latency > 0 and double._stopping.wait(latency):
            self.close_connection = True
            return
        failure = double._take_failure(verb)
        if failure is not None:
            self._status(failure, f"injected failure ({failure})")
            return
        intercept = double.intercept  # raw answers (tests.apiserver.hostile)
        if intercept is not None and intercept(verb, self):
            return

        if verb == "discovery":
            self._discovery(path)
        elif verb == "unknown":
            self._status(404, "the server could not find the requested resource")
        elif verb == "unsupported" or subresource not in ("", "status"):
            self._status(405, f"{method} is not supported on {path}")
        elif verb == "list":
            self._list(query)
        elif verb == "watch":
            self._watch(query)
        elif verb == "create":
            self._create(body)
        else:
            assert name is not None
            self._item(verb, name, body)

    def _discovery(self, path: str) -> None:
        if path == "/version":
            doc: dict[str, Any] = {
                "major": "1",
                "minor": "31",
                "gitVersion": "v1.31.0-xcluster-double",
                "platform": "linux/amd64",
            }
        elif path == "/api":
            doc = {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": self.server.double.url[7:]}
                ],
            }
        elif path == "/api/v1":
            doc = {
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": [
                    {
                        "name": "nodes",
                        "singularName": "node",
                        "namespaced": False,
                        "kind": "Node",
                        "verbs": [
                            "create",
                            "delete",
                            "get",
                            "list",
                            "patch",
                            "update",
                            "watch",
                        ],
                        "shortNames": ["no"],
                    },
                    {
                        "name": "nodes/status",
                        "singularName": "",
                        "namespaced": False,
                        "kind": "Node",
                        "verbs": ["get", "patch", "update"],
                    },
                ],
            }
        elif path == "/apis":
            doc = {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
        else:
            self._send(200, b"ok", "text/plain")
            return
        self._send(200, dumps(doc))

    # -- collection ---------------------------------------------------------------------

    def _list(self, query: dict[str, list[str]]) -> None:
        double = self.server.double
        store = double._store
        limit = int(query.get("limit", ["0"])[-1] or 0)
        token = query.get("continue", [""])[-1]
        field_selector = query.get("fieldSelector", [None])[-1]
        label_selector = query.get("labelSelector", [None])[-1]
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
                names, data = snap[1], snap[2]
            else:
                key, rv, start = "", store.rv, 0
                names, data = sorted(store.nodes), store.nodes
            filtered = field_selector or label_selector
            items: list[bytes] = []
            index = start
            while index < len(names) and (not limit or len(items) < limit):
                name = names[index]
                index += 1
                if filtered and not _selector_matches(
                    name, store.labels.get(name, {}), field_selector, label_selector
                ):
                    continue
                items.append(data[name])
            remaining = len(names) - index
            metadata: dict[str, Any] = {"resourceVersion": str(rv)}
            if limit and remaining > 0:
                if not key:
                    key = store.snapshot()
                metadata["continue"] = encode_continue(key, rv, index)
                if not filtered:
                    metadata["remainingItemCount"] = remaining
            elif key:
                store.snapshots.pop(key, None)  # the last page: the snapshot is done
        head = b'{"kind":"NodeList","apiVersion":"v1","metadata":%s,"items":[' % dumps(metadata)
        self._send_parts(200, [head, b",".join(items), b"]}"])

    def _create(self, body: Any) -> None:
        double = self.server.double
        if not isinstance(body, dict):
            self._status(400, "the body must be a Node object")
            return
        try:
            with double._store.cond:
                data = double._store.create(body)
        except Conflict as exc:
            self._status(409, str(exc), reason="AlreadyExists")
            return
        except ValueError as exc:
            self._status(422, str(exc))
            return
        self._send(201, data)

    # -- one node -------------------------------------------------------------------------

    def _item(self, verb: str, name: str, body: Any) -> None:
        store = self.server.double._store
        with store.cond:
            current = store.nodes.get(name)
            if current is None:
                self._status(404, f'nodes "{name}" not found')
                return
            try:
                if verb == "get":
                    data = current
                elif verb == "delete":
                    data = store.delete(name)
                elif verb == "update":
                    if not isinstance(body, dict) or (body.get("metadata") or {}).get(
                        "name"
                    ) not in (None, name):
                        self._status(400, "the body must be the Node named in the path")
                        return
                    body = {**body, "metadata": {**(body.get("metadata") or {}), "name": name}}
                    data = store.update(body, check_rv=True)
                else:
                    patched = self._apply_patch(json.loads(current), body)
                    if patched is None:
                        return
                    patched["metadata"] = {**(patched.get("metadata") or {}), "name": name}
                    data = store.update(patched, check_rv=True)
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

    def _watch(self, query: dict[str, list[str]]) -> None:
        double = self.server.double
        store = double._store
        rv_param = query.get("resourceVersion", [""])[-1]
        bookmarks = _flag(query, "allowWatchBookmarks")
        field_selector = query.get("fieldSelector", [None])[-1]
        label_selector = query.get("labelSelector", [None])[-1]
        try:
            timeout = float(query.get("timeoutSeconds", [""])[-1] or double.watch_timeout)
            start_rv = int(rv_param) if rv_param not in ("", "0") else None
        except ValueError:
            self._status(400, f"invalid resourceVersion or timeoutSeconds in {self.path}")
            return

        def wanted(event: Event) -> bool:
            if not (field_selector or label_selector):
                return True
            return _selector_matches(event.name, event.labels, field_selector, label_selector)

        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        stream = _Stream(self.connection, math.inf if double._stall_new else 0.0)
        self.close_connection = True
        with double._conn_lock:
            double._streams.add(stream)
        try:
            with store.cond:
                if start_rv is None:
                    initial = [
                        Event(store.rv, "ADDED", name, store.labels.get(name, {}), data)
                        for name, data in store.nodes.items()
                    ]
                    cursor = store.rv
                elif start_rv < store.floor:
                    initial = []
                    cursor = -1
                else:
                    initial = []
                    cursor = min(start_rv, store.rv)
            if cursor < 0:
                self._error_event(f"too old resource version: {start_rv} ({store.floor})")
                return
            self._write_lines(e.line() for e in initial if wanted(e))
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
                    events = None if stream.gone else store.events_after(cursor)
                    if events is not None:
                        lines = [e.line() for e in events if wanted(e)]
                        cursor = store.rv
                if events is None:
                    self._error_event(f"too old resource version: {cursor} ({store.floor})")
                    return
                if lines:
                    self._write_lines(lines)
                now = time.monotonic()
                if bookmarks and (stream.bookmark_now or now >= next_bookmark):
                    stream.bookmark_now = False
                    next_bookmark = now + double.bookmark_interval
                    bookmark = {
                        "kind": "Node",
                        "apiVersion": "v1",
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
        self._stall_new = False
        self._latency = 0.0
        self._failures: collections.deque[tuple[int, frozenset[str] | None]] = collections.deque()
        self.requests: collections.Counter[str] = collections.Counter()
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

    # -- nodes ------------------------------------------------------------------------------

    def add_node(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self._store.cond:
            return dict(json.loads(self._store.create(obj)))

    def update_node(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self._store.cond:
            return dict(json.loads(self._store.update(obj)))

    def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Apply a JSON merge patch (RFC 7386) to one node."""
        with self._store.cond:
            current = json.loads(self._store.nodes[name])
            patched = merge_patch(current, patch)
            patched["metadata"]["name"] = name
            return dict(json.loads(self._store.update(patched)))

    def delete_node(self, name: str) -> None:
        with self._store.cond:
            self._store.delete(name)

    def get_node(self, name: str) -> dict[str, Any] | None:
        with self._store.cond:
            data = self._store.nodes.get(name)
        return None if data is None else dict(json.loads(data))

    def node_names(self) -> list[str]:
        with self._store.cond:
            return sorted(self._store.nodes)

    def set_nodes(self, nodes: Iterable[dict[str, Any]]) -> None:
        """Make the node set exactly ``nodes``: ADDED for new names, MODIFIED for every
        existing one, then DELETED for names not given. ``nodes`` is consumed one at a
        time (pass a generator for thousands of nodes: only their JSON is kept)."""
        store = self._store
        seen: set[str] = set()
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            with store.cond:
                for obj in batch:
                    name = obj["metadata"]["name"]
                    seen.add(name)
                    if name in store.nodes:
                        store.update(obj)
                    else:
                        store.create(obj)
            batch.clear()

        for obj in nodes:
            batch.append(obj)
            if len(batch) >= 100:
                flush()
        flush()
        with store.cond:
            for name in [n for n in store.nodes if n not in seen]:
                store.delete(name)

    def heartbeat(self, name: str) -> None:
        """What a kubelet status update does: new ``lastHeartbeatTime`` on every condition,
        a new resourceVersion, a MODIFIED event; nothing routing cares about changes."""
        stamp = now_iso()
        with self._store.cond:
            obj = json.loads(self._store.nodes[name])
            for condition in (obj.get("status") or {}).get("conditions") or ():
                condition["lastHeartbeatTime"] = stamp
            self._store.update(obj)

    @property
    def resource_version(self) -> str:
        with self._store.cond:
            return str(self._store.rv)

    # -- faults -----------------------------------------------------------------------------

    def cut_watches(self) -> int:
        """Drop every open watch stream abruptly (no terminating chunk); returns how many."""
        with self._conn_lock:
            streams = list(self._streams)
            self._streams.clear()
        for stream in streams:
            stream.cut = True
            _abort(stream.sock)
        with self._store.cond:
            self._store.cond.notify_all()
        return len(streams)

    def stall_watches(self, seconds: float | None = None, *, new_streams: bool = False) -> int:
        """Keep the open watch streams open but silent (no events, no bookmarks) for
        ``seconds`` or until ``release_watches()``; with ``new_streams`` also streams opened
        meanwhile. Events are delivered once a stream is released. Returns how many."""
        until = math.inf if seconds is None else time.monotonic() + seconds
        with self._conn_lock:
            streams = list(self._streams)
            for stream in streams:
                stream.stalled_until = until
            self._stall_new = new_streams
        return len(streams)

    def release_watches(self) -> None:
        with self._conn_lock:
            for stream in self._streams:
                stream.stalled_until = 0.0
            self._stall_new = False
        with self._store.cond:
            self._store.cond.notify_all()

    def expire_history(self) -> None:
        """Forget the event history and every continue token: a watch from any RV older
        than now, and a list continued from an older page, get 410 Gone."""
        with self._store.cond:
            self._store.expire()

    def gone_watches(self, *, expire: bool = True) -> int:
        """End every open watch stream with an ERROR event carrying a 410 Status (what a
        real server does when a watcher falls out of its window); by default also
        ``expire_history()`` so that resuming from the last RV fails too."""
        with self._store.cond:
            if expire:
                self._store.expire()
            with self._conn_lock:
                streams = list(self._streams)
                for stream in streams:
                    stream.gone = True
            self._store.cond.notify_all()
        return len(streams)

    def send_bookmarks(self) -> None:
        """Send a BOOKMARK now on every stream that asked for bookmarks."""
        with self._store.cond:
            with self._conn_lock:
                for stream in self._streams:
                    stream.bookmark_now = True
            self._store.cond.notify_all()

    def fail_requests(
        self, n: int, status: int = 500, *, verbs: Iterable[str] | None = None
    ) -> None:
        """Answer the next ``n`` requests (of ``verbs`` only, e.g. ``{"list"}``, when given)
        with a Status of code ``status``."""
        only = frozenset(verbs) if verbs is not None else None
        with self._conn_lock:
            self._failures.extend([(status, only)] * n)

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

    def reset_counters(self) -> None:
        with self._conn_lock:
            self.requests.clear()

    # -- internal -----------------------------------------------------------------------------

    def _count(self, verb: str) -> None:
        with self._conn_lock:
            self.requests[verb] += 1

    def _take_failure(self, verb: str) -> int | None:
        with self._conn_lock:
            for i, (status, only) in enumerate(self._failures):
                if only is None or verb in only:
                    del self._failures[i]
                    return status
        return None


def _abort(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
