"""The typed errors: whether a retry helps, and the texts they carry."""

from __future__ import annotations

import pytest

from xcluster_cni_lib.core.errors import (
    InputError,
    InvalidNode,
    TemporaryError,
    XclusterError,
    shorten,
    shorten_optional,
)


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


def test_shorten_keeps_short_values_and_cuts_long_ones_once() -> None:
    assert shorten("x" * 200) == "x" * 200
    assert shorten("x" * 201) == "x" * 200 + "... (201 characters)"
    cut = shorten("x" * 262144)
    assert cut == "x" * 200 + "... (262144 characters)"
    assert shorten(cut) == cut  # shortening again keeps the original length
    assert shorten_optional(None) is None and shorten_optional("a") == "a"
    assert str(InvalidNode("n" * 300, "bad", key="k", value="v" * 300)) == (
        f"node {'n' * 200}... (300 characters): bad (k='{'v' * 200}... (300 characters)')"
    )


@pytest.mark.parametrize(
    ("tail", "kept"),
    [
        ("... (" + "1" * 22 + " characters)", True),  # 39 characters: a marker
        ("... (" + "1" * 23 + " characters)", False),  # 40: too long for a marker
        ("... (12 characters", False),  # not ending like a marker
        ("..: (12 characters)", False),  # not starting like one
    ],
)
def test_shorten_recognises_only_its_own_marker(tail: str, kept: bool) -> None:
    value = "x" * 200 + tail
    assert (shorten(value) == value) is kept
    if not kept:
        assert shorten(value) == "x" * 200 + f"... ({len(value)} characters)"
