"""A client of the agent's IPAM socket (the "XCN1" wire protocol the host shim speaks,
``docs/shim.md``; the server is ``daemon.ipamserver``): one request, one answer per
connection. ``xcluster-cni doctor`` asks it for STATUS."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Mapping

import attrs

from xcluster_cni_lib.daemon.ipamserver import MAGIC, MAX_STDOUT, PLUGIN_VAR


class IpamClientError(OSError):
    """The socket could not be reached, or its answer is not a valid frame."""


@attrs.frozen
class IpamAnswer:
    """The agent's answer: the plugin's exit code (0 success) and its stdout."""

    code: int
    stdout: bytes


def request_frame(env: Mapping[str, str], stdin: bytes, *, plugin: str = "kube-node") -> bytes:
    """The request bytes: magic, the ``CNI_*`` entries then ``XCLUSTER_CNI_PLUGIN``, stdin."""
    entries = [f"{k}={v}".encode() for k, v in env.items() if k.startswith("CNI_")]
    entries.append(f"{PLUGIN_VAR}={plugin}".encode())
    parts = [MAGIC, struct.pack(">I", len(entries))]
    for entry in entries:
        parts += [struct.pack(">I", len(entry)), entry]
    parts += [struct.pack(">I", len(stdin)), stdin]
    return b"".join(parts)


def _read_exactly(conn: socket.socket, n: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise IpamClientError("no answer in time")
        conn.settimeout(left)
        chunk = conn.recv(min(n - got, 65536))
        if not chunk:
            raise IpamClientError(f"the agent closed the connection after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def call(
    path: str,
    env: Mapping[str, str],
    stdin: bytes,
    *,
    plugin: str = "kube-node",
    timeout: float = 10.0,
) -> IpamAnswer:
    """Send one call to the socket at ``path`` and return the answer. Raises
    ``IpamClientError`` (an ``OSError``) when the socket cannot be reached or answers
    something else than a frame, within ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(timeout)
        try:
            conn.connect(path)
            conn.sendall(request_frame(env, stdin, plugin=plugin))
            conn.shutdown(socket.SHUT_WR)
            head = _read_exactly(conn, 12, deadline)
        except TimeoutError:
            raise IpamClientError(f"no answer from {path} within {timeout:g}s") from None
        except IpamClientError:
            raise
        except OSError as e:
            raise IpamClientError(f"{path}: {e.strerror or e}") from None
        if head[:4] != MAGIC:
            raise IpamClientError(f"{path} answered {head[:4]!r}, not {MAGIC!r}")
        code, size = struct.unpack(">II", head[4:])
        if size > MAX_STDOUT:
            raise IpamClientError(f"{path} announced an answer of {size} bytes")
        try:
            out = _read_exactly(conn, size, deadline)
        except TimeoutError:
            raise IpamClientError(f"no answer from {path} within {timeout:g}s") from None
        return IpamAnswer(code=code, stdout=out)
    finally:
        conn.close()
