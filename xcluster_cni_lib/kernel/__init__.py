"""The kernel side: rtnetlink (codec, sockets, the protocol-bound route table, the change
tracker, links and addresses).

Folder rule: the only importer of ``pyroute2``; imports ``core`` and ``support``.
"""
