"""Everything on the pod-start path: the CNI protocol and the ``kube-node`` and
``node-annotation`` IPAM plugins.

Folder rule: modules here import only the standard library, ``xcluster_cni_lib.core``,
``xcluster_cni_lib.support`` and each other. A cache-hit ADD loads only ``protocol``,
``fastjson``, ``verbs``, ``config``, ``cache``, ``store``, ``log`` and ``delegate``;
``resolve`` (node lookup on a cache miss) imports the rest lazily.
"""
