"""Find a CNI plugin on ``CNI_PATH`` and run it with a given stdin and env.

No ``subprocess`` (it costs milliseconds to import on the pod-start path): ``os.posix_spawn``
with pipes. ``exec_plugin`` replaces the current process, so the plugin's stdout and exit
code become ours with no Python left running.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # (collections.abc imports all of collections)
    from collections.abc import Mapping
    from typing import NoReturn

_PIPE_SAFE = 60000  # below the Linux pipe buffer (64 KiB): written before the child reads


def find_plugin(name: str, cni_path: str) -> str:
    """The first executable ``name`` in the ``:``-separated ``cni_path``.

    Raises FileNotFoundError naming the plugin and the path.
    """
    if "/" in name or not name:
        raise FileNotFoundError(f"invalid plugin name {name!r}")
    for directory in cni_path.split(":"):
        if not directory:
            continue
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"plugin {name!r} not found in CNI_PATH {cni_path!r}")


def _stdin_pipe(data: bytes) -> int:
    """A pipe's read end already holding ``data`` (write end closed)."""
    r, w = os.pipe()
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(w, view) :]
    finally:
        os.close(w)
    return r


def run_plugin(path: str, *, stdin: bytes, env: Mapping[str, str]) -> tuple[int, bytes]:
    """Run the plugin; return (exit code, stdout). Its stderr is inherited."""
    if len(stdin) > _PIPE_SAFE:
        import subprocess  # large input: let subprocess interleave the writes

        proc = subprocess.run([path], input=stdin, env=dict(env), stdout=subprocess.PIPE)
        return proc.returncode, proc.stdout
    r_in = _stdin_pipe(stdin)
    r_out, w_out = os.pipe()
    try:
        pid = os.posix_spawn(
            path,
            [path],
            dict(env),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, r_in, 0),
                (os.POSIX_SPAWN_DUP2, w_out, 1),
                (os.POSIX_SPAWN_CLOSE, r_out),
            ],
        )
    finally:
        os.close(r_in)
        os.close(w_out)
    chunks = []
    try:
        while chunk := os.read(r_out, 65536):
            chunks.append(chunk)
    finally:
        os.close(r_out)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks)


def exec_plugin(path: str, *, stdin: bytes, env: Mapping[str, str]) -> NoReturn:
    """Replace this process with the plugin, its stdin holding ``stdin``.

    Flushes nothing: callers must not have written to stdout. Inputs too large for a pipe
    buffer are run and relayed instead.
    """
    if len(stdin) > _PIPE_SAFE:
        import sys

        code, out = run_plugin(path, stdin=stdin, env=env)
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
        os._exit(code & 0xFF)
    r_in = _stdin_pipe(stdin)
    os.dup2(r_in, 0)
    os.close(r_in)
    os.execve(path, [path], dict(env))
