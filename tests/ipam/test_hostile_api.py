"""Hostile API answers against the real plugin (the installed executable): an oversized
Node answer is refused with a clear error while the plugin's peak memory stays small, and
TLS trusts the configured CA only (issue 12, findings 3-5)."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ipam._cni import BIN, cni_env, invoke, netconf
from tests.ipam._hostile_api import HostileApi
from tests.kube.tlsdouble import TlsApiServerDouble, make_pki
from xcluster_cni_lib.plugin import kubelite
from xcluster_cni_lib.testing.nodes import make_node

Conf = Callable[..., dict[str, Any]]
HUNDRED_MB = 100 << 20
# A plugin run that builds its cache costs ~25 MB of interpreter and imports; reading a
# 100 MB answer whole cost ~300 MB. The caps keep it under this.
PEAK_RSS_LIMIT_KB = 80 << 10


# The child's peak RSS (ru_maxrss) also counts the image it was forked from before its
# exec: forked from a large pytest process, a small plugin would look large. So a fresh,
# small interpreter starts the plugin and reports its peak.
_MEASURE = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "sys.stderr.write(f'\\nPEAK_KB={usage.ru_maxrss}\\n')\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_measured(
    argv: list[str], *, stdin: bytes, env: dict[str, str]
) -> tuple[int, bytes, bytes, int]:
    """Run ``argv``; (exit code, stdout, stderr, peak RSS in KiB of that process)."""
    proc = subprocess.run(
        [sys.executable, "-S", "-c", _MEASURE, *argv],
        input=stdin,
        capture_output=True,
        env=env,
        check=False,
    )
    err, _, peak = proc.stderr.rpartition(b"\nPEAK_KB=")
    return proc.returncode, proc.stdout, err, int(peak.strip())


def _add_measured(api: HostileApi, tmp_path: Path) -> tuple[dict[str, Any], int]:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    conf = netconf(tmp_path / "data", kubeconfig=kubeconfig, nodeName="n1", timeout=60)
    env = {**cni_env("ADD"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if "PYTHONPATH" in os.environ:  # (to run these tests against another tree)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    rc, out, err, peak_kb = run_measured(
        [str(BIN / "kube-node")], stdin=json.dumps(conf).encode(), env=env
    )
    assert rc != 0, (out, err[-2000:])
    doc = json.loads(out)  # exactly one error object
    assert not (tmp_path / "data" / "net" / "kube-node.json").exists()
    return doc, peak_kb


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_a_100_mb_node_is_refused_in_little_memory(framing: str, tmp_path: Path) -> None:
    with HostileApi(body_bytes=HUNDRED_MB, framing=framing) as api:
        err, peak_kb = _add_measured(api, tmp_path)
    print(f"framing={framing} peak RSS {peak_kb} KiB; error {err}")
    assert err["code"] == 100, err
    assert "too large" in err["msg"] and str(kubelite.MAX_NODE_BYTES) in err["msg"], err
    assert peak_kb < PEAK_RSS_LIMIT_KB, f"peak RSS {peak_kb} KiB"
    if framing == "length":  # refused from the header, the body is not read
        assert api.sent < HUNDRED_MB


def test_an_answer_just_under_the_cap_is_read(tmp_path: Path) -> None:
    node = make_node("n1", index=1, images=0)
    node["metadata"]["annotations"]["big"] = "x" * (kubelite.MAX_NODE_BYTES - 20_000)
    body = json.dumps(node).encode()
    assert len(body) < kubelite.MAX_NODE_BYTES
    with HostileApi(body=body, framing="chunked") as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        conf = netconf(tmp_path / "data", kubeconfig=kubeconfig, nodeName="n1", timeout=30)
        out = invoke(conf, "ADD")
    assert out.rc == 0, out
    assert out.json["ips"][0]["address"].startswith("10.244.1.")


def test_an_oversized_list_page_is_refused(tmp_path: Path) -> None:
    """Without a node name the plugin LISTs nodes (machine-id search): a page beyond
    ``MAX_PAGE_BYTES`` is refused too, as "node not found" (101)."""
    with HostileApi(body_bytes=kubelite.MAX_PAGE_BYTES + 1, prefix=b'{"items":[') as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        conf = netconf(tmp_path / "data", kubeconfig=kubeconfig, timeout=30)
        err = invoke(conf, "ADD").error()
    assert err["code"] == 101 and "too large" in err["msg"], err


def test_deeply_nested_answer_is_not_an_internal_error(tmp_path: Path) -> None:
    with HostileApi(body=b"[" * 200_000 + b"]" * 200_000) as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        conf = netconf(tmp_path / "data", kubeconfig=kubeconfig, nodeName="n1", timeout=30)
        err = invoke(conf, "ADD").error()
    assert err["code"] == 11 and "not JSON" in err["msg"], err


# --- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def https(pki: Path) -> Iterator[TlsApiServerDouble]:
    with TlsApiServerDouble(pki, token="t0k") as api:
        api.add_node(make_node("n1", index=1, images=0))
        yield api


def _tls_conf(tmp_path: Path, server: str, cluster: dict[str, Any], **ipam: Any) -> dict[str, Any]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {"server": server, **cluster}}],
                "users": [{"name": "u", "user": {"token": "t0k"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return netconf(tmp_path / "data", kubeconfig=str(kubeconfig), nodeName="n1", timeout=5, **ipam)


def test_plugin_trusts_only_the_kubeconfig_ca(
    https: TlsApiServerDouble, pki: Path, tmp_path: Path
) -> None:
    """The system store trusting the server (``SSL_CERT_FILE``) does not let it through
    when the kubeconfig names another CA: a configuration error (7) naming the kubeconfig."""
    cluster = {"certificate-authority": str(pki / "other-ca.crt")}
    env = {**cni_env("ADD"), "PATH": "/usr/bin:/bin", "SSL_CERT_FILE": str(pki / "ca.crt")}
    out = invoke(_tls_conf(tmp_path, https.url, cluster), "ADD", exe=True, env=env)
    err = out.error()
    assert err["code"] == 7 and "certificate" in err["msg"], err
    assert str(tmp_path / "kubeconfig") in err["msg"]
    assert https.requests["get"] == 0
    good = _tls_conf(tmp_path, https.url, {"certificate-authority": str(pki / "ca.crt")})
    assert invoke(good, "ADD", exe=True, env=env).rc == 0


def test_a_public_ca_is_not_trusted_next_to_the_configured_one(
    https: TlsApiServerDouble, pki: Path, tmp_path: Path
) -> None:
    """The configured CA replaces the system's: kubelite's context loads no default CAs."""
    access = kubelite.load_kubeconfig(
        _tls_conf(tmp_path, https.url, {"certificate-authority": str(pki / "ca.crt")})["ipam"][
            "kubeconfig"
        ]
    )
    ep = kubelite.from_access(access)
    assert ep.ssl_context is not None
    assert ep.ssl_context.verify_mode == ssl.CERT_REQUIRED and ep.ssl_context.check_hostname
    assert len(ep.ssl_context.get_ca_certs()) == 1


def test_insecure_true_works_with_a_warning_in_the_plugin_log(
    https: TlsApiServerDouble, tmp_path: Path
) -> None:
    log = tmp_path / "plugin.log"
    conf = _tls_conf(tmp_path, https.url, {"insecure-skip-tls-verify": True}, logfile=str(log))
    out = invoke(conf, "ADD", exe=True)
    assert out.rc == 0, out
    warnings = [line for line in log.read_text().splitlines() if " warning " in line]
    assert any("insecure-skip-tls-verify" in w and https.url in w for w in warnings), warnings


@pytest.mark.parametrize("value", ["false", "true", 1, "yes"])
def test_insecure_must_be_a_real_boolean(
    https: TlsApiServerDouble, tmp_path: Path, value: object
) -> None:
    conf = _tls_conf(tmp_path, https.url, {"insecure-skip-tls-verify": value})
    err = invoke(conf, "ADD").error()
    assert err["code"] == 7 and "insecure-skip-tls-verify" in err["msg"], err
    assert https.requests["get"] == 0
