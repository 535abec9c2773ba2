"""``kernelroutes`` and ``mtu`` against a real kernel, in a throwaway network namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xcluster_cni_lib.testing.netns import run_in

pytestmark = pytest.mark.root

SCRIPT = Path(sys.executable).parent / "xcluster-cni"


def cli(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, str(SCRIPT), *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def node_ns(netns: str) -> str:
    """A namespace with two links (MTU 1400 and 9000; veth pairs, as containers may lack
    the dummy driver) carrying both families."""
    for argv in (
        ["ip", "link", "add", "eth0", "mtu", "1400", "type", "veth", "peer", "name", "eth0p"],
        ["ip", "link", "add", "eth1", "mtu", "9000", "type", "veth", "peer", "name", "eth1p"],
        ["ip", "addr", "add", "192.168.1.2/24", "dev", "eth0"],
        ["ip", "addr", "add", "fd00:1::2/64", "dev", "eth0", "nodad"],
        ["ip", "addr", "add", "192.168.2.2/24", "dev", "eth1"],
        ["ip", "addr", "add", "192.168.2.0/16", "dev", "eth1"],  # a wider subnet too
        ["ip", "link", "set", "eth0p", "up"],
        ["ip", "link", "set", "eth1p", "up"],
        ["ip", "link", "set", "eth0", "up"],
        ["ip", "link", "set", "eth1", "up"],
    ):
        run_in(netns, argv)
    return netns


def test_kernelroutes_lists_only_its_protocol(node_ns: str) -> None:
    for argv in (
        ["ip", "route", "add", "10.244.3.0/24", "via", "192.168.1.3", "proto", "202"],
        ["ip", "route", "add", "10.244.4.0/24", "via", "192.168.1.4", "proto", "202"],
        ["ip", "-6", "route", "add", "fd00:10:244:3::/64", "via", "fd00:1::3", "proto", "202"],
        ["ip", "route", "add", "10.99.0.0/16", "via", "192.168.1.9", "proto", "200"],
        ["ip", "route", "add", "10.98.0.0/16", "via", "192.168.1.8"],  # proto boot
    ):
        run_in(node_ns, argv)
    proc = cli(node_ns, "kernelroutes")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert json.loads(proc.stdout) == [
        {"dst": "10.244.3.0/24", "gateway": "192.168.1.3"},
        {"dst": "10.244.4.0/24", "gateway": "192.168.1.4"},
        {"dst": "fd00:10:244:3::/64", "gateway": "fd00:1::3"},
    ]
    proc = cli(node_ns, "kernelroutes", "--protocol", "200")
    assert json.loads(proc.stdout) == [{"dst": "10.99.0.0/16", "gateway": "192.168.1.9"}]
    proc = cli(node_ns, "kernelroutes", "--protocol", "17")
    assert (proc.returncode, json.loads(proc.stdout)) == (0, [])
    # a name from rt_protos: "boot" is 3, the kernel's protocol for `ip route add`
    proc = cli(node_ns, "kernelroutes", "--protocol", "boot")
    assert json.loads(proc.stdout) == [{"dst": "10.98.0.0/16", "gateway": "192.168.1.8"}]


@pytest.mark.parametrize(
    ("address", "mtu"),
    [
        ("192.168.1.2", "1400"),  # eth0's own address
        ("192.168.1.77", "1400"),  # in eth0's subnet
        ("fd00:1::99", "1400"),
        ("192.168.2.50", "9000"),
        ("::ffff:192.168.2.50", "9000"),
        ("127.0.0.1", "65536"),
    ],
)
def test_mtu(node_ns: str, address: str, mtu: str) -> None:
    proc = cli(node_ns, "mtu", address)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, mtu + "\n", "")


def test_mtu_default_with_a_warning(node_ns: str) -> None:
    proc = cli(node_ns, "mtu", "10.9.9.9")
    assert (proc.returncode, proc.stdout) == (0, "1500\n")
    assert proc.stderr == (
        "warning: no interface has an address in a subnet holding 10.9.9.9; using MTU 1500\n"
    )


def test_mtu_bad_address(node_ns: str) -> None:
    proc = cli(node_ns, "mtu", "10.9.9")
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == "xcluster-cni: error: not an IP address: '10.9.9'\n"


def test_in_process_matches_the_namespace_we_run_in(node_ns: str) -> None:
    # The in-process path reads the current namespace: run it there through a child.
    code = (
        "import sys\nfrom xcluster_cni_daemon.cli import main\n"
        "sys.exit(main(['mtu', '192.168.2.9']))\n"
    )
    proc = subprocess.run(
        ["ip", "netns", "exec", node_ns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent.parent,
        env={**os.environ},
    )
    assert (proc.returncode, proc.stdout) == (0, "9000\n")
