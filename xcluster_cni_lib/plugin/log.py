"""A minimal logger for the plugins: one line per message to the log file or stderr.

``logging`` costs milliseconds to import on every pod start; this costs nothing.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Log:
    """Writes ``<time> <level> <plugin>: <message>`` lines at or above ``level``.

    ``logfile`` empty means stderr, or ``emit(level, message)`` when given (the agent
    serving the verbs turns the lines into its own JSON log). Never writes to stdout;
    never raises.
    """

    def __init__(
        self,
        plugin: str,
        *,
        logfile: str = "",
        level: str = "warning",
        emit: Callable[[str, str], None] | None = None,
    ) -> None:
        self.plugin = plugin
        self.logfile = logfile
        self.threshold = LEVELS.get(level.lower(), 30)
        self.emit = emit

    def _write(self, level: str, msg: str) -> None:
        if LEVELS[level] < self.threshold:
            return
        if self.emit is not None and not self.logfile:
            try:  # noqa: SIM105 (contextlib is not imported on the pod-start path)
                self.emit(level, msg)
            except Exception:  # a log line must never fail a call
                pass
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        line = f"{stamp}Z {level} {self.plugin}[{os.getpid()}]: {msg}\n"
        try:
            if self.logfile:
                with open(self.logfile, "a", encoding="utf-8") as f:
                    f.write(line)
            else:
                sys.stderr.write(line)
                sys.stderr.flush()
        except OSError:
            pass

    def debug(self, msg: str) -> None:
        self._write("debug", msg)

    def info(self, msg: str) -> None:
        self._write("info", msg)

    def warning(self, msg: str) -> None:
        self._write("warning", msg)

    def error(self, msg: str) -> None:
        self._write("error", msg)
