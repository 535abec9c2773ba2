"""The status HTTP server against hostile local clients, over real sockets: idle
connections by the thousand, a request that never ends, resets mid-request. The server
runs in its own process (``SERVER``) so its threads, memory and stderr are its own."""

from __future__ import annotations

import json
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.daemon.harness import wait_for
from xcluster_cni_lib.daemon.http import StatusServer

SERVER = """
import json, sys
from xcluster_cni_lib.daemon.http import StatusServer
from xcluster_cni_lib.support import jsonlog
jsonlog.setup("debug")
server = StatusServer(
    ("127.0.0.1", 0), healthz=lambda: [], readyz=lambda: [], metrics=lambda: b"up 1\\n",
    **json.loads(sys.argv[1]),
)
server.start()
print(server.address[1], flush=True)
sys.stdin.read()
server.stop()
"""


class Served:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port

    def status(self, key: str) -> int:
        """``Threads`` or ``VmRSS`` (KiB) of the server process."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise AssertionError(key)

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        try:
            url = f"http://127.0.0.1:{self.port}{path}"
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    kwargs: dict[str, Any] = getattr(request, "param", {})
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, json.dumps(kwargs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield Served(proc, port)
    finally:
        proc.kill()
        proc.wait()


def stderr_of(served: Served) -> str:
    served.proc.kill()
    served.proc.wait()
    assert served.proc.stderr is not None
    return served.proc.stderr.read()


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.fixture(autouse=True)
def _enough_file_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 16384)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def test_a_thousand_idle_connections_neither_spawn_threads_nor_lock_out_the_probe(
    served: Served,
) -> None:
    threads, rss = served.status("Threads"), served.status("VmRSS")
    idle = [served.connect() for _ in range(1200)]
    try:
        # the server has taken them all in (each new one closes the oldest beyond the cap)
        wait_for(lambda: closed_by_peer_nowait(idle[0]), timeout=5, what="oldest evicted")
        t0 = time.monotonic()
        assert served.get("/healthz") == (200, "ok\n")
        took = time.monotonic() - t0
        assert took < 1.0, f"/healthz took {took:.2f}s behind 1,200 idle connections"
        threads_after, rss_after = served.status("Threads"), served.status("VmRSS")
        print(f"1,200 idle: threads {threads} -> {threads_after}, RSS {rss} -> {rss_after} KiB")
        assert threads_after <= threads + 2
        assert rss_after - rss < 12 * 1024, f"RSS grew by {rss_after - rss} KiB"
    finally:
        for s in idle:
            s.close()
    assert "Traceback" not in stderr_of(served)


def closed_by_peer_nowait(sock: socket.socket) -> bool:
    sock.settimeout(0.001)
    try:
        return closed_by_peer(sock)
    finally:
        sock.settimeout(10)


def test_a_connection_that_sends_nothing_is_closed_after_the_timeout(served: Served) -> None:
    silent = served.connect()
    slow = served.connect()
    try:
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        t0 = time.monotonic()

        def dribble_until_closed() -> bool:
            try:
                slow.sendall(b"X-a: b\r\n")
            except (BrokenPipeError, ConnectionResetError):
                return True
            return False

        # a request dribbled a header at a time does not keep the connection either
        wait_for(dribble_until_closed, timeout=10, what="slow request dropped", every=0.2)
        wait_for(lambda: closed_by_peer_nowait(silent), timeout=10, what="silent dropped")
        took = time.monotonic() - t0
        assert 3.0 < took < 8.0, took  # the default 5 s deadline, not per read
    finally:
        silent.close()
        slow.close()
    assert served.get("/healthz") == (200, "ok\n")


def test_a_reset_mid_request_prints_no_traceback(served: Served) -> None:
    for partial in (b"", b"GET /heal", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"):
        for _ in range(20):
            sock = served.connect()
            if partial:
                sock.sendall(partial)
            reset(sock)
    assert served.get("/healthz") == (200, "ok\n")
    stderr = stderr_of(served)
    assert "Traceback" not in stderr
    for line in stderr.splitlines():
        json.loads(line)  # every line is a JSON log line


def test_a_huge_request_head_is_refused_without_being_read(served: Served) -> None:
    big = served.connect()
    try:
        big.sendall(b"GET /healthz HTTP/1.1\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n")
        answer = big.recv(100)
    except (BrokenPipeError, ConnectionResetError):
        # closed with the rest unread: the kernel may reset before the 431 is read
        answer = b"HTTP/1.1 431 (reset)"
    finally:
        big.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer
    assert served.get("/healthz") == (200, "ok\n")
    assert "Traceback" not in stderr_of(served)


@pytest.mark.parametrize("served", [{"timeout": 1.0}], indirect=True)
def test_the_timeout_is_configurable(served: Served) -> None:
    sock = served.connect()
    try:
        t0 = time.monotonic()
        wait_for(lambda: closed_by_peer_nowait(sock), timeout=5, what="dropped")
        assert time.monotonic() - t0 < 2.5
    finally:
        sock.close()


def _in_process(**checks: Any) -> StatusServer:
    server = StatusServer(
        ("127.0.0.1", 0),
        healthz=checks.get("healthz", list),
        readyz=checks.get("readyz", list),
        metrics=lambda: b"up 1\n",
        warnings=checks.get("warnings"),
    )
    server.start()
    return server


def _get(server: StatusServer, path: str, method: str = "GET") -> tuple[int, str]:
    host, port = server.address
    req = urllib.request.Request(f"http://{host}:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_readyz_lists_the_reasons_and_the_warnings() -> None:
    reasons: list[str] = ["node source unhealthy: LIST nodes not answered for 12s"]
    warnings = ["contested CIDR 10.244.2.0/24: claimed by a-evil and n2"]
    server = _in_process(readyz=lambda: reasons, warnings=lambda: warnings)
    try:
        assert _get(server, "/readyz") == (503, f"{reasons[0]}\n")
        reasons.clear()
        assert _get(server, "/readyz") == (200, f"ok\nwarning: {warnings[0]}\n")
        assert _get(server, "/healthz") == (200, "ok\n")  # warnings are readiness only
    finally:
        server.stop()


def test_other_methods_paths_and_broken_checks() -> None:
    def broken() -> list[str]:
        raise RuntimeError("boom")

    server = _in_process(healthz=broken)
    try:
        assert _get(server, "/healthz")[0] == 500
        assert _get(server, "/nope")[0] == 404
        assert _get(server, "/readyz", "POST")[0] == 405
        assert _get(server, "/readyz", "HEAD") == (200, "")
        assert _get(server, "/metrics?x=1") == (200, "up 1\n")
    finally:
        server.stop()


@pytest.mark.parametrize("host", ["::1", "::"])
def test_ipv6_addresses(host: str) -> None:
    server = StatusServer((host, 0), healthz=list, readyz=list, metrics=lambda: b"")
    server.start()
    try:
        port = server.address[1]
        with urllib.request.urlopen(f"http://[::1]:{port}/healthz", timeout=5) as resp:
            assert resp.read() == b"ok\n"
        if host == "::":  # all addresses, IPv4 too
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                assert resp.read() == b"ok\n"
    finally:
        server.stop()


def test_stop_releases_the_port_and_the_thread() -> None:
    server = _in_process()
    host, port = server.address
    server.stop()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))  # free again
    assert not any(t.name == "http" and t.is_alive() for t in threading.enumerate())
