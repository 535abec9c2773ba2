"""The static host shim (wrappers/ipam/shim): forwarding, framing, errors, size, arm64, chroot.

The agent side is tests/shim/_wire_server.py, a small implementation of the protocol in
docs/shim.md with fault injection.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.shim._wire_server import WireServer
from tests.shim.conftest import NATIVE

MIB = 1 << 20
DEFAULT_SOCKET = "/run/xcluster-cni/ipam.sock"
BASE_ENV = {"CNI_COMMAND": "VERSION", "CNI_PATH": "/opt/cni/bin"}


def config(sock: str | Path | None, **extra: Any) -> bytes:
    ipam: dict[str, Any] = {"type": "kube-node"}
    if sock is not None:
        ipam["socket"] = str(sock)
    return json.dumps({"cniVersion": "1.0.0", "name": "net", "ipam": ipam, **extra}).encode()


def run(
    exe: Path | list[str],
    stdin: bytes,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    argv = [str(exe)] if isinstance(exe, Path) else exe
    return subprocess.run(
        argv, input=stdin, env=BASE_ENV if env is None else env, capture_output=True, timeout=60
    )


def cni_error(proc: subprocess.CompletedProcess[bytes], code: int) -> dict[str, Any]:
    """The shim's own error: one CNI error object on stdout, exit status 1."""
    assert proc.returncode == 1, proc
    err = json.loads(proc.stdout)
    assert err["cniVersion"] == "1.0.0"
    assert err["code"] == code, err
    assert isinstance(err["msg"], str) and isinstance(err["details"], str)
    return err  # type: ignore[no-any-return]


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "agent" / "ipam.sock"


# ---- forwarding -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kube-node", "node-annotation"])
def test_forwards_only_cni_variables_and_the_plugin_name(
    shim_dir: Path, sock: Path, name: str
) -> None:
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/var/run/netns/x",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "K8S_POD_NAME=p;K8S_POD_NAMESPACE=default",
        "CNI_PATH": "/opt/cni/bin",
        "HOME": "/root",
        "PATH": "/usr/bin",
        "CNIX": "no",
        "XCLUSTER_CNI_PLUGIN": "forged",
        "XCLUSTER_CNI_SHIM_TIMEOUT_MS": "5000",
    }
    with WireServer(sock) as server:
        proc = run(shim_dir / name, config(sock), env)
    assert proc.returncode == 0, proc
    (req,) = server.requests
    expected = [f"{k}={v}" for k, v in env.items() if k.startswith("CNI_")]
    assert sorted(req.env) == sorted([*expected, f"XCLUSTER_CNI_PLUGIN={name}"])


def test_stdin_stdout_and_exit_code_are_relayed_byte_exact(shim_dir: Path, sock: Path) -> None:
    stdin = config(sock) + b"\x00\x01\xff binary \x00 tail\n"
    answer = b'{"code": 7, "msg": "x"}\x00\xfe\n'
    with WireServer(sock, stdout=answer, code=1) as server:
        proc = run(shim_dir / "kube-node", stdin)
    assert (proc.returncode, proc.stdout) == (1, answer)
    assert server.requests[0].stdin == stdin
    assert server.errors == []


