"""Writer: crash-safe logging into a per-process mapped buffer, flushed in compressed frames.

Design rules:

- The caller's thread only frames a record (size, crc, sequence, time, pid, level) and
  copies it into the mapped buffer file: no system call, no compression per record.  The
  common case is one comparison away (``_limit``); wrapping, cutting a chunk, a full ring,
  a closed or forked writer all take the slow path.
- Writers cut the records into chunks of ~64 KiB as they go (once per chunk, in the slow
  path), so no flush walks records one by one in Python.  A flush thread compresses (and
  maybe encrypts) each chunk into a frame, appends a batch of frames to the log file with
  one ``write``, and only *then* advances ``head`` in the buffer header.  A kill between
  the two leaves the records in both places; their (stream, sequence) numbers let every
  reader drop the second copy.
- The flush thread's compress and write calls release the GIL; a writer that completes a
  chunk hands the GIL to it at once (see ``_meet_flusher``), so compression runs on
  another core while the caller goes on, instead of waiting for the interpreter's switch
  interval.
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
import sys
import threading
import time
import warnings
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

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
    REC_REST,
    RECORD_HEADER,
)
from ._compress import compressor

__all__ = ["LogWarning", "Writer", "WriterStatistics"]

DEFAULT_BUFFER = 1 << 20      # absorbs GIL hand-off delays of the flush thread (see bench)
CHUNK = 64 * 1024           # raw bytes per frame: one damaged byte costs at most this much
WRITE_BATCH = 4             # frames the flush thread gathers before one write to the file
MEET_TIMEOUT = 0.002        # longest a writer waits at a chunk mark for the flush thread
LOG_SUFFIX = ".mlog"
BUF_SUFFIX = ".mbuf"
DAY = 86400.0


# The hot path's helpers, bound once (immutable references, not state).
_pack_rest = REC_REST.pack_into
_crc32 = zlib.crc32
_time_ns = time.time_ns


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

    # Slots: write() touches a dozen attributes per record, and an
    # instance dict of this size is past CPython's shared-key limit.
    __slots__ = (
        "__weakref__", "_area", "_away", "_buffer_size", "_cap", "_chunk_start", "_closed",
        "_code", "_compress", "_cuts", "_directory", "_encrypt", "_failed", "_failing",
        "_file_bytes", "_flush_lock", "_flushes", "_forked", "_frames", "_hdr_q", "_head",
        "_idle", "_interval", "_limit", "_lock", "_mark", "_name", "_pid", "_raw_bytes",
        "_recovered", "_recovered_end", "_recovered_next", "_recovered_spans", "_region",
        "_resume", "_seq", "_seq_at_open", "_sink", "_slot_lock", "_stepped", "_stream",
        "_tail", "_thread", "_threshold", "_u32", "_view", "_wake",
    )

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
        # The flush thread's hand-off state (see _meet_flusher): idle means it waits for a
        # kick; away is (ticket, is_io) while it runs a call that releases the GIL.
        self._idle = False
        self._away: tuple[threading.Lock, bool] | None = None
        self._resume: threading.Lock | None = None   # held while a writer is in a meet
        self._stepped: threading.Lock | None = None  # the meet we already ran a call for
        self._thread: threading.Thread | None = None
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
            fresh = not exists
            if exists:
                with open(path, "rb") as f:
                    # A creator killed before writing the header left no records either.
                    exists = any(f.read(64))
        except FileNotFoundError:
            exists, fresh = False, True
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
        self._install(region.view, stream, head, head_seq, zeroed=fresh)
        if exists:
            self._recovered += self._recover_own()
        return True

    def _set_aside(self, path: Path, exc: Exception) -> None:
        """A damaged buffer is renamed, never wiped: ``mmapkit log recover`` can still read
        what it holds."""
        import shutil

        aside = path.with_name(f"{path.name}.damaged-{time.time_ns()}")
        shutil.copyfile(path, aside)  # copied, not renamed: our lock is on this inode
        os.truncate(path, 0)
        warnings.warn(f"mmapkit.log: {exc}; moved it to {aside} and started a new buffer",
                      LogWarning, stacklevel=5)

    def _heap_buffer(self) -> None:
        self._region = None
        self._install(memoryview(bytearray(BUF_HEADER + self._buffer_size)),
                      random.getrandbits(63) + 1, 0, 1, zeroed=True)

    def _install(self, view: memoryview, stream: int, head: int, head_seq: int, *,
                 zeroed: bool = False) -> None:
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
        # Records left by a dead owner, validated by the scan: flushed from these spans,
        # which leave out a damaged record instead of copying it.
        self._recovered_spans: list[tuple[int, int]] | None = spans or None
        if not spans:
            head = tail  # nothing live: skip a wrap marker left by a writer killed after it
            self._store_head(tail, head_seq)
        self._head = head
        self._tail = tail
        # The sequence continues the stream's: from the records left in the ring, else
        # from the header (stored before head, so never behind what was flushed).
        self._seq = max(next_seq, head_seq) - 1 if spans else head_seq - 1
        self._seq_at_open = self._seq
        self._recovered_end, self._recovered_next = tail, self._seq + 1
        if not zeroed:  # a new file is all zeros already: touching it costs page faults
            self._zero_free()
        # Chunks: the writers cut the records into frames-to-be as they go, so a flush
        # never walks records one by one.  A cut is (start, end, position of the last
        # record or None if unknown); the open chunk starts at _chunk_start.
        self._cuts: list[tuple[int, int, int | None]] = []
        self._threshold = self._cap // 3  # the flush thread is woken past this much
        self._chunk_start = tail
        self._mark = tail + CHUNK
        self._set_limit()

    def _set_limit(self) -> None:
        """The one bound the hot path checks (under _lock): a record ending past it needs
        the slow path: no room, the end of the ring, the end of a chunk, closed, forked."""
        if self._closed or self._forked:
            self._limit = -1
            return
        # The end of the lap of the open chunk, not of tail: when a record ended exactly
        # at the end of the ring, the next one must come here to cut the chunk there.
        start, cap = self._chunk_start, self._cap
        self._limit = min(self._head + cap - 8, start - start % cap + cap, self._mark)

    def _cut(self, stop: int, last: int | None, start: int) -> None:
        """End the open chunk at ``stop`` (``last``: where its last record starts, None if
        unknown), if it holds any record, and open the next one at ``start`` (under _lock)."""
        if self._chunk_start < stop:
            self._cuts.append((self._chunk_start, stop, last))
        self._chunk_start = start
        self._mark = start + CHUNK
        self._set_limit()

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
        if message.__class__ is bytes:
            data: bytes = message
        elif isinstance(message, str):
            data = message.encode("utf-8", "surrogateescape")
        else:
            data = message
        if time_us is None:
            time_us = _time_ns() // 1000
        size = RECORD_HEADER + len(data)
        # Everything but the common case (room left in this lap and this chunk) is behind
        # one comparison with _limit; _write_slow handles the rest.  (Measured with
        # callgrind: every attribute load and call here is a visible share of a write.)
        lock = self._lock
        lock.acquire()
        try:
            tail = self._tail
            end = tail + ((size + 7) & ~7)
            if end <= self._limit:
                off = tail % self._cap
                seq = self._seq + 1
                area = self._area
                try:
                    area[off + RECORD_HEADER : off + size] = data
                    _pack_rest(area, off + 8, seq, time_us, self._pid, level & 0xFFFF, 0)
                    u32 = self._u32
                    word = off >> 2
                    u32[word + 1] = _crc32(area[off + 8 : off + size])  # type: ignore[index]
                    u32[word] = size  # type: ignore[index]  # the commit: one 4-byte store
                except BaseException:
                    area[off : off + size] = bytes(size)  # keep the word after tail 0
                    raise
                self._seq = seq
                self._tail = end
                return
        finally:
            lock.release()
        self._write_slow(data, level & 0xFFFF, time_us, size)

    def _frame(self, off: int, data: bytes, level: int, time_us: int, size: int) -> int:
        """The hot path's framing (under _lock), for the slow path; returns the sequence."""
        seq = self._seq + 1
        area = self._area
        u32 = self._u32
        if u32 is None:
            self._closed_error()
        try:
            area[off + RECORD_HEADER : off + size] = data
            _pack_rest(area, off + 8, seq, time_us, self._pid, level, 0)
            u32[(off >> 2) + 1] = _crc32(area[off + 8 : off + size])
            u32[off >> 2] = size
        except BaseException:
            area[off : off + size] = bytes(size)
            raise
        self._seq = seq
        self._tail += (size + 7) & ~7
        return seq

    def _write_slow(self, data: bytes, level: int, time_us: int, size: int) -> None:
        """A record past _limit: wrap, cut a chunk, make room, reopen after fork, or raise."""
        total = (size + 7) & ~7
        while True:
            if self._forked:
                self._reopen_after_fork()
            if self._closed:
                self._closed_error()
            if total > self._cap // 2:
                self._write_big(data, level, time_us)
                return
            kick = False
            with self._lock:
                if self._closed or self._forked:
                    continue
                tail, cap, head = self._tail, self._cap, self._head
                off = tail % cap
                if off == 0 and self._chunk_start < tail:
                    # The last record ended exactly at the end of the ring: a chunk never
                    # crosses it (its bytes must be contiguous).
                    self._cut(tail, None, tail)
                if off + total > cap:
                    if tail + (cap - off) + total - head > cap - 8:
                        room = False
                    else:
                        # Wrap: a marker fills the rest of the lap and ends the chunk.
                        self._u32[off >> 2] = PAD_BIT | (cap - off)  # type: ignore[index]
                        self._tail = tail + cap - off
                        self._cut(tail, None, self._tail)
                        continue
                elif tail + total - head > cap - 8:
                    room = False
                else:
                    self._frame(off, data, level, time_us, size)
                    end = self._tail
                    if end > self._mark:  # this record completes a chunk
                        self._cut(end, tail, end)
                        kick = self._idle and end - head > self._threshold
                        if kick:
                            self._idle = False
                    else:
                        self._set_limit()
                    room = True
            if room:
                if kick or self._away is not None:
                    self._meet_flusher(kick)
                return
            self._flush_now()  # the ring is full: DiskFullError here means not logged

    def _write_big(self, data: bytes, level: int, time_us: int) -> None:
        """A record too big for the ring: empty it, then write the record as one frame."""
        with self._flush_lock:
            while True:
                self._flush_now()
                with self._lock:
                    if self._closed:
                        self._closed_error()
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

    def _closed_error(self) -> NoReturn:
        raise ClosedError(f"the log writer for {self._directory}/{self._name} is closed; "
                          "create a new one to keep logging")

    def _store_head(self, head: int, head_seq: int) -> None:
        """Persist head and the sequence at head.  The sequence goes first, so a kill
        between the two stores never leaves it behind what the files hold."""
        hdr = self._hdr_q
        if hdr is None:
            self._closed_error()
        hdr[HEAD_SEQ_OFFSET // 8] = head_seq
        hdr[HEAD_OFFSET // 8] = head

    # --- the flush thread and the GIL ------------------------------------------------
    #
    # A thread that waits for the GIL gets it only when the holder blocks or after the
    # interpreter's switch interval (5 ms).  A caller logging in a tight loop never
    # blocks, so each compress or write call of the flush thread would cost it 5 ms: it
    # would fall behind and the ring would fill.  Instead the flush thread leaves a ticket
    # (a held lock) while it runs such a call, and a writer that completes a chunk waits on
    # that ticket: the flush thread gets the GIL at once, does its few lines of Python and
    # starts its next call, and the writer goes on while that runs on the other core.

    def _meet_flusher(self, kick: bool) -> None:
        """At a chunk mark: wake the idle flush thread, or wait until the one that waits for
        the GIL has taken it and started its next call (at most MEET_TIMEOUT per wait)."""
        resumed = threading.Lock()
        resumed.acquire()
        self._resume = resumed
        try:
            if kick:
                ticket = threading.Lock()
                ticket.acquire()
                self._away = (ticket, True)
                self._wake.set()
            seen = None
            while True:
                away = self._away
                if away is None or away is seen:
                    return
                ticket, io = away
                if seen is not None and not io:
                    return  # a compress call it just started: it runs without the GIL
                if not ticket.acquire(True, MEET_TIMEOUT):
                    return
                ticket.release()  # for other threads waiting on it
                seen = away
        finally:
            if self._resume is resumed:
                self._resume = None
            resumed.release()

    def _returned(self) -> None:
        """The flush thread holds the GIL again: let a writer waiting for that go on."""
        away = self._away
        if away is not None:
            self._away = None
            away[0].release()

    def _off_gil(self, io: bool, fn: Callable[..., Any], *args: object) -> Any:
        """Run ``fn(*args)``, a call that releases the GIL, from the flush thread."""
        resume = self._resume
        if resume is not None:
            if self._stepped is resume:
                # We already started a call for this writer, and it has not got the GIL
                # back since (its thread waits for a CPU): let it run before our next step.
                self._stepped = None
                if self._wait_off_gil(resume):
                    resume.release()
            else:
                self._stepped = resume
        return self._wait_off_gil(None, io, fn, *args)

    def _wait_off_gil(self, lock: threading.Lock | None, io: bool = False,
                      fn: Callable[..., Any] | None = None, *args: object) -> Any:
        """Run ``fn(*args)`` (or wait for ``lock``) with a ticket out (see above)."""
        ticket = threading.Lock()
        ticket.acquire()
        self._away = (ticket, io)
        try:
            if lock is not None:
                return lock.acquire(True, MEET_TIMEOUT)
            assert fn is not None
            return fn(*args)
        finally:
            self._returned()

    def _compress_off_gil(self, raw: bytes) -> bytes:
        out: bytes = self._off_gil(False, self._compress, raw)
        return out

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"mmapkit-log-{self._name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._idle = True
            kicked = self._wake.wait(self._interval)
            self._idle = False
            self._returned()
            self._wake.clear()
            if self._closed or self._forked:
                return
            try:
                # Kicked: whole chunks, while writers complete them.  On the timer: all.
                self._flush_now(full=not kicked, background=True)
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

    def _flush_now(self, full: bool = True, background: bool = False) -> None:
        """Write buffered records to the log file, then free their bytes of the ring.

        ``full``: everything written before the call (the open chunk is cut); else only
        whole chunks.  ``background``: the flush thread, which hands off the GIL (see
        above), gathers up to WRITE_BATCH frames per file write and goes on while writers
        complete chunks.
        """
        with self._flush_lock:
            area = self._area
            with self._lock:
                head = self._head
                if full and self._chunk_start < self._tail:
                    self._cut(self._tail, None, self._tail)
                recovered = self._recovered_spans
                cuts = list(self._cuts)
            frames: list[bytes] = []
            done = records = raw = 0  # cuts framed, and their records and bytes
            end, next_seq = head, 0
            if recovered:
                for frame, n in _frames_of(area, recovered, self._stream, self._code,
                                           self._compress, self._encrypt):
                    frames.append(frame)
                    records += n
                raw += sum(n for _, n in recovered)
                with self._lock:
                    end, next_seq = self._recovered_end, self._recovered_next
            compress = self._compress_off_gil if background else self._compress
            while True:
                for start, stop, last in cuts[done:]:
                    frame, n, last_seq = self._frame_chunk(start, stop, last, compress)
                    frames.append(frame)
                    records += n
                    raw += stop - start
                    end, next_seq = stop, last_seq + 1
                done = len(cuts)
                if background and not full:
                    with self._lock:
                        more = len(self._cuts) > done
                        if more:
                            cuts = list(self._cuts)
                    if more and len(frames) < WRITE_BATCH:
                        continue
                if not frames:
                    return
                self._write_frames(frames, records)
                # Steps 2-4 of the table in the module comment.
                self._store_head(end, next_seq)
                _zero_range(area, head, end)
                with self._lock:
                    self._head = head = end
                    del self._cuts[:done]
                    self._recovered_spans = None
                    self._set_limit()
                self._raw_bytes += raw
                frames, records, raw, done = [], 0, 0, 0
                if not (background and not full):
                    return
                with self._lock:
                    cuts = list(self._cuts)
                if not cuts:
                    return

    def _frame_chunk(self, start: int, stop: int, last: int | None,
                     compress: Callable[[bytes], bytes]) -> tuple[bytes, int, int]:
        """(frame, records, last sequence) of the chunk of records at [start, stop)."""
        cap, area = self._cap, self._area
        a = start % cap
        b = a + (stop - start)
        if b > cap or stop <= start:
            raise AssertionError(f"chunk [{start}, {stop}) crosses the end of the ring")
        if last is None:
            last = start + _last_record(area, a, b)
        first_seq, t0, pid = REC_REST.unpack_from(area, a + 8)[:3]
        last_seq, t1 = REC_REST.unpack_from(area, last % cap + 8)[:2]
        count = last_seq - first_seq + 1
        with area[a:b] as records:
            frame = _codec.encode_frame(
                records, stream=self._stream, first_seq=first_seq, count=count, pid=pid,  # type: ignore[arg-type]
                first_time_us=t0, last_time_us=t1, compression=self._code,
                compress=compress, encrypt=self._encrypt)
        return frame, count, last_seq

    def _write_frames(self, frames: list[bytes], records: int) -> None:
        blob = b"".join(frames)
        try:
            if threading.current_thread() is self._thread:
                self._off_gil(True, self._sink.append, blob, time.time())
            else:
                self._sink.append(blob, time.time())
        except OSError as exc:
            self._failed += 1
            if not self._failing:
                self._failing = True
                warnings.warn(f"mmapkit.log: {exc}; {records} records wait in the buffer",
                              LogWarning, stacklevel=4)
            raise
        if self._failing:
            self._failing = False
            warnings.warn("mmapkit.log: the log file is writable again; the buffered "
                          "records were written", LogWarning, stacklevel=4)
        self._flushes += 1
        self._frames += len(frames)
        self._file_bytes += len(blob)

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
                self._limit = -1
            self._wake.set()
            if self._thread is not None and self._thread is not threading.current_thread():
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
        w._away = w._resume = w._stepped = None  # the parent's threads are gone
        w._idle = False
        w._limit = -1  # the next write takes the slow path, which reopens
        if w._sink.fd is not None:
            with contextlib.suppress(OSError):
                os.close(w._sink.fd)
            w._sink.fd = None
        w._forked = True


def _last_record(area: memoryview, a: int, b: int) -> int:
    """Offset from ``a`` of the last record of those back to back in area[a:b]."""
    last = pos = a
    with area.cast("I") as u32:
        while pos < b:
            last = pos
            pos += (u32[pos >> 2] + 7) & ~7
    return last - a


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
