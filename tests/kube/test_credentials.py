"""Both API clients read credentials with one reader (``support.kubeconfig``): the daemon's
``kubernetes`` client (``sources.kube``) and the IPAM plugin's ``kubelite`` accept the
same kubeconfigs and refuse the same broken ones with the same ``KubeconfigError`` text;
both trust the configured CA only; the daemon re-reads a rotated service-account token.
Against the API-server double over HTTPS (``tests.kube.tlsdouble``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.helpers import RecordingSink, running, wait_until
from tests.kube.tlsdouble import TlsApiServerDouble, b64, make_pki
from xcluster_cni_lib.core.errors import TemporaryError
from xcluster_cni_lib.plugin import kubelite
from xcluster_cni_lib.sources import kube
from xcluster_cni_lib.sources.watching import KubeNodeSource
from xcluster_cni_lib.support.kubeconfig import KubeconfigError, load_in_cluster
from xcluster_cni_lib.testing.nodes import make_node

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _double(pki: Path, **kwargs: Any) -> Iterator[TlsApiServerDouble]:
    api = TlsApiServerDouble(pki, **kwargs).start()
    try:
        api.add_node(make_node("n1", index=1, images=0))
        yield api
    finally:
        api.stop()


@pytest.fixture
def api(pki: Path) -> Iterator[TlsApiServerDouble]:
    yield from _double(pki, token=TOKEN)


@pytest.fixture
def mtls(pki: Path) -> Iterator[TlsApiServerDouble]:
    yield from _double(pki, client_certs=True)


def _doc(cluster: dict[str, Any], user: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
        **top,
    }


def _write(path: Path, doc: dict[str, Any], *, as_yaml: bool = False) -> str:
    path.write_text(yaml.safe_dump(doc) if as_yaml else json.dumps(doc))
    return str(path)


def _daemon_get(kubeconfig: str) -> str:
    client = kube.load_api_client(kubeconfig, timeout=5)
    try:
        node = kube.get_node(client, "n1")
    finally:
        client.close()
    assert node is not None
    return str(node["metadata"]["name"])


def _plugin_get(kubeconfig: str) -> str:
    node = kubelite.get_node(kubelite.from_kubeconfig(kubeconfig), "n1", timeout=5)
    assert node is not None
    return str(node["metadata"]["name"])


CLIENTS: dict[str, Callable[[str], str]] = {"daemon": _daemon_get, "plugin": _plugin_get}

# name -> (kubeconfig builder(pki, server, dir) -> path)
Good = Callable[[Path, str, Path], str]


def _ca_data(pki: Path, server: str, d: Path) -> str:
    return _write(
        d / "k",
        _doc(
            {"server": server, "certificate-authority-data": b64(pki / "ca.crt")}, {"token": TOKEN}
        ),
    )


def _relative_files_yaml(pki: Path, server: str, d: Path) -> str:
    (d / "ca.pem").write_bytes((pki / "ca.crt").read_bytes())
    (d / "tok").write_text(TOKEN + "\n")
    cluster = {"server": server, "certificate-authority": "ca.pem"}
    return _write(d / "k.yaml", _doc(cluster, {"tokenFile": "tok"}), as_yaml=True)


def _merged_list(pki: Path, server: str, d: Path) -> str:
    full = _doc(
        {"server": server, "certificate-authority-data": b64(pki / "ca.crt")}, {"token": TOKEN}
    )
    first = {"current-context": "x", "users": full.pop("users")}
    full.pop("current-context")
    a, b = _write(d / "a", first), _write(d / "b", full)
    return os.pathsep.join([str(d / "missing"), a, b])


def _insecure(pki: Path, server: str, d: Path) -> str:
    return _write(
        d / "k", _doc({"server": server, "insecure-skip-tls-verify": True}, {"token": TOKEN})
    )


GOOD: dict[str, Good] = {
    "ca-data+token": _ca_data,
    "yaml, relative ca file+tokenFile": _relative_files_yaml,
    "merged KUBECONFIG list": _merged_list,
    "insecure true": _insecure,
}


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest.mark.parametrize("case", sorted(GOOD))
def test_both_clients_accept(
    case: str, client: str, api: TlsApiServerDouble, pki: Path, tmp_path: Path
) -> None:
    assert CLIENTS[client](GOOD[case](pki, api.url, tmp_path)) == "n1"


@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest.mark.parametrize("form", ["data", "files"])
def test_both_clients_send_client_certificates(
    form: str, client: str, mtls: TlsApiServerDouble, pki: Path, tmp_path: Path
) -> None:
    if form == "data":
        user = {
            "client-certificate-data": b64(pki / "client.crt"),
            "client-key-data": b64(pki / "client.key"),
        }
    else:
        user = {
            "client-certificate": str(pki / "client.crt"),
            "client-key": str(pki / "client.key"),
        }
    cluster = {"server": mtls.url, "certificate-authority": str(pki / "ca.crt")}
    assert CLIENTS[client](_write(tmp_path / "k", _doc(cluster, user))) == "n1"


# name -> (cluster overrides, user, top-level overrides, text the error must contain)
BAD: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]] = {
    "missing server": ({"server": None}, {}, {}, "clusters[c].cluster.server: missing"),
    "bad base64 CA": (
        {"certificate-authority-data": "not base64!"},
        {},
        {},
        "clusters[c].cluster.certificate-authority-data: not valid base64",
    ),
    "CA data not a certificate": (
        {"certificate-authority-data": "aGVsbG8="},
        {},
        {},
        "clusters[c].cluster.certificate-authority-data: not a usable CA certificate",
    ),
    "unknown context": (
        {},
        {},
        {"current-context": "nope"},
        "current-context: no context named 'nope'",
    ),
    "exec user": (
        {},
        {"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}},
        {},
        "users[u].user.exec: exec credential plugins are not supported",
    ),
    "auth-provider user": (
        {},
        {"auth-provider": {"name": "gcp"}},
        {},
        "users[u].user.auth-provider: auth-provider credential plugins are not supported",
    ),
    'insecure "false" string': (
        {"insecure-skip-tls-verify": "false"},
        {},
        {},
        "insecure-skip-tls-verify: must be a boolean (true or false), not 'false'",
    ),
    "missing token file": (
        {},
        {"tokenFile": "/nonexistent/token"},
        {},
        "users[u].user.tokenFile: cannot read",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_both_clients_refuse_with_the_same_error(
    case: str, api: TlsApiServerDouble, pki: Path, tmp_path: Path
) -> None:
    cluster_changes, user, top, text = BAD[case]
    cluster = {
        "server": api.url,
        "certificate-authority-data": b64(pki / "ca.crt"),
        **cluster_changes,
    }
    cluster = {k: v for k, v in cluster.items() if v is not None}
    path = _write(tmp_path / "k", _doc(cluster, user or {"token": TOKEN}, **top))
    with pytest.raises(KubeconfigError) as daemon:
        kube.load_api_client(path)
    with pytest.raises(KubeconfigError) as plugin:
        kubelite.from_kubeconfig(path)
    assert str(daemon.value) == str(plugin.value)
    assert str(daemon.value).startswith(f"kubeconfig {path}: ")
    assert text in str(daemon.value)


def test_only_the_configured_ca_is_trusted(
    api: TlsApiServerDouble, pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The system trusts the server's CA (``SSL_CERT_FILE``), the kubeconfig names another
    one: both clients must refuse the server. Without a CA in the kubeconfig, the system's
    CAs are used, as kubectl does."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki / "ca.crt"))
    other = _write(
        tmp_path / "k",
        _doc(
            {"server": api.url, "certificate-authority": str(pki / "other-ca.crt")},
            {"token": TOKEN},
        ),
    )
    with pytest.raises(TemporaryError, match="cannot read node n1"):
        _daemon_get(other)
    with pytest.raises(kubelite.ApiError, match="CERTIFICATE_VERIFY_FAILED") as e:
        _plugin_get(other)
    assert e.value.status is None
    system = _write(tmp_path / "k2", _doc({"server": api.url}, {"token": TOKEN}))
    assert _daemon_get(system) == _plugin_get(system) == "n1"


def _write_token(sa_dir: Path, token: str) -> None:
    """As kubelet does: a new file renamed over the old name."""
    tmp = sa_dir / ".token.tmp"
    tmp.write_text(token)
    tmp.rename(sa_dir / "token")


def test_the_daemon_rereads_a_rotated_service_account_token(
    api: TlsApiServerDouble, pki: Path, tmp_path: Path
) -> None:
    sa_dir = tmp_path / "sa"
    sa_dir.mkdir()
    (sa_dir / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    _write_token(sa_dir, TOKEN)
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}
    client = kube.api_client_for(load_in_cluster(env, sa_dir=str(sa_dir)), timeout=5)
    source = KubeNodeSource(client, backoff_base=0.05, backoff_max=0.2)
    sink = RecordingSink()
    try:
        assert kube.get_node(client, "n1") is not None
        with running(source, sink):
            wait_until(lambda: sink.get("n1") is not None and api.active_watches == 1)
            api.token = "rotated-token"  # the old token is refused from now on
            _write_token(sa_dir, "rotated-token")
            assert kube.get_node(client, "n1") is not None
            api.cut_watches()
            api.add_node(make_node("n2", index=2, images=0))
            wait_until(lambda: sink.get("n2") is not None, what="the watch with the new token")
        assert source.errors == 0  # no request went out with the expired token
    finally:
        client.close()


def test_the_value_is_frozen_and_never_shows_secrets(tmp_path: Path) -> None:
    user = {
        "token": "tok-123",
        "client-certificate-data": b64_text("CERT"),
        "client-key-data": b64_text("KEY-456"),
        "password": "pw-789",
    }
    path = _write(tmp_path / "k", _doc({"server": "https://h"}, {**user, "username": "me"}))
    from xcluster_cni_lib.support.kubeconfig import load_kubeconfig

    access = load_kubeconfig(path)
    assert access.authorization() == "Bearer tok-123"
    for secret in ("tok-123", "KEY-456", "pw-789"):
        assert secret not in repr(access)
    with pytest.raises(AttributeError):
        access.server = "https://elsewhere"  # type: ignore[misc]
    nameless = _doc({"server": "https://h"}, {})
    nameless["users"] = [{"user": {"token": "tok-123"}}]
    with pytest.raises(KubeconfigError, match=r"users\[0\]: has no name") as e:
        load_kubeconfig(_write(tmp_path / "k2", nameless))
    assert "tok-123" not in str(e.value)


def b64_text(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def test_the_daemon_warns_when_verification_is_off(
    pki: Path, api: TlsApiServerDouble, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _insecure(pki, api.url, tmp_path)
    with caplog.at_level("WARNING", logger="xcluster_cni_lib.sources.kube"):
        kube.configuration_for(kube.load_access(path))
    [record] = [r for r in caplog.records if "TLS verification is off" in r.getMessage()]
    assert path in record.getMessage() and api.url in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="xcluster_cni_lib.sources.kube"):
        kube.configuration_for(kube.load_access(_ca_data(pki, api.url, tmp_path)))
    assert not [r for r in caplog.records if "TLS verification" in r.getMessage()]
