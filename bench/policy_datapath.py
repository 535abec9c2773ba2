"""NetworkPolicy data-path cost (issue 16): request/response rate, connection rate and ping
latency between pods, without policy tables and with the tables of a realistic cluster.

Topology (network namespaces, IPv4): node ``node-0`` with a bridge ``cbr0`` (MAC pinned,
``send_redirects`` off on it, as the daemon's ``kernel/podbridge.py`` does) and two pods,
``client`` 10.244.0.2 and ``server`` 10.244.0.3, on veths in it (*same node*: bridged);
node ``node-1`` with its own ``cbr0`` and pod ``remote`` 10.244.1.2; the nodes joined by
a veth (192.168.0.1/2) with a route to each other's pod CIDR (*cross node*: client ->
node-0 -> node-1 -> remote, two forwarding hops). IP forwarding on in both nodes;
``net.bridge.bridge-nf-call-iptables`` as the namespace has it (reported).

Conditions, interleaved round by round (the order rotated each round):

- ``none``: no tables at all (and so no conntrack in the nodes);
- ``conntrack``: one table whose forward chain only says ``ct state established,related
  accept``: conntrack on in the nodes, as kube-proxy's rules turn it on on any
  Kubernetes node (the reference a real node starts from);
- ``policy``: on each node, its tables compiled from a generated cluster
  (``bench/policy_cluster.py``: 1,000 pods on 20 nodes, 200 policies) in which the three
  probe pods are isolated for ingress and egress by two of the 200 policies and allowed
  to talk: ``compile_node`` + ``table_document(..., bridge_mac=<cbr0 MAC>)``, applied by
  ``nft -j -f -``. Same-node traffic of the policed probes is then *not bridged*: the
  bridge table hands it to node-0's IP stack, which routes it back out ``cbr0`` through the
  ``forward`` hook and conntrack (TTL 63 instead of 64: reported);
- ``unselected``: the same tables, but the two probe policies select no pod: the probes
  are not policed (no redirect), the node still runs the tables and conntrack;
- ``policy-brnf``: the ``policy`` tables without the bridge table
  (``POLICY_SAME_NODE=br-netfilter``): same-node frames stay bridged and meet ``forward``
  through ``br_netfilter`` (needs ``bridge-nf-call-iptables`` 1).

Measured per condition and path:

- ``rr``: ``sockperf ping-pong --tcp -m 14`` (Debian package ``sockperf``; 14 bytes is its
  smallest message) for ``--seconds``: request/response transactions per second over one
  established TCP connection (sockperf's own warm-up excluded), and the median round trip
  it reports (``--full-rtt``). Without ``sockperf``, a loop of one byte each way (Python
  on both ends: its ~10 µs per transaction are in the figure). Both ends run on one CPU
  (``--cpu``, default the last; ``taskset``): the round trip is then the path's CPU cost
  plus two context switches, not the time an idle CPU of the VM takes to wake up (tens
  of µs here, and it varies with the machine's load more than anything measured);
- ``crr``: TCP connections per second, each: connect, one byte each way, close with a
  reset (no TIME_WAIT pile-up); Python on both ends, pinned alike. The only figure where
  the policy's lookups run on every transaction: on an established connection the first
  rule, ``ct state established,related accept``, decides, so ``rr`` and ``ping`` pay for
  conntrack, the bridge table and the redirect, not for the rule lookups;
- ``ping``: ``ping -c N -i 0`` (back to back; ``--ping-interval``), from the server to the
  client (the client's policy allows everything from the servers; only a rule without
  ports allows ICMP); per-reply RTT (1 µs resolution: the mean is reported too).

Checked in each round: under ``policy`` the client's connection to ``DENIED_PORT`` on the
servers times out (dropped), without it it is refused (nothing listens) — so the tables
are really in the path. Also counted: the ICMP redirects node-0 sent (``IcmpOutRedirects``).

    .venv/bin/python -m bench.policy_datapath                       # 6 rounds, ~5 minutes
    .venv/bin/python -m bench.policy_datapath --rounds 2 --seconds 1 --ping 50 --json out.json

Needs root, iproute2, nft, ping; ``sockperf`` optional (``apt-get install sockperf``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from bench import policy_cluster as pc
from bench.common import die_with_parent, emit, percentile, stop_process
from xcluster_cni_lib.core import policynft
from xcluster_cni_lib.testing.netns import netns, run_in

Json = dict[str, Any]
TABLE = policynft.table_name(202)
CONDITIONS = ("none", "conntrack", "policy", "unselected", "policy-brnf")
CT_TABLE = "xcluster-bench-conntrack"
PATHS = ("same_node", "cross_node")
ECHO_PORT = 12000  # in the probes' allowed range: the Python echo server (crr, rr fallback)

# One byte each way per transaction, over one connection (``rr``), or a new connection per
# transaction (``crr``). Prints one JSON line.
_CLIENT = r"""
import json, socket, struct, sys, time
LINGER0 = struct.pack("ii", 1, 0)
mode, host, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
n = 0
if mode == "rr":
    s = socket.create_connection((host, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(100):
        s.send(b"x"); s.recv(1)
    t0 = time.perf_counter(); end = t0 + seconds
    while True:
        for _ in range(100):
            s.send(b"x"); s.recv(1)
        n += 100
        t = time.perf_counter()
        if t >= end:
            break
    s.close()
else:
    t0 = time.perf_counter(); end = t0 + seconds
    while True:
        s = socket.create_connection((host, port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)  # no TIME_WAIT pile-up
        s.send(b"x"); s.recv(1); s.close()
        n += 1
        t = time.perf_counter()
        if t >= end:
            break
print(json.dumps({"transactions": n, "seconds": t - t0}))
"""

# Echoes every byte back, a thread per connection.
_SERVER = r"""
import socket, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((host, port)); ls.listen(512)
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with c:
        while True:
            b = c.recv(64)
            if not b:
                return
            c.sendall(b)
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

_CONNECT = r"""
import socket, sys
s = socket.socket(); s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("connected")
except ConnectionRefusedError:
    print("refused")
except (TimeoutError, socket.timeout):
    print("timeout")
except OSError as e:
    print(f"error {e.errno}")
"""


@attrs.define
class Topology:
    nodes: dict[int, str]  # node index -> namespace
    pods: dict[str, str]  # probe name -> namespace
    macs: dict[int, str]  # node index -> cbr0 MAC


def _ip(ns: str, *args: str) -> None:
    run_in(ns, ["ip", *args])


def _sysctl(ns: str, key: str, value: str) -> None:
    run_in(ns, ["sysctl", "-qw", f"{key}={value}"])


@contextlib.contextmanager
def topology(*, bridge_nf: str | None = None) -> Iterator[Topology]:
    """Two nodes and the three probe pods (see the module's docstring), torn down on exit;
    ``bridge_nf``: ``net.bridge.bridge-nf-call-iptables`` of the nodes (None: as is)."""
    with contextlib.ExitStack() as stack:
        nodes = {k: stack.enter_context(netns(f"pdn{k}")) for k in (0, 1)}
        pods = {p.name: stack.enter_context(netns(f"pd{p.name[:2]}")) for p in pc.PROBES}
        macs = {}
        for k, ns in nodes.items():
            mac = f"02:42:0a:f4:{k:02x}:01"
            _ip(ns, "link", "add", "cbr0", "type", "bridge")
            _ip(ns, "link", "set", "cbr0", "address", mac)
            _ip(ns, "addr", "add", f"10.244.{k}.1/24", "dev", "cbr0")
            _ip(ns, "link", "set", "cbr0", "up")
            _sysctl(ns, "net.ipv4.ip_forward", "1")
            _sysctl(ns, "net.ipv4.conf.cbr0.send_redirects", "0")
            if bridge_nf is not None:
                _sysctl(ns, "net.bridge.bridge-nf-call-iptables", bridge_nf)
            macs[k] = mac
        _ip(nodes[0], *f"link add eth1 type veth peer name eth1 netns {nodes[1]}".split())
        for k, ns in nodes.items():
            _ip(ns, "addr", "add", f"192.168.0.{k + 1}/24", "dev", "eth1")
            _ip(ns, "link", "set", "eth1", "up")
            other = 1 - k
            _ip(ns, "route", "add", f"10.244.{other}.0/24", "via", f"192.168.0.{other + 1}")
        for i, p in enumerate(pc.PROBES):
            node, pod = nodes[p.node], pods[p.name]
            veth = f"veth{i}"
            _ip(node, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod)
            _ip(node, "link", "set", veth, "master", "cbr0")
            _ip(node, "link", "set", veth, "up")
            _ip(pod, "addr", "add", f"{p.ipv4}/24", "dev", "eth0")
            _ip(pod, "link", "set", "eth0", "up")
            _ip(pod, "route", "add", "default", "via", f"10.244.{p.node}.1")
        yield Topology(nodes=nodes, pods=pods, macs=macs)


def _nft(ns: str, document: Json) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-j", "-f", "-"],
        input=json.dumps(document),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"nft -j -f - in {ns} failed: {proc.stderr.strip()[:500]}")


def documents(topo: Topology, *, pods_n: int, policies_n: int, nodes_n: int) -> dict[str, Any]:
    """Per condition, per node index: the ``nft -j -f -`` document to apply."""
    c = pc.cluster(pods_n=pods_n, policies_n=policies_n, nodes=nodes_n)
    unselected = pc.Cluster(
        pods=c.pods,
        namespaces=c.namespaces,
        policies=[_select_nothing(p) if _is_probe(p) else p for p in c.policies],
        nodes=c.nodes,
    )
    out: dict[str, Any] = {
        "none": {k: _without_ct(policynft.delete_document(TABLE)) for k in topo.nodes},
        "conntrack": {k: _with_ct(policynft.delete_document(TABLE)) for k in topo.nodes},
    }
    stats: Json = {}
    for name, cl in (("policy", c), ("unselected", unselected), ("policy-brnf", c)):
        view = cl.view()
        if view.problems:
            raise RuntimeError(f"generated cluster has problems: {view.problems[:3]}")
        out[name] = {}
        for k in topo.nodes:
            state = policynft.compile_node(view, node=pc.node_name(k))
            # policy-brnf: no bridge table (POLICY_SAME_NODE=br-netfilter): same-node
            # frames stay bridged and meet ``forward`` through br_netfilter
            mac = None if name == "policy-brnf" else topo.macs[k]
            out[name][k] = _without_ct(policynft.table_document(TABLE, state, bridge_mac=mac))
            stats[f"{name}/node-{k}"] = {
                "elements": state.count(),
                "class_chains": len(state.chains),
                "isolated_addresses": len(state.policed),
            }
    return {"documents": out, "tables": stats}


def _without_ct(document: Json) -> Json:
    """``document`` preceded by the removal of the ``conntrack`` condition's table."""
    table = {"family": "inet", "name": CT_TABLE}
    gone = [{"add": {"table": table}}, {"delete": {"table": table}}]
    return {"nftables": [*gone, *document["nftables"]]}


def _with_ct(document: Json) -> Json:
    """``document``, then a table that only turns conntrack on in the forward path (``ct
    state established,related accept``), as kube-proxy's rules do on a Kubernetes node."""
    base = {"family": "inet", "table": CT_TABLE}
    state = {"ct": {"key": "state"}}
    match = {"match": {"op": "in", "left": state, "right": ["established", "related"]}}
    chain = {
        **base,
        "name": "forward",
        "type": "filter",
        "hook": "forward",
        "prio": 0,
        "policy": "accept",
    }
    return {
        "nftables": [
            *_without_ct(document)["nftables"],
            {"add": {"table": {"family": "inet", "name": CT_TABLE}}},
            {"add": {"chain": chain}},
            {"add": {"rule": {**base, "chain": "forward", "expr": [match, {"accept": None}]}}},
        ]
    }


def _is_probe(policy: Json) -> bool:
    return bool(policy["metadata"]["namespace"] == pc.PROBE_NAMESPACE)


def _select_nothing(policy: Json) -> Json:
    p: Json = json.loads(json.dumps(policy))
    p["spec"]["podSelector"] = {"matchLabels": {"role": "nobody"}}
    return p


def connect(topo: Topology, src: str, ip: str, port: int, timeout: float) -> str:
    out = run_in(
        topo.pods[src],
        [sys.executable, "-I", "-c", _CONNECT, ip, str(port), str(timeout)],
    )
    return out.strip()


def wait_reachable(topo: Topology, ip: str, port: int, *, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while True:
        if connect(topo, "client", ip, port, 1.0) == "connected":
            return
        if time.monotonic() > end:
            raise RuntimeError(f"{ip}:{port} not reachable from the client")
        time.sleep(0.1)


_CLEAN = re.compile(r"\x1b\[[0-9;]*m")


def parse_sockperf(text: str) -> Json:
    """Transactions/s and round-trip percentiles (µs) from ``sockperf ping-pong --full-rtt``."""
    text = _CLEAN.sub("", text)
    valid = re.search(
        r"\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)", text
    )
    if valid is None:
        raise RuntimeError(f"unexpected sockperf output: {text[-500:]}")
    seconds, received = float(valid.group(1)), int(valid.group(3))
    pct = {
        float(m.group(1)): float(m.group(2))
        for m in re.finditer(r"percentile\s+([\d.]+)\s*=\s*([\d.]+)", text)
    }
    return {
        "rate": received / seconds if seconds > 0 else 0.0,
        "transactions": received,
        "seconds": seconds,
        "rtt_p50_us": pct.get(50.0),
        "rtt_p99_us": pct.get(99.0),
    }


def _pin(cpu: int | None) -> list[str]:
    return [] if cpu is None else ["taskset", "-c", str(cpu)]


def measure_rr(
    topo: Topology, ip: str, seconds: float, *, sockperf: bool, cpu: int | None = None
) -> Json:
    if sockperf:
        out = run_in(
            topo.pods["client"],
            [
                *_pin(cpu),
                *("sockperf", "ping-pong", "--tcp", "-i", ip, "-p", str(pc.RR_PORT)),
                *("-t", str(max(1, round(seconds))), "-m", "14", "--full-rtt"),
            ],
        )
        return parse_sockperf(out)
    return measure_loop(topo, "rr", ip, seconds, cpu=cpu)


def measure_loop(
    topo: Topology, mode: str, ip: str, seconds: float, *, cpu: int | None = None
) -> Json:
    out = run_in(
        topo.pods["client"],
        [*_pin(cpu), sys.executable, "-I", "-c", _CLIENT, mode, ip, str(ECHO_PORT), str(seconds)],
    )
    r: Json = json.loads(out)
    r["rate"] = r["transactions"] / r["seconds"]
    return r


_REPLY = re.compile(r"ttl=(\d+) time=([\d.]+) ms")


def measure_ping(topo: Topology, src: str, ip: str, count: int, interval: str = "0") -> Json:
    out = run_in(
        topo.pods[src],
        ["ping", "-n", "-c", str(count), "-i", interval, "-W", "1", ip],
        check=False,
    )
    replies = [(int(t), float(ms) * 1000) for t, ms in _REPLY.findall(out)]
    if not replies:
        raise RuntimeError(f"ping {ip} from {src}: no reply")
    rtts = [us for _, us in replies]
    return {
        "rtts_us": rtts,
        "lost": count - len(replies),
        "ttl": sorted({t for t, _ in replies}),
    }


def icmp_redirects(ns: str) -> int:
    """IcmpOutRedirects of a namespace (``/proc/net/snmp`` as seen inside it)."""
    out = run_in(ns, ["cat", "/proc/net/snmp"])
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("Icmp:")]
    return int(dict(zip(lines[0][1:], lines[1][1:], strict=True))["OutRedirects"])


@contextlib.contextmanager
def servers(topo: Topology, *, sockperf: bool, cpu: int | None = None) -> Iterator[None]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for p in pc.PROBES:
            if p.role != "server":
                continue
            ns = topo.pods[p.name]
            argv = [[*_pin(cpu), sys.executable, "-I", "-c", _SERVER, p.ipv4, str(ECHO_PORT)]]
            if sockperf:
                argv.append(
                    [*_pin(cpu), "sockperf", "server", "--tcp", "-i", p.ipv4, "-p", str(pc.RR_PORT)]
                )
            for a in argv:
                procs.append(
                    subprocess.Popen(
                        ["ip", "netns", "exec", ns, *a],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        preexec_fn=die_with_parent,
                    )
                )
        yield
    finally:
        for proc in procs:
            stop_process(proc, timeout=5)


def run(
    *,
    rounds: int,
    seconds: float,
    ping: int,
    pods_n: int,
    policies_n: int,
    nodes_n: int,
    conditions: Sequence[str] = CONDITIONS,
    use_sockperf: bool | None = None,
    ping_interval: str = "0",
    bridge_nf: str | None = None,
    cpu: int | None = None,
) -> Json:
    sockperf = shutil.which("sockperf") is not None if use_sockperf is None else use_sockperf
    samples: dict[str, dict[str, dict[str, list[Any]]]] = {
        c: {p: {"rr": [], "rr_p50_us": [], "crr": [], "ping": [], "ping_p50_us": []} for p in PATHS}
        for c in conditions
    }
    checks: list[Json] = []
    redirects: dict[str, int] = {c: 0 for c in conditions}
    ttls: dict[str, dict[str, list[int]]] = {c: {} for c in conditions}
    load: list[float] = [os.getloadavg()[0]]
    with topology(bridge_nf=bridge_nf) as topo:
        t0 = time.perf_counter()
        docs = documents(topo, pods_n=pods_n, policies_n=policies_n, nodes_n=nodes_n)
        compile_s = time.perf_counter() - t0
        bridge_nf = run_in(
            topo.nodes[0], ["sysctl", "-n", "net.bridge.bridge-nf-call-iptables"], check=False
        ).strip()
        targets = {"same_node": pc.PROBES[1], "cross_node": pc.PROBES[2]}
        with servers(topo, sockperf=sockperf, cpu=cpu):
            for p in targets.values():
                wait_reachable(topo, p.ipv4, ECHO_PORT)
                if sockperf:
                    wait_reachable(topo, p.ipv4, pc.RR_PORT)
            for r in range(rounds):
                order = list(conditions[r % len(conditions) :]) + list(
                    conditions[: r % len(conditions)]
                )
                for cond in order:
                    for k, ns in topo.nodes.items():
                        _nft(ns, docs["documents"][cond][k])
                    before = icmp_redirects(topo.nodes[0])
                    for path, target in targets.items():
                        s = samples[cond][path]
                        rr = measure_rr(topo, target.ipv4, seconds, sockperf=sockperf, cpu=cpu)
                        s["rr"].append(rr["rate"])
                        if rr.get("rtt_p50_us") is not None:
                            s["rr_p50_us"].append(rr["rtt_p50_us"])
                        crr = measure_loop(topo, "crr", target.ipv4, seconds, cpu=cpu)
                        s["crr"].append(crr["rate"])
                        pg = measure_ping(topo, target.name, pc.PROBES[0].ipv4, ping, ping_interval)
                        s["ping"].extend(pg["rtts_us"])
                        s["ping_p50_us"].append(percentile(pg["rtts_us"], 50))
                        ttls[cond][path] = pg["ttl"]
                        verdict = connect(topo, "client", target.ipv4, pc.DENIED_PORT, 1.0)
                        want = "timeout" if cond in ("policy", "policy-brnf") else "refused"
                        checks.append(
                            {"round": r, "condition": cond, "path": path, "denied_port": verdict}
                        )
                        if verdict != want:
                            raise RuntimeError(
                                f"{cond} {path}: connection to the denied port {verdict}, "
                                f"expected {want}: the tables are not what this measures"
                            )
                    redirects[cond] += icmp_redirects(topo.nodes[0]) - before
                load.append(os.getloadavg()[0])
        for k, ns in topo.nodes.items():
            _nft(ns, docs["documents"]["none"][k])
    return {
        "benchmark": "policy_datapath",
        "rr_tool": "sockperf ping-pong --tcp -m 14" if sockperf else "python loop, 1 byte",
        "sockperf": _sockperf_version() if sockperf else None,
        "nft": subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip(),
        "kernel": platform.release(),
        "bridge_nf_call_iptables": bridge_nf,
        "cluster": {"pods": pods_n, "policies": policies_n, "nodes": nodes_n},
        "tables": docs["tables"],
        "compile_seconds": round(compile_s, 3),
        "rounds": rounds,
        "seconds": seconds,
        "ping_count": ping,
        "ping_interval": ping_interval,
        "cpu": cpu,
        "loadavg_1m": {"min": min(load), "max": max(load)},
        "icmp_redirects_node0": redirects,
        "ttl_seen_by_ping": ttls,
        "results": summarize(samples),
        "checks_ok": len(checks),
    }


def _sockperf_version() -> str:
    out = subprocess.run(["sockperf", "--version"], capture_output=True, text=True).stdout
    return _CLEAN.sub("", out).splitlines()[0].strip() if out else "?"


def _spread(values: Sequence[float]) -> Json:
    if not values:
        return {}
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "n": len(values),
    }


def summarize(samples: dict[str, dict[str, dict[str, list[Any]]]]) -> Json:
    """Per condition and path: medians over rounds with min/max (rates) and the pooled ping
    percentiles; the ratios of every condition to ``none``."""
    out: Json = {}
    for cond, by_path in samples.items():
        out[cond] = {}
        for path, s in by_path.items():
            out[cond][path] = {
                "rr_per_s": _spread(s["rr"]),
                "rr_rtt_p50_us": _spread(s["rr_p50_us"]),
                "crr_per_s": _spread(s["crr"]),
                "ping_us": {
                    "mean": round(statistics.fmean(s["ping"]), 2) if s["ping"] else None,
                    "p50": round(percentile(s["ping"], 50), 1),
                    "p90": round(percentile(s["ping"], 90), 1),
                    "p99": round(percentile(s["ping"], 99), 1),
                    "n": len(s["ping"]),
                },
                "ping_round_p50_us": _spread(s["ping_p50_us"]),
            }
    for ref in ("none", "conntrack"):
        base = out.get(ref)
        if base is None:
            continue
        for cond in out:
            if cond in ("none", ref):
                continue
            for path in out[cond]:
                a, b = base[path], out[cond][path]
                b[f"vs_{ref}"] = {
                    "rr_rate": _ratio(b["rr_per_s"], a["rr_per_s"]),
                    "rr_rtt_p50": _ratio(b["rr_rtt_p50_us"], a["rr_rtt_p50_us"]),
                    "crr_rate": _ratio(b["crr_per_s"], a["crr_per_s"]),
                    "ping_p50": _ratio(
                        {"median": b["ping_us"]["p50"]}, {"median": a["ping_us"]["p50"]}
                    ),
                }
    return out


def _ratio(b: Json, a: Json) -> float | None:
    if not a or not b or not a["median"]:
        return None
    return round(float(b["median"]) / float(a["median"]), 3)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0, help="per rr and crr sample")
    parser.add_argument("--ping", type=int, default=2000, help="pings per sample")
    parser.add_argument(
        "--ping-interval",
        default="0",
        help="ping -i (default 0: back to back, root only; 0.01 lets the CPUs idle between)",
    )
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--no-sockperf", action="store_true", help="the Python rr loop")
    parser.add_argument(
        "--conditions", default=",".join(CONDITIONS), help=f"subset of {','.join(CONDITIONS)}"
    )
    parser.add_argument(
        "--bridge-nf-call-iptables",
        choices=("0", "1"),
        help="set it in the nodes (default: as the namespace has it; 1 where br_netfilter is "
        "loaded, as on most Kubernetes nodes)",
    )
    parser.add_argument(
        "--cpu",
        type=int,
        default=(os.cpu_count() or 1) - 1,
        help="run both ends of rr and crr on this CPU (default the last; -1: not pinned)",
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("policy_datapath: needs root (network namespaces)", file=sys.stderr)
        return 2
    result = run(
        rounds=args.rounds,
        seconds=args.seconds,
        ping=args.ping,
        pods_n=args.pods,
        policies_n=args.policies,
        nodes_n=args.nodes,
        conditions=[c for c in args.conditions.split(",") if c],
        use_sockperf=False if args.no_sockperf else None,
        bridge_nf=args.bridge_nf_call_iptables,
        ping_interval=args.ping_interval,
        cpu=None if args.cpu < 0 else args.cpu,
    )
    for cond, by_path in result["results"].items():
        for path, r in by_path.items():
            vs = r.get("vs_none", {})
            print(
                f"{cond:>10} {path:>10}: rr {r['rr_per_s'].get('median')}/s "
                f"[{r['rr_per_s'].get('min')}..{r['rr_per_s'].get('max')}] "
                f"rtt p50 {r['rr_rtt_p50_us'].get('median')} µs "
                f"crr {r['crr_per_s'].get('median')}/s ping p50 {r['ping_us']['p50']} µs "
                f"p99 {r['ping_us']['p99']} µs"
                + (
                    f"  vs none: rr {vs['rr_rate']}x rtt {vs['rr_rtt_p50']}x "
                    f"crr {vs['crr_rate']}x ping {vs['ping_p50']}x"
                    if vs
                    else ""
                ),
                file=sys.stderr,
            )
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
