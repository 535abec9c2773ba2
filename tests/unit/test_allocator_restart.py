"""``restart_with_c_malloc``: the program runs again in the same process with
``PYTHONMALLOC=malloc``, once; an allocator the environment chose is kept."""

from __future__ import annotations

import os
import subprocess
import sys

PROGRAM = """
import os
from xcluster_cni_lib.support.memory import restart_with_c_malloc
print(os.getpid(), os.environ.get("PYTHONMALLOC"), flush=True)
restart_with_c_malloc()
print("returned", flush=True)
"""


def _run(**env: str) -> list[list[str]]:
    base = {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"}
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return [line.split() for line in out.splitlines()]


def test_runs_again_in_the_same_process_with_the_c_allocator() -> None:
    (pid1, before), (pid2, after), returned = _run()
    assert (before, after) == ("None", "malloc")
    assert pid1 == pid2  # execve: the same process, as a supervisor sees it
    assert returned == ["returned"]  # the second run goes on


def test_an_allocator_the_environment_chose_is_kept() -> None:
    [(_, chosen), returned] = _run(PYTHONMALLOC="pymalloc")
    assert chosen == "pymalloc" and returned == ["returned"]
