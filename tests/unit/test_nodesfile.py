"""Loading nodes files, and FileNodeSource noticing every kind of change."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.core.nodes import parse_nodes
from xcluster_cni_lib.core.planning import desired_routes_from_facts
from xcluster_cni_lib.core.values import Annotations, NodeFacts
from xcluster_cni_lib.sources.nodesfile import FileNodeSource, load_node_facts, load_node_list
from xcluster_cni_lib.sync.nodecache import NodeCache

DATA = Path(__file__).parent.parent / "data"


def node(name: str, cidrs: Iterable[str] = ("10.0.1.0/24",), ip: str = "192.168.1.1") -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDRs": list(cidrs)},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


def write(path: Path, doc: object) -> None:
    path.write_text(json.dumps(doc))


# -- load_node_list ----------------------------------------------------------------------


def test_loads_a_nodelist(tmp_path: Path) -> None:
    f = tmp_path / "nodes.json"
    write(f, {"apiVersion": "v1", "kind": "NodeList", "items": [node("a"), node("b")]})
    assert [n["metadata"]["name"] for n in load_node_list(f)] == ["a", "b"]


def test_loads_kubectl_list_kind(tmp_path: Path) -> None:
    # `kubectl get nodes -o json` prints kind "List"
    f = tmp_path / "nodes.json"
    write(f, {"apiVersion": "v1", "kind": "List", "items": [node("a")], "metadata": {}})
    assert [n["metadata"]["name"] for n in load_node_list(str(f))] == ["a"]


def test_loads_a_plain_list_and_a_single_node(tmp_path: Path) -> None:
    f = tmp_path / "nodes.json"
    write(f, [node("a"), node("b")])
    assert len(load_node_list(f)) == 2
    write(f, node("solo"))
    assert [n["metadata"]["name"] for n in load_node_list(f)] == ["solo"]


def test_loads_yaml(tmp_path: Path) -> None:
    f = tmp_path / "nodes.yaml"
    f.write_text(
        "apiVersion: v1\nkind: NodeList\nitems:\n"
        "- metadata: {name: a}\n  spec: {podCIDRs: [10.0.1.0/24, 'fd00::/64']}\n"
        "  status:\n    addresses:\n    - {type: InternalIP, address: 192.168.1.1}\n"
    )
    facts = load_node_facts(f)
    assert facts == [
        NodeFacts(name="a", pod_cidrs=("10.0.1.0/24", "fd00::/64"), internal_ips=("192.168.1.1",))
    ]


def test_empty_items_is_an_empty_list(tmp_path: Path) -> None:
    f = tmp_path / "nodes.yaml"
    f.write_text("kind: List\nitems:\n")
    assert load_node_list(f) == []


def test_loads_the_recorded_real_node() -> None:
    (real,) = load_node_list(DATA / "node-real.json")
    facts = load_node_facts(DATA / "node-real.json")[0]
    assert facts.name == real["metadata"]["name"]
    assert facts.pod_cidrs and facts.internal_ips and facts.machine_id


def test_loads_the_shipped_example() -> None:
    nodes = load_node_list(Path(__file__).parent.parent.parent / "examples" / "nodes.json")
    assert len(nodes) == 4


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ('{"kind": "NodeList", "items": [', "invalid JSON"),
        ("key: [unclosed", "neither JSON nor YAML"),
        ("42", "got a int"),
        ('"text"', "got a str"),
        ('{"kind": "NodeList", "items": {"a": 1}}', "'items' is a dict, not a list"),
        ('{"kind": "Pod", "metadata": {"name": "p"}}', "kind 'Pod'"),
        ('{"foo": 1}', "without 'items' or 'metadata'"),
        ('[{"metadata": {"name": "a"}}, 7]', "item 1 is a int, not a Node object"),
        ('{"items": [{"kind": "Pod", "metadata": {}}]}', "item 0 is a Pod, not a Node"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(
    tmp_path: Path, content: str, expected: str
) -> None:
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(InputError) as info:
        load_node_list(f)
    assert str(f) in str(info.value)
    assert expected in str(info.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.json: cannot read: No such file"):
        load_node_list(tmp_path / "missing.json")
    f = tmp_path / "binary.json"
    f.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="not UTF-8"):
        load_node_list(f)


# -- FileNodeSource ----------------------------------------------------------------------


class RecordingSink:
    """Records every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def replace_all(self, nodes: Iterable[NodeFacts]) -> None:
        with self.lock:
            self.calls.append(("replace_all", [n.name for n in nodes]))

    def upsert(self, node: NodeFacts) -> None:
        with self.lock:
            self.calls.append(("upsert", node.name))

    def delete(self, name: str) -> None:
        with self.lock:
            self.calls.append(("delete", name))

    def set_healthy(self, healthy: bool) -> None:
        with self.lock:
            self.calls.append(("set_healthy", healthy))

    def snapshot(self) -> list[tuple[str, Any]]:
        with self.lock:
            return list(self.calls)

    def replaced(self) -> list[list[str]]:
        return [c[1] for c in self.snapshot() if c[0] == "replace_all"]

    def health(self) -> list[bool]:
        return [c[1] for c in self.snapshot() if c[0] == "set_healthy"]


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.01)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Path, RecordingSink, FileNodeSource]]:
    f = tmp_path / "nodes.json"
    write(f, [node("a")])
    sink = RecordingSink()
    source = FileNodeSource(f, poll_interval=0.02)
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(sink, stop), daemon=True)
    thread.start()
    try:
        yield f, sink, source
    finally:
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive()


