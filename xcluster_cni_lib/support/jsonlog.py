"""Structured JSON log lines: one object per line with ``time``, ``level``, ``msg``, ``logger``
and the event's fields flattened next to them.

Built on the standard ``logging`` module, so lines logged by other modules (``kube``,
``netlink``) through ``logging.getLogger(__name__)`` come out in the same shape. Adds a
``trace`` level below ``debug``. Field names that look like credentials (``token``,
``password``, ``secret``, ``authorization``, ``bearer``, ``cookie``) are replaced by
``"[redacted]"`` whatever their value, so a careless call cannot leak a token.

Usage::

    from xcluster_cni_lib.support import jsonlog
    jsonlog.setup("info")                      # once, in a main
    log = jsonlog.get_logger(__name__)
    log.info("sync done", added=3, duration_s=0.004)

Without ``setup`` (a script that calls ``logging.basicConfig()``, or pytest's ``caplog``)
the same call reads ``sync done added=3 duration_s=0.004``: the record's ``msg`` is an
:class:`Event`, a ``str`` equal to the event text whose ``str()`` (what
``record.getMessage()`` and every plain formatter use) appends the fields as
``key=value``, values JSON-quoted when they hold spaces, credentials redacted. The JSON
lines keep the event text in ``msg`` and the fields as keys.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Mapping
from typing import IO, Any

from xcluster_cni_lib import quiet_by_default

quiet_by_default()  # the library's loggers: silent unless the application configures logging

TRACE = 5
DEBUG = logging.DEBUG
INFO = logging.INFO
logging.addLevelName(TRACE, "TRACE")

LEVELS: dict[str, int] = {
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}
_NAMES = {
    logging.CRITICAL: "error",
    logging.ERROR: "error",
    logging.WARNING: "warning",
    logging.INFO: "info",
    logging.DEBUG: "debug",
    TRACE: "trace",
}
_RESERVED = ("time", "level", "msg", "logger")
_SECRET_WORDS = ("token", "password", "secret", "authorization", "bearer", "cookie")
REDACTED = "[redacted]"


def _is_secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): REDACTED if _is_secret(str(k)) else _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return _jsonable(to_json())
    return str(value)


def _plain_value(value: object) -> str:
    data = _jsonable(value)
    if isinstance(data, str):
        if data and not any(c.isspace() or c in '"=\\' for c in data):
            return data
        return json.dumps(data, ensure_ascii=False)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def plain_fields(fields: Mapping[str, object]) -> str:
    """``key=value key2="a value"``: the fields as a plain log line shows them."""
    return " ".join(
        f"{key}={REDACTED if _is_secret(str(key)) else _plain_value(value)}"
        for key, value in fields.items()
    )


class Event(str):
    """A log event: equal to (and a ``str`` of) its text, with its fields attached.

    ``str(event)`` is what plain handlers print (``record.getMessage()``): the text and
    then :func:`plain_fields`, rendered only when a handler formats the record. ``.text``
    is the bare event text, what :func:`render` puts in ``msg``."""

    fields: Mapping[str, object]

    def __new__(cls, text: str, fields: Mapping[str, object]) -> Event:
        event = super().__new__(cls, text)
        event.fields = fields
        return event

    def __reduce__(self) -> tuple[type[Event], tuple[str, dict[str, object]]]:
        return (Event, (self.text, dict(self.fields)))

    @property
    def text(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        text = str.__str__(self)
        return f"{text} {plain_fields(self.fields)}" if self.fields else text


def render(record: logging.LogRecord) -> str:
    """One JSON line (without newline) for a log record."""
    when = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
    message = record.msg
    out: dict[str, object] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": _NAMES.get(record.levelno, record.levelname.lower()),
        "msg": message.text if isinstance(message, Event) else record.getMessage(),
        "logger": record.name,
    }
    fields = getattr(record, "fields", None)
    if isinstance(fields, Mapping):
        for key, value in fields.items():
            name = f"field_{key}" if key in _RESERVED else str(key)
            out[name] = REDACTED if _is_secret(name) else _jsonable(value)
    if record.exc_info and record.exc_info[1] is not None:
        out["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """A ``logging.Formatter`` producing :func:`render` lines."""

    def format(self, record: logging.LogRecord) -> str:
        return render(record)


def parse_level(text: str) -> int:
    """``error``, ``info``, ``debug`` or ``trace`` (and ``warning``) to a logging level."""
    try:
        return LEVELS[text.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {text!r} (use one of error, info, debug, trace)"
        ) from None


def setup(level: str | int = "info", stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record (this library's and its dependencies') as JSON lines to
    ``stream`` (stderr by default) at ``level`` and above. Replaces the root handlers.
    Chatty third-party loggers (``urllib3``, ``kubernetes``) are held at ``warning`` unless
    the level is ``trace``."""
    numeric = parse_level(level) if isinstance(level, str) else level
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    noisy = logging.WARNING if numeric > TRACE else TRACE
    for name in ("urllib3", "kubernetes", "pyroute2"):
        logging.getLogger(name).setLevel(max(noisy, numeric))
    return handler


class StructLogger:
    """A thin wrapper over a ``logging.Logger``: ``log.info("msg", key=value, ...)``.

    Fields are only rendered when the level is enabled, so ``log.trace(...)`` in a hot
    loop costs one level check."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def enabled(self, level: int) -> bool:
        return self.logger.isEnabledFor(level)

    def log(self, level: int, msg: str, /, **fields: Any) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, Event(msg, fields), extra={"fields": fields}, stacklevel=3)

    def error(self, msg: str, /, **fields: Any) -> None:
        self.log(logging.ERROR, msg, **fields)

    def warning(self, msg: str, /, **fields: Any) -> None:
        self.log(logging.WARNING, msg, **fields)

    def info(self, msg: str, /, **fields: Any) -> None:
        self.log(logging.INFO, msg, **fields)

    def debug(self, msg: str, /, **fields: Any) -> None:
        self.log(logging.DEBUG, msg, **fields)

    def trace(self, msg: str, /, **fields: Any) -> None:
        self.log(TRACE, msg, **fields)

    def exception(self, msg: str, /, **fields: Any) -> None:
        if self.logger.isEnabledFor(logging.ERROR):
            self.logger.error(
                Event(msg, fields), exc_info=True, extra={"fields": fields}, stacklevel=2
            )


def get_logger(name: str) -> StructLogger:
    """A :class:`StructLogger` for a module name."""
    return StructLogger(logging.getLogger(name))
