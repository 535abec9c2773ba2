"""nftables through the ``nft`` tool's JSON: apply a document in one transaction, read a
table back, list the tables. Changes to a table are followed by ``kernel.nftevents``
(the kernel's nf_tables notifications), not ``nft monitor``: nft 1.0.6 crashes printing
the policy tables' concatenated interval elements.

Why the ``nft`` tool's JSON, and not python3-nftables or netlink:

- ``nft -j -f -`` reads a whole document and commits it as **one** netfilter transaction:
  the table is replaced, or elements change, all or nothing (the kernel never shows a
  half-made table to a packet). Its JSON schema is documented and stable
  (``libnftables-json(5)``), so the documents are plain data that the pure layer builds
  and tests compare (``core.masquerade``).
- python3-nftables is the same libnftables behind ctypes, but netfilter ships it for the
  system Python (Debian's package); PyPI has only unofficial copies of it, which still
  need Debian's libnftables. The tool needs nothing but the ``nftables`` package.
- Netlink: pyroute2 (already a dependency) has an nftables API, but it makes no
  interval sets (only its message layer knows the flags; encoding each CIDR as the start
  and end elements the kernel stores would be ours); nf_tables netlink by hand would be
  a new codec for set elements, expressions and transactions, and the project's style keeps
  hand-written codecs for measured hot paths only (routes). A masquerade change is one
  small transaction per node change (or per burst of them); with 5,000 nodes one costs
  8 ms p50 when the sets hold 13 aggregated CIDRs and 32 ms when they hold 10,003 (nft
  reads an interval set before changing it), the process included
  (``bench/masquerade_sets.py``, docs/egress.md).

Network namespaces: with ``netns``, every ``nft`` process is started from one worker
thread that entered the namespace (``setns`` through pyroute2, as ``channel.open_socket``
does) and never leaves it; a child inherits the namespace of the thread that forks it.
No ``ip netns exec`` (one more process and a mount namespace per call), and no other
thread of the daemon ever changes namespace. Without ``netns`` (the daemon's host
network), the calling thread starts ``nft`` itself.

Ownership: ``apply`` refuses a document that addresses anything but the project's tables
(``OWNED``): ``inet`` tables named ``core.masquerade.TABLE_PREFIX*`` and ``inet``/``bridge``
tables named ``core.policynft.TABLE_PREFIX*``; no other table is ever touched.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import subprocess
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from xcluster_cni_lib.core.masquerade import FAMILY, TABLE_PREFIX
from xcluster_cni_lib.core.policynft import TABLE_PREFIX as POLICY_PREFIX
from xcluster_cni_lib.support import jsonlog

log = jsonlog.get_logger(__name__)

_T = TypeVar("_T")

#: How many ``nft`` process ids ``Nft.started`` keeps.
STARTED_KEPT = 64
#: How long one ``nft`` call may take before it is killed.
NFT_TIMEOUT = 10.0


class NftError(RuntimeError):
    """``nft`` failed; the message names the table and says what ``nft`` said."""


class _InNetns:
    """Runs calls in a named network namespace (a worker thread that entered it once), or
    in the calling thread without one."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        if netns is not None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"nft-{netns}", initializer=self._enter
            )

    def _enter(self) -> None:
        # imported here: pyroute2 costs ~0.1 s to import and only tests use namespaces
        from pyroute2 import netns as pyroute2_netns

        pyroute2_netns.setns(self.netns, flags=0)  # never create it, only enter it

    def call(self, fn: Callable[[], _T]) -> _T:
        if self._pool is None:
            return fn()
        try:
            return self._pool.submit(fn).result()
        except concurrent.futures.BrokenExecutor as e:  # the initializer failed
            raise NftError(f"cannot enter network namespace {self.netns!r}: {e}") from e

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


#: The tables ``apply`` may address: (family, name prefix).
OWNED: tuple[tuple[str, str], ...] = (
    (FAMILY, TABLE_PREFIX),
    ("inet", POLICY_PREFIX),
    ("bridge", POLICY_PREFIX),
)


def owned(family: object, name: object) -> bool:
    """Whether the table ``family name`` is one of the project's (``OWNED``)."""
    return any(family == f and str(name).startswith(p) for f, p in OWNED)


def _check_owned(commands: Iterable[Any]) -> str:
    """The table names a document addresses; ``ValueError`` for anything not ours."""
    names: set[tuple[str, str]] = set()
    for command in commands:
        if not isinstance(command, Mapping) or len(command) != 1:
            raise ValueError(f"not an nft command object: {command!r}")
        verb, body = next(iter(command.items()))
        if verb == "metainfo":
            continue
        if not isinstance(body, Mapping) or len(body) != 1:
            raise ValueError(f"not an nft command object: {command!r}")
        kind, spec = next(iter(body.items()))
        name = spec.get("name") if kind == "table" else spec.get("table")
        if not owned(spec.get("family"), name):
            where = "" if kind == "table" else f"{kind} in "
            ours = ", ".join(f"{f} {p}*" for f, p in OWNED)
            raise ValueError(
                f"refusing to {verb} {where}table {spec.get('family')} {name}: "
                f"only these tables are ours: {ours}"
            )
        names.add((str(spec.get("family")), str(name)))
    return ", ".join(f"{f} {n}" for f, n in sorted(names)) or "(none)"


