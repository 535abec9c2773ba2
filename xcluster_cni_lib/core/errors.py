"""Typed errors. Each says whether a retry can help (``temporary``)."""

from __future__ import annotations


class XclusterError(Exception):
    """Base of every error this library raises on purpose."""

    temporary: bool = False


class InputError(XclusterError, ValueError):
    """Bad input that a retry will not fix (a malformed CIDR, a broken config)."""


class InvalidNode(InputError):
    """A Node object that cannot be used; names the node, the key and the bad value."""

    def __init__(self, node: str, reason: str, *, key: str | None = None, value: str | None = None):
        self.node = node
        self.reason = reason
        self.key = key
        self.value = value
        where = "" if key is None else f" ({key})" if value is None else f" ({key}={value!r})"
        super().__init__(f"node {node}: {reason}{where}")


class TemporaryError(XclusterError):
    """Something outside us failed (API server unreachable, ...); retrying may help."""

    temporary = True
