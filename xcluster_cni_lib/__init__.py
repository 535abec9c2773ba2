"""xcluster-cni: routes between Kubernetes nodes' pod CIDRs, and the kube-node IPAM.

This module stays light on purpose: the IPAM plugins import it on every pod start.
Import what you need from the submodules (``xcluster_cni_lib.core``, ``.netlink``,
``.kube``, ...); nothing heavy is imported here.
"""

__version__ = "0.1.0"
