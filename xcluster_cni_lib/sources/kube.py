"""The ``kubernetes`` API client of the daemon and the tools, and one-shot reads.

It turns Node objects into compact ``NodeFacts`` at the boundary and never keeps the
client's model objects or raw Node dicts: lists are read as raw JSON
(``_preload_content=False``) page by page. The watch loop is in ``sources.watching``.

- ``load_api_client(kubeconfig=None, *, timeout=None)``: an ``ApiClient`` from an
  explicit kubeconfig, else ``$KUBECONFIG``, else the in-cluster service account (when
  ``KUBERNETES_SERVICE_HOST`` is set), else ``~/.kube/config``. The file is read by
  ``support.kubeconfig`` (the IPAM plugin's reader too), not by the client's loaders: the
  same files are accepted and refused with the same ``KubeconfigError``; the CA is the
  configured one only; a token file (the service account's bound token, which expires
  after about an hour) is re-read whenever it changes.
- ``list_node_facts(api_client, ...)`` and ``get_node(api_client, name)``: one-shot reads.

Every answer is read with a cap, in pieces, never whole into memory first: a LIST page
(``MAX_PAGE_BYTES``, 64 MiB), one Node (``MAX_OBJECT_BYTES``, 4 MiB: the API server
refuses objects over about 1.5 MiB), the body of an error answer (``ERROR_BODY_BYTES``,
64 KiB; only its start is kept). A larger answer raises ``TooLarge`` (a ``ValueError``,
so a ``TemporaryError`` for the one-shot reads and a retried failure for the watcher). The
client's own retries are bounded (``CLIENT_RETRIES``: at most one more try, never after
an HTTP status) so that a hung server costs two read timeouts at most, not four.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from xcluster_cni_lib.core.errors import InputError, TemporaryError, shorten
from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.core.values import NO_ANNOTATIONS, Annotations, NodeFacts
from xcluster_cni_lib.sources.events import TooLarge
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.support.kubeconfig import (
    ClusterAccess,
    KubeconfigError,
    ca_data_for_ssl,
    load_in_cluster,
    load_kubeconfig,
    ssl_context,
)

__all__ = [
    "ERROR_BODY_BYTES",
    "MAX_OBJECT_BYTES",
    "MAX_PAGE_BYTES",
    "TooLarge",
    "api_client_for",
    "configuration_for",
    "get_node",
    "list_node_facts",
    "load_access",
    "load_api_client",
    "page_fetcher",
    "read_body",
]

log = jsonlog.get_logger(__name__)

# What a failed request can raise: the client's ApiException (HTTP status), urllib3's
# errors (connection refused, reset, timeouts, truncated chunked bodies), socket errors,
# and ValueError for a body that is not the JSON we expect. The API classes are typed
# for model objects, which we bypass with ``_preload_content=False``: used through Any.
# ``TooLarge`` is a ValueError too; it is named for readers.
REQUEST_ERRORS = (
    ApiException,
    urllib3.exceptions.HTTPError,
    OSError,
    TooLarge,
    ValueError,
    KeyError,
)

MiB = 1 << 20
#: The largest LIST page read (a page of 500 real nodes of 10-20 KB is 5-10 MB).
MAX_PAGE_BYTES = 64 * MiB
#: The largest single object read: one Node, one watch line (the API server's own limit
#: for an object is about 1.5 MiB).
MAX_OBJECT_BYTES = 4 * MiB
#: How much of an error answer's body is read (the start of a Status is enough).
ERROR_BODY_BYTES = 64 * 1024
#: Bytes asked of the connection per read: memory grows in steps this size at most.
READ_PIECE = 64 * 1024
#: The client's own retries: one more try after a refused connection or after a read
#: error (a pooled keep-alive connection the server closed meanwhile fails that way), so
#: a hung server costs at most two read timeouts, not four (urllib3's default); never
#: after an HTTP status. The callers retry with backoff themselves; the node source also
#: stops waiting after its ``request_timeout``, whatever the client does.
CLIENT_RETRIES = urllib3.util.Retry(
    total=2, connect=1, read=1, status=0, other=0, redirect=0, raise_on_redirect=False
)


def read_body(response: Any, *, limit: int, what: str) -> bytearray:
    """The whole body of ``response`` (a urllib3 response), read in pieces of
    ``READ_PIECE`` bytes into one growing buffer (linear time, memory at most ``limit``
    plus one piece). Raises ``TooLarge`` as soon as it is larger than ``limit`` bytes
    (at once when the ``Content-Length`` says so); the connection is closed then, else
    released to the pool."""
    ok = False
    try:
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise TooLarge(what, limit, int(length))
        body = bytearray()
        while True:
            piece = response.read(READ_PIECE)
            if not piece:
                break
            if len(body) + len(piece) > limit:
                body.clear()  # freed now, not when the traceback's frames are collected
                raise TooLarge(what, limit)
            body += piece
        ok = True
        return body
    finally:
        if ok:
            response.release_conn()
        else:
            _shut(response)


def _shut(response: Any) -> None:
    """Close a response whose body is not read to its end (the connection is not reused)."""
    for name in ("shutdown", "close"):
        method = getattr(response, name, None)
        if callable(method):
            try:
                method()
            except Exception:  # closing a dead socket may raise anything
                log.debug("closing a response failed", step=name)


class _BoundedApiClient(k8s_client.ApiClient):
    """An ApiClient whose requests default to a timeout (the client has none) and that
    reads at most ``ERROR_BODY_BYTES`` of an error answer's body (the client reads it
    whole before raising ``ApiException``)."""

    def __init__(self, configuration: Any, *, timeout: float | None) -> None:
        super().__init__(configuration)
        self.default_timeout = timeout

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("_request_timeout") is None and self.default_timeout is not None:
            kwargs["_request_timeout"] = self.default_timeout
        answer: Any = super().call_api(*args, **kwargs)
        status = getattr(answer, "status", 200)
        if not 200 <= status <= 299 and getattr(answer, "data", None) is None:
            raw = answer.response
            try:
                answer.data = raw.read(ERROR_BODY_BYTES)
            except (urllib3.exceptions.HTTPError, OSError):
                answer.data = b""
            _shut(raw)
        return answer


def load_access(
    kubeconfig: str | None = None, *, env: Mapping[str, str] | None = None
) -> ClusterAccess:
    """The ``ClusterAccess`` of ``kubeconfig`` (a path or ``:``-list), else ``$KUBECONFIG``,
    else the in-cluster service account when ``KUBERNETES_SERVICE_HOST`` is set, else
    ``~/.kube/config``. ``KubeconfigError`` names the file and key; when there is nothing
    to read, it says what was tried."""
    env = os.environ if env is None else env
    path = kubeconfig or env.get("KUBECONFIG") or None
    if path:
        return load_kubeconfig(path)
    if env.get("KUBERNETES_SERVICE_HOST"):
        return load_in_cluster(env)
    home = os.path.expanduser("~/.kube/config")
    if os.path.exists(home):
        return load_kubeconfig(home)
    raise KubeconfigError(
        "kubeconfig",
        "",
        f"none found (tried KUBECONFIG, in-cluster config: KUBERNETES_SERVICE_HOST unset, "
        f"kubeconfig {home}: no such file)",
    )


class _TokenFileHook:
    """A ``refresh_api_key_hook``: puts the token file's current token into the
    configuration whenever the file changed (kubelet swaps a rotated projected token in
    by a rename; a changed inode, mtime or size is a new token). Called before every
    request; one ``stat`` when nothing changed. A failed re-read keeps the old token."""

    def __init__(self, access: ClusterAccess, path: str) -> None:
        self.access = access
        self.path = path
        self.stamp: tuple[int, int, int] | None = None
        self._lock = threading.Lock()

    def __call__(self, configuration: Any) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            log.warning("token file unreadable", file=self.path, error=exc.strerror or str(exc))
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self.stamp:
            return
        with self._lock:
            if stamp == self.stamp:
                return
            try:
                value = self.access.authorization()
            except KubeconfigError as exc:
                log.warning("token file unreadable", file=self.path, error=exc.problem)
                return
            configuration.api_key["authorization"] = value
            if self.stamp is not None:
                log.info("token file re-read", file=self.path)
            self.stamp = stamp


def _private_dir() -> str:
    """A 0700 directory for client certificate data (urllib3 loads them from paths on
    every new connection), removed at exit."""
    directory = tempfile.mkdtemp(prefix="xcluster-cni-kube-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def _write_private(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def configuration_for(access: ClusterAccess) -> Any:
    """A ``kubernetes.client.Configuration`` for ``access``: the configured CA only,
    the client certificate, and the token (re-read from a token file when it changes).
    TLS material is checked now (``KubeconfigError``), as the IPAM plugin's client does."""
    if access.https:
        ssl_context(access)  # the same checks and errors as kubelite
    configuration: Any = k8s_client.Configuration()
    configuration.host = access.server.rstrip("/")
    configuration.retries = CLIENT_RETRIES
    configuration.verify_ssl = not access.insecure
    if access.insecure:
        log.warning(
            "TLS verification is off (insecure-skip-tls-verify: true)",
            kubeconfig=access.source,
            server=access.server,
        )
    else:
        configuration.ssl_ca_cert = access.ca_file
        if access.ca_data is not None:
            configuration.ca_cert_data = ca_data_for_ssl(access.ca_data)
    if access.tls_server_name:
        configuration.tls_server_name = access.tls_server_name
    cert, key = access.client_cert_file, access.client_key_file
    if access.client_cert_data is not None or access.client_key_data is not None:
        directory = _private_dir()
        if access.client_cert_data is not None:
            cert = _write_private(directory, "client.crt", access.client_cert_data)
        if access.client_key_data is not None:
            key = _write_private(directory, "client.key", access.client_key_data)
    configuration.cert_file, configuration.key_file = cert, key
    if access.token_file is not None:
        hook = _TokenFileHook(access, access.token_file)
        hook(configuration)
        configuration.refresh_api_key_hook = hook
    else:
        authorization = access.authorization()
        if authorization:
            configuration.api_key["authorization"] = authorization
    return configuration


