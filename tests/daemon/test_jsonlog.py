"""JSON log lines: shape, levels, and no secrets."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from xcluster_cni_lib.support import jsonlog


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    yield out
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_fields(stream: io.StringIO) -> None:
    jsonlog.setup("info", stream)
    log = jsonlog.get_logger("xcluster_cni_lib.test")
    log.info("sync", added=3, duration_s=0.5, msg="shadowed", nodes=("a", "b"))
    log.debug("hidden")
    logging.getLogger("xcluster_cni_lib.sources.kube").warning("plain %s", "stdlib")
    out = lines(stream)
    assert len(out) == 2
    assert out[0]["msg"] == "sync" and out[0]["level"] == "info"
    assert out[0]["added"] == 3 and out[0]["nodes"] == ["a", "b"]
    assert out[0]["field_msg"] == "shadowed"
    assert str(out[0]["time"]).endswith("Z")
    assert out[1] == {**out[1], "level": "warning", "msg": "plain stdlib"}


def test_trace_level(stream: io.StringIO) -> None:
    jsonlog.setup("trace", stream)
    jsonlog.get_logger("x").trace("route op", dst="10.0.0.0/24")
    assert lines(stream)[0]["level"] == "trace"


def test_credentials_are_never_logged(stream: io.StringIO) -> None:
    jsonlog.setup("info", stream)
    jsonlog.get_logger("x").info(
        "client", token="abc123", bearer_token="abc123", config={"password": "abc123", "user": "u"}
    )
    assert "abc123" not in stream.getvalue()
    assert lines(stream)[0]["config"] == {"password": "[redacted]", "user": "u"}


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="verbose"):
        jsonlog.parse_level("verbose")
