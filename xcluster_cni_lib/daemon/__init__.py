"""The agent (``xcluster-cni daemon``): configuration, the service loop that wires a
source, the cache, the reconciler and the kernel together, and the status HTTP server.

Folder rule: may import every layer below it (``core``, ``support``, ``kernel``,
``sources``, ``sync``); nothing below imports it.
"""
