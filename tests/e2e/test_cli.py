"""``xcluster-cni lab demo|up|status|down`` as a user runs them: the demo works and
finishes well under a minute, and nothing is left behind after it, after ``lab down``,
after Ctrl-C and after a crashed run."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from xcluster_cni_lib.lab.cleanup import process_gone
from xcluster_cni_lib.lab.shell import list_netns, netns_pids

from .conftest import PREFIX

CLI = str(Path(sys.executable).parent / "xcluster-cni")


def lab_cli(*args: str, state_root: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [CLI, "lab", *args, "--prefix", PREFIX, "--state-root", str(state_root)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def namespaces_of(lab_id: str) -> list[str]:
    return [n for n in list_netns() if n.startswith(f"{PREFIX}-{lab_id}-")]


def new_id() -> str:
    return "t" + secrets.token_hex(3)


def test_demo_shows_a_working_cluster_and_leaves_nothing(tmp_path: Path) -> None:
    lab_id = new_id()
    start = time.monotonic()
    proc = lab_cli("demo", "--id", lab_id, state_root=tmp_path)
    took = time.monotonic() - start

    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "all 120 paths OK" in out  # 6 pods x 5 peers x 2 families x 2 networks
    # n3's 2 pods to and from the 4 others, 2 families, 2 networks: cut; the rest works
    assert "0 of 64 OK (expected 0: no routes); other paths: 56 of 56 OK" in out
    assert out.count("routes converged in") == 2
    assert "10.245.2.0/24" in out and "fd00:10:244:3::/64" in out  # routes printed
    assert namespaces_of(lab_id) == []
    assert not (tmp_path / f"{PREFIX}-{lab_id}").exists()
    assert took < 30


def test_up_status_down(tmp_path: Path) -> None:
    lab_id = new_id()
    up = lab_cli(
        "up", "--id", lab_id, "--nodes", "2", "--pods", "1", "--no-secondary", state_root=tmp_path
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert len(namespaces_of(lab_id)) == 5  # switch, 2 nodes, 2 pods
        daemons = netns_pids(f"{PREFIX}-{lab_id}-n1") + netns_pids(f"{PREFIX}-{lab_id}-n2")
        assert len(daemons) == 2  # they outlive `lab up`
        hint = next(line for line in up.stdout.splitlines() if line.startswith("try: "))
        ping = subprocess.run([*hint[5:].split()[:-1], "-c1", "-W2", hint.split()[-1]], check=False)
        assert ping.returncode == 0

        status = lab_cli("status", "--id", lab_id, state_root=tmp_path)
        assert "daemons running: 2 of 2" in status.stdout
        assert "main: 2 routes" in status.stdout
    finally:
        down = lab_cli("down", "--id", lab_id, state_root=tmp_path)
    assert down.returncode == 0
    assert namespaces_of(lab_id) == []
    assert all(process_gone(pid) for pid in daemons)
    assert not (tmp_path / f"{PREFIX}-{lab_id}").exists()


def test_down_cleans_what_a_crashed_run_left(tmp_path: Path) -> None:
    lab_id = new_id()
    crash = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from xcluster_cni_lib.lab import Lab, LabSpec
        lab = Lab(LabSpec(nodes=2, pods_per_node=1, lab_id={lab_id!r}, prefix={PREFIX!r},
                          state_root=Path({str(tmp_path)!r})))
        lab.up()
        print(" ".join(str(d.pid) for d in lab.daemons.values()), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", crash], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    daemons = [int(p) for p in proc.stdout.split()]
    assert len(daemons) == 4 and not any(process_gone(p) for p in daemons)
    assert namespaces_of(lab_id)

    listed = lab_cli("status", state_root=tmp_path)
    assert f"lab {lab_id}:" in listed.stdout

    down = lab_cli("down", state_root=tmp_path)  # no id: every lab with the prefix

    assert down.returncode == 0
    assert namespaces_of(lab_id) == []
    assert all(process_gone(p) for p in daemons)
    assert not (tmp_path / f"{PREFIX}-{lab_id}").exists()


def test_ctrl_c_during_the_demo_tears_everything_down(tmp_path: Path) -> None:
    lab_id = new_id()
    argv = [CLI, "lab", "demo", "--id", lab_id, "--prefix", PREFIX, "--state-root", str(tmp_path)]
    demo = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            if line.startswith("[1]") or "[1]" in line:
                break
        demo.send_signal(signal.SIGINT)
        out = demo.communicate(timeout=30)[0]
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, out
    assert namespaces_of(lab_id) == []
    assert not (tmp_path / f"{PREFIX}-{lab_id}").exists()
    assert os.path.isdir(tmp_path)


def test_up_with_host_local_ipam_gives_the_same_ranges(tmp_path: Path) -> None:
    lab_id = new_id()
    args = ("--id", lab_id, "--nodes", "2", "--pods", "1", "--ipam", "host-local")
    up = lab_cli("up", *args, state_root=tmp_path)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "10.244.2." in up.stdout and "fd00:10:245:1::" in up.stdout
        store = tmp_path / f"{PREFIX}-{lab_id}" / "ipam" / "n1" / "main" / "lab-main"
        assert (store / "10.244.1.2").exists()  # host-local's own reservation
        assert not (store / "kube-node.json").exists()  # kube-node was not involved
    finally:
        lab_cli("down", "--id", lab_id, state_root=tmp_path)
    assert namespaces_of(lab_id) == []


def test_status_of_a_lab_that_does_not_exist_fails(tmp_path: Path) -> None:
    lab_id = new_id()
    proc = lab_cli("status", "--id", lab_id, state_root=tmp_path)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr.startswith(f"xcluster-cni lab status: no lab '{lab_id}'")
    assert proc.stderr.count("\n") == 1
    # without --id, no lab at all is not an error (a prefix of our own: other labs may run)
    argv = [CLI, "lab", "status", "--prefix", new_id(), "--state-root", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout) == (0, "no labs\n")


def test_demo_into_head_ends_quietly_and_leaves_nothing(tmp_path: Path) -> None:
    """`xcluster-cni lab demo | head -3`: the demo stops at the closed pipe, tears its lab
    down and exits 141 (128 + SIGPIPE) without a traceback."""
    lab_id = new_id()
    argv = [CLI, "lab", "demo", "--id", lab_id, "--prefix", PREFIX, "--state-root", str(tmp_path)]
    demo = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert demo.stdout is not None
    head = [demo.stdout.readline() for _ in range(3)]
    demo.stdout.close()
    _, err = demo.communicate(timeout=60)
    assert head[0].startswith(f"xcluster-cni lab {lab_id}:")
    assert demo.returncode == 141, err
    assert "Traceback" not in err and "Error" not in err
    assert namespaces_of(lab_id) == []
    assert not (tmp_path / f"{PREFIX}-{lab_id}").exists()
