"""Watch streams as bounded lines, and lines as checked events.

- ``LineReader(limit)`` splits a byte stream into newline-terminated lines in linear time
  (each byte is copied once into its line) and raises ``TooLarge`` as soon as one line
  grows past ``limit`` bytes, so a line without end cannot take the agent's memory.
- ``parse_event(line)`` turns one line into a ``WatchEvent`` or raises ``MalformedEvent``
  naming what is wrong and carrying the line, shortened for a log line. Nothing here
  trusts the API server's answer: every shape is checked before it is used.

Standard library only (the ``kubernetes`` client is not needed to read a line).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from xcluster_cni_lib.core.errors import shorten

__all__ = [
    "EVENT_TYPES",
    "LineReader",
    "MalformedEvent",
    "TooLarge",
    "WatchEvent",
    "parse_event",
]

EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"})
_NODE_EVENTS = frozenset({"ADDED", "MODIFIED", "DELETED"})


class TooLarge(ValueError):
    """An answer (a LIST page, a watch line, an object) is larger than its cap."""

    def __init__(self, what: str, limit: int, size: int | None = None) -> None:
        self.what = what
        self.limit = limit
        self.size = size
        over = f" ({size} bytes)" if size is not None else ""
        super().__init__(f"{what} too large: over the cap of {limit} bytes{over}")


class MalformedEvent(ValueError):
    """A watch line that is not a usable event: ``reason`` says why, ``value`` is the
    line, shortened (see ``core.errors.shorten``)."""

    def __init__(self, reason: str, line: bytes | str) -> None:
        self.reason = reason
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        self.value = shorten(text)
        super().__init__(f"malformed watch event ({reason}): {self.value}")


class WatchEvent(NamedTuple):
    """One checked watch event. ``obj`` is a dict; for node events (``ADDED``,
    ``MODIFIED``, ``DELETED``) ``name`` is its non-empty ``metadata.name``;
    ``resource_version`` is ``metadata.resourceVersion`` when it is a non-empty string."""

    type: str
    obj: Mapping[str, Any]
    name: str
    resource_version: str | None


def parse_event(line: bytes) -> WatchEvent:
    """Check one watch line; raise ``MalformedEvent`` when it is not JSON, not an object,
    has no ``type`` or an unknown one, an ``object`` that is not an object, a
    ``metadata`` that is not an object, or (node events) no name."""
    try:
        event = json.loads(line)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        reason = "too deeply nested" if isinstance(exc, RecursionError) else "not JSON"
        raise MalformedEvent(reason, line) from None
    if not isinstance(event, dict):
        raise MalformedEvent("not an object", line)
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        raise MalformedEvent("no type", line)
    if kind not in EVENT_TYPES:
        raise MalformedEvent(f"unknown type {shorten(kind, 40)!r}", line)
    obj = event.get("object")
    if not isinstance(obj, dict):
        raise MalformedEvent("object is not an object", line)
    metadata = obj.get("metadata", {} if kind == "ERROR" else None)
    if not isinstance(metadata, dict):
        raise MalformedEvent("metadata is not an object", line)
    name = metadata.get("name")
    if kind in _NODE_EVENTS and (not isinstance(name, str) or not name):
        raise MalformedEvent("no metadata.name", line)
    rv = metadata.get("resourceVersion")
    if kind == "BOOKMARK" and (not isinstance(rv, str) or not rv):
        raise MalformedEvent("bookmark without metadata.resourceVersion", line)
    return WatchEvent(
        type=kind,
        obj=obj,
        name=name if isinstance(name, str) else "",
        resource_version=rv if isinstance(rv, str) and rv else None,
    )


class LineReader:
    """Newline-separated lines from byte chunks, none longer than ``limit`` bytes.

    ``feed(chunk)`` yields the lines the chunk completes (blank lines skipped) and keeps
    the incomplete tail as a list of pieces: a line is joined once, when its newline
    arrives, so reading costs time linear in the bytes received whatever the chunking.
    ``TooLarge`` is raised as soon as the pending line exceeds ``limit``."""

    def __init__(self, limit: int, what: str = "watch line") -> None:
        self.limit = limit
        self.what = what
        self._pieces: list[bytes] = []
        self._pending = 0

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            piece = chunk[start:end]
            if self._pieces:
                self._check(self._pending + len(piece))
                self._pieces.append(piece)
                line = b"".join(self._pieces)
                self._pieces, self._pending = [], 0
            else:
                self._check(len(piece))
                line = piece
            start = end + 1
            if line.strip():
                yield line
        if start < len(chunk):
            tail = chunk[start:] if start else chunk
            self._check(self._pending + len(tail))
            self._pieces.append(tail)
            self._pending += len(tail)

    def finish(self) -> Iterator[bytes]:
        """The last line when the stream ended without a newline."""
        line = b"".join(self._pieces)
        self._pieces, self._pending = [], 0
        if line.strip():
            yield line

    def lines(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            yield from self.feed(chunk)
        yield from self.finish()

    def _check(self, size: int) -> None:
        if size > self.limit:
            self._pieces, self._pending = [], 0
            raise TooLarge(self.what, self.limit, None)
