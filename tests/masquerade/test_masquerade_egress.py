"""End to end, small: packets through a real masquerade table.

    pod1 (10.244.1.2, fd00:10:244:1::2) --veth-- node --veth-- outside (198.51.100.2, 2001:db8:1::2)
    pod2 (10.244.1.3, fd00:10:244:1::3) --veth--/

The node routes between them (forwarding on); ``outside`` has no route to the pod CIDRs.
A server in ``outside`` and one in pod2 answer each TCP connection and UDP datagram with
the peer address they saw. With the table: pod1 reaches outside, which sees the node's
address (198.51.100.1, 2001:db8:1::1); pod2 sees pod1's own address. Without the table:
outside never answers pod1.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.masquerade.nftlab import TABLE, filled_cache, wait_for
from xcluster_cni_lib.core.values import NodeFacts
from xcluster_cni_lib.kernel.nftables import Nft
from xcluster_cni_lib.sync.masquerade import MasqueradeReconciler
from xcluster_cni_lib.testing.netns import netns, run_in

pytestmark = pytest.mark.root

PORT = 8099
SERVER = f"""
import socket, sys, threading
host = sys.argv[1]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
t = socket.socket(family, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((host, {PORT}))
t.listen(16)
u = socket.socket(family, socket.SOCK_DGRAM)
u.bind((host, {PORT}))
def udp():
    while True:
        data, peer = u.recvfrom(100)
        try:
            u.sendto(peer[0].encode(), peer)
        except OSError:  # no route back to the sender: it gets no answer
            pass
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
while True:
    c, peer = t.accept()
    c.sendall(peer[0].encode())
    c.close()
"""
CLIENT = f"""
import socket, sys
host, proto = sys.argv[1], sys.argv[2]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(family, kind)
s.settimeout(float(sys.argv[3]))
try:
    if proto == "tcp":
        s.connect((host, {PORT}))
        print(s.recv(100).decode())
    else:
        s.sendto(b"hi", (host, {PORT}))
        print(s.recvfrom(100)[0].decode())
except OSError:
    print("no answer")
"""


def sh(ns: str, command: str) -> None:
    run_in(ns, command.split())


def ask(ns: str, host: str, proto: str, timeout: float = 2.0) -> str:
    out = run_in(ns, [sys.executable, "-c", CLIENT, host, proto, str(timeout)])
    return out.strip()


@pytest.fixture
def lab() -> Iterator[dict[str, str]]:
    with netns("mqn") as node, netns("mqp") as pod1, netns("mqp") as pod2, netns("mqo") as out:
        for pod, last in ((pod1, 2), (pod2, 3)):
            sh(node, f"ip link add p{last} type veth peer name eth0 netns {pod}")
            sh(node, f"ip link set p{last} up")
            sh(pod, "ip link set eth0 up")
            sh(pod, f"ip addr add 10.244.1.{last}/32 dev eth0")
            sh(pod, f"ip addr add fd00:10:244:1::{last}/128 dev eth0 nodad")
            sh(pod, "ip route add 169.254.1.1 dev eth0")
            sh(pod, "ip route add default via 169.254.1.1 dev eth0")
            sh(pod, f"ip -6 route add fe80::{last}:1 dev eth0")
            sh(node, f"ip addr add fe80::{last}:1/64 dev p{last} nodad")
            sh(pod, f"ip -6 route add default via fe80::{last}:1 dev eth0")
            sh(node, f"ip route add 10.244.1.{last}/32 dev p{last}")
            sh(node, f"ip -6 route add fd00:10:244:1::{last}/128 dev p{last}")
            sh(node, f"ip addr add 169.254.1.1/32 dev p{last}")
        sh(node, f"ip link add up0 type veth peer name eth0 netns {out}")
        sh(node, "ip link set up0 up")
        sh(node, "ip addr add 198.51.100.1/24 dev up0")
        sh(node, "ip addr add 2001:db8:1::1/64 dev up0 nodad")
        sh(out, "ip link set eth0 up")
        sh(out, "ip addr add 198.51.100.2/24 dev eth0")
        sh(out, "ip addr add 2001:db8:1::2/64 dev eth0 nodad")
        sh(node, "sysctl -qw net.ipv4.ip_forward=1")
        sh(node, "sysctl -qw net.ipv6.conf.all.forwarding=1")
        servers = []
        try:
            for ns, hosts in (
                (out, ("198.51.100.2", "2001:db8:1::2")),
                (pod2, ("10.244.1.3", "fd00:10:244:1::3")),
            ):
                for host in hosts:
                    proc = subprocess.Popen(
                        ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, host],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    servers.append(proc)
                    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            # the node reaches every server directly
            for host in ("198.51.100.2", "2001:db8:1::2", "10.244.1.3", "fd00:10:244:1::3"):
                wait_for(lambda h=host: ask(node, h, "tcp", 0.5) != "no answer", what=host)  # type: ignore[misc]
            yield {"node": node, "pod1": pod1, "pod2": pod2, "outside": out}
        finally:
            for proc in servers:
                proc.kill()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()


def node_facts(name: str, cidrs: tuple[str, ...], ips: tuple[str, ...]) -> NodeFacts:
    return NodeFacts(name=name, pod_cidrs=cidrs, internal_ips=ips)


def test_pods_reach_the_outside_with_the_node_address(lab: dict[str, str]) -> None:
    cache = filled_cache([])
    cache.replace_all(
        [
            node_facts(
                "n1", ("10.244.1.0/24", "fd00:10:244:1::/64"), ("198.51.100.1", "2001:db8:1::1")
            ),
            node_facts(
                "n2", ("10.244.2.0/24", "fd00:10:244:2::/64"), ("198.51.100.9", "2001:db8:1::9")
            ),
        ]
    )
    pod1, pod2 = lab["pod1"], lab["pod2"]
    with Nft(netns=lab["node"]) as nft:
        r = MasqueradeReconciler(
            cache,
            nft,
            node_name="n1",
            non_masquerade=(ipaddress.ip_network("203.0.113.0/24"),),
            protocol=int(TABLE.rsplit("-", 1)[1]),
        )
        # without masquerade, outside cannot answer a pod
        for host in ("198.51.100.2", "2001:db8:1::2"):
            assert ask(pod1, host, "tcp", 0.5) == "no answer"
            assert ask(pod1, host, "udp", 0.5) == "no answer"
        r.run_once()
        try:
            for proto in ("tcp", "udp"):
                assert ask(pod1, "198.51.100.2", proto) == "198.51.100.1"
                assert ask(pod1, "2001:db8:1::2", proto) == "2001:db8:1::1"
                # pod to pod keeps the pod's address
                assert ask(pod1, "10.244.1.3", proto) == "10.244.1.2"
                assert ask(pod1, "fd00:10:244:1::3", proto) == "fd00:10:244:1::2"
        finally:
            r.remove()
        for host in ("198.51.100.2", "2001:db8:1::2"):
            assert ask(pod1, host, "tcp", 0.5) == "no answer"
        assert ask(pod2, "198.51.100.2", "tcp", 0.5) == "no answer"
