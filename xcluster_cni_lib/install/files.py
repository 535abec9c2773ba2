"""The installer's file operations, on top of ``support.atomicfile`` (the one atomic
writer): every file appears whole or not at all, and unchanged files are not touched
(same inode and mtime), so re-running the installer is free. A container runtime that
runs a plugin, or reads a config, in the middle of an upgrade sees the old file or the
new one, never a half-written one.

Here only what is the installer's own: content digests, a copy that never replaces what
is there (``install_if_absent``), the clean-up of an interrupted run's temporaries.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from xcluster_cni_lib.support import atomicfile
from xcluster_cni_lib.support.atomicfile import TMP_PREFIX, fsync_dir, symlink_atomic

__all__ = [
    "file_digest",
    "fsync_dir",
    "install_file",
    "install_if_absent",
    "remove_stale_temporaries",
    "symlink_atomic",
    "write_atomic",
]

CHUNK = atomicfile.CHUNK


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's content."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> bool:
    """Write ``data`` to ``path`` atomically with ``mode``; False (nothing written) when
    the file already has exactly this content and mode."""
    return atomicfile.write_atomic(path, data, mode=mode, skip_unchanged=True)


def install_file(src: Path, dst: Path) -> str:
    """Put executable ``src`` at ``dst`` (mode 0755) unless ``dst`` already has the same
    content: ``"unchanged"``, ``"installed"`` (new) or ``"replaced"`` (another version or
    a symlink was there)."""
    existed = dst.exists() or dst.is_symlink()
    if not atomicfile.copy_atomic(src, dst, mode=0o755, skip_unchanged=True):
        return "unchanged"
    return "replaced" if existed else "installed"


def install_if_absent(src: Path, dst: Path) -> str:
    """Put executable ``src`` at ``dst`` (mode 0755) only when nothing of that name is
    there (a dangling symlink counts as something): ``"installed"``, ``"unchanged"``
    (``dst`` already has ``src``'s content) or ``"kept"`` (another file: the node's own,
    never replaced)."""
    if os.path.lexists(dst):
        if dst.is_file() and not dst.is_symlink() and file_digest(dst) == file_digest(src):
            return "unchanged"
        return "kept"
    atomicfile.copy_atomic(src, dst, mode=0o755)
    return "installed"


def remove_stale_temporaries(directory: Path) -> list[str]:
    """Remove what an interrupted install left in ``directory`` (temporary files,
    symlinks and directories); only one installer runs per node at a time."""
    removed: list[str] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if not entry.name.startswith(TMP_PREFIX):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return removed
