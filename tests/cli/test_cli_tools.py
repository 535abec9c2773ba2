"""The ``xcluster-cni`` tools, in-process (``main([...])``) and once as the installed script."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from xcluster_cni_daemon.cli import main

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "examples" / "nodes.json"
REAL = ROOT / "tests" / "data" / "node-real.json"
SCRIPT = Path(sys.executable).parent / "xcluster-cni"
CIDR_KEY = "cidr.example.com/net3"
ADDR_KEY = "node-ip.nordix.org/net3"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NODE_NAME", "CIDR_ANNOTATION", "ADDRESS_ANNOTATION", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


def fails_with(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run; require exit 1, nothing on stdout and exactly one line on stderr; return it."""
    code, out, err = run(capsys, *argv)
    assert (code, out) == (1, "")
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


# -- version, help, usage errors -------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    expected = f"xcluster-cni {importlib.metadata.version('xcluster-cni')}\n"
    assert run(capsys, "version")[:2] == (0, expected)
    assert run(capsys, "--version")[:2] == (0, expected)


@pytest.mark.parametrize("command", ["version", "cidr", "mtu", "plan", "nodes", "kernelroutes"])
def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and f"usage: xcluster-cni {command}" in out


def test_top_level_help_lists_the_tools(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("version", "cidr", "mtu", "plan", "nodes", "kernelroutes"):
        assert f"    {command}" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["no-such-command"], "invalid choice: 'no-such-command'"),
        (["cidr"], "the following arguments are required: DOUBLE_SLASH_CIDR, NODE_NUMBER"),
        (["cidr", "10.0.0.0/8/24", "1", "2"], "unrecognized arguments: 2"),
        (["plan"], "the following arguments are required: --nodes-file"),
        (
            ["kernelroutes", "--protocol", "x"],
            "not a route protocol number (1-255) nor a name in rt_protos: 'x'",
        ),
        (["kernelroutes", "--protocol", "256"], "not a route protocol number"),
        (["kernelroutes", "--protocol", "0"], "not a route protocol number"),
        (["nodes", "--kubeconfig", "a", "--nodes-file", "b"], "not allowed with argument"),
    ],
)
def test_usage_errors_are_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    line = fails_with(capsys, *argv)
    assert line.startswith("xcluster-cni") and "error:" in line and message in line


# -- cidr ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "number", "expected"),
    [
        ("192.168.0.0/22/25", "5", "192.168.2.128/25"),
        ("fd00:1000::/96/112", "5", "fd00:1000::5:0/112"),
        ("fd00:1000::/48/64", "5", "fd00:1000:0:5::/64"),
    ],
)
def test_cidr(capsys: pytest.CaptureFixture[str], spec: str, number: str, expected: str) -> None:
    assert run(capsys, "cidr", spec, number) == (0, expected + "\n", [])


@pytest.mark.parametrize(
    ("spec", "number", "message"),
    [
        ("192.168.0/22/25", "5", "malformed address"),
        ("192.168.0.0/2x/25", "5", "is not a decimal number"),
        ("192.168.0.0/25/22", "0", "is larger than the second"),
        ("192.168.0.0/22/25", "8", "does not fit"),
        ("192.168.0.0/22/25", "-1", "not a non-negative decimal integer"),
        ("192.168.0.0/22/25", "five", "not a non-negative decimal integer"),
        ("10.0.0.0/4/24", "0", "less than 8"),
        ("10.0.0.0/8/33", "0", "more than 32"),
        ("fd00::/40/64", "0", "less than 48"),
        ("fd00::/64/129", "0", "more than 128"),
    ],
)
def test_cidr_errors(
    capsys: pytest.CaptureFixture[str], spec: str, number: str, message: str
) -> None:
    line = fails_with(capsys, "cidr", spec, number)
    assert line.startswith("xcluster-cni: error: ") and message in line


# -- plan ------------------------------------------------------------------------------


def routes_of(out: str) -> list[tuple[str, str, str]]:
    return [(r["dst"], r["gateway"], r["node"]) for r in json.loads(out)]


