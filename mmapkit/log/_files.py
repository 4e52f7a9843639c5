"""The log's files: their names, the patterns that find them, and the sink that appends.

Design rules:

- One spelling of every file name of the log (docs/formats.md ``## log``), shared by the
  writer, the reader and the CLI:

  ==================================  =================================================
  ``NAME.YYYYMMDD.NNNN.mlog``         a log file: frames, appended; ``00000000`` for the
                                      day when not rotating daily; NNNN counts from 0000
  ``NAME.N.mbuf``                     buffer slot N, owned by one live writer (its flock)
  ``NAME.N.mbuf.damaged-<ns>``        a damaged buffer copied aside before its slot was
                                      emptied (read by the reader, never written again)
  ==================================  =================================================

  A name parses one way only: the suffixes are digits between fixed dots, read from the
  right, so ``parse_*`` (any name) and a match for one name agree.
- The sink owns the log files of one directory and name: rotation (by size, daily) and
  retention (by age, by total bytes) only ever start new files and delete old ones, so a
  write is never refused.  Another process's retention may delete the file we append
  to: :meth:`Sink.append` checks that the file still has a name afterwards and otherwise
  appends again to a live one (readers drop the second copy by stream and sequence).
- No state beyond the sink's open descriptor; the functions are pure.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from pathlib import Path

from .._fileio import raise_if_disk_full, write_all
from .._testhooks import PAUSES as _PAUSE
from .._testhooks import pause as _pause

__all__ = [
    "BUF_SUFFIX",
    "DAMAGED_MARK",
    "LOG_SUFFIX",
    "NO_DAY",
    "Sink",
    "buffer_file_name",
    "damaged_file_name",
    "is_buffer_file",
    "log_file_name",
    "parse_buffer_name",
    "parse_log_name",
    "today",
    "valid_name",
]

LOG_SUFFIX = ".mlog"
BUF_SUFFIX = ".mbuf"
DAMAGED_MARK = BUF_SUFFIX + ".damaged-"
NO_DAY = "00000000"  # the day part of log files when not rotating daily

_LOG_NAME = re.compile(r"(.+)\.(\d{8})\.(\d{4,})" + re.escape(LOG_SUFFIX) + "$")
_BUF_NAME = re.compile(r"(.+)\.(\d+)" + re.escape(BUF_SUFFIX) + "$")


def log_file_name(name: str, day: str, index: int) -> str:
    return f"{name}.{day}.{index:04d}{LOG_SUFFIX}"


def buffer_file_name(name: str, slot: int) -> str:
    return f"{name}.{slot}{BUF_SUFFIX}"


def damaged_file_name(buffer_name: str, ns: int) -> str:
    return f"{buffer_name}.damaged-{ns}"


def parse_log_name(entry: str) -> tuple[str, str, int] | None:
    """``(name, day, index)`` of a log file name, else None."""
    m = _LOG_NAME.match(entry)
    return (m.group(1), m.group(2), int(m.group(3))) if m else None


def parse_buffer_name(entry: str) -> tuple[str, int] | None:
    """``(name, slot)`` of a buffer file name, else None."""
    m = _BUF_NAME.match(entry)
    return (m.group(1), int(m.group(2))) if m else None


def is_buffer_file(entry: str) -> bool:
    """A buffer, or a damaged buffer's copy set aside: read as a buffer, not frames."""
    return parse_buffer_name(entry) is not None or DAMAGED_MARK in entry


def today(now: float) -> str:
    return time.strftime("%Y%m%d", time.localtime(now))


def valid_name(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise ValueError(f"log name {name!r} must be a plain file name part, like 'app'")
    return name


class Sink:
    """The log files of one directory and name: rotation, retention, appends."""

    def __init__(self, directory: Path, name: str, *, max_bytes: int | None, rotate: str | None,
                 retention: float | None, max_total_bytes: int | None) -> None:
        self.directory = directory
        self.name = name
        self.max_bytes = max_bytes
        self.rotate = rotate
        self.retention = retention
        self.max_total_bytes = max_total_bytes
        self.fd: int | None = None
        self.path: str | None = None
        self.day = ""
        self.index = 0

    def _files(self) -> list[tuple[str, int, str]]:
        """``(day, index, entry)`` of this name's log files, oldest first."""
        out = []
        for entry in os.listdir(self.directory):
            parsed = parse_log_name(entry)
            if parsed is not None and parsed[0] == self.name:
                out.append((parsed[1], parsed[2], entry))
        out.sort()
        return out

    def _open(self, now: float) -> int:
        day = today(now) if self.rotate == "daily" else NO_DAY
        if self.fd is not None and day == self.day:
            if self.max_bytes is None or os.fstat(self.fd).st_size < self.max_bytes:
                return self.fd
            index = self.index + 1
        else:
            same_day = [i for d, i, _ in self._files() if d == day]
            index = max(same_day, default=0)
        while True:
            path = self.directory / log_file_name(self.name, day, index)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            if self.max_bytes is None or os.fstat(fd).st_size < self.max_bytes:
                break
            os.close(fd)  # another process filled it: move on
            index += 1
        rotated = self.fd is not None
        self.close()
        self.fd, self.path, self.day, self.index = fd, str(path), day, index
        if rotated:
            self.apply_retention(now)
        return fd

    def apply_retention(self, now: float) -> None:
        """Delete old log files (never the one in use).  Other processes may race us."""
        if self.retention is None and self.max_total_bytes is None:
            return
        current = os.path.basename(self.path) if self.path else None
        entries = []
        files = self._files()
        # The newest file is where other processes append (a process starting has no
        # file yet): never deleted for size, only for age (then nobody wrote it lately).
        newest = files[-1][2] if files else None
        for _, _, entry in files:
            if entry == current:
                continue
            try:
                st = os.stat(self.directory / entry)
            except FileNotFoundError:
                continue
            entries.append((entry, st.st_mtime, st.st_size))
        total = sum(size for _, _, size in entries)
        if self.path:
            with contextlib.suppress(OSError):
                total += os.stat(self.path).st_size
        for entry, mtime, size in entries:  # oldest first
            too_old = self.retention is not None and now - mtime > self.retention
            too_big = (self.max_total_bytes is not None and total > self.max_total_bytes
                       and entry != newest)
            if not (too_old or too_big):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / entry)
            total -= size

    def append(self, data: bytes, now: float) -> None:
        """Append ``data`` (whole frames) with O_APPEND writes; raises DiskFullError.

        Returns only once the bytes are in a file that still has a name: if the file was
        deleted meanwhile (retention by another process, or by hand), what went into it
        is gone with it, so it is appended again to a file that exists (readers drop any
        second copy).  The caller frees the buffer only after this returns.
        """
        for _ in range(8):
            fd = self._open(now)
            if _PAUSE:
                _pause("log.sink-opened")
            try:
                write_all(fd, data)
            except OSError as exc:
                raise_if_disk_full(exc, f"no space left to append to {self.path}; the "
                                   "records stay in the buffer and are written when space "
                                   "returns", self.path)
                raise
            if os.fstat(fd).st_nlink:
                return
            self.close()  # deleted under us: the next _open finds or makes a live file
        raise OSError(errno.ENOENT, f"the log files in {self.directory} keep being deleted "
                      "while this process appends to them; the records stay in the buffer")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
