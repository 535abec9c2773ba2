"""Helpers shared by the benchmarks: statistics, ``/proc`` readings, a kernel route monitor,
a lab network namespace with reachable gateways, the daemon as a subprocess, and running
one scenario in a child process inside a throwaway namespace.

Only the standard library and ``xcluster_cni_lib`` (no ``pyroute2``: the kernel is watched
with ``ip -ts monitor route``, a C program, so its timestamps do not wait for our GIL).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import ipaddress
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from xcluster_cni_lib.testing.netns import netns, run_in

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
RESULTS = REPO / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")

Json = dict[str, Any]


# -- statistics --------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) with linear interpolation; nan when empty."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values: Sequence[float]) -> Json:
    """n, min, p50, p90, p99, max and mean of a sample."""
    return {
        "n": len(values),
        "min": min(values) if values else math.nan,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": statistics.fmean(values) if values else math.nan,
    }


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


# -- /proc ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


class Sampler:
    """Samples a process's CPU time and RSS every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, *, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float, int]] = []  # (monotonic, cpu s, rss KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _sample(self) -> None:
        try:
            cpu = cpu_seconds(self.pid)
            rss = memory_kb(self.pid)["VmRSS"]
        except (OSError, KeyError, IndexError):
            return
        self.samples.append((time.monotonic(), cpu, rss))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def window(self, start: float, end: float) -> list[tuple[float, float, int]]:
        return [s for s in self.samples if start <= s[0] <= end]


# -- the kernel's route table, watched -----------------------------------------------------

_TS = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{6})\] (.*)$")


def _parse_monitor_line(line: str) -> tuple[float, bool, str, str, str] | None:
    """(unix time, deleted, dst, gateway, protocol) of one ``ip -ts monitor route`` line."""
    m = _TS.match(line.strip())
    if m is None:
        return None
    stamp = time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + int(m.group(2)) / 1e6
    words = m.group(3).split()
    deleted = bool(words) and words[0] == "Deleted"
    if deleted:
        words = words[1:]
    if not words or words[0] in ("local", "broadcast", "multicast", "anycast", "unreachable"):
        return None
    dst = words[0]
    gateway = words[words.index("via") + 1] if "via" in words else ""
    proto = words[words.index("proto") + 1] if "proto" in words else ""
    if "/" not in dst and dst != "default":
        dst += "/128" if ":" in dst else "/32"
    return stamp, deleted, _canonical(dst), _canonical(gateway), proto


def _canonical(text: str) -> str:
    """The ``ipaddress`` spelling of a network or address (as ``Route`` prints it)."""
    try:
        if "/" in text:
            return str(ipaddress.ip_network(text, strict=False))
        return str(ipaddress.ip_address(text)) if text else text
    except ValueError:
        return text


