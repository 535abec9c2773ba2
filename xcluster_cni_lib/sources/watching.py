"""The Kubernetes node source: a paged LIST, then a WATCH with bookmarks, kept alive.

``KubeNodeSource(api_client, ...)`` is a ``NodeSource`` for the daemon; the client comes
from ``sources.kube.load_api_client``. Events become ``NodeFacts`` at once (raw JSON
lines, no model objects); the sink only learns what changed.

Nothing the API server sends can stop the source or exhaust its memory: LIST pages and
watch lines are read with caps (``max_page_bytes``, ``max_line_bytes``); a malformed
event is skipped and counted; a request that does not answer in time, an answer over a
cap, a server that keeps answering 410 Gone or a watch that stays silent marks the sink
unhealthy with a reason, and the source retries with backoff.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from xcluster_cni_lib.core.errors import shorten
from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.core.ports import NodeSink
from xcluster_cni_lib.core.values import NO_ANNOTATIONS, Annotations
from xcluster_cni_lib.sources.events import LineReader, MalformedEvent, TooLarge, parse_event
from xcluster_cni_lib.sources.kube import (
    MAX_OBJECT_BYTES,
    MAX_PAGE_BYTES,
    REQUEST_ERRORS,
    describe,
    read_body,
    read_list_pages,
    status_of,
)
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.support.memory import release_free_memory

__all__ = ["RESOURCES", "KubeNodeSource", "RequestTimeout"]

log = jsonlog.get_logger(__name__)

CONNECT_TIMEOUT = 10.0
DEFAULT_REQUEST_TIMEOUT = 30.0  # a LIST page, or a watch's response headers, in all
DEFAULT_IDLE_TIMEOUT = 90.0  # real API servers send a bookmark about once a minute
DEFAULT_GONE_LIMIT = 3  # consecutive 410 Gone answers without a working watch: unhealthy
MALFORMED_LOGGED = 10  # malformed events logged per watch stream; the rest only counted
STOP_POLL = 0.2
WATCH_PIECE = 64 * 1024


class RequestTimeout(TimeoutError):
    """A request did not answer (a LIST page in full, a watch its headers) in time."""


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


def _shutdown(response: Any) -> None:
    with contextlib.suppress(Exception):  # racing with the reader's own close
        response.shutdown()


def _pieces(response: Any) -> Iterator[bytes]:
    """The body of a streaming response in pieces of at most ``WATCH_PIECE`` bytes, each
    as soon as it arrives (never a whole HTTP chunk, which may be any size)."""
    if getattr(response, "chunked", False):
        yield from response.stream(WATCH_PIECE, decode_content=False)
        return
    while piece := response.read1(WATCH_PIECE, decode_content=False):
        yield piece


#: What the source can list and watch: resource -> (API class, list method, namespaced).
#: Namespaced objects are keyed ``namespace/name`` (``sink.delete`` receives that key).
RESOURCES: dict[str, tuple[str, str, bool]] = {
    "nodes": ("CoreV1Api", "list_node", False),
    "pods": ("CoreV1Api", "list_pod_for_all_namespaces", True),
    "namespaces": ("CoreV1Api", "list_namespace", False),
    "networkpolicies": ("NetworkingV1Api", "list_network_policy_for_all_namespaces", True),
}


class KubeNodeSource:
    """A ``NodeSource`` backed by the Kubernetes API.

    ``run`` lists every node in pages of ``page_size`` and calls ``sink.replace_all`` once
    per complete list; then it watches from the list's resourceVersion with bookmarks,
    calling ``sink.upsert``/``sink.delete`` per event. A 410 Gone (HTTP or ERROR event)
    means re-list; a dropped stream, a stream that ends after ``watch_timeout`` seconds, or
    one silent for ``idle_timeout`` seconds (default 90: real servers bookmark about once a
    minute) is reopened from the last resourceVersion seen. Failed requests are retried
    forever with jittered exponential backoff (``backoff_base`` doubling up to
    ``backoff_max``). ``max_iterations`` bounds the number of list/watch rounds (for
    tests). ``run`` returns within about a second of ``stop``, also while a slow server has
    not answered yet (requests wait in a worker thread that is abandoned).

    Bounds (all constructor parameters): a LIST page must arrive in full, and a watch's
    response headers, within ``request_timeout`` seconds (default 30); a page may be
    ``max_page_bytes`` long (64 MiB), a watch line ``max_line_bytes`` (4 MiB). A larger
    answer is a failed request, never read further.

    Health: ``sink.set_healthy(True)`` after a complete list or an opened watch;
    ``sink.set_healthy(False, reason)`` after a failed request (unreachable, HTTP error,
    timeout, answer over a cap), ``gone_limit`` (3) consecutive 410 Gone answers with no
    event in between, or a silent stream. After the last three, and after an answer over
    a cap, health comes back only with the first valid event or bookmark of a new stream,
    so a server that fails the same way each time stays unhealthy. The current reason is
    ``unhealthy_reason``. A stream that ends without one valid event is reopened after a
    backoff (no hot loop of reconnects); when it held only malformed events, that too
    marks the source unhealthy.

    Malformed events (not JSON, not an object, no or unknown type, object or metadata not
    an object, no name) are skipped, counted in ``malformed_events`` and logged (the first
    ten per stream) with the line shortened. Nothing an event holds ends ``run``: an
    unexpected error restarts the watch after a backoff.

    Counters for metrics: ``lists`` (complete lists), ``relists`` (lists after the first),
    ``restarts`` (watch streams reopened), ``errors`` (failed requests), ``events``,
    ``malformed_events``.

    ``field_selector`` narrows list and watch (``metadata.name=<node>``: one node);
    ``convert`` replaces ``extract_facts``: the sink then receives what it returns (e.g.
    the whole object, for the served IPAM's own node: ``daemon.ownnode``).

    ``resource`` (a key of ``RESOURCES``, default ``nodes``) lists and watches another
    kind the same way, with the same care (the NetworkPolicy agent's pods, namespaces and
    policies); give a ``convert`` then. ``sink.delete`` receives ``namespace/name`` for
    namespaced kinds.
    """

    def __init__(
        self,
        api_client: Any,
        *,
        resource: str = "nodes",
        annotations: Annotations = NO_ANNOTATIONS,
        field_selector: str | None = None,
        convert: Callable[[Mapping[str, Any]], Any] | None = None,
        page_size: int = 500,
        watch_timeout: float = 300,
        idle_timeout: float | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_page_bytes: int = MAX_PAGE_BYTES,
        max_line_bytes: int = MAX_OBJECT_BYTES,
        gone_limit: int = DEFAULT_GONE_LIMIT,
        backoff_base: float = 0.2,
        backoff_max: float = 30.0,
        max_iterations: int | None = None,
    ) -> None:
        if resource not in RESOURCES:
            raise ValueError(f"unknown resource {resource!r}: one of {', '.join(RESOURCES)}")
        api_class, method, self.namespaced = RESOURCES[resource]
        self.resource = resource
        self._list_objects: Callable[..., Any] = getattr(
            getattr(k8s_client, api_class)(api_client), method
        )
        self.annotations = annotations
        self.field_selector = field_selector
        self.convert: Callable[[Mapping[str, Any]], Any] = convert or partial(
            extract_facts, annotations=annotations
        )
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.idle_timeout = DEFAULT_IDLE_TIMEOUT if idle_timeout is None else idle_timeout
        self.request_timeout = request_timeout
        self.max_page_bytes = max_page_bytes
        self.max_line_bytes = max_line_bytes
        self.gone_limit = max(1, gone_limit)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_iterations = max_iterations
        self.lists = 0
        self.relists = 0
        self.restarts = 0
        self.errors = 0
        self.events = 0
        self.malformed_events = 0
        self.resource_version: str | None = None
        self.unhealthy_reason: str | None = None
        self._healthy: bool | None = None
        self._suspect = False  # healthy again only after a valid event of a new stream
        self._delivered = False  # the current stream delivered an event
        self._stream_malformed = 0
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
        empty = 0  # consecutive streams that ended without one valid event
        iterations = 0
        while not stop.is_set():
            if self.max_iterations is not None and iterations >= self.max_iterations:
                return
            iterations += 1
            self._delivered = False
            request = "list" if self.resource_version is None else "watch"
            try:
                if self.resource_version is None:
                    self._list(sink, stop)
                    failures = 0
                self._watch(sink, stop)
                failures = gone_streak = 0
                if self._delivered or stop.is_set():
                    empty = 0
                    continue
                # a stream that ended at once: no hot loop of reconnects
                empty += 1
                delay = self._backoff(empty)
                if self._stream_malformed:
                    self._suspect = True
                    self._set_healthy(sink, False, "the watch delivered only malformed events")
            except _Stopped:
                return
            except _Gone as exc:
                gone_streak = 1 if self._delivered else gone_streak + 1
                delay = self._gone(sink, str(exc), gone_streak)
            except _Idle as exc:
                log.warning(
                    "watch restarting", reason=str(exc), resource_version=self.resource_version
                )
                self._suspect = True
                self._set_healthy(sink, False, f"watch silent: {exc}")
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
                    gone_streak += 1
                    delay = self._gone(sink, "watch refused with HTTP 410 Gone", gone_streak)
                else:
                    failures += 1
                    delay = self._failed(sink, request, describe(exc), failures)
                    if isinstance(exc, TooLarge):
                        self._suspect = True
            except Exception as exc:  # last resort: bad data must not end the source
                if stop.is_set():
                    return
                failures += 1
                self._suspect = True
                delay = self._failed(sink, request, describe(exc), failures, unexpected=True)
            stop.wait(delay)

    def _gone(self, sink: NodeSink, reason: str, streak: int) -> float:
        """Re-list after a 410: at once the first time, with backoff when it repeats;
        ``gone_limit`` in a row (no event in between) mark the source unhealthy."""
        log.info("re-listing nodes", reason=reason, resource_version=self.resource_version)
        self.resource_version = None
        if streak >= self.gone_limit:
            self._suspect = True
            self._set_healthy(
                sink, False, f"{streak} consecutive 410 Gone answers without a working watch"
            )
        return 0.0 if streak == 1 else self._backoff(streak)

    def _failed(
        self, sink: NodeSink, request: str, error: str, failures: int, *, unexpected: bool = False
    ) -> float:
        self.errors += 1
        delay = self._backoff(failures)
        self._set_healthy(sink, False, f"{request} failed: {error}")
        fields: dict[str, Any] = {
            "request": request,
            "error": error,
            "failures": failures,
            "retry_in_s": round(delay, 3),
        }
        if unexpected:
            log.error("node source error; restarting the watch", **fields)
        else:
            log.warning("node request failed; retrying", **fields)
        return delay

    def _backoff(self, failures: int) -> float:
        delay = min(self.backoff_max, self.backoff_base * 2 ** max(0, failures - 1))
        return float(delay * random.uniform(0.5, 1.0))

    def _set_healthy(self, sink: NodeSink, healthy: bool, reason: str | None = None) -> None:
        reason = None if healthy else shorten(reason or "unknown")
        if self._healthy is healthy and self.unhealthy_reason == reason:
            return
        self._healthy = healthy
        self.unhealthy_reason = reason
        if healthy:
            sink.set_healthy(True)
        else:
            sink.set_healthy(False, reason=reason)

    def _close_on_stop(self, stop: threading.Event, done: threading.Event) -> None:
        while not done.is_set():
            if stop.wait(STOP_POLL):
                with self._response_lock:
                    response = self._response
                if response is not None:
                    _shutdown(response)
                done.wait(STOP_POLL)

    def _interruptible(
        self, stop: threading.Event, work: Callable[[dict[str, Any]], Any], *, what: str
    ) -> Any:
        """``work(box)`` in a worker thread, waited for at most ``request_timeout``
        seconds (``RequestTimeout`` then) and only until ``stop`` (``_Stopped``). ``work``
        puts its response into ``box["response"]`` as soon as it has one, so that an
        abandoned read can be shut down; an answer that comes after is closed."""
        box: dict[str, Any] = {}
        done = threading.Event()
        abandoned = threading.Event()

        def run_work() -> None:
            try:
                box["result"] = work(box)
            except BaseException as exc:  # handed over to the waiting thread
                box["error"] = exc
            finally:
                done.set()
                if abandoned.is_set():
                    for key in ("response", "result"):
                        if key in box:
                            _close(box[key])

        threading.Thread(target=run_work, name="kube-request", daemon=True).start()
        deadline = time.monotonic() + self.request_timeout
        while not done.wait(STOP_POLL):
            if stop.is_set() or time.monotonic() >= deadline:
                abandoned.set()
                if "response" in box:
                    _shutdown(box["response"])
                if done.is_set() and "result" in box:
                    _close(box["result"])
                if stop.is_set():
                    raise _Stopped()
                raise RequestTimeout(f"{what} did not answer within {self.request_timeout:g} s")
        if "error" in box:
            error = box.pop("error")  # no cycle box -> error -> traceback -> box
            raise error
        return box.pop("result")

    # -- list -----------------------------------------------------------------------------

    def _fetch_page(self, stop: threading.Event, **kwargs: Any) -> bytearray:
        def work(box: dict[str, Any]) -> bytearray:
            response = box["response"] = self._list_objects(**kwargs)
            what = f"{self.resource.removesuffix('s')} list page"
            return read_body(response, limit=self.max_page_bytes, what=what)

        page: bytearray = self._interruptible(stop, work, what="a LIST page")
        return page

    def _list(self, sink: NodeSink, stop: threading.Event) -> None:
        started = time.monotonic()
        try:
            facts, rv = read_list_pages(
                lambda **kwargs: self._fetch_page(stop, **kwargs),
                page_size=self.page_size,
                annotations=self.annotations,
                field_selector=self.field_selector,
                convert=self.convert,
                # the client's own timeout only frees the abandoned worker: the wait for
                # the page ends at request_timeout (RequestTimeout, a clear reason)
                request_timeout=(CONNECT_TIMEOUT, self.request_timeout + 1),
            )
        except ApiException as exc:
            if exc.status == 410:
                raise _Gone("the list's continue token expired") from exc
            raise
        if not rv:
            raise ValueError(f"the {self.resource} list has no metadata.resourceVersion")
        if self.lists:
            self.relists += 1
        self.lists += 1
        listed = len(facts)
        sink.replace_all(facts)
        del facts
        # the pages and their parsed objects (2,000 nodes: ~15 MB) are garbage now; glibc
        # would keep that peak until some later trim (docs/reliability.md, finding 8)
        release_free_memory()
        if not self._suspect:
            self._set_healthy(sink, True)
        self.resource_version = rv
        log.info(
            f"{self.resource} listed",
            **{self.resource: listed},
            resource_version=rv,
            relist=self.relists > 0,
            duration_s=round(time.monotonic() - started, 3),
        )

    # -- watch ----------------------------------------------------------------------------

    def _watch(self, sink: NodeSink, stop: threading.Event) -> None:
        """Watch from ``self.resource_version`` until the stream ends cleanly or ``stop``;
        raises ``_Gone``, ``_Idle``, ``_Broken``, ``TooLarge`` or a request error."""
        rv = self.resource_version
        selector = {"field_selector": self.field_selector} if self.field_selector else {}

        def work(box: dict[str, Any]) -> Any:
            return self._list_objects(
                **selector,
                watch=True,
                allow_watch_bookmarks=True,
                resource_version=rv,
                timeout_seconds=max(1, int(self.watch_timeout)),
                _preload_content=False,
                _request_timeout=(CONNECT_TIMEOUT, self.idle_timeout),
            )

        response = self._interruptible(stop, work, what="the watch")
        with self._response_lock:
            self._response = response
        if not self._suspect:
            self._set_healthy(sink, True)
        self._stream_malformed = 0
        reader = LineReader(self.max_line_bytes, "watch line")
        try:
            for line in reader.lines(_pieces(response)):
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
        except TooLarge:
            self.restarts += 1
            raise
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

    def _handle(self, sink: NodeSink, line: bytes) -> None:
        try:
            event = parse_event(line)
        except MalformedEvent as exc:
            self._skip(exc.reason, exc.value)
            return
        self.events += 1
        obj = event.obj
        if event.type == "ERROR":
            if obj.get("code") == 410:
                self.restarts += 1
                raise _Gone(f"watch ERROR event: {shorten(str(obj.get('message', '410 Gone')))}")
            raise ValueError(f"watch ERROR event: {shorten(str(obj.get('message') or obj))}")
        try:
            if event.type in ("ADDED", "MODIFIED"):
                sink.upsert(self.convert(obj))
            elif event.type == "DELETED":
                sink.delete(self._key(event.obj, event.name))
        except Exception as exc:  # a node no part of the agent can take: skip it
            self._skip(f"not accepted: {describe(exc)}", shorten(line.decode("utf-8", "replace")))
            return
        self._delivered = True
        if self._suspect:  # a working stream again
            self._suspect = False
            self._set_healthy(sink, True)
        if event.resource_version is not None:
            self.resource_version = event.resource_version

    def _key(self, obj: Mapping[str, Any], name: str) -> str:
        if not self.namespaced:
            return name
        return f"{obj.get('metadata', {}).get('namespace') or ''}/{name}"

    def _skip(self, reason: str, value: str) -> None:
        self.malformed_events += 1
        self._stream_malformed += 1
        if self._stream_malformed <= MALFORMED_LOGGED:
            log.warning(
                "malformed watch event skipped",
                reason=reason,
                value=value,
                skipped_total=self.malformed_events,
            )
            if self._stream_malformed == MALFORMED_LOGGED:
                log.warning(
                    "more malformed watch events on this stream are counted, not logged",
                    resource_version=self.resource_version,
                )
