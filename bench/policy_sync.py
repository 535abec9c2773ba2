"""NetworkPolicy sync latency (issue 16): "a policy or pod-label change -> enforced on the
node", with the real daemon, 1,000 pods and 200 policies.

Runs in a throwaway network namespace (the daemon's node, ``node-0``: a ``cbr0`` bridge,
reachable gateways): the API-server double on its loopback holds 20 realistic Nodes and
the generated cluster of ``bench/policy_cluster.py`` (1,000 pods spread over the 20 nodes,
52 on ``node-0``; 200 policies); ``xcluster-cni daemon`` runs with ``NETWORK_POLICY=true``
(``bench/policy_harness.py``). Then, one at a time (each after the previous one is
enforced, plus 150-250 ms):

- ``pod-relabel-isolation``: a pod of this node changes its ``app`` label so that an
  egress policy stops (or starts again) selecting it: the pod's isolation changes;
- ``pod-relabel-peer``: a pod of another node changes its ``app`` label: the peer classes
  of this node's policies change (vmap elements);
- ``policy-edit``: a policy selecting pods of this node changes its port (a named port to
  another name, a range's end, a number), and back;
- ``namespace-relabel``: a namespace's ``team`` label changes (``namespaceSelector`` peers);

each a single write on the double whose effect on this node's tables is not empty (the
state wanted after it is compiled by the benchmark *before* the write). Then
``--starts`` times: ``pod-start``, a new Pod with an address on this node that policies
select (its namespace's default-deny), and ``pod-delete`` of it.

Latency: from just before the write to the commit of the nf_tables transaction after
which the kernel's tables hold exactly the wanted elements: the kernel's notification of
that commit (``NFT_MSG_NEWGEN`` on a netlink socket, ``policy_harness.CommitMonitor``,
stamped on arrival by a thread of this otherwise idle process), confirmed by listing the
tables (``nft -j list ruleset`` through ``core.policynft.read_tables``, against
``wanted_tables``).

Last, with ``--served N`` (the daemon then also serves IPAM on ``IPAM_SOCKET``): N times
a pod's start the way a node runs it: the Pod exists without an address, then its CNI
ADD for ``eth0`` through the agent's socket (``tests.ipamserver.client``, the shim's
stand-in), which answers once the tables enforce the new address
(``daemon/admission.py``). Timed: the ADD, for a pod its namespace's default-deny
selects and, alternately, for one in a namespace without policies; checked: the address
is isolated (or not) when the answer comes.

    .venv/bin/python -m bench.policy_sync                         # 200 changes, 20 starts
    .venv/bin/python -m bench.policy_sync --changes 40 --json out.json

Target: p99 < 1 s. Needs root, iproute2 and nft.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import policy_cluster as pc
from bench import policy_harness as ph
from bench.common import (
    RESULTS,
    child_main,
    daemon_process,
    emit,
    free_port,
    memory_kb,
    progress,
    run_in_netns,
    scrape_metrics,
    summary,
)
from tests.apiserver.objects import make_namespace, make_pod
from xcluster_cni_lib.core.policynft import PolicyState, wanted_tables

Json = dict[str, Any]
KINDS = ("pod-relabel-isolation", "pod-relabel-peer", "policy-edit", "namespace-relabel")


class Change:
    """One write: ``mutate`` the mirror (returns the object to write), ``write`` it."""

    def __init__(self, kind: str, key: str, obj: Json, write: Callable[[Json], Any]) -> None:
        self.kind, self.key, self.obj, self.write = kind, key, obj, write


def _flip_app(pod: Json) -> Json:
    out = copy.deepcopy(pod)
    labels = out["metadata"]["labels"]
    original = labels.get("bench-original-app") or labels["app"]
    if labels["app"] == "idle":
        labels["app"] = original
        labels.pop("bench-original-app", None)
    else:
        labels["bench-original-app"] = original
        labels["app"] = "idle"
    return out


_PORT_SWAP: dict[Any, Any] = {"http": "grpc", "grpc": "http", 443: 8443, 8443: 443}
_RANGE_END = {8000: (8100, 8200), 6379: (6380, 6390)}  # a generated range's two ends


def _edit_policy(policy: Json) -> Json | None:
    out = copy.deepcopy(policy)
    for rule in out["spec"].get("ingress", []) + out["spec"].get("egress", []):
        for port in rule.get("ports", []):
            if port.get("endPort") is not None and port.get("port") in _RANGE_END:
                a, b = _RANGE_END[port["port"]]
                port["endPort"] = b if port["endPort"] == a else a
                return out
            if port.get("port") in _PORT_SWAP:
                port["port"] = _PORT_SWAP[port["port"]]
                return out
    return None


def _flip_team(ns: Json) -> Json:
    out = copy.deepcopy(ns)
    labels = out["metadata"]["labels"]
    team = labels["team"]
    labels["team"] = team[:-4] if team.endswith("-alt") else f"{team}-alt"
    return out


class Changes:
    """Candidate writes of each kind, in a fixed random order; a candidate whose effect
    on this node is empty is skipped."""

    def __init__(self, mirror: ph.Mirror, double: Any, rng: random.Random) -> None:
        self.mirror, self.double, self.rng = mirror, double, rng
        own = pc.node_name(ph.OWN)
        local = [k for k, p in mirror.pods.items() if p["spec"].get("nodeName") == own]
        remote = [k for k, p in mirror.pods.items() if p["spec"].get("nodeName") != own]
        rng.shuffle(remote)
        self.isolation = self._isolating(local)
        self.remote = remote
        self.policies = list(mirror.policies)
        rng.shuffle(self.policies)
        self.namespaces = [n for n in mirror.namespaces if n.startswith("ns-")]
        self.cursor: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.skipped = 0
        self.state: PolicyState | None = None
        self.shape = mirror.state().shape()

    def _isolating(self, local: list[str]) -> list[str]:
        """Local pods whose ``app`` flip changes which pods are isolated for egress."""
        base = self.mirror.state()
        out = []
        for key in local:
            if key.startswith(pc.PROBE_NAMESPACE + "/"):
                continue
            pod = self.mirror.pods[key]
            self.mirror.pods[key] = _flip_app(pod)
            changed = self.mirror.state().egress != base.egress
            self.mirror.pods[key] = pod
            if changed:
                out.append(key)
        if not out:
            raise RuntimeError("no local pod whose relabel changes its isolation")
        return out

    def candidate(self, kind: str) -> Change | None:
        i = self.cursor[kind]
        self.cursor[kind] += 1
        m, d = self.mirror, self.double
        if kind == "pod-relabel-isolation":
            key = self.isolation[i % len(self.isolation)]
            return Change(kind, key, _flip_app(m.pods[key]), d.update_pod)
        if kind == "pod-relabel-peer":
            key = self.remote[i % len(self.remote)]
            return Change(kind, key, _flip_app(m.pods[key]), d.update_pod)
        if kind == "policy-edit":
            key = self.policies[i % len(self.policies)]
            edited = _edit_policy(m.policies[key])
            if edited is None:
                return None
            return Change(kind, key, edited, d.update_network_policy)
        key = self.namespaces[i % len(self.namespaces)]
        return Change(kind, key, _flip_team(m.namespaces[key]), d.update_namespace)

    def next(self, kind: str, current: Any) -> tuple[Change, Any, Json]:
        """The next candidate of ``kind`` with an effect: (change, its wanted elements,
        the element difference stats). The mirror then holds the change."""
        table = {
            "pod-relabel-isolation": self.mirror.pods,
            "pod-relabel-peer": self.mirror.pods,
            "policy-edit": self.mirror.policies,
            "namespace-relabel": self.mirror.namespaces,
        }[kind]
        if self.state is None:
            self.state = self.mirror.state()
        for _ in range(500):
            change = self.candidate(kind)
            if change is None:
                self.skipped += 1
                continue
            old = table[change.key]
            table[change.key] = change.obj
            state = self.mirror.state()
            if state != self.state:
                self.state = state
                wanted = wanted_tables(ph.TABLE, state, bridge_mac=ph.BRIDGE_MAC)
                stats = {
                    "elements_changed": ph.diff_size(current, wanted.elements),
                    "chains_changed": bool(state.shape() != self.shape),
                }
                self.shape = state.shape()
                return change, wanted.elements, stats
            table[change.key] = old  # no effect on this node: try another
            self.skipped += 1
        raise RuntimeError(f"no {kind} change with an effect on this node")


def _measure(
    monitor: ph.CommitMonitor, write: Callable[[], Any], wanted: Any, timeout: float
) -> tuple[float | None, int]:
    seen = monitor.count()
    t0 = time.time()
    write()
    r = ph.wait_enforced(monitor, wanted, after=seen, timeout=timeout)
    if r is None:
        return None, monitor.count() - seen
    return r[0] - t0, r[1]


def run(params: Json) -> Json:
    from tests.apiserver import ApiServerDouble

    pods_n, policies_n, nodes_n = params["pods"], params["policies"], params["nodes"]
    n_changes, starts = params["changes"], params["starts"]
    timeout = params.get("timeout", 10.0)
    rng = random.Random(16)
    log_dir = Path(params.get("log_dir") or tempfile.gettempdir())
    c = pc.cluster(pods_n=pods_n, policies_n=policies_n, nodes=nodes_n)
    nodes = ph.api_nodes(nodes_n)
    ph.setup_node(nodes)
    mirror = ph.Mirror.of(c)
    result: Json = {
        "benchmark": "policy_sync",
        "pods": pods_n,
        "policies": policies_n,
        "nodes": nodes_n,
        "local_pods": sum(1 for _ in pc.local_pods(c, ph.OWN)),
        "loadavg_at_start": os.getloadavg(),
    }
    with (
        ApiServerDouble(history_size=max(4000, 2 * pods_n)) as double,
        tempfile.TemporaryDirectory(prefix="xcbench") as tmp,
        ph.CommitMonitor() as monitor,
    ):
        ph.load(double, c, nodes)
        kubeconfig = double.write_kubeconfig(Path(tmp) / "kubeconfig")
        http = f"127.0.0.1:{free_port()}"
        env = ph.policy_env(kubeconfig, http)
        served = params.get("served", 0)
        sock = str(Path(tmp) / "ipam.sock")
        if served:
            env["IPAM_SOCKET"] = sock
            env["IPAM_NODE_FILE"] = str(Path(tmp) / "own-node.json")
        wanted = mirror.wanted()
        state = mirror.state()
        result["elements"] = state.count()
        result["class_chains"] = len(state.chains)
        log_path = log_dir / "policy-sync-daemon.log"
        t_start = time.time()
        with daemon_process(env, log_path=log_path) as proc:
            first = ph.wait_enforced(
                monitor, wanted, after=0, timeout=params.get("sync_timeout", 120)
            )
            if first is None or proc.poll() is not None:
                raise RuntimeError(f"the daemon did not enforce the first view; see {log_path}")
            result["first_sync_seconds"] = round(first[0] - t_start, 3)
            progress(f"policy sync: first sync {result['first_sync_seconds']} s")
            before = scrape_metrics(http)
            changes = Changes(mirror, double, rng)
            latencies: dict[str, list[float]] = {k: [] for k in KINDS}
            samples: list[Json] = []
            missed = 0
            for k in range(n_changes):
                kind = KINDS[k % len(KINDS)]
                change, want, stats = changes.next(kind, wanted)
                time.sleep(rng.uniform(0.15, 0.25))
                write = functools.partial(change.write, copy.deepcopy(change.obj))
                latency, commits = _measure(monitor, write, want, timeout)
                wanted = want
                samples.append({"kind": kind, "latency": latency, "commits": commits, **stats})
                if latency is None:
                    missed += 1
                    # resynchronise: wait for whatever the daemon does, then go on from it
                    time.sleep(1.0)
                    continue
                latencies[kind].append(latency)
                if (k + 1) % 50 == 0:
                    progress(f"policy sync: {k + 1} changes")
            progress(f"policy sync: {n_changes} changes, {missed} not enforced in {timeout} s")
            start_lat: list[float] = []
            delete_lat: list[float] = []
            for s in range(starts):
                ns = pc.namespace_name(s % pc.NAMESPACES)
                pod = make_pod(
                    f"started-{s}",
                    ns,
                    node=pc.node_name(ph.OWN),
                    ips=ph.pod_slot_ips(100 + s),
                    labels={"app": pc.APPS[s % len(pc.APPS)], "tier": "backend"},
                    ports=pc.DEFAULT_PORTS,
                )
                key = f"{ns}/started-{s}"
                mirror.pods[key] = pod
                want = mirror.wanted()
                time.sleep(rng.uniform(0.15, 0.25))
                add = functools.partial(double.add_pod, copy.deepcopy(pod))
                latency, _ = _measure(monitor, add, want, timeout)
                if latency is not None:
                    start_lat.append(latency)
                else:
                    missed += 1
                del mirror.pods[key]
                want_after = mirror.wanted()
                time.sleep(rng.uniform(0.15, 0.25))
                delete = functools.partial(double.delete_pod, ns, f"started-{s}")
                latency, _ = _measure(monitor, delete, want_after, timeout)
                if latency is not None:
                    delete_lat.append(latency)
                else:
                    missed += 1
                wanted = want_after
            if served:
                result["served_add"] = served_adds(double, sock, Path(tmp) / "ipam", served, http)
                progress(f"policy sync: {served} served ADDs of each kind")
            after = scrape_metrics(http)
            result["rss_kb"] = memory_kb(proc.pid)["VmRSS"]
    everything = [x for v in latencies.values() for x in v]
    result.update(
        {
            "changes": _ms(summary(everything)),
            "by_kind": {k: _ms(summary(v)) for k, v in latencies.items()},
            "by_write": {
                "elements_only": _ms(summary(_where(samples, chains_changed=False))),
                "chains_changed": _ms(summary(_where(samples, chains_changed=True))),
            },
            "pod_start": _ms(summary(start_lat)),
            "pod_delete": _ms(summary(delete_lat)),
            "missed": missed,
            "skipped_candidates": changes.skipped,
            "commits_per_change": _mean([s["commits"] for s in samples]),
            "elements_changed_per_change": _mean([s["elements_changed"] for s in samples]),
            "daemon_metrics": _metric_delta(before, after),
            "loadavg_at_end": os.getloadavg(),
            "samples": samples,
        }
    )
    return result


FREE_NAMESPACE = "free"  # no policy: its pods are not policed


def _reserve(data: Path, network: str, hosts: range) -> None:
    """Mark addresses of the own pod CIDR taken in host-local's store, so that served
    ADDs never hand out an address a generated pod has."""
    store = data / network
    store.mkdir(parents=True, exist_ok=True)
    for h in hosts:
        for ip in ph.pod_slot_ips(h - 10):
            (store / ip).write_text("bench-reserved")


def served_adds(double: Any, sock: str, data: Path, rounds: int, http: str) -> Json:
    """A pod's start through the served IPAM (``IPAM_SOCKET``): the Pod exists (no
    address yet, as the scheduler leaves it), then its CNI ADD for ``eth0``, answered
    once the agent's tables enforce the new address. Alternately a pod its namespace's
    default-deny selects (``policed``) and one in a namespace without policies."""
    from tests.ipamserver import client

    conf = json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "policy-bench",
            "type": "bridge",
            "ipam": {"type": "kube-node", "nodeName": pc.node_name(ph.OWN), "dataDir": str(data)},
        }
    ).encode()
    _reserve(data, "policy-bench", range(2, 100))
    double.add_namespace(make_namespace(FREE_NAMESPACE, labels={"team": "none"}))
    deadline = time.monotonic() + 30
    while not Path(sock).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the agent did not open its IPAM socket")
        time.sleep(0.05)
    before = scrape_metrics(http)
    times: dict[str, list[float]] = {"policed": [], "unpoliced": []}
    not_enforced = 0
    for i in range(rounds):
        kinds = ("policed", "unpoliced") if i % 2 == 0 else ("unpoliced", "policed")
        for kind in kinds:
            ns = pc.namespace_name(i % pc.NAMESPACES) if kind == "policed" else FREE_NAMESPACE
            name = f"served-{i}-{kind}"
            double.add_pod(make_pod(name, ns, node=pc.node_name(ph.OWN), labels={"app": "api"}))
            time.sleep(0.3)  # the Pod exists well before its sandbox: the watch has it
            env = {
                "CNI_COMMAND": "ADD",
                "CNI_CONTAINERID": f"c-{name}",
                "CNI_NETNS": "/var/run/netns/bench",
                "CNI_IFNAME": "eth0",
                "CNI_PATH": "/usr/lib/cni",
                "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}",
            }
            t0 = time.perf_counter()
            out = client.call(sock, env, conf)
            times[kind].append(time.perf_counter() - t0)
            if out.rc != 0:
                raise RuntimeError(f"served ADD failed: {out.out.decode()[:300]}")
            ip = json.loads(out.out)["ips"][0]["address"].split("/")[0]
            listed = ph.listed_elements() or {}
            isolated = any(ip in e for e in listed.get("ingress4", frozenset()))
            if isolated != (kind == "policed"):
                not_enforced += 1
            client.call(sock, {**env, "CNI_COMMAND": "DEL"}, conf)
            double.delete_pod(ns, name)
    after = scrape_metrics(http)
    wait = "xcluster_policy_pod_start_wait_seconds"
    count = after.get(f"{wait}_count", 0.0) - before.get(f"{wait}_count", 0.0)
    total = after.get(f"{wait}_sum", 0.0) - before.get(f"{wait}_sum", 0.0)
    return {
        "policed": _ms(summary(times["policed"])),
        "unpoliced": _ms(summary(times["unpoliced"])),
        "not_enforced_at_answer": not_enforced,
        "agent_wait_mean_ms": round(1000 * total / count, 2) if count else None,
        "agent_waits": count,
    }


def _where(samples: list[Json], *, chains_changed: bool) -> list[float]:
    """Latencies of the changes that did (a rewrite of both tables) or did not change the
    class chains (an element update)."""
    return [
        s["latency"]
        for s in samples
        if s["latency"] is not None and s["chains_changed"] == chains_changed
    ]


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 2) if values else 0.0


def _ms(s: Json) -> Json:
    return {k: (v if k == "n" else round(v * 1000, 2)) for k, v in s.items()}


def _metric_delta(before: dict[str, float], after: dict[str, float]) -> Json:
    out: Json = {}
    for name, value in after.items():
        if name.startswith(("xcluster_policy_writes_total", "xcluster_policy_syncs_total")) or (
            name.startswith("xcluster_policy_sync_duration_seconds_")
            and not name.startswith("xcluster_policy_sync_duration_seconds_bucket")
            and not name.endswith("_created")
        ):
            out[name] = round(value - before.get(name, 0.0), 4)
        elif name.startswith(
            ("xcluster_policy_elements", "xcluster_policy_pods", "xcluster_policy_policies")
        ):
            out[name] = value
    return out


def measure(**params: Any) -> Json:
    """Run the scenario in a throwaway namespace (see the module docstring)."""
    return run_in_netns("policy_sync", params, timeout=params.get("outer_timeout", 1800))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument(
        "--served", type=int, default=20, help="served-IPAM ADDs of each kind (0: none)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="per change")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("policy_sync: needs root (network namespaces)", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = measure(
        pods=args.pods,
        policies=args.policies,
        nodes=args.nodes,
        changes=args.changes,
        starts=args.starts,
        served=args.served,
        timeout=args.timeout,
        log_dir=str(RESULTS),
    )
    ch, st = result["changes"], result["pod_start"]
    print(
        f"{result['pods']} pods, {result['policies']} policies: first sync "
        f"{result['first_sync_seconds']} s; change -> enforced p50 {ch['p50']} ms p99 "
        f"{ch['p99']} ms max {ch['max']} ms (n {ch['n']}, missed {result['missed']}); "
        f"pod start p50 {st['p50']} ms p99 {st['p99']} ms",
        file=sys.stderr,
    )
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    if "--child" in sys.argv:
        child_main(run)
    else:
        sys.exit(main())
