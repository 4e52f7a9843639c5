"""One segment file: a read-only mapped view (any process) and the writer's side.

Design rules:

- A segment is ``<20-digit base>.log``: a 64-byte header (fixed part checksummed, then the
  commit word W) and batches.  Bytes below W's position are never rewritten; bytes past
  it are nobody's (a writer killed after writing but before publishing left them; the
  next writer overwrites them).
- Readers map the file read-only and read W once per look: every byte below W's position
  is whole (the writer wrote it before storing W; x86 keeps stores in order).  A W past
  the mapping is growth: remap.  A W past the *file* is damage (the file was cut).
- The writer stores batches through its own writable mapping of the file and publishes
  with one aligned 8-byte store into its small mapping of the header.  It maps only bytes
  that ``posix_fallocate`` allocated first, growing the file ahead of W in steps
  (``reserve``): a full disk is ENOSPC there -> DiskFullError before anything is
  published, never SIGBUS on a store into a hole.  So a segment file is usually longer
  than W's position; the zeros past it are not part of the journal (as any bytes past W).
  Where the file system cannot allocate ahead, the writer falls back to pwrite.
- A segment is never truncated and never rewritten in place while it may be mapped.
- Prefault (segments of at least ``_PREFAULT_MIN`` bytes once ``_PREFAULT_START`` of one
  is mapped, Linux 5.14+, writers that do not sync: a populated page is dirty, so a sync
  would write its zeros, then its data): a daemon thread per writing ActiveSegment keeps
  the pages of the writer's mapping ahead of W populated for writing
  (``_platform.populate_write``, GIL released), so the appends' stores do not take a page
  fault each on fresh pages.  It only populates: never stores a byte, never allocates or
  extends the file (it works inside the mapping, which covers only allocated bytes).  It
  works on a mapping under the prefaulter's lock, which ``close`` takes before it unmaps
  (close waits at most for one chunk); a remap whose old mapping the thread is populating
  leaves it to the thread to unmap after that call (``retired``): the mapping it
  populates is never unmapped under it, and the writer never waits for it at a remap.
  Close and roll (which closes the old segment) stop it; a fork child never waits on its
  lock (the thread is the parent's).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import struct
import threading
import weakref
from collections.abc import Iterator

from .. import _platform
from .._fileio import atomic_file, write_all
from ..errors import CorruptFileError, ForeignFileError, FormatVersionError
from . import _format as F
from .index import SparseIndex, index_paths

__all__ = ["ActiveSegment", "Segment", "list_segments"]

_Q = struct.Struct("<Q")
_HAVE_FALLOCATE = hasattr(os, "posix_fallocate")
_GROW_MIN = 64 << 10  # the writer allocates ahead of W at least this much (capped by the
_GROW_MAX = 4 << 20   # segment size), doubling with the segment up to this step
_AHEAD = 16 << 10  # a file this much longer than W was allocated ahead: worth a remap
# Prefault: only segments this big get a thread (a small one's few faults cost less than
# starting it), once the writer has mapped this much of one (a writer in bulk: a thread
# started for a few thousand appends cost more than it saved, bench --quick); pages kept
# populated ahead of W; bytes per madvise call (what close may wait for); the thread's
# nap between looks at W.
_PREFAULT_MIN = 8 << 20
_PREFAULT_START = 4 << 20
_PREFAULT_AHEAD = 4 << 20
_PREFAULT_CHUNK = 1 << 20
_PREFAULT_NAP = 0.01


def list_segments(directory: str) -> list[int]:
    """Base offsets of the ``.log`` files in ``directory``, ascending."""
    bases = []
    for name in os.listdir(directory):
        if len(name) == 24 and name.endswith(".log") and name[:20].isdigit():
            bases.append(int(name[:20]))
    bases.sort()
    return bases


def check_header(raw: memoryview | bytes, path: str, base: int | None) -> int:
    """Verify a segment header; returns its base offset."""
    magic, version, _flags, hsize, hbase = F.SEG_HEAD.unpack_from(raw, 0)
    if magic != F.SEG_MAGIC:
        raise ForeignFileError(f"{path} is not a journal segment (bad magic {magic!r})",
                               path=path)
    if version > F.VERSION:
        raise FormatVersionError(
            f"{path} was written by a newer mmapkit (segment format {version}, this one "
            f"reads up to {F.VERSION}); upgrade mmapkit", path=path, found=version,
            supported=F.VERSION)
    (crc,) = struct.unpack_from("<I", raw, F.OFF_SEG_CRC)
    if hsize != F.SEGMENT_HEADER or crc != F.segment_header_crc(raw):
        raise CorruptFileError(f"{path}: the segment header is damaged", path=path, offset=0)
    if base is not None and hbase != base:
        raise CorruptFileError(f"{path}: the header names base offset {hbase}, the file "
                               f"name {base}", path=path, offset=0)
    return int(hbase)


class Segment:
    """A read-only mapped view of one segment (opened by name, kept by descriptor, so a
    retention rename or unlink in another process does not disturb it)."""

    __slots__ = ("_fd", "_idx", "_map", "_tidx", "_view", "_w", "base", "path")

    def __init__(self, path: str, base: int, fd: int) -> None:
        self.path = path
        self.base = base
        self._fd = fd
        self._map: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._w: memoryview | None = None
        self._idx: SparseIndex | None = None
        self._tidx: SparseIndex | None = None
        try:
            size = os.fstat(fd).st_size
            if size < F.SEGMENT_HEADER:
                raise CorruptFileError(f"{path} is shorter than a segment header", path=path,
                                       offset=0)
            self._remap(size)
            assert self._view is not None
            check_header(self._view, path, base)
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, directory: str, base: int) -> Segment | None:
        """Open the segment at ``base``; None when it is gone (retention renamed it to
        ``.deleted`` and that is gone too)."""
        path = os.path.join(directory, F.segment_name(base))
        for p in (path, path + ".deleted"):
            try:
                fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            return cls(path, base, fd)
        return None

    def _remap(self, size: int) -> None:
        if self._w is not None:
            self._w.release()
        if self._view is not None:
            self._view.release()
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
        self._map = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ)
        self._view = memoryview(self._map)
        self._w = self._view[F.OFF_COMMIT : F.OFF_COMMIT + 8].cast("Q")

    @property
    def view(self) -> memoryview:
        assert self._view is not None
        return self._view

    @property
    def mm(self) -> mmap.mmap:
        """The mapping itself: its slices are bytes (one step, no memoryview between)."""
        assert self._map is not None
        return self._map

    def fileno(self) -> int:
        """The open descriptor (valid after a retention rename or unlink)."""
        return self._fd

    def commit(self) -> tuple[int, int]:
        """(records, end position) as published now (one load of W)."""
        assert self._w is not None
        word = int(self._w[0])
        return word >> 32, word & 0xFFFFFFFF

    def cover(self, pos_end: int) -> bool:
        """Make the mapping reach ``pos_end``; False when the file is shorter (cut)."""
        assert self._view is not None
        if pos_end <= len(self._view):
            return True
        size = os.fstat(self._fd).st_size
        if size < pos_end:
            if size > len(self._view):
                self._remap(size)
            return False
        self._remap(size)
        return True

    def cover_ahead(self, pos_end: int) -> bool:
        """Map the file again when its writer has allocated it well past ``pos_end``
        (A5g): one remap per allocation step, then the tail is read in place.  False
        when the file ends near ``pos_end`` (a pwrite writer grows it by each batch: a
        remap per append would cost more than reading the few new bytes)."""
        size = os.fstat(self._fd).st_size
        if size < pos_end + _AHEAD:
            return False
        self._remap(size)
        return True

    def indexes(self) -> tuple[SparseIndex, SparseIndex]:
        if self._idx is None or self._tidx is None:
            ipath, tpath = index_paths(self.path)
            self._idx = SparseIndex(ipath, "offset", self.base, writable=False)
            self._tidx = SparseIndex(tpath, "time", self.base, writable=False)
        return self._idx, self._tidx

    def drop_indexes(self) -> None:
        """Forget the mapped indexes (another process rebuilt them: map the new files)."""
        for ix in (self._idx, self._tidx):
            if ix is not None:
                ix.close()
        self._idx = self._tidx = None

    def locate(self, offset: int, rel_end: int, pos_end: int) -> tuple[int, int, bool]:
        """Where to start scanning for ``offset``: (position, first offset there, trusted).

        ``trusted`` is False when the index disagreed with the log (the caller scanned
        from the segment start, and a writer should rebuild the index)."""
        idx, _ = self.indexes()
        n = idx.count(rel_end, pos_end)
        i = idx.floor(offset - self.base, n)
        if i < 0:
            return F.SEGMENT_HEADER, self.base, idx.trusted
        rel, pos = idx.entry(i)
        try:
            info = F.read_batch_header(self.view, pos, pos_end, verify=False)
        except F.BatchError:
            return F.SEGMENT_HEADER, self.base, False
        if info.first_offset != self.base + rel:
            return F.SEGMENT_HEADER, self.base, False
        return pos, self.base + rel, True

    def locate_time(self, ts: int, rel_end: int, pos_end: int) -> tuple[int, int, bool]:
        """Where to start scanning for the first record with timestamp >= ``ts``."""
        _, tidx = self.indexes()
        n = tidx.count(rel_end, pos_end)
        i = tidx.floor(ts, n)
        if i < 0:
            return F.SEGMENT_HEADER, self.base, tidx.trusted
        _, rel1 = tidx.entry(i)
        return self.locate(self.base + rel1 - 1, rel_end, pos_end)

    def batches(self, pos: int, pos_end: int) -> Iterator[tuple[int, F.BatchInfo]]:
        """Verified batches from ``pos`` up to ``pos_end`` (BatchError at damage)."""
        view = self.view
        while pos < pos_end:
            info = F.read_batch_header(view, pos, pos_end)
            yield pos, info
            pos += info.length

    def close(self) -> None:
        self.drop_indexes()
        for v in (self._w, self._view):
            if v is not None:
                v.release()
        self._w = self._view = None
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ActiveSegment:
    """The writer's side of the newest segment: its descriptor, a writable mapping of the
    header (for W), the writable indexes and what the writer tracks between appends."""

    __slots__ = ("__weakref__", "_hmap", "_hview", "_pf", "_w", "alloc", "base",
                 "created_ms", "fd", "idx", "idx_n", "last_indexed", "max_ts", "mm", "path",
                 "seen", "tidx", "tidx_n")

    @property
    def w(self) -> memoryview:
        """The commit word W as a one-element u64 view (one aligned 8-byte load/store)."""
        assert self._w is not None
        return self._w

    def __init__(self, path: str, base: int) -> None:
        self.path = path
        self.base = base
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._hmap: mmap.mmap | None = None
        self._hview: memoryview | None = None
        self._w: memoryview | None = None
        self.idx: SparseIndex | None = None
        self.tidx: SparseIndex | None = None
        self.mm: mmap.mmap | None = None  # the writer's mapping of [0, alloc)
        self.alloc = 0  # bytes allocated and mapped (-1: no fallocate here, pwrite)
        self._pf: _Prefaulter | None = None
        try:
            if os.fstat(self.fd).st_size < F.SEGMENT_HEADER:
                raise CorruptFileError(f"{path} is shorter than a segment header", path=path,
                                       offset=0)
            self._hmap = mmap.mmap(self.fd, F.SEGMENT_HEADER, access=mmap.ACCESS_WRITE)
            self._hview = memoryview(self._hmap)
            check_header(self._hview, path, base)
            self._w = self._hview[F.OFF_COMMIT : F.OFF_COMMIT + 8].cast("Q")
            (self.created_ms,) = struct.unpack_from("<q", self._hview, F.OFF_SEG_CREATED)
        except BaseException:
            self.close()
            raise
        self.idx_n = self.tidx_n = 0
        self.last_indexed = 0  # position of the last indexed batch (0: none yet)
        self.max_ts = -(1 << 63)
        self.seen = -1  # W as this writer last synced to it (or published it)

    @staticmethod
    def create(directory: str, base: int, created_ms: int, index_slots: int) -> str:
        """Write a new empty segment and its indexes under their final names (each file
        complete before its name appears); returns the segment's path."""
        path = os.path.join(directory, F.segment_name(base))
        ipath, tpath = index_paths(path)
        SparseIndex.create(ipath, "offset", base, index_slots)
        SparseIndex.create(tpath, "time", base, index_slots)
        # (not fsynced here: the journal's sync policy flushes segments and indexes)
        with atomic_file(path, durable=False) as fd:
            write_all(fd, F.encode_segment_header(base, created_ms), 0)
        return path

    def commit(self) -> tuple[int, int]:
        assert self._w is not None
        word = int(self._w[0])
        return word >> 32, word & 0xFFFFFFFF

    def reserve(self, pos: int, end: int, cap: int, prefault: bool = True) -> bool:
        """Make [pos, end) storable through ``mm`` (under L; ``pos`` is W's position):
        allocate the file up to ``end`` or a step further (at most ``cap``, the segment
        size, unless ``end`` is past it) and map it.  False where the file system cannot
        allocate ahead (the caller writes with pwrite); OSError (ENOSPC) when the disk
        is full: nothing was stored or published.  The file only grows.  ``prefault``:
        a segment of ``_PREFAULT_MIN`` bytes or more gets the prefault thread."""
        if end <= self.alloc:
            return True
        if self.alloc < 0 or not _HAVE_FALLOCATE:
            return False
        size = os.fstat(self.fd).st_size
        step = min(_GROW_MAX, max(_GROW_MIN, self.alloc, pos))
        want = max(end, size, min(cap, max(pos, self.alloc) + step))
        try:
            # (over what another writer allocated already too: cheap, and no hole is
            # ever mapped even if someone made the file sparse)
            os.posix_fallocate(self.fd, pos, want - pos)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self.alloc = -1
                return False
            if exc.errno != errno.ENOSPC or want <= max(end, size):
                raise
            # no room for a step ahead: this batch alone may still fit
            want = max(end, size)
            os.posix_fallocate(self.fd, pos, want - pos)
        mm = mmap.mmap(self.fd, want, access=mmap.ACCESS_WRITE)
        pf = self._pf
        if pf is not None and pf.pid == os.getpid():
            old, self.mm, self.alloc = self.mm, mm, want
            if old is not None:
                # (never unmapped while the thread populates it; never waited for either:
                # the thread unmaps it after its call in flight)
                if pf.lock.acquire(blocking=False):
                    old.close()
                    pf.lock.release()
                else:
                    pf.retired.append(old)
            pf.wake.set()  # fresh room to populate
        else:
            self._swap_map(mm, want)
            if prefault and cap >= _PREFAULT_MIN and want >= _PREFAULT_START and \
                    _platform.HAVE_POPULATE:
                self._pf = _Prefaulter(self)
        return True

    def _swap_map(self, mm: mmap.mmap, alloc: int) -> None:
        if self.mm is not None:
            self.mm.close()
        self.mm, self.alloc = mm, alloc

    def publish(self, records: int, pos: int) -> None:
        assert self._w is not None
        self._w[0] = (records << 32) | pos

    def open_indexes(self) -> None:
        ipath, tpath = index_paths(self.path)
        self.idx = SparseIndex(ipath, "offset", self.base, writable=True)
        self.tidx = SparseIndex(tpath, "time", self.base, writable=True)

    def close(self) -> None:
        pf, self._pf = self._pf, None
        if pf is not None:
            pf.stop()
        for ix in (self.idx, self.tidx):
            if ix is not None:
                ix.close()
        self.idx = self.tidx = None
        if self.mm is not None:
            self.mm.close()
            self.mm = None
        self.alloc = 0
        for v in (self._w, self._hview):
            if v is not None:
                v.release()
        self._w = self._hview = None
        if self._hmap is not None:
            with contextlib.suppress(BufferError):
                self._hmap.close()
            self._hmap = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Prefaulter:
    """The prefault thread of one ActiveSegment (see the module's design rules)."""

    __slots__ = ("lock", "pid", "retired", "stopped", "wake")

    def __init__(self, seg: ActiveSegment) -> None:
        self.lock = threading.Lock()
        self.retired: list[mmap.mmap] = []  # old mappings for the thread to unmap
        self.wake = threading.Event()
        self.stopped = False
        self.pid = os.getpid()
        # (a weak reference: a segment dropped without close() does not live on in it)
        threading.Thread(target=_prefault, args=(weakref.ref(seg), self), daemon=True,
                         name="mmapkit-journal-prefault").start()

    def stop(self) -> None:
        """Stop the thread (it exits at its next look); waits at most for the madvise
        call in flight.  In a fork child only marks it: the thread is the parent's."""
        if self.pid == os.getpid():
            with self.lock:
                self.stopped = True
                self.unmap_retired()
            self.wake.set()
        else:
            self.stopped = True

    def unmap_retired(self) -> None:
        """Unmap the writer's old mappings left to the thread (under ``lock``)."""
        while self.retired:
            self.retired.pop().close()