def test_plan_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "--nodes-file", str(EXAMPLE), "--node-name", "node-1")
    assert code == 0
    assert routes_of(out) == [
        ("10.244.2.0/24", "192.168.1.2", "node-2"),
        ("10.244.3.0/24", "192.168.1.3", "node-3"),
        ("10.244.4.0/24", "192.168.1.4", "node-4"),
        ("fd00:10:244:2::/64", "1000::1:c0a8:102", "node-2"),
        ("fd00:10:244:3::/64", "1000::1:c0a8:103", "node-3"),
    ]
    assert list(json.loads(out)[0]) == ["dst", "gateway", "node"]
    assert err == [
        "warning: node node-4: no IPv6 address; no route to its pod CIDR fd00:10:244:4::/64"
    ]


def test_plan_with_annotations_reports_the_bad_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "plan",
        "--nodes-file",
        str(EXAMPLE),
        "--node-name",
        "node-2",
        "--cidr-annotation",
        CIDR_KEY,
        "--address-annotation",
        ADDR_KEY,
    )
    assert code == 0
    assert routes_of(out) == [
        ("192.168.55.0/26", "192.168.2.1", "node-1"),
        ("192.168.55.128/26", "192.168.2.3", "node-3"),
        ("fd00:5::1:0/112", "1000::2:c0a8:201", "node-1"),
        ("fd00:5::3:0/112", "1000::2:c0a8:203", "node-3"),
    ]
    assert err == [
        "warning: node node-4: two IPv4 CIDRs, at most one per family "
        "(cidr.example.com/net3='192.168.55.192/26,192.168.56.0/26')"
    ]


def test_plan_settings_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODE_NAME", "node-2")
    monkeypatch.setenv("CIDR_ANNOTATION", CIDR_KEY)
    monkeypatch.setenv("ADDRESS_ANNOTATION", ADDR_KEY)
    code, out, _ = run(capsys, "plan", "--nodes-file", str(EXAMPLE))
    assert code == 0 and {r[2] for r in routes_of(out)} == {"node-1", "node-3"}
    # a flag beats the environment
    code, out, _ = run(capsys, "plan", "--nodes-file", str(EXAMPLE), "--node-name", "node-3")
    assert {r[2] for r in routes_of(out)} == {"node-1", "node-2"}


def test_plan_own_node_by_machine_id(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    mid = tmp_path / "machine-id"
    mid.write_text("3" * 32 + "\n")  # node-3's machineID in the example
    code, out, err = run(
        capsys, "plan", "--nodes-file", str(EXAMPLE), "--machine-id-file", str(mid)
    )
    assert code == 0 and "node-3" not in {r[2] for r in routes_of(out)}
    assert len(routes_of(out)) == 5 and len(err) == 1  # node-4's missing IPv6 address


def test_plan_without_own_node_routes_to_everyone_and_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(
        capsys, "plan", "--nodes-file", str(EXAMPLE), "--machine-id-file", str(tmp_path / "none")
    )
    assert code == 0 and len(routes_of(out)) == 7
    assert err[0] == (
        "warning: no node name was given and the machine id is unknown: routes to every node"
    )


def test_plan_unknown_node_name_is_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "--nodes-file", str(EXAMPLE), "--node-name", "node-99")
    assert code == 0 and len(routes_of(out)) == 7
    assert err[0] == "warning: node node-99 is not among the nodes"


def test_plan_cloned_machine_ids_fail(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = json.loads(EXAMPLE.read_text())
    for item in doc["items"]:
        item["status"]["nodeInfo"]["machineID"] = "c" * 32
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps(doc))
    mid = tmp_path / "machine-id"
    mid.write_text("c" * 32)
    line = fails_with(capsys, "plan", "--nodes-file", str(nodes), "--machine-id-file", str(mid))
    assert "belongs to several nodes" in line


def test_plan_reads_yaml_and_a_single_real_node(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    yaml = tmp_path / "nodes.yaml"
    yaml.write_text(
        "kind: NodeList\nitems:\n"
        "- metadata: {name: a}\n  spec: {podCIDRs: ['::ffff:10.1.0.0/120']}\n"
        "  status: {addresses: [{type: InternalIP, address: '::ffff:192.168.0.1'}]}\n"
    )
    code, out, _ = run(capsys, "plan", "--nodes-file", str(yaml), "--node-name", "b")
    assert (code, routes_of(out)) == (0, [("10.1.0.0/24", "192.168.0.1", "a")])
    code, out, _ = run(capsys, "plan", "--nodes-file", str(REAL), "--node-name", "other")
    assert routes_of(out) == [
        ("10.244.2.0/24", "192.168.1.3", "worker-2"),
        ("fd00:10:244:2::/64", "fd00:1::3", "worker-2"),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read: No such file or directory"),
        ("{broken", "invalid JSON"),
        ('{"kind": "Pod", "metadata": {}}', "kind 'Pod'"),
    ],
)
def test_plan_bad_nodes_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None, message: str
) -> None:
    f = tmp_path / "nodes.json"
    if content is not None:
        f.write_text(content)
    line = fails_with(capsys, "plan", "--nodes-file", str(f), "--node-name", "a")
    assert line.startswith(f"xcluster-cni: error: nodes file {f}") and message in line


