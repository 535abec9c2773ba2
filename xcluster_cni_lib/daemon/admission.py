"""A new pod's NetworkPolicy in place before its containers start.

The served IPAM (``daemon.ipamserver``) answers the runtime's ADD for a pod's ``eth0``; the
kubelet reports the pod's addresses to the API server only after that, and the agent's pod
watch sees them later still. Until then a policed pod would be reachable (and reach out)
as if no policy selected it. ``PolicyAdmission.after_call`` closes that window: after a
successful ADD it binds the allocated addresses to the pod (``PolicyStore.bind``, from
``K8S_POD_NAMESPACE``/``K8S_POD_NAME`` in ``CNI_ARGS``) and holds the answer until the
policy tables enforce them (``PolicyReconciler.wait_applied``), at most ``timeout``
seconds (then the pod starts anyway, and the log says so: a slow agent must not stop pods
from starting). A DEL removes the binding.

Only the pod's primary interface counts (``CNI_IFNAME`` ``eth0``, the kubelet's): policy
applies to the addresses the API reports, ``status.podIPs``, which are the primary
network's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from xcluster_cni_lib.core.addresses import parse_address
from xcluster_cni_lib.core.values import IPAddress
from xcluster_cni_lib.plugin.protocol import parse_cni_args
from xcluster_cni_lib.support import jsonlog
from xcluster_cni_lib.sync.policy import PolicyReconciler
from xcluster_cni_lib.sync.policystore import PolicyStore

log = jsonlog.get_logger(__name__)

PRIMARY_IFNAME = "eth0"
DEFAULT_TIMEOUT = 2.0
POLL = 0.01  # while the pod itself is not known yet (its watch event is late)


def result_addresses(out: bytes) -> list[IPAddress]:
    """The addresses of a CNI ADD result (``ips[].address``, CIDR notation)."""
    try:
        doc = json.loads(out)
    except ValueError:
        return []
    ips = doc.get("ips") if isinstance(doc, dict) else None
    found: list[IPAddress] = []
    for entry in ips if isinstance(ips, list) else []:
        text = entry.get("address") if isinstance(entry, dict) else None
        if isinstance(text, str):
            try:
                found.append(parse_address(text.partition("/")[0]))
            except ValueError:
                continue
    return found


def pod_key(env: Mapping[str, str]) -> str | None:
    """``namespace/name`` of the pod a call is for (``CNI_ARGS``), or None."""
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    namespace, name = args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")
    return f"{namespace}/{name}" if namespace and name else None


class PolicyAdmission:
    """``after_call`` is the IPAM server's ``after`` hook."""

    def __init__(
        self,
        store: PolicyStore,
        reconciler: PolicyReconciler,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.store = store
        self.reconciler = reconciler
        self.timeout = timeout
        self.waits = 0
        self.timeouts = 0

    def after_call(self, verb: str, env: dict[str, str], rc: int, out: bytes) -> None:
        if env.get("CNI_IFNAME") != PRIMARY_IFNAME:
            return
        key = pod_key(env)
        if key is None:
            return
        if verb == "DEL":
            self.store.unbind(key)
        elif verb == "ADD" and rc == 0:
            self.admit(key, result_addresses(out))

    def admit(self, key: str, ips: Iterable[IPAddress]) -> bool:
        """Bind ``ips`` to pod ``key`` and wait until enforced; false on timeout."""
        started = time.monotonic()
        deadline = started + self.timeout
        ips = tuple(ips)
        if not ips:
            return True
        self.waits += 1
        generation, known = self.store.bind(key, ips)
        while not known and time.monotonic() < deadline:
            time.sleep(POLL)
            generation, known = self.store.bind(key, ips)
        ok = known and self.reconciler.wait_applied(
            generation, max(0.0, deadline - time.monotonic())
        )
        waited = time.monotonic() - started
        metrics = self.reconciler.policy_metrics
        if metrics is not None:
            metrics.pod_start_wait.observe(waited)
        fields: dict[str, Any] = {"pod": key, "waited_s": round(waited, 4)}
        if ok:
            log.debug("pod policy in place before start", **fields)
        else:
            self.timeouts += 1
            why = "pod not seen in the watch" if not known else "policy sync not done"
            log.warning("pod starts before its policy is enforced", reason=why, **fields)
        return ok
