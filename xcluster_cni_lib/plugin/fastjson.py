"""JSON for the pod-start path without importing the ``json`` package.

``json.decoder`` and ``json.encoder`` import ``re`` (with ``enum``, ``functools``, ...),
about 5 ms of a cold start; the C accelerator ``_json`` that ``json`` itself uses needs
none of that. Same results as ``json.loads``/``json.dumps(sort_keys=True)`` for JSON
documents; falls back to ``json`` where ``_json`` is missing.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _json = None  # type: ignore[assignment]

_WS = " \t\n\r"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def _no_default(obj: object) -> Any:
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


class _Context:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_reject_constant)


_scan = _json.make_scanner(_Context()) if _json is not None else None  # type: ignore[arg-type]
_encode = (
    _json.make_encoder(
        None, _no_default, _json.encode_basestring_ascii, None, ": ", ", ", True, False, False
    )
    if _json is not None
    else None
)


def loads(data: bytes | str) -> Any:
    """Decode one JSON document (UTF-8 bytes or text). ValueError when it is not one."""
    text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    try:
        if _scan is None:  # pragma: no cover
            import json

            return json.loads(text)
        start = len(text) - len(text.lstrip(_WS))
        try:
            value, end = _scan(text, start)
            if not text[end:].strip(_WS):
                return value
        except (StopIteration, SystemError, ValueError):
            pass
        # Not one JSON document. The scanner reports errors with json.decoder's
        # JSONDecodeError, found only when that module is loaded: let json say precisely
        # what is wrong.
        import json

        json.loads(text, parse_constant=_reject_constant)
    except RecursionError:  # hostile nesting ([[[[...): a decoding error like any other
        raise ValueError("not JSON: nested too deeply") from None
    raise ValueError("not JSON")  # pragma: no cover - json.loads raised above


def dumps(obj: object) -> str:
    """Encode with sorted keys and ASCII output, as ``json.dumps(obj, sort_keys=True)``."""
    if _encode is None:  # pragma: no cover
        import json

        return json.dumps(obj, sort_keys=True)
    return "".join(_encode(obj, 0))
