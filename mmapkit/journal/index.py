"""Sparse, memory-mapped offset and time indexes of one segment.

Design rules:

- An index is a hint, never the truth: entries are not checksummed.  A lookup returns a
  position that the caller verifies against the log (the batch there must verify and
  start at the offset the entry names); on disagreement the caller scans from the
  segment's start and a writer rebuilds the index.
- Only the journal's writer-lock holder writes entries, into preallocated slots (growth
  before publish: the file is allocated when the segment is created, so a full disk is a
  DiskFullError at the roll, never a SIGBUS).  An entry is written before the commit word
  that publishes its batch; readers only use entries whose position (or relative offset)
  is below the commit word they read, so an entry left by a writer killed before its
  publish is ignored, and the next writer clears it before appending.
- A rebuild writes a new file beside the old one and renames it over: a file another
  process maps is never shrunk or rewritten in place.
- Empty slot: position 0 (offset index) or relative offset 0 (time index stores rel + 1).
"""

from __future__ import annotations

import contextlib
import mmap
import os

from .. import _platform
from .._fileio import atomic_file, write_all
from . import _format as F

__all__ = ["SparseIndex", "index_paths"]


def index_paths(log_path: str) -> tuple[str, str]:
    stem = log_path[: -len(".log")]
    return stem + ".index", stem + ".timeindex"


class SparseIndex:
    """One index file mapped (read-only, or read-write for the writer).

    ``kind`` is ``"offset"`` (entries: relative offset, position) or ``"time"`` (entries:
    max timestamp before the batch, relative offset + 1).  ``trusted`` is False when the
    file is missing or its header is wrong: lookups then say "scan from the start".
    """

    __slots__ = ("_entry", "_map", "_raw", "base", "kind", "path", "slots", "trusted")

    def __init__(self, path: str, kind: str, base: int, *, writable: bool) -> None:
        self.path = path
        self.kind = kind
        self.base = base
        self._entry = F.IDX_ENTRY if kind == "offset" else F.TIDX_ENTRY
        magic = F.IDX_MAGIC if kind == "offset" else F.TIDX_MAGIC
        self._map: mmap.mmap | None = None
        self._raw: memoryview | None = None
        self.slots = 0
        self.trusted = False
        try:
            fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        except OSError:
            return
        try:
            size = os.fstat(fd).st_size
            if size < F.INDEX_HEADER + self._entry.size:
                return
            self._map = mmap.mmap(fd, size, access=mmap.ACCESS_WRITE if writable
                                  else mmap.ACCESS_READ)
        except OSError:
            return
        finally:
            os.close(fd)
        self._raw = memoryview(self._map)
        head = F.IDX_HEAD.unpack_from(self._raw, 0)
        if head != (magic, F.VERSION, self._entry.size, base):
            return
        self.slots = (size - F.INDEX_HEADER) // self._entry.size
        self.trusted = True

    @staticmethod
    def create(path: str, kind: str, base: int, slots: int) -> None:
        """Write an empty index of ``slots`` entries at ``path`` (allocated, then renamed
        into place so no process ever maps a half-written header)."""
        entry = F.IDX_ENTRY if kind == "offset" else F.TIDX_ENTRY
        magic = F.IDX_MAGIC if kind == "offset" else F.TIDX_MAGIC
        # (not fsynced here: the journal's sync policy flushes segments and indexes)
        with atomic_file(path, durable=False) as fd:
            write_all(fd, F.encode_index_header(magic, entry.size, base), 0)
            _platform.ensure_allocated(fd, F.INDEX_HEADER + slots * entry.size)

    def entry(self, i: int) -> tuple[int, int]:
        assert self._raw is not None
        a, b = self._entry.unpack_from(self._raw, F.INDEX_HEADER + i * self._entry.size)
        return int(a), int(b)

    def set_entry(self, i: int, a: int, b: int) -> None:
        assert self._raw is not None
        self._entry.pack_into(self._raw, F.INDEX_HEADER + i * self._entry.size, a, b)

    def valid(self, i: int, rel_end: int, pos_end: int) -> bool:
        """Slot ``i`` holds an entry published under (rel_end, pos_end)."""
        a, b = self.entry(i)
        if self.kind == "offset":
            return 0 < b < pos_end and a < rel_end
        return 0 < b <= rel_end  # b is rel + 1

    def count(self, rel_end: int, pos_end: int) -> int:
        """How many leading slots hold entries published under (rel_end, pos_end)."""
        if not self.trusted or rel_end <= 0:
            return 0  # (no record yet, no entry can be valid: a new segment's index is
            #          not bisected, which touched a fresh page per probe)
        lo, hi = 0, self.slots
        while lo < hi:  # entries are increasing; the first invalid slot ends them
            mid = (lo + hi) // 2
            if self.valid(mid, rel_end, pos_end):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def floor(self, key: int, n: int) -> int:
        """Index of the last of the first ``n`` entries whose key (relative offset for
        the offset index, timestamp for the time index) is below or at ``key`` (-1: none).
        The time index compares strictly below: its entry says every record before the
        batch is older than its timestamp."""
        lo, hi = 0, n
        strict = self.kind == "time"
        while lo < hi:
            mid = (lo + hi) // 2
            k = self.entry(mid)[0]
            if k < key or (not strict and k == key):
                lo = mid + 1
            else:
                hi = mid
        return lo - 1

    def last_at_or_below(self, pos: int, n: int) -> int:
        """Index of the last of the first ``n`` entries of the offset index whose position
        is at or below ``pos`` (-1: none); entries' positions increase, as their offsets."""
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if self.entry(mid)[1] <= pos:
                lo = mid + 1
            else:
                hi = mid
        return lo - 1

    def clear_from(self, i: int) -> None:
        """Zero the slots from ``i`` up to the first empty one (writer only)."""
        while i < self.slots:
            a, b = self.entry(i)
            if a == 0 and b == 0:
                return
            self.set_entry(i, 0, 0)
            i += 1

    def close(self) -> None:
        if self._raw is not None:
            self._raw.release()
            self._raw = None
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        self.trusted = False
