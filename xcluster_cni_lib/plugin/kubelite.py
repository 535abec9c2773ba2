"""A tiny read-only Kubernetes API client for the IPAM plugins' cache misses.

``import kubernetes`` alone costs ~0.2 s, more than the whole plugin may take, so this
module does the two requests the plugins need (GET one Node, paged LIST of Nodes) as
plain HTTP/1.1 over ``socket`` and ``ssl`` (``http.client`` and ``urllib`` would add
``email``, ``re`` and more: ~15 ms of imports). The kubeconfig or in-cluster service
account is read by ``support.kubeconfig``, the reader the daemon's client uses too:
configuration problems (including ``exec``/``auth-provider`` credentials, which this
project does not support) raise its ``KubeconfigError``; requests raise ``ApiError``.
TLS trusts the configured CA only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

from xcluster_cni_lib.plugin import fastjson as json
from xcluster_cni_lib.support.kubeconfig import (
    SERVICE_ACCOUNT_DIR,
    ClusterAccess,
    KubeconfigError,
    load_in_cluster,
    load_kubeconfig,
    split_server,
    ssl_context,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    import ssl
    from typing import Any

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "ApiError",
    "ConfigError",
    "Endpoint",
    "KubeconfigError",
    "endpoint",
    "from_access",
    "from_kubeconfig",
    "get_node",
    "in_cluster",
    "iter_nodes",
    "quote",
    "split_server",
]

ConfigError = KubeconfigError  # the one configuration error (the name callers used)


class ApiError(Exception):
    """A request failed. ``status`` is the HTTP status, or None when the server could not
    be reached (connection refused, timeout, TLS failure)."""

    def __init__(self, msg: str, status: int | None = None) -> None:
        super().__init__(msg)
        self.status = status


_URL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")


def quote(text: str) -> str:
    """Percent-encode everything but unreserved characters (a path segment or query value)."""
    return "".join(c if c in _URL_SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


class Endpoint:
    """Where and how to reach the API server. ``server_name`` is the TLS name checked
    (default: the host)."""

    def __init__(
        self,
        server: str,
        *,
        headers: dict[str, str],
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.server = server
        self.https, self.host, self.port, self.prefix = split_server(server)
        self.headers = headers
        self.ssl_context = ssl_context
        self.server_name = server_name or self.host


def from_access(access: ClusterAccess) -> Endpoint:
    """An Endpoint for a ``ClusterAccess`` (the token file is read now)."""
    authorization = access.authorization()
    headers = {"Authorization": authorization} if authorization else {}
    return Endpoint(
        access.server,
        headers=headers,
        ssl_context=ssl_context(access) if access.https else None,
        server_name=access.tls_server_name,
    )


def from_kubeconfig(path: str) -> Endpoint:
    """An Endpoint for the current context of a kubeconfig file (or ``:``-list)."""
    return from_access(load_kubeconfig(path, loads=json.loads))


def in_cluster(env: Mapping[str, str], *, sa_dir: str = SERVICE_ACCOUNT_DIR) -> Endpoint:
    """An Endpoint from ``KUBERNETES_SERVICE_HOST``/``_PORT`` and the service account."""
    return from_access(load_in_cluster(env, sa_dir=sa_dir))


def endpoint(kubeconfig: str | None, env: Mapping[str, str]) -> Endpoint:
    """From the kubeconfig when given, else in-cluster."""
    return from_kubeconfig(kubeconfig) if kubeconfig else in_cluster(env)


def _read_all(sock: socket.socket, deadline: float) -> bytes:
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _dechunk(body: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        line_end = body.index(b"\r\n", pos)
        size = int(body[pos:line_end].split(b";", 1)[0].strip(), 16)
        if size == 0:
            return b"".join(out)
        start = line_end + 2
        if start + size > len(body):
            raise ValueError("truncated chunk")
        out.append(body[start : start + size])
        pos = start + size + 2


def _parse_response(data: bytes) -> tuple[int, bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError("not an HTTP response")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        headers[key.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = _dechunk(body)
    elif b"content-length" in headers:
        length = int(headers[b"content-length"])
        if len(body) < length:
            raise ValueError("truncated body")
        body = body[:length]
    return int(parts[1]), body


def request(ep: Endpoint, path: str, *, timeout: float) -> tuple[int, bytes]:
    """One GET (``Connection: close``); (status, body). ApiError(status None) when the
    server cannot be reached or answers garbage within ``timeout`` seconds."""
    import socket

    deadline = time.monotonic() + timeout
    host = f"[{ep.host}]" if ":" in ep.host else ep.host
    head = [
        f"GET {ep.prefix}{path} HTTP/1.1",
        f"Host: {host}:{ep.port}",
        "Accept: application/json",
        "User-Agent: xcluster-cni-ipam",
        "Connection: close",
        *(f"{k}: {v}" for k, v in ep.headers.items()),
    ]
    # An ASCII host as bytes skips the "idna" codec (and its ``re``, ``unicodedata``).
    name: str | bytes = ep.host.encode("ascii") if ep.host.isascii() else ep.host
    sni = ep.server_name
    tls_name: str | bytes = sni.encode("ascii") if sni.isascii() else sni
    try:
        sock = socket.create_connection((name, ep.port), timeout=timeout)  # type: ignore[arg-type]
        try:
            if ep.https:
                import ssl

                ctx = ep.ssl_context or ssl.create_default_context()
                sock = ctx.wrap_socket(sock, server_hostname=tls_name)
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            data = _read_all(sock, deadline)
        finally:
            sock.close()
        return _parse_response(data)
    except (OSError, ValueError) as e:
        raise ApiError(f"cannot reach the API server {ep.server}: {e}") from None


def get_json(ep: Endpoint, path: str, *, timeout: float) -> Any:
    """GET ``path`` and decode the JSON body. ApiError on failure (status None: unreachable)."""
    status, body = request(ep, path, timeout=timeout)
    if status != 200:
        detail = body[:200].decode("utf-8", "replace")
        raise ApiError(f"GET {path}: HTTP {status}: {detail}", status=status)
    try:
        return json.loads(body)
    except ValueError:
        raise ApiError(f"GET {path}: the answer is not JSON", status=status) from None


def get_node(ep: Endpoint, name: str, *, timeout: float) -> dict[str, Any] | None:
    """The Node object, or None when it does not exist."""
    try:
        node = get_json(ep, "/api/v1/nodes/" + quote(name), timeout=timeout)
    except ApiError as e:
        if e.status == 404:
            return None
        raise
    if not isinstance(node, dict):
        raise ApiError(f"GET node {name}: not an object")
    return node


def iter_nodes(ep: Endpoint, *, timeout: float, limit: int = 100) -> Iterator[dict[str, Any]]:
    """Every Node, fetched in pages of ``limit`` (nothing is kept between pages)."""
    deadline = time.monotonic() + timeout
    token = ""
    while True:
        query = f"limit={limit}" + (f"&continue={quote(token)}" if token else "")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ApiError(f"listing nodes took longer than {timeout} s")
        page = get_json(ep, "/api/v1/nodes?" + query, timeout=remaining)
        if not isinstance(page, dict):
            raise ApiError("LIST nodes: not an object")
        for item in page.get("items") or ():
            if isinstance(item, dict):
                yield item
        token = (page.get("metadata") or {}).get("continue") or ""
        if not token:
            return