def test_reads_on_start(running: tuple[Path, RecordingSink, FileNodeSource]) -> None:
    _, sink, _ = running
    wait_for(lambda: sink.replaced() == [["a"]])
    wait_for(lambda: sink.health() == [True])


def test_in_place_rewrite_is_seen(running: tuple[Path, RecordingSink, FileNodeSource]) -> None:
    f, sink, _ = running
    wait_for(lambda: sink.replaced() == [["a"]])
    write(f, [node("a"), node("b")])
    wait_for(lambda: sink.replaced()[-1] == ["a", "b"])


def test_same_size_rewrite_is_seen(running: tuple[Path, RecordingSink, FileNodeSource]) -> None:
    # Same length, written at once: only the mtime (or the re-read of a fresh file) tells.
    f, sink, _ = running
    wait_for(lambda: sink.replaced() == [["a"]])
    before = f.stat().st_size
    write(f, [node("z")])
    assert f.stat().st_size == before
    wait_for(lambda: sink.replaced()[-1] == ["z"])


def test_same_size_same_mtime_atomic_replace_is_seen(
    running: tuple[Path, RecordingSink, FileNodeSource],
) -> None:
    # An atomic rename keeping size and mtime: only the inode changes.
    f, sink, _ = running
    wait_for(lambda: sink.replaced() == [["a"]])
    st = f.stat()
    tmp = f.with_name("nodes.json.tmp")
    write(tmp, [node("q")])
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(tmp, f)
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    wait_for(lambda: sink.replaced()[-1] == ["q"])


def test_broken_file_keeps_view_and_reports_unhealthy(
    running: tuple[Path, RecordingSink, FileNodeSource], caplog: pytest.LogCaptureFixture
) -> None:
    f, sink, _ = running
    wait_for(lambda: sink.health() == [True])
    with caplog.at_level(logging.WARNING, logger="xcluster_cni_lib.sources.nodesfile"):
        f.write_text("{not json")
        wait_for(lambda: sink.health() == [True, False])
    assert sink.replaced() == [["a"]]  # the previous view stays
    messages = [r.getMessage() for r in caplog.records]
    assert any(str(f) in m and "invalid JSON" in m for m in messages)
    write(f, [node("b")])
    wait_for(lambda: sink.health() == [True, False, True])
    assert sink.replaced() == [["a"], ["b"]]


def test_deleted_file_reports_unhealthy_then_recovers(
    running: tuple[Path, RecordingSink, FileNodeSource],
) -> None:
    f, sink, _ = running
    wait_for(lambda: sink.health() == [True])
    f.unlink()
    wait_for(lambda: sink.health() == [True, False])
    write(f, [node("c")])
    wait_for(lambda: sink.replaced() == [["a"], ["c"]])
    wait_for(lambda: sink.health() == [True, False, True])


