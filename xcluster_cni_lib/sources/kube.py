"""The Kubernetes API adapter: the only module that imports ``kubernetes``.

It turns Node objects into compact ``NodeFacts`` at the boundary and never keeps the
client's model objects or raw Node dicts: lists are read as raw JSON
(``_preload_content=False``) page by page, watch events as raw JSON lines.

- ``load_api_client(kubeconfig=None, *, timeout=None)``: an ``ApiClient`` from an
  explicit kubeconfig, else ``$KUBECONFIG``, else the in-cluster service account, else
  ``~/.kube/config``.
- ``KubeNodeSource``: a ``NodeSource`` (paged LIST, then WATCH with bookmarks; re-list on
  410 Gone; reconnect on dropped or silent streams with jittered exponential backoff).
- ``list_node_facts(api_client, ...)`` and ``get_node(api_client, name)``: one-shot reads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import urllib3
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from xcluster_cni_lib.core.errors import InputError, TemporaryError
from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.core.ports import NodeSink
from xcluster_cni_lib.core.values import NodeFacts

__all__ = [
    "KubeNodeSource",
    "get_node",
    "list_node_facts",
    "load_api_client",
]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
LIST_READ_TIMEOUT = 60.0
DEFAULT_IDLE_TIMEOUT = 90.0  # real API servers send a bookmark about once a minute
STOP_POLL = 0.2

# What a failed request can raise: the client's ApiException (HTTP status), urllib3's
# errors (connection refused, reset, timeouts, truncated chunked bodies), socket errors,
# and ValueError for a body that is not the JSON we expect.
# The config loaders are untyped; the API classes are typed for model objects, which we
# bypass with ``_preload_content=False``: both are used through ``Any``.
_load_kube_config: Any = k8s_config.load_kube_config
_load_incluster_config: Any = k8s_config.load_incluster_config
_REQUEST_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError, KeyError)


class _TimeoutApiClient(k8s_client.ApiClient):
    """An ApiClient whose requests default to a timeout (the client has none)."""

    def __init__(self, configuration: Any, *, timeout: float) -> None:
        super().__init__(configuration)
        self.default_timeout = timeout

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("_request_timeout") is None:
            kwargs["_request_timeout"] = self.default_timeout
        return super().call_api(*args, **kwargs)


def load_api_client(kubeconfig: str | None = None, *, timeout: float | None = None) -> Any:
    """An ``ApiClient`` configured from ``kubeconfig`` (a path), else ``$KUBECONFIG``,
    else the in-cluster service account, else ``~/.kube/config``.

    ``timeout`` (seconds) becomes the default timeout of every request made through the
    client. Raises ``InputError`` naming what was tried when none works.
    """
    configuration = k8s_client.Configuration()
    tried: list[str] = []
    path = kubeconfig or os.environ.get("KUBECONFIG") or None
    try:
        if path:
            tried.append(f"kubeconfig {path}")
            _load_kube_config(config_file=path, client_configuration=configuration)
        else:
            try:
                tried.append("in-cluster config")
                _load_incluster_config(client_configuration=configuration)
            except ConfigException:
                home = os.path.expanduser("~/.kube/config")
                tried.append(f"kubeconfig {home}")
                if not os.path.exists(home):
                    raise
                _load_kube_config(config_file=home, client_configuration=configuration)
    except (ConfigException, OSError, ValueError, TypeError, KeyError, yaml.YAMLError) as exc:
        raise InputError(
            f"cannot configure the Kubernetes client (tried {', '.join(tried)}): {exc}"
        ) from exc
    if timeout is not None:
        return _TimeoutApiClient(configuration, timeout=timeout)
    return k8s_client.ApiClient(configuration)


def _status_of(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, ApiException) else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}".strip()
    return f"{type(exc).__name__}: {exc}"


class _Gone(Exception):
    """The API server answered 410 Gone: our resourceVersion is too old; re-list."""


class _Stopped(Exception):
    """``stop`` was set while a request was waiting for its answer."""


class _Idle(Exception):
    """A watch stream delivered nothing for longer than the idle timeout."""


class _Broken(Exception):
    """A watch stream broke off (connection reset, truncated chunked body)."""


def _close(response: Any) -> None:
    with contextlib.suppress(Exception):  # closing a dead socket may raise anything
        response.close()


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER: Any = json.JSONDecoder()  # scan_once is not in the stubs


def _scan_list(data: bytes, metadata: dict[str, Any]) -> Iterator[Any]:
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


def _read_list_pages(
    list_node: Callable[..., Any],
    *,
    page_size: int,
    cidr_annotation: str | None,
    address_annotation: str | None,
    request_timeout: Any = None,
) -> tuple[list[NodeFacts], str]:
    """Every node's facts (one page of raw JSON held at a time) and the list's RV."""
    facts: list[NodeFacts] = []
    token: str | None = None
    resource_version = ""
    while True:
        kwargs: dict[str, Any] = {"limit": page_size, "_preload_content": False}
        if token:
            kwargs["_continue"] = token
        if request_timeout is not None:
            kwargs["_request_timeout"] = request_timeout
        response = list_node(**kwargs)
        try:
            data = response.data
        finally:
            response.release_conn()
        top: dict[str, Any] = {}
        for item in _scan_list(data, top):
            if isinstance(item, dict):
                facts.append(
                    extract_facts(
                        item,
                        cidr_annotation=cidr_annotation,
                        address_annotation=address_annotation,
                    )
                )
        del data
        metadata = top.get("metadata")
        if not isinstance(metadata, dict):
            raise ValueError("the node list has no metadata")
        resource_version = metadata.get("resourceVersion") or resource_version
        token = metadata.get("continue") or None
        if not token:
            return facts, resource_version


def list_node_facts(
    api_client: Any,
    *,
    cidr_annotation: str | None = None,
    address_annotation: str | None = None,
    page_size: int = 500,
) -> list[NodeFacts]:
    """The facts of every node, read in pages of ``page_size``. Raises ``TemporaryError``
    when the API cannot be read."""
    api = k8s_client.CoreV1Api(api_client)
    try:
        facts, _ = _read_list_pages(
            api.list_node,
            page_size=page_size,
            cidr_annotation=cidr_annotation,
            address_annotation=address_annotation,
        )
    except _REQUEST_ERRORS as exc:
        raise TemporaryError(f"cannot list nodes: {_describe(exc)}") from exc
    return facts


def get_node(api_client: Any, name: str) -> dict[str, Any] | None:
    """The Node named ``name`` as a dict, or None when it does not exist.

    Raises ``TemporaryError`` when the API server cannot be reached, answers 5xx, 408 or
    429, and ``InputError`` on other refusals (401/403: the credentials or RBAC are wrong).
    """
    api: Any = k8s_client.CoreV1Api(api_client)
    try:
        response = api.read_node(name, _preload_content=False)
        try:
            node = json.loads(response.data)
        finally:
            response.release_conn()
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status in (408, 429) or not exc.status or exc.status >= 500:
            raise TemporaryError(f"cannot read node {name}: {_describe(exc)}") from exc
        raise InputError(f"cannot read node {name}: {_describe(exc)}") from exc
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        raise TemporaryError(f"cannot read node {name}: {_describe(exc)}") from exc
    if not isinstance(node, dict):
        raise TemporaryError(f"cannot read node {name}: the answer is not an object")
    return node


class KubeNodeSource:
    """A ``NodeSource`` backed by the Kubernetes API.

    ``run`` lists every node in pages of ``page_size`` and calls ``sink.replace_all`` once
    per complete list; then it watches from the list's resourceVersion with bookmarks,
    calling ``sink.upsert``/``sink.delete`` per event. A 410 Gone (HTTP or ERROR event)
    means re-list; a dropped stream, a stream that ends after ``watch_timeout`` seconds, or
    one silent for ``idle_timeout`` seconds (default 90: real servers bookmark about once a
    minute) is reopened from the last resourceVersion seen. Failed requests mark the sink
    unhealthy and are retried forever with jittered exponential backoff
    (``backoff_base`` doubling up to ``backoff_max``); ``sink.set_healthy`` is called when
    health changes (``True`` after a complete list or an opened watch). ``max_iterations``
    bounds the number of list/watch rounds (for tests). ``run`` returns within about a
    second of ``stop``, also while a slow server has not answered yet (requests wait in a
    worker thread that is abandoned).

    Counters for metrics: ``lists`` (complete lists), ``relists`` (lists after the first),
    ``restarts`` (watch streams reopened), ``errors`` (failed requests), ``events``.
    """

    def __init__(
        self,
        api_client: Any,
        *,
        cidr_annotation: str | None = None,
        address_annotation: str | None = None,
        page_size: int = 500,
        watch_timeout: float = 300,
        idle_timeout: float | None = None,
        backoff_base: float = 0.2,
        backoff_max: float = 30.0,
        max_iterations: int | None = None,
    ) -> None:
        self._api: Any = k8s_client.CoreV1Api(api_client)
        self.cidr_annotation = cidr_annotation
        self.address_annotation = address_annotation
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.idle_timeout = DEFAULT_IDLE_TIMEOUT if idle_timeout is None else idle_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_iterations = max_iterations
        self.lists = 0
        self.relists = 0
        self.restarts = 0
        self.errors = 0
        self.events = 0
        self.resource_version: str | None = None
        self._healthy: bool | None = None
        self._delivered = False  # the current stream delivered an event
        self._response: Any = None
        self._response_lock = threading.Lock()

    # -- the loop -------------------------------------------------------------------------

    def run(self, sink: NodeSink, stop: threading.Event) -> None:
        done = threading.Event()
        closer = threading.Thread(
            target=self._close_on_stop, args=(stop, done), name="kube-watch-closer", daemon=True
        )
        closer.start()
        try:
            self._loop(sink, stop)
        finally:
            done.set()
            closer.join()

    def _loop(self, sink: NodeSink, stop: threading.Event) -> None:
        failures = 0  # consecutive failed requests: the backoff exponent
        gone_streak = 0  # consecutive 410s with no event delivered in between
        iterations = 0
        while not stop.is_set():
            if self.max_iterations is not None and iterations >= self.max_iterations:
                return
            iterations += 1
            self._delivered = False
            try:
                if self.resource_version is None:
                    self._list(sink, stop)
                    failures = 0
                self._watch(sink, stop)
                failures = gone_streak = 0
                continue
            except _Stopped:
                return
            except _Gone as exc:
                log.info("re-listing nodes: %s", exc)
                self.resource_version = None
                gone_streak = 1 if self._delivered else gone_streak + 1
                if gone_streak == 1:
                    continue  # the first 410 re-lists at once; repeated ones back off
                delay = self._backoff(gone_streak)
            except _Idle as exc:
                log.warning("watch restarting: %s", exc)
                failures = 0
                continue
            except _Broken as exc:
                log.info("watch restarting: %s", exc)
                failures = 0
                delay = self._backoff(1)  # reconnect after a short jittered pause
            except _REQUEST_ERRORS as exc:
                if stop.is_set():
                    return
                if _status_of(exc) == 410:  # some servers refuse an old watch with HTTP 410
                    log.info("re-listing nodes: watch refused with 410 Gone")
                    self.resource_version = None
                    gone_streak += 1
                    if gone_streak == 1:
                        continue
                    delay = self._backoff(gone_streak)
                else:
                    self.errors += 1
                    failures += 1
                    self._set_healthy(sink, False)
                    log.warning(
                        "node %s failed (%s); retrying",
                        "list" if self.resource_version is None else "watch",
                        _describe(exc),
                    )
                    delay = self._backoff(failures)
            stop.wait(delay)

    def _backoff(self, failures: int) -> float:
        delay = min(self.backoff_max, self.backoff_base * 2 ** max(0, failures - 1))
        return float(delay * random.uniform(0.5, 1.0))

    def _set_healthy(self, sink: NodeSink, healthy: bool) -> None:
        if self._healthy is not healthy:
            self._healthy = healthy
            sink.set_healthy(healthy)

    def _close_on_stop(self, stop: threading.Event, done: threading.Event) -> None:
        while not done.is_set():
            if stop.wait(STOP_POLL):
                with self._response_lock:
                    response = self._response
                if response is not None:
                    with contextlib.suppress(Exception):  # racing with the reader's close
                        response.shutdown()
                done.wait(STOP_POLL)

    def _interruptible(self, stop: threading.Event, call: Callable[..., Any], **kwargs: Any) -> Any:
        """``call(**kwargs)`` in a worker thread, so that a request stuck waiting for a slow
        server's answer cannot delay ``run``'s return after ``stop``: raises ``_Stopped``
        then, and the abandoned answer is closed when it comes."""
        box: dict[str, Any] = {}
        done = threading.Event()
        abandoned = threading.Event()

        def work() -> None:
            try:
                box["result"] = call(**kwargs)
            except BaseException as exc:  # handed over to the waiting thread
                box["error"] = exc
            finally:
                done.set()
                if abandoned.is_set() and "result" in box:
                    _close(box["result"])

        threading.Thread(target=work, name="kube-request", daemon=True).start()
        while not done.wait(STOP_POLL):
            if stop.is_set():
                abandoned.set()
                if done.is_set() and "result" in box:
                    _close(box["result"])
                raise _Stopped()
        if "error" in box:
            raise box["error"]
        return box["result"]

    # -- list -----------------------------------------------------------------------------

    def _list(self, sink: NodeSink, stop: threading.Event) -> None:
        started = time.monotonic()
        try:
            facts, rv = _read_list_pages(
                lambda **kwargs: self._interruptible(stop, self._api.list_node, **kwargs),
                page_size=self.page_size,
                cidr_annotation=self.cidr_annotation,
                address_annotation=self.address_annotation,
                request_timeout=(CONNECT_TIMEOUT, LIST_READ_TIMEOUT),
            )
        except ApiException as exc:
            if exc.status == 410:
                raise _Gone("the list's continue token expired") from exc
            raise
        if not rv:
            raise ValueError("the node list has no metadata.resourceVersion")
        if self.lists:
            self.relists += 1
        self.lists += 1
        sink.replace_all(facts)
        self._set_healthy(sink, True)
        self.resource_version = rv
        log.info(
            "listed %d nodes at resourceVersion %s in %.3f s",
            len(facts),
            rv,
            time.monotonic() - started,
        )

    # -- watch ----------------------------------------------------------------------------

    def _watch(self, sink: NodeSink, stop: threading.Event) -> None:
        """Watch from ``self.resource_version`` until the stream ends cleanly or ``stop``;
        raises ``_Gone``, ``_Idle``, ``_Broken`` or a request error."""
        rv = self.resource_version
        response = self._interruptible(
            stop,
            self._api.list_node,
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=rv,
            timeout_seconds=max(1, int(self.watch_timeout)),
            _preload_content=False,
            _request_timeout=(CONNECT_TIMEOUT, self.idle_timeout),
        )
        with self._response_lock:
            self._response = response
        self._set_healthy(sink, True)
        try:
            for line in self._lines(response):
                if stop.is_set():
                    return
                self._handle(sink, line)
        except urllib3.exceptions.ReadTimeoutError as exc:
            if stop.is_set():
                return
            self.restarts += 1
            raise _Idle(
                f"no event or bookmark for {self.idle_timeout:g} s, "
                f"resuming at resourceVersion {self.resource_version}"
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if stop.is_set():
                return
            self.restarts += 1
            raise _Broken(
                f"the stream broke ({_describe(exc)}), "
                f"resuming at resourceVersion {self.resource_version}"
            ) from exc
        finally:
            with self._response_lock:
                self._response = None
            _close(response)
        if not stop.is_set():
            self.restarts += 1
            log.debug(
                "watch restarting: the server ended the stream, resuming at resourceVersion %s",
                self.resource_version,
            )

    @staticmethod
    def _lines(response: Any) -> Iterator[bytes]:
        pending = b""
        for chunk in response.stream(amt=None, decode_content=False):
            pending += chunk
            if b"\n" not in chunk:
                continue
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield line
        if pending.strip():
            yield pending

    def _handle(self, sink: NodeSink, line: bytes) -> None:
        event = json.loads(line)
        kind = event.get("type")
        obj = event.get("object") or {}
        metadata = obj.get("metadata") or {}
        self.events += 1
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                self.restarts += 1
                raise _Gone(
                    f"watch from resourceVersion {self.resource_version}: "
                    f"{obj.get('message', '410 Gone')}"
                )
            raise ValueError(f"watch ERROR event: {obj.get('message') or obj}")
        if kind == "BOOKMARK":
            pass
        elif kind in ("ADDED", "MODIFIED"):
            sink.upsert(
                extract_facts(
                    obj,
                    cidr_annotation=self.cidr_annotation,
                    address_annotation=self.address_annotation,
                )
            )
        elif kind == "DELETED":
            name = metadata.get("name")
            if isinstance(name, str) and name:
                sink.delete(name)
        else:
            log.debug("ignoring watch event of type %r", kind)
        self._delivered = True
        new_rv = metadata.get("resourceVersion")
        if isinstance(new_rv, str) and new_rv:
            self.resource_version = new_rv
