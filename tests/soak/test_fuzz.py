"""Bad input never crashes: Node objects and annotations through the core parser, and CNI
stdin/env through the IPAM plugin (in-process, delegating to the real host-local).

- ``extract_facts`` accepts any JSON-shaped object; ``parse_node`` raises nothing but
  ``InvalidNode`` (an ``InputError``) naming the node; the planner takes whatever parsed.
- The plugin answers every call: exit 0 with its result, or non-zero with exactly one
  CNI error object on stdout carrying an integer code that is not "internal error" (105
  means an unexpected exception, i.e. a crash turned into an error).
"""

from __future__ import annotations

import io
import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xcluster_cni_lib.core.errors import InputError, InvalidNode
from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.core.nodes import parse_addresses, parse_node, parse_subnets
from xcluster_cni_lib.core.planning import desired_routes, plan_routes
from xcluster_cni_lib.core.values import Annotations, NodeFacts, NodeNetwork
from xcluster_cni_lib.plugin.protocol import INTERNAL_ERROR
from xcluster_cni_lib.plugin.verbs import run
from xcluster_cni_lib.testing.nodes import make_node

CIDR_KEY = "example.com/cidrs"
ADDR_KEY = "example.com/addresses"


def fast(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


# -- values that look like what people and kubelets write ---------------------------------

_SAMPLES = [
    "10.244.1.0/24",
    "10.244.1.7/24",
    "fd00:10:244:1::/64",
    "::ffff:10.1.0.0/120",
    "0.0.0.0/0",
    "::/0",
    "192.168.0.1",
    "fd00::1",
    "::ffff:192.168.0.1",
    "127.0.0.1",
    "224.0.0.1",
    "ff02::1",
    "::",
    "0.0.0.0",
    "fe80::1%eth0",
    "fe80::%eth0/64",
    "10.0.0.0/33",
    "10.0.0.0/-1",
    "10.0.0.0/",
    "/24",
    "10.0.0.0/\uff12\uff14",  # fullwidth digits
    "1.2.3.4/\u0662\u0664",  # Arabic-Indic digits
    "10.0.0.0/99999999999999999999",
    "1.2.3",
    "1.2.3.4.5",
    "01.2.3.4",
    "::1::2",
    "10.244.1.0/24,fd00:10:244:1::/64",
    "10.1.0.0/16,10.2.0.0/16",
    " 10.1.0.0/16 , ",
    ",",
    "",
    " ",
    "\x00",
    "a,b,c",
    "10.1.0.0/16,fd00::/64,10.2.0.0/16",
]
_address_like = st.one_of(
    st.sampled_from(_SAMPLES),
    st.ip_addresses().map(str),
    st.builds(lambda a, p: f"{a}/{p}", st.ip_addresses(), st.integers(-2, 140)),
    st.text(alphabet=string.hexdigits + ".:/,% -", max_size=40),
    st.text(max_size=20),
)
_annotation_value = st.one_of(
    _address_like,
    st.lists(_address_like, max_size=4).map(",".join),
)
_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=10)
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, _json)


@st.composite
def node_objects(draw: st.DrawFn) -> Any:
    """Node-shaped dicts with every field possibly missing, mistyped or malformed."""
    if draw(st.integers(0, 20)) == 0:
        return draw(_json)  # not even a dict, now and then
    name = draw(_maybe(st.one_of(st.just("node-1"), st.text(max_size=12))))
    annotations = draw(
        _maybe(
            st.dictionaries(
                st.sampled_from([CIDR_KEY, ADDR_KEY, "other"]),
                _maybe(_annotation_value),
                max_size=3,
            )
        )
    )
    addresses = draw(
        _maybe(
            st.lists(
                _maybe(
                    st.fixed_dictionaries(
                        {
                            "type": _maybe(st.sampled_from(["InternalIP", "ExternalIP"])),
                            "address": _maybe(_address_like),
                        }
                    )
                ),
                max_size=4,
            )
        )
    )
    node: dict[str, Any] = {
        "metadata": draw(
            _maybe(
                st.fixed_dictionaries({"name": st.just(name), "annotations": st.just(annotations)})
            )
        ),
        "spec": draw(
            _maybe(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "podCIDRs": _maybe(st.lists(_maybe(_address_like), max_size=4)),
                        "podCIDR": _maybe(_address_like),
                    },
                )
            )
        ),
        "status": draw(
            _maybe(
                st.fixed_dictionaries(
                    {"addresses": st.just(addresses)},
                    optional={
                        "nodeInfo": _maybe(st.fixed_dictionaries({"machineID": _maybe(st.text())}))
                    },
                )
            )
        ),
    }
    return node


ANNOTATION_CHOICES = st.sampled_from(
    [(None, None), (CIDR_KEY, None), (None, ADDR_KEY), (CIDR_KEY, ADDR_KEY)]
)


@fast(2500)
@given(node=node_objects(), keys=ANNOTATION_CHOICES)
def test_node_parsing_never_crashes(node: Any, keys: tuple[str | None, str | None]) -> None:
    cidr_key, addr_key = keys
    if not isinstance(node, dict):
        # extract_facts is for mappings; a non-dict item of a node list is skipped earlier.
        return
    annotations = Annotations(cidr=cidr_key, address=addr_key)
    facts = extract_facts(node, annotations=annotations)
    assert isinstance(facts, NodeFacts)
    try:
        network = parse_node(node, annotations=annotations)
    except InvalidNode as e:
        assert e.node and str(e).startswith(f"node {e.node}: ")
        return
    assert isinstance(network, NodeNetwork)
    for family in (4, 6):
        assert sum(c.version == family for c in network.cidrs) <= 1
        assert sum(a.version == family for a in network.addresses) <= 1
    routes, _ = desired_routes([network, NodeNetwork(name="own")], own="own")
    assert not plan_routes(routes, routes)  # a second plan is empty


