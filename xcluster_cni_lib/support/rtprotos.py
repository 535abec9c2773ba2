"""iproute2's names of route protocol numbers (``rt_protos``), read in one place.

iproute2 reads ``/etc/iproute2/rt_protos`` (or, when absent, the distribution's copy in
``/usr/share/iproute2``) and then every ``rt_protos.d/*.conf`` file; a line is
``NUMBER NAME`` with ``#`` comments. The first name found for a number wins here.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from typing import Final

from xcluster_cni_lib.core.protocols import KERNEL_PROTOCOLS

RT_PROTOS_FILES: Final = ("/etc/iproute2/rt_protos", "/usr/share/iproute2/rt_protos")
RT_PROTOS_DIRS: Final = ("/etc/iproute2/rt_protos.d", "/usr/share/iproute2/rt_protos.d")


def read_rt_protos(
    files: Sequence[str] = RT_PROTOS_FILES, dirs: Sequence[str] = RT_PROTOS_DIRS
) -> dict[int, str]:
    """Number -> name from the rt_protos ``files`` and the ``*.conf`` files of ``dirs``
    (in name order). Unreadable files and malformed lines are skipped."""
    paths = [*files, *(p for d in dirs for p in sorted(glob.glob(os.path.join(d, "*.conf"))))]
    out: dict[int, str] = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) >= 2:
                try:
                    number = int(fields[0], 0)
                except ValueError:
                    continue
                out.setdefault(number, fields[1])
    return out


def protocol_name(number: int, names: Mapping[int, str] | None = None) -> str:
    """``"186 (bgp)"``-style text for a route protocol number: the name from ``names``
    (default: the system's rt_protos files), else the kernel's, else the number alone."""
    table = read_rt_protos() if names is None else names
    name = table.get(number) or KERNEL_PROTOCOLS.get(number)
    return f"{number} ({name})" if name else str(number)
