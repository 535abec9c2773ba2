"""``xcluster-cni doctor``: is this node's networking right? The checks, pure.

Each check takes the facts ``tools.doctorfacts.gather`` read from this node (files, the
IPAM socket, the API server or a nodes file, the kernel) as plain values and returns one
``Check``: ``OK``, ``WARN`` or ``FAIL``, a one-line summary, a one-line hint saying what to
do, and details (the difference, one line each). ``run_checks`` runs them all in a fixed
order; the exit code is the worst status (0 OK, 1 WARN, 2 FAIL). Every check and hint is
in ``docs/doctor.md``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from xcluster_cni_lib.core.overlay import Entries, plan_entries
from xcluster_cni_lib.core.planning import route_sort_key
from xcluster_cni_lib.core.values import IPNetwork, Route
from xcluster_cni_lib.install import plan as install_plan

OK = "OK"
WARN = "WARN"
FAIL = "FAIL"
EXIT_CODES = {OK: 0, WARN: 1, FAIL: 2}
# The plugins a node running xcluster-cni needs in the CNI bin dir: the IPAM names (the
# host shim) and the reference plugins the conflist and the served IPAM use.
PLUGINS = (*install_plan.SHIM_PLUGIN_NAMES, *install_plan.REFERENCE_PLUGINS)
# ELF e_machine values of the architectures plugins are built for (and a few others, to
# name what was found).
ELF_MACHINES = {
    3: "x86 (i386)",
    8: "mips",
    20: "ppc",
    21: "ppc64",
    22: "s390x",
    40: "arm",
    62: "x86-64",
    183: "arm64",
    243: "riscv64",
}
MAX_LISTED = 20  # differences listed in details; the rest is counted


@attrs.frozen
class Check:
    """The result of one check."""

    name: str
    status: str
    summary: str
    hint: str = ""
    details: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "status": self.status,
            "summary": self.summary,
            "hint": self.hint,
            "details": list(self.details),
        }


@attrs.frozen
class PluginFile:
    """A plugin in the CNI bin dir: present, executable, its ELF machine (None: not an
    ELF file, or unreadable: ``error``)."""

    name: str
    present: bool
    executable: bool = False
    machine: int | None = None
    error: str | None = None


@attrs.frozen
class IpamProbe:
    """The STATUS call on the IPAM socket: ``present`` (a socket file is at ``path``);
    the answer's exit code and stdout, or the ``error`` reaching it."""

    path: str
    present: bool
    code: int | None = None
    stdout: bytes = b""
    error: str | None = None


@attrs.frozen
class NodesRead:
    """Where the nodes came from (``source``: the API server or a nodes file), the error
    reading them, how many, and this node: its name and whether it is among them."""

    source: str
    error: str | None = None
    count: int = 0
    own: str | None = None
    own_found: bool = False
    own_warning: str | None = None


@attrs.frozen
class OverlayState:
    """The vxlan device as found (``kind`` None: no such link) and its entries, wanted
    and present (None: not read)."""

    device: str
    kind: str | None = None
    up: bool = False
    wanted: Entries | None = None
    present: Entries | None = None
    error: str | None = None


@attrs.frozen
class PolicyTables:
    """The instance's NetworkPolicy tables (``core.policynft.table_name``) as ``nft -j list
    table`` lists them (``None``: no such table), the pods' bridge (``POLICY_BRIDGE``;
    ``None``: pods are not bridged), whether that link exists (``None``: not looked up)
    and its MAC address, or the ``error`` reading them. ``br_netfilter``: same-node traffic
    is judged through br_netfilter (``POLICY_SAME_NODE=br-netfilter`` on a node that
    shows bridged frames to the IP hooks), so no bridge table is needed."""

    name: str
    inet: tuple[Mapping[str, Any], ...] | None = None
    bridge: tuple[Mapping[str, Any], ...] | None = None
    bridge_link: str | None = "cbr0"
    bridged: bool | None = None
    bridge_mac: str | None = None
    error: str | None = None
    br_netfilter: bool = False


