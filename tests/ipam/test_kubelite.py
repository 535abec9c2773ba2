"""The tiny API client: kubeconfig shapes, TLS (CA file/data, insecure, client
certificates), tokens, in-cluster, paging. Against a local HTTPS server with certificates
made by ``openssl`` for the test."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apiserver import ApiServerDouble
from tests.kube.tlsdouble import TlsApiServerDouble, make_pki
from xcluster_cni_lib.plugin import kubelite
from xcluster_cni_lib.testing.nodes import make_node

NODE = make_node("n1", index=1, images=0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _server(pki: Path, **kwargs: Any) -> Iterator[str]:
    with TlsApiServerDouble(pki, **kwargs) as api:
        api.add_node(NODE)
        yield api.url


@pytest.fixture
def https(pki: Path) -> Iterator[str]:
    yield from _server(pki, token="t0k")


@pytest.fixture
def mtls(pki: Path) -> Iterator[str]:
    yield from _server(pki, client_certs=True)


def _kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> str:
    path.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return str(path)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _get(kubeconfig: str) -> dict[str, Any] | None:
    return kubelite.get_node(kubelite.from_kubeconfig(kubeconfig), "n1", timeout=5)


def test_only_the_configured_ca_is_trusted(
    https: str, pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kubeconfig's CA replaces the system's CAs: the system trusting the server's CA
    (``SSL_CERT_FILE``) must not let a server through that the configured CA did not sign."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki / "ca.crt"))
    other = {"server": https, "certificate-authority": str(pki / "other-ca.crt")}
    with pytest.raises(kubelite.ApiError, match="CERTIFICATE_VERIFY_FAILED") as e:
        _get(_kubeconfig(tmp_path / "k", other, {"token": "t0k"}))
    assert e.value.status is None
    assert _get(_kubeconfig(tmp_path / "k2", {"server": https}, {"token": "t0k"})) is not None


def test_insecure_must_be_a_boolean(https: str, tmp_path: Path) -> None:
    cluster = {"server": https, "insecure-skip-tls-verify": "false"}
    with pytest.raises(
        kubelite.KubeconfigError, match="insecure-skip-tls-verify: must be a boolean"
    ):
        kubelite.from_kubeconfig(_kubeconfig(tmp_path / "k", cluster, {}))


def test_ca_file_relative_to_the_kubeconfig(https: str, pki: Path) -> None:
    cfg = _kubeconfig(
        pki / "k1", {"server": https, "certificate-authority": "ca.crt"}, {"token": "t0k"}
    )
    node = _get(cfg)
    assert node is not None and node["metadata"]["name"] == "n1"


def test_ca_data(https: str, pki: Path, tmp_path: Path) -> None:
    cluster = {"server": https, "certificate-authority-data": _b64(pki / "ca.crt")}
    assert _get(_kubeconfig(tmp_path / "k", cluster, {"token": "t0k"})) is not None


def test_unknown_ca_is_refused_unless_insecure(https: str, tmp_path: Path) -> None:
    with pytest.raises(kubelite.ApiError) as e:
        _get(_kubeconfig(tmp_path / "k", {"server": https}, {"token": "t0k"}))
    assert e.value.status is None  # not reached: certificate verify failed
    cluster = {"server": https, "insecure-skip-tls-verify": True}
    assert _get(_kubeconfig(tmp_path / "k2", cluster, {"token": "t0k"})) is not None


def test_client_certificate_data(mtls: str, pki: Path, tmp_path: Path) -> None:
    cluster = {"server": mtls, "certificate-authority-data": _b64(pki / "ca.crt")}
    user = {
        "client-certificate-data": _b64(pki / "client.crt"),
        "client-key-data": _b64(pki / "client.key"),
    }
    assert _get(_kubeconfig(tmp_path / "k", cluster, user)) is not None
    assert not list(Path("/tmp").glob(".kubelite-*"))  # key material not left behind
    with pytest.raises(kubelite.ApiError):
        _get(_kubeconfig(tmp_path / "k2", cluster, {}))


def test_client_certificate_files(mtls: str, pki: Path) -> None:
    cluster = {"server": mtls, "certificate-authority": str(pki / "ca.crt")}
    user = {"client-certificate": "client.crt", "client-key": "client.key"}
    assert _get(_kubeconfig(pki / "k3", cluster, user)) is not None


def test_missing_node_is_none_and_bad_token_is_401(https: str, pki: Path, tmp_path: Path) -> None:
    cluster = {"server": https, "certificate-authority": str(pki / "ca.crt")}
    ep = kubelite.from_kubeconfig(_kubeconfig(tmp_path / "k", cluster, {"token": "t0k"}))
    assert kubelite.get_node(ep, "nope", timeout=5) is None
    bad = kubelite.from_kubeconfig(_kubeconfig(tmp_path / "k2", cluster, {"token": "x"}))
    with pytest.raises(kubelite.ApiError) as e:
        kubelite.get_node(bad, "n1", timeout=5)
    assert e.value.status == 401


def test_in_cluster(https: str, pki: Path, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t0k\n")
    (tmp_path / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    port = https.rsplit(":", 1)[1]
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
    ep = kubelite.in_cluster(env, sa_dir=str(tmp_path))
    assert kubelite.get_node(ep, "n1", timeout=5) is not None
    with pytest.raises(kubelite.KubeconfigError, match="KUBERNETES_SERVICE_HOST"):
        kubelite.endpoint(None, {})


@pytest.mark.parametrize("user", [{"exec": {"command": "aws"}}, {"auth-provider": {"name": "gcp"}}])
def test_plugin_credentials_are_unsupported(user: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(kubelite.KubeconfigError, match="credential plugins are not supported"):
        kubelite.from_kubeconfig(_kubeconfig(tmp_path / "k", {"server": "https://x"}, user))


@pytest.mark.parametrize(
    "text",
    ["", "[1]", "{}", '{"current-context": "nope", "contexts": []}', "a: [b"],
)
def test_malformed_kubeconfig(text: str, tmp_path: Path) -> None:
    (tmp_path / "k").write_text(text)
    with pytest.raises(kubelite.KubeconfigError, match=f"kubeconfig {tmp_path / 'k'}: "):
        kubelite.from_kubeconfig(str(tmp_path / "k"))


def test_pages_through_nodes() -> None:
    with ApiServerDouble() as api:
        api.set_nodes(make_node(f"n{i}", index=i, images=0) for i in range(25))
        ep = kubelite.Endpoint(api.url, headers={})
        names = [n["metadata"]["name"] for n in kubelite.iter_nodes(ep, timeout=5, limit=10)]
        assert sorted(names) == sorted(f"n{i}" for i in range(25))
        assert api.list_requests == 3


def test_unreachable_server_has_no_status() -> None:
    ep = kubelite.Endpoint("http://127.0.0.1:9", headers={})
    with pytest.raises(kubelite.ApiError) as e:
        kubelite.get_node(ep, "n1", timeout=1)
    assert e.value.status is None


@pytest.mark.parametrize(
    ("server", "parts"),
    [
        ("https://10.0.0.1:6443", (True, "10.0.0.1", 6443, "")),
        ("https://api.example.com", (True, "api.example.com", 443, "")),
        ("http://127.0.0.1", (False, "127.0.0.1", 80, "")),
        ("https://[fd00::1]:6443/k8s/", (True, "fd00::1", 6443, "/k8s")),
        ("https://[fd00::1]", (True, "fd00::1", 443, "")),
    ],
)
def test_split_server(server: str, parts: tuple[bool, str, int, str]) -> None:
    assert kubelite.split_server(server) == parts


@pytest.mark.parametrize(
    "server",
    ["ftp://x", "10.0.0.1:6443", "https://", "https://x:port", "https://u@x", "https://x:0"],
)
def test_bad_server_url(server: str) -> None:
    with pytest.raises(kubelite.KubeconfigError):
        kubelite.split_server(server)


def test_quote() -> None:
    assert kubelite.quote("node-1.example.com") == "node-1.example.com"
    assert kubelite.quote("a b/c=+é") == "a%20b%2Fc%3D%2B%C3%A9"


def test_chunked_and_sized_responses() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4\r\n{"a"\r\n5;ext=1\r\n: 1}\n\r\n0\r\n\r\n'
    )
    assert kubelite._parse_response(chunked) == (200, b'{"a": 1}\n')
    sized = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"
    assert kubelite._parse_response(sized) == (404, b"{}")
    for bad in (b"garbage", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}"):
        with pytest.raises(ValueError):
            kubelite._parse_response(bad)
