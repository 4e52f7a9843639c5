"""Handler: a logging.Handler (and loguru sink) writing through a crash-safe Writer.

Design rules:

- The hot path is lean: ``handle`` skips logging's per-handler lock (the Writer has its
  own, held only for the copy into the map), formats once, and hands the text to
  ``Writer.write``, which frames it into the map.  No system call per record.
- Formatting with a plain ``logging.Formatter`` is done by a fast path that produces the
  very same text: the ``asctime`` string is computed once per second (strftime is the
  slowest part of formatting) and milliseconds are appended as logging does.  Any other
  formatter, or a record with exception or stack text, goes through ``format()``.
- A record that cannot be logged (buffer full and disk full) is counted and warned about,
  never raised into the application.
"""

from __future__ import annotations

import logging
import operator
import os
import re
import time
import warnings
from collections.abc import Callable
from typing import Any

from ..errors import DiskFullError
from .writer import LogWarning, Writer, WriterStatistics

__all__ = ["Handler"]

DEFAULT_FORMAT = "%(name)s: %(message)s"
_LogRecord = logging.LogRecord
_FIELD = re.compile(r"%(%|\(([^()]*)\))")


def _positional(pattern: str
                ) -> tuple[str, Callable[[logging.LogRecord], tuple[Any, ...]]] | None:
    """``(pattern with "%(key)" made "%", function of a record giving the fields in order)``,
    or None when the pattern has a conversion that is not a plain ``%(key)...``.

    The fields are read as attributes: reading ``record.__dict__`` would build a dict per
    record.  A key the LogRecord class has (a method name) is refused, so an attribute
    read finds exactly what the dict would hold, or raises AttributeError where the dict
    lookup raises KeyError.
    """
    keys: list[str] = []

    def field(m: re.Match[str]) -> str:
        if m.group(1) == "%":
            return "%%"
        keys.append(m.group(2))
        return "%"

    positional = _FIELD.sub(field, pattern)
    if (not keys or "*" in pattern or positional.replace("%%", "").count("%") != len(keys)
            or any(hasattr(logging.LogRecord, k) or not k.isidentifier() for k in keys)):
        return None
    if len(keys) == 1:
        get = operator.attrgetter(keys[0])
        return positional, lambda record: (get(record),)
    return positional, operator.attrgetter(*keys)


class Handler(logging.Handler):
    """Log into ``directory`` under ``name`` (see :class:`Writer` for the options).

    Usable with ``logging.config.dictConfig`` (``"class": "mmapkit.log.Handler"``) and as a
    loguru sink (``logger.add(handler)`` or ``logger.add(handler.write)``).
    """

    def __init__(self, directory: str | os.PathLike[str], name: str = "app", *,
                 level: int | str = logging.NOTSET, **writer_options: Any) -> None:
        # The Writer first: logging.Handler.__init__ registers the handler for
        # logging.shutdown(), which must never meet one without its Writer.
        writer = Writer(directory, name, **writer_options)
        try:
            super().__init__(level)
        except BaseException:
            writer.close()
            raise
        self.writer = writer
        self._write = self.writer.write
        self.dropped = 0
        # The plan: how the fast path formats for the current formatter (see _make_plan).
        self._plan_fmt: logging.Formatter | None = None
        self._plan_fields: Callable[[logging.LogRecord], tuple[Any, ...]] | None = None
        self._plan_pattern = ""
        self._plan_pattern_dict = ""
        self._plan_conv: Any = None
        self._plan_time = False
        self._plan_datefmt: str | None = None
        self._plan_time_format = ""
        self._plan_msec: str | None = None
        self._plan_sec = -1
        self._plan_msecs = -1.0
        self._plan_text = ""
        self._plan_asctime = ""
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
        self.emit(record)  # without logging's handler lock: the Writer has its own
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

    def _asctime(self, record: logging.LogRecord) -> None:
        """Cache record's asctime as Formatter.formatTime makes it, for a record whose
        second or millisecond differs from the cached one (_format checks): strftime once
        per second (it has no sub-second field), logging's msecs suffix once per ms."""
        sec = int(record.created)
        if sec != self._plan_sec:
            fmt = self._plan_fmt
            assert fmt is not None
            self._plan_text = (
                fmt.formatTime(record, fmt.datefmt) if self._plan_datefmt else
                time.strftime(self._plan_time_format, self._plan_conv(record.created)))
            self._plan_sec = sec
        msec = self._plan_msec
        self._plan_asctime = msec % (self._plan_text, record.msecs) if msec else self._plan_text
        self._plan_msecs = record.msecs

    def _format(self, record: logging.LogRecord) -> str:
        """``self.formatter.format(record)``, through the plan's fast path when it gives
        the very same text (a plain LogRecord, no exception or stack text)."""
        fmt = self.formatter
        if fmt is not self._plan_fmt or fmt.converter is not self._plan_conv:  # type: ignore[union-attr]
            self._make_plan(fmt)
        fields = self._plan_fields
        if (fields is not None and record.__class__ is _LogRecord
                and not (record.exc_info or record.exc_text or record.stack_info)):
            msg = record.msg  # LogRecord.getMessage(), inlined
            if msg.__class__ is not str:
                msg = str(msg)
            args = record.args
            if args:
                msg = msg % args
            record.message = msg
            if self._plan_time:
                if int(record.created) != self._plan_sec or record.msecs != self._plan_msecs:
                    self._asctime(record)
                record.asctime = self._plan_asctime
            try:
                return self._plan_pattern % fields(record)
            except AttributeError:  # a field the record lacks: logging's own error
                return self._plan_pattern_dict % record.__dict__
        return (fmt or logging.Formatter(DEFAULT_FORMAT)).format(record)

    def _make_plan(self, fmt: logging.Formatter | None) -> None:
        """Decide once per formatter whether the fast path gives logging's exact text.

        It does for a plain ``logging.Formatter`` with %-style and no defaults: then the
        text is ``fmt % record.__dict__`` with ``asctime`` from strftime, which depends
        only on the second (strftime has no sub-second field), plus logging's msecs.  The
        pattern is turned positional ("%(name)s" -> "%s") with an attrgetter of the
        fields: the same conversions, without a dict lookup per field by the % operator.
        """
        self._plan_fmt = fmt
        self._plan_fields = None
        self._plan_conv = getattr(fmt, "converter", None)
        self._plan_sec = -1
        self._plan_msecs = -1.0
        if fmt is None or type(fmt) is not logging.Formatter:
            return
        style = fmt._style
        if type(style) is not logging.PercentStyle or getattr(style, "_defaults", None):
            return
        plan = _positional(style._fmt)
        if plan is None:
            return
        self._plan_pattern, self._plan_fields = plan
        self._plan_pattern_dict = style._fmt
        self._plan_time = style.usesTime()
        self._plan_datefmt = fmt.datefmt
        self._plan_time_format = fmt.default_time_format
        self._plan_msec = None if fmt.datefmt else fmt.default_msec_format

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

    def sync(self) -> None:
        """Flush and fsync: the records survive an OS crash too (see Writer.sync)."""
        self.writer.sync()

    def close(self) -> None:
        try:
            self.writer.close()  # releases the buffer's lock even when its flush fails
        finally:
            super().close()

    def statistics(self) -> WriterStatistics:
        return self.writer.statistics()

    def __repr__(self) -> str:
        return (f"<mmapkit.log.Handler {self.writer.directory}/{self.writer.name} "
                f"({logging.getLevelName(self.level)})>")
