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
  chunk hands the GIL to it at once (see ``_handoff.py``), so compression runs on
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
  records to the log file) and reuses it, continuing its stream's sequence numbers.  The
  protocol, for buffer file N (lock = N's flock; only its holder maps, writes or resizes
  N; readers -- read(), check() -- never lock, map or write and may read N between any
  two steps):

  ====  =========================================  ======  ================================
  step  action                                     lock    another process may see, between
                                                   held    this step and the next
  ====  =========================================  ======  ================================
  B1    list the NAME.N.mbuf files                 none    new slots appear (harmless); no
                                                           buffer file is ever deleted
  B2    open N, flock(LOCK_EX|LOCK_NB); refused:   -> N    refused means a live owner: we
        a live owner, skip N (never read or map               never read, map or write N
        it)
  B3    read N whole and judge it (_examine):      N       N as it was: nobody else can
        blank / ok / damaged / newer (newer:                change it while we hold N
        unlock, leave it untouched)
  B4    damaged: copy N aside, append every        N       records in N and in the log
        record that verifies, truncate N to 0                (readers drop the second copy
        (killed before the truncate: done again            by stream and sequence); N
        at the next start).  ok: append flushed            empty after the truncate
        records a kill left outside [head, tail)
  B5    adopt: map N, install, flush its live      N       the flush table above
        records (the flush table above).  else:
        append them, store head sequence, then
        head, zero the ring                                records in both: dropped once
  B5r   adopt, but N's capacity is not the         N       as B5-else, then an empty N,
        buffer_size asked for, or N is longer               then a blank one (B8): a kill
        than its header says (excess zero: a                anywhere leaves nothing that
        resize cut short; not zero: damaged):               was not appended first
        B5-else, then truncate to 0 and B8
  B6    not adopted: unlock, close                 -> -    another starter may take N
  B7    none adopted: M = highest + 1; open with   -> M    another starter may create and
        O_CREAT and flock; refused: M + 1                  lock M first (we take M + 1)
                                                           or lock our empty M first and
                                                           use or skip it: it holds nothing
  B8    create: extend M (fallocate), write the    M       a blank file (no magic): empty,
        header but the magic, then the magic (one          never half a header; a creator
        8-byte store)                                      killed here leaves it blank
  B9    close: flush, take the flush lock, unmap,  -> -    another starter may adopt it;
        unlock (even if the flush failed)                  we never touch it again
  fork  child: unmap the inherited mapping, close  parent  the parent keeps its lock; its
        the lock descriptor without unlocking;             buffer is never written by the
        flush/close do nothing; the first write            child, and is recovered as soon
        claims a slot of its own (B1)                      as the parent dies
  ====  =========================================  ======  ================================

  Only the holder of N's lock concludes that N is damaged; a reader may see a torn copy
  of a live buffer and never judges.  Nothing that verifies is zeroed before it is in a
  log file (or, damaged, in the copy aside and the log).
- Log files are never refused a write: rotation (by size, daily) and retention (by age,
  by total bytes) only ever start new files and delete old ones.  Another process's
  retention may delete the file we append to: an append checks afterwards that the file
  still has a name and otherwise appends again to a live file, before head moves.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
import time
import warnings
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from .._testhooks import PAUSES as _PAUSE
from .._testhooks import pause as _pause
from ..errors import (
    ClosedError,
    CorruptFileError,
    FileFormatError,
    FormatVersionError,
    InvalidSizeError,
    UnsupportedPlatformError,
)
from ..lock import FileLock
from ..region import Region
from . import _codec
from ._codec import (
    BUF_HEADER,
    BUF_STREAM_AT,
    HEAD_OFFSET,
    HEAD_SEQ_OFFSET,
    PAD_BIT,
    REC_REST,
    RECORD_HEADER,
)
from ._compress import compressor
from ._files import Sink, buffer_file_name, damaged_file_name, parse_buffer_name, valid_name
from ._handoff import Handoff

__all__ = ["LogWarning", "Writer", "WriterStatistics"]

DEFAULT_BUFFER = 1 << 20      # absorbs GIL hand-off delays of the flush thread (see bench)
CHUNK = 64 * 1024           # raw bytes per frame: one damaged byte costs at most this much
WRITE_BATCH = 4             # frames the flush thread gathers before one write to the file
DAY = 86400.0