@attrs.frozen
class DoctorFacts:
    """Everything the checks look at, read once (``tools.doctorfacts.gather``)."""

    conf_dir: str
    conf_files: Mapping[str, bytes] | None  # name -> content; None: no such directory
    bin_dir: str
    plugins: tuple[PluginFile, ...] = ()
    host_machine: int | None = None
    ipam: IpamProbe | None = None
    nodes: NodesRead | None = None
    protocol: int = 202
    protocol_owner: str | None = None  # its name in rt_protos, if registered
    desired: tuple[Route, ...] | None = None  # None: the nodes could not be read
    present: tuple[Route, ...] | None = None  # None: the kernel could not be read
    present_error: str | None = None
    holders: Mapping[str, tuple[int, ...]] = attrs.field(factory=dict)  # dst -> protocols
    pod_cidrs: frozenset[IPNetwork] = frozenset()  # every node's
    overlay: OverlayState | None = None  # None: OVERLAY=none
    masquerade: bool = False
    masquerade_table: str = ""
    masquerade_present: bool | None = None
    masquerade_error: str | None = None
    network_policy: bool = False  # NETWORK_POLICY
    policy: PolicyTables | None = None  # None: not read
    expected_mtu: int | None = None
    mtu_source: str = ""
    mtu_error: str | None = None


def worst(statuses: Iterable[str]) -> str:
    """The worst of ``statuses`` (OK when there is none)."""
    return max(statuses, key=EXIT_CODES.__getitem__, default=OK)


def exit_code(checks: Iterable[Check]) -> int:
    """0 all OK, 1 a WARN, 2 a FAIL (the worst wins)."""
    return EXIT_CODES[worst(c.status for c in checks)]


def _listed(lines: Sequence[str]) -> tuple[str, ...]:
    if len(lines) <= MAX_LISTED:
        return tuple(lines)
    return (*lines[:MAX_LISTED], f"... and {len(lines) - MAX_LISTED} more")


# -- the CNI config ------------------------------------------------------------------------


def config_files(files: Mapping[str, bytes]) -> list[str]:
    """The files of the CNI config dir a runtime reads, in the order it reads them (by
    name); the first one is the network it uses."""
    return sorted(n for n in files if n.endswith(install_plan.CONFIG_SUFFIXES))


def our_config(files: Mapping[str, bytes]) -> str | None:
    """The xcluster config of the directory (the installer's rule,
    ``install.plan.find_xcluster_config``)."""
    return install_plan.find_xcluster_config(files)


