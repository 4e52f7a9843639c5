"""The KV's whole-file writes: a new store, a compacted or backup image, a restore.

Each writes a complete file under a temporary name, fsyncs it, and only then makes the
path name it (link() for a new store, so a file made meanwhile is never replaced;
rename() for a compaction, a backup, a restore), then fsyncs the directory.  A crash at
any instant leaves the path naming either the old file or the whole new one.  The
mapped, append-only side of the store lives in store.py; the byte layout in codec.py.
"""

from __future__ import annotations

import os
import struct
import time

from .. import _platform
from .._fileio import atomic_file, raise_if_disk_full, write_all
from ..errors import DiskFullError
from . import codec
from ._crypto import Cipher
from ._index import frame_all
from .codec import DATA_START, FLAG_ENCRYPTED, OFF_COMMIT, SUPERSEDED

__all__ = [
    "create",
    "fd_path",
    "header",
    "init_empty",
    "install_copy",
    "keep_damaged",
    "mark_superseded",
    "new_salt",
    "write_compacted",
    "write_parts",
    "write_store",
]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_FULL = ("no space left to write {}; free some disk space and retry (nothing already written "
         "was lost)")


def fd_path(fd: int) -> str:
    """A path that opens the file behind ``fd`` again (a new open file description)."""
    return f"/proc/self/fd/{fd}" if _platform.IS_LINUX else f"/dev/fd/{fd}"


def new_salt() -> int:
    import random  # not at module import: reopening a KV needs no salt

    return random.getrandbits(64)


def header(cipher: Cipher | None, salt: int, *, end: int, seq: int = 0,
           compactions: int = 0) -> bytes:
    """A fresh file header for data ending at ``end``."""
    return codec.build_header(
        flags=FLAG_ENCRYPTED if cipher else 0, salt=salt, created_ns=time.time_ns(),
        keycheck=cipher.keycheck(salt) if cipher else b"", end=end, seq=seq,
        compactions=compactions)


def create(path: str, cipher: Cipher | None, capacity: int) -> None:
    """Make an empty store at ``path`` unless a file appears there first (then keep it)."""
    try:
        with atomic_file(path, overwrite=False) as fd:  # never replaces a file made meanwhile
            write_all(fd, header(cipher, new_salt(), end=DATA_START), 0)
            _platform.ensure_allocated(fd, capacity)
    except FileExistsError:
        pass  # another process created it first: that file is the store


def init_empty(fd: int, cipher: Cipher | None, capacity: int) -> None:
    """Make an empty (``touch``ed) file a store; the caller holds its lock."""
    if os.fstat(fd).st_size == 0:
        write_all(fd, header(cipher, new_salt(), end=DATA_START), 0)
        _platform.ensure_allocated(fd, capacity)


def write_compacted(tmp: str, head: bytes, parts: list[bytes], *, mode: int,
                    capacity: int, least: int) -> int:
    """Write a compacted image to the new file ``tmp`` (fsynced; room for ``capacity``
    bytes, or ``least`` on a nearly full disk); returns its open descriptor."""
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
    try:
        os.fchmod(fd, mode & 0o7777)
        _write_image(fd, head, parts, tmp)
        try:
            _platform.ensure_allocated(fd, capacity)
        except DiskFullError:  # tight disk: the data and what comes next, no headroom
            _platform.ensure_allocated(fd, least)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd


def _write_image(fd: int, head: bytes, parts: list[bytes], name: str) -> None:
    """A header and framed records from offset 0 (a full disk: DiskFullError)."""
    try:
        write_all(fd, head, 0)
        write_parts(fd, parts, DATA_START)
    except OSError as exc:
        raise_if_disk_full(exc, _FULL.format(name), name)
        raise


def write_store(dst: str, entries: list[tuple[int, bytes]], cipher: Cipher | None,
                min_cap: int) -> None:
    """A compacted store holding ``entries`` at ``dst`` (a backup), replacing it whole."""
    parts, pos = frame_all(entries, cipher)
    head = header(cipher, new_salt(), end=pos)
    with atomic_file(dst) as fd:
        _write_image(fd, head, parts, dst)
        _platform.ensure_allocated(fd, max(min_cap, _platform.align_up(pos)))


def install_copy(src: str, dst: str) -> None:
    """Replace ``dst`` by a copy of ``src``; processes mapping ``dst`` are told to move."""
    with open(src, "rb") as f, atomic_file(dst) as fd:
        while chunk := f.read(1 << 20):
            write_all(fd, chunk)
        if os.path.exists(dst):
            mark_superseded(dst)  # last: processes mapping dst move once the rename is in


def keep_damaged(path: str) -> str:
    """Copy a damaged store aside (``.damaged``, ``.damaged.1``...) once; the copy's path."""
    import filecmp
    import shutil

    copy = path + ".damaged"
    n = 1
    while os.path.exists(copy):
        if filecmp.cmp(copy, path, shallow=False):
            return copy  # already kept (another process of a multiprocess store was first)
        copy = f"{path}.damaged.{n}"
        n += 1
    shutil.copyfile(path, copy)
    return copy


def mark_superseded(path: str) -> None:
    """Tell processes mapping the file at ``path`` that it is being replaced."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        raw = os.pread(fd, 8, OFF_COMMIT)
        if len(raw) == 8:
            (w,) = struct.unpack("<Q", raw)
            os.pwrite(fd, struct.pack("<Q", w | SUPERSEDED), OFF_COMMIT)
    finally:
        os.close(fd)


def write_parts(fd: int, parts: list[bytes], offset: int) -> None:
    """Write the concatenation of ``parts`` at ``offset``.

    Joined a few thousand at a time: one copy of the whole would cost as much again in
    fresh memory, and pwritev of small buffers costs the kernel more than the join.
    """
    step = 4096
    for i in range(0, len(parts), step):
        data = b"".join(parts[i : i + step])
        write_all(fd, data, offset)
        offset += len(data)
