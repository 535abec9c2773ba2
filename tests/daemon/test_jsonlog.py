"""JSON log lines: shape, levels, and no secrets."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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


# -- without jsonlog.setup: plain logging still names the node ---------------------------

PLAIN_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
from xcluster_cni_lib.support import jsonlog
jsonlog.get_logger("xcluster_cni_lib.sync.reconciler").warning(
    "node skipped", node="n1", reason="no IPv6 address", token="abc123", cidrs=["10.0.0.0/24"]
)
"""


def test_plain_logging_shows_the_fields() -> None:
    """A script that only calls ``logging.basicConfig`` sees which node, and why."""
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_SCRIPT], capture_output=True, text=True, check=True
    ).stdout
    assert out == (
        'WARNING node skipped node=n1 reason="no IPv6 address" token=[redacted] '
        'cidrs=["10.0.0.0/24"]\n'
    )


def test_the_json_line_keeps_the_bare_event_text(stream: io.StringIO) -> None:
    jsonlog.setup("info", stream)
    jsonlog.get_logger("xcluster_cni_lib.sync.reconciler").warning(
        "node skipped", node="n1", reason="no IPv6 address"
    )
    (line,) = lines(stream)
    assert {k: v for k, v in line.items() if k != "time"} == {
        "level": "warning",
        "msg": "node skipped",
        "logger": "xcluster_cni_lib.sync.reconciler",
        "node": "n1",
        "reason": "no IPv6 address",
    }


def test_records_compare_equal_to_the_event_text(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="xcluster_cni_lib"):
        jsonlog.get_logger("xcluster_cni_lib.x").info("sync done", added=3, where="a b")
    (record,) = caplog.records
    assert record.msg == "sync done"
    assert record.getMessage() == 'sync done added=3 where="a b"'


def _modules_that_log() -> list[str]:
    lib = Path(__file__).resolve().parents[2] / "xcluster_cni_lib"
    found = []
    for path in sorted(lib.rglob("*.py")):
        text = path.read_text()
        if "import logging" in text or "jsonlog" in text:
            found.append(".".join(path.relative_to(lib.parent).with_suffix("").parts))
    return [m.removesuffix(".__init__") for m in found if m != "xcluster_cni_lib.__init__"]


@pytest.mark.parametrize("module", _modules_that_log())
def test_library_logs_nowhere_until_the_application_configures_logging(module: str) -> None:
    """Every module that logs leaves the package logger with a NullHandler, so a warning
    in a script that set up no logging does not reach Python's last-resort stderr."""
    code = (
        f"import {module}\nimport logging\n"
        "print([type(h).__name__ for h in logging.getLogger('xcluster_cni_lib').handlers])\n"
        "logging.getLogger('xcluster_cni_lib.x').warning('should not be seen')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert (proc.stdout, proc.stderr) == ("['NullHandler']\n", "")


def test_the_pod_start_path_does_not_load_logging() -> None:
    code = "import sys, xcluster_cni_lib.plugin.verbs\nprint('logging' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "False\n"