def _prefault(ref: weakref.ref[ActiveSegment], pf: _Prefaulter) -> None:
    """The prefault thread: populate the writer's mapping from W's position (or where it
    stopped) up to ``_PREFAULT_AHEAD`` past it, a chunk per call, then nap; exits when
    stopped, when the segment is gone, or when the kernel cannot populate."""
    try:
        _populate_ahead(ref, pf)
    finally:
        with pf.lock:  # (a mapping the writer left during the last call)
            pf.unmap_retired()


def _populate_ahead(ref: weakref.ref[ActiveSegment], pf: _Prefaulter) -> None:
    mapped: mmap.mmap | None = None
    address = done = 0
    while True:
        seg = ref()
        if seg is None:
            return
        with pf.lock:
            pf.unmap_retired()
            mm, w = seg.mm, seg._w
            if pf.stopped or w is None:
                return
            todo = 0
            if mm is not None and not mm.closed:
                pos = int(w[0]) & F.POS_MASK
                if mm is not mapped:  # a new mapping (remapped): its page tables are empty
                    mapped, address, done = mm, _platform.buffer_address(mm), 0
                start = max(done, pos)
                # (the mapping's own length: the writer may store mm and alloc apart)
                todo = min(len(mm), pos + _PREFAULT_AHEAD, start + _PREFAULT_CHUNK) - start
                if todo > 0:
                    if not _platform.populate_write(address + start, todo):
                        return  # kernel without MADV_POPULATE_WRITE: the stores fault
                    done = start + todo
        del seg, mm, w
        if todo <= 0:
            pf.wake.wait(_PREFAULT_NAP)
            pf.wake.clear()
