"""What ``xcluster-cni lab up|status|down|demo`` do, for the command and for scripts:
each function takes plain values and returns what the command prints (or the lab); the
command only parses flags, prints and picks the exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

import attrs

from xcluster_cni_lib.lab.cleanup import (
    _owned_daemon,
    find_labs,
    interrupt_on_termination,
    lab_status,
    load_state,
    process_gone,
    shielded,
    teardown_lab,
)
from xcluster_cni_lib.lab.cluster import Lab
from xcluster_cni_lib.lab.demo import run_demo
from xcluster_cni_lib.lab.shell import list_netns, run
from xcluster_cni_lib.lab.spec import (
    DEFAULT_PREFIX,
    DEFAULT_STATE_ROOT,
    MAIN,
    SECONDARY,
    LabError,
    LabSpec,
)


def command_spec(
    *,
    nodes: int = 3,
    pods: int = 2,
    secondary: bool = True,
    ipam: str = "kube-node",
    lab_id: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    state_root: str | Path = DEFAULT_STATE_ROOT,
    routed: bool = False,
    overlay: str = "none",
    masquerade: bool = False,
    outside: bool = False,
) -> LabSpec:
    """The spec of ``lab up``/``lab demo``: the main network, and the secondary one
    unless ``secondary`` is false; a random id unless ``lab_id``. ``routed`` puts every
    node of the main network on its own subnet behind the lab's router; ``overlay`` and
    ``masquerade`` are the main network's daemon settings (the vxlan overlay's pods get
    MTU 1450); ``outside`` (implied by ``masquerade``) adds the outside host.
    ``LabError`` names a bad value."""
    if overlay not in ("none", "vxlan"):
        raise LabError(f"overlay must be none or vxlan, not {overlay!r}")
    main = attrs.evolve(
        MAIN,
        routed=routed,
        overlay=overlay,
        masquerade=masquerade,
        mtu=1450 if overlay == "vxlan" else MAIN.mtu,
    )
    spec = LabSpec(
        nodes=nodes,
        pods_per_node=pods,
        networks=(main, SECONDARY) if secondary else (main,),
        prefix=prefix,
        state_root=Path(state_root),
        ipam=ipam,
        outside=outside or masquerade,
    )
    return spec if lab_id is None else attrs.evolve(spec, lab_id=lab_id)


def bring_up(spec: LabSpec) -> Lab:
    """Build the lab and leave it running. SIGTERM/SIGHUP are Ctrl-C meanwhile; on any
    failure or interrupt what was built is removed before the error goes on."""
    lab = Lab(spec)
    with interrupt_on_termination():
        try:
            lab.up()
        except BaseException:
            lab.down()
            raise
    return lab


def lab_ids(prefix: str, state_root: Path, lab_id: str | None = None) -> list[str]:
    """``[lab_id]`` when given, else every lab with ``prefix`` (by namespace or state dir)."""
    return [lab_id] if lab_id else find_labs(prefix, state_root)


def status_lines(prefix: str, state_root: Path, lab_id: str | None = None) -> list[str]:
    """``lab status``: every lab's summary, ``no labs`` when there is none. ``LabError``
    when ``lab_id`` is given and that lab does not exist."""
    ids = lab_ids(prefix, state_root, lab_id)
    if not ids:
        return ["no labs"]
    return [line for i in ids for line in lab_status(prefix, i, state_root)]


def status_records(
    prefix: str, state_root: Path, lab_id: str | None = None
) -> list[dict[str, Any]]:
    """``lab status -o json``: what ``status_lines`` says, as one object per lab (``[]``
    when there is none): ``id``, ``stateDir``, ``namespaces`` (count), ``hasState``,
    ``ownerPid`` (a running owner, else null), ``daemons`` (``running``, ``started``),
    ``nodes`` (``name``, ``namespace``, ``routes``: network -> count) and ``pods``.
    ``LabError`` as for ``status_lines``."""
    records = []
    for i in lab_ids(prefix, state_root, lab_id):
        lab_status(prefix, i, state_root)  # the same checks and LabError as the lines
        state_dir = state_root / f"{prefix}-{i}"
        state = load_state(state_dir)
        ns_prefix = f"{prefix}-{i}-"
        namespaces = sorted(n for n in list_netns() if n.startswith(ns_prefix))
        owner = state.get("owner_pid")
        nodes_file = str(state.get("nodes_file", ""))
        pids = state.get("pids", [])
        running = [p for p in pids if _owned_daemon(int(p), nodes_file)]
        nodes = []
        for node in state.get("nodes", []):
            ns = f"{ns_prefix}{node}"
            if ns not in namespaces:
                continue
            routes = {}
            for network, protocol in state.get("networks", {}).items():
                count = 0
                for family in ("-4", "-6"):
                    proc = run(
                        None,
                        ["ip", "-n", ns, family, "route", "show", "proto", str(protocol)],
                        check=False,
                    )
                    count += len(proc.stdout.splitlines())
                routes[network] = count
            nodes.append({"name": node, "namespace": ns, "routes": routes})
        records.append(
            {
                "id": i,
                "stateDir": str(state_dir),
                "namespaces": len(namespaces),
                "hasState": bool(state),
                "ownerPid": int(owner) if owner and not process_gone(int(owner)) else None,
                "daemons": {"running": len(running), "started": len(pids)},
                "nodes": nodes,
                "pods": sorted(state.get("pods", {})),
            }
        )
    return records


def remove_labs(
    prefix: str, state_root: Path, lab_id: str | None = None
) -> list[tuple[str, list[str]]]:
    """``lab down``: tear down ``lab_id`` (nothing to do is fine) or every lab with
    ``prefix``, signals held off meanwhile; returns (lab id, namespaces deleted) per lab."""
    removed = []
    with shielded():
        for i in lab_ids(prefix, state_root, lab_id):
            removed.append((i, teardown_lab(prefix, i, state_root)))
    return removed


def demo(out: TextIO, spec: LabSpec) -> int:
    """``lab demo`` printing to ``out``; SIGTERM/SIGHUP tear down as Ctrl-C does.
    Returns the exit status (0 ok, 1 a step failed, 130 interrupted)."""
    with interrupt_on_termination():
        return run_demo(out, spec=spec)
