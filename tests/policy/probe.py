"""Reachability probes between network namespaces, in-process, many at once.

A socket belongs to the namespace of the thread that created it, for its whole life. So a
thread per namespace (``tests.soak.nsutil.NetnsExecutor``: it entered the namespace with
``setns``) only *creates* sockets; everything else happens on ordinary threads: one server
thread answers every endpoint's listeners (TCP/SCTP: accept and close; UDP: echo the
datagram), and a probe round starts all its connections non-blocking, then waits for all
of them together. A round of hundreds of probes, many of them dropped, takes about one
timeout; no process is started per probe.

Each probe is one new connection from a source address to a destination address and port:
TCP/SCTP "connected" (the handshake completed), UDP "answered" (the echo came back). The
client binds its source address *and* a port never used before by that address (20000 and
up, below the kernel's ephemeral range), so no probe ever meets a conntrack entry left by
an earlier one: every probe is judged as a new connection. Stream sockets are closed with
``SO_LINGER`` 0 (a reset: no TIME_WAIT left behind).
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Final, TypeVar

import attrs

from tests.soak.nsutil import NetnsExecutor
from xcluster_cni_lib.core.values import IPAddress

_T = TypeVar("_T")

PROTOCOLS: Final = ("TCP", "UDP", "SCTP")
FIRST_SOURCE_PORT: Final = 20000
LAST_SOURCE_PORT: Final = 32767  # the kernel's ephemeral ports start at 32768
_FAMILY: Final = {4: socket.AF_INET, 6: socket.AF_INET6}
_IPPROTO_SCTP: Final = getattr(socket, "IPPROTO_SCTP", 132)
_LINGER_RESET: Final = struct.pack("ii", 1, 0)


@attrs.frozen
class Endpoint:
    """Something that sends and answers probes: a pod, a node, an outside address. It has
    servers on each of its ``addresses`` (bound to that address, so UDP answers come from
    the address that was asked) and sends from them."""

    name: str
    netns: str
    addresses: tuple[IPAddress, ...]

    def address(self, family: int) -> IPAddress | None:
        return next((a for a in self.addresses if a.version == family), None)


@attrs.frozen(order=True)
class Probe:
    """One new connection: ``src`` to ``dst`` (endpoint names) over one family and port."""

    src: str
    dst: str
    family: int
    protocol: str
    port: int

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} IPv{self.family} {self.protocol}/{self.port}"


class ProbeError(RuntimeError):
    """A probe could not even be started (a missing address, an unsupported protocol)."""


def _socket_args(family: int, protocol: str) -> tuple[int, int, int]:
    if protocol == "TCP":
        return _FAMILY[family], socket.SOCK_STREAM, socket.IPPROTO_TCP
    if protocol == "UDP":
        return _FAMILY[family], socket.SOCK_DGRAM, socket.IPPROTO_UDP
    if protocol == "SCTP":
        return _FAMILY[family], socket.SOCK_STREAM, _IPPROTO_SCTP
    raise ProbeError(f"unknown protocol {protocol!r} (one of {', '.join(PROTOCOLS)})")


def unsupported(protocol: str) -> str | None:
    """Why this kernel cannot carry ``protocol`` (the error of opening a socket of it in
    the calling thread's namespace), or ``None`` when it can."""
    try:
        socket.socket(*_socket_args(4, protocol)).close()
    except OSError as e:
        return f"socket(AF_INET, {protocol}) fails: {e.strerror or e} (errno {e.errno})"
    return None


@attrs.define
class _Pending:
    probe: Probe
    sock: socket.socket
    token: bytes


class Prober:
    """Servers on ``ports`` (``(protocol, port)``) at every address of every endpoint,
    and probe rounds between the endpoints. ``start()`` it, ``close()`` it (or use it as a
    context manager)."""

    def __init__(self, endpoints: Iterable[Endpoint], ports: Iterable[tuple[str, int]]) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        for e in endpoints:
            if e.name in self.endpoints:
                raise ProbeError(f"two endpoints named {e.name!r}")
            self.endpoints[e.name] = e
        self.ports = tuple(sorted(set(ports)))
        self._executors: dict[str, NetnsExecutor] = {}
        self._listeners: list[socket.socket] = []
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_port: dict[IPAddress, int] = {}
        self._port_lock = threading.Lock()
        self._token = 0

    # -- life cycle -----------------------------------------------------------------------

    def __enter__(self) -> Prober:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Prober:
        """Open every listener (an error names the endpoint, address and port), then start
        the server thread."""
        try:
            for endpoint in self.endpoints.values():
                self._listeners += self.call(endpoint.netns, partial(self._listen, endpoint))
            self._selector.register(self._wake_r, selectors.EVENT_READ, None)
            for sock in self._listeners:
                self._selector.register(sock, selectors.EVENT_READ, sock.type)
            self._thread = threading.Thread(target=self._serve, name="probe-servers", daemon=True)
            self._thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        for sock in self._listeners:
            sock.close()
        self._listeners.clear()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        for executor in self._executors.values():
            executor.shutdown()
        self._executors.clear()

    def call(self, netns: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the thread that lives in ``netns`` (made on first use)."""
        executor = self._executors.get(netns)
        if executor is None:
            executor = self._executors[netns] = NetnsExecutor(netns, workers=1)
        return executor.call(fn, timeout=30.0)

    # -- servers --------------------------------------------------------------------------

    def _listen(self, endpoint: Endpoint) -> list[socket.socket]:
        out: list[socket.socket] = []
        try:
            for address in endpoint.addresses:
                for protocol, port in self.ports:
                    family, kind, proto = _socket_args(address.version, protocol)
                    sock = socket.socket(family, kind, proto)
                    out.append(sock)
                    sock.setblocking(False)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        sock.bind((str(address), port))
                    except OSError as e:
                        raise ProbeError(
                            f"{endpoint.name}: cannot listen on {protocol} [{address}]:{port}: {e}"
                        ) from e
                    if kind == socket.SOCK_STREAM:
                        sock.listen(1024)
        except BaseException:
            for sock in out:
                sock.close()
            raise
        return out

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=1.0):
                if key.data is None:
                    return  # woken to stop
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    if key.data == socket.SOCK_STREAM:
                        while True:
                            conn, _ = sock.accept()
                            conn.close()
                    else:
                        while True:
                            data, peer = sock.recvfrom(2048)
                            sock.sendto(data, peer)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    pass  # a client gone before we answered: its probe decides

    # -- probes ---------------------------------------------------------------------------

    def _source_port(self, address: IPAddress) -> int:
        with self._port_lock:
            port = self._next_port.get(address, FIRST_SOURCE_PORT)
            if port > LAST_SOURCE_PORT:
                raise ProbeError(f"{address}: out of fresh source ports")
            self._next_port[address] = port + 1
            return port

    def _start_probes(self, probes: list[tuple[Probe, bytes]]) -> list[_Pending | Probe]:
        """In the source's namespace: open, bind and start each probe. A probe that
        failed at once (unreachable network, refused) comes back as the bare ``Probe``."""
        out: list[_Pending | Probe] = []
        try:
            for probe, token in probes:
                src = self.endpoints[probe.src].address(probe.family)
                dst = self.endpoints[probe.dst].address(probe.family)
                if src is None or dst is None:
                    raise ProbeError(f"{probe}: an end has no IPv{probe.family} address")
                family, kind, proto = _socket_args(probe.family, probe.protocol)
                try:
                    sock = socket.socket(family, kind, proto)
                except OSError as e:
                    raise ProbeError(f"{probe}: cannot open a socket: {e}") from e
                sock.setblocking(False)
                if kind == socket.SOCK_STREAM:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                for _ in range(100):
                    try:
                        sock.bind((str(src), self._source_port(src)))
                        break
                    except OSError as e:
                        if e.errno != errno.EADDRINUSE:
                            sock.close()
                            raise ProbeError(f"{probe}: cannot bind {src}: {e}") from e
                else:
                    sock.close()
                    raise ProbeError(f"{probe}: no free source port on {src}")
                pending = _Pending(probe, sock, token)
                if kind == socket.SOCK_STREAM:
                    code = sock.connect_ex((str(dst), probe.port))
                    if code not in (0, errno.EINPROGRESS):
                        sock.close()
                        out.append(probe)
                        continue
                else:
                    try:
                        sock.connect((str(dst), probe.port))
                        sock.send(token)
                    except OSError:
                        sock.close()
                        out.append(probe)
                        continue
                out.append(pending)
        except BaseException:
            for p in out:
                if isinstance(p, _Pending):
                    p.sock.close()
            raise
        return out

    def probe(self, probes: Iterable[Probe], *, timeout: float = 0.4) -> dict[Probe, bool]:
        """Run every probe at once; each is ``True`` when it connected (TCP/SCTP) or got
        its echo (UDP) within ``timeout`` seconds of the round's start."""
        chosen = sorted(set(probes))
        by_ns: dict[str, list[tuple[Probe, bytes]]] = {}
        for probe in chosen:
            if probe.src not in self.endpoints or probe.dst not in self.endpoints:
                raise ProbeError(f"{probe}: unknown endpoint")
            self._token += 1
            token = f"probe {self._token} {probe}".encode()
            by_ns.setdefault(self.endpoints[probe.src].netns, []).append((probe, token))
        results: dict[Probe, bool] = {}
        pending: list[_Pending] = []
        selector = selectors.DefaultSelector()
        try:
            for ns, items in by_ns.items():
                started = self.call(ns, partial(self._start_probes, items))
                for item in started:
                    if isinstance(item, Probe):
                        results[item] = False
                    else:
                        pending.append(item)
            waiting: dict[int, _Pending] = {}
            for p in pending:
                stream = p.sock.type == socket.SOCK_STREAM
                selector.register(p.sock, selectors.EVENT_WRITE if stream else selectors.EVENT_READ)
                waiting[p.sock.fileno()] = p
            deadline = time.monotonic() + timeout
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for key, _ in selector.select(timeout=left):
                    p = waiting[key.fd]
                    done, ok = self._finish(p)
                    if done:
                        results[p.probe] = ok
                        selector.unregister(p.sock)
                        del waiting[key.fd]
            for p in waiting.values():
                results[p.probe] = False
        finally:
            selector.close()
            for p in pending:
                p.sock.close()
        return {p: results[p] for p in chosen}

    @staticmethod
    def _finish(p: _Pending) -> tuple[bool, bool]:
        """(done, reached) for a socket the selector reported."""
        if p.sock.type == socket.SOCK_STREAM:
            return True, p.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        try:
            data = p.sock.recv(2048)
        except (BlockingIOError, InterruptedError):
            return False, False
        except OSError:
            return True, False  # an ICMP error: refused, unreachable
        if data == p.token:
            return True, True
        return False, False  # someone else's datagram: keep waiting