@fast(1500)
@given(value=_annotation_value)
def test_annotation_values_are_clean_errors_or_one_per_family(value: str) -> None:
    for parse in (parse_subnets, parse_addresses):
        try:
            parsed = parse(value, node="n1", key=CIDR_KEY)
        except InvalidNode as e:
            assert isinstance(e, InputError)
            assert e.node == "n1" and e.key == CIDR_KEY and e.value is not None
            continue
        assert 1 <= len(parsed) <= 2
        assert len({p.version for p in parsed}) == len(parsed)


# -- the IPAM plugin in-process ------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("fuzz-ipam")
    nodes = [
        make_node("n1", index=1, images=1),
        make_node("n2", index=2, images=1, pod_cidrs=("10.9.0.0/30",)),
    ]
    (path / "nodes.json").write_text(json.dumps({"kind": "NodeList", "items": nodes}))
    yield path


_versions = st.sampled_from(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "2.0.0", "", "1.0"])
_commands = st.one_of(
    st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]),
    st.sampled_from(["", "add", "BOGUS"]),
)
_cni_args = st.one_of(
    st.just("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"),
    st.lists(st.text(alphabet=string.ascii_letters + "=;_-", max_size=12), max_size=4).map(
        ";".join
    ),
)


@st.composite
def cni_calls(draw: st.DrawFn, base: Path) -> tuple[dict[str, str], bytes]:
    env: dict[str, str] = {"CNI_COMMAND": draw(_commands)}
    for key, value in (
        (
            "CNI_CONTAINERID",
            st.one_of(
                st.sampled_from(["c1", "c2"]),
                st.text(string.ascii_letters + string.digits + "-_./", max_size=20),
            ),
        ),
        ("CNI_NETNS", st.sampled_from(["/var/run/netns/p", ""])),
        ("CNI_IFNAME", st.sampled_from(["eth0", "net1", "", "a" * 20, "../x"])),
        ("CNI_PATH", st.sampled_from(["/usr/lib/cni", "", "/nonexistent", "/usr/lib/cni:/tmp"])),
        ("CNI_ARGS", _cni_args),
    ):
        if draw(st.integers(0, 9)):
            env[key] = draw(value)
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return env, draw(st.binary(max_size=60))
    if kind == 1:
        return env, json.dumps(draw(_json)).encode()
    ipam: dict[str, Any] = {
        "type": draw(st.sampled_from(["kube-node", "x"])),
        "dataDir": str(base / "data"),
        "nodeName": "n1",
        "nodesFile": str(base / "nodes.json"),
    }
    for key, value in (
        ("nodeName", _maybe(st.sampled_from(["n1", "n2", "missing"]))),
        ("nodesFile", _maybe(st.sampled_from([str(base / "nodes.json"), str(base / "nope")]))),
        ("dataDir", _maybe(st.sampled_from([str(base / "data"), ""]))),
        ("timeout", _maybe(st.floats(-1, 5))),
        ("ipv4-namespaces", _maybe(st.lists(st.sampled_from(["default", ""]), max_size=2))),
        ("annotation", _maybe(st.text(max_size=8))),
        ("rangeStart", _maybe(_address_like)),
        ("routes", _maybe(st.lists(st.fixed_dictionaries({"dst": _address_like}), max_size=2))),
        ("loglevel", _maybe(st.sampled_from(["debug", "nonsense"]))),
    ):
        if draw(st.integers(0, 4)) == 0:
            ipam[key] = draw(value)
    conf: dict[str, Any] = {
        "cniVersion": draw(_maybe(_versions)),
        "name": draw(_maybe(st.sampled_from(["net", "", "../x", "a/b"]))),
        "type": "bridge",
        "ipam": ipam if draw(st.integers(0, 9)) else draw(_json),
    }
    if env["CNI_COMMAND"] == "GC" and draw(st.booleans()):
        conf["cni.dev/valid-attachments"] = draw(
            _maybe(
                st.lists(
                    st.fixed_dictionaries(
                        {"containerID": st.sampled_from(["c1", "c2"]), "ifname": st.just("eth0")}
                    ),
                    max_size=2,
                )
            )
        )
    return env, json.dumps(conf).encode()


def test_ipam_plugin_answers_every_input_cleanly(plugin_dir: Path) -> None:
    @fast(1200)
    @given(call=cni_calls(plugin_dir))
    def check(call: tuple[dict[str, str], bytes]) -> None:
        env, stdin = call
        out = io.BytesIO()
        rc = run("kube-node", env=env, stdin=stdin, stdout=out)
        text = out.getvalue()
        if rc == 0:
            if text.strip():
                json.loads(text)  # one JSON document (a result or VERSION), nothing else
            return
        doc = json.loads(text)  # exactly one JSON value: raises on anything extra
        assert isinstance(doc, dict), text
        assert isinstance(doc.get("code"), int) and isinstance(doc.get("msg"), str), doc
        assert doc["code"] != INTERNAL_ERROR, f"unexpected exception for {env} {stdin!r}: {doc}"

    check()
