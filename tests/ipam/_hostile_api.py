"""A hostile API server for the IPAM plugins' small client: real HTTP (or HTTPS) on
127.0.0.1, every request answered with one configured answer, streamed so that the server
itself stays small while it sends 100 MB.

    with HostileApi(body_bytes=100 << 20, framing="chunked") as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        ...
        assert api.requests == 1

``framing``: ``"length"`` (a ``Content-Length`` header), ``"chunked"``
(``Transfer-Encoding: chunked``) or ``"close"`` (neither: the body ends when the
connection closes). The body is ``prefix`` padded with ``pad`` up to ``body_bytes``
(for a Node: the start of a Node object whose annotation never ends). A client that stops
reading early is normal here: the sender gives up quietly.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

BLOCK = 1 << 20
NODE_PREFIX = b'{"kind":"Node","apiVersion":"v1","metadata":{"name":"n1","annotations":{"x":"'


class HostileApi:
    def __init__(
        self,
        *,
        status: int = 200,
        body_bytes: int = 0,
        body: bytes | None = None,
        framing: str = "length",
        prefix: bytes = NODE_PREFIX,
        pad: bytes = b"A",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        assert framing in ("length", "chunked", "close")
        self.status = status
        self.body = body
        self.body_bytes = len(body) if body is not None else body_bytes
        self.framing = framing
        self.prefix = prefix
        self.pad = pad
        self.tls = tls
        self.requests = 0
        self.sent = 0  # body bytes the last answer got out before the client hung up
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileApi:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=10)

    def write_kubeconfig(
        self, path: str | os.PathLike[str], *, cluster: dict[str, Any] | None = None
    ) -> str:
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": self.url, **(cluster or {})}}],
            "users": [{"name": "u", "user": {"token": "t0k"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
        Path(path).write_text(json.dumps(doc))
        return str(path)

    # -- serving ---------------------------------------------------------------------

    def _serve(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _blocks(self) -> Any:
        if self.body is not None:
            yield self.body
            return
        head = self.prefix[: self.body_bytes]
        yield head
        left = self.body_bytes - len(head)
        block = (self.pad * (BLOCK // len(self.pad) + 1))[:BLOCK]
        while left > 0:
            n = min(left, BLOCK)
            yield block[:n]
            left -= n

    def _answer(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.requests += 1
            headers = [f"HTTP/1.1 {self.status} X", "Content-Type: application/json"]
            if self.framing == "length":
                headers.append(f"Content-Length: {self.body_bytes}")
            elif self.framing == "chunked":
                headers.append("Transfer-Encoding: chunked")
            headers.append("Connection: close")
            conn.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
            self.sent = 0
            for block in self._blocks():
                if self.framing == "chunked":
                    conn.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                else:
                    conn.sendall(block)
                self.sent += len(block)
            if self.framing == "chunked":
                conn.sendall(b"0\r\n\r\n")
        except (OSError, ssl.SSLError):
            pass  # the client stopped reading: what a bounded client does
        finally:
            conn.close()