@pytest.mark.parametrize("command", ["plan", "nodes"])
@pytest.mark.parametrize(
    ("flag", "key"),
    [
        ("--address-annotation", "bad key!!"),
        ("--cidr-annotation", "example.com/"),
        ("--cidr-annotation", "Bad_Prefix.example.com/x"),
    ],
)
def test_a_key_the_daemon_refuses_is_refused_by_the_dry_run(
    capsys: pytest.CaptureFixture[str], command: str, flag: str, key: str
) -> None:
    """The dry run must not print [] and exit 0 for a setting the daemon stops on."""
    from xcluster_cni_lib.daemon.config import ConfigError, load_config

    variable = flag[2:].upper().replace("-", "_")
    with pytest.raises(ConfigError):
        load_config({variable: key})
    line = fails_with(capsys, command, "--nodes-file", str(EXAMPLE), flag, key)
    assert line.startswith("xcluster-cni: error: ") and repr(key) in line
    assert "not a valid annotation key" in line


def test_a_bad_key_from_the_environment_is_refused_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADDRESS_ANNOTATION", "bad key!!")
    line = fails_with(capsys, "plan", "--nodes-file", str(EXAMPLE), "--node-name", "node-1")
    assert "'bad key!!'" in line


def test_plan_is_what_the_daemon_installs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The dry run and the daemon's reconciler agree on a realistic node list."""
    from xcluster_cni_lib.core.values import Annotations
    from xcluster_cni_lib.sources.nodesfile import load_node_facts
    from xcluster_cni_lib.sync.nodecache import NodeCache
    from xcluster_cni_lib.sync.reconciler import Reconciler
    from xcluster_cni_lib.testing.fakes import FakeRouteTable
    from xcluster_cni_lib.testing.nodes import make_node

    nodes = [
        make_node(f"node-{i}", index=i, annotations={CIDR_KEY: f"10.99.{i}.0/24"})
        for i in range(1, 40)
    ]
    nodes.append(make_node("bad", index=99, annotations={CIDR_KEY: "10.0.0.0/24,10.1.0.0/24"}))
    nodes.append(make_node("v4only", index=98, pod_cidrs=["10.250.0.0/24"]))
    nodes.append(make_node("overlap", index=97, pod_cidrs=["10.250.0.0/16"]))
    f = tmp_path / "nodes.json"
    f.write_text(json.dumps({"kind": "NodeList", "items": nodes}))
    for key in (None, CIDR_KEY):
        extra = ["--cidr-annotation", key] if key else []
        code, out, _ = run(capsys, "plan", "--nodes-file", str(f), "--node-name", "node-7", *extra)
        assert code == 0
        cache = NodeCache()
        cache.replace_all(load_node_facts(f, annotations=Annotations(cidr=key)))
        cache.set_healthy(True)
        table = FakeRouteTable(202)
        Reconciler(cache, table, node_name="node-7").run_once()
        installed = [r.to_json() for r in table.list_routes()]
        assert sorted(json.loads(out), key=str) == sorted(installed, key=str)
        # without the annotation: 38 dual-stack others and bad's two; the two overlapping
        # CIDRs of "v4only" and "overlap" are contested and nobody's; with it: the 38
        # annotated CIDRs
        assert len(installed) == (2 * 38 + 2 if key is None else 38)
        assert not [r for r in installed if r["node"] in ("v4only", "overlap")]


# -- nodes -----------------------------------------------------------------------------


