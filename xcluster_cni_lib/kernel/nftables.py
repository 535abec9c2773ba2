"""nftables through the ``nft`` tool's JSON: apply a document in one transaction, read a
table back, and follow changes to it with ``nft -j monitor``.

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
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, TypeVar

from xcluster_cni_lib.core.masquerade import FAMILY, TABLE_PREFIX, parse_element
from xcluster_cni_lib.core.policynft import TABLE_PREFIX as POLICY_PREFIX
from xcluster_cni_lib.support import jsonlog

log = jsonlog.get_logger(__name__)

_T = TypeVar("_T")

#: How many ``nft`` process ids ``Nft.started`` keeps.
STARTED_KEPT = 64
#: How long one ``nft`` call may take before it is killed.
NFT_TIMEOUT = 10.0
#: How long the monitor waits before starting ``nft monitor`` again after it ended.
MONITOR_RESTART_DELAY = 0.5


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


#: One element event: (verb, table, set, network as text).
EchoKey = tuple[str, str, str, str]
#: How long an expected echo of our own write is waited for.
ECHO_TTL = 10.0


def _element_keys(verb: str, spec: Mapping[str, Any]) -> list[EchoKey] | None:
    """The echo keys of one element command or event (``None``: not all readable)."""
    name = str(spec.get("name"))
    items = spec.get("elem")
    if isinstance(items, Mapping):  # monitor events: {"set": [...]}
        items = items.get("set")
    if not isinstance(items, list) or name[-1:] not in ("4", "6"):
        return None
    keys: list[EchoKey] = []
    for item in items:
        try:
            nets, _ = parse_element(item, int(name[-1]))
        except (ValueError, KeyError, TypeError):
            return None
        keys.extend((verb, str(spec.get("table")), name, str(n)) for n in nets)
    return keys


def echo_keys(commands: Iterable[Any]) -> list[EchoKey] | None:
    """The element events a document will cause, when it changes only elements (the
    incremental updates); ``None`` otherwise (a replaced table is checked, not ignored)."""
    keys: list[EchoKey] = []
    for command in commands:
        verb, body = next(iter(command.items()))
        if verb == "metainfo":
            continue
        if verb not in ("add", "delete") or "element" not in body:
            return None
        found = _element_keys(verb, body["element"])
        if found is None:
            return None
        keys.extend(found)
    return keys


class Echoes:
    """The events our own element updates will cause, so a monitor can tell them from
    someone else's change: ``expect`` before a transaction, ``cancel`` if it failed,
    ``consume`` on each event (true: ours). Unconsumed expectations lapse after
    ``ttl`` seconds. Thread-safe."""

    def __init__(self, ttl: float = ECHO_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[EchoKey, list[float]] = {}

    def expect(self, keys: Iterable[EchoKey]) -> None:
        deadline = self.clock() + self.ttl
        with self._lock:
            for key in keys:
                self._pending.setdefault(key, []).append(deadline)

    def cancel(self, keys: Iterable[EchoKey]) -> None:
        with self._lock:
            for key in keys:
                deadlines = self._pending.get(key)
                if deadlines:
                    deadlines.pop()
                    if not deadlines:
                        del self._pending[key]

    def consume(self, keys: Sequence[EchoKey]) -> bool:
        """Whether every key was expected (then each is taken off once)."""
        now = self.clock()
        with self._lock:
            for key in list(self._pending):
                live = [d for d in self._pending[key] if d > now]
                if live:
                    self._pending[key] = live
                else:
                    del self._pending[key]
            if not keys or any(key not in self._pending for key in keys):
                return False
            for key in keys:
                self._take(key)
            return True

    def _take(self, key: EchoKey) -> None:
        deadlines = self._pending[key]
        deadlines.pop(0)
        if not deadlines:
            del self._pending[key]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(d) for d in self._pending.values())


class Nft:
    """Runs ``nft`` (``command``) in ``netns`` (a name under /var/run/netns or a path).

    ``echoes`` records the element events of each element-only transaction, for an
    ``NftMonitor`` built with this ``Nft``: our own incremental updates then wake nobody.
    """

    def __init__(
        self, *, netns: str | None = None, command: str = "nft", timeout: float = NFT_TIMEOUT
    ) -> None:
        self.command = command
        self.timeout = timeout
        self._ns = _InNetns(netns)
        self.echoes = Echoes()
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
        keys = echo_keys(commands) or []
        self.echoes.expect(keys)
        try:
            proc = self._run(["-j", "-f", "-"], json.dumps(document), what)
        except BaseException:
            self.echoes.cancel(keys)
            raise
        if proc.returncode != 0:
            self.echoes.cancel(keys)  # nothing was committed: no events will come
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


def concerns(
    event: Mapping[str, Any], table: str, *, family: str | tuple[str, ...] = FAMILY
) -> bool:
    """Whether one ``nft -j monitor`` event (``{"add": {"element": {...}}}``) is about
    ``table`` of ``family`` (or of one of several families): the table itself or anything
    in it."""
    families = (family,) if isinstance(family, str) else family
    if len(event) != 1:
        return False
    body = next(iter(event.values()))
    if not isinstance(body, Mapping) or len(body) != 1:
        return False
    kind, spec = next(iter(body.items()))
    if not isinstance(spec, Mapping) or spec.get("family") not in families:
        return False
    return (spec.get("name") if kind == "table" else spec.get("table")) == table


class NftMonitor:
    """Follows ``nft -j monitor`` and calls ``on_change`` when ``table`` or anything in
    it (chain, sets, elements, rules) changed or went away: a ``KernelMonitor``. Events
    of other tables are read and ignored, and so are the element events of our own
    incremental updates when ``nft`` is the ``Nft`` that wrote them (its ``echoes``).
    When ``nft monitor`` ends, it is started again and ``on_change`` is called (events
    may have been missed)."""

    def __init__(
        self,
        table: str,
        *,
        nft: Nft | None = None,
        netns: str | None = None,
        families: tuple[str, ...] = (FAMILY,),
    ) -> None:
        self.table = table
        self.families = families
        self._own_nft = nft is None
        self.nft = nft if nft is not None else Nft(netns=netns)
        self.events = 0  # events about our table (our own echoes not counted)
        self.echoes = 0  # events of our own element updates, ignored
        self.seen = 0  # events about any table (tests wait for one: nft monitor listens)
        self.restarts = 0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        """The process id of the running ``nft monitor``, if one runs."""
        proc = self._proc
        return proc.pid if proc is not None else None

    def run(
        self, on_change: Callable[[], None], stop: threading.Event, *, poll: float = 0.2
    ) -> None:
        """Until ``stop`` is set (returns within ``poll`` seconds after)."""
        first = True
        while not stop.is_set():
            try:
                proc = self._proc = self.nft.popen_monitor()
            except NftError as e:
                log.error("nft monitor cannot start", table=self.table, error=str(e))
                stop.wait(MONITOR_RESTART_DELAY * 4)
                continue
            try:
                if not first:
                    self.restarts += 1
                    on_change()  # what happened while it was not running is unknown
                first = False
                self._follow(proc, on_change, stop, poll)
            finally:
                said = self._end(proc)
            if not stop.is_set():
                log.warning(
                    "nft monitor ended; starting it again",
                    table=self.table,
                    code=proc.returncode,
                    said=said or None,
                )
                stop.wait(MONITOR_RESTART_DELAY)

    def _follow(
        self,
        proc: subprocess.Popen[str],
        on_change: Callable[[], None],
        stop: threading.Event,
        poll: float,
    ) -> None:
        out: IO[str] | None = proc.stdout
        assert out is not None
        fd = out.fileno()
        buffer = b""
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], poll)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return  # nft monitor ended
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if self._relevant(lines) and not stop.is_set():
                on_change()

    def _relevant(self, lines: list[bytes]) -> bool:
        hit = False
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                log.debug("nft monitor: not JSON", line=line[:200].decode(errors="replace"))
                continue
            self.seen += 1
            if isinstance(event, dict) and concerns(event, self.table, family=self.families):
                if self._echo(event):
                    self.echoes += 1
                    continue
                self.events += 1
                hit = True
        return hit

    def _echo(self, event: Mapping[str, Any]) -> bool:
        verb, body = next(iter(event.items()))
        spec = body.get("element") if isinstance(body, Mapping) else None
        if verb not in ("add", "delete") or not isinstance(spec, Mapping):
            return False
        keys = _element_keys(verb, spec)
        return keys is not None and self.nft.echoes.consume(keys)

    def _end(self, proc: subprocess.Popen[str]) -> str:
        """Stop ``nft monitor`` (if it still runs) and close its pipes; what it wrote on
        stderr when it ended by itself."""
        ended = proc.poll() is not None
        if not ended:
            proc.kill()
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            log.warning("nft monitor did not end", pid=proc.pid)
        said = ""
        if ended and proc.stderr is not None:
            text = proc.stderr.read(4096)
            said = _brief(text) if text.strip() else ""
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        self._proc = None
        return said

    def close(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        if self._own_nft:
            self.nft.close()
