"""The ``policy`` check against real nftables tables in a network namespace: the tables
the agent writes (``table_document`` of a compiled node, applied with ``Nft``) read back
OK with their counts; the bridge's address changed under the bridge table: FAIL; left
over with NETWORK_POLICY off: WARN; the bridge table gone while the pods' bridge exists:
WARN; the forward chain or the inet table gone: FAIL. The reading is
``doctorfacts.read_policy`` in the namespace, and twice the whole command (``ip netns
exec <ns> xcluster-cni doctor``) to see it wired into ``gather``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.apiserver.objects import make_namespace, make_network_policy, make_pod
from xcluster_cni_lib.core.policyfacts import build_view
from xcluster_cni_lib.core.policynft import PolicyState, compile_node, table_document, table_name
from xcluster_cni_lib.daemon.config import SETTINGS, load_config
from xcluster_cni_lib.kernel.nftables import Nft
from xcluster_cni_lib.testing.netns import run_in
from xcluster_cni_lib.tools import doctor
from xcluster_cni_lib.tools.doctor import FAIL, OK, WARN, DoctorFacts
from xcluster_cni_lib.tools.doctorfacts import read_policy

pytestmark = pytest.mark.root

CLI = str(Path(sys.executable).parent / "xcluster-cni")
TABLE = table_name(202)


def state() -> PolicyState:
    """Node n1: web (isolated for ingress: only cli may reach it on 8080) and cli
    (isolated for egress: only to web), dual-stack; a pod on n2."""
    pods = [
        make_pod("web", "a", node="n1", ips=["10.9.0.3", "fd09::3"], labels={"app": "web"}),
        make_pod("cli", "a", node="n1", ips=["10.9.0.2", "fd09::2"], labels={"app": "cli"}),
        make_pod("x", "b", node="n2", ips=["10.9.1.5", "fd09:1::5"], labels={"app": "x"}),
    ]
    policies = [
        make_network_policy(
            "web",
            "a",
            pod_selector={"matchLabels": {"app": "web"}},
            ingress=[
                {
                    "from": [{"podSelector": {"matchLabels": {"app": "cli"}}}],
                    "ports": [{"port": 8080}],
                }
            ],
        ),
        make_network_policy(
            "cli",
            "a",
            pod_selector={"matchLabels": {"app": "cli"}},
            policy_types=("Egress",),
            egress=[{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
        ),
    ]
    view = build_view(
        pods=pods, namespaces=[make_namespace("a"), make_namespace("b")], policies=policies
    )
    compiled = compile_node(view, node="n1")
    assert compiled.ingress and compiled.egress
    return compiled


def check(netns: str, *, on: bool) -> doctor.Check:
    env = {"NETWORK_POLICY": "true" if on else "false", "NODE_NAME": "n1"}
    config = load_config(env, rt_protos={})
    facts = DoctorFacts(
        conf_dir="/x",
        conf_files={},
        bin_dir="/x",
        network_policy=config.network_policy,
        policy=read_policy(config, netns=netns),
    )
    return doctor.check_policy(facts)


def run_doctor(netns: str) -> dict[str, Any]:
    """The whole command in the namespace with NETWORK_POLICY=true: its policy check."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(NETWORK_POLICY="true", NODE_NAME="n1")
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, CLI, "doctor", "-o", "json", "--timeout=1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr  # nothing else is set up here
    checks = {c["check"]: c for c in json.loads(proc.stdout)["checks"]}
    return checks["policy"]  # type: ignore[no-any-return]


def nft(netns: str, script: str) -> None:
    run_in(netns, ["nft", script])


def test_policy_check_on_real_tables(netns: str) -> None:
    assert check(netns, on=False).summary == "NETWORK_POLICY is off: no tables"
    run_in(netns, ["ip", "link", "add", "cbr0", "type", "bridge"])
    mac = json.loads(run_in(netns, ["ip", "-j", "link", "show", "cbr0"]))[0]["address"]
    wanted = state()
    with Nft(netns=netns) as n:
        n.apply(table_document(TABLE, wanted, bridge_mac=mac))

    # as the agent leaves them
    elements = {k: v for k, v in wanted.elements().items() if not k.startswith("bridge:")}
    summary = (
        f"table inet {TABLE}: {len(wanted.ingress)} local pod addresses isolated for ingress, "
        f"{len(wanted.egress)} for egress, {sum(map(len, elements.values()))} elements; "
        f"table bridge {TABLE} for cbr0"
    )
    found = check(netns, on=True)
    assert (found.status, found.summary) == (OK, summary)
    assert (len(wanted.ingress), len(wanted.egress)) == (2, 2)
    whole = run_doctor(netns)
    assert (whole["status"], whole["summary"]) == (OK, summary)

    # the bridge's address changed under the table
    run_in(netns, ["ip", "link", "set", "cbr0", "address", "02:00:00:00:00:99"])
    moved = check(netns, on=True)
    assert moved.status == FAIL
    assert f"to {mac} but cbr0 has 02:00:00:00:00:99" in moved.summary
    run_in(netns, ["ip", "link", "set", "cbr0", "address", mac])
    assert check(netns, on=True).status == OK

    # NETWORK_POLICY off: left over
    left = check(netns, on=False)
    assert left.status == WARN
    assert f"table inet {TABLE} and bridge {TABLE} is present" in left.summary

    # the bridge table gone while cbr0 exists
    nft(netns, f"delete table bridge {TABLE}")
    found = check(netns, on=True)
    assert found.status == WARN
    assert found.summary.startswith(f"pods are bridged on cbr0 but table bridge {TABLE}")
    run_in(netns, ["ip", "link", "del", "cbr0"])
    found = check(netns, on=True)
    assert (found.status, found.summary) == (
        OK,
        summary.replace(f"table bridge {TABLE} for cbr0", "no cbr0 here: no bridge table needed"),
    )

    # the forward chain gone
    nft(netns, f"flush chain inet {TABLE} forward; delete chain inet {TABLE} forward")
    found = check(netns, on=True)
    assert found.status == FAIL
    assert found.summary.startswith(f"table inet {TABLE} has no chain forward hooked")

    # the inet table gone
    nft(netns, f"delete table inet {TABLE}")
    found = check(netns, on=True)
    assert found.status == FAIL
    assert found.summary == (
        f"NETWORK_POLICY=true but table inet {TABLE} is missing: no policy is enforced"
    )
    whole = run_doctor(netns)
    assert (whole["status"], whole["summary"]) == (FAIL, found.summary)
    assert check(netns, on=False).status == OK
