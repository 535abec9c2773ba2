"""``xcluster-cni doctor``: read what the checks (``tools.doctor``) look at, from this
node. Every read that fails is recorded as an error in the facts (the check it feeds
then says so); nothing here decides OK/WARN/FAIL.

Settings come from the environment the daemon reads (``daemon.config.load_config``), so
``kubectl exec`` into the agent's pod checks with the pod's PROTOCOL, OVERLAY,
MASQUERADE, NETWORK_POLICY, POLICY_BRIDGE, annotations and node name; the flags win over
them.
"""

from __future__ import annotations

import json
import os
import platform
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from xcluster_cni_lib.core.errors import XclusterError
from xcluster_cni_lib.core.facts import extract_facts
from xcluster_cni_lib.core.masquerade import table_name
from xcluster_cni_lib.core.nodes import parse_nodes
from xcluster_cni_lib.core.overlay import DesiredOverlay, OverlaySettings
from xcluster_cni_lib.core.ownnode import resolve_own
from xcluster_cni_lib.core.planning import DesiredRoutes
from xcluster_cni_lib.core.ranges import host_view
from xcluster_cni_lib.core.values import InterfaceAddress, NodeFacts, NodeNetwork, Route
from xcluster_cni_lib.daemon.config import DaemonConfig, load_config
from xcluster_cni_lib.install import plan as install_plan
from xcluster_cni_lib.install.service import node_mtu
from xcluster_cni_lib.support.hostinfo import MACHINE_ID_PATH, read_machine_id
from xcluster_cni_lib.support.rtprotos import read_rt_protos
from xcluster_cni_lib.tools import doctor

DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_SOCKET = "/run/xcluster-cni/ipam.sock"  # the shim's default (docs/shim.md)
STATUS_VERSION = "1.1.0"  # STATUS exists from CNI 1.1.0
_MACHINES = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183}


@attrs.frozen
class DoctorOptions:
    """The paths and sources doctor reads (its flags); None: from the environment."""

    conf_dir: str = DEFAULT_CONF_DIR
    bin_dir: str = DEFAULT_BIN_DIR
    socket: str | None = None
    nodes_file: str | None = None
    kubeconfig: str | None = None
    node: str | None = None
    machine_id_file: str = MACHINE_ID_PATH
    timeout: float = 5.0


def settings(options: DoctorOptions, env: Mapping[str, str]) -> DaemonConfig:
    """The daemon's settings from ``env``, the flags winning. ``ConfigError`` on a bad
    value, as the daemon would refuse to start with it."""
    flags: dict[str, str | None] = {
        "NODE_NAME": options.node,
        "NODES_FILE": options.nodes_file,
        "KUBECONFIG": options.kubeconfig,
    }
    # doctor does not serve IPAM: its socket setting is only where to look
    env = {k: v for k, v in env.items() if k != "IPAM_SOCKET"}
    return load_config(env, flags)


def read_conf_dir(conf_dir: str) -> dict[str, bytes] | None:
    """The config files of the CNI config dir (name -> content); None: no directory."""
    path = Path(conf_dir)
    if not path.is_dir():
        return None
    found: dict[str, bytes] = {}
    for entry in path.iterdir():
        if entry.name.endswith(install_plan.CONFIG_SUFFIXES) and entry.is_file():
            try:
                found[entry.name] = entry.read_bytes()
            except OSError as e:
                found[entry.name] = f"unreadable: {e}".encode()
    return found


