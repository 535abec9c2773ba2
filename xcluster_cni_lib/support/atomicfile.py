"""Atomic file writes: a temporary file in the target directory, fsync, rename.

A reader (a container runtime, the daemon polling ``NODES_FILE``, a plugin reading its
cache) sees the old content or the new, never a partial file. Standard library ``os``
only, because the IPAM plugin writes its cache with this on the pod-start path.
"""

from __future__ import annotations

import os

TMP_PREFIX = ".xcluster-cni-tmp-"


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    left alone (same inode and mtime) and False is returned; otherwise True.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    if make_dirs:
        os.makedirs(directory, exist_ok=True)
    if skip_unchanged:
        try:
            if (os.stat(path).st_mode & 0o7777) == mode:
                with open(path, "rb") as f:
                    if f.read() == data:
                        return False
        except FileNotFoundError:
            pass
    tmp = os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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
    return True
