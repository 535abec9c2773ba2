"""The daemon's small HTTP server: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` and ``/readyz`` answer ``200 ok`` or ``503`` with one line per failed check,
so ``curl`` shows why. ``/metrics`` is Prometheus text format.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.sync.metrics import CONTENT_TYPE

log = jsonlog.get_logger(__name__)

# A check returns a list of reasons it fails (empty = fine).
Check = Callable[[], list[str]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class StatusServer:
    """Serves the three endpoints on ``address`` (host, port) in a background thread."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        healthz: Check,
        readyz: Check,
        metrics: Callable[[], bytes],
    ) -> None:
        host, port = address
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/healthz": lambda: _check(healthz),
            "/readyz": lambda: _check(readyz),
            "/metrics": lambda: (200, CONTENT_TYPE, metrics()),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                page = routes.get(self.path.split("?", 1)[0])
                if page is None:
                    code, ctype, body = 404, "text/plain", b"not found\n"
                else:
                    try:
                        code, ctype, body = page()
                    except Exception as e:  # a broken check must not kill the server
                        code, ctype, body = 500, "text/plain", f"{e}\n".encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.trace("http request", request=format % args)

        server_class: type[_Server] = _Server
        if ":" in host:

            class _Server6(_Server):
                address_family = socket.AF_INET6

            server_class = _Server6
        self._server = server_class((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the real port when 0 was asked for)."""
        host, port = self._server.server_address[:2]
        return (str(host), int(port))

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=1)
        self._server.server_close()


def _check(check: Check) -> tuple[int, str, bytes]:
    failures = check()
    if failures:
        return 503, "text/plain", ("".join(f"{f}\n" for f in failures)).encode()
    return 200, "text/plain", b"ok\n"
