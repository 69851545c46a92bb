"""Structured logs: one JSON object per line on stdout when it is not a terminal
(so ``| jq`` works), a readable console format on a terminal."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, TextIO

import structlog

FORMATS = ("auto", "json", "console")


# (before, after): called around each line printed to a terminal, so that a live view
# drawn on the same terminal can step aside (see live.py).
_around_print: tuple[Callable[[], None], Callable[[], None]] | None = None


def set_around_print(hooks: tuple[Callable[[], None], Callable[[], None]] | None) -> None:
    global _around_print
    _around_print = hooks


class _Printer:
    """Prints one event a line; a reader that went away (``| head``, a closed SSH
    session) silences the logs instead of killing a run that takes days."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream

    def msg(self, message: str) -> None:
        stream = self.stream or sys.stdout
        if stream is None or getattr(stream, "closed", False):
            return
        hooks = _around_print if _around_print and stream.isatty() else None
        try:
            if hooks:
                hooks[0]()
            stream.write(message + "\n")
            stream.flush()
            if hooks:
                hooks[1]()
        except (BrokenPipeError, OSError, ValueError):
            self.stream = _Silent()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


class _Silent:
    closed = True


def configure(fmt: str = "auto", stream: TextIO | None = None) -> None:
    # A closed stdout (``>&-``) is None: log nowhere rather than fail to start.
    stream = stream or sys.stdout or open(os.devnull, "w")
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        # None: each new logger prints to the sys.stdout of its time.
        logger_factory=lambda *args: _Printer(None if stream is sys.stdout else stream),
        cache_logger_on_first_use=False,
    )


def get_logger(**fields: Any) -> Any:
    return structlog.get_logger("supervisor").bind(**fields)