def test_largest_answer_is_relayed_and_a_larger_one_is_refused(shim_dir: Path, sock: Path) -> None:
    big = bytes(range(256)) * (4 * MIB // 256)
    with WireServer(sock, stdout=big) as server:
        proc = run(shim_dir / "kube-node", config(sock))
        assert (proc.returncode, proc.stdout) == (0, big)
        server.stdout = big + b"x"
        err = cni_error(run(shim_dir / "kube-node", config(sock)), 11)
    assert str(sock) in err["msg"] and "above 4 MiB" in err["msg"]


def test_socket_path_is_the_first_socket_key_of_the_config(shim_dir: Path, tmp_path: Path) -> None:
    """ "socket" as a value is not a key; the first key wins; whitespace around the colon."""
    first, second = tmp_path / "first.sock", tmp_path / "second.sock"
    stdin = (
        b'{"name": "socket", "ipam": {"type": "kube-node", "socket" :\n "'
        + str(first).encode()
        + b'"}, "x": {"socket": "'
        + str(second).encode()
        + b'"}}'
    )
    with WireServer(first) as one, WireServer(second) as two:
        proc = run(shim_dir / "kube-node", stdin)
    assert proc.returncode == 0, proc
    assert (len(one.requests), len(two.requests)) == (1, 0)


def test_default_socket_path_when_the_config_names_none(shim_dir: Path) -> None:
    if os.path.exists(DEFAULT_SOCKET):
        pytest.skip(f"{DEFAULT_SOCKET} exists on this machine (an agent is running)")
    err = cni_error(run(shim_dir / "kube-node", config(None)), 11)
    assert err["msg"].startswith(f"xcluster-cni agent not reachable at {DEFAULT_SOCKET}: ")


# ---- agent not there: fast code 11 ---------------------------------------------------------


def _absent(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)


def _refused(path: Path) -> None:
    """A socket file nobody listens on (what a crashed agent leaves behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


def _regular_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a socket")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_absent, "No such file or directory"),
        (_refused, "Connection refused"),
        (_regular_file, "Connection refused"),
    ],
    ids=["absent", "refused", "regular-file"],
)
def test_agent_not_reachable_is_code_11_within_100ms(
    shim_dir: Path, sock: Path, make: Any, reason: str
) -> None:
    make(sock)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        proc = run(shim_dir / "kube-node", config(sock))
        times.append(time.perf_counter() - start)
        err = cni_error(proc, 11)
        assert err["msg"] == f"xcluster-cni agent not reachable at {sock}: {reason}"
        assert "IPAM_SOCKET" in err["details"]
    assert statistics.median(times) < 0.1, times


def test_error_text_is_valid_json_for_any_path_bytes(shim_dir: Path, tmp_path: Path) -> None:
    path = str(tmp_path).encode() + b"/\xff\xc3\xa9-\x7f.sock"
    stdin = b'{"ipam": {"socket": "' + path + b'"}}'
    err = cni_error(run(shim_dir / "kube-node", stdin), 11)
    assert err["msg"].startswith(f"xcluster-cni agent not reachable at {tmp_path}/\ufffd\xe9-\x7f")


# ---- hung or broken agent ------------------------------------------------------------------


def test_hung_agent_is_code_11_at_the_deadline(shim_dir: Path, sock: Path) -> None:
    env = {**BASE_ENV, "XCLUSTER_CNI_SHIM_TIMEOUT_MS": "300"}
    with WireServer(sock, mode="hang") as server:
        start = time.perf_counter()
        proc = run(shim_dir / "kube-node", config(sock), env)
        elapsed = time.perf_counter() - start
    err = cni_error(proc, 11)
    assert err["msg"] == (
        f"xcluster-cni agent at {sock} did not answer within 300 ms (while waiting for the answer)"
    )
    assert len(server.requests) == 1
    assert 0.3 <= elapsed < 2.0, elapsed


def test_agent_that_never_reads_is_code_11_at_the_deadline(shim_dir: Path, sock: Path) -> None:
    """Accepts but never reads: the 1 MiB request cannot be sent; the deadline still holds."""
    sock.parent.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(sock))
        listener.listen(1)
        stdin = config(sock).ljust(MIB, b" ")
        env = {**BASE_ENV, "XCLUSTER_CNI_SHIM_TIMEOUT_MS": "300"}
        start = time.perf_counter()
        proc = run(shim_dir / "kube-node", stdin, env)
        elapsed = time.perf_counter() - start
    finally:
        listener.close()
    err = cni_error(proc, 11)
    assert "did not answer within 300 ms (while sending the request)" in err["msg"]
    assert 0.3 <= elapsed < 2.0, elapsed


@pytest.mark.parametrize(
    ("mode", "text"),
    [
        ("bad_magic", "sent a bad answer (wrong magic)"),
        ("truncated", "closed the connection without a complete answer (stdout: got"),
    ],
)
def test_broken_answer_is_code_11(shim_dir: Path, sock: Path, mode: str, text: str) -> None:
    with WireServer(sock, mode=mode):
        err = cni_error(run(shim_dir / "kube-node", config(sock)), 11)
    assert err["msg"].startswith(f"xcluster-cni agent at {sock} {text}"), err


def test_agent_closing_without_answer_is_code_11(shim_dir: Path, sock: Path) -> None:
    sock.parent.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(sock))
        listener.listen(1)
        proc = subprocess.Popen(
            [str(shim_dir / "kube-node")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=BASE_ENV,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(config(sock))  # the shim reads all of stdin before it connects
        proc.stdin.close()
        listener.settimeout(10)
        conn, _ = listener.accept()
        conn.settimeout(10)
        while conn.recv(1 << 16):  # the whole request, up to the shim's shutdown
            pass
        conn.sendall(b"XCN1" + struct.pack(">I", 0))  # half a header, then close
        conn.close()
        out = proc.stdout.read()
        proc.wait(timeout=10)
    finally:
        listener.close()
    err = cni_error(subprocess.CompletedProcess([], proc.returncode, out), 11)
    assert "without a complete answer (header: got 8 of 12 bytes)" in err["msg"]


# ---- limits --------------------------------------------------------------------------------


def test_stdin_of_exactly_1_mib_is_forwarded(shim_dir: Path, sock: Path) -> None:
    stdin = config(sock).ljust(MIB, b" ")
    with WireServer(sock) as server:
        proc = run(shim_dir / "kube-node", stdin)
    assert proc.returncode == 0, proc
    assert server.requests[0].stdin == stdin


def test_stdin_above_1_mib_is_code_7_and_not_forwarded(shim_dir: Path, sock: Path) -> None:
    with WireServer(sock) as server:
        err = cni_error(run(shim_dir / "kube-node", config(sock).ljust(MIB + 1, b" ")), 7)
    assert "larger than 1 MiB" in err["msg"]
    assert server.requests == []


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (b'"/' + b"s" * 107 + b'"', "longer than 107 bytes"),
        (b'"/run/a\\"b"', "without escapes"),
        (b'""', "non-empty"),
        (b"17", "not a string"),
    ],
    ids=["too-long", "escaped", "empty", "number"],
)
def test_bad_socket_value_is_code_7(shim_dir: Path, value: bytes, text: str) -> None:
    err = cni_error(run(shim_dir / "kube-node", b'{"ipam": {"socket": ' + value + b"}}"), 7)
    assert text in err["msg"]


def test_socket_value_of_107_bytes_is_accepted(shim_dir: Path, tmp_path: Path) -> None:
    path = str(tmp_path / "s").ljust(107, "x")
    err = cni_error(run(shim_dir / "kube-node", config(path)), 11)
    assert err["msg"] == f"xcluster-cni agent not reachable at {path}: No such file or directory"


def test_too_many_cni_variables_is_code_4(shim_dir: Path, sock: Path) -> None:
    env63 = {f"CNI_X{i}": "v" for i in range(63)}
    with WireServer(sock) as server:
        assert run(shim_dir / "kube-node", config(sock), env63).returncode == 0
        err = cni_error(run(shim_dir / "kube-node", config(sock), {**env63, "CNI_Y": "1"}), 4)
    assert len(server.requests) == 1 and len(server.requests[0].env) == 64
    assert "more than 63" in err["msg"]


# ---- static, small, arm64, chroot ------------------------------------------------------------


def _program_header_types(path: Path) -> set[int]:
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1  # ELF64, little-endian
    phoff, phentsize, phnum = (
        struct.unpack_from("<Q", data, 0x20)[0],
        *struct.unpack_from("<HH", data, 0x36),
    )
    return {struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)}


@pytest.mark.parametrize(("arch", "machine"), [("amd64", 62), ("arm64", 183)])
def test_static_and_under_1_mb(plugins_dir: Path, arch: str, machine: int) -> None:
    exe = plugins_dir / arch / "xcluster-cni-shim"
    assert struct.unpack_from("<H", exe.read_bytes(), 0x12)[0] == machine
    types = _program_header_types(exe)
    assert 3 not in types, "PT_INTERP: needs a dynamic loader"
    assert 2 not in types, "PT_DYNAMIC: dynamically linked"
    assert exe.stat().st_size < 1_000_000
    if shutil.which("readelf"):
        dyn = subprocess.run(["readelf", "-d", str(exe)], capture_output=True, text=True)
        assert "There is no dynamic section" in dyn.stdout


def test_arm64_shim_answers_version_under_qemu(plugins_dir: Path, tmp_path: Path) -> None:
    qemu = shutil.which("qemu-aarch64-static")
    if qemu is None:
        pytest.skip("qemu-aarch64-static is not installed (Debian package qemu-user-static)")
    exe = tmp_path / "kube-node"
    shutil.copy2(plugins_dir / "arm64" / "xcluster-cni-shim", exe)
    sock = tmp_path / "ipam.sock"
    answer = b'{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}'
    with WireServer(sock, stdout=answer) as server:
        proc = run([qemu, str(exe)], config(sock))
    assert (proc.returncode, proc.stdout) == (0, answer), proc
    assert sorted(server.requests[0].env) == sorted(
        [*(f"{k}={v}" for k, v in BASE_ENV.items()), "XCLUSTER_CNI_PLUGIN=kube-node"]
    )


@pytest.mark.root
def test_shim_runs_in_a_chroot_with_nothing_but_itself_and_the_socket(
    plugins_dir: Path, tmp_path: Path
) -> None:
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy2(plugins_dir / NATIVE / "xcluster-cni-shim", root / "kube-node")
    (root / "node-annotation").symlink_to("kube-node")
    answer = b'{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}'
    with WireServer(root / DEFAULT_SOCKET.lstrip("/"), stdout=answer) as server:
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())
        assert files == ["kube-node", "node-annotation", DEFAULT_SOCKET.lstrip("/")]
        for name in ("kube-node", "node-annotation"):
            proc = run([chroot, str(root), f"/{name}"], config(None))
            assert (proc.returncode, proc.stdout) == (0, answer), proc
    plugins = [e for r in server.requests for e in r.env if e.startswith("XCLUSTER_CNI_PLUGIN=")]
    assert plugins == ["XCLUSTER_CNI_PLUGIN=kube-node", "XCLUSTER_CNI_PLUGIN=node-annotation"]


def test_busy_agent_with_a_full_backlog_is_retried_until_the_deadline(
    shim_dir: Path, sock: Path
) -> None:
    """A full listen backlog is a busy agent, not an absent one: retried, then code 11."""
    sock.parent.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pending: list[socket.socket] = []
    try:
        listener.bind(str(sock))
        listener.listen(0)
        while True:  # fill the backlog nobody accepts from
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            pending.append(client)
            try:
                client.connect(str(sock))
            except BlockingIOError:
                break
            assert len(pending) < 100
        env = {**BASE_ENV, "XCLUSTER_CNI_SHIM_TIMEOUT_MS": "300"}
        start = time.perf_counter()
        proc = run(shim_dir / "kube-node", config(sock), env)
        elapsed = time.perf_counter() - start
    finally:
        for client in pending:
            client.close()
        listener.close()
    err = cni_error(proc, 11)
    assert err["msg"] == (
        f"xcluster-cni agent at {sock} did not answer within 300 ms "
        "(while connecting, listen backlog full)"
    )
    assert 0.3 <= elapsed < 2.0, elapsed
