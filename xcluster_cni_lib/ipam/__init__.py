"""The logic of the ``kube-node`` and ``node-annotation`` IPAM plugins.

Cache-hit paths (``plugin``, ``config``, ``cache``, ``store``, ``log``) import only the
standard library basics, ``xcluster_cni_lib.cni`` and ``xcluster_cni_lib.pluginexec``;
``resolve`` (node lookup, cache misses) imports the rest lazily.
"""
