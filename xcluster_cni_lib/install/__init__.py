"""The installer service (``xcluster-cni install``): puts the CNI plugins, the kubeconfig,
the node-name file and the main network's conflist on the host.

``plan`` holds the pure decisions (file contents, what counts as an xcluster config, the
node address the MTU follows); ``files`` the atomic file operations; ``service`` composes
them. Nothing here is imported by the plugins or the daemon.
"""
