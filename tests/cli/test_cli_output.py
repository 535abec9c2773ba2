"""``-o table|json`` of ``plan``, ``nodes``, ``kernelroutes``, ``lab status`` and
``doctor``: one renderer (``support.output``); without ``-o`` a table on a terminal and,
for ``plan``/``nodes``/``kernelroutes``, JSON otherwise (what scripts always got)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from xcluster_cni_daemon.cli import main

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "examples" / "nodes.json"
SCRIPT = Path(sys.executable).parent / "xcluster-cni"
PLAN = ["plan", "--nodes-file", str(EXAMPLE), "--node-name", "node-1"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NODE_NAME", "CIDR_ANNOTATION", "ADDRESS_ANNOTATION", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_plan_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, *PLAN, "-o", "table")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["DESTINATION", "VIA", "DEVICE", "NODE"]
    assert lines[1].split() == ["10.244.2.0/24", "192.168.1.2", "-", "node-2"]
    assert len(lines) == 6
    code, out = run(capsys, *PLAN, "--output", "json")
    assert json.loads(out)[0] == {
        "dst": "10.244.2.0/24",
        "gateway": "192.168.1.2",
        "node": "node-2",
    }
    # without -o and not on a terminal: JSON, as before
    assert json.loads(run(capsys, *PLAN)[1]) == json.loads(out)


def test_nodes_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "nodes", "--nodes-file", str(EXAMPLE), "-o", "table")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "POD", "CIDRS", "ADDRESSES", "MACHINE", "ID", "PROBLEMS"]
    assert lines[1].split() == [
        "node-1",
        "10.244.1.0/24,fd00:10:244:1::/64",
        "192.168.1.1,1000::1:c0a8:101",
        "1" * 32,
        "0",
    ]


@pytest.mark.root
def test_kernelroutes_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "kernelroutes", "--protocol", "254", "-o", "table")
    assert code == 0 and out.splitlines()[0].split() == ["DESTINATION", "VIA"]


def test_bad_format_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*PLAN, "-o", "yaml"]) == 1
    assert "invalid choice: 'yaml'" in capsys.readouterr().err


def test_a_terminal_gets_a_table() -> None:
    """The installed script with its stdout on a pseudo-terminal: a table."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run(
            [str(SCRIPT), *PLAN], stdout=terminal, stderr=subprocess.DEVNULL, timeout=60
        )
        os.close(terminal)
        terminal = -1
        out = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal side is closed and drained
                break
            if not chunk:
                break
            out += chunk
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    assert proc.returncode == 0
    assert out.decode().splitlines()[0].split() == ["DESTINATION", "VIA", "DEVICE", "NODE"]


def test_lab_status_json_without_labs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["lab", "status", "--prefix", "xcnone", "--state-root", str(tmp_path)]
    assert run(capsys, *argv, "-o", "json") == (0, "[]\n")
    assert run(capsys, *argv) == (0, "no labs\n")


def test_doctor_is_listed_and_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "--help")
    assert code == 0 and "    doctor" in out
    code, out = run(capsys, "doctor", "--help")
    assert code == 0 and "usage: xcluster-cni doctor" in out
    for flag in ("--cni-conf-dir", "--cni-bin-dir", "--socket", "--nodes-file", "--node", "-o"):
        assert flag in out
