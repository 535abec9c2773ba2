"""Keeping the kernel in line with the nodes: the compact node cache, the reconciler and
its metrics. Talks to sources and the kernel only through the ports in ``core.ports``.

Folder rule: imports ``core`` and ``support``.
"""
