"""The verbs of both IPAM plugins (``kube-node``, ``node-annotation``): ADD, DEL, CHECK,
GC, STATUS and VERSION, delegating to the real ``host-local``.

``run`` takes env/stdin/stdout so tests drive it in-process; ``main`` is the executable's
entry and may replace itself with host-local (``allow_exec``) on a cache hit, so a pod
start pays for little more than the interpreter's start-up. Only the standard library
basics, ``cni.protocol``, ``pluginexec`` and this package's light modules are imported on
that path; node lookups (``resolve``) and the store helpers are imported when needed.
"""

from __future__ import annotations

from xcluster_cni_lib.plugin import delegate as pluginexec
from xcluster_cni_lib.plugin import fastjson as json
from xcluster_cni_lib.plugin.cache import InvalidCache, RangeSet, read_cache
from xcluster_cni_lib.plugin.config import IpamConfig, parse_config
from xcluster_cni_lib.plugin.log import Log
from xcluster_cni_lib.plugin.protocol import (
    DECODE_FAILURE,
    DELEGATE_FAILED,
    INCOMPATIBLE_VERSION,
    INTERNAL_ERROR,
    INVALID_CONFIG,
    IO_FAILURE,
    LATEST_VERSION,
    NO_DELEGATE,
    NO_FAMILY,
    NOT_AVAILABLE,
    UNKNOWN_CONTAINER,
    CniError,
    check_env,
    check_version,
    convert_result,
    parse_cni_args,
    parse_command,
    version_info,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # (collections.abc imports all of collections)
    from collections.abc import Mapping
    from typing import Any, BinaryIO

    from xcluster_cni_lib.plugin.served import LogEmitter, OwnNodeLookup

DELEGATE = "host-local"
# host-local 1.1.1 speaks up to 1.0.0; 1.1.0 results have the 1.0.0 shape.
_DELEGATE_VERSION = {"1.1.0": "1.0.0"}


class _Call:
    """One invocation: parsed inputs and where to answer."""

    def __init__(
        self,
        *,
        env: Mapping[str, str],
        netconf: dict[str, Any],
        conf: IpamConfig,
        log: Log,
        stdout: BinaryIO,
        allow_exec: bool,
        own_node: OwnNodeLookup | None = None,
    ) -> None:
        self.env = env
        self.netconf = netconf
        self.conf = conf
        self.log = log
        self.stdout = stdout
        self.allow_exec = allow_exec
        # served by the agent: its own node (unless the config names a nodes file)
        self.own_node = own_node if conf.nodes_file is None else None

    def expected_node(self) -> str | None:
        """The node a cache must be for, when known without a lookup."""
        if self.conf.node_name:
            return self.conf.node_name
        if self.own_node is not None:
            return self.own_node.name
        return self.env.get("NODE_NAME")

    def build_cache(self) -> dict[str, Any]:
        from xcluster_cni_lib.plugin.resolve import build_cache

        return build_cache(self.conf, self.env, self.log, own_node=self.own_node)

    def write(self, obj: object) -> None:
        self.stdout.write(json.dumps(obj).encode() + b"\n")
        self.stdout.flush()

    def delegate_env(self) -> dict[str, str]:
        """The original env; CNI_ARGS keeps only its well-formed ``K=V`` items (host-local
        fails on any other, even with IgnoreUnknown) and gains IgnoreUnknown=1 when it
        carries keys host-local does not know and lacks it (runtimes other than
        containerd/CRI-O)."""
        env = dict(self.env)
        args = env.get("CNI_ARGS", "")
        if args:
            items = [i for i in args.split(";") if i.partition("=")[0] and "=" in i]
            if not any(i.startswith("IgnoreUnknown=") for i in items):
                items.insert(0, "IgnoreUnknown=1")
            env["CNI_ARGS"] = ";".join(items)
        return env

    def delegate_stdin(self, ranges: list[RangeSet]) -> bytes:
        conf = self.conf
        ipam: dict[str, Any] = {"type": DELEGATE, "ranges": [rs for _, rs in ranges]}
        if conf.data_dir is not None:
            ipam["dataDir"] = conf.data_dir
        if conf.routes is not None:
            ipam["routes"] = conf.routes
        if conf.resolv_conf is not None:
            ipam["resolvConf"] = conf.resolv_conf
        netconf = dict(self.netconf)
        netconf["ipam"] = ipam
        netconf["cniVersion"] = _DELEGATE_VERSION.get(conf.cni_version, conf.cni_version)
        return json.dumps(netconf).encode()

    def can_exec(self) -> bool:
        return self.allow_exec and self.conf.cni_version not in _DELEGATE_VERSION

    def find_delegate(self) -> str:
        try:
            return pluginexec.find_plugin(DELEGATE, self.env.get("CNI_PATH", ""))
        except FileNotFoundError as e:
            raise CniError(NO_DELEGATE, str(e)) from None

    def cached(self) -> tuple[dict[str, Any], list[RangeSet]] | None:
        """The cache, or None when missing or invalid (logged)."""
        try:
            return read_cache(self.conf.cache_path, plugin=self.conf.plugin)
        except InvalidCache as e:
            self.log.warning(f"{e}; ignoring it")
            return None

    def relay_error(self, rc: int, out: bytes) -> int:
        """Pass host-local's error object on, in our version; wrap anything else."""
        try:
            err = json.loads(out)
            if not isinstance(err, dict) or not isinstance(err.get("code"), int):
                raise ValueError
        except ValueError:
            text = out.decode("utf-8", "replace").strip()
            err = CniError(DELEGATE_FAILED, f"{DELEGATE} failed (exit {rc})", text).to_json("")
        err["cniVersion"] = self.conf.cni_version
        self.log.error(f"{DELEGATE} failed: {err}")
        self.write(err)
        return rc if 0 < rc < 256 else 1


# --- ADD --------------------------------------------------------------------------------


def _usable_cache(call: _Call) -> list[RangeSet] | None:
    cached = call.cached()
    if cached is None:
        return None
    doc, ranges = cached
    conf = call.conf
    if doc["inputs"] != conf.inputs():
        call.log.info(f"cache {conf.cache_path} was built from other config; rebuilding")
        return None
    expected = call.expected_node()
    if expected and doc["node"] != expected:
        call.log.info(f"cache {conf.cache_path} is for node {doc['node']}; rebuilding")
        return None
    return ranges


def _select(call: _Call, ranges: list[RangeSet]) -> list[RangeSet]:
    allowed = call.conf.ipv4_namespaces
    if allowed is None:
        return ranges
    namespace = parse_cni_args(call.env.get("CNI_ARGS", "")).get("K8S_POD_NAMESPACE")
    if namespace is None or namespace in allowed:
        return ranges
    selected = [rs for rs in ranges if rs[0] != 4]
    if not selected:
        raise CniError(
            NO_FAMILY,
            f"namespace {namespace} is not in ipv4-namespaces and the node has no IPv6 subnet",
            f"ipv4-namespaces={list(allowed)!r}",
        )
    return selected


def _add(call: _Call) -> int:
    conf = call.conf
    delegate = call.find_delegate()
    ranges = _usable_cache(call)
    hit = ranges is not None
    written = None  # the cache file this call wrote, if any
    if ranges is None:
        from xcluster_cni_lib.plugin.cache import sweep_temp_files, write_cache
        from xcluster_cni_lib.plugin.resolve import validate_ranges

        doc = call.build_cache()
        ranges = validate_ranges(doc["ranges"])
        selected = _select(call, ranges)  # before writing: a refusal writes nothing
        swept = sweep_temp_files(conf.network_dir)
        if swept:
            call.log.warning(f"removed temp files a killed writer left: {swept}")
        written = write_cache(conf.cache_path, doc)
        call.log.info(f"cache miss: node {doc['node']} ranges {doc['ranges']}")
    else:
        selected = _select(call, ranges)
    data = call.delegate_stdin(selected)
    env = call.delegate_env()
    if hit and call.can_exec():
        pluginexec.exec_plugin(delegate, stdin=data, env=env)
    rc, out = pluginexec.run_plugin(delegate, stdin=data, env=env)
    if rc != 0:
        if written is not None:  # only the cache this call wrote: never a concurrent one
            from xcluster_cni_lib.plugin.cache import remove_cache

            remove_cache(conf.cache_path, written)
        return call.relay_error(rc, out)
    try:
        result = convert_result(json.loads(out), conf.cni_version)
        call.write(result)
    except Exception as e:
        call.log.error(f"after a successful {DELEGATE} ADD: {e!r}; releasing the address")
        _delegate_del(call, delegate, ranges)
        raise CniError(DELEGATE_FAILED, f"{DELEGATE} answered an unusable result: {e}") from None
    return 0


# --- DEL / CHECK ------------------------------------------------------------------------


def _delegate_del(call: _Call, delegate: str, ranges: list[RangeSet]) -> bool:
    env = {**call.delegate_env(), "CNI_COMMAND": "DEL"}
    rc, out = pluginexec.run_plugin(delegate, stdin=call.delegate_stdin(ranges), env=env)
    if rc != 0:
        call.log.warning(f"{DELEGATE} DEL failed ({rc}): {out.decode('utf-8', 'replace')}")
    return rc == 0


def _del(call: _Call) -> int:
    from xcluster_cni_lib.plugin import store

    orphans = store.release_orphans(call.conf.network_dir)
    if orphans:
        call.log.warning(f"released reservations left empty by a killed host-local: {orphans}")
    cached = call.cached()
    if cached is not None:
        try:
            delegate = call.find_delegate()
        except CniError as e:
            call.log.warning(f"{e.msg}; releasing from the data directory directly")
        else:
            if call.can_exec():
                env = call.delegate_env()
                pluginexec.exec_plugin(delegate, stdin=call.delegate_stdin(cached[1]), env=env)
            if _delegate_del(call, delegate, cached[1]):
                return 0
    released = store.release_by_id(
        call.conf.network_dir, call.env["CNI_CONTAINERID"], call.env["CNI_IFNAME"]
    )
    call.log.info(f"DEL without {DELEGATE}: released {released or 'nothing'}")
    return 0


def _check(call: _Call) -> int:
    conf = call.conf
    if conf.cni_version in ("0.3.0", "0.3.1"):
        raise CniError(
            INCOMPATIBLE_VERSION, f"CHECK is not defined for cniVersion {conf.cni_version}"
        )
    cached = call.cached()
    if cached is not None:
        delegate = call.find_delegate()
        data, env = call.delegate_stdin(cached[1]), call.delegate_env()
        if call.can_exec():
            pluginexec.exec_plugin(delegate, stdin=data, env=env)
        rc, out = pluginexec.run_plugin(delegate, stdin=data, env=env)
        return call.relay_error(rc, out) if rc != 0 else 0
    from xcluster_cni_lib.plugin import store

    cid, ifname = call.env["CNI_CONTAINERID"], call.env["CNI_IFNAME"]
    if any(store.matches(r, cid, ifname) for r in store.reservations(conf.network_dir)):
        return 0
    raise CniError(UNKNOWN_CONTAINER, f"no address reserved for container {cid} interface {ifname}")


# --- GC / STATUS ------------------------------------------------------------------------


def _gc(call: _Call) -> int:
    netconf = call.netconf
    key = "cni.dev/valid-attachments"
    if key not in netconf and "cni.dev/attachments" in netconf:
        key = "cni.dev/attachments"
    attachments = netconf.get(key)
    if not isinstance(attachments, list) or not all(
        isinstance(a, dict)
        and isinstance(a.get("containerID"), str)
        and isinstance(a.get("ifname"), str)
        for a in attachments
    ):
        raise CniError(
            INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments: a list of {containerID, ifname}",
            repr(attachments),
        )
    from xcluster_cni_lib.plugin import store

    released = store.gc(
        call.conf.network_dir, {(a["containerID"], a["ifname"]) for a in attachments}
    )
    if released:
        call.log.info(f"GC released {released}")
    return 0


def _status(call: _Call) -> int:
    if call.own_node is not None:  # served: ready once the agent knows its node
        try:
            call.own_node()
        except CniError as e:
            raise CniError(NOT_AVAILABLE, e.msg, e.details) from None
    cached = call.cached()
    if cached is not None:
        ranges = cached[1]
    else:
        from xcluster_cni_lib.plugin.resolve import validate_ranges

        try:
            ranges = validate_ranges(call.build_cache()["ranges"])
        except CniError as e:
            raise CniError(NOT_AVAILABLE, f"subnets unknown: {e.msg}", e.details) from None
    from xcluster_cni_lib.plugin.usage import exhausted

    full = exhausted(call.conf.network_dir, ranges)
    if full:
        raise CniError(NOT_AVAILABLE, "no free address in " + ", ".join(full))
    return 0


_VERBS = {"ADD": _add, "DEL": _del, "CHECK": _check, "GC": _gc, "STATUS": _status}


# --- entry ------------------------------------------------------------------------------


def run(
    plugin: str,
    *,
    env: Mapping[str, str],
    stdin: bytes,
    stdout: BinaryIO,
    allow_exec: bool = False,
    own_node: OwnNodeLookup | None = None,
    log_to: LogEmitter | None = None,
) -> int:
    """Run one plugin call; returns the exit code. Writes only the result or one error
    object to ``stdout``. With ``allow_exec`` this process may become host-local.

    An agent serving the verbs passes ``own_node`` (its own Node: the call never reads
    the API server or the kubeconfig) and ``log_to`` (where log lines go, unless the
    config names a ``logfile``)."""
    error_version = LATEST_VERSION
    log = Log(plugin, emit=log_to)
    try:
        command = parse_command(env)
        if command == "VERSION":
            version = LATEST_VERSION
            try:
                doc = json.loads(stdin) if stdin.strip() else {}
                if isinstance(doc, dict) and doc.get("cniVersion"):
                    version = check_version(doc.get("cniVersion"))
            except (ValueError, CniError):
                pass
            stdout.write(json.dumps(version_info(version)).encode() + b"\n")
            return 0
        try:
            netconf = json.loads(stdin)
        except ValueError as e:
            raise CniError(DECODE_FAILURE, "cannot decode the network config", str(e)) from None
        if not isinstance(netconf, dict):
            raise CniError(DECODE_FAILURE, "the network config is not a JSON object")
        version = check_version(netconf.get("cniVersion"))
        error_version = version
        check_env(command, env)
        if command in ("ADD", "CHECK"):  # code 4 naming the bad item (DEL must not fail)
            parse_cni_args(env.get("CNI_ARGS", ""))
        conf = parse_config(netconf, plugin=plugin, cni_version=version, env=env)
        log = Log(plugin, logfile=conf.logfile, level=conf.loglevel, emit=log_to)
        call = _Call(
            env=env,
            netconf=netconf,
            conf=conf,
            log=log,
            stdout=stdout,
            allow_exec=allow_exec,
            own_node=own_node,
        )
        log.debug(f"{command} {env.get('CNI_CONTAINERID', '')} {env.get('CNI_IFNAME', '')}")
        return _VERBS[command](call)
    except CniError as e:
        error = e
    except OSError as e:
        error = CniError(IO_FAILURE, f"I/O failure: {e}")
    except Exception as e:
        error = CniError(INTERNAL_ERROR, f"internal error: {e!r}")
    log.error(f"code {error.code}: {error.msg} {error.details}".rstrip())
    stdout.write(json.dumps(error.to_json(error_version)).encode() + b"\n")
    stdout.flush()
    return 1


def main(plugin: str) -> int:
    """The executable: real env, stdin and stdout; may exec host-local."""
    import os
    import sys

    stdin = sys.stdin.buffer.read()
    return run(plugin, env=os.environ, stdin=stdin, stdout=sys.stdout.buffer, allow_exec=True)
