"""The real daemon with ``NETWORK_POLICY=true`` for the policy benchmarks
(``bench/policy_sync.py``, ``bench/policy_memory.py``), run *inside* a throwaway network
namespace (``bench.common.run_in_netns``): the namespace is the daemon's node, with a pod
bridge ``cbr0`` and reachable gateways for the other nodes' routes; the API-server
double (``tests.apiserver``) listens on its loopback.

- ``Mirror``: the benchmark's own copy of the objects it gave the double, so the state
  the daemon should reach after a change is compiled *before* the write (``wanted``),
  not while the daemon works (the benchmark shares two cores with it);
- ``CommitMonitor``: the kernel's nf_tables notifications on a netlink socket, read in a
  thread; each new generation that closes a transaction touching our tables is a
  *commit*, stamped (wall clock) when it arrives;
- ``listed_elements``: the policy tables' elements as the kernel lists them now
  (``nft -j list ruleset``, read by ``core.policynft.read_tables``), compared with
  ``wanted_tables(...).elements``.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from bench import policy_cluster as pc
from bench.common import setup_gateways
from bench.nodes import addresses_of, make_nodes
from xcluster_cni_lib.core import policynft
from xcluster_cni_lib.core.policyfacts import build_view

Json = dict[str, Any]
PROTOCOL = 202
TABLE = policynft.table_name(PROTOCOL)
BRIDGE = "cbr0"
BRIDGE_MAC = "02:42:0a:f4:00:01"
OWN = 0  # the daemon's node: node-0


def setup_node(nodes: list[Json]) -> None:
    """In the current namespace: the pod bridge (MAC set) with the own pod CIDR's gateway,
    forwarding, and every node's address reachable (``setup_gateways``)."""
    run = _run
    run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "link", "set", BRIDGE, "address", BRIDGE_MAC])
    run(["ip", "addr", "add", f"10.244.{OWN}.1/24", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    own = nodes[OWN]
    setup_gateways(addresses_of(own), [a for n in nodes for a in addresses_of(n)])


def _run(argv: list[str], *, input: str | None = None) -> str:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed: {proc.stderr.strip()[:400]}")
    return proc.stdout


def api_nodes(count: int) -> list[Json]:
    """``count`` realistic Node objects ``node-<i>`` (``bench.nodes.make_nodes``)."""
    return make_nodes(count, images=50)


@attrs.define
class Mirror:
    """What the double holds, kept by the benchmark (keys ``ns/name``; namespaces by name)."""

    pods: dict[str, Json]
    namespaces: dict[str, Json]
    policies: dict[str, Json]

    @classmethod
    def of(cls, c: pc.Cluster) -> Mirror:
        return cls(
            pods={_key(p): p for p in c.pods},
            namespaces={n["metadata"]["name"]: n for n in c.namespaces},
            policies={_key(p): p for p in c.policies},
        )

    def state(self) -> policynft.PolicyState:
        view = build_view(
            pods=self.pods.values(),
            namespaces=self.namespaces.values(),
            policies=self.policies.values(),
        )
        return policynft.compile_node(view, node=pc.node_name(OWN))

    def wanted(self) -> Mapping[str, frozenset[str]]:
        return policynft.wanted_tables(TABLE, self.state(), bridge_mac=BRIDGE_MAC).elements


def _key(obj: Json) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def load(double: Any, c: pc.Cluster, nodes: list[Json]) -> None:
    double.set_nodes(nodes)
    double.set_namespaces(c.namespaces)
    double.set_pods(c.pods)
    double.set_network_policies(c.policies)


def listed_elements() -> Mapping[str, frozenset[str]] | None:
    """Both policy tables' elements now; None when neither table exists."""
    out = _run(["nft", "-j", "list", "ruleset"])
    objects = [
        o
        for o in json.loads(out).get("nftables", [])
        if isinstance(next(iter(o.values())), Mapping)
        and (next(iter(o.values())).get("table") == TABLE)
    ]
    if not objects:
        return None
    return policynft.read_tables(objects).elements


def apply(document: Mapping[str, Any]) -> None:
    """``nft -j -f -`` of a document in this namespace."""
    _run(["nft", "-j", "-f", "-"], input=json.dumps(document))


def policy_env(kubeconfig: str, http: str, *, enabled: bool = True) -> dict[str, str]:
    return {
        "NODE_NAME": pc.node_name(OWN),
        "PROTOCOL": str(PROTOCOL),
        "KUBECONFIG": kubeconfig,
        "HTTP_ADDRESS": http,
        "LOG_LEVEL": "warning",
        "NETWORK_POLICY": "true" if enabled else "false",
        "POLICY_BRIDGE": BRIDGE,
    }


@attrs.frozen
class Commit:
    stamp: float  # time.time() when its generation line arrived
    generation: int
    lines: int  # element/set/chain/... lines of our tables in it


NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15


class CommitMonitor:
    """The nf_tables notifications of this namespace, read from a netlink socket (group
    ``NFNLGRP_NFTABLES``) in a thread: each ``NFT_MSG_NEWGEN`` (sent once a transaction is
    committed) that closes a transaction with a message about our tables is a *commit*,
    stamped when it is received. Nothing but the message types and the table's name is
    decoded. (``nft monitor`` itself is not used: nft 1.0.6 prints garbage for the
    elements of the ``-ports`` sets, concatenations with ranges, and sometimes aborts.)"""

    def __init__(self) -> None:
        self.commits: list[Commit] = []
        self.overruns = 0
        self._cond = threading.Condition()
        self._stop = False
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._thread = threading.Thread(target=self._read, name="nft-netlink", daemon=True)

    def __enter__(self) -> CommitMonitor:
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 25)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 25)
        self._sock.bind((0, 0))
        self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        self._sock.settimeout(0.5)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(5)
        self._sock.close()

    def _read(self) -> None:
        name = TABLE.encode() + b"\0"
        ours = 0
        gen_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN
        while not self._stop:
            try:
                data = self._sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    with self._cond:
                        self.overruns += 1
                    ours += 1  # something was lost: count the next commit as ours
                    continue
                return
            stamp = time.time()
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if length < 16:
                    break
                if kind == gen_type:
                    if ours:
                        gen = struct.unpack_from("!I", data, offset + 16 + 4 + 4)[0]
                        with self._cond:
                            self.commits.append(Commit(stamp, gen, ours))
                            self._cond.notify_all()
                    ours = 0
                elif name in data[offset : offset + length]:
                    ours += 1
                offset += (length + 3) & ~3

    def count(self) -> int:
        with self._cond:
            return len(self.commits)

    def wait_beyond(self, seen: int, timeout: float) -> bool:
        """Wait until there are more than ``seen`` commits."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.commits) > seen, timeout)

    def since(self, index: int) -> list[Commit]:
        with self._cond:
            return list(self.commits[index:])


def wait_enforced(
    monitor: CommitMonitor,
    wanted: Mapping[str, frozenset[str]],
    *,
    after: int,
    timeout: float,
) -> tuple[float, int] | None:
    """Wait until the tables hold ``wanted``; return (wall time of the commit that made
    them so, commits since ``after``), or None on timeout. The commit is the newest one
    received before a listing that matched began (re-listed if one arrived meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = monitor.count()
        if seen > after:
            before = monitor.since(after)
            listed = listed_elements()
            if listed == wanted:
                if monitor.count() == seen:  # nothing arrived while listing
                    return before[-1].stamp, len(before)
                continue  # one arrived during the listing: attribute correctly
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        monitor.wait_beyond(seen, min(remaining, 1.0))


def pod_slot_ips(slot: int) -> list[str]:
    """Addresses of a fresh pod on the own node (slots above every generated pod's)."""
    return pc.pod_ips(OWN, slot)


def diff_size(a: Mapping[str, frozenset[str]], b: Mapping[str, frozenset[str]]) -> int:
    return sum(len(a.get(k, frozenset()) ^ b.get(k, frozenset())) for k in set(a) | set(b))


def v4(addresses: Iterable[str]) -> list[str]:
    return [a for a in addresses if ipaddress.ip_address(a).version == 4]
