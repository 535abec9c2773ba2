"""The typed errors: whether a retry helps, and the texts they carry."""

from __future__ import annotations

import pytest

from xcluster_cni_lib.core.errors import InputError, InvalidNode, TemporaryError, XclusterError


def test_only_temporary_errors_say_a_retry_helps() -> None:
    assert TemporaryError("api down").temporary is True
    assert InputError("bad").temporary is False
    assert InvalidNode("n1", "bad").temporary is False
    assert XclusterError("x").temporary is False
    assert isinstance(InputError("bad"), ValueError)  # callers may catch ValueError
    assert not isinstance(TemporaryError("x"), ValueError)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({}, "node n1: not a CIDR"),
        ({"key": "example.com/cidr"}, "node n1: not a CIDR (example.com/cidr)"),
        (
            {"key": "example.com/cidr", "value": "10.0.0.0/33"},
            "node n1: not a CIDR (example.com/cidr='10.0.0.0/33')",
        ),
    ],
)
def test_invalid_node_names_node_key_and_value(kwargs: dict[str, str], text: str) -> None:
    err = InvalidNode("n1", "not a CIDR", **kwargs)
    assert str(err) == text
    assert (err.node, err.reason, err.key, err.value) == (
        "n1",
        "not a CIDR",
        kwargs.get("key"),
        kwargs.get("value"),
    )
