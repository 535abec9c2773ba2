"""A Python client for the IPAM socket protocol (docs/ipam.md, "Served by the agent"):
the tests' stand-in for the C host shim."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Mapping

from tests.ipam._cni import Outcome

MAGIC = b"XCN1"


def frame(env: Mapping[str, str], stdin: bytes, plugin: str | None = "kube-node") -> bytes:
    """A request: the CNI_* entries of ``env`` (others dropped, as the shim does), the
    plugin entry, and stdin."""
    entries = [f"{k}={v}".encode() for k, v in env.items() if k.startswith("CNI_")]
    if plugin is not None:
        entries.append(f"XCLUSTER_CNI_PLUGIN={plugin}".encode())
    out = [MAGIC, struct.pack(">I", len(entries))]
    for e in entries:
        out += [struct.pack(">I", len(e)), e]
    out += [struct.pack(">I", len(stdin)), stdin]
    return b"".join(out)


def connect(path: str, timeout: float = 30) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the agent closes (b"" when it closed without a word)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def parse_answer(data: bytes) -> Outcome:
    """The answer frame as an Outcome; asserts it is well-formed and complete."""
    assert data[:4] == MAGIC, data[:64]
    code, length = struct.unpack(">II", data[4:12])
    assert len(data) == 12 + length, (len(data), length)
    return Outcome(code, data[12:])


def send(path: str, request: bytes, timeout: float = 30) -> bytes:
    """Send raw bytes, shut down the writing side, return everything answered."""
    with connect(path, timeout) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


def call(
    path: str,
    env: Mapping[str, str],
    stdin: bytes,
    *,
    plugin: str | None = "kube-node",
    timeout: float = 30,
) -> Outcome:
    """One IPAM call through the socket."""
    return parse_answer(send(path, frame(env, stdin, plugin), timeout))


def wait_closed(sock: socket.socket, timeout: float) -> float:
    """Seconds until the peer closes ``sock`` (asserts it does within ``timeout``)."""
    t0 = time.monotonic()
    sock.settimeout(timeout)
    assert read_all(sock) == b""
    return time.monotonic() - t0
