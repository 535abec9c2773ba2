"""A tiny read-only Kubernetes API client for the IPAM plugins' cache misses.

``import kubernetes`` alone costs ~0.2 s, more than the whole plugin may take, so this
module does the two requests the plugins need (GET one Node, paged LIST of Nodes) as
plain HTTP/1.1 over ``socket`` and ``ssl`` (``http.client`` and ``urllib`` would add
``email``, ``re`` and more: ~15 ms of imports). The kubeconfig or in-cluster service
account is read by ``support.kubeconfig``, the reader the daemon's client uses too:
configuration problems (including ``exec``/``auth-provider`` credentials, which this
project does not support) raise its ``KubeconfigError``; requests raise ``ApiError``.
TLS trusts the configured CA only (``support.kubeconfig.ssl_context``); an https
endpoint without a context is refused rather than given the system's store.

Every answer is bounded: the head to ``MAX_HEAD_BYTES``, the body to ``MAX_NODE_BYTES``
(one Node) or ``MAX_PAGE_BYTES`` (one LIST page), read into one linearly growing buffer;
beyond the cap ``ResponseTooLarge`` is raised without reading the rest (docs/ipam.md).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping

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
    import ssl
    from typing import Any

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "ApiError",
    "ConfigError",
    "Endpoint",
    "KubeconfigError",
    "ResponseTooLarge",
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

# Caps on what one answer may hold (docs/ipam.md). A real Node is 10-20 KB and the API
# server stores objects of at most ~1.5 MiB; a LIST page holds ``LIST_PAGE`` of them.
MAX_NODE_BYTES = 4 << 20  # GET one Node (and any error answer)
MAX_PAGE_BYTES = 32 << 20  # one LIST page
MAX_HEAD_BYTES = 64 << 10  # status line and headers
LIST_PAGE = 100
_RECV_BYTES = 65536


class ApiError(Exception):
    """A request failed. ``status`` is the HTTP status, or None when the server could not
    be reached (connection refused, timeout, TLS failure)."""

    def __init__(self, msg: str, status: int | None = None, *, tls: bool = False) -> None:
        super().__init__(msg)
        self.status = status
        self.tls = tls  # the server's certificate was refused: retrying will not help


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
        insecure: bool = False,
    ) -> None:
        self.server = server
        self.https, self.host, self.port, self.prefix = split_server(server)
        self.headers = headers
        self.ssl_context = ssl_context
        self.server_name = server_name or self.host
        self.insecure = insecure  # TLS without verification (insecure-skip-tls-verify: true)


def from_access(access: ClusterAccess) -> Endpoint:
    """An Endpoint for a ``ClusterAccess`` (the token file is read now)."""
    authorization = access.authorization()
    headers = {"Authorization": authorization} if authorization else {}
    return Endpoint(
        access.server,
        headers=headers,
        ssl_context=ssl_context(access) if access.https else None,
        server_name=access.tls_server_name,
        insecure=access.https and access.insecure,
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


class ResponseTooLarge(ApiError):
    """The answer is larger than the cap for its request (``MAX_NODE_BYTES``,
    ``MAX_PAGE_BYTES``): refused without reading the rest. Not transient: a retry gets
    the same answer."""


class _Reader:
    """Buffered reading from ``recv`` with every read capped: memory grows linearly with
    what was read, never beyond the cap given (plus one receive)."""

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv
        self._buf = bytearray()

    def _fill(self) -> bool:
        chunk = self._recv(_RECV_BYTES)
        if not chunk:
            return False
        self._buf += chunk
        return True

    def read_until(self, sep: bytes, cap: int, what: str) -> bytes:
        """Up to ``sep`` (consumed, not returned); at most ``cap`` bytes before it."""
        start = 0
        while True:
            i = self._buf.find(sep, start)
            if i >= 0:
                out = bytes(self._buf[:i])
                del self._buf[: i + len(sep)]
                return out
            if len(self._buf) > cap:
                raise _Oversize(what, cap)
            start = max(0, len(self._buf) - len(sep) + 1)
            if not self._fill():
                raise ValueError(f"truncated {what}")

    def read_exact(self, n: int, what: str) -> bytes:
        while len(self._buf) < n:
            if not self._fill():
                raise ValueError(f"truncated {what}")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def read_to_close(self, cap: int, what: str) -> bytes:
        while self._fill():
            if len(self._buf) > cap:
                raise _Oversize(what, cap)
        out = bytes(self._buf)
        self._buf.clear()
        return out


class _Oversize(Exception):
    def __init__(self, what: str, cap: int) -> None:
        super().__init__(f"{what} is larger than {cap} bytes")
        self.cap = cap


def _read_body(reader: _Reader, headers: Mapping[bytes, bytes], cap: int) -> bytes:
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        parts = bytearray()
        while True:
            line = reader.read_until(b"\r\n", 1024, "chunk header")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size < 0:
                raise ValueError("negative chunk size")
            if size == 0:
                return bytes(parts)
            if len(parts) + size > cap:
                raise _Oversize("the body", cap)
            parts += reader.read_exact(size, "chunk")
            reader.read_exact(2, "chunk end")
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        if length < 0:
            raise ValueError("negative Content-Length")
        if length > cap:
            raise _Oversize(f"the body ({length} bytes)", cap)
        return reader.read_exact(length, "body")
    return reader.read_to_close(cap, "the body")


def _read_response(reader: _Reader, cap: int) -> tuple[int, bytes]:
    """(status, body) from an HTTP/1.1 response; ValueError when it is not one, _Oversize
    when the head or the body exceeds its cap (the body's cap is ``cap``)."""
    head = reader.read_until(b"\r\n\r\n", MAX_HEAD_BYTES, "the response head")
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError("not an HTTP response")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        headers[key.strip().lower()] = value.strip()
    return int(parts[1]), _read_body(reader, headers, cap)


def _parse_response(data: bytes, *, cap: int = MAX_NODE_BYTES) -> tuple[int, bytes]:
    """``_read_response`` over bytes already received (tests)."""
    view = [data]

    def recv(_: int) -> bytes:
        return view.pop() if view else b""

    return _read_response(_Reader(recv), cap)


def request(
    ep: Endpoint, path: str, *, timeout: float, cap: int = MAX_NODE_BYTES
) -> tuple[int, bytes]:
    """One GET (``Connection: close``); (status, body). ApiError(status None) when the
    server cannot be reached or answers garbage within ``timeout`` seconds;
    ResponseTooLarge when the body exceeds ``cap`` bytes (the rest is not read)."""
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
                if ep.ssl_context is None:  # never the system store in addition to a CA
                    raise ValueError("an https endpoint needs an SSL context")
                sock = ep.ssl_context.wrap_socket(sock, server_hostname=tls_name)
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))

            def recv(n: int) -> bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("timed out")
                sock.settimeout(remaining)
                return sock.recv(n)

            return _read_response(_Reader(recv), cap)
        finally:
            sock.close()
    except _Oversize as e:
        raise ResponseTooLarge(
            f"GET {path}: the answer of {ep.server} is too large: {e} (the cap for this request)"
        ) from None
    except (OSError, ValueError) as e:
        ssl = sys.modules.get("ssl")
        if ssl is not None and isinstance(e, ssl.SSLCertVerificationError):
            raise ApiError(
                f"the API server {ep.server} presented a certificate the configured CA "
                f"does not verify: {e}",
                tls=True,
            ) from None
        raise ApiError(f"cannot reach the API server {ep.server}: {e}") from None


def get_json(ep: Endpoint, path: str, *, timeout: float, cap: int = MAX_NODE_BYTES) -> Any:
    """GET ``path`` and decode the JSON body (at most ``cap`` bytes). ApiError on failure
    (status None: unreachable), ResponseTooLarge beyond the cap."""
    status, body = request(ep, path, timeout=timeout, cap=cap)
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


def iter_nodes(ep: Endpoint, *, timeout: float, limit: int = LIST_PAGE) -> Iterator[dict[str, Any]]:
    """Every Node, fetched in pages of ``limit`` (nothing is kept between pages)."""
    deadline = time.monotonic() + timeout
    token = ""
    while True:
        query = f"limit={limit}" + (f"&continue={quote(token)}" if token else "")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ApiError(f"listing nodes took longer than {timeout} s")
        page = get_json(ep, "/api/v1/nodes?" + query, timeout=remaining, cap=MAX_PAGE_BYTES)
        if not isinstance(page, dict):
            raise ApiError("LIST nodes: not an object")
        for item in page.get("items") or ():
            if isinstance(item, dict):
                yield item
        token = (page.get("metadata") or {}).get("continue") or ""
        if not token:
            return
