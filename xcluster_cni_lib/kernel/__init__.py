"""The kernel side: rtnetlink, one module per concern.

- ``codec``: the ``struct`` codec of route, address and link messages (no I/O).
- ``channel``: netlink sockets (entering a network namespace), the request channel that
  sends batches and dumps, ``NetlinkError``.
- ``dumps``: route dumps, each route once (IPv6 dumps checked against each other), and
  ``list_protocol_routes`` to read any protocol's routes.
- ``routetable``: ``NetlinkRouteTable``, the protocol-bound route table (batched writes,
  lookups, conflicts).
- ``tracker``: ``RouteTracker``, the one kernel listener: the table's tracked view of our
  routes and the monitor that wakes the reconciler on changes that can matter.
- ``links``: interface addresses and MTUs.

Folder rule: the only importer of ``pyroute2`` (``channel``, to enter a namespace);
imports ``core`` and ``support``.
"""
