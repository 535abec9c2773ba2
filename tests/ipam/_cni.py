"""Helpers for the IPAM plugin tests: build configs, invoke a plugin in-process (through
``xcluster_cni_lib.plugin.verbs.run``) or as the installed executable."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xcluster_cni_lib.plugin.verbs import run

CNI_PATH = "/usr/lib/cni"
BIN = Path(sys.executable).parent
HOST_LOCAL = f"{CNI_PATH}/host-local"


class Outcome:
    def __init__(self, rc: int, out: bytes, err: bytes = b"") -> None:
        self.rc = rc
        self.out = out
        self.err = err

    @property
    def json(self) -> Any:
        return json.loads(self.out)

    def error(self) -> dict[str, Any]:
        """The one error object on stdout (asserts there is exactly one)."""
        assert self.rc != 0, self.out
        doc = json.loads(self.out)  # exactly one JSON value, nothing else
        assert isinstance(doc["code"], int) and doc["msg"], doc
        return dict(doc)

    def __repr__(self) -> str:
        return f"Outcome(rc={self.rc}, out={self.out!r}, err={self.err[-2000:]!r})"


def netconf(
    data_dir: Path | str | None,
    *,
    version: str = "1.0.0",
    name: str = "net",
    plugin: str = "kube-node",
    **ipam: Any,
) -> dict[str, Any]:
    section: dict[str, Any] = {"type": plugin, **ipam}
    if data_dir is not None and "dataDir" not in ipam:
        section["dataDir"] = str(data_dir)
    return {"cniVersion": version, "name": name, "type": "bridge", "ipam": section}


def cni_env(
    command: str,
    *,
    cid: str = "c1",
    ifname: str = "eth0",
    netns: str | None = "/var/run/netns/pod",
    args: str | None = None,
    path: str = CNI_PATH,
    **extra: str,
) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_PATH": path}
    if netns is not None:
        env["CNI_NETNS"] = netns
    if args is not None:
        env["CNI_ARGS"] = args
    env.update(extra)
    return env


def invoke(
    conf: Mapping[str, Any] | bytes | str,
    command: str,
    *,
    plugin: str = "kube-node",
    exe: bool = False,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
    **kw: Any,
) -> Outcome:
    """Run one plugin call; ``exe`` runs ``.venv/bin/<plugin>`` in a subprocess."""
    if isinstance(conf, Mapping):
        stdin = json.dumps(conf).encode()
    elif isinstance(conf, str):
        stdin = conf.encode()
    else:
        stdin = conf
    full_env = dict(env) if env is not None else cni_env(command, **kw)
    if exe and "PYTHONPATH" in os.environ:  # to run the executables against another tree
        full_env.setdefault("PYTHONPATH", os.environ["PYTHONPATH"])
    if exe:
        proc = subprocess.run(
            [str(BIN / plugin)],
            input=stdin,
            env=full_env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        return Outcome(proc.returncode, proc.stdout, proc.stderr)
    out = io.BytesIO()
    rc = run(plugin, env=full_env, stdin=stdin, stdout=out)
    return Outcome(rc, out.getvalue())


def reserved(network_dir: Path) -> dict[str, str]:
    """host-local's reservations: address -> file content."""
    if not network_dir.is_dir():
        return {}
    out = {}
    for p in network_dir.iterdir():
        if p.name[0].isdigit() or ":" in p.name:
            out[p.name] = p.read_bytes().decode()
    return out


def write_nodes(path: Path, nodes: list[dict[str, Any]]) -> str:
    path.write_text(json.dumps({"kind": "NodeList", "apiVersion": "v1", "items": nodes}))
    return str(path)


def tree(path: Path) -> list[str]:
    """Every file under path (relative), to assert nothing was written."""
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def base_env() -> dict[str, str]:
    """What a subprocess needs besides CNI_* (nothing from this test process leaks in)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