def test_unchanged_facts_are_not_sent_again(
    running: tuple[Path, RecordingSink, FileNodeSource],
) -> None:
    # A rewrite that changes nothing routing cares about (a heartbeat) costs nothing downstream.
    f, sink, _ = running
    wait_for(lambda: sink.replaced() == [["a"]])
    n = node("a")
    n["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    write(f, [n])
    write(f, [node("marker")])  # then a real change, so we know the first one was read
    wait_for(lambda: sink.replaced()[-1] == ["marker"])
    assert sink.replaced() == [["a"], ["marker"]]


def test_missing_file_on_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "later.json"
    sink = RecordingSink()
    stop = threading.Event()
    source = FileNodeSource(f, poll_interval=0.02)
    with caplog.at_level(logging.WARNING, logger="xcluster_cni_lib.sources.nodesfile"):
        thread = threading.Thread(target=source.run, args=(sink, stop), daemon=True)
        thread.start()
        try:
            wait_for(lambda: sink.health() == [False])
            assert sink.replaced() == []  # never claims a synced view it does not have
            write(f, [node("a")])
            wait_for(lambda: sink.replaced() == [["a"]])
            wait_for(lambda: sink.health() == [False, True])
        finally:
            stop.set()
            thread.join(timeout=5)
    assert any("later.json" in r.getMessage() for r in caplog.records)


def test_annotations_are_passed_to_extract(tmp_path: Path) -> None:
    f = tmp_path / "nodes.json"
    n = node("a")
    n["metadata"]["annotations"] = {"x/cidr": "10.9.0.0/24", "x/addr": "10.8.0.1"}
    write(f, [n])
    got: list[list[NodeFacts]] = []

    class Sink(RecordingSink):
        def replace_all(self, nodes: Iterable[NodeFacts]) -> None:
            got.append(list(nodes))

    stop = threading.Event()
    source = FileNodeSource(f, annotations=Annotations(cidr="x/cidr", address="x/addr"))
    thread = threading.Thread(target=source.run, args=(Sink(), stop), daemon=True)
    thread.start()
    try:
        wait_for(lambda: bool(got))
    finally:
        stop.set()
        thread.join(timeout=5)
    assert got[0][0].cidr_annotation == "10.9.0.0/24"
    assert got[0][0].address_annotation == "10.8.0.1"
    assert got[0][0].annotations == Annotations(cidr="x/cidr", address="x/addr")


def test_stops_promptly_with_a_long_poll_interval(tmp_path: Path) -> None:
    f = tmp_path / "nodes.json"
    write(f, [node("a")])
    sink = RecordingSink()
    stop = threading.Event()
    source = FileNodeSource(f, poll_interval=60)
    thread = threading.Thread(target=source.run, args=(sink, stop), daemon=True)
    thread.start()
    wait_for(lambda: sink.replaced() == [["a"]])
    t0 = time.monotonic()
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - t0 < 1.0


# -- the annotation configuration is given once, where nodes are read --------------------

ADDR = "example.com/overlay-address"


def overlay_nodes(tmp_path: Path) -> Path:
    """Four nodes whose routes go via the addresses in annotation ``ADDR``."""
    nodes = []
    for i in range(1, 5):
        n = node(f"n{i}", cidrs=[f"10.244.{i}.0/24"], ip=f"192.168.1.{i}")
        n["metadata"]["annotations"] = {ADDR: f"172.16.0.{i}"}
        nodes.append(n)
    f = tmp_path / "nodes.json"
    write(f, nodes)
    return f


def test_the_planner_uses_the_annotations_the_facts_were_read_with(tmp_path: Path) -> None:
    f = overlay_nodes(tmp_path)
    facts = load_node_facts(f, annotations=Annotations(address=ADDR))
    routes, problems = desired_routes_from_facts(facts, own="n1")
    assert [(str(r.dst), str(r.gateway)) for r in routes] == [
        (f"10.244.{i}.0/24", f"172.16.0.{i}") for i in (2, 3, 4)
    ]
    assert problems == []
    # the cache too: it parses each node with the configuration its facts carry
    cache = NodeCache()
    cache.replace_all(facts)
    assert [str(n.addresses[0]) for n in cache.snapshot().networks] == [
        f"172.16.0.{i}" for i in (1, 2, 3, 4)
    ]
    assert cache.snapshot().skipped == ()


def test_the_planner_cannot_be_given_other_annotations_than_the_source(tmp_path: Path) -> None:
    """The trap: names given to the planner but not to the source made every node look
    like it lacked the annotation (no routes, four false problems)."""
    f = overlay_nodes(tmp_path)
    with pytest.raises(TypeError):
        desired_routes_from_facts(  # type: ignore[call-arg]
            load_node_facts(f), own="n1", address_annotation=ADDR
        )
    with pytest.raises(InputError, match="n1"):
        parse_nodes(load_node_facts(f), annotations=Annotations(address=ADDR))
    # read without the annotation, the nodes are routed via their InternalIPs: no problem
    routes, problems = desired_routes_from_facts(load_node_facts(f), own="n1")
    assert [str(r.gateway) for r in routes] == ["192.168.1.2", "192.168.1.3", "192.168.1.4"]
    assert problems == []


@pytest.mark.parametrize("key", ["bad key!!", "-x", "Example.com/a", "a/b/c", "x" * 64, ""])
@pytest.mark.parametrize("which", ["cidr", "address"])
def test_annotation_keys_are_checked_once_where_they_are_given(key: str, which: str) -> None:
    with pytest.raises(InputError, match=f"{which} annotation {key!r}"):
        Annotations(**{which: key})


@pytest.mark.parametrize("key", ["a", "example.com/cidrs", "node-ip.nordix.org/net3", "x" * 63])
def test_valid_annotation_keys(key: str) -> None:
    assert Annotations(cidr=key, address=key).keys() == (key, key)
