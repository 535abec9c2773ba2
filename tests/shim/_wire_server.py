"""A small agent side of the XCN1 IPAM socket protocol (docs/shim.md), for the shim tests.

It serves one request per connection in a background thread and records what it got.
``mode`` injects faults: "answer" (a well-formed answer), "hang" (accept, read the request,
never answer), "bad_magic", "truncated" (a header announcing more stdout than is sent).
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

MAGIC = b"XCN1"


@dataclass
class Request:
    env: list[str]
    stdin: bytes


@dataclass
class WireServer:
    path: Path
    mode: str = "answer"
    stdout: bytes = b'{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}'
    code: int = 0
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _held: list[socket.socket] = field(default_factory=list)

    def __enter__(self) -> WireServer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        if self._sock is not None:
            self._sock.close()
        self.path.unlink(missing_ok=True)

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                self._one(conn)
            except (OSError, ValueError) as exc:
                self.errors.append(str(exc))
                conn.close()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        self.requests.append(read_request(conn))
        if self.mode == "hang":
            self._held.append(conn)  # never answered; closed when the server stops
            return
        if self.mode == "bad_magic":
            conn.sendall(b"XCN2" + struct.pack(">II", 0, 2) + b"{}")
        elif self.mode == "truncated":
            conn.sendall(MAGIC + struct.pack(">II", 0, len(self.stdout) + 10) + self.stdout)
        else:
            conn.sendall(MAGIC + struct.pack(">II", self.code, len(self.stdout)) + self.stdout)
        conn.close()


def _exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(min(n - len(buf), 1 << 16))
        if not chunk:
            raise ValueError(f"request truncated: {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_request(conn: socket.socket) -> Request:
    """Parses one request and checks that the shim shut down its writing side after it."""
    if _exact(conn, 4) != MAGIC:
        raise ValueError("bad request magic")
    (count,) = struct.unpack(">I", _exact(conn, 4))
    if count > 64:
        raise ValueError(f"too many environment entries: {count}")
    env = []
    for _ in range(count):
        (length,) = struct.unpack(">I", _exact(conn, 4))
        env.append(_exact(conn, length).decode())
    (size,) = struct.unpack(">I", _exact(conn, 4))
    stdin = _exact(conn, size)
    if conn.recv(1) != b"":
        raise ValueError("bytes after the request (no shutdown(SHUT_WR)?)")
    return Request(env=env, stdin=stdin)
