"""Region: one mapped file, or one anonymous shared area.

Design rules:

- A Region is a thin, safe wrapper over ``mmap.mmap``.  Components lay their own formats
  over ``region.view`` (a memoryview); Region knows nothing of any format.
- Every classic mmap pitfall becomes a named error with a fix-it message instead of a
  crash or a silent surprise:

  ====================================  =============================================
  pitfall                               what Region does
  ====================================  =============================================
  empty file, no ``size=``              EmptyFileError: pass size= to extend it
  size 0 or negative                    InvalidSizeError
  offset not a multiple of the page     mapped from the page below, ``view`` starts at
                                        the offset asked for (``map_offset`` says so)
  read-only file opened for writing     ReadOnlyError (a PermissionError)
  write through a read-only region      ReadOnlyError from write(); TypeError from view
  any use after close()                 ClosedError
  out-of-range read()/write()           OutOfRangeError (an IndexError)
  grow() of anonymous memory            NotGrowableError
  grow() to a smaller size              InvalidSizeError: we never shrink a file that
                                        others may map (they would die of SIGBUS)
  close() while views are exported      ExportedViewsError; the region stays open
  disk full while extending             DiskFullError before anything is mapped
  ====================================  =============================================

- File space is allocated (fallocate, or zero-fill) *before* it is mapped, so a full disk
  is an ordinary error and never a SIGBUS on first touch.
- The file descriptor is closed right after mapping: the mapping keeps the file alive.
"""

from __future__ import annotations

import mmap
import os

from . import _fileio, _platform
from .errors import (
    ClosedError,
    EmptyFileError,
    ExportedViewsError,
    InvalidSizeError,
    NotGrowableError,
    OutOfRangeError,
    ReadOnlyError,
    RegionError,
)

# ``typing`` is for type checkers only (importing it costs milliseconds); type
# checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Region"]


