"""What the verbs need from an agent that serves them (``daemon.ipamserver``).

Imported for typing only: the standalone plugins never load it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol


class OwnNodeLookup(Protocol):
    """The agent's own Node object, or ``CniError`` 11 while it is unknown. ``name``:
    the node's name when the agent knows it (None: found by machine id)."""

    @property
    def name(self) -> str | None: ...

    def __call__(self) -> Mapping[str, Any]: ...


#: Where a served call's plugin log lines go: ``emit(level, message)``.
LogEmitter = Callable[[str, str], None]