class RouteMonitor:
    """Follows the routes of one protocol in the current namespace with ``ip -ts monitor
    route``: the kernel's notifications, time-stamped by ``ip`` as they arrive (wall clock,
    microseconds). Knows what is present, counts changes, and lets a caller wait for a route.

    The kernel does not notify a write that changes nothing (an identical replace), so
    ``changes`` counts route *changes*; the daemon's ``/metrics`` count its writes.
    """

    def __init__(self, protocol: int) -> None:
        self.protocol = str(protocol)
        self.present: dict[str, str] = {}  # dst -> gateway
        self.changed_at: dict[str, float] = {}  # dst -> unix time of its last change
        self.changes = 0
        self.overruns = 0  # times the kernel dropped notifications for ``ip monitor``
        self.events: list[tuple[float, bool, str, str]] = []
        self.record_events = False
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._marker_seen = threading.Event()

    def __enter__(self) -> RouteMonitor:
        self._proc = subprocess.Popen(
            ["ip", "-rcvbuf", str(1 << 24), "-ts", "monitor", "route"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            preexec_fn=die_with_parent,
        )
        self._thread = threading.Thread(target=self._read, name="route-monitor", daemon=True)
        self._thread.start()
        self._err_thread = threading.Thread(target=self._read_errors, daemon=True)
        self._err_thread.start()
        # The monitor is live once it reports a marker route we add and remove.
        deadline = time.monotonic() + 10
        marker = "198.18.255.254/32"
        while not self._marker_seen.is_set():
            subprocess.run(
                ["ip", "route", "replace", "blackhole", marker, "proto", "254"],
                check=True,
                capture_output=True,
            )
            subprocess.run(["ip", "route", "del", marker], check=False, capture_output=True)
            if self._marker_seen.wait(0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("ip monitor did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(5)
        if self._thread is not None:
            self._thread.join(5)

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if "198.18.255.254" in line:
                self._marker_seen.set()
                continue
            parsed = _parse_monitor_line(line)
            if parsed is None or parsed[4] != self.protocol:
                continue
            stamp, deleted, dst, gateway, _ = parsed
            with self._cond:
                if deleted:
                    if self.present.get(dst) == gateway:
                        del self.present[dst]
                else:
                    self.present[dst] = gateway
                self.changed_at[dst] = stamp
                self.changes += 1
                if self.record_events:
                    self.events.append((stamp, deleted, dst, gateway))
                self._cond.notify_all()

    def _read_errors(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            if "No buffer space" in line:
                with self._cond:
                    self.overruns += 1

    def reseed(self) -> None:
        """Reset ``present`` from a dump of the table: after a burst (an initial sync of
        thousands of routes) the kernel may have dropped notifications (ENOBUFS)."""
        present: dict[str, str] = {}
        for family in ("-4", "-6"):
            out = run_in(None, ["ip", family, "route", "show", "proto", self.protocol])
            for line in out.splitlines():
                parsed = _parse_monitor_line(f"[1970-01-01T00:00:00.000000] {line}")
                if parsed is not None:
                    present[parsed[2]] = parsed[3]
        with self._cond:
            self.present = present
            self._cond.notify_all()

    def wait(self, predicate: Callable[[dict[str, str]], bool], timeout: float) -> bool:
        """Wait until ``predicate(present)`` holds; false on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.present), timeout)

    def wait_routes(self, want: dict[str, str | None], timeout: float) -> float | None:
        """Wait until every ``dst`` maps to its gateway (``None``: is absent); return the
        unix time the last of them changed, or ``None`` on timeout."""

        def done(present: dict[str, str]) -> bool:
            return all(present.get(d) == g for d, g in want.items())

        if not self.wait(done, timeout):
            return None
        with self._cond:
            return max(self.changed_at.get(d, 0.0) for d in want)

    def count(self) -> int:
        with self._cond:
            return len(self.present)


class NeighMonitor:
    """Follows neighbour and FDB entries of one device with ``ip -ts monitor neigh``: both
    print as ``<address> dev <dev> lladdr <mac> ...`` (an FDB entry's address is its
    destination), so a caller that knows the address and MAC it waits for can tell them
    apart. ``wait(want, timeout)``: every (address, mac) -> present (True) or absent."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.present: set[tuple[str, str]] = set()
        self.changed_at: dict[tuple[str, str], float] = {}
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> NeighMonitor:
        self._proc = subprocess.Popen(
            ["ip", "-rcvbuf", str(1 << 24), "-ts", "monitor", "neigh"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            preexec_fn=die_with_parent,
        )
        self._thread = threading.Thread(target=self._read, name="neigh-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(5)

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            m = _TS.match(line.strip())
            if m is None:
                continue
            words = m.group(3).split()
            deleted = bool(words) and words[0] == "Deleted"
            words = words[1:] if deleted else words
            if "dev" not in words or words[words.index("dev") + 1] != self.device:
                continue
            if "lladdr" not in words:
                continue
            key = (_canonical(words[0]), words[words.index("lladdr") + 1])
            stamp = time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
            stamp += int(m.group(2)) / 1e6
            with self._cond:
                if deleted:
                    self.present.discard(key)
                else:
                    self.present.add(key)
                self.changed_at[key] = stamp
                self._cond.notify_all()

    def wait(self, want: dict[tuple[str, str], bool], timeout: float) -> float | None:
        """The unix time the last of ``want`` changed as wanted; None on timeout."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: all((k in self.present) == v for k, v in want.items()), timeout
            )
            return max(self.changed_at.get(k, 0.0) for k in want) if ok and want else None


def count_routes(protocol: int) -> int:
    """How many routes of ``protocol`` the current namespace's main table holds."""
    total = 0
    for family in ("-4", "-6"):
        out = run_in(None, ["ip", family, "route", "show", "proto", str(protocol)])
        total += sum(1 for line in out.splitlines() if line.strip())
    return total


class RawWatch:
    """A bare watch on the API-server double's nodes (``http.client``, one JSON parse per
    event, nothing else): when each event reaches *a* watcher. The floor under any
    daemon's convergence, measured in the same run."""

    def __init__(self, url: str, resource_version: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._path = f"/api/v1/nodes?watch=1&resourceVersion={resource_version}"
        self.arrivals: dict[tuple[str, str], float] = {}  # (type, name) -> unix time
        self._cond = threading.Condition()
        self._conn: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="raw-watch", daemon=True)

    def __enter__(self) -> RawWatch:
        self._conn = http.client.HTTPConnection(self._host, self._port, timeout=600)
        self._conn.request("GET", self._path)
        self._response = self._conn.getresponse()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            sock = self._conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(2)
            self._conn.close()
        self._thread.join(5)

    def _run(self) -> None:
        try:
            for line in self._response:
                now = time.time()
                if not line.strip():
                    continue
                event = json.loads(line)
                name = str(((event.get("object") or {}).get("metadata") or {}).get("name"))
                with self._cond:
                    self.arrivals[(str(event.get("type")), name)] = now
                    self._cond.notify_all()
        except Exception:  # the stream ends when the benchmark closes it
            return

    def wait(self, kind: str, name: str, timeout: float) -> float | None:
        """When the latest ``kind`` event (ADDED/MODIFIED/DELETED) for ``name`` arrived."""
        with self._cond:
            if not self._cond.wait_for(lambda: (kind, name) in self.arrivals, timeout):
                return None
            return self.arrivals.pop((kind, name))


# -- processes ----------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the benchmark process dies, so nothing leaks."""
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def stop_process(proc: subprocess.Popen[Any], *, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def wait_until(predicate: Callable[[], bool], timeout: float, *, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape_metrics(address: str) -> dict[str, float]:
    """The daemon's ``/metrics`` as ``{"name{labels}": value}``."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def metric_sum(metrics: dict[str, float], name: str) -> float:
    """The sum of a metric over all its label sets."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


# -- the lab namespace ---------------------------------------------------------------------


def covering_network(addresses: Iterable[str], family: int) -> str | None:
    """The smallest network containing every address of one family (at most /16 or /64
    wide is typical), or ``None`` when there is none."""
    ips = [ipaddress.ip_address(a) for a in addresses]
    ips = [ip for ip in ips if ip.version == family]
    if not ips:
        return None
    bits = 32 if family == 4 else 128
    lo, hi = int(min(ips)), int(max(ips))
    prefix = bits - (lo ^ hi).bit_length()
    net = ipaddress.ip_network((lo, prefix), strict=False)
    return str(net)


def setup_gateways(own_addresses: Sequence[str], all_addresses: Iterable[str]) -> None:
    """Make every node address a reachable gateway in the current namespace: a veth pair
    (both ends up, inside this namespace) carrying the own node's addresses with a prefix
    that covers all node addresses. No traffic leaves the namespace."""
    everything = list(all_addresses)
    run_in(None, ["ip", "link", "add", "bgw0", "type", "veth", "peer", "name", "bgw1"])
    run_in(None, ["ip", "link", "set", "bgw1", "up"])
    run_in(None, ["ip", "link", "set", "bgw0", "up"])
    for own in own_addresses:
        family = ipaddress.ip_address(own).version
        net = covering_network([own, *everything], family)
        assert net is not None
        prefix = min(int(net.split("/")[1]), 24 if family == 4 else 64)
        cmd = ["ip", "addr", "add", f"{own}/{prefix}", "dev", "bgw0"]
        if family == 6:
            cmd.append("nodad")
        run_in(None, cmd)


# -- the daemon ----------------------------------------------------------------------------


_DAEMON_SHIM = """
import argparse, sys
from xcluster_cni_daemon import daemon_cmd
parser = argparse.ArgumentParser(prog="xcluster-cni")
daemon_cmd.register(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def daemon_command() -> list[str]:
    """``xcluster-cni daemon``; while the CLI does not list it yet, the same entry point
    (``xcluster_cni_daemon.daemon_cmd``) through a four-line shim."""
    cli = str(VENV_BIN / "xcluster-cni")
    probe = subprocess.run([cli, "daemon", "--help"], capture_output=True, check=False)
    if probe.returncode == 0:
        return [cli, "daemon"]
    return [sys.executable, "-c", _DAEMON_SHIM, "daemon"]


@contextmanager
def daemon_process(
    env: dict[str, str], *, log_path: Path, args: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """``xcluster-cni daemon`` as a subprocess of this one (same namespace), stopped on exit."""
    full_env = {**os.environ, **env}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [*daemon_command(), *args],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:
        yield proc
    finally:
        stop_process(proc)


# -- scenarios in a child process inside a fresh namespace ---------------------------------


def run_in_netns(module: str, params: Json, *, timeout: float) -> Json:
    """Run ``python -m bench.<module> --child PARAMS --out FILE`` inside a throwaway network
    namespace (deleted afterwards, also on failure or timeout) and return its JSON."""
    with netns("bn") as ns, tempfile.TemporaryDirectory(prefix="xcbench") as tmp:
        out = Path(tmp) / "out.json"
        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", f"bench.{module}"]
        argv += ["--child", json.dumps(params), "--out", str(out)]
        proc = subprocess.Popen(argv, cwd=REPO, start_new_session=True)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RuntimeError(f"bench.{module} timed out after {timeout:.0f} s") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if rc != 0 or not out.exists():
            raise RuntimeError(f"bench.{module} failed (exit {rc})")
        result: Json = json.loads(out.read_text())
        return result


def child_main(run: Callable[[Json], Json]) -> None:
    """The ``__main__`` of a scenario module: ``--child PARAMS --out FILE``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True, help="parameters as JSON")
    parser.add_argument("--out", required=True, help="where to write the result JSON")
    ns = parser.parse_args()
    result = run(json.loads(ns.child))
    Path(ns.out).write_text(json.dumps(result))


def emit(result: Json, path: str | None) -> None:
    """A bench's result: JSON on stdout, and in ``path`` when given (``--json``)."""
    text = json.dumps(result, indent=1)
    print(text)
    if path:
        Path(path).write_text(text + "\n")


def progress(message: str, *, stream: TextIO = sys.stderr) -> None:
    """One progress line on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=stream, flush=True)
