"""Handler: a logging.Handler (and loguru sink) writing through a crash-safe Writer.

Design rules:

- The hot path is lean: ``handle`` skips logging's per-handler lock (the Writer has its
  own, held only for the copy into the map), formats once, and frames into the map.  No
  system call per record.
- Formatting with a plain ``logging.Formatter`` is done by a fast path that produces the
  very same text: the ``asctime`` string is computed once per second (strftime is the
  slowest part of formatting) and milliseconds are appended as logging does.  Any other
  formatter, or a record with exception or stack text, goes through ``format()``.
- A record that cannot be logged (buffer full and disk full) is counted and warned about,
  never raised into the application.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any

from ..errors import DiskFullError
from .writer import LogWarning, Writer, WriterStatistics

__all__ = ["Handler"]

DEFAULT_FORMAT = "%(name)s: %(message)s"


class Handler(logging.Handler):
    """Log into ``directory`` under ``name`` (see :class:`Writer` for the options).

    Usable with ``logging.config.dictConfig`` (``"class": "mmapkit.log.Handler"``) and as a
    loguru sink (``logger.add(handler)`` or ``logger.add(handler.write)``).
    """

    def __init__(self, directory: str | os.PathLike[str], name: str = "app", *,
                 level: int | str = logging.NOTSET, **writer_options: Any) -> None:
        super().__init__(level)
        self.writer = Writer(directory, name, **writer_options)
        self._write = self.writer.write
        self.dropped = 0
        self._time_cache: tuple[int, Any, str | None, str] = (-1, None, None, "")
        self.setFormatter(logging.Formatter(DEFAULT_FORMAT))

    # --- the hot path -----------------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> Any:
        rv: Any = True
        if self.filters:
            rv = self.filter(record)
            if not rv:
                return rv
            if isinstance(rv, logging.LogRecord):
                record = rv
        try:  # emit(), inlined: this is the hot path
            self._write(self._format(record), record.levelno, int(record.created * 1e6))
        except DiskFullError as exc:
            self._drop(exc)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(self._format(record), record.levelno, int(record.created * 1e6))
        except DiskFullError as exc:
            self._drop(exc)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _format(self, record: logging.LogRecord) -> str:
        fmt = self.formatter
        if (type(fmt) is not logging.Formatter or record.exc_info or record.exc_text
                or record.stack_info):
            return (fmt or logging.Formatter(DEFAULT_FORMAT)).format(record)
        style = fmt._style
        if type(style) is not logging.PercentStyle or getattr(style, "_defaults", None):
            return fmt.format(record)
        record.message = record.getMessage()
        if style.usesTime():
            record.asctime = self._asctime(fmt, record)
        return style._fmt % record.__dict__

    def _asctime(self, fmt: logging.Formatter, record: logging.LogRecord) -> str:
        """What ``fmt.formatTime(record, fmt.datefmt)`` returns, strftime once a second."""
        sec = int(record.created)
        cached_sec, conv, datefmt, text = self._time_cache
        if cached_sec != sec or conv is not fmt.converter or datefmt != fmt.datefmt:
            ct = fmt.converter(record.created)
            text = (fmt.formatTime(record, fmt.datefmt) if fmt.datefmt
                    else time.strftime(fmt.default_time_format, ct))
            self._time_cache = (sec, fmt.converter, fmt.datefmt, text)
        if fmt.datefmt:
            return text
        if fmt.default_msec_format:
            return fmt.default_msec_format % (text, record.msecs)
        return text

    def _drop(self, exc: Exception) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 10000 == 0:
            warnings.warn(f"mmapkit.log: {self.dropped} records dropped so far: {exc}",
                          LogWarning, stacklevel=4)

    # --- loguru sink ------------------------------------------------------------------

    def write(self, message: Any) -> None:
        """A loguru sink (or any ``write(str)`` user): one call, one record."""
        record = getattr(message, "record", None)
        text = str(message)
        if text.endswith("\n"):
            text = text[:-1]
        try:
            if record is not None:
                self.writer.write(text, int(record["level"].no),
                                  int(record["time"].timestamp() * 1_000_000))
            else:
                self.writer.write(text, logging.INFO)
        except DiskFullError as exc:
            self._drop(exc)

    __call__ = write

    # --- life cycle -------------------------------------------------------------------

    def flush(self) -> None:
        try:
            self.writer.flush()
        except DiskFullError as exc:
            warnings.warn(f"mmapkit.log: flush failed: {exc}", LogWarning, stacklevel=2)

    def close(self) -> None:
        self.writer.close()
        super().close()

    def statistics(self) -> WriterStatistics:
        return self.writer.statistics()

    def __repr__(self) -> str:
        return (f"<mmapkit.log.Handler {self.writer.directory}/{self.writer.name} "
                f"({logging.getLevelName(self.level)})>")