def _header(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(64)


def read_plugin(bin_dir: str, name: str) -> doctor.PluginFile:
    path = os.path.join(bin_dir, name)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return doctor.PluginFile(name, present=False)
    except OSError as e:
        return doctor.PluginFile(name, present=True, error=str(e))
    if not stat.S_ISREG(st.st_mode):
        return doctor.PluginFile(name, present=True, error="not a regular file")
    executable = bool(st.st_mode & 0o111) and os.access(path, os.X_OK)
    try:
        machine = doctor.elf_machine(_header(path))
    except OSError as e:
        return doctor.PluginFile(name, present=True, executable=executable, error=str(e))
    return doctor.PluginFile(name, present=True, executable=executable, machine=machine)


def host_machine() -> int | None:
    """This machine's ELF ``e_machine``: the running interpreter's."""
    try:
        machine = doctor.elf_machine(_header(sys.executable))
    except OSError:
        machine = None
    return machine if machine is not None else _MACHINES.get(platform.machine().lower())


def status_config(doc: Mapping[str, Any] | None) -> tuple[str, bytes]:
    """``(plugin type, stdin)`` of the STATUS call: the conflist's IPAM section (so the
    agent checks the data directory pods use), else a minimal ``kube-node`` one."""
    ipam = doctor.conflist_ipam(doc) or {"type": "kube-node"}
    name = doc.get("name") if doc and isinstance(doc.get("name"), str) else None
    config = {
        "cniVersion": STATUS_VERSION,
        "name": name or install_plan.NETWORK_NAME,
        "type": "bridge",
        "ipam": ipam,
    }
    return str(ipam["type"]), json.dumps(config).encode()


def socket_path(
    options: DoctorOptions, env: Mapping[str, str], doc: Mapping[str, Any] | None
) -> str:
    """The IPAM socket: ``--socket``, else ``IPAM_SOCKET``, else the conflist's IPAM
    ``socket`` (what the shim uses), else the shim's default."""
    if options.socket:
        return options.socket
    if env.get("IPAM_SOCKET", "").strip():
        return env["IPAM_SOCKET"].strip()
    ipam = doctor.conflist_ipam(doc) or {}
    configured = ipam.get("socket")
    return configured if isinstance(configured, str) and configured else DEFAULT_SOCKET


def probe_ipam(
    path: str, bin_dir: str, doc: Mapping[str, Any] | None, timeout: float
) -> doctor.IpamProbe:
    from xcluster_cni_lib.tools.ipamclient import call

    try:
        present = stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        present = False
    if not present:
        return doctor.IpamProbe(path, present=False)
    plugin, stdin = status_config(doc)
    env = {"CNI_COMMAND": "STATUS", "CNI_PATH": bin_dir}
    try:
        answer = call(path, env, stdin, plugin=plugin, timeout=timeout)
    except OSError as e:
        return doctor.IpamProbe(path, present=True, error=str(e))
    return doctor.IpamProbe(path, present=True, code=answer.code, stdout=answer.stdout)


@attrs.frozen
class _Nodes:
    read: doctor.NodesRead
    facts: tuple[NodeFacts, ...] = ()
    own_node: Mapping[str, Any] | None = None


def read_nodes(config: DaemonConfig, options: DoctorOptions) -> _Nodes:
    """The nodes (nodes file or API server) and this node's object."""
    raw: list[dict[str, Any]] = []
    if config.nodes_file is not None:
        from xcluster_cni_lib.support.nodelist import load_node_list

        source = f"nodes file {config.nodes_file}"
        try:
            raw = load_node_list(config.nodes_file)
        except (XclusterError, OSError) as e:
            return _Nodes(doctor.NodesRead(source, error=str(e)))
        facts = [extract_facts(n, annotations=config.annotations) for n in raw]
    else:
        from xcluster_cni_lib.sources import kube

        source = "API server"
        try:
            client = kube.load_api_client(config.kubeconfig, timeout=options.timeout)
        except (XclusterError, OSError) as e:
            return _Nodes(doctor.NodesRead(source, error=str(e)))
        try:
            source = f"API server {client.configuration.host}"
            facts = kube.list_node_facts(client, annotations=config.annotations)
            own_name = config.node_name
            if own_name is not None and any(f.name == own_name for f in facts):
                node = kube.get_node(client, own_name)
                raw = [node] if node is not None else []
        except (XclusterError, OSError) as e:
            return _Nodes(doctor.NodesRead(source, error=str(e)))
        finally:
            client.close()
    try:
        machine_id = None if config.node_name else read_machine_id(options.machine_id_file)
        own, warning = resolve_own(facts, name=config.node_name, machine_id=machine_id)
    except XclusterError as e:
        return _Nodes(doctor.NodesRead(source, error=str(e), count=len(facts)), tuple(facts))
    own_found = own is not None and any(f.name == own for f in facts)
    own_node = next(
        (
            n
            for n in raw
            if isinstance(n.get("metadata"), dict) and n["metadata"].get("name") == own
        ),
        None,
    )
    if own_node is None and own_found and config.nodes_file is None:
        # found by machine id: read its object
        from xcluster_cni_lib.sources import kube

        try:
            client = kube.load_api_client(config.kubeconfig, timeout=options.timeout)
            try:
                own_node = kube.get_node(client, str(own))
            finally:
                client.close()
        except (XclusterError, OSError):
            own_node = None
    read = doctor.NodesRead(
        source, count=len(facts), own=own, own_found=own_found, own_warning=warning
    )
    return _Nodes(read, tuple(facts), own_node)


def _interfaces() -> tuple[list[InterfaceAddress] | None, str | None]:
    from xcluster_cni_lib.kernel.links import list_interface_addresses

    try:
        return list_interface_addresses(), None
    except OSError as e:
        return None, str(e)


def _holders(routes: list[Route], protocol: int) -> dict[str, tuple[int, ...]]:
    """Which other protocols hold the destinations of ``routes`` (main table)."""
    if not routes:
        return {}
    from xcluster_cni_lib.kernel import codec
    from xcluster_cni_lib.kernel.channel import Channel
    from xcluster_cni_lib.kernel.dumps import RouteEventWatch, holders, route_key

    chan = Channel(None)
    watch = RouteEventWatch(None, table=codec.RT_TABLE_MAIN)
    try:
        held = holders(chan, table=codec.RT_TABLE_MAIN, events=watch)
    finally:
        watch.close()
        chan.close()
    out: dict[str, tuple[int, ...]] = {}
    for r in routes:
        others = sorted({h.protocol for h in held.get(route_key(r), []) if h.protocol != protocol})
        if others:
            out[str(r.dst)] = tuple(others)
    return out


def _overlay(
    config: DaemonConfig, networks: list[NodeNetwork] | None, own: str | None
) -> doctor.OverlayState | None:
    device = config.overlay_device
    if device is None:
        return None
    from xcluster_cni_lib.kernel.codec import IFF_UP
    from xcluster_cni_lib.kernel.vxlan import VxlanKernel

    try:
        kernel = VxlanKernel(None, monitor=False)
    except OSError as e:
        return doctor.OverlayState(device, error=str(e))
    try:
        link = kernel.link(device)
        if link is None:
            return doctor.OverlayState(device)
        present = kernel.list_entries(link.ifindex)
    except OSError as e:
        return doctor.OverlayState(device, error=str(e))
    finally:
        kernel.close()
    wanted = None
    if networks is not None:
        settings = OverlaySettings(device, config.vni, config.vxlan_port)
        wanted = DesiredOverlay(networks, own=own, settings=settings).entries()
    return doctor.OverlayState(
        device,
        kind=link.kind,
        up=bool(link.flags & IFF_UP),
        wanted=wanted,
        present=present,
    )


def _masquerade(config: DaemonConfig) -> tuple[bool | None, str | None]:
    from xcluster_cni_lib.kernel.nftables import Nft, NftError

    try:
        with Nft() as nft:
            return nft.read_table(table_name(config.protocol)) is not None, None
    except (NftError, OSError) as e:
        # without MASQUERADE a node without nft is fine: nothing to look at
        return None, (str(e) if config.masquerade else None)


def _link_mac(name: str, netns: str | None) -> tuple[bool | None, str | None]:
    """Whether the link ``name`` exists (None: not read) and its MAC address."""
    from xcluster_cni_lib.kernel.vxlan import VxlanKernel

    try:
        kernel = VxlanKernel(netns, monitor=False)
    except OSError:
        return None, None
    try:
        link = kernel.link(name)
    except OSError:
        return None, None
    finally:
        kernel.close()
    return (False, None) if link is None else (True, link.mac or None)


def read_policy(config: DaemonConfig, *, netns: str | None = None) -> doctor.PolicyTables:
    """Both NetworkPolicy tables of the instance as listed, and whether the pods' bridge
    (POLICY_BRIDGE) exists and its address; in ``netns`` (None: here)."""
    from xcluster_cni_lib.core.policynft import BRIDGE, INET
    from xcluster_cni_lib.core.policynft import table_name as policy_table
    from xcluster_cni_lib.kernel.nftables import Nft, NftError
    from xcluster_cni_lib.kernel.podbridge import bridge_nf_calls

    name = policy_table(config.protocol)
    link = config.policy_bridge
    bridged, mac = _link_mac(link, netns) if link is not None else (False, None)
    br_netfilter = config.policy_same_node == "br-netfilter" and bridge_nf_calls(netns)
    try:
        with Nft(netns=netns) as nft:
            inet = nft.read_table(name, family=INET)
            bridge = nft.read_table(name, family=BRIDGE)
    except (NftError, OSError) as e:
        return doctor.PolicyTables(
            name,
            bridge_link=link,
            bridged=bridged,
            bridge_mac=mac,
            error=str(e),
            br_netfilter=br_netfilter,
        )
    return doctor.PolicyTables(
        name,
        inet=None if inet is None else tuple(inet),
        bridge=None if bridge is None else tuple(bridge),
        bridge_link=link,
        bridged=bridged,
        bridge_mac=mac,
        br_netfilter=br_netfilter,
    )


def _protocol_owner(config: DaemonConfig, env: Mapping[str, str]) -> str | None:
    owner = read_rt_protos().get(config.protocol)
    named = env.get("PROTOCOL", "").strip()
    return None if owner is None or owner == named else owner


def _mtu(
    config: DaemonConfig,
    own_node: Mapping[str, Any] | None,
    interfaces: list[InterfaceAddress] | None,
) -> tuple[int | None, str, str | None]:
    if own_node is None:
        return None, "", "this node's object is not known"
    if interfaces is None:
        return None, "", "the interfaces could not be read"
    try:
        facts = extract_facts(own_node, annotations=config.annotations)
        address = install_plan.node_address(facts, address_annotation=config.address_annotation)
        mtu, warning = node_mtu(
            own_node,
            interfaces,
            address_annotation=config.address_annotation,
            overlay=config.overlay,
        )
    except XclusterError as e:
        return None, "", str(e)
    if warning:
        return None, "", warning
    names = sorted({i.interface for i in interfaces if i.address == address}) or ["?"]
    source = f"{names[0]} ({address})" + (
        " less the vxlan overhead" if config.overlay == "vxlan" else ""
    )
    return mtu, source, None


def gather(options: DoctorOptions, env: Mapping[str, str]) -> doctor.DoctorFacts:
    """Read everything the checks need from this node (the current network namespace).
    ``ConfigError`` when a setting is invalid (the daemon would not start either)."""
    from xcluster_cni_lib.kernel.dumps import list_protocol_routes

    config = settings(options, env)
    conf_files = read_conf_dir(options.conf_dir)
    doc = None
    if conf_files is not None:
        ours = doctor.our_config(conf_files)
        doc = doctor.parse_config(conf_files[ours])[0] if ours is not None else None
    plugins = tuple(read_plugin(options.bin_dir, n) for n in doctor.PLUGINS)
    ipam = probe_ipam(socket_path(options, env, doc), options.bin_dir, doc, options.timeout)
    nodes = read_nodes(config, options)
    interfaces, _ = _interfaces()

    desired: tuple[Route, ...] | None = None
    networks: list[NodeNetwork] | None = None
    pod_cidrs: frozenset[Any] = frozenset()
    if nodes.read.error is None:
        networks, _ = parse_nodes(nodes.facts, policy=config.range_policy)
        policy = config.range_policy
        if interfaces is not None:
            policy = policy.with_host(*host_view(interfaces))
        state = DesiredRoutes(
            networks, own=nodes.read.own, policy=policy, overlay=config.overlay_device
        )
        desired = tuple(state.routes.values())
        pod_cidrs = frozenset(c for n in networks for c in n.cidrs)

    present: tuple[Route, ...] | None = None
    present_error: str | None = None
    holders: dict[str, tuple[int, ...]] = {}
    try:
        present = tuple(list_protocol_routes(config.protocol))
        if desired is not None:
            missing, _, _ = doctor.route_difference(desired, present)
            holders = _holders(missing, config.protocol)
    except (XclusterError, OSError) as e:
        present_error = str(e)

    masquerade_present, masquerade_error = _masquerade(config)
    expected_mtu, mtu_source, mtu_error = _mtu(config, nodes.own_node, interfaces)
    return doctor.DoctorFacts(
        conf_dir=options.conf_dir,
        conf_files=conf_files,
        bin_dir=options.bin_dir,
        plugins=plugins,
        host_machine=host_machine(),
        ipam=ipam,
        nodes=nodes.read,
        protocol=config.protocol,
        protocol_owner=_protocol_owner(config, env),
        desired=desired,
        present=present,
        present_error=present_error,
        holders=holders,
        pod_cidrs=pod_cidrs,
        overlay=_overlay(config, networks, nodes.read.own),
        masquerade=config.masquerade,
        masquerade_table=table_name(config.protocol),
        masquerade_present=masquerade_present,
        masquerade_error=masquerade_error,
        network_policy=config.network_policy,
        policy=read_policy(config),
        expected_mtu=expected_mtu,
        mtu_source=mtu_source,
        mtu_error=mtu_error,
    )
