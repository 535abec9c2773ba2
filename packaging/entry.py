"""Entry point of the plugin bundle: run the plugin named by ``argv[0]``.

Installed in the bundle as ``_xcluster_entry``; the launcher calls :func:`main`. One bundle
serves every plugin name, so the host gets one interpreter copy for all of them.
"""

from __future__ import annotations

import os
import sys

# The CNI plugins: the installer links each name in the host's CNI bin dir.
PLUGINS = {
    "kube-node": "xcluster_cni_ipam.kube_node",
    "node-annotation": "xcluster_cni_ipam.node_annotation",
}
# Commands the image links (not installed on hosts): the daemon and its tools.
COMMANDS = {"xcluster-cni": "xcluster_cni_daemon.cli"}


def main() -> None:
    called_as = sys.orig_argv[0] if sys.orig_argv else "xcluster-cni-plugin"
    name = os.path.basename(called_as)
    module_name = PLUGINS.get(name) or COMMANDS.get(name)
    if module_name is None:
        known = ", ".join(sorted({**PLUGINS, **COMMANDS}))
        sys.stderr.write(
            f"xcluster-cni: called as {name!r}; link this program as one of: {known}\n"
        )
        raise SystemExit(127)
    sys.argv = [called_as, *sys.orig_argv[1:]]
    module = __import__(module_name, fromlist=["main"])
    raise SystemExit(module.main())
