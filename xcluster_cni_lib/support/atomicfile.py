"""Atomic file writes: the one implementation every writer of this project uses.

A new file (or symlink) is made under a temporary name in the target directory, synced,
renamed over the target, and the directory is synced. A reader (a container runtime, the
daemon polling ``NODES_FILE``, a plugin reading its cache) sees the old content or the
new, never a partial file. With ``skip_unchanged`` a target that already holds exactly
this content and mode is left alone (same inode and mtime), so re-running a writer is free.

- ``write_atomic(path, data, *, mode, skip_unchanged, make_dirs)``: bytes.
- ``copy_atomic(src, dst, *, mode, skip_unchanged)``: a file's content (binaries too).
- ``symlink_atomic(target, link)``: a symlink (replaces a file of that name too).

Temporary names start with ``TMP_PREFIX``, so an installer can remove what an interrupted
run left. Standard library ``os`` only, because the IPAM plugin writes its cache with
this on the pod-start path.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

TMP_PREFIX = ".xcluster-cni-tmp-"
CHUNK = 1 << 20


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(directory: str) -> str:
    """A new temporary name in ``directory`` (``TMP_PREFIX``, pid, random)."""
    return os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}")


def remove_stale_temp_files(directory: str, *, older_than: float) -> list[str]:
    """Remove the ``TMP_PREFIX`` files (and symlinks) in ``directory`` not modified for
    ``older_than`` seconds (what a writer killed between create and rename left); their
    names. Directories are left alone; a missing directory, files removed meanwhile or
    files that cannot be removed are no error."""
    import time

    now = time.time()
    removed: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:  # missing or unreadable: best effort
        return removed
    for entry in entries:
        if not entry.name.startswith(TMP_PREFIX):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                continue  # (the installer's staging directories are its own business)
            if now - entry.stat(follow_symlinks=False).st_mtime < older_than:
                continue
            os.unlink(entry.path)
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            continue
        removed.append(entry.name)
    return sorted(removed)


def _replace(path: str, mode: int, fill: Callable[[BinaryIO], object]) -> None:
    """Write a temporary file in ``path``'s directory with ``fill``, fsync it, rename it
    over ``path``, fsync the directory. The temporary file is removed on any failure."""
    directory = os.path.dirname(path) or "."
    tmp = temp_name(directory)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:  # noqa: SIM105 (contextlib is not imported on the pod-start path)
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def _same_file(path: str, mode: int, chunks: Callable[[], bytes]) -> bool:
    """Whether ``path`` is a regular file (not a symlink) with ``mode`` whose content is
    what successive ``chunks()`` calls return (until ``b""``)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or (st.st_mode & 0o7777) != mode:
            return False
        with open(path, "rb") as f:
            while True:
                want = chunks()
                if f.read(len(want) or 1) != want:
                    return False
                if not want:
                    return True
    except FileNotFoundError:
        return False


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = 0o644,
    skip_unchanged: bool = False,
    make_dirs: bool = False,
) -> bool:
    """Write ``data`` to ``path`` atomically with permission ``mode``.

    With ``skip_unchanged``, a file that already has exactly this content and mode is
    left alone and False is returned; otherwise True. ``make_dirs`` creates the directory.
    """
    path = os.fspath(path)
    if make_dirs:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if skip_unchanged:
        pending = [data, b""]
        if _same_file(path, mode, lambda: pending.pop(0) if pending else b""):
            return False
    _replace(path, mode, lambda f: f.write(data))
    return True


def copy_atomic(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    mode: int = 0o755,
    skip_unchanged: bool = False,
) -> bool:
    """Copy ``src``'s content to ``dst`` atomically with ``mode`` (default executable).
    With ``skip_unchanged``, False (nothing written) when ``dst`` already has exactly this
    content and mode."""
    dst = os.fspath(dst)
    if skip_unchanged:
        with open(src, "rb") as inp:
            if _same_file(dst, mode, lambda: inp.read(CHUNK)):
                return False

    def fill(out: BinaryIO) -> None:
        with open(src, "rb") as inp:
            while block := inp.read(CHUNK):
                out.write(block)

    _replace(dst, mode, fill)
    return True


def symlink_atomic(target: str, link: str | os.PathLike[str]) -> bool:
    """Make ``link`` a symlink to ``target`` by renaming a new symlink over it; False when
    it already points there. Replaces a regular file of that name too."""
    link = os.fspath(link)
    try:
        if os.readlink(link) == target:
            return False
    except OSError:
        pass
    directory = os.path.dirname(link) or "."
    for _ in range(100):
        tmp = temp_name(directory)
        try:
            os.symlink(target, tmp)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 random collisions
        raise FileExistsError(f"cannot create a temporary symlink in {directory}")
    try:
        os.replace(tmp, link)
    except BaseException:
        try:  # noqa: SIM105
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)
    return True
