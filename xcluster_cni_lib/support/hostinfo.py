"""Small facts about the host read from files (I/O, so not in ``core``)."""

from __future__ import annotations

MACHINE_ID_PATH = "/etc/machine-id"


def read_machine_id(path: str = MACHINE_ID_PATH) -> str | None:
    """The machine id in ``path`` (stripped), or None when the file is missing,
    unreadable or empty."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(4096).strip()
    except OSError:
        return None
    return text or None
