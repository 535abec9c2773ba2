"""The NetworkPolicy agent in a daemon (a thread; its kernel side in a namespace with a
``cbr0`` bridge) against the API double: the tables follow Pods, Namespaces and
NetworkPolicies; nothing is written before all three are listed; tampering is repaired
within 1 s; an API outage changes nothing; a restart never removes the tables."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apiserver import ApiServerDouble
from tests.apiserver.objects import make_namespace, make_network_policy, make_pod
from tests.daemon.harness import http_get, metric, running_daemon, wait_for
from xcluster_cni_lib.core.policynft import table_name
from xcluster_cni_lib.testing.netns import run_in

pytestmark = pytest.mark.root

TABLE = table_name(202)
WEB = "10.244.1.5"
WEB6 = "fd00:10:244:1::5"
CLIENT = "10.244.1.6"


def _nft(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "nft", *args], capture_output=True, text=True, check=check
    )


def _elements(ns: str, name: str, family: str = "inet") -> set[str] | None:
    """The elements of one set (as text), None when the table is missing."""
    proc = _nft(ns, "-j", "list", "set", family, TABLE, name, check=False)
    if proc.returncode != 0:
        return None
    for obj in json.loads(proc.stdout)["nftables"]:
        if "set" in obj:
            return {json.dumps(e, sort_keys=True) for e in obj["set"].get("elem", [])}
    return set()


def _has(ns: str, name: str, value: str, family: str = "inet") -> bool:
    return json.dumps(value) in (_elements(ns, name, family) or set())


def _tables(ns: str) -> set[str]:
    out = _nft(ns, "-j", "list", "tables").stdout
    return {
        f"{t['table']['family']} {t['table']['name']}"
        for t in json.loads(out)["nftables"]
        if "table" in t
    }


@pytest.fixture
def bridged(ns: str) -> str:
    run_in(ns, ["ip", "link", "add", "cbr0", "type", "bridge"])
    run_in(ns, ["ip", "link", "set", "cbr0", "up"])
    return ns


@pytest.fixture
def cluster(api: ApiServerDouble) -> ApiServerDouble:
    api.add_namespace(make_namespace("shop", labels={"team": "a"}))
    api.add_namespace(make_namespace("other"))
    api.add_pod(
        make_pod(
            "web", "shop", node="n1", ips=[WEB, WEB6], labels={"app": "web"}, ports={"http": 80}
        )
    )
    api.add_pod(make_pod("client", "shop", node="n1", ips=[CLIENT], labels={"app": "client"}))
    api.add_pod(make_pod("far", "other", node="n2", ips=["10.244.2.5"], labels={"app": "far"}))
    api.add_network_policy(
        make_network_policy(
            "web-from-client",
            "shop",
            pod_selector={"matchLabels": {"app": "web"}},
            ingress=[
                {
                    "from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                    "ports": [{"port": "http"}],
                }
            ],
        )
    )
    return api


def _settings(kubeconfig: str, **more: str) -> dict[str, str]:
    return {
        "NODE_NAME": "n1",
        "KUBECONFIG": kubeconfig,
        "NETWORK_POLICY": "true",
        "HTTP_ADDRESS": "127.0.0.1:0",
        **more,
    }


@pytest.fixture
def daemon(bridged: str, cluster: ApiServerDouble, kubeconfig: str) -> Iterator[Any]:
    with running_daemon(bridged, **_settings(kubeconfig)) as d:
        wait_for(lambda: _has(bridged, "ingress4", WEB), what="web isolated")
        yield d


def test_tables_follow_pods_namespaces_and_policies(
    daemon: Any, bridged: str, cluster: ApiServerDouble
) -> None:
    ns = bridged
    full_before = daemon.policy.full_syncs
    assert _has(ns, "ingress6", WEB6)
    assert _has(ns, "policed4", WEB, "bridge")  # same-node frames go through the node
    assert not _has(ns, "ingress4", CLIENT)
    # the bridge's address is in the redirect rules, and pinned
    mac = json.loads(run_in(ns, ["ip", "-j", "link", "show", "cbr0"]))[0]["address"]
    assert mac in _nft(ns, "list", "table", "bridge", TABLE).stdout
    # a relabelled pod leaves the policy's selection
    cluster.patch_pod("shop", "web", {"metadata": {"labels": {"app": "other"}}})
    wait_for(lambda: not _has(ns, "ingress4", WEB), what="web no longer isolated")
    cluster.patch_pod("shop", "web", {"metadata": {"labels": {"app": "web"}}})
    wait_for(lambda: _has(ns, "ingress4", WEB), what="web isolated again")
    # a pod elsewhere that no policy of this node's pods can see: no recompile at all
    skipped = daemon.policy.skipped
    cluster.add_pod(make_pod("far2", "other", node="n2", ips=["10.244.2.9"], labels={"x": "y"}))
    wait_for(lambda: daemon.policy.skipped > skipped, what="a change that does not matter")
    # ... until it becomes a peer of web's policy: its address maps to web's class chain
    cluster.add_pod(make_pod("far3", "shop", node="n2", ips=["10.244.2.10"], labels={"x": "y"}))
    cluster.patch_pod("shop", "far3", {"metadata": {"labels": {"app": "client"}}})
    wait_for(lambda: "10.244.2.10" in _nft(ns, "list", "map", "inet", TABLE, "in4").stdout)
    # a pod that appears with an address a policy selects is isolated
    cluster.add_pod(make_pod("web2", "shop", node="n1", ips=["10.244.1.7"], labels={"app": "web"}))
    wait_for(lambda: _has(ns, "ingress4", "10.244.1.7"), what="new pod isolated")
    # the gauges: two local pods policed (web, web2), by the one policy selecting them
    wait_for(lambda: metric(http_get(daemon, "/metrics")[1], "xcluster_policy_pods") == 2.0)
    assert metric(http_get(daemon, "/metrics")[1], "xcluster_policy_policies") == 1.0
    # a deleted policy isolates nobody
    cluster.delete_network_policy("shop", "web-from-client")
    wait_for(lambda: _elements(ns, "ingress4") == set(), what="nobody isolated")
    # our own updates are told from tampering by the nft process ids: no read-back each
    assert daemon._policy_monitor.echoes >= 4 and daemon._policy_monitor.events == 0
    assert daemon.policy.full_syncs == full_before
    # the gauges follow right after the transaction
    wait_for(lambda: metric(http_get(daemon, "/metrics")[1], "xcluster_policy_pods") == 0.0)
    assert metric(http_get(daemon, "/metrics")[1], "xcluster_policy_policies") == 0.0
    status, body = http_get(daemon, "/metrics")
    assert metric(body, 'xcluster_policy_objects{kind="pods"}') == 6.0
    assert metric(body, "xcluster_policy_syncs_total" + '{result="ok"}') >= 1
    status, text = http_get(daemon, "/readyz")
    assert status == 200, text


def test_nothing_is_written_before_every_kind_is_listed(
    bridged: str, cluster: ApiServerDouble, kubeconfig: str
) -> None:
    cluster.fail_requests(10_000, 503, resources={"networkpolicies"})
    with running_daemon(bridged, **_settings(kubeconfig)) as d:
        assert d.policy is not None and d.policy_store is not None
        store = d.policy_store
        wait_for(lambda: store.sinks["pods"].listed and store.sinks["namespaces"].listed)
        wait_for(lambda: d.policy is not None and d.policy.full_syncs >= 1)
        assert _tables(bridged) == set()  # pods known, policies not: nothing enforced
        status, text = http_get(d, "/readyz")
        assert status == 503 and "networkpolicies not listed yet" in text
        cluster.clear_failures()
        wait_for(lambda: _has(bridged, "ingress4", WEB), timeout=10.0, what="enforced")


def test_tampering_is_repaired_within_a_second(daemon: Any, bridged: str) -> None:
    ns = bridged
    before = _nft(ns, "-j", "list", "table", "inet", TABLE).stdout
    _nft(ns, "flush", "set", "inet", TABLE, "ingress4")
    wait_for(lambda: _has(ns, "ingress4", WEB), timeout=1.0, what="set refilled")
    _nft(ns, "delete", "table", "inet", TABLE)
    wait_for(lambda: _has(ns, "ingress4", WEB), timeout=1.0, what="table re-made")
    _nft(ns, "delete", "table", "bridge", TABLE)
    wait_for(lambda: _has(ns, "policed4", WEB, "bridge"), timeout=1.0, what="bridge table")
    _nft(ns, "add", "element", "inet", TABLE, "ingress4", "{ 10.9.9.9 }")
    wait_for(lambda: not _has(ns, "ingress4", "10.9.9.9"), timeout=1.0, what="foreign gone")
    after = _nft(ns, "-j", "list", "table", "inet", TABLE).stdout

    def canonical(text: str) -> list[str]:
        objs = json.loads(text)["nftables"]
        return sorted(
            json.dumps({k: {f: v for f, v in s.items() if f != "handle"}}, sort_keys=True)
            for o in objs
            for k, s in o.items()
            if k != "metainfo" and isinstance(s, dict)
        )

    assert canonical(after) == canonical(before)
    assert daemon.policy.restores >= 3


def test_an_api_outage_changes_nothing(daemon: Any, bridged: str, cluster: ApiServerDouble) -> None:
    ns = bridged
    before = _elements(ns, "ingress4"), _elements(ns, "policed4", "bridge")
    cluster.stop()
    try:
        wait_for(lambda: not daemon.policy_store.healthy, timeout=10.0, what="outage noticed")
        assert (_elements(ns, "ingress4"), _elements(ns, "policed4", "bridge")) == before
        # repairs go on from the last known view
        _nft(ns, "flush", "set", "inet", TABLE, "ingress4")
        wait_for(lambda: _has(ns, "ingress4", WEB), timeout=1.0, what="repaired in outage")
    finally:
        cluster.start()
    wait_for(lambda: daemon.policy_store.healthy, timeout=15.0, what="healthy again")
    assert (_elements(ns, "ingress4"), _elements(ns, "policed4", "bridge")) == before


def test_a_restart_never_takes_the_tables_away(
    bridged: str, cluster: ApiServerDouble, kubeconfig: str
) -> None:
    ns = bridged
    with running_daemon(ns, **_settings(kubeconfig)):
        wait_for(lambda: _has(ns, "ingress4", WEB), what="enforced")
    # every change to the ruleset while the agent is down and starts again
    monitor = subprocess.Popen(
        ["ip", "netns", "exec", ns, "nft", "-j", "monitor"],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(monitor.stdout or []), daemon=True)
    reader.start()
    try:

        def listening() -> bool:  # a table made and deleted shows: the monitor listens
            _nft(ns, "add", "table", "inet", "canary")
            _nft(ns, "delete", "table", "inet", "canary")
            return any("canary" in ln for ln in lines)

        wait_for(listening, every=0.05, what="nft monitor listening")
        # the API is down at the restart: the old tables stay as they are
        cluster.stop()
        with running_daemon(ns, **_settings(kubeconfig)) as d:
            wait_for(lambda: d.policy is not None and d.policy.full_syncs >= 1)
            assert _has(ns, "ingress4", WEB)
            cluster.start()
            wait_for(lambda: d.policy is not None and d.policy.first_sync_done, timeout=15.0)
            assert d.policy.last_result is not None
            assert d.policy.last_result.action == "none"  # the same view: nothing to do
    finally:
        monitor.kill()
        monitor.wait()
        reader.join(timeout=2.0)
    deletes = [ln for ln in lines if ln.startswith('{"delete"') and TABLE in ln]
    assert deletes == [], deletes


def test_features_off_remove_their_tables_and_nothing_else(
    bridged: str, cluster: ApiServerDouble, kubeconfig: str
) -> None:
    with running_daemon(bridged, **_settings(kubeconfig, POLICY_LOG_DENIED="true")):
        wait_for(lambda: _has(bridged, "ingress4", WEB), what="enforced")
        listing = _nft(bridged, "list", "table", "inet", TABLE).stdout
        assert f'log prefix "{TABLE} deny "' in listing
    assert _tables(bridged) == {f"inet {TABLE}", f"bridge {TABLE}"}
    _nft(bridged, "add", "table", "inet", "xcluster-cni-202")  # a masquerade leftover
    _nft(bridged, "add", "table", "inet", "someone-elses")
    with running_daemon(bridged, NODE_NAME="n1", KUBECONFIG=kubeconfig) as d:
        wait_for(lambda: d.reconciler.first_sync_done, what="started")
        assert _tables(bridged) == {"inet someone-elses"}


def _pod_ns(node_ns: str, name: str, address: str, address6: str | None = None) -> str:
    """A pod namespace on the node's cbr0 (10.244.1.0/24, the node's bridge .1)."""
    pod = f"{node_ns}-{name}"
    subprocess.run(["ip", "netns", "add", pod], check=True)
    if address6 is not None:
        run_in(pod, ["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"])
        run_in(pod, ["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"])
    run_in(node_ns, ["ip", "link", "add", f"v{name}", "type", "veth", "peer", "eth0", "netns", pod])
    run_in(node_ns, ["ip", "link", "set", f"v{name}", "master", "cbr0", "up"])
    run_in(pod, ["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
    run_in(pod, ["ip", "link", "set", "eth0", "up"])
    run_in(pod, ["ip", "link", "set", "lo", "up"])
    run_in(pod, ["ip", "route", "add", "default", "via", "10.244.1.1"])
    if address6 is not None:
        run_in(pod, ["ip", "addr", "add", f"{address6}/64", "dev", "eth0", "nodad"])
    return pod


def test_denied_packets_are_logged_when_asked(
    bridged: str, cluster: ApiServerDouble, kubeconfig: str
) -> None:
    ns = bridged
    run_in(ns, ["ip", "addr", "add", "10.244.1.1/24", "dev", "cbr0"])
    run_in(ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    flag = Path("/proc/sys/net/netfilter/nf_log_all_netns")
    saved = flag.read_text().strip()
    kmsg = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    os.lseek(kmsg, 0, os.SEEK_END)
    pods: list[str] = []
    try:
        pods += [_pod_ns(ns, "w", WEB), _pod_ns(ns, "c", CLIENT)]
        flag.write_text("1")  # the kernel logs from network namespaces only with this
        with running_daemon(ns, **_settings(kubeconfig, POLICY_LOG_DENIED="true")):
            wait_for(lambda: _has(ns, "ingress4", WEB), what="enforced")
            # allowed: the client reaches web's named port; denied: ping (no rule for ICMP)
            assert (
                subprocess.run(
                    ["ip", "netns", "exec", pods[1], "ping", "-c1", "-W1", WEB], capture_output=True
                ).returncode
                != 0
            )
            lines: list[str] = []

            def logged() -> bool:
                while True:
                    try:
                        record = os.read(kmsg, 8192)
                    except BlockingIOError:
                        break
                    lines.append(record.decode(errors="replace"))
                return any(f"{TABLE} deny" in ln and f"DST={WEB}" in ln for ln in lines)

            wait_for(logged, what="the denied ping in the kernel log")
    finally:
        flag.write_text(saved)
        os.close(kmsg)
        for pod in pods:
            subprocess.run(["ip", "netns", "del", pod], check=False)


def test_same_node_ipv6_works_with_br_netfilter(
    bridged: str, cluster: ApiServerDouble, kubeconfig: str
) -> None:
    """Nodes with ``br_netfilter`` show bridged frames to the IP hooks: neighbour
    discovery of a policed pod (bridged, not redirected) must pass ``forward``."""
    ns = bridged
    client6 = "fd00:10:244:1::6"
    cluster.patch_pod("shop", "client", {"status": {"podIPs": [{"ip": CLIENT}, {"ip": client6}]}})
    # web isolated both ways; from and to its namespace's pods: every port and protocol
    everyone = [{"podSelector": {}}]
    spec = {
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": everyone}],
        "egress": [{"to": everyone}],
    }
    cluster.patch_network_policy("shop", "web-from-client", {"spec": spec})
    for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
        run_in(ns, ["sysctl", "-qw", f"{key}=1"])
    run_in(ns, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
    run_in(ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    run_in(ns, ["ip", "addr", "add", "10.244.1.1/24", "dev", "cbr0"])
    run_in(ns, ["ip", "addr", "add", "fd00:10:244:1::1/64", "dev", "cbr0", "nodad"])
    pods: list[str] = []
    try:
        pods += [_pod_ns(ns, "w", WEB, WEB6), _pod_ns(ns, "c", CLIENT, client6)]
        with running_daemon(ns, **_settings(kubeconfig)):
            wait_for(lambda: _has(ns, "egress6", WEB6), what="web isolated (IPv6)")
            # the isolated pod first (it has no neighbour entry yet), then the other way;
            # polled: the node's fresh bridge may lose a first packet (without the rule for
            # neighbour discovery, web never reaches client6)
            for pod, target in ((0, client6), (0, CLIENT), (1, WEB6), (1, WEB)):
                ping = ["ip", "netns", "exec", pods[pod], "ping", "-c1", "-W1", target]
                wait_for(
                    lambda ping=ping: subprocess.run(ping, capture_output=True).returncode == 0,
                    timeout=6.0,
                    every=0.2,
                    what=f"ping {target}",
                )
    finally:
        for pod in pods:
            subprocess.run(["ip", "netns", "del", pod], check=False)


def test_same_node_through_br_netfilter_needs_no_bridge_table(
    bridged: str, cluster: ApiServerDouble, kubeconfig: str
) -> None:
    """``POLICY_SAME_NODE=br-netfilter``: on a node whose bridged frames pass the IP
    hooks, same-node traffic stays bridged (no bridge table) and is still judged; when
    the node stops passing them, the agent goes back to the redirect within about a
    second (it polls the sysctls: the resync here is an hour away)."""
    ns = bridged
    for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
        run_in(ns, ["sysctl", "-qw", f"{key}=1"])
    run_in(ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    run_in(ns, ["ip", "addr", "add", "10.244.1.1/24", "dev", "cbr0"])
    settings = _settings(kubeconfig, POLICY_SAME_NODE="br-netfilter", RESYNC_INTERVAL="1h")
    pods: list[str] = []
    try:
        pods += [_pod_ns(ns, "w", WEB), _pod_ns(ns, "c", CLIENT)]
        with running_daemon(ns, **settings):
            wait_for(lambda: _has(ns, "ingress4", WEB), what="web isolated")
            assert _tables(ns) == {f"inet {TABLE}"}  # no bridge table
            # ... and still the bridge's address is pinned: a port with a lower address
            # coming and going does not change the pods' gateway address under them
            mac = json.loads(run_in(ns, ["ip", "-j", "link", "show", "cbr0"]))[0]["address"]
            run_in(ns, ["ip", "link", "add", "vlow", "address", "02:00:00:00:00:01", "type",
                        "veth", "peer", "vlowp"])  # fmt: skip
            run_in(ns, ["ip", "link", "set", "vlow", "master", "cbr0", "up"])
            shown = json.loads(run_in(ns, ["ip", "-j", "link", "show", "cbr0"]))[0]["address"]
            run_in(ns, ["ip", "link", "del", "vlow"])
            assert shown == mac
            client = ["ip", "netns", "exec", pods[1]]
            # denied (ICMP: web's policy allows only its named port from the client)
            assert subprocess.run(
                [*client, "ping", "-c1", "-W1", WEB], capture_output=True
            ).returncode
            # the node stops showing bridged frames to the IP hooks
            run_in(ns, ["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"])
            wait_for(
                lambda: f"bridge {TABLE}" in _tables(ns), timeout=3.0, what="back to the redirect"
            )
            assert subprocess.run(
                [*client, "ping", "-c1", "-W1", WEB], capture_output=True
            ).returncode
    finally:
        for pod in pods:
            subprocess.run(["ip", "netns", "del", pod], check=False)
