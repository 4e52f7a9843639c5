"""A private (copy-on-write) mapping keeps its writes to itself; then page-cache
residency of a file before and after it is read, as vmtouch would chart it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .. import _platform
from ..errors import UnsupportedPlatformError
from ..inspect import evict, residency, touch
from ..region import Region

TITLE = "private copy-on-write map, and page residency before/after touching a file"

_PAGES = 64


def _private(workdir: Path, say: Callable[[str], None]) -> None:
    path = workdir / "original.txt"
    original = b"the file says this. " * 200
    path.write_bytes(original)
    with Region.open(path, private=True) as region:
        region.view[:22] = b"PRIVATE SCRIBBLE HERE!"
        mine = bytes(region.view[:22])
        fd = os.open(path, os.O_RDONLY)
        try:
            on_disk = os.pread(fd, len(original), 0)
        finally:
            os.close(fd)
        with Region.open(path, readonly=True) as other:
            seen_by_other = bytes(other.view[:22])
    if mine != b"PRIVATE SCRIBBLE HERE!":
        raise RuntimeError("the private mapping did not keep its own write")
    if on_disk != original or seen_by_other != original[:22] or path.read_bytes() != original:
        raise RuntimeError("a write through a private mapping reached the file")
    say(f"the private map reads back its write: {mine.decode()!r}")
    say(f"os.pread and a second mapping still see {on_disk[:22].decode()!r}: the write "
        "went to this process's own copy of the page, never to the file")


def _residency(workdir: Path, say: Callable[[str], None]) -> None:
    path = workdir / "pages.bin"
    page = _platform.PAGE_SIZE
    with open(path, "wb") as f:
        f.write(os.urandom(_PAGES * page))
        f.flush()
        os.fsync(f.fileno())  # clean pages: only clean pages can be evicted
    try:
        before = evict(path)
    except UnsupportedPlatformError:  # no posix_fadvise (macOS): show the cache as it is
        before = residency(path)
    say(f"after evict:      {before.chart(_PAGES // 2)} {before.resident_pages:>2}/{before.pages} "
        "pages in the page cache")
    if before.resident_pages == before.pages:
        say("(nothing was evicted: this system or file system ignores POSIX_FADV_DONTNEED, "
            "e.g. tmpfs keeps every page)")
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead: a clean picture
        os.pread(fd, _PAGES // 4 * page, 0)
    finally:
        os.close(fd)
    part = residency(path)
    say(f"read 1st quarter: {part.chart(_PAGES // 2)} {part.resident_pages:>2}/{part.pages}")
    after = touch(path)
    say(f"after touch:      {after.chart(_PAGES // 2)} {after.resident_pages:>2}/{after.pages}")
    if part.page_map[: _PAGES // 4] != b"\1" * (_PAGES // 4):
        raise RuntimeError("pages just read are not shown as resident")
    if after.resident_pages != after.pages:
        raise RuntimeError(f"touch left {after.pages - after.resident_pages} pages out of "
                           "the page cache")
    if after.cachestat is not None:
        say(f"cachestat agrees: {after.cachestat.cached} pages cached, "
            f"{after.cachestat.dirty} dirty")
        if after.cachestat.cached < after.pages:
            raise RuntimeError("cachestat disagrees with mincore about the touched file")


def run(workdir: Path, say: Callable[[str], None]) -> None:
    _private(workdir, say)
    _residency(workdir, say)
