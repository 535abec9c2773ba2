"""The IPAM socket server itself: concurrency on host-local's locking, root only, bounded
and timed requests, the socket's file and directory, start and stop."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ipam._cni import cni_env, reserved
from tests.ipamserver import client
from xcluster_cni_lib.daemon.ipamserver import IpamServer, IpamServerError
from xcluster_cni_lib.sync.metrics import DaemonMetrics

pytestmark = pytest.mark.root
Conf = Callable[..., dict[str, Any]]


def _fields(caplog: pytest.LogCaptureFixture, msg: str) -> list[dict[str, object]]:
    return [
        dict(getattr(r, "fields", {}))
        for r in caplog.records
        if r.name == "xcluster_cni_lib.daemon.ipamserver" and getattr(r.msg, "text", r.msg) == msg
    ]


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert all(r.exc_info is None and r.exc_text is None for r in caplog.records)


def _version(path: str) -> client.Outcome:
    return client.call(path, cni_env("VERSION"), b"")


# --- concurrency --------------------------------------------------------------------------


def test_32_concurrent_adds_get_distinct_addresses(
    server: IpamServer, conf: Conf, data_dir: Path
) -> None:
    c = json.dumps(conf(rangeStart="10.244.1.10", rangeEnd="10.244.1.60")).encode()
    results: list[client.Outcome | BaseException] = [None] * 32  # type: ignore[list-item]
    go = threading.Barrier(32)

    def one(i: int) -> None:
        try:
            go.wait()
            results[i] = client.call(server.path, cni_env("ADD", cid=f"p{i}"), c)
        except BaseException as e:
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    outs = [r for r in results if isinstance(r, client.Outcome) and r.rc == 0]
    assert len(outs) == 32, [r for r in results if r not in outs]
    v4 = [ip["address"] for o in outs for ip in o.json["ips"] if "." in ip["address"]]
    assert len(set(v4)) == 32
    assert len(reserved(data_dir / "net")) == 64


def test_beyond_the_cap_a_call_gets_code_11_in_its_version(short_dir: Path) -> None:
    release, running = threading.Event(), threading.Event()

    def slow(plugin: str, *, env: Any, stdin: bytes, stdout: Any, **kw: Any) -> int:
        running.set()
        release.wait(10)
        return 0

    srv = IpamServer(str(short_dir / "ipam.sock"), run=slow, max_active=1, slot_wait=0.2)
    srv.start()
    try:
        first = threading.Thread(target=_version, args=(srv.path,))
        first.start()
        assert running.wait(10)  # the one slot is taken
        t0 = time.monotonic()
        out = client.call(srv.path, cni_env("ADD"), b'{"cniVersion": "0.4.0"}')
        assert time.monotonic() - t0 < 2
        err = out.error()
        assert (err["code"], err["cniVersion"]) == (11, "0.4.0")
        assert "busy" in err["msg"]
        release.set()
        first.join(10)
    finally:
        release.set()
        srv.stop()


# --- who may call -------------------------------------------------------------------------

AS_NOBODY = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
data = b""
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
    s.shutdown(socket.SHUT_WR)
    while chunk := s.recv(65536):
        data += chunk
except (BrokenPipeError, ConnectionResetError):
    pass
print("answer", len(data))
"""


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _as_nobody(path: str) -> str:
    request = client.frame(cni_env("VERSION"), b"").hex()
    proc = subprocess.run(
        [*NOBODY, sys.executable, "-c", AS_NOBODY, path, request],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return proc.stdout.strip()


def test_only_root_may_call(server: IpamServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # the file modes keep others out ...
    assert _as_nobody(server.path) == "EACCES"
    # ... and SO_PEERCRED does too when the modes are widened by mistake
    os.chmod(os.path.dirname(os.path.dirname(server.path)), 0o755)
    os.chmod(os.path.dirname(server.path), 0o755)
    os.chmod(server.path, 0o666)
    assert _as_nobody(server.path) == "answer 0"
    [refused] = _fields(caplog, "ipam connection refused: not root")
    assert refused["uid"] == 65534 and isinstance(refused["pid"], int)
    assert _version(server.path).rc == 0  # root still served
    _no_tracebacks(caplog)


# --- bounded requests ---------------------------------------------------------------------


def _u32(n: int) -> bytes:
    return struct.pack(">I", n)


BAD = {
    "magic": b"XCN2" + _u32(0) + _u32(0),
    "http": b"GET / HTTP/1.1\r\n\r\n",
    "entries": b"XCN1" + _u32(65),
    "entry-length": b"XCN1" + _u32(1) + _u32(64 * 1024 + 1),
    "stdin-length": b"XCN1" + _u32(0) + _u32(1024 * 1024 + 1),
    "no-equals": b"XCN1" + _u32(1) + _u32(4) + b"CNIX" + _u32(0),
    "nul": b"XCN1" + _u32(1) + _u32(7) + b"CNI_A=\0" + _u32(0),
    "not-cni": b"XCN1" + _u32(1) + _u32(5) + b"PATH=" + _u32(0),
    "truncated": b"XCN1" + _u32(1) + _u32(10) + b"CNI_",
}


@pytest.mark.parametrize("request_bytes", BAD.values(), ids=BAD.keys())
def test_bad_frames_are_closed_without_answer(
    server: IpamServer, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    assert client.send(server.path, request_bytes, timeout=10) == b""
    [rejected] = _fields(caplog, "ipam request rejected")
    assert rejected["reason"]
    _no_tracebacks(caplog)
    assert _version(server.path).rc == 0  # still serving


def test_largest_allowed_request_is_served(server: IpamServer) -> None:
    # 64 entries in all: 62 + CNI_COMMAND + XCLUSTER_CNI_PLUGIN
    env = {f"CNI_X{i}": "v" * (64 * 1024 - 10) for i in range(62)}
    env.update(CNI_COMMAND="VERSION")
    stdin = b'{"cniVersion": "0.4.0"}'.ljust(1024 * 1024)
    out = client.call(server.path, env, stdin)
    assert out.rc == 0 and out.json["cniVersion"] == "0.4.0"


def test_half_a_request_is_dropped_at_the_deadline(
    server: IpamServer, caplog: pytest.LogCaptureFixture
) -> None:
    with client.connect(server.path) as sock:
        sock.sendall(b"XCN1" + _u32(1))  # and then nothing, the writing side stays open
        took = client.wait_closed(sock, timeout=10)
    assert 1.5 < took < 4, took  # read_timeout is 2 s in the fixture
    [rejected] = _fields(caplog, "ipam request rejected")
    assert "in time" in str(rejected["reason"])


def test_unknown_or_missing_plugin_is_code_4(server: IpamServer) -> None:
    for plugin in ("host-local", None):
        err = client.call(server.path, cni_env("VERSION"), b"", plugin=plugin).error()
        assert err["code"] == 4 and "XCLUSTER_CNI_PLUGIN" in err["msg"]


# --- the socket file ----------------------------------------------------------------------


def test_socket_mode_and_directory_mode(server: IpamServer) -> None:
    st = os.lstat(server.path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(server.path)).st_mode) == 0o700
    assert os.listdir(os.path.dirname(server.path)) == ["ipam.sock"]  # no temp name left


def test_stale_socket_is_replaced(short_dir: Path) -> None:
    path = str(short_dir / "ipam.sock")
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(path)
    old.close()  # a previous run that died: the file stays
    srv = IpamServer(path)
    srv.start()
    try:
        assert _version(path).rc == 0
    finally:
        srv.stop()


def test_a_non_socket_file_is_refused_naming_it(short_dir: Path) -> None:
    path = short_dir / "ipam.sock"
    path.write_text("keep me")
    with pytest.raises(IpamServerError, match=str(path)):
        IpamServer(str(path)).start()
    assert path.read_text() == "keep me"
    assert os.listdir(short_dir) == ["ipam.sock"]


def test_longest_socket_path_works(short_dir: Path) -> None:
    path = str(short_dir / "d")
    path += "/" + "s" * (107 - len(path) - 1)
    assert len(path) == 107  # sun_path's limit, as IPAM_SOCKET allows
    srv = IpamServer(path)
    srv.start()
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert _version(path).rc == 0
    finally:
        srv.stop()


def test_stop_removes_the_socket(short_dir: Path) -> None:
    path = str(short_dir / "run" / "ipam.sock")
    srv = IpamServer(path)
    srv.start()
    assert _version(path).rc == 0
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 1.5
    assert not os.path.lexists(path)
    assert not srv.alive
    with pytest.raises(FileNotFoundError):
        client.connect(path)


def test_calls_are_logged_and_counted(short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="xcluster_cni_lib.daemon.ipamserver")
    metrics = DaemonMetrics()
    srv = IpamServer(str(short_dir / "ipam.sock"), metrics=metrics)
    srv.start()
    try:
        assert _version(srv.path).rc == 0
        assert client.call(srv.path, cni_env("ADD"), b"junk").rc == 1
    finally:
        srv.stop()
    [ok] = _fields(caplog, "ipam call")
    assert (ok["verb"], ok["code"], ok["plugin"]) == ("VERSION", 0, "kube-node")
    [failed] = _fields(caplog, "ipam call failed")
    assert (failed["verb"], failed["code"]) == ("ADD", 6)
    text = metrics.render().decode()
    assert 'xcluster_ipam_calls_total{code="0",verb="VERSION"} 1.0' in text
    assert 'xcluster_ipam_calls_total{code="6",verb="ADD"} 1.0' in text
    _no_tracebacks(caplog)
