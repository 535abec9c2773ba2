"""Fixtures for the served IPAM tests: a running ``IpamServer`` on a short socket path
(``sun_path`` holds 107 bytes; pytest's tmp_path can be longer), and the two front doors
(the standalone executable, the socket) behind one call signature."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.ipam._cni import Outcome, cni_env, invoke
from tests.ipam.conftest import conf, data_dir, nodes_file  # noqa: F401 (fixtures)
from tests.ipamserver import client
from xcluster_cni_lib.daemon.ipamserver import IpamServer

Door = Callable[..., Outcome]
# the shim of this machine's architecture
NATIVE = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "amd64")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh directory with a short path; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="xipam-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(short_dir: Path) -> Iterator[IpamServer]:
    """A running server on ``<short_dir>/run/ipam.sock`` (the directory created by it)."""
    srv = IpamServer(str(short_dir / "run" / "ipam.sock"), read_timeout=2.0)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(params=["exe", "socket", "shim"])
def door(request: pytest.FixtureRequest, server: IpamServer, short_dir: Path) -> Door:
    """``door(conf, command, plugin=..., **cni_env keywords) -> Outcome`` through the
    standalone executable, the socket server (Python client), or the C shim and the
    server, with the same env and stdin (the shim's config also names the socket)."""
    kind = str(request.param)
    if kind == "shim":
        shim = request.getfixturevalue("plugins_dir") / NATIVE / "xcluster-cni-shim"
        bin_dir = short_dir / "bin"
        bin_dir.mkdir()
        for name in ("kube-node", "node-annotation"):
            shutil.copy2(shim, bin_dir / name)
        return make_door(kind, server.path, bin_dir)
    return make_door(kind, server.path)


def make_door(kind: str, path: str, bin_dir: Path | None = None) -> Door:
    def call(
        config: Mapping[str, Any] | bytes,
        command: str,
        *,
        plugin: str = "kube-node",
        env: Mapping[str, str] | None = None,
        **kw: Any,
    ) -> Outcome:
        stdin = json.dumps(config).encode() if isinstance(config, Mapping) else config
        full_env = dict(env) if env is not None else cni_env(command, **kw)
        if kind == "exe":
            return invoke(stdin, command, plugin=plugin, exe=True, env=full_env)
        if kind == "shim":
            if not isinstance(config, Mapping):
                pytest.skip("the shim takes its socket from the config: no raw stdin")
            assert bin_dir is not None
            doc = json.loads(stdin)
            doc["ipam"] = {**doc.get("ipam", {}), "socket": path}
            proc = subprocess.run(
                [str(bin_dir / plugin)],
                input=json.dumps(doc).encode(),
                env=full_env,
                capture_output=True,
                timeout=30,
                check=False,
            )
            return Outcome(proc.returncode, proc.stdout, proc.stderr)
        return client.call(path, full_env, stdin, plugin=plugin)

    return call
