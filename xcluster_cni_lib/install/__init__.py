"""The installer service (``xcluster-cni install``): puts the static host shim (as the IPAM
plugins), the reference plugins the node lacks and the main network's conflist on the
host, and removes what earlier versions left there.

``plan`` holds the pure decisions (file contents, what counts as an xcluster config, the
node address the MTU follows, the shim's architecture); ``files`` the atomic file
operations; ``service`` composes them. Nothing here is imported by the plugins or the
daemon.
"""