# The hot path (write, _frame) spells the record header with literals, since a global
# load per constant is a visible share of a write: the size word at 0 (u32 index
# off >> 2), the crc at 4 (index + 1) over [8, size), the rest packed at 8 (sequence
# first, read back by _first_seq), records 8-aligned ((size + 7) & ~7).  Tied to the
# codec here, at import, so the two spellings cannot drift apart (tests/test_log_writer.py
# checks the bytes too).
if ((_codec.REC_SIZE_AT, _codec.REC_CRC_AT, _codec.REC_REST_AT, _codec.align8(1))
        != (0, 4, 8, 8) or REC_REST.format != "<QQIHH" or 8 + REC_REST.size != RECORD_HEADER):
    raise ImportError("mmapkit.log.writer: the hot path's record literals no longer match "
                      "mmapkit.log._codec; update both together")

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


@dataclass
class _Found:
    """What a buffer file holds, judged under its lock by :func:`_examine`."""

    kind: str                     # "blank", "ok", "damaged" or "newer"
    reason: str = ""              # why damaged (or newer)
    stream: int = 0
    head: int = 0
    head_seq: int = 1
    spans: list[tuple[int, int]] = field(default_factory=list)  # live records (scan_ring)
    tail: int = 0
    next_seq: int = 0
    # "ok": verifying records outside the live part (flushed ones a kill left unzeroed);
    # "damaged": every verifying record.  (offset in the data area, size, sequence)
    records: list[tuple[int, int, int]] = field(default_factory=list)
    dirty: bool = False           # non-zero bytes outside the live part
    capacity: int = 0             # "ok": the ring's capacity, as its header says


