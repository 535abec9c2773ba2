"""The reachability matrix: every probe a case implies, what the oracle
(``core.policy.allowed_ips``) says of each, what the lab measured, and a readable
difference.

A matrix covers every ordered pair of endpoints with at least one pod among them
(pod to pod, pod to node or outside address, and back), in every family both ends have,
on every probed protocol and port: the allowed probes *and* the denied ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from tests.policy.probe import Endpoint, Probe, Prober
from xcluster_cni_lib.core.policy import allowed_ips
from xcluster_cni_lib.core.policyfacts import PolicyView

Matrix = Mapping[Probe, bool]


def all_probes(
    endpoints: Iterable[Endpoint],
    ports: Iterable[tuple[str, int]],
    *,
    involves: Callable[[Endpoint], bool],
    families: Iterable[int] = (4, 6),
) -> list[Probe]:
    """Every probe between two different endpoints of which at least one ``involves``
    (is a pod), in each family both have, on each ``(protocol, port)``."""
    chosen = list(endpoints)
    out = []
    for src in chosen:
        for dst in chosen:
            if src.name == dst.name or not (involves(src) or involves(dst)):
                continue
            for family in families:
                if src.address(family) is None or dst.address(family) is None:
                    continue
                out += [Probe(src.name, dst.name, family, p, n) for p, n in ports]
    return sorted(out)


def expected(
    view: PolicyView, endpoints: Mapping[str, Endpoint], probes: Iterable[Probe]
) -> Matrix:
    """What the oracle allows, probe by probe (at the endpoints' addresses)."""
    by_ip = view.pod_by_ip()
    out = {}
    for p in probes:
        src = endpoints[p.src].address(p.family)
        dst = endpoints[p.dst].address(p.family)
        assert src is not None and dst is not None, p
        out[p] = allowed_ips(view, src, dst, p.protocol, p.port, by_ip=by_ip)
    return out


def measure(
    prober: Prober, want: Matrix, *, timeout: float = 0.4, retry_timeout: float = 2.0
) -> Matrix:
    """Probe every key of ``want`` at once. Probes expected to pass that did not get one
    more chance with a longer timeout (a slow first packet is not a denial); a probe that
    passed is never retried: a leak is a leak."""
    measured = dict(prober.probe(want, timeout=timeout))
    slow = [p for p, ok in measured.items() if want[p] and not ok]
    if slow:
        measured.update(prober.probe(slow, timeout=retry_timeout))
    return measured


@attrs.frozen
class Comparison:
    """Expected against measured, with the report a failing assertion shows."""

    name: str
    want: Matrix
    got: Matrix
    enforced_after: float = 0.0  # seconds from the API change to the tables as wanted

    @property
    def missing(self) -> list[Probe]:
        """Expected allowed, measured denied."""
        return sorted(p for p, ok in self.want.items() if ok and not self.got.get(p, False))

    @property
    def leaks(self) -> list[Probe]:
        """Expected denied, measured allowed."""
        return sorted(p for p, ok in self.want.items() if not ok and self.got.get(p, False))

    @property
    def ok(self) -> bool:
        return set(self.want) == set(self.got) and not self.missing and not self.leaks

    def counts(self) -> tuple[int, int]:
        """(allowed, denied) probes the matrix expects."""
        allowed = sum(1 for ok in self.want.values() if ok)
        return allowed, len(self.want) - allowed

    def report(self) -> str:
        allowed, denied = self.counts()
        lines = [
            f"case {self.name!r}: {len(self.want)} probes ({allowed} allowed, {denied} denied "
            f"expected): {len(self.missing)} blocked that should pass, "
            f"{len(self.leaks)} passed that should be blocked"
        ]
        lines += [f"  BLOCKED {p}  (expected allowed)" for p in self.missing[:60]]
        lines += [f"  LEAKED  {p}  (expected denied)" for p in self.leaks[:60]]
        bad = set(self.missing) | set(self.leaks)
        for family, protocol, port in sorted({(p.family, p.protocol, p.port) for p in bad}):
            lines.append("")
            lines.append(self.grid(family, protocol, port))
        return "\n".join(lines)

    def grid(self, family: int, protocol: str, port: int) -> str:
        """One family and port as a src x dst grid: ``+`` allowed and passed, ``.``
        denied and blocked, ``B`` blocked but expected allowed, ``L`` leaked."""
        keys = [
            p for p in self.want if p.family == family and p.protocol == protocol and p.port == port
        ]
        names = sorted({p.src for p in keys} | {p.dst for p in keys})
        cells = {(p.src, p.dst): p for p in keys}
        width = max(len(n) for n in names)
        head = " " * (width + 1) + " ".join(n[:width].rjust(width) for n in names)
        lines = [f"IPv{family} {protocol}/{port}  (row: source, column: destination)", head]
        for src in names:
            row = []
            for dst in names:
                p = cells.get((src, dst))
                if p is None:
                    mark = " "
                else:
                    w, g = self.want[p], self.got.get(p, False)
                    mark = ("+" if g else "B") if w else ("L" if g else ".")
                row.append(mark.rjust(width))
            lines.append(src.rjust(width) + " " + " ".join(row))
        return "\n".join(lines)


def summary(comparisons: Sequence[Comparison]) -> str:
    """One line per matrix: its probes and how long enforcement took."""
    return "\n".join(
        f"{c.name}: {len(c.want)} probes, {c.counts()[0]} allowed, {c.counts()[1]} denied, "
        f"enforced after {c.enforced_after * 1000:.0f} ms"
        for c in comparisons
    )
