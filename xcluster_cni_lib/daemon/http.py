"""The daemon's small HTTP server: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` answers ``200 ok`` or ``503`` with one line per failed check, so ``curl``
shows why. ``/readyz`` does the same and, when ready, lists warnings after ``ok`` (one
``warning: ...`` line each; still 200: a warning needs an operator, not a restart).
``/metrics`` is Prometheus text format.

Hardened against whatever can connect to it (it listens on the host's network):

- one thread, whatever the number of connections: an ``asyncio`` loop serves every
  client, so idle connections cost a few KiB each, not a thread;
- at most ``max_connections`` (default 64) are open; a new connection beyond that closes
  the *oldest* one, so a fresh client (the kubelet's probe) is always served at once and
  a pile of idle connections cannot lock it out;
- every connection has one deadline (``timeout``, default 5 s) for sending its request
  and reading the whole answer: a client that sends nothing, dribbles its request or
  reads slowly is dropped when it passes;
- the request head is bounded (``max_request_bytes``, default 8 KiB; beyond it: 431);
- one request per connection (``Connection: close``);
- no traceback ever: a client reset is a ``debug`` line, other errors one ``warning``
  JSON line per kind at most every 10 s (with the count of those not logged).

The checks run on the server's thread: they must be quick (they read flags).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.sync.metrics import CONTENT_TYPE

log = jsonlog.get_logger(__name__)

# A check returns a list of reasons it fails (empty = fine).
Check = Callable[[], list[str]]

DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_REQUEST_BYTES = 8192
LOG_INTERVAL = 10.0  # seconds between two warnings of the same kind
# A burst of connections waits in the kernel's accept queue (not in SYN retries that
# would delay a probe by seconds); the loop accepts at most _ACCEPT_BATCH per turn, so a
# burst never holds more than that many half-served connections in memory.
_BACKLOG = 1024
_ACCEPT_BATCH = 64
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT = "text/plain; charset=utf-8"

Page = tuple[int, str, bytes]


class _Throttled:
    """Log one line per event text at most every ``interval`` seconds, with the number
    of occurrences not logged since the previous line."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, msg: str, **fields: object) -> None:
        now = time.monotonic()
        last = self._last.get(msg)
        if last is not None and now - last < self._interval:
            self._skipped[msg] = self._skipped.get(msg, 0) + 1
            return
        self._last[msg] = now
        log.warning(msg, not_logged=self._skipped.pop(msg, 0), **fields)


class StatusServer:
    """Serves the three endpoints on ``address`` (host, port) in a background thread.

    The socket is bound here (an address in use fails at once); ``start`` serves it.
    ``warnings`` (optional) gives the warnings ``/readyz`` lists while ready.
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        healthz: Check,
        readyz: Check,
        metrics: Callable[[], bytes],
        warnings: Check | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        timeout: float = DEFAULT_TIMEOUT,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        if max_connections < 1 or timeout <= 0 or max_request_bytes < 64:
            raise ValueError("max_connections >= 1, timeout > 0, max_request_bytes >= 64")
        no_warnings: Check = list
        warn = warnings if warnings is not None else no_warnings
        self._routes: dict[str, Callable[[], Page]] = {
            "/healthz": lambda: _check(healthz),
            "/readyz": lambda: _check(readyz, warn),
            "/metrics": lambda: (200, CONTENT_TYPE, metrics()),
        }
        self.max_connections = max_connections
        self.timeout = timeout
        self.max_request_bytes = max_request_bytes
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server(
            (host, port),
            family=family,
            backlog=_BACKLOG,
            # "[::]:port" answers on IPv4 too, as the kernel's default for IPv6 sockets
            dualstack_ipv6=host == "::" and socket.has_dualstack_ipv6(),
        )
        self._open: dict[asyncio.StreamWriter, None] = {}  # insertion order = age
        self._throttled = _Throttled()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.evicted = 0  # connections closed to make room (for tests and debugging)

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the real port when 0 was asked for)."""
        host, port = self._sock.getsockname()[:2]
        return (str(host), int(port))

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def start(self) -> None:
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="http", daemon=True)
        self._thread.start()
        started.wait(timeout=5)

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
            self._thread.join(timeout=2)
        self._sock.close()

    # -- the loop's thread -----------------------------------------------------------------

    def _run(self, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._loop_error)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(started))
        except Exception as e:  # the server must never print a traceback
            log.error("http server stopped", error=repr(e)[:200])
        finally:
            started.set()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _serve(self, started: threading.Event) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(
            self._connection,
            sock=self._sock,
            limit=self.max_request_bytes,
            backlog=_ACCEPT_BATCH,
        )
        self._sock.listen(_BACKLOG)  # asyncio listened with the batch size
        started.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for writer in list(self._open):
                writer.transport.abort()
            self._open.clear()
            await server.wait_closed()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, ConnectionError):
            log.debug("http client error", error=repr(error)[:200])
            return
        self._throttled.warning(
            "http server error",
            message=str(context.get("message", ""))[:200],
            error=repr(error)[:200],
        )

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open[writer] = None
        while len(self._open) > self.max_connections:
            oldest = next(iter(self._open))
            del self._open[oldest]
            oldest.transport.abort()
            self.evicted += 1
            self._throttled.warning(
                "http connection limit reached; closed the oldest connection",
                limit=self.max_connections,
            )
        try:
            await asyncio.wait_for(self._exchange(reader, writer), self.timeout)
        except TimeoutError:
            log.debug("http client too slow; connection closed", timeout_s=self.timeout)
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            log.debug("http client went away", error=repr(e)[:200])
        except Exception as e:  # never a traceback, never a dead server
            self._throttled.warning("http connection failed", error=repr(e)[:200])
        finally:
            self._open.pop(writer, None)
            writer.transport.abort()  # no-op when already closed

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            code, ctype, body = 431, _TEXT, b"request too large\n"
        except asyncio.IncompleteReadError as e:
            if not e.partial:  # connected and closed without a word: a port check
                return
            raise
        else:
            head_only, (code, ctype, body) = self._answer(head)
        lines = [
            f"HTTP/1.1 {code} {_REASONS.get(code, '')}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if code == 405:
            lines.append("Allow: GET, HEAD")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        if not head_only:
            writer.write(body)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[bool, Page]:
        """``(HEAD request?, (status, content type, body))`` for a request head."""
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return False, (400, _TEXT, b"bad request\n")
        method, target, _version = parts
        if method not in ("GET", "HEAD"):
            return False, (405, _TEXT, b"only GET and HEAD\n")
        page = self._routes.get(target.split("?", 1)[0])
        if page is None:
            return method == "HEAD", (404, _TEXT, b"not found\n")
        try:
            return method == "HEAD", page()
        except Exception as e:  # a broken check must not kill the server
            self._throttled.warning("http page failed", path=target[:100], error=repr(e)[:200])
            return method == "HEAD", (500, _TEXT, f"{e!r}"[:200].encode() + b"\n")


def _check(check: Check, warnings: Check | None = None) -> Page:
    failures = check()
    if failures:
        return 503, _TEXT, "".join(f"{f}\n" for f in failures).encode()
    notes = warnings() if warnings is not None else []
    return 200, _TEXT, ("ok\n" + "".join(f"warning: {w}\n" for w in notes)).encode()