def _examine(data: bytes, path: str) -> _Found:
    """Judge a buffer file's bytes, read under its lock.

    Every header field is checked before it is trusted: the checksummed ones by the
    checksum, capacity against the file size, head and head sequence (not checksummed:
    they change with each flush) for range and against the records they point at.  A
    record that verifies but lies outside the live part with a sequence at or past the
    live ones means the head is wrong: damage.  Only the owner of the lock concludes
    damage; readers never do (they may see a torn copy of a live buffer).
    """
    if not data or _codec.blank_buffer(data):
        return _Found("blank")
    size = len(data)
    ring = memoryview(data)[BUF_HEADER : BUF_HEADER + (max(size - BUF_HEADER, 0) & ~7)]
    stream = int.from_bytes(data[BUF_STREAM_AT : BUF_STREAM_AT + 8].ljust(8, b"\0"), "little")
    try:
        hdr = _codec.decode_buffer_header(data, path)
    except FormatVersionError as exc:
        return _Found("newer", str(exc))
    except FileFormatError as exc:
        return _Found("damaged", str(exc), stream, records=_codec.find_records(ring))
    problem = _codec.buffer_size_problem(data, hdr.capacity)
    if problem is not None:
        return _Found("damaged", f"log buffer {path}: {problem}", stream,
                      records=_codec.find_records(ring))
    ring = ring[: hdr.capacity]  # a longer file (excess zero) is handled by _claim
    spans, tail, next_seq, damages = _codec.scan_ring(ring, hdr.head, hdr.head_seq)
    reason = ""
    if damages:
        reason = f"log buffer {path}: {damages[0].describe()}"
    elif spans:
        first = int.from_bytes(ring[spans[0][0] + 8 : spans[0][0] + 16], "little")
        if not first <= hdr.head_seq <= next_seq:
            reason = (f"log buffer {path} has a damaged head sequence ({hdr.head_seq}; "
                      f"the records at its head are {first} to {next_seq - 1})")
    extra: list[tuple[int, int, int]] = []
    dirty = False
    if not reason:
        # The part that will be free once adopted: all of it without live records (a
        # wrap marker at head is skipped then), else the ring outside [head, tail).
        cap = hdr.capacity
        a, b = tail % cap, hdr.head % cap
        free = [(0, cap)] if not spans else [(a, b)] if a < b else [(a, cap), (0, b)]
        for lo, hi in free:
            if lo < hi and not _codec.all_zero(data, BUF_HEADER + lo, BUF_HEADER + hi):
                dirty = True
                extra += _codec.find_records(ring, lo, hi)
        live_end = next_seq if spans else hdr.head_seq
        late = [r for r in extra if r[2] >= live_end]
        if late:
            reason = (f"log buffer {path} has a damaged head (position {hdr.head}, sequence "
                      f"{hdr.head_seq}): record {late[0][2]} lies outside the records it "
                      "points at")
    if reason:
        return _Found("damaged", reason, hdr.stream, records=_codec.find_records(ring))
    return _Found("ok", "", hdr.stream, hdr.head, hdr.head_seq, spans, tail, next_seq,
                  extra, dirty, hdr.capacity)

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
        "__weakref__", "_area", "_buffer_size", "_cap", "_chunk_start", "_closed", "_code",
        "_compress", "_cuts", "_directory", "_encrypt", "_failed", "_failing", "_file_bytes",
        "_flush_lock", "_flushes", "_forked", "_frames", "_handoff", "_hdr_q", "_head",
        "_interval", "_limit", "_lock", "_mark", "_name", "_pid", "_raw_bytes", "_recovered",
        "_recovered_end", "_recovered_next", "_recovered_spans", "_region", "_seq",
        "_seq_at_open", "_sink", "_slot_lock", "_stream", "_tail", "_thread", "_threshold",
        "_u32", "_view",
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
        self._name = valid_name(name)
        self._directory.mkdir(parents=True, exist_ok=True)
        self._buffer_size = _codec.align8(buffer_size)
        self._interval = flush_interval
        self._code, self._compress = compressor(compress)
        self._encrypt: _codec.Transform | None = None
        if public_key is not None:
            from ._crypto import encryptor

            self._encrypt = encryptor(public_key)
        self._sink = Sink(self._directory, name, max_bytes=max_bytes, rotate=rotate,
                           retention=retention, max_total_bytes=max_total_bytes)
        self._lock = threading.Lock()          # callers: sequence, tail, bytes of the ring
        self._flush_lock = threading.RLock()   # one flush at a time
        self._handoff = Handoff()              # the flush thread's GIL hand-off
        self._closed = False
        self._thread: threading.Thread | None = None
        self._flushes = self._frames = self._file_bytes = self._raw_bytes = 0
        self._failed = self._recovered = 0
        self._failing = False
        self._region: Region | None = None
        self._slot_lock: FileLock | None = None
        self._u32: memoryview | None = None
        self._hdr_q: memoryview | None = None
        try:
            self._open_buffer()
            self._sink.apply_retention(time.time())
            self._start_thread()
        except BaseException:
            # Never half-built: whatever failed, the slot lock and the mapping go with it.
            self._closed = True
            self._release()
            raise
        _LIVE.add(self)

    # --- buffer slots -----------------------------------------------------------------

    def _open_buffer(self) -> None:
        """Claim a buffer slot, recovering every dead one we can lock, or fall back to
        process memory.  The steps are the protocol table in the module comment."""
        self._pid = os.getpid()
        self._forked = False
        self._region = None
        self._slot_lock = None
        slots = sorted(p[1] for e in os.listdir(self._directory)
                       if (p := parse_buffer_name(e)) is not None and p[0] == self._name)
        mine = False
        for slot in slots:                                  # B1
            lock = FileLock(self._buffer_path(slot))
            try:
                if not lock.try_exclusive():                # B2: a live owner: hands off
                    continue
                if _PAUSE:
                    _pause("log.slot-locked")
                mine = self._claim(slot, lock, adopt=not mine) or mine
            finally:
                if self._slot_lock is not lock:
                    lock.close()  # unlocks (a foreign buffer, or one we could not adopt)
        slot = max(slots, default=-1) + 1
        tries = 0
        while not mine and tries < 4:                       # B7: a new slot
            lock = FileLock(self._buffer_path(slot))
            try:
                if lock.try_exclusive():
                    tries += 1
                    mine = self._claim(slot, lock, adopt=True)
            finally:
                if self._slot_lock is not lock:
                    lock.close()
            slot += 1
        if not mine:
            self._heap_buffer()

    def _buffer_path(self, slot: int) -> Path:
        return self._directory / buffer_file_name(self._name, slot)

    def _claim(self, slot: int, lock: FileLock, adopt: bool) -> bool:
        """We hold ``slot``'s lock: recover what its buffer holds (salvage it if damaged),
        then make it ours if ``adopt``.  True when adopted (``lock`` is then kept).

        Holding the lock, nobody else maps, writes or resizes this file (a live owner
        holds the lock; a fork child drops the mapping it inherited, see _after_fork), so
        the size and bytes read here stay true until we unlock.
        """
        path = self._buffer_path(slot)
        try:
            with open(path, "rb") as f:                    # B3: read, under the lock
                data = f.read()
        except OSError as exc:
            warnings.warn(f"mmapkit.log: cannot read the log buffer {path} ({exc}); it is "
                          "left as it is", LogWarning, stacklevel=5)
            return False
        found = _examine(data, str(path))
        if found.kind == "newer":
            warnings.warn(f"mmapkit.log: {found.reason}; it is left untouched and this "
                          "process logs through another buffer", LogWarning, stacklevel=5)
            return False
        if found.kind == "damaged":
            if not self._salvage(path, data, found):
                return False
            found = _Found("blank")  # the records are in the log file and in the copy
        elif found.records:
            # Verifying records outside the live part: flushed ones a kill left before
            # they were zeroed.  Written again (readers drop the second copy) rather
            # than zeroed unwritten: nothing that verifies is ever wiped.
            try:
                self._append_records(data, found.records, found.stream)
            except OSError as exc:
                warnings.warn(f"mmapkit.log: cannot recover {path} now ({exc}); it is kept "
                              "for the next start", LogWarning, stacklevel=5)
                return False
        if found.kind == "blank":
            if not adopt:
                return False  # holds no record: whoever adopts it creates it afresh
            return self._create(path, lock, truncate=bool(data))
        if not adopt:
            self._recover_foreign(path, data, found)
            return False
        if len(data) != BUF_HEADER + self._buffer_size:
            # Another capacity (buffer_size changed between runs) or a file longer than
            # its header's capacity (a resize cut short): emptied like a dead process's
            # buffer, then created afresh at the size asked for.  A kill in between
            # leaves an empty buffer, then an empty or blank file: never a lost record.
            if not self._recover_foreign(path, data, found):
                return False
            return self._create(path, lock, truncate=True)
        try:
            region = Region.open(path)
        except OSError as exc:
            self._cannot_map(path, exc)
            return False
        self._region, self._slot_lock = region, lock
        self._install(region.view, found.stream, found.head, found.head_seq,
                      zeroed=not found.dirty)
        self._recovered += self._recover_own()             # B5 through the flush
        return True

    def _create(self, path: Path, lock: FileLock, *, truncate: bool) -> bool:
        """B8: make a new buffer at ``path`` (we hold its lock).  The magic is stored last,
        so a reader never sees a header that is half there, and a creator killed before
        it leaves a blank file that the next owner creates again."""
        try:
            if truncate:  # a blank or salvaged file of any size: start from zero bytes
                os.truncate(path, 0)
            region = Region.open(path, BUF_HEADER + self._buffer_size, create=True)
        except OSError as exc:
            self._cannot_map(path, exc)
            return False
        if _PAUSE:
            _pause("log.slot-created")
        stream = random.getrandbits(63) + 1
        header = _codec.encode_buffer_header(self._buffer_size, stream, 0, 1,
                                             time.time_ns() // 1000, os.getpid())
        view = region.view
        view[8:BUF_HEADER] = header[8:]
        if _PAUSE:
            _pause("log.header-written")
        with view[:8].cast("Q") as magic:
            magic[0] = int.from_bytes(header[:8], "little")
        self._region, self._slot_lock = region, lock
        self._install(view, stream, 0, 1, zeroed=True)
        return True

    def _cannot_map(self, path: Path, exc: Exception) -> None:
        warnings.warn(f"mmapkit.log: cannot map the log buffer {path} ({exc}); logging "
                      "into process memory instead: records written now are lost if "
                      "this process is killed before they are flushed",
                      LogWarning, stacklevel=6)

    def _append_records(self, data: bytes, records: list[tuple[int, int, int]],
                        stream: int) -> int:
        """Append scattered records of a buffer's data area to the log; their count."""
        frames = _salvage_frames(memoryview(data)[BUF_HEADER:], records, stream, self._code,
                                 self._compress, self._encrypt)
        if frames:
            self._sink.append(b"".join(f for f, _ in frames), time.time())
        return sum(n for _, n in frames)

    def _salvage(self, path: Path, data: bytes, found: _Found) -> bool:
        """A damaged buffer (we hold its lock): copy it aside, write every record in it
        that verifies to the log, then empty it.  Never wiped before both are done; if
        either fails it is left untouched for the next start."""
        import shutil

        aside = path.with_name(damaged_file_name(path.name, time.time_ns()))
        try:
            shutil.copyfile(path, aside)  # the file cannot change: we hold its lock
            if _PAUSE:
                _pause("log.salvage-copied")
            n = self._append_records(data, found.records, found.stream)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(aside)
            warnings.warn(f"mmapkit.log: {found.reason}; it cannot be salvaged now ({exc}) "
                          "and is left as it is for the next start", LogWarning,
                          stacklevel=5)
            return False
        self._recovered += n
        warnings.warn(f"mmapkit.log: {found.reason}; the {n} records in it that verify were "
                      f"written to the log, the damaged buffer was copied to {aside} and "
                      "the slot starts afresh", LogWarning, stacklevel=5)
        return True

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
        self._u32 = self._area.cast("I")
        self._hdr_q = view[:BUF_HEADER].cast("Q")
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

    def _recover_foreign(self, path: Path, data: bytes, found: _Found) -> bool:
        """B5-B6 for a dead process's buffer (we hold its lock): append its live records
        to the log, then mark them flushed (sequence, then head) and zero its ring.
        False when that could not be done now (the buffer is kept as it was)."""
        if not found.spans and not found.dirty:
            return True  # nothing live and nothing to clear
        try:
            if found.spans:
                frames = _frames_of(memoryview(data)[BUF_HEADER:], found.spans, found.stream,
                                    self._code, self._compress, self._encrypt)
                self._sink.append(b"".join(f for f, _ in frames), time.time())
                self._recovered += sum(n for _, n in frames)
                if _PAUSE:
                    _pause("log.recovered-appended")
            region = Region.open(path)
        except OSError as exc:
            warnings.warn(f"mmapkit.log: cannot recover {path} now ({exc}); it is kept for "
                          "the next start", LogWarning, stacklevel=5)
            return False
        try:
            with region.view[:BUF_HEADER].cast("Q") as hdr:
                hdr[HEAD_SEQ_OFFSET // 8] = found.next_seq if found.spans else found.head_seq
                hdr[HEAD_OFFSET // 8] = found.tail
            with region.view[BUF_HEADER:] as ring:
                _zero_outside(ring, found.tail, found.tail)
        finally:
            region.close()
        return True

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
                        handoff = self._handoff
                        kick = handoff.idle and end - head > self._threshold
                        if kick:
                            handoff.idle = False
                    else:
                        self._set_limit()
                    room = True
            if room:
                handoff = self._handoff
                if kick or handoff.away is not None:
                    handoff.meet(kick)
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
                    frame = _codec.encode_chunk(rec, 0, stream=self._stream,
                                                compression=self._code,
                                                compress=self._compress,
                                                encrypt=self._encrypt)[0]
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
        if not _codec.plausible_head(head, head_seq):  # cannot happen: values are checked
            raise CorruptFileError(                     # at open and only ever grow
                f"the log buffer {self._region.path if self._region else '(memory)'} "
                f"reached head {head}, sequence {head_seq}; close the writer and report a "
                "bug", path=self._region.path if self._region else None)
        hdr[HEAD_SEQ_OFFSET // 8] = head_seq
        hdr[HEAD_OFFSET // 8] = head

    # --- the flush thread (its GIL hand-off: _handoff.py) ------------------------------

    def _compress_off_gil(self, raw: bytes) -> bytes:
        out: bytes = self._handoff.run(False, self._compress, raw)
        return out

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"mmapkit-log-{self._name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            kicked = self._handoff.sleep(self._interval)
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
        if self._closed or self._forked:
            return  # a fork child that has not written holds nothing of its own
        self._flush_now()

    def sync(self) -> None:
        """:meth:`flush`, then fsync the log file and msync the buffer: what was written
        before survives an OS crash or power loss too."""
        if self._closed or self._forked:
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
            if self._u32 is None:
                return  # released (closed, or a fork child's inherited buffer)
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
                if _PAUSE:
                    _pause("log.flush-appended")
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
        rel = _last_record(area, a, b) if last is None else last - start
        with area[a:b] as records:
            return _codec.encode_chunk(records, rel, stream=self._stream,
                                       compression=self._code, compress=compress,
                                       encrypt=self._encrypt)

    def _write_frames(self, frames: list[bytes], records: int) -> None:
        blob = b"".join(frames)
        try:
            if threading.current_thread() is self._thread:
                self._handoff.run(True, self._sink.append, blob, time.time())
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
            _drop_inherited(self)  # done at fork already; harmless again
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
        buffer file and the next writer of this directory and name recovers them.  The
        slot lock is released whatever happens, and an error of the flush other than a
        full disk propagates as it is (the release never replaces it)."""
        if self._closed:
            return
        try:
            if not self._forked:  # a fork child never flushes its parent's buffer
                with contextlib.suppress(OSError):
                    self._flush_now()
        finally:
            with self._lock:
                self._closed = True
                self._limit = -1
            self._handoff.wake()
            thread = self._thread
            if (thread is not None and thread is not threading.current_thread()
                    and not self._forked):
                thread.join(timeout=10)
            self._release()

    def _release(self) -> None:
        """B9: unmap, then unlock (once unlocked another process may adopt the buffer, so
        the flush lock is taken first: a flush still running ends before).  Never raises."""
        with self._flush_lock:
            with self._lock:
                self._u32 = self._hdr_q = None
            try:
                _unmap(self)
            finally:
                lock, self._slot_lock = self._slot_lock, None
                if lock is not None:
                    with contextlib.suppress(OSError):
                        lock.close()  # releases the flock and closes the descriptor
                with contextlib.suppress(OSError):
                    self._sink.close()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"stream {self._stream:#x}"
        return f"<mmapkit.log.Writer {self._directory}/{self._name} {state}>"


# Every Writer alive in this process: one at-fork hook for all of them (a hook per
# writer would pile up for the life of the process: a hook cannot be unregistered).
_LIVE: weakref.WeakSet[Writer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for w in list(_LIVE):
        _after_fork(w)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _after_fork(w: Writer) -> None:
    """Runs in a fork child: the parent's threads are gone, so are their locks' holders."""
    if not w._closed:
        w._lock = threading.Lock()
        w._flush_lock = threading.RLock()
        w._handoff = Handoff()  # the parent's threads are gone
        w._limit = -1  # the next write takes the slow path, which reopens
        if w._sink.fd is not None:
            with contextlib.suppress(OSError):
                os.close(w._sink.fd)
            w._sink.fd = None
        w._forked = True
        _drop_inherited(w)


def _unmap(w: Writer) -> None:
    """Drop ``w``'s views and mapping (never raises).  Views that something else still
    holds (a traceback's frame) keep the mapping alive until they go; ``w`` never touches
    it again either way."""
    w._u32 = w._hdr_q = None
    for view in (getattr(w, "_area", None), getattr(w, "_view", None)):
        if view is not None:
            with contextlib.suppress(Exception):
                view.release()
    region, w._region = w._region, None
    if region is not None:
        with contextlib.suppress(Exception):
            region.close()


def _drop_inherited(w: Writer) -> None:
    """In a fork child: let go of the parent's buffer.  The mapping is unmapped here only;
    the lock descriptor is closed without unlocking, so the flock stays the parent's alone
    (a child keeping it open would keep the parent's buffer locked after the parent died,
    and a child mapping it could later write over whoever adopted it)."""
    _unmap(w)
    lock, w._slot_lock = w._slot_lock, None
    if lock is not None:
        with contextlib.suppress(Exception):
            lock.fileno  # noqa: B018  (FileLock notices the fork: fresh state, own descriptor)
            lock.close()


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
                frame, count, _ = _codec.encode_chunk(
                    bytes(area[chunk_start:pos]), last - chunk_start, stream=stream,
                    compression=code, compress=compress, encrypt=encrypt)
                out.append((frame, count))
    return out


def _salvage_frames(area: memoryview, records: list[tuple[int, int, int]], stream: int,
                    code: int, compress: Callable[[bytes], bytes],
                    encrypt: _codec.Transform | None) -> list[tuple[bytes, int]]:
    """Frames of scattered records ((offset, size, sequence), by sequence): one frame per
    run of consecutive sequences, of at most ~CHUNK raw bytes."""
    out: list[tuple[bytes, int]] = []
    i = 0
    while i < len(records):
        j, raw = i, 0
        while j < len(records) and raw < CHUNK and (
                j == i or records[j][2] == records[j - 1][2] + 1):
            raw += _codec.align8(records[j][1])
            j += 1
        run = records[i:j]
        blob = b"".join(bytes(area[off : off + size]).ljust(_codec.align8(size), b"\0")
                        for off, size, _ in run)
        last = len(blob) - _codec.align8(run[-1][1])
        frame, count, _ = _codec.encode_chunk(blob, last, stream=stream, compression=code,
                                              compress=compress, encrypt=encrypt)
        out.append((frame, count))
        i = j
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
