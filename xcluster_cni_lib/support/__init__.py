"""Standard-library helpers every layer may use: structured logging, atomic files and
facts of the host (machine id, route protocol names, service account).

Folder rule: standard library only, and nothing else of the library but ``core``.
"""
