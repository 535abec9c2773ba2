"""A tiny read-only Kubernetes API client for the IPAM plugins' cache misses.

``import kubernetes`` alone costs ~0.2 s, more than the whole plugin may take, so this
module does the two requests the plugins need (GET one Node, paged LIST of Nodes) as
plain HTTP/1.1 over ``socket`` and ``ssl`` (``http.client`` and ``urllib`` would add
``email``, ``re`` and more: ~15 ms of imports). It reads a kubeconfig (JSON, or YAML via
PyYAML imported lazily) or the in-cluster service account. Authentication it does not
do (``exec`` and ``auth-provider`` plugins) raises ``Unsupported`` so callers can fall back
to the full client (``xcluster_cni_lib.sources.kube``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping

from xcluster_cni_lib.plugin import fastjson as json

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    import ssl
    from typing import Any

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class Unsupported(Exception):
    """The kubeconfig needs something this client does not do; use the full client."""


class ConfigError(Exception):
    """The kubeconfig (or in-cluster environment) is missing or malformed."""


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


def split_server(server: str) -> tuple[bool, str, int, str]:
    """``https://host:port/prefix`` -> (https, host, port, prefix). ConfigError if not."""
    scheme, sep, rest = server.partition("://")
    hostport, slash, path = rest.partition("/")
    if not sep or scheme not in ("http", "https") or not hostport or "@" in hostport:
        raise ConfigError(f"kubeconfig: server {server!r} is not an http(s) URL")
    if hostport.startswith("["):
        host, _, after = hostport[1:].partition("]")
        port = after[1:] if after.startswith(":") else ""
    else:
        host, _, port = hostport.partition(":")
    if not host or (port and not port.isdecimal()) or (port and not 0 < int(port) < 65536):
        raise ConfigError(f"kubeconfig: server {server!r} has a bad host or port")
    https = scheme == "https"
    prefix = ("/" + path).rstrip("/") if slash else ""
    return https, host, int(port) if port else (443 if https else 80), prefix


class Endpoint:
    """Where and how to reach the API server."""

    def __init__(
        self,
        server: str,
        *,
        headers: dict[str, str],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.server = server
        self.https, self.host, self.port, self.prefix = split_server(server)
        self.headers = headers
        self.ssl_context = ssl_context


def _load_doc(path: str) -> Mapping[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"kubeconfig {path}: cannot read: {e.strerror or e}") from None
    try:
        doc = json.loads(text)
    except ValueError:
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"kubeconfig {path}: not JSON or YAML: {e}") from None
    if not isinstance(doc, Mapping):
        raise ConfigError(f"kubeconfig {path}: not a kubeconfig object")
    return doc


def _entries(doc: Mapping[str, Any], section: str) -> list[Mapping[str, Any]]:
    value = doc.get(section)
    items = value if isinstance(value, list) else []
    return [e for e in items if isinstance(e, Mapping)]


def _named(doc: Mapping[str, Any], section: str, name: object, path: str) -> Mapping[str, Any]:
    for entry in _entries(doc, section):
        if isinstance(entry, Mapping) and entry.get("name") == name:
            inner = entry.get(section[:-1])
            return inner if isinstance(inner, Mapping) else {}
    raise ConfigError(f"kubeconfig {path}: no {section[:-1]} named {name!r}")


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None


