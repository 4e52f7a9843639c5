"""Writer: crash-safe logging into a per-process mapped buffer, flushed in compressed frames.

Design rules:

- The caller's thread only frames a record (size, crc, sequence, time, pid, level) and
  copies it into the mapped buffer file: no system call, no compression per record.
- A flush thread takes the records between ``head`` and ``tail`` of the ring, cuts them
  into chunks of at most ~64 KiB, compresses (and maybe encrypts) each chunk into a frame,
  appends the frames to the log file with one ``write``, and only *then* advances
  ``head`` in the buffer header.  A kill between the two leaves the records in both
  places; their (stream, sequence) numbers let every reader drop the second copy.
- The order of the flush's steps is what makes a crash at any point safe:

  =====  ==========================================  ===================================
  step   action                                      a kill right after it leaves
  =====  ==========================================  ===================================
  1      append frames to the log file               records in file and buffer (dup,
                                                     dropped by sequence on read)
  2      store new ``head`` (one 8-byte store)        records in file only; the freed
                                                     bytes are behind head: ignored
  3      zero the freed bytes                         same
  4      let callers reuse the freed bytes            same
  =====  ==========================================  ===================================

- Freed bytes are zeroed before they are reused, so the word after the last record is
  always 0 and recovery finds the end of the ring without a tail pointer; the ring never
  fills completely (8 bytes stay free) so that word exists.
- Each buffer file belongs to one live process, which holds an exclusive flock on it.  A
  buffer whose lock can be taken has no live owner: a new writer recovers it (writes its
  records to the log file) and reuses it, continuing its stream's sequence numbers.
- Log files are never refused a write: rotation (by size, daily) and retention (by age,
  by total bytes) only ever start new files and delete old, closed ones.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import shutil
import sys
import threading
import time
import warnings
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from ..errors import (
    ClosedError,
    CorruptFileError,
    DiskFullError,
    FileFormatError,
    InvalidSizeError,
    UnsupportedPlatformError,
)
from ..lock import FileLock
from ..region import Region
from . import _codec
from ._codec import (
    BUF_HEADER,
    HEAD_OFFSET,
    HEAD_SEQ_OFFSET,
    PAD_BIT,
    REC_BODY,
    REC_REST,
    RECORD_HEADER,
)
from ._compress import compressor

__all__ = ["LogWarning", "Writer", "WriterStatistics"]

DEFAULT_BUFFER = 1 << 20      # absorbs GIL hand-off delays of the flush thread (see bench)
CHUNK = 64 * 1024           # raw bytes per frame: one damaged byte costs at most this much
LOG_SUFFIX = ".mlog"
BUF_SUFFIX = ".mbuf"
DAY = 86400.0


class LogWarning(UserWarning):
    """Something went wrong that the log survives: disk full, heap fallback, damage."""


@dataclass(frozen=True)
class WriterStatistics:
    records: int            # records accepted by write() since open
    raw_bytes: int          # encoded record bytes written to log files (before compression)
    flushes: int            # flushes that wrote at least one frame
    frames: int             # frames written
    file_bytes: int         # bytes appended to log files
    buffered: int           # bytes waiting in the buffer now
    recovered: int          # records recovered from buffers of dead processes at open
    failed_flushes: int     # flushes that could not write (disk full, I/O error)
    heap_fallback: bool     # True if the buffer is in memory, not a mapped file
    buffer_path: str | None
    log_path: str | None


def log_file_name(name: str, day: str, index: int) -> str:
    return f"{name}.{day}.{index:04d}{LOG_SUFFIX}"


def log_file_pattern(name: str) -> re.Pattern[str]:
    return re.compile(re.escape(name) + r"\.(\d{8})\.(\d{4,})" + re.escape(LOG_SUFFIX) + "$")


def buffer_pattern(name: str) -> re.Pattern[str]:
    return re.compile(re.escape(name) + r"\.(\d+)" + re.escape(BUF_SUFFIX) + "$")


def _today(now: float) -> str:
    return time.strftime("%Y%m%d", time.localtime(now))


def _valid_name(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise ValueError(f"log name {name!r} must be a plain file name part, like 'app'")
    return name


class _Sink:
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
        self._pattern = log_file_pattern(name)

    def _files(self) -> list[tuple[str, int, str]]:
        out = []
        for entry in os.listdir(self.directory):
            m = self._pattern.match(entry)
            if m:
                out.append((m.group(1), int(m.group(2)), entry))
        out.sort()
        return out

    def _open(self, now: float) -> int:
        day = _today(now) if self.rotate == "daily" else "00000000"
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
        for _, _, entry in self._files():
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
            too_big = self.max_total_bytes is not None and total > self.max_total_bytes
            if not (too_old or too_big):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / entry)
            total -= size

    def append(self, data: bytes, now: float) -> None:
        """Append ``data`` (whole frames) with O_APPEND writes; raises DiskFullError."""
        fd = self._open(now)
        view = memoryview(data)
        try:
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(
                    exc.errno, f"no space left to append to {self.path}; the records stay in "
                    "the buffer and are written when space returns") from exc
            raise

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Writer:
    """Crash-safe log writer: ``write()`` returns once the record is in the mapped buffer.

    ``directory``/``name``: where the log files (``name.YYYYMMDD.NNNN.mlog``) and buffer
    files (``name.N.mbuf``) live; several processes may share them.  ``buffer_size``: bytes
    of the mapped ring; a flush starts when it is a third full, every ``flush_interval``
    seconds, and on :meth:`flush`.  ``max_bytes``: start a new log file past this size
    (``None``: never); ``rotate="daily"`` (or ``None``) starts one each local day.
    ``retention`` (seconds) and ``max_total_bytes`` delete the oldest closed files.
    ``compress``: "zlib" (default), "zstd" (extra) or "none".  ``public_key``: an X25519
    public key (32 raw bytes or a cryptography key object) to encrypt every frame (extra
    ``crypto``); only the holder of the private key can read the log.
    """

    def __init__(self, directory: str | os.PathLike[str], name: str = "app", *,
                 buffer_size: int = DEFAULT_BUFFER, flush_interval: float = 3.0,
                 max_bytes: int | None = 16 << 20, rotate: str | None = "daily",
                 retention: float | None = 30 * DAY, max_total_bytes: int | None = None,
                 compress: str = "zlib", public_key: object = None) -> None:
        if sys.byteorder != "little":  # the commit store writes native words; formats are LE
            raise UnsupportedPlatformError("mmapkit.log.Writer needs a little-endian machine")
        if buffer_size < 4096:
            raise InvalidSizeError(f"buffer_size must be at least 4096 bytes, got {buffer_size}")
        if rotate not in ("daily", None):
            raise ValueError(f"rotate must be 'daily' or None, got {rotate!r}")
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive, got {flush_interval}")
        self._directory = Path(directory)
        self._name = _valid_name(name)
        self._directory.mkdir(parents=True, exist_ok=True)
        self._buffer_size = _codec.align8(buffer_size)
        self._interval = flush_interval
        self._code, self._compress = compressor(compress)
        self._encrypt: _codec.Transform | None = None
        if public_key is not None:
            from ._crypto import encryptor

            self._encrypt = encryptor(public_key)
        self._sink = _Sink(self._directory, name, max_bytes=max_bytes, rotate=rotate,
                           retention=retention, max_total_bytes=max_total_bytes)
        self._lock = threading.Lock()          # callers: sequence, tail, bytes of the ring
        self._flush_lock = threading.RLock()   # one flush at a time
        self._wake = threading.Event()
        self._closed = False
        self._flushes = self._frames = self._file_bytes = self._raw_bytes = 0
        self._failed = self._recovered = 0
        self._failing = False
        self._open_buffer()
        self._sink.apply_retention(time.time())
        self._start_thread()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    # --- buffer slots -----------------------------------------------------------------

    def _open_buffer(self) -> None:
        """Claim a buffer slot (recovering every dead one we can lock), or fall back."""
        self._pid = os.getpid()
        self._forked = False
        self._region: Region | None = None
        self._slot_lock: FileLock | None = None
        pattern = buffer_pattern(self._name)
        slots = sorted(int(m.group(1)) for e in os.listdir(self._directory)
                       if (m := pattern.match(e)))
        mine: int | None = None
        for slot in slots:
            lock = FileLock(self._buffer_path(slot))
            if not lock.try_exclusive():
                lock.close()
                continue
            if mine is None and self._adopt(slot, lock):
                mine = slot
                continue
            self._recover_foreign(slot)
            lock.release()
            lock.close()
        if mine is None:
            slot = max(slots, default=-1) + 1
            while True:
                lock = FileLock(self._buffer_path(slot))
                if lock.try_exclusive():
                    break
                lock.close()
                slot += 1
            if not self._adopt(slot, lock):
                lock.release()
                lock.close()
                self._heap_buffer()

    def _buffer_path(self, slot: int) -> Path:
        return self._directory / f"{self._name}.{slot}{BUF_SUFFIX}"

    def _adopt(self, slot: int, lock: FileLock) -> bool:
        """Make ``slot`` our buffer: recover what it holds, then keep appending to it."""
        path = self._buffer_path(slot)
        try:
            exists = path.stat().st_size > 0
            if exists:
                with open(path, "rb") as f:
                    # A creator killed before writing the header left no records either.
                    exists = any(f.read(64))
        except FileNotFoundError:
            exists = False
        try:
            if exists:
                region = Region.open(path)
                try:
                    hdr = _codec.decode_buffer_header(region.view, str(path))
                    if region.size != BUF_HEADER + hdr.capacity:
                        raise CorruptFileError(f"log buffer {path} has the wrong size",
                                               path=str(path))
                except FileFormatError as exc:
                    region.close()
                    self._set_aside(path, exc)
                    return self._adopt(slot, lock)
                stream, head, head_seq = hdr.stream, hdr.head, hdr.head_seq
            else:
                region = Region.open(path, BUF_HEADER + self._buffer_size, create=True)
                stream, head, head_seq = random.getrandbits(63) + 1, 0, 1
                region.view[:BUF_HEADER] = _codec.encode_buffer_header(
                    self._buffer_size, stream, 0, 1, time.time_ns() // 1000, os.getpid())
        except (OSError, FileFormatError) as exc:
            warnings.warn(f"mmapkit.log: cannot map the log buffer {path} ({exc}); logging "
                          "into process memory instead: records written now are lost if "
                          "this process is killed before they are flushed",
                          LogWarning, stacklevel=4)
            return False
        self._region, self._slot_lock = region, lock
        self._install(region.view, stream, head, head_seq)
        if exists:
            self._recovered += self._recover_own()
        return True

    def _set_aside(self, path: Path, exc: Exception) -> None:
        """A damaged buffer is renamed, never wiped: ``mmapkit log recover`` can still read
        what it holds."""
        aside = path.with_name(f"{path.name}.damaged-{time.time_ns()}")
        shutil.copyfile(path, aside)  # copied, not renamed: our lock is on this inode
        os.truncate(path, 0)
        warnings.warn(f"mmapkit.log: {exc}; moved it to {aside} and started a new buffer",
                      LogWarning, stacklevel=5)

    def _heap_buffer(self) -> None:
        self._region = None
        self._install(memoryview(bytearray(BUF_HEADER + self._buffer_size)),
                      random.getrandbits(63) + 1, 0, 1)

    def _install(self, view: memoryview, stream: int, head: int, head_seq: int) -> None:
        self._view = view
        self._area = view[BUF_HEADER:]
        self._cap = len(self._area)
        # Native-order typed views: one store per word (the commit must not tear).  Our
        # formats are little-endian, so big-endian machines are refused at import.
        self._u32: memoryview | None = self._area.cast("I")
        self._hdr_q: memoryview | None = view[:BUF_HEADER].cast("Q")
        self._stream = stream
        spans, tail, next_seq, damages = _codec.scan_ring(self._area, head, head_seq)
        for d in damages:
            warnings.warn(f"mmapkit.log: buffer of stream {stream:#x}: {d.describe()}",
                          LogWarning, stacklevel=5)
        self._checked_spans: list[tuple[int, int]] | None = spans or None
        if not spans:
            head = tail  # nothing live: skip a wrap marker left by a writer killed after it
            self._store_head(tail, head_seq)
        self._head = head
        self._tail = tail
        # The sequence continues the stream's: from the records left in the ring, else
        # from the header (stored before head, so never behind what was flushed).
        self._seq = max(next_seq, head_seq) - 1 if spans else head_seq - 1
        self._seq_at_open = self._seq
        self._zero_free()
        self._threshold = self._cap // 3
        self._kicked = False

    def _zero_free(self) -> None:
        """Zero every byte of the ring outside [head, tail)."""
        cap, head, tail = self._cap, self._head, self._tail
        if tail - head >= cap:
            return
        a, b = tail % cap, head % cap
        if a < b or (a == b and tail == head):
            if a == b:
                self._area[:] = bytes(cap)
            else:
                self._area[a:b] = bytes(b - a)
        else:
            self._area[a:] = bytes(cap - a)
            self._area[:b] = bytes(b)

    def _recover_own(self) -> int:
        """At open: write what the previous owner left in the ring to the log file."""
        count = self._seq_span()
        if count:
            try:
                self._flush_now()
            except OSError as exc:
                warnings.warn(f"mmapkit.log: cannot write the {count} recovered records yet "
                              f"({exc}); they stay in the buffer", LogWarning, stacklevel=5)
        return count

    def _seq_span(self) -> int:
        if self._tail == self._head:
            return 0
        first = self._first_seq()
        return self._seq - first + 1

    def _first_seq(self) -> int:
        off = self._head % self._cap
        size = int.from_bytes(self._area[off : off + 4], "little")
        if size & PAD_BIT:
            off = 0
        return int.from_bytes(self._area[off + 8 : off + 16], "little")

    def _recover_foreign(self, slot: int) -> None:
        """Flush a dead process's buffer into the log and leave it empty (we hold its lock)."""
        path = self._buffer_path(slot)
        try:
            with open(path, "rb") as f:
                if not any(f.read(64)):
                    return  # its creator died before writing the header: nothing in it
            region = Region.open(path)
        except OSError as exc:
            warnings.warn(f"mmapkit.log: cannot open {path} to recover it ({exc}); it is kept "
                          "for the next start", LogWarning, stacklevel=5)
            return
        view = region.view
        area = view[BUF_HEADER:]
        try:
            hdr = _codec.decode_buffer_header(view, str(path))
            if len(area) != hdr.capacity:
                raise CorruptFileError(f"log buffer {path} has the wrong size", path=str(path))
            spans, tail, nseq, damages = _codec.scan_ring(area, hdr.head, hdr.head_seq)
            for d in damages:
                warnings.warn(f"mmapkit.log: {path}: {d.describe()}", LogWarning, stacklevel=5)
            if spans:
                frames = _frames_of(area, spans, hdr.stream, self._code, self._compress,
                                    self._encrypt)
                self._sink.append(b"".join(f for f, _ in frames), time.time())
                self._recovered += sum(n for _, n in frames)
                view[HEAD_SEQ_OFFSET : HEAD_SEQ_OFFSET + 8] = nseq.to_bytes(8, "little")
                view[HEAD_OFFSET : HEAD_OFFSET + 8] = tail.to_bytes(8, "little")
                _zero_outside(area, tail, tail)
        except FileFormatError as exc:
            area.release()
            region.close()
            self._set_aside(path, exc)
            return
        except OSError as exc:
            warnings.warn(f"mmapkit.log: cannot recover {path} now ({exc}); it is kept for "
                          "the next start", LogWarning, stacklevel=5)
        area.release()
        region.close()

    # --- the hot path -----------------------------------------------------------------

    def write(self, message: str | bytes, level: int = 0, time_us: int | None = None) -> None:
        """Append one record.  Once this returns, a kill -9 of this process loses nothing.

        ``level`` is a logging level (0-65535); ``time_us`` defaults to now.  Raises
        DiskFullError only when the buffer is full *and* the log file cannot be written:
        that record was not logged (the buffered ones are kept).
        """
        data = message.encode("utf-8", "surrogateescape") if isinstance(message, str) \
            else message
        if time_us is None:
            time_us = time.time_ns() // 1000
        if self._forked:
            self._reopen_after_fork()
        size = RECORD_HEADER + len(data)
        total = (size + 7) & ~7
        with self._lock:
            tail = self._tail
            cap = self._cap
            off = tail % cap
            wrap = cap - off if off + total > cap else 0
            room = tail + wrap + total - self._head <= cap - 8
            if room:
                area = self._area
                u32 = self._u32
                if u32 is None:
                    self._closed_error()
                if wrap:
                    u32[off >> 2] = PAD_BIT | wrap
                    tail += wrap
                    off = 0
                seq = self._seq + 1
                level &= 0xFFFF
                pid = self._pid
                area[off + 32 : off + size] = data
                REC_BODY.pack_into(
                    area, off + 4, zlib.crc32(data, zlib.crc32(REC_REST.pack(
                        seq, time_us, pid, level, 0))), seq, time_us, pid, level, 0)
                u32[off >> 2] = size  # the commit: one aligned 4-byte store
                self._seq = seq
                self._tail = tail = tail + total
                if tail - self._head > self._threshold and not self._kicked:
                    self._kicked = True
                    self._wake.set()
        if not room:
            self._make_room(total, data, level, time_us)

    def _closed_error(self) -> NoReturn:
        raise ClosedError(f"the log writer for {self._directory}/{self._name} is closed; "
                          "create a new one to keep logging")

    def _make_room(self, total: int, data: bytes, level: int, time_us: int) -> None:
        """The ring is full (or the record is larger than it): flush, then retry."""
        if total <= self._cap // 2:
            self._flush_now()  # DiskFullError here: this record is not logged
            self.write(data, level, time_us)
            return
        # Too big for the ring: empty it, then write the record straight as one frame.
        with self._flush_lock:
            while True:
                self._flush_now()
                with self._lock:
                    if self._head != self._tail:
                        continue  # another thread wrote meanwhile
                    seq = self._seq + 1
                    rec = _codec.encode_record(seq, time_us, self._pid, level, bytes(data))
                    frame = _codec.encode_frame(
                        rec, stream=self._stream, first_seq=seq, count=1, pid=self._pid,
                        first_time_us=time_us, last_time_us=time_us, compression=self._code,
                        compress=self._compress, encrypt=self._encrypt)
                    self._sink.append(frame, time.time())
                    self._store_head(self._tail, seq + 1)
                    self._seq = seq
                    self._raw_bytes += len(rec)
                    self._frames += 1
                    self._file_bytes += len(frame)
                    return

    def _store_head(self, head: int, head_seq: int) -> None:
        """Persist head and the sequence at head.  The sequence goes first, so a kill
        between the two stores never leaves it behind what the files hold."""
        hdr = self._hdr_q
        if hdr is None:
            self._closed_error()
        hdr[HEAD_SEQ_OFFSET // 8] = head_seq
        hdr[HEAD_OFFSET // 8] = head

    # --- flushing ---------------------------------------------------------------------

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"mmapkit-log-{self._name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            self._kicked = False
            if self._closed or self._forked:
                return
            try:
                self._flush_now()
            except OSError:
                pass  # already warned once for this episode; retried on the next wake-up
            except Exception as exc:  # the thread must survive; the caller sees statistics
                warnings.warn(f"mmapkit.log: flush failed: {exc}", LogWarning, stacklevel=1)

    def flush(self) -> None:
        """Write everything buffered to the log file now (raises DiskFullError if it cannot;
        the records then stay in the buffer)."""
        if self._closed:
            return
        self._flush_now()

    def sync(self) -> None:
        """:meth:`flush`, then fsync the log file and msync the buffer: what was written
        before survives an OS crash or power loss too."""
        if self._closed:
            return
        with self._flush_lock:
            self._flush_now()
            if self._sink.fd is not None:
                os.fsync(self._sink.fd)
            if self._region is not None:
                self._region.sync()

    def _flush_now(self) -> None:
        with self._flush_lock:
            with self._lock:
                head, tail, last_seq = self._head, self._tail, self._seq
            if head == tail:
                return
            area = self._area
            # Records left by a dead owner were validated by the scan at open; the
            # scan's spans leave out a damaged record instead of copying it.
            spans, self._checked_spans = self._checked_spans or _spans(area, head, tail), None
            frames = _frames_of(area, spans, self._stream, self._code, self._compress,
                                self._encrypt)
            blob = b"".join(f for f, _ in frames)
            try:
                self._sink.append(blob, time.time())
            except OSError as exc:
                self._failed += 1
                if not self._failing:
                    self._failing = True
                    warnings.warn(f"mmapkit.log: {exc}; {sum(n for _, n in frames)} records "
                                  "wait in the buffer", LogWarning, stacklevel=3)
                raise
            if self._failing:
                self._failing = False
                warnings.warn("mmapkit.log: the log file is writable again; the buffered "
                              "records were written", LogWarning, stacklevel=3)
            self._flushes += 1
            self._frames += len(frames)
            self._raw_bytes += sum(n for _, n in spans)
            self._file_bytes += len(blob)
            # Steps 2-4 of the table in the module comment.
            self._store_head(tail, last_seq + 1)
            _zero_range(area, head, tail)
            self._head = tail

    # --- life cycle -------------------------------------------------------------------

    def _reopen_after_fork(self) -> None:
        """In a fork child: leave the parent's buffer alone and claim our own."""
        with self._flush_lock:
            if not self._forked:
                return
            with contextlib.suppress(Exception):
                self._area.release()
                self._view.release()
            self._u32 = self._hdr_q = None
            if self._region is not None:
                with contextlib.suppress(Exception):
                    self._region.close()  # unmaps in this process only
            self._open_buffer()
            self._start_thread()

    def statistics(self) -> WriterStatistics:
        with self._lock:
            return WriterStatistics(
                self._seq - self._seq_at_open, self._raw_bytes, self._flushes, self._frames,
                self._file_bytes,
                self._tail - self._head, self._recovered, self._failed,
                self._region is None, None if self._region is None else self._region.path,
                self._sink.path)

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def name(self) -> str:
        return self._name

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Flush and release the buffer.  If the flush fails, the records stay in the
        buffer file and the next writer of this directory and name recovers them."""
        if self._closed:
            return
        try:
            with contextlib.suppress(OSError):
                self._flush_now()
        finally:
            with self._lock:
                self._closed = True
            self._wake.set()
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=10)
            self._release()

    def _release(self) -> None:
        with self._lock:
            self._u32 = self._hdr_q = None
        self._area.release()
        self._view.release()
        if self._region is not None:
            self._region.close()
        if self._slot_lock is not None:
            self._slot_lock.release()
        self._sink.close()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"stream {self._stream:#x}"
        return f"<mmapkit.log.Writer {self._directory}/{self._name} {state}>"


def _after_fork(ref: weakref.ref[Writer]) -> None:
    """Runs in a fork child: the parent's threads are gone, so are their locks' holders."""
    w = ref()
    if w is not None and not w._closed:
        w._lock = threading.Lock()
        w._flush_lock = threading.RLock()
        w._wake = threading.Event()
        if w._sink.fd is not None:
            with contextlib.suppress(OSError):
                os.close(w._sink.fd)
            w._sink.fd = None
        w._forked = True


def _spans(area: memoryview, head: int, tail: int) -> list[tuple[int, int]]:
    """Byte ranges of the area holding the records of [head, tail) (split at the wrap)."""
    cap = len(area)
    a, b = head % cap, tail % cap
    if tail - head <= cap - a:
        return [(a, tail - head)]
    # The writer wrapped: a pad marker (or nothing) ends the first part.
    with area.cast("I") as u32:
        pos = a
        while pos < cap:
            size = u32[pos >> 2]
            if size & PAD_BIT or size == 0:
                break
            pos += (size + 7) & ~7
    out: list[tuple[int, int]] = []
    if pos > a:
        out.append((a, pos - a))
    if b:
        out.append((0, b))
    return out


def _frames_of(area: memoryview, spans: list[tuple[int, int]], stream: int, code: int,
               compress: Callable[[bytes], bytes], encrypt: _codec.Transform | None
               ) -> list[tuple[bytes, int]]:
    """Encode the records in ``spans`` as frames of at most ~CHUNK raw bytes each."""
    out: list[tuple[bytes, int]] = []
    unpack = REC_REST.unpack_from
    with area.cast("I") as u32:
        for start, length in spans:
            end = start + length
            pos = start
            while pos < end:
                chunk_start = last = pos
                limit = min(end, pos + CHUNK)
                while pos < limit:
                    size = u32[pos >> 2]
                    if size & PAD_BIT or size < RECORD_HEADER:
                        break  # a wrap marker (spans end before it; kept as a guard)
                    last = pos
                    pos += (size + 7) & ~7
                if pos == chunk_start:
                    break
                first_seq, t0, pid = unpack(area, chunk_start + 8)[:3]
                last_seq, t1 = unpack(area, last + 8)[:2]
                count = last_seq - first_seq + 1
                frame = _codec.encode_frame(
                    bytes(area[chunk_start:pos]), stream=stream, first_seq=first_seq,
                    count=count, pid=pid, first_time_us=t0, last_time_us=t1,
                    compression=code, compress=compress, encrypt=encrypt)
                out.append((frame, count))
    return out


def _zero_range(area: memoryview, head: int, tail: int) -> None:
    cap = len(area)
    a, n = head % cap, tail - head
    if a + n <= cap:
        area[a : a + n] = bytes(n)
    else:
        area[a:] = bytes(cap - a)
        area[: n - (cap - a)] = bytes(n - (cap - a))


def _zero_outside(area: memoryview, head: int, tail: int) -> None:
    """Zero the free part of a ring whose live records are [head, tail)."""
    cap = len(area)
    if tail == head:
        area[:] = bytes(cap)
        return
    a, b = tail % cap, head % cap
    if a < b:
        area[a:b] = bytes(b - a)
    else:
        area[a:] = bytes(cap - a)
        area[:b] = bytes(b)
