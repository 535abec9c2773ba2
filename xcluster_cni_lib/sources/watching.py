"""The Kubernetes node source: a paged LIST, then a WATCH with bookmarks, kept alive.

``KubeNodeSource(api_client, ...)`` is a ``NodeSource`` for the daemon; the client comes
from ``sources.kube.load_api_client``. Events become ``NodeFacts`` at once (raw JSON
lines, no model objects); the sink only learns what changed.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.core.ports import NodeSink
from xcluster_cni_lib.core.values import NO_ANNOTATIONS, Annotations
from xcluster_cni_lib.sources.kube import REQUEST_ERRORS, describe, read_list_pages, status_of
from xcluster_cni_lib.support import jsonlog

__all__ = ["KubeNodeSource"]

log = jsonlog.get_logger(__name__)

CONNECT_TIMEOUT = 10.0
LIST_READ_TIMEOUT = 60.0
DEFAULT_IDLE_TIMEOUT = 90.0  # real API servers send a bookmark about once a minute
STOP_POLL = 0.2


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
        annotations: Annotations = NO_ANNOTATIONS,
        page_size: int = 500,
        watch_timeout: float = 300,
        idle_timeout: float | None = None,
        backoff_base: float = 0.2,
        backoff_max: float = 30.0,
        max_iterations: int | None = None,
    ) -> None:
        self._api: Any = k8s_client.CoreV1Api(api_client)
        self.annotations = annotations
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
                log.info(
                    "re-listing nodes", reason=str(exc), resource_version=self.resource_version
                )
                self.resource_version = None
                gone_streak = 1 if self._delivered else gone_streak + 1
                if gone_streak == 1:
                    continue  # the first 410 re-lists at once; repeated ones back off
                delay = self._backoff(gone_streak)
            except _Idle as exc:
                log.warning(
                    "watch restarting", reason=str(exc), resource_version=self.resource_version
                )
                failures = 0
                continue
            except _Broken as exc:
                log.info(
                    "watch restarting", reason=str(exc), resource_version=self.resource_version
                )
                failures = 0
                delay = self._backoff(1)  # reconnect after a short jittered pause
            except REQUEST_ERRORS as exc:
                if stop.is_set():
                    return
                if status_of(exc) == 410:  # some servers refuse an old watch with HTTP 410
                    log.info(
                        "re-listing nodes",
                        reason="watch refused with HTTP 410 Gone",
                        resource_version=self.resource_version,
                    )
                    self.resource_version = None
                    gone_streak += 1
                    if gone_streak == 1:
                        continue
                    delay = self._backoff(gone_streak)
                else:
                    self.errors += 1
                    failures += 1
                    self._set_healthy(sink, False)
                    delay = self._backoff(failures)
                    log.warning(
                        "node request failed; retrying",
                        request="list" if self.resource_version is None else "watch",
                        error=describe(exc),
                        failures=failures,
                        retry_in_s=round(delay, 3),
                    )
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
            facts, rv = read_list_pages(
                lambda **kwargs: self._interruptible(stop, self._api.list_node, **kwargs),
                page_size=self.page_size,
                annotations=self.annotations,
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
            "nodes listed",
            nodes=len(facts),
            resource_version=rv,
            relist=self.relists > 0,
            duration_s=round(time.monotonic() - started, 3),
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
            raise _Idle(f"no event or bookmark for {self.idle_timeout:g} s") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if stop.is_set():
                return
            self.restarts += 1
            raise _Broken(f"the stream broke: {describe(exc)}") from exc
        finally:
            with self._response_lock:
                self._response = None
            _close(response)
        if not stop.is_set():
            self.restarts += 1
            log.debug(
                "watch restarting",
                reason="the server ended the stream",
                resource_version=self.resource_version,
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
                raise _Gone(f"watch ERROR event: {obj.get('message', '410 Gone')}")
            raise ValueError(f"watch ERROR event: {obj.get('message') or obj}")
        if kind == "BOOKMARK":
            pass
        elif kind in ("ADDED", "MODIFIED"):
            sink.upsert(extract_facts(obj, annotations=self.annotations))
        elif kind == "DELETED":
            name = metadata.get("name")
            if isinstance(name, str) and name:
                sink.delete(name)
        else:
            log.debug("watch event ignored", type=kind)
        self._delivered = True
        new_rv = metadata.get("resourceVersion")
        if isinstance(new_rv, str) and new_rv:
            self.resource_version = new_rv
