"""Route protocol numbers: which ones an instance may own, and the default.

A route protocol number (``rtm_protocol``, 0-255) tags every route we write; dumps and
deletes filter on it, so a daemon (or a library user) only ever touches its own routes.
Numbers 0-4 are the kernel's own: 0 ``unspec``, 1 ``redirect``, 2 ``kernel`` (connected
routes), 3 ``boot`` (what ``ip route add`` uses without ``proto``) and 4 ``static``. A
table bound to one of those would list, replace and delete routes made by hand or by
the kernel, so they are refused everywhere (daemon config, ``NetlinkRouteTable``).
"""

from __future__ import annotations

from typing import Final

from xcluster_cni_lib.core.errors import InputError

#: The protocol number of the daemon and of the command-line tools unless told otherwise.
DEFAULT_PROTOCOL: Final = 202
#: The kernel's own protocol numbers and their iproute2 names.
KERNEL_PROTOCOLS: Final[dict[int, str]] = {
    0: "unspec",
    1: "redirect",
    2: "kernel",
    3: "boot",
    4: "static",
}
#: The smallest number an instance may own.
FIRST_OWNABLE: Final = 5


def check_protocol(number: int) -> int:
    """``number`` if an instance may own routes of that protocol (5-255); else
    ``InputError`` (a ``ValueError``) saying why."""
    if not 0 <= number <= 255:
        raise InputError(f"route protocol must be between {FIRST_OWNABLE} and 255, got {number}")
    name = KERNEL_PROTOCOLS.get(number)
    if name is not None:
        raise InputError(
            f"route protocol {number} is the kernel's own protocol {name!r}; use a number "
            f"between {FIRST_OWNABLE} and 255 (default {DEFAULT_PROTOCOL})"
        )
    return number
