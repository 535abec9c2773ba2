"""Many ADDs at once, a range running out, and an ADD killed half-way: no address is
handed out twice, none is reserved half, none leaks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.ipam._cni import BIN, cni_env, invoke, reserved

Conf = Callable[..., dict[str, Any]]


def _spawn(conf: dict[str, Any], cid: str, command: str = "ADD") -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(BIN / "kube-node")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cni_env(command, cid=cid),
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(conf).encode())
    proc.stdin.close()
    proc.stdin = None  # communicate() must not touch it again
    return proc


def _finish(procs: list[subprocess.Popen[bytes]]) -> list[tuple[int, bytes]]:
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=60)
        out.append((p.returncode, stdout))
    return out


def test_50_parallel_adds_get_unique_addresses(conf: Conf, data_dir: Path) -> None:
    c = conf()  # no cache yet: every process may miss and build it
    results = _finish([_spawn(c, f"p{i}") for i in range(50)])
    assert all(rc == 0 for rc, _ in results), [r for r in results if r[0]]
    addresses = [ip["address"] for _, out in results for ip in json.loads(out)["ips"]]
    assert len(addresses) == 100
    assert len(set(addresses)) == 100
    assert len(reserved(data_dir / "net")) == 100
    json.loads((data_dir / "net" / "kube-node.json").read_text())  # intact


def test_full_range_gives_clean_errors_and_no_half_reservations(conf: Conf, data_dir: Path) -> None:
    # IPv4 has plenty; IPv6 has 5 addresses. host-local takes IPv4 first, so every
    # failure must give its IPv4 address back.
    c = conf(rangeStart="fd00:10:244:1::10", rangeEnd="fd00:10:244:1::14")
    assert invoke(c, "ADD", cid="warm").rc == 0
    results = _finish([_spawn(c, f"p{i}") for i in range(12)])
    ok = [json.loads(out) for rc, out in results if rc == 0]
    failed = [out for rc, out in results if rc != 0]
    assert len(ok) == 4 and len(failed) == 8
    for out in failed:
        err = json.loads(out)  # exactly one JSON object
        assert isinstance(err["code"], int) and err["msg"]
    left = reserved(data_dir / "net")
    v4 = [a for a in left if ":" not in a]
    v6 = [a for a in left if ":" in a]
    assert len(v4) == len(v6) == 5
    assert sorted(left.values()) == sorted(
        [
            f"{cid}\r\neth0"
            for cid in ["warm"] + [f"p{i}" for i, (rc, _) in enumerate(results) if rc == 0]
        ]
        * 2
    )


def test_sigkill_during_add_then_del_leaks_nothing(conf: Conf, data_dir: Path) -> None:
    c = conf()
    assert invoke(c, "ADD", cid="warm").rc == 0  # the cache-hit path, mostly host-local
    fresh = conf(name="cold")  # the cache-miss path
    for config, network in ((c, "net"), (fresh, "cold")):
        for delay in (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08):
            cid = f"k{int(delay * 1000)}"
            proc = _spawn(config, cid)
            time.sleep(delay)  # deliberately racing the ADD: any point is fine
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
            out = invoke(config, "DEL", cid=cid)
            assert (out.rc, out.out) == (0, b"")
            held = [a for a, v in reserved(data_dir / network).items() if v.startswith(cid)]
            assert held == [], (network, delay)
    assert len(reserved(data_dir / "net")) == 2  # only "warm"