def _brief(stderr: str) -> str:
    """nft's error text on one line (its caret lines dropped)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip().strip("^~ ")]
    return "; ".join(lines) or "no message"


class Nft:
    """Runs ``nft`` (``command``) in ``netns`` (a name under /var/run/netns or a path).

    ``started`` keeps the process ids of its last runs: ``kernel.nftevents`` tells the
    notifications of our own transactions by them, so they wake nobody.
    """

    def __init__(
        self, *, netns: str | None = None, command: str = "nft", timeout: float = NFT_TIMEOUT
    ) -> None:
        self.command = command
        self.timeout = timeout
        self._ns = _InNetns(netns)
        #: the process ids of the last ``nft`` runs (``kernel.nftevents`` tells our own
        #: transactions by them)
        self.started: collections.deque[int] = collections.deque(maxlen=STARTED_KEPT)

    @property
    def netns(self) -> str | None:
        return self._ns.netns

    def _run(
        self, args: list[str], stdin: str | None, what: str
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.command, *args]

        def run() -> subprocess.CompletedProcess[str]:
            with subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ) as proc:
                self.started.append(proc.pid)  # before it can commit anything
                try:
                    out, err = proc.communicate(stdin, timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                    raise
            return subprocess.CompletedProcess(argv, proc.returncode, out, err)

        try:
            return self._ns.call(run)
        except FileNotFoundError as e:
            raise NftError(
                f"{what}: {self.command} not found (the nftables package provides it)"
            ) from e
        except subprocess.TimeoutExpired as e:
            raise NftError(f"{what}: nft did not finish within {self.timeout:g}s") from e
        except PermissionError as e:
            raise NftError(f"{what}: cannot run {self.command}: {e}") from e

    def apply(self, document: Mapping[str, Any]) -> None:
        """Commit a JSON document (``nft -j -f -``) as one transaction: all of it or,
        raising ``NftError``, none of it."""
        commands = document.get("nftables")
        if not isinstance(commands, list):
            raise ValueError("an nft JSON document has a list under 'nftables'")
        tables = _check_owned(commands)
        verbs = sorted({next(iter(c)) for c in commands if next(iter(c)) != "metainfo"})
        what = f"{'/'.join(verbs) or 'nothing'} in table {tables}"
        if not verbs:
            return
        proc = self._run(["-j", "-f", "-"], json.dumps(document), what)
        if proc.returncode != 0:
            raise NftError(f"{what} failed: nft said: {_brief(proc.stderr)}")

    def read_table(self, name: str, *, family: str = FAMILY) -> list[dict[str, Any]] | None:
        """The objects of ``nft -j list table <family> <name>`` (metainfo, table, sets,
        chains, rules); ``None`` when there is no such table."""
        what = f"list table {family} {name}"
        proc = self._run(["-j", "list", "table", family, name], None, what)
        if proc.returncode != 0:
            if "No such file or directory" in proc.stderr:
                return None
            raise NftError(f"{what} failed: nft said: {_brief(proc.stderr)}")
        try:
            objects = json.loads(proc.stdout)["nftables"]
        except (ValueError, KeyError, TypeError) as e:
            raise NftError(f"{what}: nft's output is not the expected JSON: {e}") from e
        if not isinstance(objects, list):
            raise NftError(f"{what}: nft's output is not the expected JSON")
        return [o for o in objects if isinstance(o, dict)]

    def list_tables(self) -> list[tuple[str, str]]:
        """(family, name) of every table (``nft -j list tables``)."""
        proc = self._run(["-j", "list", "tables"], None, "list tables")
        if proc.returncode != 0:
            raise NftError(f"list tables failed: nft said: {_brief(proc.stderr)}")
        try:
            objects = json.loads(proc.stdout)["nftables"]
            return [
                (str(o["table"]["family"]), str(o["table"]["name"]))
                for o in objects
                if isinstance(o, dict) and "table" in o
            ]
        except (ValueError, KeyError, TypeError) as e:
            raise NftError(f"list tables: nft's output is not the expected JSON: {e}") from e

    def popen_monitor(self) -> subprocess.Popen[str]:
        """``nft -j monitor`` as a child process (in the namespace), its stdout a pipe."""

        def start() -> subprocess.Popen[str]:
            return subprocess.Popen(
                [self.command, "-j", "monitor"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
            )

        try:
            return self._ns.call(start)
        except OSError as e:
            raise NftError(f"nft monitor: cannot run {self.command}: {e}") from e

    def close(self) -> None:
        self._ns.close()

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