def load_api_client(kubeconfig: str | None = None, *, timeout: float | None = None) -> Any:
    """An ``ApiClient`` for ``load_access(kubeconfig)``.

    ``timeout`` (seconds) becomes the default timeout of every request made through the
    client. Raises ``KubeconfigError`` (an ``InputError``) naming the file and the key.
    """
    return api_client_for(load_access(kubeconfig), timeout=timeout)


def api_client_for(access: ClusterAccess, *, timeout: float | None = None) -> Any:
    """An ``ApiClient`` for ``access`` (see ``configuration_for``)."""
    configuration = configuration_for(access)
    log.debug("api client configured", source=access.source, server=access.server)
    return _BoundedApiClient(configuration, timeout=timeout)


def status_of(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, ApiException) else None


def describe(exc: BaseException) -> str:
    """A short text for a failed request (no response body: it may be large)."""
    if isinstance(exc, ApiException):
        return shorten(f"HTTP {exc.status} {exc.reason}".strip())
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason  # the error itself, not the pool's retry bookkeeping
    return shorten(f"{type(exc).__name__}: {exc}")


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER: Any = json.JSONDecoder()  # scan_once is not in the stubs


def _scan_list(data: bytes | bytearray, metadata: dict[str, Any]) -> Iterator[Any]:
    """Yield the ``items`` of a list document one at a time, filling ``metadata`` with its
    other top-level keys, so a page is never held as one big parsed tree (faster and
    lighter than ``json.loads`` for pages of 13 KB nodes). Raises ``ValueError`` on
    malformed JSON."""
    text = data.decode()
    scan = _DECODER.scan_once
    whitespace = _WHITESPACE.match

    def skip(text: str, i: int) -> int:
        match = whitespace(text, i)
        return match.end() if match else i

    try:
        i = skip(text, 0)
        if text[i] != "{":
            raise ValueError("a list must be a JSON object")
        i = skip(text, i + 1)
        while text[i] != "}":
            if text[i] != '"':
                raise ValueError(f"expected a key at offset {i}")
            key, i = scan(text, i)
            i = skip(text, i)
            if text[i] != ":":
                raise ValueError(f"expected ':' at offset {i}")
            i = skip(text, i + 1)
            if key == "items" and text[i] == "[":
                i = skip(text, i + 1)
                while text[i] != "]":
                    item, i = scan(text, i)
                    yield item
                    i = skip(text, i)
                    if text[i] == ",":
                        i = skip(text, i + 1)
                    elif text[i] != "]":
                        raise ValueError(f"expected ',' or ']' at offset {i}")
                i += 1
            else:
                metadata[key], i = scan(text, i)
            i = skip(text, i)
            if text[i] == ",":
                i = skip(text, i + 1)
            elif text[i] != "}":
                raise ValueError(f"expected ',' or '}}' at offset {i}")
    except (IndexError, StopIteration) as exc:
        raise ValueError("truncated JSON list") from exc
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_list_pages(
    fetch_page: Callable[..., bytes | bytearray],
    *,
    page_size: int,
    annotations: Annotations,
    request_timeout: Any = None,
    field_selector: str | None = None,
    convert: Callable[[Mapping[str, Any]], Any] | None = None,
) -> tuple[list[Any], str]:
    """Every node's facts and the list's RV. ``fetch_page(**list_node_kwargs)`` returns
    one page's body (see ``page_fetcher``); one page is held at a time. ``convert``
    replaces ``extract_facts`` (e.g. to keep whole objects); ``field_selector`` narrows
    the list (e.g. ``metadata.name=<node>``)."""
    facts: list[Any] = []
    token: str | None = None
    resource_version = ""
    if convert is None:
        convert = partial(extract_facts, annotations=annotations)
    while True:
        kwargs: dict[str, Any] = {"limit": page_size, "_preload_content": False}
        if field_selector:
            kwargs["field_selector"] = field_selector
        if token:
            kwargs["_continue"] = token
        if request_timeout is not None:
            kwargs["_request_timeout"] = request_timeout
        data = fetch_page(**kwargs)
        top: dict[str, Any] = {}
        for item in _scan_list(data, top):
            if isinstance(item, dict):
                facts.append(convert(item))
        del data
        metadata = top.get("metadata")
        if not isinstance(metadata, dict):
            raise ValueError("the node list has no metadata")
        rv = metadata.get("resourceVersion")
        if isinstance(rv, str) and rv:
            resource_version = rv
        continued = metadata.get("continue")
        token = continued if isinstance(continued, str) and continued else None
        if not token:
            return facts, resource_version


