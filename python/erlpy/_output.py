"""Route ``sys.stdout``, ``sys.stderr`` and ``logging`` to Erlang's ``logger``.

The protocol runs on fds of its own, so nothing written to fds 1/2 can corrupt it; this
module makes Python-level output useful too, by sending each line as a LOG message."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

from ._codec import Atom

Emit = Callable[[Atom, str], None]

_LEVELS = {
    logging.CRITICAL: Atom("critical"),
    logging.ERROR: Atom("error"),
    logging.WARNING: Atom("warning"),
    logging.INFO: Atom("info"),
    logging.DEBUG: Atom("debug"),
}


class LogStream(io.TextIOBase):
    """A text stream that sends complete lines to Erlang at one logger level: the lines
    one write completes as one event; a line still without its newline when a request
    ends goes then (:func:`flush_pending`), so ``print(x, end="")`` shows too."""

    def __init__(self, emit: Emit, level: str, name: str) -> None:
        super().__init__()
        self._emit = emit
        self._level = Atom(level)
        self.name = name
        self._partial = ""

    encoding = "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        data = self._partial + text
        complete, newline, self._partial = data.rpartition("\n")
        if newline:
            self._emit(self._level, complete)
        if self._partial:
            _pending.add(self)
        else:
            _pending.discard(self)
        return len(text)

    def flush(self) -> None:
        _pending.discard(self)
        if self._partial:
            line, self._partial = self._partial, ""
            self._emit(self._level, line)


# Streams holding a line without its newline yet.
_pending: set[LogStream] = set()


def flush_pending() -> None:
    """Send the lines that output streams hold without their newline (a request ended)."""
    for stream in list(_pending):
        stream.flush()


class LogHandler(logging.Handler):
    """A ``logging`` handler whose records become Erlang logger events."""

    def __init__(self, emit: Emit) -> None:
        super().__init__()
        self._emit = emit

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = (
                _LEVELS.get(record.levelno)
                or _LEVELS[max(lvl for lvl in _LEVELS if lvl <= max(record.levelno, logging.DEBUG))]
            )
            self._emit(level, f"{record.name}: {self.format(record)}")
        except Exception:
            self.handleError(record)