def test_nodes_from_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "nodes", "--nodes-file", str(EXAMPLE), "--cidr-annotation", CIDR_KEY
    )
    assert code == 0
    view = {n["name"]: n for n in json.loads(out)}
    assert view["node-1"] == {
        "name": "node-1",
        "podCIDRs": ["192.168.55.0/26", "fd00:5::1:0/112"],
        "addresses": ["192.168.1.1", "1000::1:c0a8:101"],
        "machineID": "1" * 32,
        "problems": [],
    }
    assert view["node-4"]["podCIDRs"] == [] and "two IPv4 CIDRs" in view["node-4"]["problems"][0]
    assert len(err) == 1 and "node-4" in err[0]


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[tuple[Any, str]]:
    from tests.apiserver import ApiServerDouble
    from xcluster_cni_lib.testing.nodes import make_node

    with ApiServerDouble() as api:
        api.set_nodes(
            [
                make_node("n1", pod_cidrs=["10.244.1.0/24"], internal_ips=["192.168.1.1"]),
                make_node(
                    "n2", pod_cidrs=["10.244.2.0/24", "10.244.9.0/24"], internal_ips=["192.168.1.2"]
                ),
            ]
        )
        yield api, api.write_kubeconfig(tmp_path / "kubeconfig")


def test_nodes_from_the_api(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    apiserver: tuple[Any, str],
) -> None:
    _, kubeconfig = apiserver
    code, out, err = run(capsys, "nodes", "--kubeconfig", str(kubeconfig))
    assert code == 0
    view = json.loads(out)
    assert [(n["name"], n["podCIDRs"], n["addresses"]) for n in view] == [
        ("n1", ["10.244.1.0/24"], ["192.168.1.1"]),
        ("n2", ["10.244.2.0/24"], ["192.168.1.2"]),
    ]
    assert err == [
        "warning: node n2: extra IPv4 CIDR ignored, using 10.244.2.0/24 "
        "(spec.podCIDRs='10.244.9.0/24')"
    ]
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))  # the default
    code, out2, _ = run(capsys, "nodes")
    assert code == 0 and json.loads(out2) == view


def test_nodes_api_down_is_one_line(
    capsys: pytest.CaptureFixture[str], apiserver: tuple[Any, str]
) -> None:
    api, kubeconfig = apiserver
    api.stop()
    line = fails_with(capsys, "nodes", "--kubeconfig", str(kubeconfig))
    assert line.startswith("xcluster-cni: error: cannot list nodes")


def test_nodes_bad_kubeconfig_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing"
    line = fails_with(capsys, "nodes", "--kubeconfig", str(missing))
    assert line.startswith("xcluster-cni: error: ") and str(missing) in line


# -- the installed script ----------------------------------------------------------------


def test_installed_script_plan() -> None:
    proc = subprocess.run(
        [str(SCRIPT), "plan", "--nodes-file", str(EXAMPLE), "--node-name", "node-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert len(json.loads(proc.stdout)) == 5
    assert proc.stderr.count("\n") == 1
    proc = subprocess.run(
        [str(SCRIPT), "cidr", "10.0.0.0/8/24", "70000"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("xcluster-cni: error: node number 70000 does not fit")
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["version"],
        ["cidr", "10.0.0.0/8/24", "1"],
        ["plan", "--nodes-file", str(EXAMPLE), "--node-name", "node-1"],
    ],
)
def test_a_closed_stdout_ends_the_command_quietly(argv: list[str]) -> None:
    """`xcluster-cni ... | head -1`: exit 141 (128 + SIGPIPE, as the shell reports for
    `yes | head -1`), no traceback, no error line."""
    proc = subprocess.Popen(
        [str(SCRIPT), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and "error" not in err.lower() and "Exception" not in err


def test_light_commands_load_neither_kubernetes_nor_pyroute2() -> None:
    code = (
        "import sys\n"
        "from xcluster_cni_daemon.cli import main\n"
        "assert main(['cidr', '10.0.0.0/8/24', '1']) == 0\n"
        f"assert main(['plan', '--nodes-file', {str(EXAMPLE)!r}, '--node-name', 'node-1']) == 0\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'pyroute2'})\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr


def test_cidr_starts_quickly() -> None:
    best = min(_timed([str(SCRIPT), "cidr", "10.0.0.0/8/24", "1"]) for _ in range(3))
    assert best < 1.0, f"xcluster-cni cidr took {best:.2f} s"


def _timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True, timeout=60)
    return time.perf_counter() - t0
