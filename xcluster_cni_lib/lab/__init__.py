"""A multi-node cluster in network namespaces that runs the real ``xcluster-cni daemon``
and the real ``bridge`` + ``kube-node`` plugins: for demos, end-to-end tests and users'
own test harnesses. See ``docs/lab.md``.

Modules: ``spec`` (what to build, pure), ``nodes`` (Node objects and the nodes file),
``topology`` (namespaces and links), ``daemons``, ``pods``, ``routes``, ``connectivity``,
``cleanup`` (tear-down, also after a crash), ``cluster`` (``Lab``), ``report`` and ``demo``
(the CLI's output), ``commands`` (what ``xcluster-cni lab up|status|down|demo`` do),
``fixtures`` (pytest).
"""

from xcluster_cni_lib.lab.cluster import Lab
from xcluster_cni_lib.lab.connectivity import Matrix, PingResult
from xcluster_cni_lib.lab.nodes import LabNode
from xcluster_cni_lib.lab.pods import Pod
from xcluster_cni_lib.lab.spec import MAIN, SECONDARY, LabError, LabSpec, NetworkSpec

__all__ = [
    "MAIN",
    "SECONDARY",
    "Lab",
    "LabError",
    "LabNode",
    "LabSpec",
    "Matrix",
    "NetworkSpec",
    "PingResult",
    "Pod",
]
