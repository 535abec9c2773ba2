"""Where Node objects come from: the Kubernetes API (the only importer of ``kubernetes``)
and Node list files. Both reduce a Node to ``core.values.NodeFacts`` at the boundary.

Folder rule: imports ``core`` and ``support``.
"""
