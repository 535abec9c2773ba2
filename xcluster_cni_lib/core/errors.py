"""Typed errors. Each says whether a retry can help (``temporary``)."""

from __future__ import annotations


def shorten(value: str, limit: int = 200) -> str:
    """``value`` for a log line or an error: whole when short, else its first ``limit``
    characters and its length (a 256 KiB annotation must not become a 256 KiB log line).
    A value already shortened stays as it is (its length is the original's)."""
    if len(value) <= limit:
        return value
    head, marker, tail = value[:limit], "... (", value[limit:]
    if tail.startswith(marker) and tail.endswith(" characters)") and len(tail) < 40:
        return value
    return f"{head}... ({len(value)} characters)"


def shorten_optional(value: str | None) -> str | None:
    """``shorten`` for an optional value."""
    return None if value is None else shorten(value)


class XclusterError(Exception):
    """Base of every error this library raises on purpose."""

    temporary: bool = False


class InputError(XclusterError, ValueError):
    """Bad input that a retry will not fix (a malformed CIDR, a broken config)."""


class InvalidNode(InputError):
    """A Node object that cannot be used; names the node, the key and the bad value
    (values and names shortened: see ``shorten``)."""

    def __init__(self, node: str, reason: str, *, key: str | None = None, value: str | None = None):
        self.node = shorten(node)
        self.reason = reason
        self.key = shorten_optional(key)
        self.value = shorten_optional(value)
        node, key, value = self.node, self.key, self.value
        where = "" if key is None else f" ({key})" if value is None else f" ({key}={value!r})"
        super().__init__(f"node {node}: {reason}{where}")


class TemporaryError(XclusterError):
    """Something outside us failed (API server unreachable, ...); retrying may help."""

    temporary = True
