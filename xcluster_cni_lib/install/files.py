"""Atomic file operations of the installer.

Every file appears whole or not at all: it is written to a temporary name in the target
directory, synced, then renamed over the target, and the directory is synced. A container
runtime that runs a plugin, or reads a config, in the middle of an upgrade sees the old
file or the new one, never a half-written one. Unchanged files are not touched (same
inode and mtime), so re-running the installer is free.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from xcluster_cni_lib.support import atomicfile
from xcluster_cni_lib.support.atomicfile import TMP_PREFIX, fsync_dir

CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's content."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fsync_dir(directory)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> bool:
    """Write ``data`` to ``path`` atomically with ``mode``; False (nothing written) when
    the file already has exactly this content and mode."""
    return atomicfile.write_atomic(path, data, mode=mode, skip_unchanged=True)


def copy_atomic(src: Path, dst: Path, *, mode: int = 0o755) -> None:
    """Copy ``src`` to ``dst`` atomically (temp file beside ``dst``, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=dst.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(dst.parent)


def install_file(src: Path, dst: Path) -> str:
    """Put executable ``src`` at ``dst`` unless ``dst`` already has the same content:
    ``"unchanged"``, ``"installed"`` (new) or ``"replaced"`` (another version was there)."""
    existed = dst.exists() or dst.is_symlink()
    if existed and not dst.is_symlink() and dst.is_file() and file_digest(src) == file_digest(dst):
        return "unchanged"
    copy_atomic(src, dst)
    return "replaced" if existed else "installed"


def symlink_atomic(target: str, link: Path) -> bool:
    """Make ``link`` a symlink to ``target`` by renaming a new symlink over it; False when
    it already points there. Replaces a regular file of that name too."""
    try:
        if link.is_symlink() and os.readlink(link) == target:
            return False
    except OSError:
        pass
    for _ in range(100):
        tmp = link.parent / f"{TMP_PREFIX}{os.urandom(6).hex()}"
        try:
            os.symlink(target, tmp)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 random collisions
        raise FileExistsError(f"cannot create a temporary symlink in {link.parent}")
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(link.parent)
    return True


def _fsync_tree(root: Path) -> None:
    for directory, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(directory))


def copy_tree_atomic(src: Path, dst: Path) -> bool:
    """Copy directory ``src`` to ``dst`` (which must not be a directory in use): into a
    temporary directory beside ``dst``, synced, then renamed to ``dst``. False when ``dst``
    already exists: a directory only ever appears complete, so an existing one is whole."""
    if dst.is_dir():
        return False
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=dst.parent))
    try:
        shutil.copytree(src, tmp, symlinks=True, dirs_exist_ok=True)
        tmp.chmod(0o755)
        _fsync_tree(tmp)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(dst.parent)
    return True


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


def read_json(path: Path) -> object:
    """A JSON file's value (for BUNDLE.json)."""
    return json.loads(path.read_bytes())
