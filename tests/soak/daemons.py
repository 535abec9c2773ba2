"""The daemons under test: real ``xcluster-cni daemon`` processes started inside node
namespaces, with their stderr (JSON log lines) appended to a file per daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.soak.cluster import DaemonView
from tests.soak.nsutil import NetnsExecutor

CLI = os.path.join(os.path.dirname(sys.executable), "xcluster-cni")


class DaemonProc:
    """One daemon: where it runs, how it is configured, its current process."""

    def __init__(
        self,
        key: str,
        *,
        ns: NetnsExecutor,
        hub: NetnsExecutor,
        view: DaemonView,
        protocol: int,
        kubeconfig: str,
        http: tuple[str, int],
        log_path: Path,
        resync: str = "30s",
    ) -> None:
        self.key = key
        self.ns = ns
        self.hub = hub
        self.view = view
        self.protocol = protocol
        self.http = http
        self.log_path = log_path
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "NODE_NAME": view.own,
            "PROTOCOL": str(protocol),
            "KUBECONFIG": kubeconfig,
            "HTTP_ADDRESS": f"{http[0]}:{http[1]}",
            "RESYNC_INTERVAL": resync,
            "LOG_LEVEL": "debug",  # per-route lines: what a bug report needs
        }
        if view.cidr_annotation:
            self.env["CIDR_ANNOTATION"] = view.cidr_annotation
        if view.address_annotation:
            self.env["ADDRESS_ANNOTATION"] = view.address_annotation
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.rss: list[tuple[float, int, int]] = []  # (time, pid, kB)

    def start(self) -> None:
        def spawn() -> subprocess.Popen[bytes]:
            with open(self.log_path, "ab") as log:
                log.write(f'{{"soak": "start #{self.starts + 1}"}}\n'.encode())
                log.flush()
                return subprocess.Popen(
                    [CLI, "daemon"],
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )

        self.proc = self.ns.call(spawn)
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (and reap)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 10.0) -> tuple[float, int | None]:
        """SIGTERM; (seconds until it exited, exit code or None when it did not)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            self.kill()
        return time.monotonic() - t0, code

    def stop(self) -> None:
        """Best-effort stop at the end of the campaign."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.terminate(timeout=3.0)
        except Exception:
            self.kill()

    def sample_rss(self) -> int | None:
        pid = self.pid
        if pid is None or not self.alive():
            return None
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        kb = int(line.split()[1])
                        self.rss.append((time.monotonic(), pid, kb))
                        return kb
        except OSError:
            return None
        return None

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        url = f"http://{self.http[0]}:{self.http[1]}{path}"

        def fetch() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()
            except OSError as e:
                return 0, str(e)

        return self.hub.call(fetch, timeout=timeout + 5)

    def ready(self) -> bool:
        return self.alive() and self.get("/readyz")[0] == 200

    def metrics(self) -> dict[str, float]:
        code, text = self.get("/metrics")
        out: dict[str, float] = {}
        if code != 200:
            return out
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
        return out