def page_fetcher(
    list_node: Callable[..., Any], *, limit: int = MAX_PAGE_BYTES
) -> Callable[..., bytearray]:
    """A ``fetch_page`` for ``read_list_pages``: calls ``list_node`` (the API's, with
    ``_preload_content=False``) and reads the page with a cap of ``limit`` bytes."""

    def fetch(**kwargs: Any) -> bytearray:
        return read_body(list_node(**kwargs), limit=limit, what="node list page")

    return fetch


def list_node_facts(
    api_client: Any,
    *,
    annotations: Annotations = NO_ANNOTATIONS,
    page_size: int = 500,
    max_page_bytes: int = MAX_PAGE_BYTES,
) -> list[NodeFacts]:
    """The facts of every node (read with ``annotations``), in pages of ``page_size``
    (each at most ``max_page_bytes``). Raises ``TemporaryError`` when the API cannot be
    read or answers with a page over the cap."""
    api = k8s_client.CoreV1Api(api_client)
    try:
        facts, _ = read_list_pages(
            page_fetcher(api.list_node, limit=max_page_bytes),
            page_size=page_size,
            annotations=annotations,
        )
    except REQUEST_ERRORS as exc:
        raise TemporaryError(f"cannot list nodes: {describe(exc)}") from exc
    return facts


def get_node(api_client: Any, name: str) -> dict[str, Any] | None:
    """The Node named ``name`` as a dict, or None when it does not exist.

    Raises ``TemporaryError`` when the API server cannot be reached, answers 5xx, 408 or
    429, and ``InputError`` on other refusals (401/403: the credentials or RBAC are wrong).
    """
    api: Any = k8s_client.CoreV1Api(api_client)
    try:
        response = api.read_node(name, _preload_content=False)
        node = json.loads(read_body(response, limit=MAX_OBJECT_BYTES, what=f"node {name}"))
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status in (408, 429) or not exc.status or exc.status >= 500:
            raise TemporaryError(f"cannot read node {name}: {describe(exc)}") from exc
        raise InputError(f"cannot read node {name}: {describe(exc)}") from exc
    except (urllib3.exceptions.HTTPError, OSError, ValueError, RecursionError) as exc:
        raise TemporaryError(f"cannot read node {name}: {describe(exc)}") from exc
    if not isinstance(node, dict):
        raise TemporaryError(f"cannot read node {name}: the answer is not an object")
    return node
