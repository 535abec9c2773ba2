"""Ping from every pod to every other pod, both families, every network: a matrix."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import attrs

from xcluster_cni_lib.core.values import IPAddress
from xcluster_cni_lib.lab.pods import Pod
from xcluster_cni_lib.lab.shell import run


@attrs.frozen
class PingResult:
    """One expected path: ``src`` pod to ``dst`` pod's address on ``network``."""

    src: str
    dst: str
    network: str
    family: int
    address: str
    ok: bool


@attrs.frozen
class Matrix:
    """Every expected path's result. A path is expected when both pods have an address
    of the family on the network."""

    results: tuple[PingResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> tuple[PingResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    def get(self, src: str, dst: str, network: str, family: int) -> PingResult | None:
        return next(
            (
                r
                for r in self.results
                if (r.src, r.dst, r.network, r.family) == (src, dst, network, family)
            ),
            None,
        )


def ping(
    netns: str,
    address: IPAddress | str,
    *,
    deadline: float = 3.0,
    size: int | None = None,
    dont_fragment: bool = False,
) -> bool:
    """True when an echo reply arrives within ``deadline`` seconds. A request that gets
    no answer is repeated until then (a first packet lost to neighbour resolution does
    not count); a local error (e.g. a packet larger than the MTU with don't-fragment)
    fails at once."""
    argv = ["ping", "-n", "-q", "-c", "1"]
    if size is not None:
        argv += ["-s", str(size)]
    if dont_fragment:
        argv += ["-M", "do"]
    end = time.monotonic() + deadline
    while True:
        wait = min(1.0, max(0.1, end - time.monotonic()))
        proc = run(netns, [*argv, "-W", f"{wait:.2f}", str(address)], check=False, timeout=10)
        if proc.returncode != 1 or time.monotonic() >= end:
            return proc.returncode == 0


def expected_paths(
    pods: Sequence[Pod], networks: Iterable[str], families: Iterable[int] = (4, 6)
) -> list[tuple[Pod, Pod, str, int, IPAddress]]:
    paths = []
    for network in networks:
        for family in families:
            for src in pods:
                for dst in pods:
                    address = dst.address(network, family)
                    if src is dst or address is None or src.address(network, family) is None:
                        continue
                    paths.append((src, dst, network, family, address))
    return paths


def check_connectivity(
    pods: Sequence[Pod],
    networks: Iterable[str],
    *,
    families: Iterable[int] = (4, 6),
    workers: int = 8,
    deadline: float = 3.0,
) -> Matrix:
    """Ping every expected path, at most ``workers`` at a time."""
    paths = expected_paths(pods, networks, families)

    def probe(path: tuple[Pod, Pod, str, int, IPAddress]) -> PingResult:
        src, dst, network, family, address = path
        ok = ping(src.netns, address, deadline=deadline)
        return PingResult(src.name, dst.name, network, family, str(address), ok)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return Matrix(tuple(pool.map(probe, paths)))
