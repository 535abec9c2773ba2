"""End-to-end tests: a lab of node namespaces running the real daemon and plugins.

One lab is shared by the tests that put it back as they found it (session scope, built
with the fixture factory users get, ``xcluster_cni_lib.lab.fixtures``); tests that need
another shape (the overlay, the CLI) build their own. Every lab uses the prefix ``xct``
and a random id, so runs never collide with a user's ``xcluster-cni lab``.
"""

from __future__ import annotations

from xcluster_cni_lib.lab import LabSpec
from xcluster_cni_lib.lab.fixtures import lab_fixture

PREFIX = "xct"

# 3 nodes, 1 pod each, main and secondary network, daemons converged; only pods in the
# Kubernetes namespace ``default`` get IPv4 (``ipv4-namespaces``).
lab = lab_fixture(
    lambda: LabSpec(nodes=3, pods_per_node=1, prefix=PREFIX, ipv4_namespaces=("default",)),
    scope="session",
)