def _private_file(data: bytes) -> str:
    """A 0600 temp file holding ``data`` (ssl loads client keys only from paths)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    for attempt in range(100):
        path = os.path.join(base, f".kubelite-{os.getpid()}-{time.monotonic_ns()}-{attempt}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path
    raise ConfigError("cannot create a private temp file for client credentials")


def _b64(value: object, what: str) -> bytes:
    import base64
    import binascii

    if not isinstance(value, str):
        raise ConfigError(f"kubeconfig: {what} is not a string")
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        raise ConfigError(f"kubeconfig: {what} is not base64") from None


def from_kubeconfig(path: str) -> Endpoint:
    """An Endpoint for the current context of a kubeconfig file."""
    doc = _load_doc(path)
    base = os.path.dirname(os.path.abspath(path))

    def resolve(p: object) -> str:
        if not isinstance(p, str) or not p:
            raise ConfigError(f"kubeconfig {path}: bad file name {p!r}")
        return p if os.path.isabs(p) else os.path.join(base, p)

    context_name = doc.get("current-context")
    if context_name:
        context = _named(doc, "contexts", context_name, path)
    else:
        contexts = _entries(doc, "contexts")
        if len(contexts) != 1:
            raise ConfigError(f"kubeconfig {path}: no current-context")
        inner = contexts[0].get("context")
        context = inner if isinstance(inner, Mapping) else {}
    cluster = _named(doc, "clusters", context.get("cluster"), path)
    user: Mapping[str, Any] = {}
    if context.get("user"):
        user = _named(doc, "users", context.get("user"), path)
    if "exec" in user or "auth-provider" in user:
        raise Unsupported(f"kubeconfig {path}: exec/auth-provider credentials")

    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise ConfigError(f"kubeconfig {path}: cluster has no server")
    headers: dict[str, str] = {}
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = _read_text(resolve(user["tokenFile"]), "tokenFile").strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif user.get("username") and user.get("password"):
        import base64

        pair = f"{user['username']}:{user['password']}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()

    if not server.startswith("https:"):
        return Endpoint(server, headers=headers)
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        if cluster.get("insecure-skip-tls-verify"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif cluster.get("certificate-authority-data"):
            cadata = _b64(cluster["certificate-authority-data"], "certificate-authority-data")
            ctx.load_verify_locations(cadata=cadata.decode("ascii", "replace"))
        elif cluster.get("certificate-authority"):
            ctx.load_verify_locations(cafile=resolve(cluster["certificate-authority"]))
        _load_client_cert(ctx, user, resolve)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise ConfigError(f"kubeconfig {path}: TLS settings: {e}") from None
    return Endpoint(server, headers=headers, ssl_context=ctx)


def _load_client_cert(ctx: ssl.SSLContext, user: Mapping[str, Any], resolve: Any) -> None:
    cert, key = user.get("client-certificate-data"), user.get("client-key-data")
    cert_file, key_file = user.get("client-certificate"), user.get("client-key")
    if not (cert or cert_file):
        return
    temps: list[str] = []
    try:
        if cert:
            cert_file = _private_file(_b64(cert, "client-certificate-data"))
            temps.append(cert_file)
        else:
            cert_file = resolve(cert_file)
        if key:
            key_file = _private_file(_b64(key, "client-key-data"))
            temps.append(key_file)
        elif key_file:
            key_file = resolve(key_file)
        ctx.load_cert_chain(cert_file, key_file or None)
    finally:
        for t in temps:
            os.unlink(t)


def in_cluster(env: Mapping[str, str], *, sa_dir: str = SERVICE_ACCOUNT_DIR) -> Endpoint:
    """An Endpoint from ``KUBERNETES_SERVICE_HOST``/``_PORT`` and the service account."""
    import ssl

    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ConfigError("no kubeconfig and not in a cluster (KUBERNETES_SERVICE_HOST/PORT unset)")
    token = _read_text(os.path.join(sa_dir, "token"), "service account token").strip()
    ctx = ssl.create_default_context(cafile=os.path.join(sa_dir, "ca.crt"))
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return Endpoint(server, headers={"Authorization": f"Bearer {token}"}, ssl_context=ctx)


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
    try:
        sock = socket.create_connection((name, ep.port), timeout=timeout)  # type: ignore[arg-type]
        try:
            if ep.https:
                import ssl

                ctx = ep.ssl_context or ssl.create_default_context()
                sock = ctx.wrap_socket(sock, server_hostname=name)
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
