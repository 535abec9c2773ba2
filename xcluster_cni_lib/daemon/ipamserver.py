"""The IPAM verbs served on a Unix socket (``IPAM_SOCKET``) for the host shim.

One request and one answer per connection (the wire protocol is in ``docs/ipam.md``,
"Served by the agent"): the shim forwards its ``CNI_*`` environment, the plugin type
(``XCLUSTER_CNI_PLUGIN``) and its stdin; the answer is the exit code and exactly what the
standalone plugin would print. The verbs themselves are ``plugin.verbs.run``, the same
code the ``kube-node``/``node-annotation`` executables run: host-local runs as a child
process found on the forwarded ``CNI_PATH``, on the data directory of the config, so
host-local's own locking keeps concurrent calls apart.

With ``own_node`` (the daemon passes ``daemon.ownnode``'s view of its Node) a call never
reads the API server: the node comes from the agent. ``cni_path`` is searched for
host-local before the caller's ``CNI_PATH`` (the agent runs its own host-local, inside
its container). The verbs' log lines become the agent's JSON log lines.

Only root may connect (``SO_PEERCRED``); the socket is mode 0600 in a directory created
root-only. Worker threads wait in ``accept()`` and each serves the connection it took
(leader/follower: no hand-over between threads on a call's path; two wait while idle,
more are started as calls overlap, up to ``max_active + max_waiting``); at most
``max_active`` calls run at once, and a call that finds no slot within ``slot_wait`` gets
CNI error code 11 (try again later). Requests are
bounded (entries, lengths) and must arrive within ``read_timeout``; a violation closes
the connection with a warning.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from typing import Protocol

from xcluster_cni_lib.core.errors import shorten
from xcluster_cni_lib.plugin import verbs
from xcluster_cni_lib.plugin.protocol import LATEST_VERSION, SUPPORTED_VERSIONS
from xcluster_cni_lib.support import jsonlog

log = jsonlog.get_logger(__name__)

MAGIC = b"XCN1"
MAX_ENTRIES = 64
MAX_ENTRY = 64 * 1024
MAX_STDIN = 1024 * 1024
MAX_STDOUT = 4 * 1024 * 1024
PLUGIN_VAR = "XCLUSTER_CNI_PLUGIN"
PLUGINS = ("kube-node", "node-annotation")
TRY_AGAIN = 11  # CNI: "try again later"
INVALID_ENV = 4  # CNI: invalid necessary environment variables
INTERNAL = 999  # CNI: other errors

DEFAULT_MAX_ACTIVE = 32
DEFAULT_MAX_WAITING = 64
DEFAULT_SPARE = 2  # worker threads kept waiting in accept() while idle
DEFAULT_SLOT_WAIT = 10.0  # seconds; the shim gives up after 25 s in all
DEFAULT_READ_TIMEOUT = 5.0  # seconds for the whole request

Runner = Callable[..., int]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from xcluster_cni_lib.plugin.served import OwnNodeLookup


class CallMetrics(Protocol):
    """What the server reports per call (``sync.metrics.DaemonMetrics.ipam_call``)."""

    def ipam_call(self, verb: str, code: int) -> None: ...


class IpamServerError(Exception):
    """The socket cannot be set up; the message names the path."""


class BadRequest(Exception):
    """A request that breaks the framing; the connection is closed without an answer."""


class _Request:
    def __init__(self, env: dict[str, str], plugin: str | None, stdin: bytes) -> None:
        self.env = env
        self.plugin = plugin
        self.stdin = stdin


class _Reader:
    """Reads a request off a connection in large pieces (one ``recv`` for a usual request
    of a few KiB), handing out exact slices; every wait ends at ``deadline``."""

    def __init__(self, conn: socket.socket, deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self.buf = bytearray()
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        while len(self.buf) - self.pos < n:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise BadRequest(f"request not complete in time (waiting for {what})")
            self.conn.settimeout(remaining)
            try:
                chunk = self.conn.recv(max(64 * 1024, n - (len(self.buf) - self.pos)))
            except TimeoutError:
                raise BadRequest(f"request not complete in time (waiting for {what})") from None
            if not chunk:
                raise BadRequest(f"connection closed in the middle of the request ({what})")
            if self.pos:
                del self.buf[: self.pos]
                self.pos = 0
            self.buf += chunk
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        value: int = struct.unpack(">I", self.take(4, what))[0]
        return value


def read_request(conn: socket.socket, timeout: float) -> _Request:
    """One request off ``conn`` within ``timeout`` seconds; ``BadRequest`` on any framing
    violation (the limits of the protocol, NUL bytes, names other than ``CNI_*`` and the
    plugin entry)."""
    reader = _Reader(conn, time.monotonic() + timeout)
    magic = reader.take(4, "magic")
    if magic != MAGIC:
        raise BadRequest(f"bad magic {magic!r}")
    count = reader.u32("entry count")
    if count > MAX_ENTRIES:
        raise BadRequest(f"{count} environment entries (at most {MAX_ENTRIES})")
    env: dict[str, str] = {}
    plugin = None
    for i in range(count):
        length = reader.u32(f"entry {i} length")
        if length > MAX_ENTRY:
            raise BadRequest(f"environment entry {i} is {length} bytes (at most {MAX_ENTRY})")
        raw = reader.take(length, f"entry {i}")
        name, sep, value = raw.decode("utf-8", "surrogateescape").partition("=")
        if not sep or not name or b"\0" in raw:
            raise BadRequest(f"environment entry {i} is not NAME=VALUE: {shorten(repr(raw))}")
        if name == PLUGIN_VAR:
            plugin = value
        elif name.startswith("CNI_"):
            env[name] = value
        else:
            raise BadRequest(f"environment entry {name!r} is not forwarded by the protocol")
    size = reader.u32("stdin length")
    if size > MAX_STDIN:
        raise BadRequest(f"stdin is {size} bytes (at most {MAX_STDIN})")
    stdin = reader.take(size, "stdin")
    return _Request(env, plugin, stdin)


def answer_frame(code: int, out: bytes) -> bytes:
    """The answer: magic, exit code, stdout."""
    return MAGIC + struct.pack(">II", code, len(out)) + out


def error_object(code: int, msg: str, details: str, stdin: bytes) -> bytes:
    """A CNI error object in the config's version when it has a known one."""
    version = LATEST_VERSION
    try:
        doc = json.loads(stdin)
        if isinstance(doc, dict) and doc.get("cniVersion") in SUPPORTED_VERSIONS:
            version = doc["cniVersion"]
    except ValueError:
        pass
    obj = {"cniVersion": version, "code": code, "msg": msg, "details": details}
    return json.dumps(obj).encode() + b"\n"


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the connecting process."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def prepare_path(path: str) -> bool:
    """Create the socket's directory root-only if missing; refuse to replace anything
    that is not a socket. True when a (stale) socket is there."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        try:
            os.makedirs(directory, mode=0o700)
            os.chmod(directory, 0o700)  # makedirs' mode is subject to the umask
        except OSError as e:
            raise IpamServerError(f"cannot create the directory of {path}: {e}") from None
    else:
        mode = os.stat(directory).st_mode
        if mode & 0o022:
            log.warning(
                "the IPAM socket's directory is writable by others", path=directory, mode=oct(mode)
            )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise IpamServerError(f"{path} exists and is not a socket; refusing to replace it")
    log.info("replacing a stale IPAM socket", path=path)
    return True


#: Called after each served call, before its answer is sent: (verb, environment, exit
#: status, output). The NetworkPolicy admission (``daemon.admission``) waits there until
#: a new pod's policy is enforced.
AfterCall = Callable[[str, dict[str, str], int, bytes], None]


class IpamServer:
    """Serves the IPAM verbs on ``path`` until :meth:`stop`."""

    def __init__(
        self,
        path: str,
        *,
        run: Runner = verbs.run,
        metrics: CallMetrics | None = None,
        max_active: int = DEFAULT_MAX_ACTIVE,
        max_waiting: int = DEFAULT_MAX_WAITING,
        slot_wait: float = DEFAULT_SLOT_WAIT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        own_node: OwnNodeLookup | None = None,
        cni_path: str = "",
        after: AfterCall | None = None,
    ) -> None:
        self.path = path
        self.after = after
        self.run = run
        self.own_node = own_node
        self.cni_path = cni_path
        self.metrics = metrics
        self.max_active = max_active
        self.max_connections = max_active + max_waiting
        self.slot_wait = slot_wait
        self.read_timeout = read_timeout
        self.spare = DEFAULT_SPARE
        self._slots = threading.BoundedSemaphore(max_active)
        self._lock = threading.Lock()
        self._connections = 0
        self._workers = 0  # threads, serving or waiting in accept()
        self._accepting = 0  # of which waiting in accept()
        self._idle = threading.Condition(self._lock)
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._stopping = threading.Event()

    @property
    def alive(self) -> bool:
        """True while the server accepts calls."""
        return self._sock is not None and not self._stopping.is_set() and self._workers > 0

    @property
    def threads(self) -> int:
        """Worker threads now (``spare`` while idle)."""
        return self._workers

    def start(self) -> None:
        """Bind and listen (errors raise ``IpamServerError``), then accept in a thread."""
        stale = prepare_path(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        temp = self.path
        try:
            # Linux gives the bound file the socket inode's mode (less the umask): 0600
            # from the first moment, without touching the process-wide umask
            os.fchmod(sock.fileno(), 0o600)
            # bound and listening under a temporary name, then renamed into place: a
            # client never finds the path without a listener behind it (and a stale
            # socket is replaced in one step)
            temp = os.path.join(os.path.dirname(self.path), f".ipam-{os.getpid()}.sock")
            if len(os.fsencode(temp)) > 107:
                temp = self.path
                if stale:
                    os.unlink(self.path)
            sock.bind(temp)
            os.chmod(temp, 0o600)  # exactly 0600, whatever a umask took away
            sock.listen(128)
            if temp != self.path:
                os.rename(temp, self.path)
            st = os.lstat(self.path)
        except OSError as e:
            sock.close()
            if temp != self.path:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
            raise IpamServerError(f"cannot listen on {self.path}: {e}") from None
        self._inode = (st.st_dev, st.st_ino)
        self._sock = sock
        with self._lock:
            for _ in range(self.spare):
                self._spawn_worker()
        log.info("ipam serving", socket=self.path, max_active=self.max_active)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop accepting, remove the socket (if it is still ours), wait up to ``timeout``
        for calls in flight."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        try:  # first: a shim connecting from now on gets "absent" (code 11) at once
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self._sock is not None:
            with contextlib.suppress(OSError):  # wakes every thread blocked in accept()
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        with self._idle:
            while self._connections:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("ipam calls still running at stop", calls=self._connections)
                    break
                self._idle.wait(left)

    def _spawn_worker(self) -> None:
        """Start a worker (caller holds ``_lock``)."""
        self._workers += 1
        self._accepting += 1
        threading.Thread(target=self._worker, name="ipam", daemon=True).start()

    def _worker(self) -> None:
        """Leader/follower: each worker waits in ``accept()`` and serves the connection
        it got itself (no hand-over to another thread on the call's path). Taking the
        last waiting place, it first starts another worker (up to ``max_connections``);
        after a call it exits when ``spare`` others already wait."""
        sock = self._sock
        assert sock is not None
        while True:
            try:
                conn, _ = sock.accept()
            except OSError as e:
                if self._stopping.is_set():
                    break
                log.warning("ipam accept failed", error=str(e))
                time.sleep(0.05)  # e.g. out of file descriptors: do not spin
                continue
            with self._lock:
                self._accepting -= 1
                self._connections += 1
                if not self._accepting and self._workers < self.max_connections:
                    self._spawn_worker()
            conn.settimeout(self.read_timeout)
            self._serve(conn)
            with self._lock:
                if self._stopping.is_set() or self._accepting >= self.spare:
                    self._workers -= 1
                    return
                self._accepting += 1
        with self._lock:
            self._workers -= 1
            self._accepting -= 1

    def _busy(self, conn: socket.socket, stdin: bytes) -> None:
        """Answer code 11: no slot."""
        log.warning("ipam call refused: too many calls at once", limit=self.max_active)
        out = error_object(
            TRY_AGAIN,
            f"xcluster-cni agent busy: more than {self.max_active} IPAM calls at once",
            "the runtime retries; if this persists, look at the agent's log",
            stdin,
        )
        self._count("unknown", TRY_AGAIN)
        try:
            conn.settimeout(1.0)
            conn.sendall(answer_frame(1, out))
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._serve_one(conn)
        except Exception as e:  # never a traceback, never a dead server
            log.warning("ipam call failed", error=f"{type(e).__name__}: {e}")
        finally:
            conn.close()
            with self._idle:
                self._connections -= 1
                self._idle.notify_all()

    def _serve_one(self, conn: socket.socket) -> None:
        pid, uid, _ = peer_credentials(conn)
        if uid != 0:
            log.warning("ipam connection refused: not root", uid=uid, pid=pid)
            return
        t0 = time.monotonic()
        try:
            request = read_request(conn, self.read_timeout)
        except BadRequest as e:
            log.warning("ipam request rejected", reason=str(e), pid=pid)
            return
        verb = request.env.get("CNI_COMMAND", "")
        verb = verb if verb in ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION") else "other"
        if not self._slots.acquire(timeout=self.slot_wait):
            self._busy(conn, request.stdin)
            return
        try:
            rc, out = self._call(request)
        finally:
            self._slots.release()
        if self.after is not None:
            try:
                self.after(verb, request.env, rc, out)
            except Exception as e:  # never fails the call
                log.warning("ipam after-call hook failed", error=f"{type(e).__name__}: {e}")
        code = 0 if rc == 0 else _error_code(out)
        self._count(verb, code)
        fields: dict[str, object] = {
            "verb": verb,
            "plugin": request.plugin,
            "container": shorten(request.env.get("CNI_CONTAINERID", ""), 64) or None,
            "ifname": request.env.get("CNI_IFNAME"),
            "code": code,
            "ms": round((time.monotonic() - t0) * 1000, 1),
            "pid": pid,
        }
        if rc == 0:
            log.debug("ipam call", **fields)
        else:
            log.warning("ipam call failed", error=_error_text(out), **fields)
        conn.settimeout(self.read_timeout)
        try:
            conn.sendall(answer_frame(rc, out))
        except OSError as e:
            log.warning("ipam answer not delivered", error=str(e), verb=verb, pid=pid)

    def _call(self, request: _Request) -> tuple[int, bytes]:
        if request.plugin not in PLUGINS:
            got = "missing" if request.plugin is None else repr(shorten(request.plugin, 40))
            out = error_object(
                INVALID_ENV,
                f"{PLUGIN_VAR} is {got}: expected one of {', '.join(PLUGINS)}",
                "the shim sends its own file name; install it as kube-node or node-annotation",
                request.stdin,
            )
            return 1, out
        env = request.env
        if self.cni_path:
            env = {**env, "CNI_PATH": ":".join(filter(None, (self.cni_path, env.get("CNI_PATH"))))}
        plugin = request.plugin
        buf = io.BytesIO()
        rc = self.run(
            plugin,
            env=env,
            stdin=request.stdin,
            stdout=buf,
            allow_exec=False,
            own_node=self.own_node,
            log_to=lambda level, msg: _plugin_log(plugin, level, msg),
        )
        out = buf.getvalue()
        if len(out) > MAX_STDOUT:
            out = error_object(
                INTERNAL, f"answer of {len(out)} bytes exceeds {MAX_STDOUT}", "", request.stdin
            )
            rc = 1
        return (0 if rc == 0 else 1), out

    def _count(self, verb: str, code: int) -> None:
        if self.metrics is not None:
            self.metrics.ipam_call(verb, code)


def _plugin_log(plugin: str, level: str, msg: str) -> None:
    """A served call's plugin log line, as one of the agent's JSON lines."""
    getattr(log, level, log.warning)(msg, plugin=plugin)


def _error_code(out: bytes) -> int:
    try:
        doc = json.loads(out)
        code = doc.get("code") if isinstance(doc, dict) else None
        return code if isinstance(code, int) else INTERNAL
    except ValueError:
        return INTERNAL


def _error_text(out: bytes) -> str:
    try:
        doc = json.loads(out)
        if isinstance(doc, dict):
            return shorten(f"{doc.get('msg', '')} {doc.get('details', '')}".strip(), 300)
    except ValueError:
        pass
    return shorten(out.decode("utf-8", "replace"), 300)
