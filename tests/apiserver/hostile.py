"""Hostile answers for the API-server double: what an adversarial review sends to the
daemon's node source, over real HTTP, generated lazily (a 100 MB answer costs the test
process one shared 1 MiB block, not 100 MB).

    from tests.apiserver.hostile import Hostile, huge_list_page

    hostile = Hostile(api)                       # installs itself as api.intercept
    hostile.on("list", huge_list_page(100 << 20), times=2)
    hostile.on("watch", watch_lines([b"[1,2]", ...]))
    hostile.on("list", hang())                   # never answers (until released)
    hostile.clear()

``on(verb, answer, times=None, resource=None)`` queues an answer for the next ``times``
requests of ``verb`` (``list``, ``watch``, ``get``, ...; ``None``: every request until
``clear``), of ``resource`` only when given (``"pods"``, ``"networkpolicies"``, ...);
other requests are served normally. ``sent[verb]`` counts the body bytes written for
hostile answers before the client went away; ``served[verb]`` the answers begun.

Answers (each a callable taking the request handler):

- ``huge_list_page(size, *, content_length=False)``: a valid NodeList whose nodes carry
  a 1 MiB filler annotation, ``size`` bytes in all, chunked (or with a
  ``Content-Length``).
- ``huge_watch_line(size)``: a watch stream whose first event never ends (no newline).
- ``watch_lines(lines, *, end=True)``: a watch stream of these raw lines (a newline is
  added to each), then the end of the stream (or, ``end=False``, silence).
- ``huge_error(size, status=500)``: an error answer with a body of ``size`` bytes.
- ``hang()``: no answer at all until ``Hostile.release()`` or the server stops.
"""

from __future__ import annotations

import collections
import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._server import ApiServerDouble

MiB = 1 << 20
_BLOCK = b"A" * MiB

Answer = Callable[[Any], None]


class Hostile:
    """Hostile answers for an ``ApiServerDouble`` (see the module docstring)."""

    def __init__(self, api: ApiServerDouble) -> None:
        self.api = api
        self._lock = threading.Lock()
        self._queue: list[tuple[str, str | None, Answer, int | None]] = []
        self.released = threading.Event()
        self.sent: collections.Counter[str] = collections.Counter()
        self.served: collections.Counter[str] = collections.Counter()
        api.intercept = self._intercept

    def on(
        self,
        verb: str,
        answer: Answer,
        *,
        times: int | None = None,
        resource: str | None = None,
    ) -> Hostile:
        with self._lock:
            self._queue.append((verb, resource, answer, times))
        return self

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    def release(self) -> None:
        """End every ``hang()``ing answer (the connection is closed)."""
        self.released.set()

    def _intercept(self, verb: str, handler: Any) -> bool:
        resource = getattr(handler, "resource", "")
        with self._lock:
            for i, (want, kind, answer, times) in enumerate(self._queue):
                if want != verb or kind not in (None, resource):
                    continue
                if times is not None:
                    if times <= 1:
                        del self._queue[i]
                    else:
                        self._queue[i] = (want, kind, answer, times - 1)
                self.served[verb] += 1
                break
            else:
                return False
        handler.close_connection = True
        handler.hostile_verb = verb
        handler.hostile = self
        with contextlib.suppress(OSError):  # the client hung up: what the cap does
            answer(handler)
        return True

    def _count(self, handler: Any, size: int) -> None:
        with self._lock:
            self.sent[handler.hostile_verb] += size


def _write(handler: Any, data: bytes, *, chunked: bool) -> None:
    if not data:
        return  # an empty chunk would end the body
    if chunked:
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
    else:
        handler.wfile.write(data)
    handler.hostile._count(handler, len(data))


def _start(handler: Any, status: int, *, length: int | None) -> bool:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    if length is None:
        handler.send_header("Transfer-Encoding", "chunked")
    else:
        handler.send_header("Content-Length", str(length))
    handler.end_headers()
    return length is None


def _end(handler: Any, chunked: bool) -> None:
    if chunked:
        handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()


def _filler_nodes(size: int) -> Iterator[bytes]:
    """Node objects with a 1 MiB filler annotation, about ``size`` bytes in all."""
    index = 0
    produced = 0
    while produced < size:
        head = json.dumps(
            {"metadata": {"name": f"fat-{index}", "annotations": {"filler": "@"}}}
        ).encode()
        before, after = head.split(b"@")
        pieces = [b"," if index else b"", before, _BLOCK, after]
        yield from pieces
        produced += sum(len(p) for p in pieces)
        index += 1


def huge_list_page(size: int, *, content_length: bool = False, rv: str = "1") -> Answer:
    """A NodeList page of about ``size`` bytes (valid JSON, nodes with a filler
    annotation)."""
    head = b'{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"%s"},"items":[' % (
        rv.encode()
    )
    tail = b"]}"

    def answer(handler: Any) -> None:
        length = None
        if content_length:
            length = len(head) + sum(len(p) for p in _filler_nodes(size)) + len(tail)
        chunked = _start(handler, 200, length=length)
        _write(handler, head, chunked=chunked)
        for piece in _filler_nodes(size):
            _write(handler, piece, chunked=chunked)
        _write(handler, tail, chunked=chunked)
        _end(handler, chunked)

    return answer


def huge_watch_line(size: int) -> Answer:
    """A watch stream whose first line is ``size`` bytes and has no end."""

    def answer(handler: Any) -> None:
        chunked = _start(handler, 200, length=None)
        _write(handler, b'{"type":"ADDED","object":{"metadata":{"name":"', chunked=chunked)
        for _ in range(max(1, size // MiB)):
            _write(handler, _BLOCK, chunked=chunked)
        _end(handler, chunked)

    return answer


def watch_lines(lines: Iterable[bytes], *, end: bool = True) -> Answer:
    """A watch stream of ``lines`` (each its own chunk), then its end (or silence)."""
    frozen = [bytes(line) for line in lines]

    def answer(handler: Any) -> None:
        chunked = _start(handler, 200, length=None)
        for line in frozen:
            _write(handler, line + b"\n", chunked=chunked)
        handler.wfile.flush()
        if not end:
            _wait(handler)
        _end(handler, chunked)

    return answer


def huge_error(size: int, status: int = 500) -> Answer:
    """An error answer with a body of ``size`` bytes (a Status padded with a message)."""

    def answer(handler: Any) -> None:
        chunked = _start(handler, status, length=None)
        _write(handler, b'{"kind":"Status","code":%d,"message":"' % status, chunked=chunked)
        for _ in range(max(1, size // MiB)):
            _write(handler, _BLOCK, chunked=chunked)
        _write(handler, b'"}', chunked=chunked)
        _end(handler, chunked)

    return answer


def hang() -> Answer:
    """No answer until ``Hostile.release()`` or the server stops; then the connection is
    closed without one."""

    def answer(handler: Any) -> None:
        _wait(handler)

    return answer


def _wait(handler: Any) -> None:
    hostile: Hostile = handler.hostile
    stopping = handler.server.double._stopping
    while not (hostile.released.wait(0.1) or stopping.is_set()):
        pass


def event(kind: str, obj: Any) -> bytes:
    """One watch line (without its newline)."""
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode()
