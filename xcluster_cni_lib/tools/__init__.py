"""What the ``xcluster-cni`` inspection commands compute: ``plan`` (``dryrun``), ``nodes``
(``nodeview``), ``kernelroutes`` and ``mtu`` (``kernelview``), ``doctor`` (``doctor``: the
checks, pure; ``doctorfacts``: what they look at, gathered from the node; ``ipamclient``:
the IPAM socket's STATUS). Each function returns
values; the command (``xcluster_cni_daemon.tools``) only parses its arguments, prints and
chooses the exit code. Usable from scripts as well.

``dryrun`` and ``nodeview`` (with a nodes file) load neither ``kubernetes`` nor
``pyroute2``; ``kernelview`` loads ``pyroute2`` and reading the API loads ``kubernetes``,
both inside the functions that need them.
"""
