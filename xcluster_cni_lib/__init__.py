"""xcluster-cni: routes between Kubernetes nodes' pod CIDRs, and the kube-node IPAM.

This module stays light on purpose: the IPAM plugins import it on every pod start.
Import what you need from the subpackages (``xcluster_cni_lib.core``, ``.kernel``,
``.sources``, ...); nothing heavy is imported here.

Logging: the library never configures logging; the application does (``logging.basicConfig``
or ``xcluster_cni_lib.support.jsonlog.setup``). The package logger ``xcluster_cni_lib``
gets a ``logging.NullHandler``, so a script that configures nothing gets no stray
"last resort" lines from the library. The handler is attached here when ``logging`` is
already loaded, else by ``support.jsonlog`` (through which the library logs) when it is
imported: importing ``logging`` costs about 5 ms, a third of a pod start, and the pod-start
path (``plugin/``) never uses it.
"""

import sys

__version__ = "0.1.0"


def quiet_by_default() -> None:
    """Give the ``xcluster_cni_lib`` logger a ``NullHandler`` (once)."""
    import logging

    logger = logging.getLogger(__name__)
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


if "logging" in sys.modules:
    quiet_by_default()
