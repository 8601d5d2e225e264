"""Loggers under 'trempy_nb' whose records are masked before any handler sees them.

A password can reach a log line through an exception text or a URI in a
message, so masking is done once, on the record itself: the filter sits on
every logger handed out by `get_logger` (so records are rewritten at their
source, before propagation to any handler, ours or the application's) and on
every handler this module installs. `attach_store` also copies records into
the metadata store's `logs` table.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Protocol, TextIO

from trempy_nb.connections import mask

__all__ = [
    "ROOT",
    "MaskingFilter",
    "MetadataLogHandler",
    "attach_store",
    "enable_console",
    "get_logger",
]

ROOT = "trempy_nb"


class MaskingFilter(logging.Filter):
    """Rewrites a record's message, exception and stack text through `mask`; never drops one."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_trempy_masked", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format must not lose the record
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = mask(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        record._trempy_masked = True
        return True


_FILTER = MaskingFilter()
_LOCK = threading.Lock()


def _ensure_filter(logger: logging.Logger) -> None:
    if not any(isinstance(f, MaskingFilter) for f in logger.filters):
        logger.addFilter(_FILTER)


def get_logger(name: str = ROOT) -> logging.Logger:
    """A logger under 'trempy_nb' (`runner` -> `trempy_nb.runner`) that masks its records."""
    full = name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}"
    logger = logging.getLogger(full)
    with _LOCK:
        _ensure_filter(logger)
        _ensure_filter(logging.getLogger(ROOT))
    return logger


def _add_handler(handler: logging.Handler) -> logging.Handler:
    if not any(isinstance(f, MaskingFilter) for f in handler.filters):
        handler.addFilter(_FILTER)
    get_logger(ROOT).addHandler(handler)
    return handler


def enable_console(
    level: int | str = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Print trempy_nb records (masked) to `stream` (stderr); returns the handler to remove later."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = get_logger(ROOT)
    if root.level == logging.NOTSET or root.level > handler.level:
        root.setLevel(handler.level)
    return _add_handler(handler)


class LogSink(Protocol):
    """What the store hook needs: `MetadataStore.log` fits."""

    def log(self, task: str | None, run_id: str | None, level: str, message: str) -> Any: ...


class MetadataLogHandler(logging.Handler):
    """Copies records into the metadata store; `task`/`run_id` come from the record's extra or defaults."""

    def __init__(
        self,
        store: LogSink,
        task: str | None = None,
        run_id: str | None = None,
        level: int | str = logging.INFO,
    ) -> None:
        super().__init__(level)
        self.store = store
        self.task = task
        self.run_id = run_id
        self._busy = threading.local()
        self.addFilter(_FILTER)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._busy, "on", False):  # the store logging about itself: no loop
            return
        self._busy.on = True
        try:
            message = mask(record.getMessage())
            if record.exc_text:
                message = f"{message}\n{mask(record.exc_text)}"
            self.store.log(
                getattr(record, "task", None) or self.task,
                getattr(record, "run_id", None) or self.run_id,
                record.levelname,
                message,
            )
        except Exception:
            self.handleError(record)
        finally:
            self._busy.on = False


def attach_store(
    store: LogSink,
    task: str | None = None,
    run_id: str | None = None,
    level: int | str = logging.INFO,
) -> MetadataLogHandler:
    """Also store trempy_nb records in `store`; detach with `get_logger().removeHandler(h)`."""
    handler = MetadataLogHandler(store, task=task, run_id=run_id, level=level)
    root = get_logger(ROOT)
    if root.getEffectiveLevel() > handler.level:
        root.setLevel(handler.level)
    _add_handler(handler)
    return handler
