"""host-local's on-disk layout, for what Debian's host-local (1.1.1) cannot do itself:
release without a usable config, GC, reservation lookups and usage for STATUS.

``<dataDir>/<network>/`` holds one file per reserved address (named by the address,
content ``<container id>\\r\\n<ifname>``, or only the id when written by old versions),
``last_reserved_ip.<n>``, ``lock`` (flock'ed by host-local) and our cache. Only files
named by an IP address are ever touched here.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

Reservation = tuple[str, str, str | None]  # (address, container id, ifname or None)


def _lock(network_dir: str) -> int:
    """host-local's lock, held until the returned fd is closed."""
    fd = os.open(os.path.join(network_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


_ADDRESS_CHARS = frozenset("0123456789abcdef.:")


def _looks_like_address(name: str) -> bool:
    """A cheap test (no ``ipaddress`` import) that rules out host-local's other files."""
    return ("." in name or ":" in name) and set(name) <= _ADDRESS_CHARS


def _is_address(name: str) -> bool:
    if not _looks_like_address(name):
        return False
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def reservations(network_dir: str) -> list[Reservation]:
    """Every reserved address in the directory (empty when it does not exist)."""
    try:
        names = os.listdir(network_dir)
    except FileNotFoundError:
        return []
    out: list[Reservation] = []
    for name in names:
        if not _is_address(name):
            continue
        try:
            with open(os.path.join(network_dir, name), "rb") as f:
                content = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        lines = content.strip().splitlines()
        cid = lines[0].strip() if lines else ""
        out.append((name, cid, lines[1].strip() if len(lines) > 1 else None))
    return out


def release_where(network_dir: str, doomed: Callable[[Reservation], bool]) -> list[str]:
    """Under host-local's lock, remove every reservation ``doomed`` picks; return the
    released addresses. A missing directory releases nothing."""
    if not os.path.isdir(network_dir):
        return []
    released = []
    fd = _lock(network_dir)
    try:
        for res in reservations(network_dir):
            if doomed(res):
                try:
                    os.unlink(os.path.join(network_dir, res[0]))
                except FileNotFoundError:
                    continue
                released.append(res[0])
    finally:
        os.close(fd)
    return released


def matches(res: Reservation, container_id: str, ifname: str) -> bool:
    """Whether a reservation belongs to (container id, ifname); an old-format file (no
    ifname) matches on the id alone, as host-local does."""
    return res[1] == container_id and (res[2] is None or res[2] == ifname)


def release_by_id(network_dir: str, container_id: str, ifname: str) -> list[str]:
    """Release what (container id, ifname) holds, as host-local's DEL would."""
    return release_where(network_dir, lambda r: matches(r, container_id, ifname))


def gc(network_dir: str, valid: set[tuple[str, str]]) -> list[str]:
    """Release every reservation whose attachment is not in ``valid`` ((id, ifname) pairs)."""
    valid_ids = {cid for cid, _ in valid}

    def doomed(res: Reservation) -> bool:
        if res[2] is None:
            return res[1] not in valid_ids
        return (res[1], res[2]) not in valid

    return release_where(network_dir, doomed)


def release_orphans(network_dir: str) -> list[str]:
    """Remove empty reservation files: host-local creates a reservation and then writes the
    container id into it, both under its lock, so an empty file seen under the lock was left
    by a host-local killed in between (e.g. an ADD hit by SIGKILL) and belongs to nobody."""
    if not os.path.isdir(network_dir):
        return []
    released = []
    fd = _lock(network_dir)
    try:
        with os.scandir(network_dir) as entries:
            for entry in entries:
                if not _looks_like_address(entry.name):
                    continue
                try:
                    empty = entry.is_file(follow_symlinks=False) and entry.stat().st_size == 0
                except OSError:
                    continue
                if empty:
                    try:
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        continue
                    released.append(entry.name)
    finally:
        os.close(fd)
    return released
