"""Inspection: which pages of a file are in the page cache, and what a process has mapped.

Design rules:

- Read-only and side-effect free, except :func:`touch` and :func:`evict`, whose whole
  point is to change the page cache (never the file).
- Residency is measured the way vmtouch does it: map the file read-only and ask mincore,
  one byte per page.  Where the kernel has cachestat (Linux 6.5+) its totals ride along
  as a cross-check and add what mincore cannot see (dirty, writeback, recently evicted).
- Nothing here touches a mapped page: mincore does not fault, and :func:`touch` reads
  with ``preadv`` into a scratch buffer, so a file shrunk by someone else meanwhile is a
  short read, never a SIGBUS.
- The chart is a pure function of the page map (:func:`chart`), so its shapes are testable
  without a page cache.
- Process mappings come from ``/proc/PID/smaps`` (Linux only), parsed by a pure function
  (:func:`parse_smaps`) and grouped per file: one row per file however many VMAs map it.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from . import _fileio, _platform
from .errors import EmptyFileError, UnsupportedPlatformError
from .region import Region

__all__ = [
    "CacheStat",
    "Mapping",
    "Residency",
    "chart",
    "evict",
    "mappings",
    "parse_smaps",
    "residency",
    "totals",
    "touch",
]

_READ_CHUNK = 1 << 20
_RESIDENT_RUN = re.compile(rb"[^\x00]+")
_SORT_KEYS = ("size", "rss", "pss", "swap")


@dataclass(frozen=True)
class CacheStat:
    """Page-cache totals of a whole file from cachestat(2), in pages."""

    cached: int
    dirty: int
    writeback: int
    evicted: int
    recently_evicted: int


@dataclass(frozen=True)
class Residency:
    """Which pages of ``path`` were in the page cache when it was measured.

    ``page_map`` holds one byte per page, 1 where the page is resident.  ``cachestat`` is
    the kernel's own totals for the file (``None`` where the kernel lacks cachestat); it is
    taken right after the map, so a busy file may differ by a few pages.
    """

    path: str
    size: int
    page_size: int
    pages: int
    resident_pages: int
    page_map: bytes
    cachestat: CacheStat | None = None

    @property
    def fraction(self) -> float:
        """Resident share of the pages, 0.0 to 1.0 (1.0 for an empty file: nothing missing)."""
        return self.resident_pages / self.pages if self.pages else 1.0

    @property
    def resident_bytes(self) -> int:
        return min(self.resident_pages * self.page_size, self.size)

    def chart(self, width: int = 60) -> str:
        """One-line chart like ``vmtouch -v``: ``[OOOo    ]``, see :func:`chart`."""
        return chart(self.page_map, width)

    def ranges(self) -> list[tuple[int, int]]:
        """Runs of resident pages as ``(first, end)`` page numbers, ``end`` exclusive."""
        return [m.span() for m in _RESIDENT_RUN.finditer(self.page_map)]

    def to_dict(self, width: int = 60) -> dict[str, object]:
        """JSON-ready summary (the page map as runs of resident pages, plus the chart)."""
        return {
            "path": self.path, "size": self.size, "page_size": self.page_size,
            "pages": self.pages, "resident_pages": self.resident_pages,
            "resident_bytes": self.resident_bytes, "fraction": self.fraction,
            "chart": self.chart(width), "resident_ranges": [list(r) for r in self.ranges()],
            "cachestat": None if self.cachestat is None else vars(self.cachestat).copy(),
        }


def chart(page_map: bytes, width: int = 60) -> str:
    """Summarise a page map in at most ``width`` cells between brackets.

    Pages are split into ``min(width, pages)`` nearly equal runs, one cell each: ``O`` when
    every page of the run is resident, ``o`` when some are, a space when none is.  An empty
    map gives ``[]``.
    """
    if width < 1:
        raise ValueError(f"the chart width must be at least 1 cell, got {width}")
    pages = len(page_map)
    cells = min(width, pages)
    out = []
    for i in range(cells):
        lo, hi = i * pages // cells, (i + 1) * pages // cells
        missing = page_map.count(0, lo, hi)
        out.append(" " if missing == hi - lo else "o" if missing else "O")
    return "[" + "".join(out) + "]"


def _check_file(path: str) -> os.stat_result:
    st = os.stat(path)
    _fileio.require_regular(st, path, "only files have page-cache residency to inspect",
                            directory="is a directory; name the files inside it (e.g. DIR/*)")
    return st


def _cachestat(path: str) -> CacheStat | None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        counts = _platform.cachestat(fd)
    finally:
        os.close(fd)
    return None if counts is None else CacheStat(*counts)


def residency(path: str | os.PathLike[str]) -> Residency:
    """Measure which pages of the file at ``path`` are in the page cache now.

    Raises FileNotFoundError, PermissionError, IsADirectoryError, or ValueError for other
    non-regular files.  An empty file has no pages (and is not mapped).
    """
    path = os.fspath(path)
    st = _check_file(path)
    size, page_map = st.st_size, b""
    if size:
        try:
            with Region.open(path, readonly=True) as region:
                size, page_map = region.size, region.resident()
        except EmptyFileError:
            size = 0  # emptied since the stat: nothing to map, nothing resident
    return Residency(path=path, size=size, page_size=_platform.PAGE_SIZE, pages=len(page_map),
                     resident_pages=len(page_map) - page_map.count(0), page_map=page_map,
                     cachestat=_cachestat(path))


def touch(path: str | os.PathLike[str]) -> Residency:
    """Read every page of the file into the page cache; returns the residency after.

    Reads with ``preadv`` into one scratch buffer (after a WILLNEED hint so the kernel
    reads ahead), never through a mapping: a file shrunk meanwhile gives a short read,
    not a SIGBUS; a file growing meanwhile is read up to its size at the start.  The
    pages stay cached until memory pressure or :func:`evict`.
    """
    path = os.fspath(path)
    _check_file(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        # Up to the size at the start: a file that keeps growing must not keep us here.
        end = os.fstat(fd).st_size
        buf = bytearray(_READ_CHUNK)
        offset = 0
        while offset < end:
            if hasattr(os, "preadv"):
                n = os.preadv(fd, [buf], offset)
            else:  # pragma: no cover - macOS before 11
                n = len(os.pread(fd, _READ_CHUNK, offset))
            if n <= 0:
                break  # shrunk meanwhile
            offset += n
    finally:
        os.close(fd)
    return residency(path)


def evict(path: str | os.PathLike[str]) -> Residency:
    """Ask the kernel to drop the file's pages from the page cache (POSIX_FADV_DONTNEED);
    returns the residency after.

    Only clean pages go: dirty pages (written but not yet on disk) stay until the kernel
    writes them back, so call ``os.fsync`` (or ``Region.sync()``) first to evict them too.
    Pages mapped by a running process may stay as well.  Some file systems (tmpfs, some
    network and FUSE file systems) ignore the advice entirely.
    """
    path = os.fspath(path)
    _check_file(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        _platform.fadvise_dontneed(fd)
    finally:
        os.close(fd)
    return residency(path)


# --- process mappings -----------------------------------------------------------------


@dataclass(frozen=True)
class Mapping:
    """What one process maps of one file (or one kind of anonymous memory), summed over
    all the areas (VMAs) that map it.  Sizes in bytes.

    ``name`` is the file path, ``[anon]`` for unnamed anonymous memory, or the kernel's
    own label (``[heap]``, ``[stack]``, ``[vdso]``...).  ``kind`` is ``"file"``,
    ``"anon"`` or ``"special"``.  A shared anonymous map (``Region.anonymous``) shows as
    ``/dev/zero (deleted)``, as the kernel names it, of kind ``"anon"``.
    """

    name: str
    kind: str
    size: int
    rss: int
    pss: int
    swap: int
    areas: int


def _kind(name: str) -> str:
    # Named anonymous memory reads "[anon:NAME]" (Linux 5.17+); shared anonymous memory
    # (MAP_SHARED|MAP_ANONYMOUS) is backed by an unlinked "/dev/zero" in the kernel.
    if name.startswith(("[anon]", "[anon:", "[anon_shmem:")) or name == "/dev/zero (deleted)":
        return "anon"
    if name.startswith("[") and name.endswith("]"):
        return "special"
    return "file"


def parse_smaps(text: str) -> list[Mapping]:
    """Group the areas of a ``/proc/PID/smaps`` text per name; in first-seen order."""
    totals: dict[str, list[int]] = {}
    current: list[int] | None = None
    for line in text.splitlines():
        fields = line.split(None, 5)
        if not fields:
            continue
        head = fields[0]
        if "-" in head and not head.endswith(":"):
            # "start-end perms offset dev inode [name]": a new area starts.
            name = fields[5].strip() if len(fields) > 5 else ""
            current = totals.setdefault(name or "[anon]", [0, 0, 0, 0, 0])
            current[4] += 1
            continue
        if current is None or len(fields) < 2 or not fields[1].isdigit():
            continue
        column = {"Size:": 0, "Rss:": 1, "Pss:": 2, "Swap:": 3}.get(head)
        if column is not None:
            current[column] += int(fields[1]) * 1024  # the kernel reports kB
    return [Mapping(name, _kind(name), *t) for name, t in totals.items()]


def mappings(pid: int, *, sort: str = "size") -> list[Mapping]:
    """The mappings of process ``pid`` from /proc/PID/smaps, grouped per file, largest
    first (by ``sort``: "size", "rss", "pss" or "swap").  Linux only."""
    if sort not in _SORT_KEYS:
        raise ValueError(f"unknown sort key {sort!r}; use one of {', '.join(_SORT_KEYS)}")
    if not sys.platform.startswith("linux"):
        raise UnsupportedPlatformError(
            "process mappings are read from /proc/PID/smaps, which only Linux has; on macOS "
            "use `vmmap PID`")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ValueError(f"a process id is a positive integer, got {pid!r}")
    where = f"/proc/{pid}/smaps"
    try:
        with open(where, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except FileNotFoundError:
        raise ProcessLookupError(errno.ESRCH, f"no process with pid {pid} (it may have "
                                 "exited); check the pid with `ps`") from None
    except PermissionError as exc:
        raise PermissionError(
            exc.errno, f"not allowed to read the mappings of process {pid} ({where}): it "
            "belongs to another user or is protected; run as that user, or as root (reading "
            "another process's smaps needs ptrace read access)") from None
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise ProcessLookupError(errno.ESRCH, f"process {pid} exited while being "
                                     "inspected") from None
        raise
    rows = parse_smaps(text)
    column = _SORT_KEYS.index(sort)
    rows.sort(key=lambda m: ((m.size, m.rss, m.pss, m.swap)[column], m.size, m.rss),
              reverse=True)
    return rows


def totals(rows: Iterable[Mapping]) -> Mapping:
    """The sum of ``rows`` as one Mapping named ``[total]``."""
    size = rss = pss = swap = areas = 0
    for m in rows:
        size, rss, pss, swap, areas = (size + m.size, rss + m.rss, pss + m.pss,
                                       swap + m.swap, areas + m.areas)
    return Mapping("[total]", "special", size, rss, pss, swap, areas)
