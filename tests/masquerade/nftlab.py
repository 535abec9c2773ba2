"""Helpers of the masquerade kernel tests: a node cache filled with ``make_node``-style
nodes, the table read back with ``nft``, a raw ``nft monitor`` capture, threads run with a
stop event."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from xcluster_cni_lib.core import masquerade as m
from xcluster_cni_lib.core.values import NodeFacts
from xcluster_cni_lib.kernel.nftables import Nft
from xcluster_cni_lib.sync.nodecache import NodeCache
from xcluster_cni_lib.testing.netns import run_in
from xcluster_cni_lib.testing.nodes import default_internal_ips, default_pod_cidrs

PROTO = 202
TABLE = m.table_name(PROTO)


def facts(i: int) -> NodeFacts:
    return NodeFacts(
        name=f"n{i}", pod_cidrs=default_pod_cidrs(i), internal_ips=default_internal_ips(i)
    )


def filled_cache(indexes: Iterable[int], *, healthy: bool = True) -> NodeCache:
    cache = NodeCache()
    cache.replace_all(facts(i) for i in indexes)
    cache.set_healthy(healthy)
    return cache


def read_state(ns: str, table: str = TABLE) -> m.TableState | None:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", table],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return None
    return m.parse_table(json.loads(out.stdout)["nftables"], table)


def ruleset_without(ns: str, table: str = TABLE) -> list[Any]:
    """Every object of the namespace's ruleset that is not of ``table`` (handles too)."""
    objects = json.loads(run_in(ns, ["nft", "-j", "list", "ruleset"]))["nftables"]
    out = []
    for o in objects:
        kind, spec = next(iter(o.items()))
        if kind == "metainfo":
            continue
        name = spec.get("name") if kind == "table" else spec.get("table")
        if not (spec.get("family") == "inet" and name == table):
            out.append(o)
    return out


def foreign_tables(ns: str) -> None:
    """Tables of other programs, some alike ours: they must never change."""
    script = """
table ip nat {
    chain postrouting { type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.0.0.0/8 counter; }
}
table inet filter {
    set allowed { type ipv4_addr; flags interval; elements = { 10.244.0.0/16 }; }
    chain forward { type filter hook forward priority 0; policy accept;
        ip daddr @allowed counter accept; }
}
table inet xcluster-cni-203 {
    set cluster4 { type ipv4_addr; flags interval; elements = { 10.99.0.0/16 }; }
}
"""
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True, check=True
    )


def wait_for(cond: Callable[[], bool], timeout: float = 5.0, *, what: str = "") -> float:
    """Poll ``cond`` until true; the seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}")
        time.sleep(0.005)
    return time.monotonic() - start


class Capture:
    """``nft -j monitor`` in a namespace, every event kept (parsed)."""

    def __init__(self, ns: str) -> None:
        self.nft = Nft(netns=ns)
        self.proc = self.nft.popen_monitor()
        self.events: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        # listening once it reports a change of a probe table
        probe = "xcprobe"

        def seen() -> bool:
            run_in(ns, ["nft", "add", "table", "inet", probe])
            run_in(ns, ["nft", "delete", "table", "inet", probe])
            return any(self._family(e) == m.FAMILY and self._table(e) == probe for e in self.events)

        wait_for(seen, what="nft monitor to listen")

    @staticmethod
    def _family(event: dict[str, Any]) -> str | None:
        spec = next(iter(next(iter(event.values())).values()))
        return spec.get("family")  # type: ignore[no-any-return]

    @staticmethod
    def _table(event: dict[str, Any]) -> str | None:
        kind, spec = next(iter(next(iter(event.values())).items()))
        return spec.get("name") if kind == "table" else spec.get("table")  # type: ignore[no-any-return]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.events.append(json.loads(line))

    def of(self, table: str) -> list[tuple[str, str]]:
        """(verb, kind) of the events about ``table`` so far."""
        out = []
        for e in list(self.events):
            if self._table(e) == table:
                verb, body = next(iter(e.items()))
                out.append((verb, next(iter(body))))
        return out

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._thread.join(timeout=2)
        self.nft.close()


@contextmanager
def running(*targets: Callable[[threading.Event], None]) -> Iterator[threading.Event]:
    """Run each ``target(stop)`` in a thread; stop and join them on exit."""
    stop = threading.Event()
    threads = [threading.Thread(target=t, args=(stop,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    try:
        yield stop
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
        assert not any(t.is_alive() for t in threads), "a thread did not stop"
