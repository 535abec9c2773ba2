"""Running commands in the lab's namespaces (iproute2, sysctl, ping, the plugins)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from xcluster_cni_lib.lab.spec import LabError


def in_ns(ns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside namespace ``ns`` (``ip netns exec`` execs it, so a process
    started this way has the command's own pid)."""
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def run(
    ns: str | None,
    argv: Sequence[str],
    *,
    check: bool = True,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run a command (in ``ns`` when given); raise ``LabError`` with its stderr when it
    fails and ``check`` is set."""
    full = in_ns(ns, argv)
    try:
        proc = subprocess.run(
            full,
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            env=dict(env) if env is not None else None,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(full)}: no answer within {timeout} s") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise LabError(f"{' '.join(full)} failed ({proc.returncode}): {detail}")
    return proc


def ip_batch(ns: str | None, lines: Sequence[str]) -> None:
    """Run many ``ip`` commands in one process (``ip -batch``), in ``ns`` when given."""
    if not lines:
        return
    argv = ["ip", *(["-n", ns] if ns else []), "-batch", "-"]
    run(None, argv, stdin="\n".join(lines) + "\n")


def ip_json(ns: str | None, args: Sequence[str]) -> list[dict[str, Any]]:
    """``ip -j`` output as a list of dicts."""
    argv = ["ip", *(["-n", ns] if ns else []), "-j", *args]
    out = run(None, argv).stdout.strip()
    doc = json.loads(out) if out else []
    return doc if isinstance(doc, list) else []


def sysctl(ns: str, settings: Mapping[str, str]) -> None:
    """Set sysctls inside a namespace (``/proc/sys/net`` is per namespace)."""
    run(ns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())])


def list_netns() -> list[str]:
    """Names of the named network namespaces."""
    proc = run(None, ["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    """Processes running in a named namespace."""
    proc = run(None, ["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdecimal()]
