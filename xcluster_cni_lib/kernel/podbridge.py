"""The pods' bridge (``cbr0``) as the NetworkPolicy bridge table needs it: its MAC address,
pinned.

A Linux bridge whose address was never set takes the lowest address of its ports, so it
changes as pods come and go; frames the policy table redirects to the node carry the
bridge's address and must keep reaching it. The first time the bridge is seen (and again
whenever it is re-made: a new interface index), its current address is set on it
explicitly, which makes the kernel keep it (``addr_assign_type`` "set"), and its IPv4
``send_redirects`` is turned off (the node forwards a policed pod's same-node traffic out
the interface it came in: the redirects would only be noise). The kernel still sends them
while ``net.ipv4.conf.all.send_redirects`` is on, a node-wide setting left to the admin
(docs/network-policy.md). Both are best effort and logged.
"""

from __future__ import annotations

import os
import threading

from xcluster_cni_lib.kernel.channel import Channel, run_in_netns
from xcluster_cni_lib.kernel.links import get_link, set_link
from xcluster_cni_lib.support import jsonlog

log = jsonlog.get_logger(__name__)


BRIDGE_NF_CALLS = (
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
)


def bridge_nf_calls(netns: str | None = None) -> bool:
    """Whether bridged IPv4 and IPv6 frames pass the IP hooks (``br_netfilter`` loaded,
    ``net.bridge.bridge-nf-call-iptables`` and ``-ip6tables`` both 1) in ``netns``."""

    def read() -> bool:
        try:
            return all(open(path).read().strip() == "1" for path in BRIDGE_NF_CALLS)
        except OSError:  # no br_netfilter: no such files
            return False

    if netns is None:
        return read()
    try:  # /proc/sys/net is the opening thread's namespace
        return run_in_netns(netns, read, name=f"brnf-{netns}")
    except OSError:  # no such namespace
        return False


class PodBridge:
    """``mac()`` of bridge ``name`` in ``netns`` (None: this one), pinned on first sight."""

    def __init__(self, name: str, *, netns: str | None = None) -> None:
        self.name = name
        self.netns = netns
        self._chan = Channel(netns)
        self._lock = threading.Lock()  # one request at a time on the channel
        self._pinned: int | None = None

    def mac(self) -> str | None:
        """The bridge's address, or None when there is no such link (yet)."""
        with self._lock:
            link = get_link(self._chan, self.name)
        if link is None or not link.mac:
            return None
        if link.ifindex != self._pinned:
            try:
                with self._lock:
                    set_link(self._chan, link.ifindex, mac=link.mac, mtu=link.mtu)
            except Exception as e:  # never stops policy: the address may then change
                log.warning("pod bridge address not pinned", bridge=self.name, error=str(e))
            self._no_redirects()
            self._pinned = link.ifindex
            log.info("pod bridge address pinned", bridge=self.name, mac=link.mac)
        return link.mac

    def _no_redirects(self) -> None:
        if self.netns is not None:  # /proc/sys/net is the reading process's namespace
            return
        path = f"/proc/sys/net/ipv4/conf/{self.name}/send_redirects"
        try:
            with open(path, "w") as f:
                f.write("0")
        except OSError as e:
            log.debug(
                "send_redirects not set", bridge=self.name, error=str(e), path=os.fspath(path)
            )

    def br_netfilter(self) -> bool:
        """Whether the node shows bridged frames to the IP hooks (``bridge_nf_calls``)."""
        return bridge_nf_calls(self.netns)

    def close(self) -> None:
        self._chan.close()
