"""IPAM under load: bursts of parallel ``kube-node`` ADDs and DELs (the real executable,
started in a node namespace, delegating to the real host-local), with SIGKILLs mid-ADD,
a corrupted cache and the API server down, checking that no address is handed out twice
and that nothing is left reserved once everything was deleted."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.soak.nsutil import NetnsExecutor

PLUGIN = os.path.join(os.path.dirname(sys.executable), "kube-node")
CNI_PATH = "/usr/lib/cni"
NETWORK = "soaknet"
TRY_AGAIN_LATER = 11
GARBAGE = (b"", b"{", b"\x00\xff\xfe garbage", b'{"format": 1, "ranges": "x"}', b"[]", b"null")


class Call:
    def __init__(self, cid: str, proc: subprocess.Popen[bytes], started: float) -> None:
        self.cid = cid
        self.proc = proc
        self.started = started
        self.rc: int | None = None
        self.out = b""
        self.err = b""
        self.killed = False
        self.ended = 0.0


class IpamLoad:
    """Runs rounds until ``stop``; reports counts and violations through ``violate``."""

    def __init__(
        self,
        *,
        ns: NetnsExecutor,
        kubeconfig: str,
        data_dir: Path,
        log_path: Path,
        node: str,
        subnets: tuple[str, ...],
        burst: int,
        rng: random.Random,
        violate: Callable[[str, str], None],
        api_faulty: Callable[[float, float], bool],
    ) -> None:
        self.ns = ns
        self.rng = rng
        self.burst = burst
        self.violate = violate
        self.api_faulty = api_faulty
        self.subnets = [ipaddress.ip_network(s) for s in subnets]
        self.network_dir = data_dir / NETWORK
        self.cache = self.network_dir / "kube-node.json"
        self.log_path = log_path
        self.conf = json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": NETWORK,
                "type": "bridge",
                "ipam": {
                    "type": "kube-node",
                    "kubeconfig": kubeconfig,
                    "nodeName": node,
                    "dataDir": str(data_dir),
                    "timeout": 3,
                    "logfile": str(log_path),
                    "loglevel": "info",
                },
            }
        ).encode()
        self.round = 0
        self.stats: dict[str, int] = {}
        self.latencies: list[float] = []
        self.leaked: set[str] = set()
        self.api_down_request = threading.Event()
        self.api_down_done = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="ipam-wait")

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    # -- invoking the plugin -------------------------------------------------------------

    def _env(self, command: str, cid: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": f"/var/run/netns/{cid}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": CNI_PATH,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=soak;K8S_POD_NAME={cid}",
        }

    def _spawn(self, command: str, cids: list[str]) -> list[Call]:
        def spawn_all() -> list[Call]:
            calls = []
            for cid in cids:
                proc = subprocess.Popen(
                    [PLUGIN],
                    env=self._env(command, cid),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                calls.append(Call(cid, proc, time.monotonic()))
            return calls

        calls = self.ns.call(spawn_all)
        for call in calls:
            try:
                assert call.proc.stdin is not None
                call.proc.stdin.write(self.conf)
                call.proc.stdin.close()
            except OSError:
                pass  # killed before reading its stdin
            call.proc.stdin = None  # communicate() must not touch it again
        return calls

    def _finish(self, calls: list[Call], timeout: float = 60.0) -> None:
        def wait(call: Call) -> None:
            try:
                out, err = call.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                call.proc.kill()
                out, err = call.proc.communicate()
                self.violate("ipam_hung", f"{call.cid}: no answer within {timeout}s")
            call.out = out or b""
            call.err = err or b""
            call.rc = call.proc.returncode
            call.ended = time.monotonic()

        list(self._pool.map(wait, calls))

    def _run(self, command: str, cids: list[str]) -> list[Call]:
        calls = self._spawn(command, cids)
        self._finish(calls)
        return calls

    # -- checks -----------------------------------------------------------------------------

    def reservations(self) -> dict[str, str]:
        """host-local's reservation files: address -> container id."""
        out: dict[str, str] = {}
        if not self.network_dir.is_dir():
            return out
        for p in self.network_dir.iterdir():
            if p.name[:1].isdigit() or ":" in p.name:
                try:
                    out[p.name] = p.read_text().split()[0] if p.read_text().strip() else ""
                except OSError:
                    continue
        return out

    def _check_error(self, call: Call, verb: str) -> int | None:
        """The code of a failed call's one error object (violation when malformed)."""
        try:
            doc = json.loads(call.out)
            code = doc["code"]
            if not isinstance(code, int) or not doc.get("msg"):
                raise ValueError
            return code
        except (ValueError, KeyError, TypeError):
            self.violate(
                "ipam_bad_error",
                f"{verb} {call.cid} rc={call.rc}: stdout {call.out[:300]!r}, "
                f"stderr {call.err[-600:]!r}",
            )
            return None

    def _adds(self, calls: list[Call], live: dict[str, str]) -> None:
        """Account for finished ADDs: record addresses, check uniqueness and subnets."""
        for call in calls:
            if call.killed and call.rc != 0:
                self._count("add_killed")
                continue
            if call.rc == 0:
                self._count("add_ok")
                self.latencies.append(call.ended - call.started)
                try:
                    ips = [i["address"].split("/")[0] for i in json.loads(call.out)["ips"]]
                except (ValueError, KeyError, TypeError):
                    self.violate("ipam_bad_result", f"ADD {call.cid}: {call.out[:300]!r}")
                    continue
                if len(ips) != len(self.subnets):
                    self.violate("ipam_bad_result", f"ADD {call.cid}: {ips} for {self.subnets}")
                for addr in ips:
                    parsed = ipaddress.ip_address(addr)
                    if not any(parsed in s for s in self.subnets):
                        self.violate("ipam_wrong_subnet", f"ADD {call.cid} got {addr}")
                    holder = live.get(addr)
                    if holder is not None and holder != call.cid:
                        self.violate(
                            "address_allocated_twice", f"{addr} to {call.cid} and {holder}"
                        )
                    live[addr] = call.cid
                continue
            code = self._check_error(call, "ADD")
            self._count(f"add_failed_code_{code}")
            if not (code == TRY_AGAIN_LATER and self.api_faulty(call.started, call.ended)):
                self.violate(
                    "ipam_add_failed",
                    f"ADD {call.cid} rc={call.rc} code={code}: {call.out[:300]!r}",
                )

    def _dels(self, cids: list[str]) -> None:
        """DEL every id; a failed DEL is a violation and is retried (twice), as runtimes
        retry DEL until it succeeds."""
        for attempt in range(3):
            failed = []
            for call in self._run("DEL", cids):
                if call.rc == 0:
                    self._count("del_ok")
                    continue
                self._count("del_failed")
                failed.append(call.cid)
                self._check_error(call, "DEL")
                self.violate(
                    "ipam_del_failed",
                    f"DEL {call.cid} (attempt {attempt + 1}) rc={call.rc}: {call.out[:300]!r} "
                    f"stderr {call.err[-600:]!r}",
                )
            if not failed:
                return
            cids = failed
            time.sleep(0.5)

    def _check_reserved(self, live: dict[str, str], what: str) -> None:
        held = self.reservations()
        for addr, cid in held.items():
            if live.get(addr) not in (None, cid):
                self.violate("address_allocated_twice", f"{what}: file {addr} holds {cid}")

    def _check_no_leak(self, what: str) -> None:
        """Nothing reserved once everything was deleted (each leaked address reported once)."""
        held = self.reservations()
        new = sorted(set(held) - self.leaked)
        if new:
            self.leaked.update(new)
            detail = ", ".join(f"{a} ({held[a]})" for a in new[:6])
            self.violate("ipam_leak", f"after {what}: {len(new)} left: {detail}")

    # -- rounds ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.round += 1
            if self.api_down_request.is_set():
                self.api_down_round()
                self.api_down_request.clear()
                self.api_down_done.set()
            else:
                r = self.rng.random()
                if r < 0.55:
                    self.burst_round()
                elif r < 0.8:
                    self.kill_round()
                else:
                    self.corrupt_round()
            stop.wait(self.rng.uniform(0.2, 1.5))

    def _cids(self, n: int, tag: str) -> list[str]:
        return [f"soak{self.round:05d}{tag}{j:03d}" for j in range(n)]

    def burst_round(self) -> None:
        self._count("round_burst")
        cids = self._cids(self.burst, "b")
        live: dict[str, str] = {}
        self._adds(self._run("ADD", cids), live)
        self._check_reserved(live, "burst")
        self._dels(cids)
        self._check_no_leak("a burst's DELs")

    def kill_round(self) -> None:
        self._count("round_kill")
        cids = self._cids(max(4, self.burst // 2), "k")
        calls = self._spawn("ADD", cids)
        time.sleep(self.rng.uniform(0.0, 0.15))
        for call in self.rng.sample(calls, len(calls) // 2):
            if call.proc.poll() is None:
                call.proc.send_signal(signal.SIGKILL)
                call.killed = True
                self._count("sigkill")
        self._finish(calls)
        live: dict[str, str] = {}
        self._adds(calls, live)
        self._check_reserved(live, "kill")
        self._dels(cids)
        self._check_no_leak("DELs after SIGKILLs mid-ADD")

    def corrupt_round(self) -> None:
        self._count("round_corrupt_cache")
        self.network_dir.mkdir(parents=True, exist_ok=True)
        self.cache.write_bytes(self.rng.choice(GARBAGE))
        cids = self._cids(max(2, self.burst // 4), "c")
        live: dict[str, str] = {}
        self._adds(self._run("ADD", cids), live)
        if self.cache.exists() and live:
            try:
                doc = json.loads(self.cache.read_bytes())
                assert isinstance(doc, dict) and doc.get("ranges")
            except (ValueError, AssertionError):
                self.violate(
                    "ipam_cache_not_rebuilt", f"{self.cache}: {self.cache.read_bytes()[:200]!r}"
                )
        self._dels(cids)
        self._check_no_leak("DELs after a corrupt cache")

    def api_down_round(self) -> None:
        """Called while the API server is stopped: ADD with the cache works, ADD without
        it fails cleanly with code 11 and writes nothing, DEL works."""
        self._count("round_api_down")
        cids = self._cids(max(2, self.burst // 4), "d")
        live: dict[str, str] = {}
        if not self.cache.exists():
            self.violate("ipam_no_cache", "no cache before the API-down round")
        self._adds(self._run("ADD", cids), live)
        backup = self.cache.with_suffix(".soak-backup")
        if self.cache.exists():
            self.cache.rename(backup)
        miss = self._run("ADD", [f"soak{self.round:05d}miss"])[0]
        took = miss.ended - miss.started
        if miss.rc == 0:
            self.violate("ipam_api_down", "ADD without cache succeeded with the API down")
            self._dels([miss.cid])
        else:
            code = self._check_error(miss, "ADD")
            self._count(f"add_failed_code_{code}")
            if code != TRY_AGAIN_LATER or took > 3 + 5:
                self.violate("ipam_api_down", f"ADD without cache: code {code} after {took:.1f}s")
            if self.cache.exists():
                self.violate("ipam_api_down", "a failed ADD left a cache behind")
        if backup.exists():
            backup.replace(self.cache)
        self._dels([*cids, miss.cid])
        self._check_no_leak("DELs with the API down")

    def cleanup(self) -> None:
        """DEL everything still reserved (end of the campaign)."""
        held = self.reservations()
        if held:
            self._dels(sorted(set(held.values())))
        self._pool.shutdown(wait=False, cancel_futures=True)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def q(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else None

        return {
            "rounds": self.round,
            **self.stats,
            "add_latency_p50_s": q(0.5),
            "add_latency_p99_s": q(0.99),
        }
