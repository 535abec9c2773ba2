"""The real ``xcluster-cni daemon``, one per node and network, running inside the node's
namespace with the lab's nodes file as its node source; its log goes to a file."""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import suppress
from pathlib import Path

import attrs

from xcluster_cni_lib.lab.shell import in_ns
from xcluster_cni_lib.lab.spec import LabSpec, NetworkSpec

# The daemon's settings: scrubbed from the caller's environment so that only the lab's
# values reach it.
DAEMON_ENV = (
    "NODE_NAME",
    "LOG_LEVEL",
    "CIDR_ANNOTATION",
    "ADDRESS_ANNOTATION",
    "PROTOCOL",
    "NODES_FILE",
    "RESYNC_INTERVAL",
    "HTTP_ADDRESS",
    "KUBECONFIG",
    "CLUSTER_CIDRS",
    "OVERLAY",
    "VXLAN_ID",
    "VXLAN_PORT",
    "VXLAN_DEVICE",
    "MASQUERADE",
    "NON_MASQUERADE_CIDRS",
    "IPAM_SOCKET",
    "IPAM_NODE_FILE",
    "IPAM_CNI_PATH",
)


@attrs.define
class Daemon:
    """A running daemon: which node and network, its process and its log file."""

    node: str
    network: str
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def daemon_env(
    spec: LabSpec, net: NetworkSpec, *, node: str, nodes_file: Path, extra: dict[str, str]
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DAEMON_ENV}
    env.update(
        NODE_NAME=node,
        LOG_LEVEL=spec.log_level,
        PROTOCOL=str(net.protocol),
        NODES_FILE=str(nodes_file),
        RESYNC_INTERVAL=f"{spec.resync_interval:g}",
        HTTP_ADDRESS=f"127.0.0.1:{net.http_port}",
    )
    if net.cidr_annotation:
        env["CIDR_ANNOTATION"] = net.cidr_annotation
    if net.address_annotation:
        env["ADDRESS_ANNOTATION"] = net.address_annotation
    if net.overlay != "none":
        env["OVERLAY"] = net.overlay
    if net.masquerade:
        env["MASQUERADE"] = "true"
    env.update(extra)
    return env


def start_daemon(
    spec: LabSpec,
    net: NetworkSpec,
    *,
    node: str,
    node_ns: str,
    nodes_file: Path,
    log: Path,
    executable: Path,
    extra_env: dict[str, str] | None = None,
) -> Daemon:
    """Start ``xcluster-cni daemon`` in the node's namespace, in its own session (a
    Ctrl-C in the terminal reaches the lab, which then stops the daemons itself)."""
    env = daemon_env(spec, net, node=node, nodes_file=nodes_file, extra=extra_env or {})
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            in_ns(node_ns, [str(executable), "daemon"]),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Daemon(node=node, network=net.name, log=log, process=process)


def stop_daemon(daemon: Daemon, *, sig: int = signal.SIGTERM, grace: float = 3.0) -> int | None:
    """Send ``sig``; SIGKILL if it has not exited after ``grace`` seconds. Returns the
    exit status."""
    if daemon.alive():
        with suppress(ProcessLookupError):
            daemon.process.send_signal(sig)
    try:
        return daemon.process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        daemon.process.kill()
        return daemon.process.wait()
