"""Leave nothing behind: the lab's state file, tear-down of everything a lab made (also
one whose process crashed), and signal handling so Ctrl-C still tears down.

What a lab made is found two ways: its state file (``<state_root>/<prefix>-<id>/state.json``
lists namespaces and daemon pids) and the namespace names (every one starts with
``<prefix>-<id>-``). A process is only ever stopped when the kernel says it runs in one of
the lab's namespaces, or when it is a recorded daemon whose environment names the lab's
nodes file, never by name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any

from xcluster_cni_lib.lab.nodes import write_json_atomically
from xcluster_cni_lib.lab.shell import list_netns, netns_pids, run
from xcluster_cni_lib.lab.spec import DEFAULT_PREFIX, LabError, check_lab_name, state_file


def save_state(state_dir: Path, state: dict[str, Any]) -> None:
    write_json_atomically(state_file(state_dir), state)


def load_state(state_dir: Path) -> dict[str, Any]:
    try:
        doc = json.loads(state_file(state_dir).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def find_labs(prefix: str, state_root: Path) -> list[str]:
    """Ids of the labs with this prefix that exist: by namespace name or by state dir."""
    pattern = re.compile(rf"^{re.escape(prefix)}-([a-z][a-z0-9]{{0,7}})-")
    ids = {m.group(1) for ns in list_netns() if (m := pattern.match(ns))}
    if state_root.is_dir():
        for d in state_root.iterdir():
            name = d.name
            if d.is_dir() and (m := pattern.match(f"{name}-")) and m.end() == len(name) + 1:
                ids.add(m.group(1))
    return sorted(ids)


def process_gone(pid: int) -> bool:
    """True when ``pid`` has exited (also when it is a zombie nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def _owned_daemon(pid: int, nodes_file: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"NODES_FILE={nodes_file}".encode() in environ


def stop_processes(pids: set[int], *, grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL whatever still runs after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not all(process_gone(p) for p in pids):
            time.sleep(0.02)
        pids = {p for p in pids if not process_gone(p)}
        if not pids:
            return


def teardown_lab(prefix: str, lab_id: str, state_root: Path) -> list[str]:
    """Stop the lab's processes, delete its namespaces (which removes every link in
    them) and its state dir. Idempotent; returns the namespaces it deleted."""
    check_lab_name("prefix", prefix)
    check_lab_name("lab id", lab_id)
    if os.geteuid() != 0:
        raise LabError("removing a lab needs root (it deletes network namespaces)")
    state_dir = state_root / f"{prefix}-{lab_id}"
    state = load_state(state_dir)
    ns_prefix = f"{prefix}-{lab_id}-"
    existing = set(list_netns())
    namespaces = {n for n in existing if n.startswith(ns_prefix)}
    namespaces |= {n for n in state.get("namespaces", []) if n in existing}
    pids = {p for ns in namespaces for p in netns_pids(ns)}
    nodes_file = str(state.get("nodes_file", ""))
    pids |= {p for p in state.get("pids", []) if nodes_file and _owned_daemon(int(p), nodes_file)}
    pids.discard(os.getpid())
    stop_processes(pids)
    for ns in sorted(namespaces):
        run(None, ["ip", "netns", "del", ns], check=False)
    shutil.rmtree(state_dir, ignore_errors=True)
    return sorted(namespaces)


@contextmanager
def shielded() -> Iterator[None]:
    """Hold off SIGINT/SIGTERM while tearing down (a second Ctrl-C must not leave a
    half-deleted lab); they are delivered afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def interrupt_on_termination() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into ``KeyboardInterrupt`` (as Ctrl-C is), so ``finally``
    blocks and context managers tear the lab down when the process is told to stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _prefix_flag(prefix: str) -> str:
    return "" if prefix == DEFAULT_PREFIX else f" --prefix {prefix}"


def lab_status(prefix: str, lab_id: str, state_root: Path) -> list[str]:
    """A readable summary of one lab: its namespaces, daemons and their routes.
    ``LabError`` when the lab has neither a namespace nor a state dir."""
    check_lab_name("prefix", prefix)
    check_lab_name("lab id", lab_id)
    state_dir = state_root / f"{prefix}-{lab_id}"
    state = load_state(state_dir)
    ns_prefix = f"{prefix}-{lab_id}-"
    namespaces = sorted(n for n in list_netns() if n.startswith(ns_prefix))
    if not namespaces and not state_dir.is_dir():
        raise LabError(
            f"no lab {lab_id!r}: no namespace {ns_prefix}* and no state dir {state_dir} "
            f"(list the labs with: xcluster-cni lab status{_prefix_flag(prefix)})"
        )
    owner = state.get("owner_pid")
    lines = [f"lab {lab_id}: {len(namespaces)} namespaces, state {state_dir}"]
    if not state:
        lines.append("  no state file (a crashed run?): `xcluster-cni lab down` removes it")
    elif owner and not process_gone(int(owner)):
        lines.append(f"  owned by running process {owner}")
    nodes_file = str(state.get("nodes_file", ""))
    daemons = [p for p in state.get("pids", []) if _owned_daemon(int(p), nodes_file)]
    lines.append(f"  daemons running: {len(daemons)} of {len(state.get('pids', []))}")
    protocols = state.get("networks", {})
    for node in state.get("nodes", []):
        ns = f"{ns_prefix}{node}"
        if ns not in namespaces:
            continue
        counts = []
        for network, protocol in protocols.items():
            proc = run(None, ["ip", "-n", ns, "route", "show", "proto", str(protocol)], check=False)
            proc6 = run(
                None, ["ip", "-n", ns, "-6", "route", "show", "proto", str(protocol)], check=False
            )
            count = len((proc.stdout + proc6.stdout).splitlines())
            counts.append(f"{network}: {count} routes")
        lines.append(f"  node {node} ({ns}): {', '.join(counts)}")
    pods = state.get("pods", {})
    lines.append(f"  pods: {', '.join(sorted(pods)) or '(none)'}")
    return lines
