"""load_api_client, get_node and list_node_facts against the API-server double."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.apiserver import ApiServerDouble
from xcluster_cni_lib.core.errors import InputError, TemporaryError
from xcluster_cni_lib.core.values import Annotations
from xcluster_cni_lib.sources.kube import get_node, list_node_facts, load_api_client
from xcluster_cni_lib.testing.nodes import make_node


def test_load_from_explicit_path_and_env(
    api: ApiServerDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.add_node(make_node("a"))
    path = api.write_kubeconfig(tmp_path / "kc")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert get_node(load_api_client(path), "a") is not None  # explicit path wins
    monkeypatch.setenv("KUBECONFIG", path)
    assert get_node(load_api_client(timeout=5), "a") is not None


def test_no_config_is_a_clear_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(InputError, match=r"in-cluster config.*kubeconfig"):
        load_api_client()
    broken = tmp_path / "broken"
    broken.write_text("clusters: [")
    with pytest.raises(InputError, match="broken"):
        load_api_client(str(broken))


def test_get_node(api: ApiServerDouble, api_client: Any) -> None:
    api.add_node(make_node("a", index=3))
    node = get_node(api_client, "a")
    assert node is not None and node["spec"]["podCIDRs"] == ["10.244.3.0/24", "fd00:10:244:3::/64"]
    assert get_node(api_client, "missing") is None
    api.fail_requests(1, status=503)
    with pytest.raises(TemporaryError, match="503"):
        get_node(api_client, "a")
    api.fail_requests(1, status=403)
    with pytest.raises(InputError, match="403"):
        get_node(api_client, "a")
    api.stop()
    with pytest.raises(TemporaryError, match="cannot read node a"):
        get_node(api_client, "a")


def test_list_node_facts(api: ApiServerDouble, api_client: Any) -> None:
    api.set_nodes(
        make_node(f"n{i}", index=i, annotations={"x/addr": f"10.0.0.{i}"}) for i in range(7)
    )
    facts = list_node_facts(api_client, annotations=Annotations(address="x/addr"), page_size=3)
    assert [f.name for f in facts] == [f"n{i}" for i in range(7)]
    assert facts[2].address_annotation == "10.0.0.2"
    assert facts[2].internal_ips == ("192.168.0.3", "fd00::c0a8:3")
    assert api.list_requests == 3
    api.fail_requests(1)
    with pytest.raises(TemporaryError, match="500"):
        list_node_facts(api_client)


def test_token_is_sent(api: ApiServerDouble, tmp_path: Path) -> None:
    api.add_node(make_node("a"))
    api.token = "other"
    client = load_api_client(api.write_kubeconfig(tmp_path / "kc"))
    assert get_node(client, "a") is not None
    api.token = "changed"
    with pytest.raises(InputError, match="401"):
        get_node(client, "a")


def test_list_scanner_matches_json_loads() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from xcluster_cni_lib.sources.kube import _scan_list

    scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=8,
    )

    @settings(max_examples=100, deadline=None)
    @given(
        items=st.lists(st.dictionaries(st.text(max_size=4), values, max_size=3), max_size=4),
        other=st.dictionaries(st.text(max_size=6).filter(lambda k: k != "items"), values),
        items_first=st.booleans(),
        indent=st.sampled_from([None, 1]),
    )
    def check(items: Any, other: Any, items_first: bool, indent: int | None) -> None:
        doc = {"items": items, **other} if items_first else {**other, "items": items}
        top: dict[str, Any] = {}
        assert list(_scan_list(json.dumps(doc, indent=indent).encode(), top)) == items
        assert top == other

    check()
    for bad in (b"", b"[]", b'{"items":[{}', b'{"items":[1 2]}', b'{"a":1'):
        with pytest.raises(ValueError):
            list(_scan_list(bad, {}))