class Region:
    """A mapped file or anonymous shared memory area.  Use :meth:`open` or :meth:`anonymous`."""

    __slots__ = ("_address", "_map", "_map_offset", "_offset", "_path", "_private",
                 "_readonly", "_size", "_view")

    def __init__(
        self,
        mapping: mmap.mmap,
        *,
        path: str | None,
        offset: int,
        map_offset: int,
        size: int,
        readonly: bool,
        private: bool,
    ) -> None:
        self._map: mmap.mmap | None = mapping
        self._path = path
        self._offset = offset
        self._map_offset = map_offset
        self._size = size
        self._readonly = readonly
        self._private = private
        delta = offset - map_offset
        self._view: memoryview | None = memoryview(mapping)[delta : delta + size]
        self._address: int | None = None

    # --- construction -----------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        size: int | None = None,
        *,
        create: bool = False,
        readonly: bool = False,
        private: bool = False,
        offset: int = 0,
    ) -> Region:
        """Map ``size`` bytes of the file at ``path`` starting at ``offset``.

        ``size=None`` maps the whole file from ``offset``.  A larger ``size`` than the file
        has extends the file (allocating real blocks) unless ``readonly``.  ``create=True``
        creates a missing file (it then needs ``size``).  ``private=True`` maps
        copy-on-write: writes stay in this process and never reach the file.  An
        ``offset`` that is not a multiple of the page size is allowed: the mapping starts
        at the page below and :attr:`view` still starts exactly at ``offset``.
        """
        path = os.fspath(path)
        if size is not None and size <= 0:
            raise InvalidSizeError(f"size must be positive, got {size}; pass size=None to map "
                                   "the whole file")
        if offset < 0:
            raise InvalidSizeError(f"offset must be >= 0, got {offset}")
        if readonly and create:
            raise ValueError("create=True needs write access; drop readonly=True")
        flags = os.O_RDONLY if readonly or private else os.O_RDWR
        if create:
            flags |= os.O_CREAT
        try:
            fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        except PermissionError as exc:
            if not readonly:
                raise ReadOnlyError(
                    exc.errno, f"{path} is not writable by this process; open it with "
                    "readonly=True (or private=True for a copy-on-write view), or fix its "
                    "permissions", path) from exc
            raise
        try:
            st = os.fstat(fd)
            _fileio.require_regular(st, path, "only regular files can be mapped",
                                    error=RegionError)
            file_size = st.st_size
            if size is None:
                size = file_size - offset
                if file_size == 0:
                    raise EmptyFileError(
                        f"{path} is empty and an empty file cannot be mapped; pass size= "
                        "to extend it to the size you need")
                if size <= 0:
                    raise InvalidSizeError(
                        f"offset {offset} is at or past the end of {path} ({file_size} "
                        "bytes); pass a smaller offset or a size= to extend the file")
            end = offset + size
            if end > file_size:
                if readonly or private:
                    raise InvalidSizeError(
                        f"{path} has {file_size} bytes but bytes up to {end} were asked for "
                        "read-only; pass a smaller size (or open writable to extend it)")
                _platform.ensure_allocated(fd, end)
            map_offset = _platform.align_down(offset, mmap.ALLOCATIONGRANULARITY)
            access = (mmap.ACCESS_READ if readonly
                      else mmap.ACCESS_COPY if private else mmap.ACCESS_WRITE)
            mapping = mmap.mmap(fd, end - map_offset, access=access, offset=map_offset)
        finally:
            os.close(fd)
        return cls(mapping, path=path, offset=offset, map_offset=map_offset, size=size,
                   readonly=readonly, private=private)

    @classmethod
    def anonymous(cls, size: int) -> Region:
        """Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS) of ``size`` bytes, zero-filled.

        Children created by ``fork()`` after this call share it with the parent: a write by
        either is seen by the other.  It cannot grow, and vanishes with the last process.
        """
        if size <= 0:
            raise InvalidSizeError(f"size must be positive, got {size}")
        mapping = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_ANONYMOUS", 0x20))
        return cls(mapping, path=None, offset=0, map_offset=0, size=size, readonly=False,
                   private=False)

    # --- properties -------------------------------------------------------------------

    def _live(self) -> tuple[mmap.mmap, memoryview]:
        if self._map is None or self._view is None:
            raise ClosedError(f"{self!r} is closed; open a new Region to map the file again")
        return self._map, self._view

    @property
    def view(self) -> memoryview:
        """A memoryview of exactly the mapped bytes (read-only for read-only regions)."""
        view = self._view
        if view is None:
            self._live()
        assert view is not None
        return view

    @property
    def size(self) -> int:
        return self._size

    @property
    def path(self) -> str | None:
        return self._path

    @property
    def offset(self) -> int:
        """The file offset :attr:`view` starts at."""
        return self._offset

    @property
    def map_offset(self) -> int:
        """The page-aligned file offset the kernel mapping really starts at."""
        return self._map_offset

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def private(self) -> bool:
        return self._private

    @property
    def anonymous_memory(self) -> bool:
        return self._path is None

    @property
    def closed(self) -> bool:
        return self._map is None

    @property
    def address(self) -> int:
        """Virtual address of ``view[0]`` in this process (changes when the region grows)."""
        mapping, _ = self._live()
        if self._address is None:
            self._address = _platform.buffer_address(mapping) + self._offset - self._map_offset
        return self._address

    # --- bounded access ---------------------------------------------------------------

    def _check_range(self, start: int, length: int) -> None:
        if start < 0 or length < 0 or start + length > self._size:
            raise OutOfRangeError(
                f"bytes [{start}, {start + length}) are outside the region of {self._size} "
                "bytes; grow() it first or fix the offset")

    def read(self, start: int, length: int) -> bytes:
        """Copy ``length`` bytes at ``start`` out of the region, bounds-checked."""
        _, view = self._live()
        self._check_range(start, length)
        return bytes(view[start : start + length])

    def write(self, start: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into the region at ``start``, bounds-checked."""
        _, view = self._live()
        if self._readonly:
            raise ReadOnlyError(f"{self!r} is read-only; open it without readonly=True to write")
        n = memoryview(data).nbytes
        self._check_range(start, n)
        view[start : start + n] = data

    # --- kernel services --------------------------------------------------------------

    def grow(self, new_size: int) -> None:
        """Extend the file (allocating real blocks) and remap it to ``new_size`` bytes.

        Views taken before the call keep the old mapping alive and stay valid; take
        ``view`` again to see the new bytes.  Never shrinks.
        """
        mapping, view = self._live()
        if self._path is None:
            raise NotGrowableError(
                "anonymous shared memory has a fixed size and cannot grow; create a larger "
                "Region.anonymous() before fork(), or use a file-backed Region")
        if new_size < self._size:
            raise InvalidSizeError(
                f"grow({new_size}) is smaller than the region ({self._size} bytes); regions "
                "never shrink because other processes may still map the bytes")
        if new_size == self._size:
            return
        fresh = Region.open(self._path, new_size, readonly=self._readonly,
                            private=self._private, offset=self._offset)
        if self._private:
            # A private map's own changes live only in its pages: carry them over.
            assert fresh._view is not None
            fresh._view[: self._size] = view
        view.release()
        try:
            mapping.close()
        except BufferError:
            pass  # someone still holds a view into the old map; it unmaps when they drop it
        self._map, self._view, self._size = fresh._map, fresh._view, fresh._size
        self._address = None
        fresh._map = fresh._view = None

    def sync(self, start: int = 0, length: int | None = None, *, wait: bool = True) -> None:
        """Write dirty pages of ``[start, start+length)`` back to the file.

        ``wait=True`` (MS_SYNC) returns once the bytes are on the storage device, so they
        survive power loss; ``wait=False`` (MS_ASYNC) only schedules the write-back.
        Process crashes never need sync(): the page cache already holds every store.
        """
        self._live()
        if length is None:
            length = self._size - start
        self._check_range(start, length)
        if self._path is None or self._private or self._readonly or length == 0:
            return
        _platform.msync(self.address + start, length, wait=wait)

    def advise(self, name: str, start: int = 0, length: int | None = None) -> None:
        """madvise: "normal", "sequential", "random", "willneed", "dontneed", "populate"."""
        mapping, _ = self._live()
        if length is None:
            length = self._size - start
        self._check_range(start, length)
        if length == 0:
            return
        delta = self._offset - self._map_offset + start
        lo = _platform.align_down(delta)
        span = delta + length - lo
        if name == "populate":
            if self._populate(mapping, lo, span):
                return
            name = "willneed"
        try:
            advice = _platform.ADVICE[name]
        except KeyError:
            names = ", ".join(sorted([*_platform.ADVICE, "populate"]))
            raise ValueError(f"unknown advice {name!r}; use one of: {names}") from None
        mapping.madvise(advice, lo, span)

    def _populate(self, mapping: mmap.mmap, lo: int, span: int) -> bool:
        if not _platform.HAVE_POPULATE:
            return False
        flag = (_platform.MADV_POPULATE_READ if self._readonly or self._private
                else _platform.MADV_POPULATE_WRITE)
        try:
            mapping.madvise(flag, lo, span)
        except OSError:
            return False  # kernel older than 5.14
        return True

    def resident(self) -> bytes:
        """One byte per page of the region: 1 where the page is in memory now (mincore)."""
        self._live()
        return _platform.mincore(self.address, self._size)

    # --- life cycle -------------------------------------------------------------------

    def close(self) -> None:
        """Unmap.  Idempotent.  Raises ExportedViewsError while views into it are alive."""
        mapping, view = self._map, self._view
        if mapping is None or view is None:
            return
        view.release()
        try:
            mapping.close()
        except BufferError:
            delta = self._offset - self._map_offset
            self._view = memoryview(mapping)[delta : delta + self._size]
            raise ExportedViewsError(
                f"cannot close {self!r}: memoryviews or arrays made from region.view are still "
                "alive; release them (view.release(), del array) and close again") from None
        self._map = self._view = None
        self._address = None

    def __enter__(self) -> Region:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self._path if self._path is not None else "anonymous"
        state = "closed" if self._map is None else f"{self._size} bytes"
        mode = "ro" if self._readonly else "private" if self._private else "rw"
        return f"<Region {where} {state} {mode}>"
