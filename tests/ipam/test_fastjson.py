"""The json-free JSON codec of the pod-start path agrees with ``json``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xcluster_cni_lib.plugin import fastjson

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(JSON)
def test_round_trip_like_json(value: object) -> None:
    text = fastjson.dumps(value)
    assert text == json.dumps(value, sort_keys=True)
    assert fastjson.loads(text) == json.loads(text)
    assert fastjson.loads(f" \n{text}\t".encode()) == json.loads(text)


@pytest.mark.parametrize(
    "bad", ["", "   ", "[1] x", "{", "NaN", "[1,]", '{"a":1,}', "\x00", "[1][2]", "'a'"]
)
def test_rejects_what_is_not_one_json_document(bad: str) -> None:
    with pytest.raises(ValueError):
        fastjson.loads(bad)


def test_errors_without_json_loaded() -> None:
    """The C scanner needs json.decoder for its error type; without it, still ValueError."""
    code = (
        "import sys\n"
        "from xcluster_cni_lib.plugin import fastjson\n"
        "assert 'json.decoder' not in sys.modules\n"
        "try:\n"
        "    fastjson.loads('{\"a\": }')\n"
        "except ValueError as e:\n"
        "    print(type(e).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "JSONDecodeError"