def parse_config(content: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """``(config, None)`` or ``(None, why it is not a usable config)``."""
    try:
        doc = json.loads(content)
    except (ValueError, UnicodeDecodeError) as e:
        return None, f"not valid JSON: {e}"
    if not isinstance(doc, dict):
        return None, "not a JSON object"
    return doc, None


def check_conflist(facts: DoctorFacts) -> Check:
    """The CNI config: present, valid JSON and the first the runtime reads."""
    name = "conflist"
    if facts.conf_files is None:
        return Check(
            name,
            FAIL,
            f"CNI config dir {facts.conf_dir} does not exist",
            "give the runtime's directory with --cni-conf-dir (default /etc/cni/net.d)",
        )
    ours = our_config(facts.conf_files)
    if ours is None:
        return Check(
            name,
            FAIL,
            f"no xcluster-cni config in {facts.conf_dir} (expected {install_plan.CONFLIST_NAME})",
            "the installer writes it: check the DaemonSet's init container "
            "(xcluster-cni install) and INSTALL_K8S_NET",
        )
    path = f"{facts.conf_dir}/{ours}"
    doc, problem = parse_config(facts.conf_files[ours])
    if doc is None:
        return Check(
            name,
            FAIL,
            f"{path}: {problem}",
            "the runtime cannot read it: remove it and restart the xcluster-cni pod to "
            "have it written again",
        )
    plugins = doc.get("plugins")
    if ours.endswith(".conflist") and not isinstance(plugins, list):
        return Check(
            name,
            FAIL,
            f"{path}: a conflist without a plugins list",
            "remove it and restart the xcluster-cni pod to have it written again",
        )
    first = config_files(facts.conf_files)[0]
    if first != ours:
        return Check(
            name,
            FAIL,
            f"{first} comes before {ours}: the runtime uses {first}",
            f"remove or rename {facts.conf_dir}/{first} (runtimes use the first config by name)",
        )
    return Check(name, OK, f"{path}: valid, first of {len(config_files(facts.conf_files))}")


def conflist_document(facts: DoctorFacts) -> dict[str, Any] | None:
    """Our config, parsed, or None."""
    if facts.conf_files is None:
        return None
    ours = our_config(facts.conf_files)
    if ours is None:
        return None
    return parse_config(facts.conf_files[ours])[0]


def _plugin_list(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    plugins = doc.get("plugins")
    items = plugins if isinstance(plugins, list) else [doc]
    return [p for p in items if isinstance(p, Mapping)]


def conflist_ipam(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The IPAM section of the config's plugin that uses one of our IPAM types."""
    for plugin in _plugin_list(doc or {}):
        ipam = plugin.get("ipam")
        if isinstance(ipam, Mapping) and ipam.get("type") in install_plan.OUR_IPAM_TYPES:
            return dict(ipam)
    return None


def conflist_mtu(doc: Mapping[str, Any] | None) -> int | None:
    """The ``mtu`` of the config's bridge plugin (None: none set)."""
    for plugin in _plugin_list(doc or {}):
        if plugin.get("type") == "bridge":
            mtu = plugin.get("mtu")
            return mtu if isinstance(mtu, int) and not isinstance(mtu, bool) else None
    return None


# -- plugins -------------------------------------------------------------------------------


def elf_machine(header: bytes) -> int | None:
    """The ``e_machine`` of an ELF header (its first 20 bytes or more); None when the
    bytes are not an ELF header."""
    if len(header) < 20 or header[:4] != b"\x7fELF" or header[5] not in (1, 2):
        return None
    if header[5] == 1:
        return int.from_bytes(header[18:20], "little")
    return int.from_bytes(header[18:20], "big")


def machine_name(machine: int | None) -> str:
    if machine is None:
        return "unknown"
    return ELF_MACHINES.get(machine, f"machine {machine}")


def check_plugins(facts: DoctorFacts) -> Check:
    """Every plugin present, executable and built for this machine."""
    name = "plugins"
    missing = [p.name for p in facts.plugins if not p.present]
    unreadable = [f"{p.name}: {p.error}" for p in facts.plugins if p.present and p.error]
    not_exec = [p.name for p in facts.plugins if p.present and not p.error and not p.executable]
    wrong = [
        f"{p.name}: {machine_name(p.machine)}"
        for p in facts.plugins
        if p.present
        and not p.error
        and p.machine is not None
        and facts.host_machine is not None
        and p.machine != facts.host_machine
    ]
    not_elf = [p.name for p in facts.plugins if p.present and not p.error and p.machine is None]
    where = facts.bin_dir
    if missing:
        return Check(
            name,
            FAIL,
            f"missing in {where}: {', '.join(missing)}",
            "the installer copies the shim and the reference plugins: restart the "
            "xcluster-cni pod, or give the runtime's directory with --cni-bin-dir",
        )
    if unreadable:
        return Check(
            name, FAIL, f"unreadable in {where}", "check the files' permissions", tuple(unreadable)
        )
    if not_exec:
        return Check(
            name,
            FAIL,
            f"not executable in {where}: {', '.join(not_exec)}",
            f"chmod 0755 them (the runtime runs them), e.g. chmod 0755 {where}/{not_exec[0]}",
        )
    if wrong:
        return Check(
            name,
            FAIL,
            f"built for another architecture than this {machine_name(facts.host_machine)} "
            f"machine: {', '.join(w.split(':')[0] for w in wrong)}",
            "install the plugins of this node's architecture (the image's init container "
            "picks them by platform.machine())",
            tuple(wrong),
        )
    if not_elf:
        return Check(
            name,
            WARN,
            f"not ELF binaries (scripts?): {', '.join(not_elf)}",
            "the installer puts static binaries there; a script works only if its "
            "interpreter is on the host",
        )
    return Check(
        name,
        OK,
        f"{len(facts.plugins)} plugins in {where}, executable, {machine_name(facts.host_machine)}",
    )


# -- the IPAM socket -------------------------------------------------------------------------


def _error_message(stdout: bytes) -> str:
    try:
        doc = json.loads(stdout)
    except (ValueError, UnicodeDecodeError):
        return stdout.decode("utf-8", "replace").strip()[:200] or "(no output)"
    if isinstance(doc, dict) and "code" in doc:
        return f"code {doc.get('code')}: {doc.get('msg', '')} {doc.get('details', '')}".strip()
    return json.dumps(doc)[:200]


def check_ipam(facts: DoctorFacts) -> Check:
    """The agent's IPAM socket answers STATUS with success."""
    name = "ipam"
    probe = facts.ipam
    if probe is None:
        return Check(name, WARN, "not checked", "")
    if not probe.present:
        return Check(
            name,
            FAIL,
            f"no IPAM socket at {probe.path}",
            "the agent serves it with IPAM_SOCKET set: is the xcluster-cni pod running "
            "here? (--socket for another path)",
        )
    if probe.error is not None or probe.code is None:
        return Check(
            name,
            FAIL,
            f"IPAM socket {probe.path}: {probe.error}",
            "the agent is not answering: look at the xcluster-cni pod's log, restart it",
        )
    if probe.code != 0:
        return Check(
            name,
            FAIL,
            f"STATUS failed: {_error_message(probe.stdout)}",
            "pods cannot get addresses: the message says why (own node unknown, no free "
            "address, host-local missing)",
        )
    return Check(name, OK, f"{probe.path} answers STATUS: ready")


# -- the API server (or nodes file) ------------------------------------------------------------


def check_api(facts: DoctorFacts) -> Check:
    """The nodes could be read, and this node is among them."""
    name = "api"
    nodes = facts.nodes
    if nodes is None:
        return Check(name, WARN, "not checked", "")
    if nodes.error is not None:
        return Check(
            name,
            FAIL,
            f"{nodes.source}: {nodes.error}",
            "check KUBECONFIG (or the pod's service account) and that the API server is "
            "reachable from this node; --nodes-file reads a node list instead",
        )
    if nodes.own is None:
        return Check(
            name,
            WARN,
            f"{nodes.source}: {nodes.count} nodes; this node is unknown",
            "set NODE_NAME or give --node (without either the node is found by /etc/machine-id)",
            (nodes.own_warning,) if nodes.own_warning else (),
        )
    if not nodes.own_found:
        return Check(
            name,
            FAIL,
            f"{nodes.source}: node {nodes.own} is not among the {nodes.count} nodes",
            "check --node / NODE_NAME: it must be this node's Kubernetes name",
        )
    return Check(name, OK, f"{nodes.source}: {nodes.count} nodes, node {nodes.own} found")


# -- routes ----------------------------------------------------------------------------------


def _key(route: Route) -> tuple[IPNetwork, Any]:
    return route.dst, route.gateway


def describe_route(route: Route) -> str:
    via = f"via {route.gateway}"
    if route.device:
        via += f" dev {route.device}"
    return f"{route.dst} {via}" + (f" ({route.node})" if route.node else "")


def route_difference(
    desired: Iterable[Route], present: Iterable[Route]
) -> tuple[list[Route], list[tuple[Route, Route]], list[Route]]:
    """``(missing, wrong, extra)``: wanted routes with no route of ours to their
    destination, ours going elsewhere than wanted (wanted, present), ours to a destination
    nobody wants. Compared by destination and gateway (the kernel's view of a route via
    the overlay device is compared like the plan's)."""
    want = {r.dst: r for r in desired}
    have = {r.dst: r for r in present}
    missing = [want[d] for d in want if d not in have]
    wrong = [(want[d], have[d]) for d in want if d in have and _key(want[d]) != _key(have[d])]
    extra = [have[d] for d in have if d not in want]
    return (
        sorted(missing, key=route_sort_key),
        sorted(wrong, key=lambda p: route_sort_key(p[0])),
        sorted(extra, key=route_sort_key),
    )


def check_routes(facts: DoctorFacts) -> Check:
    """The kernel's routes of our protocol equal the routes the nodes call for."""
    name = "routes"
    proto = facts.protocol
    if facts.present is None:
        return Check(
            name,
            WARN,
            f"routes not read: {facts.present_error}",
            "run doctor as root in the node's network namespace (hostNetwork pod)",
        )
    if facts.desired is None:
        return Check(
            name,
            WARN,
            f"not compared: the nodes could not be read ({len(facts.present)} routes of "
            f"protocol {proto} present)",
            "fix the api check first",
        )
    missing, wrong, extra = route_difference(facts.desired, facts.present)
    details: list[str] = []
    for r in missing:
        held = facts.holders.get(str(r.dst))
        by = f"; held by protocol {','.join(map(str, held))}" if held else ""
        details.append(f"missing: {describe_route(r)}{by}")
    details += [f"wrong: {describe_route(h)}, want {describe_route(w)}" for w, h in wrong]
    details += [f"extra: {describe_route(r)}" for r in extra]
    counts = f"{len(facts.desired)} wanted, {len(facts.present)} present (protocol {proto})"
    if missing or wrong:
        conflicts = any(facts.holders.get(str(r.dst)) for r in missing)
        hint = (
            "another program's route holds a destination: remove it, or change PROTOCOL"
            if conflicts
            else "the agent puts them right within a resync: is it running here? see its "
            "log and /readyz"
        )
        return Check(
            name,
            FAIL,
            f"{len(missing)} missing, {len(wrong)} wrong, {len(extra)} extra; {counts}",
            hint,
            _listed(details),
        )
    if extra:
        return Check(
            name,
            WARN,
            f"{len(extra)} extra; {counts}",
            "the agent removes routes nobody wants at its next full sync (after its first "
            "complete node list): is it running here?",
            _listed(details),
        )
    return Check(name, OK, f"{counts}: equal")


# -- overlay and masquerade --------------------------------------------------------------------


def check_overlay(facts: DoctorFacts) -> Check:
    """With OVERLAY=vxlan: the device is there, up, and has exactly the wanted entries."""
    name = "overlay"
    state = facts.overlay
    if state is None:
        return Check(name, OK, "OVERLAY=none: no overlay device needed")
    if state.error is not None:
        return Check(name, WARN, f"{state.device}: not read: {state.error}", "run doctor as root")
    if state.kind is None:
        return Check(
            name,
            FAIL,
            f"OVERLAY=vxlan but there is no device {state.device}",
            "the agent creates it: is it running here with the same OVERLAY/VXLAN_DEVICE?",
        )
    if state.kind != "vxlan":
        return Check(
            name,
            FAIL,
            f"{state.device} is a {state.kind or 'plain'} link, not vxlan",
            f"another program owns {state.device}: set VXLAN_DEVICE to a free name",
        )
    if not state.up:
        return Check(name, FAIL, f"{state.device} is down", f"ip link set {state.device} up")
    if state.wanted is None or state.present is None:
        return Check(
            name, WARN, f"{state.device} up; entries not compared", "fix the api check first"
        )
    diff = plan_entries(state.wanted, state.present)
    wanted = len(state.wanted.neighbours) + len(state.wanted.fdb)
    details = [f"missing neighbour {n.address} lladdr {n.mac}" for n in diff.put_neighbours]
    details += [f"missing fdb {f.mac} dst {f.dst}" for f in diff.put_fdb]
    details += [f"extra neighbour {n.address} lladdr {n.mac}" for n in diff.delete_neighbours]
    details += [f"extra fdb {f.mac} dst {f.dst}" for f in diff.delete_fdb]
    if diff.put_neighbours or diff.put_fdb:
        return Check(
            name,
            FAIL,
            f"{state.device}: {len(diff.put_neighbours) + len(diff.put_fdb)} entries missing "
            f"or wrong of {wanted}",
            "the agent writes them: is it running here? see its log",
            _listed(details),
        )
    if diff:
        return Check(
            name,
            WARN,
            f"{state.device}: {len(diff)} extra entries",
            "the agent removes them at its next sync: is it running here?",
            _listed(details),
        )
    return Check(name, OK, f"{state.device}: vxlan, up, {wanted} entries as wanted")


def check_masquerade(facts: DoctorFacts) -> Check:
    """With MASQUERADE=true the nftables table is there; without, it is not."""
    name = "masquerade"
    table = f"inet {facts.masquerade_table}"
    if facts.masquerade_error is not None:
        state = "on" if facts.masquerade else "off"
        return Check(
            name,
            WARN if not facts.masquerade else FAIL,
            f"MASQUERADE {state}; table {table} not read: {facts.masquerade_error}",
            "nft (nftables) must be installed and doctor run as root",
        )
    if facts.masquerade and not facts.masquerade_present:
        return Check(
            name,
            FAIL,
            f"MASQUERADE=true but table {table} is missing",
            "the agent creates it: is it running here? see its log (nft errors)",
        )
    if not facts.masquerade and facts.masquerade_present:
        return Check(
            name,
            WARN,
            f"MASQUERADE is off but table {table} is present",
            f"left by an earlier run with MASQUERADE=true: nft delete table {table}",
        )
    if facts.masquerade:
        return Check(name, OK, f"table {table} present")
    return Check(name, OK, "MASQUERADE is off: no table")


# -- NetworkPolicy ---------------------------------------------------------------------------

#: The sets of the inet table holding the local pod addresses isolated per direction.
ISOLATION_SETS = {"ingress": ("ingress4", "ingress6"), "egress": ("egress4", "egress6")}


def _specs(objects: Sequence[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    """The specs of one kind (``set``, ``map``, ``chain``, ...) in an nft listing."""
    return [o[kind] for o in objects if isinstance(o.get(kind), Mapping)]


def forward_hooked(objects: Sequence[Mapping[str, Any]]) -> bool:
    """The listed inet table has its ``forward`` chain, hooked at forward."""
    return any(
        c.get("name") == "forward" and c.get("hook") == "forward" for c in _specs(objects, "chain")
    )


def element_counts(objects: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many elements each set and map of a listed table holds."""
    counts: dict[str, int] = {}
    for kind in ("set", "map"):
        for spec in _specs(objects, kind):
            elem = spec.get("elem")
            counts[str(spec.get("name"))] = len(elem) if isinstance(elem, list) else 0
    return counts


def redirect_macs(objects: Sequence[Mapping[str, Any]]) -> set[str]:
    """The addresses a listed bridge table's rules set as frames' destination MAC (the
    bridge's, when the table was written: ``core.policynft.bridge_rules``)."""
    found: set[str] = set()
    for rule in _specs(objects, "rule"):
        for expr in rule.get("expr") or ():
            mangle = expr.get("mangle") if isinstance(expr, Mapping) else None
            if not isinstance(mangle, Mapping):
                continue
            key = mangle.get("key")
            payload = key.get("payload") if isinstance(key, Mapping) else None
            if isinstance(payload, Mapping) and payload.get("field") == "daddr":
                found.add(str(mangle.get("value")).lower())
    return found


def check_policy(facts: DoctorFacts) -> Check:
    """With NETWORK_POLICY=true the inet table enforces (its forward chain is hooked) and,
    where pods are bridged, the bridge table is there; without, neither table is left."""
    name = "policy"
    state = facts.policy
    if state is None:
        return Check(name, WARN, "not checked", "")
    inet, bridge = f"inet {state.name}", f"bridge {state.name}"
    if not facts.network_policy:
        if state.error is not None:
            # a node without nft is fine when nothing is enforced
            return Check(name, OK, f"NETWORK_POLICY is off (tables not read: {state.error})")
        left = [
            t for t, listed in ((inet, state.inet), (bridge, state.bridge)) if listed is not None
        ]
        if left:
            deletes = "; ".join(f"nft delete table {t}" for t in left)
            return Check(
                name,
                WARN,
                f"NETWORK_POLICY is off but table {' and '.join(left)} is present: "
                "it still polices this node's pods",
                "left by an earlier run with NETWORK_POLICY=true: the agent deletes them when "
                f"it starts, so restart the xcluster-cni pod (or {deletes})",
            )
        return Check(name, OK, "NETWORK_POLICY is off: no tables")
    if state.error is not None:
        return Check(
            name,
            FAIL,
            f"NETWORK_POLICY=true; tables not read: {state.error}",
            "nft (nftables) must be installed and doctor run as root",
        )
    if state.inet is None:
        return Check(
            name,
            FAIL,
            f"NETWORK_POLICY=true but table {inet} is missing: no policy is enforced",
            "the agent writes it once it has listed pods, namespaces and networkpolicies: "
            "is it running here, with that RBAC (docs/install.md)? see its log and /readyz",
        )
    if not forward_hooked(state.inet):
        return Check(
            name,
            FAIL,
            f"table {inet} has no chain forward hooked at forward: no policy is enforced",
            "changed by someone else: the agent rewrites it within a second; is it running "
            "here? see its log",
        )
    counts = element_counts(state.inet)
    isolated = {d: sum(counts.get(s, 0) for s in sets) for d, sets in ISOLATION_SETS.items()}
    summary = (
        f"table {inet}: {isolated['ingress']} local pod addresses isolated for ingress, "
        f"{isolated['egress']} for egress, {sum(counts.values())} elements"
    )
    if state.bridge is None and state.br_netfilter:
        return Check(name, OK, f"{summary}; same-node traffic judged through br_netfilter")
    if state.bridge is None and state.bridge_link is not None and state.bridged:
        return Check(
            name,
            WARN,
            f"pods are bridged on {state.bridge_link} but table {bridge} is missing: traffic "
            "between pods of this node is not policed",
            f"the agent writes it when the link POLICY_BRIDGE={state.bridge_link} exists: "
            "is it running here with the same POLICY_BRIDGE? see its log",
            (summary,),
        )
    mac = (state.bridge_mac or "").lower()
    stale = sorted(redirect_macs(state.bridge) - {mac}) if state.bridge and mac else []
    if stale:
        return Check(
            name,
            FAIL,
            f"table {bridge} sends policed pods' frames to {', '.join(stale)} but "
            f"{state.bridge_link} has {mac}: same-node traffic of "
            "policed pods is lost",
            "the agent pins the bridge's address and writes the current one at its next "
            "sync: is it running here? see its log (pod bridge address)",
            (summary,),
        )
    if state.bridge is not None:
        where = f"table {bridge}" + (f" for {state.bridge_link}" if state.bridge_link else "")
    elif state.bridge_link is None:
        where = "POLICY_BRIDGE is empty: no bridge table needed"
    elif state.bridged is None:
        where = f"no table {bridge} ({state.bridge_link} not looked up)"
    else:
        where = f"no {state.bridge_link} here: no bridge table needed"
    return Check(name, OK, f"{summary}; {where}")


# -- MTU -----------------------------------------------------------------------------------------


def check_mtu(facts: DoctorFacts) -> Check:
    """The conflist's bridge MTU equals what the node's interface allows (less the
    overlay's overhead)."""
    name = "mtu"
    doc = conflist_document(facts)
    if doc is None:
        return Check(
            name, WARN, "not checked: no readable conflist", "fix the conflist check first"
        )
    mtu = conflist_mtu(doc)
    if facts.expected_mtu is None:
        return Check(
            name,
            WARN,
            f"conflist mtu {mtu}; the node's MTU is unknown: {facts.mtu_error}",
            "fix the api check first",
        )
    want = facts.expected_mtu
    if mtu is None:
        return Check(
            name,
            WARN,
            f"the conflist sets no bridge mtu ({facts.mtu_source} allows {want})",
            "the bridge plugin then uses 1500: set MTU for the installer",
        )
    if mtu > want:
        return Check(
            name,
            FAIL,
            f"conflist mtu {mtu} > {want} ({facts.mtu_source})",
            "pods send packets too big for the path: remove the conflist and restart the "
            "xcluster-cni pod (or set MTU) to have it written with the right MTU",
        )
    if mtu < want:
        return Check(
            name,
            WARN,
            f"conflist mtu {mtu} < {want} ({facts.mtu_source})",
            "works, with smaller packets than the path allows: remove the conflist and "
            "restart the xcluster-cni pod to have it written again",
        )
    return Check(name, OK, f"conflist mtu {mtu} = {facts.mtu_source}")


# -- the protocol number ------------------------------------------------------------------------


def check_protocol(facts: DoctorFacts) -> Check:
    """No other program uses our route protocol number: not registered under another
    name in rt_protos, no route of it to anything but a node's pod CIDR."""
    name = "protocol"
    proto = facts.protocol
    foreign: list[Route] = []
    if facts.present is not None and facts.nodes is not None and facts.nodes.error is None:
        foreign = [r for r in facts.present if not any(_within(r.dst, c) for c in facts.pod_cidrs)]
    if foreign:
        return Check(
            name,
            FAIL,
            f"{len(foreign)} routes of protocol {proto} go to no node's pod CIDR: "
            "another program uses this number",
            "give xcluster-cni its own number (PROTOCOL) or stop the other program; the "
            "agent deletes every route of its protocol nobody wants",
            _listed([describe_route(r) for r in foreign]),
        )
    if facts.protocol_owner is not None:
        return Check(
            name,
            WARN,
            f"protocol {proto} is registered as {facts.protocol_owner!r} in rt_protos",
            "make sure that program does not run here, or choose another PROTOCOL",
        )
    return Check(
        name, OK, f"protocol {proto}: not registered to another program, no foreign routes"
    )


def _within(dst: IPNetwork, cidr: IPNetwork) -> bool:
    return (
        dst.version == cidr.version
        and dst.prefixlen >= cidr.prefixlen
        and dst.network_address in cidr
    )


CHECKS: tuple[Callable[[DoctorFacts], Check], ...] = (
    check_conflist,
    check_plugins,
    check_ipam,
    check_api,
    check_routes,
    check_overlay,
    check_masquerade,
    check_policy,
    check_mtu,
    check_protocol,
)


def run_checks(facts: DoctorFacts) -> list[Check]:
    """Every check, in the order of ``CHECKS``."""
    return [check(facts) for check in CHECKS]


# -- output --------------------------------------------------------------------------------------


TABLE_HEADER = ("check", "status", "summary")


def report_json(checks: Sequence[Check]) -> dict[str, Any]:
    """``-o json``: the overall status, the exit code and every check."""
    status = worst(c.status for c in checks)
    return {
        "status": status,
        "exitCode": EXIT_CODES[status],
        "checks": [c.to_json() for c in checks],
    }


def table_rows(checks: Iterable[Check]) -> list[list[str]]:
    """``-o table`` rows: check, status, summary; then the hint (``hint: ...``) and the
    details, indented, on rows of their own."""
    rows: list[list[str]] = []
    for c in checks:
        rows.append([c.name, c.status, c.summary])
        if c.status != OK and c.hint:
            rows.append(["", "", f"hint: {c.hint}"])
        rows.extend(["", "", f"  {d}"] for d in c.details)
    return rows
